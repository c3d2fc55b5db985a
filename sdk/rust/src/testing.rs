//! An in-memory host, so plugins can be unit-tested without plugind.
//!
//! [`TestHost`] serves a [`Plugin`] over `tokio::io::duplex`, plays plugind's side of the
//! protocol (the same lines plugind would send), and answers the plugin's own requests
//! (`kv.*`, `registry.*`, `service.call`) with a closure of the test's choosing.
//!
//! ```
//! use plugind_sdk::testing::TestHost;
//! use plugind_sdk::{json, Context, Plugin, RpcError, Value};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     async fn execute(&self, _ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
//!         match method {
//!             "hello" => Ok(json!({ "greeting": format!("Hello, {}!", params["name"].as_str().unwrap_or("world")) })),
//!             _ => Err(RpcError::method_not_found(method)),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let host = TestHost::start(Hello).await.expect("init and register succeed");
//! assert_eq!(host.execute("hello", json!({ "name": "Ada" })).await, Ok(json!({ "greeting": "Hello, Ada!" })));
//! assert_eq!(host.execute("nope", json!({})).await.map_err(|e| e.code), Err(-32601));
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use plugind_protocol::jsonrpc::{self, Message};
use plugind_protocol::methods::{
    self, HookResult, InitParams, KvKey, KvListParams, KvSetParams, RegisterResult, ServiceDecl, SupervisorInfo,
};
use plugind_protocol::version::PROTOCOL_VERSION;
use plugind_protocol::{codes, RpcError};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Plugin;

/// Answers the plugin's requests to the host: `(method, params) -> result`.
pub type RequestHandler = Arc<dyn Fn(&str, Value) -> Result<Value, RpcError> + Send + Sync>;

/// A notification the plugin sent (`log`, `$/progress`, `metrics.emit`).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The method, e.g. `$/progress`.
    pub method: String,
    /// Its params (`null` if absent).
    pub params: Value,
}

type Waiter = oneshot::Sender<Result<Value, RpcError>>;

/// State shared with the task reading the plugin's output.
struct Shared {
    /// Requests sent to the plugin awaiting an answer; `None` once the plugin's output ended.
    pending: Mutex<Option<HashMap<u64, Waiter>>>,
}

enum ToPlugin {
    Line(Vec<u8>),
    /// Close the plugin's stdin.
    Close,
}

/// An in-memory plugind for one plugin. See the module doc.
pub struct TestHost {
    to_plugin: mpsc::UnboundedSender<ToPlugin>,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    notifications: tokio::sync::Mutex<mpsc::UnboundedReceiver<Notification>>,
    serve: Option<JoinHandle<io::Result<()>>>,
    services: Vec<ServiceDecl>,
    methods: serde_json::Map<String, Value>,
}

impl fmt::Debug for TestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHost").field("services", &self.services).finish_non_exhaustive()
    }
}

/// Configures a [`TestHost`]: the `init` params it sends and how it answers the plugin.
pub struct TestHostBuilder<P> {
    plugin: P,
    init: InitParams,
    handler: Option<RequestHandler>,
}

impl<P> fmt::Debug for TestHostBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHostBuilder").field("init", &self.init).finish_non_exhaustive()
    }
}

impl<P: Plugin> TestHostBuilder<P> {
    /// The plugin name sent in `init` (default `test-plugin`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.init.name = name.into();
        self
    }

    /// The plugin version sent in `init` (default `0.0.0`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.init.version = version.into();
        self
    }

    /// The `config` sent in `init` (default `{}`).
    pub fn config(mut self, config: Value) -> Self {
        self.init.config = config;
        self
    }

    /// The `data_dir` sent in `init` (default `null`).
    pub fn data_dir(mut self, dir: impl Into<String>) -> Self {
        self.init.data_dir = Some(dir.into());
        self
    }

    /// Answers the plugin's requests (`kv.*`, `registry.*`, `service.call`…) with `handler`
    /// instead of the default: an in-memory `kv.*` store, an empty registry, and
    /// `service.call` failing with `-32004`.
    pub fn on_request(
        mut self,
        handler: impl Fn(&str, Value) -> Result<Value, RpcError> + Send + Sync + 'static,
    ) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Starts the plugin and drives it through `init` and `register`.
    pub async fn start(self) -> Result<TestHost, RpcError> {
        let init = serde_json::to_value(&self.init).map_err(RpcError::internal)?;
        let mut host = self.connect();
        host.request(methods::INIT, init).await?;
        let registered = host.request(methods::REGISTER, json!({})).await?;
        if let Some(Value::Object(methods)) = registered.get("methods") {
            host.methods = methods.clone();
        }
        let registered: RegisterResult = serde_json::from_value(registered)
            .map_err(|e| RpcError::internal(format!("register result is not {{\"services\": [...]}}: {e}")))?;
        host.services = registered.services;
        Ok(host)
    }

    /// Starts the plugin without the handshake, for tests of the raw protocol.
    pub fn connect(self) -> TestHost {
        let handler = self.handler.unwrap_or_else(default_handler);
        let (host_end, plugin_end) = tokio::io::duplex(256 * 1024);
        let (plugin_in, plugin_out) = tokio::io::split(plugin_end);
        let serve = tokio::spawn(crate::serve_on(self.plugin, plugin_in, plugin_out));
        let (host_in, host_out) = tokio::io::split(host_end);

        let (to_plugin, to_plugin_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_to_plugin(to_plugin_rx, host_out));

        let shared = Arc::new(Shared { pending: Mutex::new(Some(HashMap::new())) });
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let reader = Reader { shared: Arc::clone(&shared), to_plugin: to_plugin.clone(), handler, notes: notes_tx };
        tokio::spawn(async move {
            let mut reader = reader;
            let read = crate::serve::read_lines(host_in, |input| {
                if let crate::serve::Input::Line(line) = input {
                    reader.on_line(line);
                }
            })
            .await;
            if let Err(e) = read {
                eprintln!("testing: reading the plugin's output failed: {e}");
            }
            // Calls still waiting will get no answer now.
            drop(lock(&reader.shared.pending).take());
        });

        TestHost {
            to_plugin,
            next_id: AtomicU64::new(1),
            shared,
            notifications: tokio::sync::Mutex::new(notes_rx),
            serve: Some(serve),
            services: Vec::new(),
            methods: serde_json::Map::new(),
        }
    }
}

