//! `plugind-client`: the host library of plugind.
//!
//! A host application (an LLM gateway, a desktop app, `pluginctl`) uses plugins through plugind's
//! control API: JSON-RPC 2.0 over a Unix socket, one JSON object per line, or over plugind's
//! `--listen` WebSocket with a bearer token (one message per line, the same API). This crate is
//! that client, and nothing else: it depends on `plugind-protocol` (the wire types) and never
//! on the daemon.
//!
//! # Example
//! ```no_run
//! use plugind_client::{CallOptions, Client, ClientError, Handlers};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), ClientError> {
//! // The socket by plugind's rules ($PLUGIND_SOCKET, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, /tmp),
//! // retried for up to 10 s, reconnected after a break.
//! let host = Client::builder().connect().await?;
//!
//! // Serve a service to plugins; the handler sees which plugin called.
//! let ui = Handlers::new().on("registerTheme", |params, caller| async move {
//!     println!("{:?} registers {}", caller.plugin, params["name"]);
//!     Ok(json!({ "registered": params["name"] }))
//! });
//! host.provide("ui", "1.0.0", ui).await?;
//!
//! // Call a plugin with a deadline, watching its progress.
//! let opts = CallOptions::new().timeout_ms(5_000).on_progress(|p| eprintln!("{p:?}"));
//! match host.execute("echo", "hello", json!({ "name": "Ada" }), opts).await {
//!     Ok(v) => println!("{v}"),
//!     Err(e) if e.code() == -32001 => eprintln!("too slow: {:?}", e.data()),
//!     Err(e) => return Err(e),
//! }
//!
//! // Lifecycle events, resumed after a reconnect.
//! let mut events = host.events().await?;
//! while let Some(ev) = events.next().await {
//!     println!("{} {}", ev["plugin"], ev["kind"]);
//! }
//! # Ok(()) }
//! ```
//!
//! # Theory of operation
//! A [`Client`] owns one connection driven by background tasks (`connection`): a reader
//! that hands each answer to the call waiting for it (by id), each `$/progress` to that call's
//! callback and plugind's `execute` requests to the [`Handlers`] of a provided service, and a
//! writer. So calls run concurrently on one connection, and every method takes `&self`.
//! - Cancellation: dropping the future of a call before its answer sends `$/cancel { id }`;
//!   plugind cancels the call (the plugin gets `$/cancel`) and answers `-32800`, which is ignored.
//! - Reconnection ([`Connect::reconnect`], on by default for [`Client::builder`]): when the
//!   connection breaks, every call in flight fails at once with [`ClientError::ConnectionLost`]
//!   (code `-32011`), as does any call made until a new connection is up; the library reconnects
//!   with backoff (100 ms doubling to 2 s), registers its provided services again and
//!   resubscribes to events, with nothing to do for the host.
//! - [`Client::connect`] is the one-shot form `pluginctl` and tests use: one attempt, no
//!   reconnection, [`Client::notification`] ends when plugind closes the connection.
//! - Over `--listen` ([`Connect::url`], [`Client::connect_url`]) the connection is a WebSocket
//!   made a stream of lines ([`websocket::bridge`]): everything above works the same.

mod connection;
mod error;
mod provide;
mod socket;
pub mod websocket;

pub use connection::Progress;
pub use error::{ClientError, CONNECTION_LOST};
pub use plugind_protocol::jsonrpc::RpcError;
pub use provide::{Caller, Handlers};
pub use socket::{default_socket, read_token};