impl TestHost {
    /// Starts `plugin` with the default settings and drives it through `init` and `register`.
    pub async fn start<P: Plugin>(plugin: P) -> Result<TestHost, RpcError> {
        Self::builder(plugin).start().await
    }

    /// A builder to set `init` params or the request handler first.
    pub fn builder<P: Plugin>(plugin: P) -> TestHostBuilder<P> {
        TestHostBuilder {
            plugin,
            init: InitParams {
                protocol_version: PROTOCOL_VERSION,
                name: "test-plugin".to_owned(),
                version: "0.0.0".to_owned(),
                config: json!({}),
                data_dir: None,
                supervisor: SupervisorInfo {
                    name: "plugind".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                },
            },
            handler: None,
        }
    }

    /// The services the plugin declared in `register`.
    pub fn services(&self) -> &[ServiceDecl] {
        &self.services
    }

    /// The methods the plugin declared for the catalog in `register` (the answer's `methods`).
    pub fn methods(&self) -> &serde_json::Map<String, Value> {
        &self.methods
    }

    /// Sends a request and returns a handle on its answer (its `id()` is what `cancel` and
    /// `$/progress` use).
    pub fn start_request(&self, method: &str, params: Value) -> PendingCall {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Some(pending) = lock(&self.shared.pending).as_mut() {
            pending.insert(id, tx);
        }
        self.send(jsonrpc::request_line(id, method, &params));
        PendingCall { id, rx }
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.start_request(method, params).result().await
    }

    /// Starts `execute` of `method` with `params`; see [`TestHost::start_request`].
    pub fn start_execute(&self, method: &str, params: Value) -> PendingCall {
        self.start_request(methods::EXECUTE, json!({ "method": method, "params": params }))
    }

    /// Calls `execute` of `method` with `params`, as plugind routes a host's call.
    pub async fn execute(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.start_execute(method, params).result().await
    }

    /// Calls `execute` as if `caller` had called `service` through the registry.
    pub async fn execute_from(
        &self,
        caller: &str,
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        let params = json!({ "method": method, "params": params, "service": service, "caller": caller });
        self.request(methods::EXECUTE, params).await
    }

    /// Runs one hook step.
    pub async fn hook(&self, hook: &str, payload: Value) -> Result<HookResult, RpcError> {
        let result = self.request(methods::HOOK, json!({ "hook": hook, "payload": payload })).await?;
        serde_json::from_value(result)
            .map_err(|e| RpcError::internal(format!("hook result is not {{\"payload\"}}: {e}")))
    }

    /// Sends `ping`.
    pub async fn ping(&self) -> Result<Value, RpcError> {
        self.request(methods::PING, json!({})).await
    }

    /// Sends `$/cancel` for request `id`.
    pub fn cancel(&self, id: u64) {
        self.notify(methods::CANCEL, json!({ "id": id }));
    }

    /// Sends a notification (`services.changed`, `onError`…).
    pub fn notify(&self, method: &str, params: Value) {
        self.send(jsonrpc::notification_line(method, &params));
    }

    /// Sends one raw line (a `\n` is added), e.g. garbage, to test robustness.
    pub fn send_line(&self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.send(bytes);
    }

    fn send(&self, line: Vec<u8>) {
        let _ = self.to_plugin.send(ToPlugin::Line(line));
    }

    /// The next notification the plugin sent, waiting for one; `None` once its output ended.
    pub async fn next_notification(&self) -> Option<Notification> {
        self.notifications.lock().await.recv().await
    }

    /// The next notification already received, if any.
    pub fn try_next_notification(&self) -> Option<Notification> {
        self.notifications.try_lock().ok()?.try_recv().ok()
    }

    /// Sends `teardown`, then closes the plugin's stdin and waits until it stopped serving.
    pub async fn teardown(&mut self) -> Result<(), RpcError> {
        let answered = self.request(methods::TEARDOWN, json!({})).await;
        self.close().await?;
        answered.map(drop)
    }