use connection::{Endpoint, ProgressFn, Shared};
use plugind_protocol::control as c;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// How long [`Client::builder`] keeps trying to reach plugind before giving up.
const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// A connection to plugind. See the crate docs.
pub struct Client {
    shared: Arc<Shared>,
    /// Notifications not consumed by anything else (`event`, `log`, `trace`).
    notifications: Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    /// The connection tasks; aborted when the client is dropped, which closes the connection
    /// (plugind then forgets the services this client provided).
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How to connect: see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Connect {
    socket: Option<PathBuf>,
    url: Option<String>,
    token: Option<String>,
    retry_for: Duration,
    reconnect: bool,
}

impl Connect {
    /// The control socket at `path` instead of the default one.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// plugind's `--listen` endpoint (`http://HOST:PORT`, spoken as WebSocket) instead of the
    /// socket.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The bearer token for [`Connect::url`] (see [`read_token`] for a token file).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long to keep trying the first connection (default 10 s; zero: one attempt).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// Whether to reconnect after a break (default yes).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Connects, retrying every 100 ms for [`Connect::retry_for`].
    pub async fn connect(self) -> Result<Client, ClientError> {
        let endpoint = match self.url {
            Some(url) => Endpoint::WebSocket(websocket::Target::parse(&url, self.token)?),
            None => Endpoint::Socket(self.socket.unwrap_or_else(default_socket)),
        };
        let start = Instant::now();
        let stream = loop {
            match endpoint.dial().await {
                Ok(s) => break s,
                // Only "cannot reach" is worth another try: a refused token stays refused.
                Err(ClientError::Unreachable { .. }) if start.elapsed() < self.retry_for => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Client::on(stream, endpoint, self.reconnect))
    }
}

/// Options of one [`Client::execute`], [`Client::call_service`] or [`Client::run_hook`].
#[derive(Default)]
pub struct CallOptions {
    timeout_ms: Option<u64>,
    version: Option<String>,
    meta: Option<Value>,
    progress: Option<Box<ProgressFn>>,
}

impl CallOptions {
    /// No deadline of its own (the plugin's applies), no progress callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// The call's deadline: plugind answers `-32001` (with `data.timeout_ms`) when it passes.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// For [`Client::call_service`]: a version range the provider must match.
    pub fn version(mut self, range: impl Into<String>) -> Self {
        self.version = Some(range.into());
        self
    }

    /// `_meta` to send with the call, e.g. `{ "traceparent": "00-…" }`.
    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Called with every `$/progress` the plugin sends for this call.
    pub fn on_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Adds the options' keys to a request's params.
    fn apply(&self, params: &mut Value) {
        if let Some(t) = self.timeout_ms {
            params["timeout_ms"] = json!(t);
        }
        if let Some(v) = &self.version {
            params["version"] = json!(v);
        }
        if let Some(m) = &self.meta {
            params["_meta"] = m.clone();
        }
    }
}

impl Client {
    /// A host's connection: the default socket, retried for 10 s, reconnected after breaks.
    pub fn builder() -> Connect {
        Connect { socket: None, url: None, token: None, retry_for: CONNECT_RETRY, reconnect: true }
    }

    /// One attempt at the socket `path`, without reconnection (what `pluginctl` uses: a daemon
    /// that is not there is reported at once).
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let endpoint = Endpoint::Socket(path.to_path_buf());
        Ok(Client::on(endpoint.dial().await?, endpoint, false))
    }

    /// One attempt at the `--listen` endpoint `url` (`http://HOST:PORT`, spoken as WebSocket)
    /// with the bearer token, without reconnection (`pluginctl --url`).
    pub async fn connect_url(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let endpoint = Endpoint::WebSocket(websocket::Target::parse(url, token)?);
        Ok(Client::on(endpoint.dial().await?, endpoint, false))
    }

    fn on(stream: connection::Stream, endpoint: Endpoint, reconnect: bool) -> Client {
        let (shared, notifications, driver) = Shared::start(stream, endpoint, reconnect);
        Client { shared, notifications: Mutex::new(notifications), driver }
    }

    /// Calls any control method (`plugins.list`, `plugins.start`…) and waits for its answer.
    pub async fn call(&self, method: &str, params: &Value) -> Result<Value, ClientError> {
        self.request(method, params, None).await
    }