    /// Closes the plugin's stdin (as plugind does after `teardown`) and waits until it stopped
    /// serving; an I/O error of the SDK comes back as `-32603`.
    pub async fn close(&mut self) -> Result<(), RpcError> {
        let _ = self.to_plugin.send(ToPlugin::Close);
        match self.serve.take() {
            Some(serve) => match serve.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RpcError::internal(e)),
                Err(e) => Err(RpcError::internal(e)),
            },
            None => Ok(()),
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.to_plugin.send(ToPlugin::Close);
    }
}

/// A request sent to the plugin, not necessarily answered yet.
#[derive(Debug)]
pub struct PendingCall {
    id: u64,
    rx: oneshot::Receiver<Result<Value, RpcError>>,
}

impl PendingCall {
    /// The request's JSON-RPC id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the answer. If the plugin's output ends first, that is `-32003`, as plugind
    /// reports a plugin that died during a call.
    pub async fn result(self) -> Result<Value, RpcError> {
        self.rx.await.unwrap_or_else(|_| {
            Err(RpcError::new(codes::PLUGIN_CRASHED, "the plugin's output ended before it answered"))
        })
    }

    /// The answer if it has arrived; `None` if none has (yet).
    pub fn try_result(&mut self) -> Option<Result<Value, RpcError>> {
        self.rx.try_recv().ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn write_to_plugin(mut rx: mpsc::UnboundedReceiver<ToPlugin>, mut w: WriteHalf<tokio::io::DuplexStream>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            ToPlugin::Line(line) => {
                if w.write_all(&line).await.is_err() {
                    return;
                }
            }
            ToPlugin::Close => break,
        }
    }
    let _ = w.shutdown().await;
}

/// Routes what the plugin writes.
struct Reader {
    shared: Arc<Shared>,
    to_plugin: mpsc::UnboundedSender<ToPlugin>,
    handler: RequestHandler,
    notes: mpsc::UnboundedSender<Notification>,
}

impl Reader {
    fn on_line(&mut self, line: &[u8]) {
        let message = match Message::parse(line) {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "testing: the plugin wrote a line that is not JSON-RPC ({e}): {}",
                    String::from_utf8_lossy(line)
                );
                return;
            }
        };
        match message {
            Message::Response { id, outcome } => {
                let waiter = Message::numeric_id(id).and_then(|n| lock(&self.shared.pending).as_mut()?.remove(&n));
                let outcome = outcome.and_then(|raw| {
                    serde_json::from_str(raw.get()).map_err(|e| RpcError::internal(format!("bad result: {e}")))
                });
                match waiter {
                    Some(tx) => drop(tx.send(outcome)),
                    None => eprintln!("testing: the plugin answered unknown request {}", id.get()),
                }
            }
            Message::Request { id, method, params } => {
                let params = params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                let line = match (self.handler)(&method, params) {
                    Ok(result) => jsonrpc::result_line(id, &result),
                    Err(e) => jsonrpc::error_line(id, &e),
                };
                let _ = self.to_plugin.send(ToPlugin::Line(line));
            }
            Message::Notification { method, params } => {
                let params = params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                let _ = self.notes.send(Notification { method: method.into_owned(), params });
            }
        }
    }
}

/// In-memory `kv.*`, an empty registry, and no services to call.
fn default_handler() -> RequestHandler {
    let store: Mutex<BTreeMap<String, Value>> = Mutex::new(BTreeMap::new());
    Arc::new(move |method, params| {
        fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, RpcError> {
            serde_json::from_value(params).map_err(|e| RpcError::params_not_fitting(&e))
        }
        let not_found = |params: &Value| {
            let name = params.get("name").or_else(|| params.get("service")).cloned().unwrap_or(Value::Null);
            Err(RpcError::with_data(
                codes::SERVICE_NOT_FOUND,
                format!("service not found: {name}"),
                json!({ "service": name }),
            ))
        };
        match method {
            methods::KV_GET => {
                let k: KvKey = parse(params)?;
                Ok(json!({ "value": lock(&store).get(&k.key).cloned().unwrap_or(Value::Null) }))
            }
            methods::KV_SET => {
                let s: KvSetParams = parse(params)?;
                lock(&store).insert(s.key, s.value);
                Ok(Value::Null)
            }
            methods::KV_DELETE => {
                let k: KvKey = parse(params)?;
                Ok(json!({ "deleted": lock(&store).remove(&k.key).is_some() }))
            }
            methods::KV_LIST => {
                let l: KvListParams = parse(params)?;
                let prefix = l.prefix.unwrap_or_default();
                let keys: Vec<String> = lock(&store).keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                Ok(json!({ "keys": keys }))
            }
            methods::REGISTRY_GET_SERVICE => Ok(Value::Null),
            methods::REGISTRY_LIST_SERVICES => Ok(json!([])),
            methods::REGISTRY_REQUIRE_SERVICE | methods::SERVICE_CALL => not_found(&params),
            other => Err(RpcError::method_not_found(other)),
        }
    })
}