    /// [`Client::call`], handing every `$/progress` plugind forwards for it to `on_progress`
    /// (`pluginctl call` prints them).
    pub async fn call_with_progress(
        &self,
        method: &str,
        params: &Value,
        mut on_progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<Value, ClientError> {
        self.request(method, params, Some(&mut on_progress)).await
    }

    /// [`Client::call_with_progress`] with params and result as JSON text, never decoded: for a
    /// caller that only passes them on (`pluginctl call` prints the result), at any depth.
    /// [`Client::call`] decodes the result into a [`Value`], which fails past 128 levels of
    /// nesting (serde_json's recursion limit).
    pub async fn call_raw(
        &self,
        method: &str,
        params: &RawValue,
        mut on_progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<Box<RawValue>, ClientError> {
        self.shared.call(method, params, Some(&mut on_progress)).await
    }

    async fn request(
        &self,
        method: &str,
        params: &Value,
        progress: Option<&mut ProgressFn>,
    ) -> Result<Value, ClientError> {
        let raw = self.shared.call(method, params, progress).await?;
        serde_json::from_str(raw.get()).map_err(|e| undecodable(&e))
    }

    /// Calls `method` of `plugin` (`execute`).
    pub async fn execute(
        &self,
        plugin: &str,
        method: &str,
        params: Value,
        mut opts: CallOptions,
    ) -> Result<Value, ClientError> {
        let mut p = json!({ "plugin": plugin, "method": method, "params": params });
        opts.apply(&mut p);
        self.request(c::EXECUTE, &p, opts.progress.as_deref_mut()).await
    }

    /// Calls `method` of whichever plugin (or host) provides `service` (`services.call`).
    pub async fn call_service(
        &self,
        service: &str,
        method: &str,
        params: Value,
        mut opts: CallOptions,
    ) -> Result<Value, ClientError> {
        let mut p = json!({ "service": service, "method": method, "params": params });
        opts.apply(&mut p);
        self.request(c::SERVICES_CALL, &p, opts.progress.as_deref_mut()).await
    }

    /// Runs the hook chain `hook` on `payload` (`hooks.run`): the whole answer, with
    /// `payload`, `handled_by`, `stopped_by` and the `receipt`.
    pub async fn run_hook(&self, hook: &str, payload: Value, mut opts: CallOptions) -> Result<Value, ClientError> {
        let mut p = json!({ "hook": hook, "payload": payload });
        opts.apply(&mut p);
        self.request(c::HOOKS_RUN, &p, opts.progress.as_deref_mut()).await
    }

    /// Provides the service `name` at `version` to plugins for as long as this client lives
    /// (`services.register`), registering it again after every reconnect. plugind's `execute`
    /// requests for it are served by `handlers`.
    pub async fn provide(&self, name: &str, version: &str, handlers: Handlers) -> Result<(), ClientError> {
        let register = json!({ "name": name, "version": version, "methods": handlers.names() });
        self.shared.provide(provide::Provided { register, name: name.to_owned(), handlers }).await
    }

    /// Lifecycle events (`events.subscribe`), resumed after a reconnect (events in between may
    /// be missed). It consumes the client's notifications: other kinds are skipped.
    /// Events are queued until read, so a host that subscribes keeps reading.
    pub async fn events(&self) -> Result<Events<'_>, ClientError> {
        self.shared.subscribe_events().await?;
        Ok(Events { client: self })
    }

    /// The next notification plugind sent this client after a subscribing call (`event`,
    /// `trace`, `log`), or `None` once the client ends for good.
    pub async fn notification(&self) -> Option<(String, Value)> {
        self.notifications.lock().await.recv().await
    }
}

/// The stream of lifecycle events: see [`Client::events`].
pub struct Events<'a> {
    client: &'a Client,
}

impl Events<'_> {
    /// The next event `{ ts, plugin, kind, state?, detail }`, or `None` when the client ends.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let (method, params) = self.client.notification().await?;
            if method == c::EVENT_NOTIFICATION {
                return Some(params);
            }
        }
    }
}

/// A result that is valid JSON but not a [`Value`] here: an answer error (`-32603`), not a lost
/// connection (plugind answered fine).
fn undecodable(e: &serde_json::Error) -> ClientError {
    let why = if e.to_string().starts_with("recursion limit exceeded") {
        "plugind's answer is nested deeper than a Value decodes (128 levels): Client::call_raw takes it as it is"
            .to_owned()
    } else {
        format!("plugind's answer cannot be decoded: {e}")
    };
    ClientError::Rpc(RpcError::new(plugind_protocol::codes::INTERNAL_ERROR, why))
}
