//! The connection: one task reads plugind's lines, one writes ours, and a driver reconnects
//! after a break. A connection is a byte stream of lines: the control socket, or plugind's
//! `--listen` WebSocket through [`crate::websocket::bridge`] ([`Endpoint`]).
//!
//! Everything the two sides share lives in [`Shared`] behind a `std` mutex that is never held
//! across an `.await`: the calls in flight (answered by id), the services this client provides
//! (re-registered on every new connection) and the requests plugind is waiting on from us
//! (aborted by `$/cancel`).

use crate::provide::{Caller, Provided};
use crate::ClientError;
use futures::StreamExt;
use plugind_protocol::control as c;
use plugind_protocol::jsonrpc::{self, Message};
use plugind_protocol::methods;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, LinesCodec};

/// The longest line read from plugind: its frame limit bounds what plugins send (16 MiB), and
/// its own answers (`metrics.get` of many plugins, `plugins.list` of thousands) may be larger.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Where plugind is: its control socket, or its `--listen` address.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Socket(PathBuf),
    WebSocket(crate::websocket::Target),
}

/// A connection's reading side.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's writing side.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// A connection's two directions.
pub(crate) type Stream = (Reader, Writer);

impl Endpoint {
    /// One attempt to connect.
    pub(crate) async fn dial(&self) -> Result<Stream, ClientError> {
        match self {
            Endpoint::Socket(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|source| ClientError::Unreachable { path: path.clone(), source })?;
                served_by_us_or_root(&stream, path)
                    .map_err(|source| ClientError::Unreachable { path: path.clone(), source })?;
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Endpoint::WebSocket(target) => {
                // The bridge's task ends by itself once both pipes are dropped.
                let bridge = target.connect(MAX_LINE).await?;
                Ok((Box::new(bridge.read), Box::new(bridge.write)))
            }
        }
    }
}

/// Whether the socket at `path` may be plugind's: its server runs as our uid or root, or as
/// another user in a directory of theirs nobody else may write (a dedicated user's
/// `/run/plugind/`, which root reaches with `--socket`). A path in a directory anyone may write (`/tmp`) can be
/// bound first by any local user, who then reads every call sent to it (audit 19: an ordinary
/// user took root's default `/tmp/plugind-0.sock` before plugind started, and root's
/// `pluginctl call` sent its params there).
fn served_by_us_or_root(stream: &UnixStream, path: &std::path::Path) -> std::io::Result<()> {
    let server = stream.peer_cred()?.uid();
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if server == me || server == 0 {
        return Ok(());
    }
    // The socket's own directory: one the server's user (or root, or we) owns and nobody else
    // may write, as a dedicated user's is. (A path in a directory another user owns reaches that
    // user's plugind: what the caller asked for by giving it.)
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let own_dir = std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o022 == 0 && [server, me, 0].contains(&m.uid()));
    if own_dir {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "it is served by uid {server}, neither yours ({me}) nor root, in a directory others may write: \
             not your plugind (another user bound this path first); nothing was sent"
        ),
    ))
}

/// The first wait before reconnecting; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A `$/progress` notification for one of our calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// What the plugin is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How far it got, in units of `total`.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "whole_as_integer")]
    pub progress: Option<f64>,
    /// The whole amount of work, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "whole_as_integer")]
    pub total: Option<f64>,
}

/// Writes a whole number as an integer (`1`, as the plugin sent it, not `1.0`).
fn whole_as_integer<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact in an f64
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < EXACT => s.serialize_i64(*v as i64),
        Some(v) => s.serialize_f64(*v),
        None => s.serialize_none(),
    }
}

/// A progress callback (in an alias, the trait object is `'static`, as a boxed one is).
pub(crate) type ProgressFn = dyn FnMut(Progress) + Send;

/// A call in flight: where its answer and its progress go.
struct Pending {
    /// The result as plugind wrote it: decoding is the caller's (`Client::call_raw` prints it as
    /// it is, at any depth).
    answer: oneshot::Sender<Result<Box<RawValue>, ClientError>>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
}

/// What the connection tasks and the [`crate::Client`] share.
pub(crate) struct Shared {
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The writer's queue; `None` while there is no connection.
    out: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: HashMap<u64, Pending>,
    provided: Vec<Provided>,
    /// Whether `events.subscribe` was asked for: it is asked again after a reconnect.
    events: bool,
    /// plugind's requests being served, by their raw id, so `$/cancel` can abort them.
    serving: HashMap<String, AbortHandle>,
    /// Where notifications go (`event`, `log`, `trace`…); dropped when the client ends for good.
    notify: Option<mpsc::UnboundedSender<(String, Value)>>,
    /// An error plugind sent under no id just before closing (it refused the connection: too
    /// many open): the calls the break fails end with it rather than "connection lost".
    farewell: Option<plugind_protocol::jsonrpc::RpcError>,
}

impl Shared {
    /// A connection on `stream`, and the receiving end of its notifications. With `reconnect`,
    /// a break is followed by new connections to `endpoint` (backoff 100 ms doubling to 2 s)
    /// that re-register what this client provides; without it, the client ends at the first
    /// break.
    pub(crate) fn start(
        stream: Stream,
        endpoint: Endpoint,
        reconnect: bool,
    ) -> (Arc<Shared>, mpsc::UnboundedReceiver<(String, Value)>, tokio::task::JoinHandle<()>) {
        let (notify, notifications) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            state: Mutex::new(State { notify: Some(notify), ..State::default() }),
        });
        // Opened before the driver runs, so calls can be sent as soon as `start` returns.
        let session = open(&shared, stream, true);
        let driver = tokio::spawn(drive(shared.clone(), session, endpoint, reconnect));
        (shared, notifications, driver)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a request and waits for its answer, handing each `$/progress` for it to
    /// `on_progress`. Dropping the future before the answer sends `$/cancel { id }`.
    pub(crate) async fn call<P: Serialize + ?Sized>(
        self: &Arc<Self>,
        method: &str,
        params: &P,
        mut on_progress: Option<&mut ProgressFn>,
    ) -> Result<Box<RawValue>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, mut answered) = oneshot::channel();
        let (progress, mut progressed) = match on_progress {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        {
            let mut st = self.lock();
            let out = st.out.clone().ok_or_else(|| lost(&st))?;
            st.pending.insert(id, Pending { answer, progress });
            out.send(jsonrpc::request_line(id, method, params)).map_err(|_| ClientError::ConnectionLost)?;
        }
        let mut guard = CancelOnDrop { shared: self, id: Some(id) };
        loop {
            tokio::select! {
                biased;
                Some(p) = async { progressed.as_mut()?.recv().await } => {
                    if let Some(f) = on_progress.as_mut() {
                        f(p);
                    }
                }
                answer = &mut answered => {
                    guard.id = None;
                    return answer.unwrap_or(Err(ClientError::ConnectionLost));
                }
            }
        }
    }

    /// Registers a provided service now (and after every reconnect).
    pub(crate) async fn provide(self: &Arc<Self>, provided: Provided) -> Result<(), ClientError> {
        let register = provided.register.clone();
        let name = provided.name.clone();
        self.lock().provided.push(provided);
        let result = self.call(c::SERVICES_REGISTER, &register, None).await;
        if result.is_err() {
            self.lock().provided.retain(|p| p.name != name);
        }
        result.map(drop)
    }

    /// Subscribes this connection (and every later one) to lifecycle events.
    pub(crate) async fn subscribe_events(self: &Arc<Self>) -> Result<(), ClientError> {
        if self.lock().events {
            return Ok(());
        }
        self.call(c::EVENTS_SUBSCRIBE, &json!({}), None).await?;
        self.lock().events = true;
        Ok(())
    }
}

/// Sends `$/cancel` for a call whose future is dropped before its answer came.
struct CancelOnDrop<'a> {
    shared: &'a Shared,
    /// The call's id while it is unanswered.
    id: Option<u64>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut st = self.shared.lock();
        if st.pending.remove(&id).is_some() {
            if let Some(out) = &st.out {
                let _ = out.send(jsonrpc::notification_line(methods::CANCEL, &json!({ "id": id })));
            }
        }
    }
}

/// Runs connections until the client is dropped (the task is aborted) or, without
/// `reconnect`, until the first break.
async fn drive(shared: Arc<Shared>, mut session: Session, endpoint: Endpoint, reconnect: bool) {
    loop {
        serve(&shared, session).await;
        broken(&shared);
        if !reconnect {
            shared.lock().notify = None;
            return;
        }
        session = open(&shared, reconnected(&endpoint).await, false);
    }
}

/// Connects to `endpoint` again, backing off from 100 ms to 2 s between attempts.
async fn reconnected(endpoint: &Endpoint) -> Stream {
    let mut delay = BACKOFF_START;
    loop {
        tokio::time::sleep(delay).await;
        if let Ok(s) = endpoint.dial().await {
            return s;
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// Why calls fail while there is no connection: plugind's farewell if it sent one, else
/// "connection lost".
fn lost(st: &State) -> ClientError {
    st.farewell.clone().map_or(ClientError::ConnectionLost, ClientError::Rpc)
}

/// A break: every call in flight fails at once, every request of plugind's is abandoned.
fn broken(shared: &Shared) {
    let mut st = shared.lock();
    st.out = None;
    let pending: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
    for p in pending {
        let _ = p.answer.send(Err(lost(&st)));
    }
    for (_, h) in st.serving.drain() {
        h.abort();
    }
}

/// A connection whose writer queue is already the client's.
struct Session {
    read: Reader,
    write: Writer,
    out: mpsc::UnboundedSender<Vec<u8>>,
    queue: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Makes `stream` the client's connection. On a new connection (not the `first`), what the
/// client provides and subscribed to is asked for again before anything else is sent.
fn open(shared: &Shared, stream: Stream, first: bool) -> Session {
    let (read, write) = stream;
    let (out, queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut st = shared.lock();
    st.farewell = None;
    if !first {
        let id = || shared.next_id.fetch_add(1, Ordering::Relaxed);
        for p in &st.provided {
            let _ = out.send(jsonrpc::request_line(id(), c::SERVICES_REGISTER, &p.register));
        }
        if st.events {
            let _ = out.send(jsonrpc::request_line(id(), c::EVENTS_SUBSCRIBE, &json!({})));
        }
    }
    st.out = Some(out.clone());
    Session { read, write, out, queue }
}

/// One connection, until it breaks.
async fn serve(shared: &Arc<Shared>, session: Session) {
    let Session { read, mut write, out, mut queue } = session;
    let writer = async move {
        while let Some(line) = queue.recv().await {
            if write.write_all(&line).await.is_err() {
                return;
            }
        }
    };
    let reading = read_lines(shared, read, &out);
    tokio::pin!(reading);
    tokio::select! {
        () = &mut reading => return,
        () = writer => {}
    }
    // A write failed: plugind closed. What it wrote before closing is read still (its farewell,
    // when it refused the connection), for as long as it takes to reach the end.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), reading).await;
}

/// A line read from plugind, or word of one over [`MAX_LINE`] (skipped).
enum Line {
    Text(String),
    TooLong,
}

/// `LinesCodec` with a line over its limit as an item, not an error: `FramedRead` ends the
/// stream at the first error, and one long answer must not end the connection.
struct Lines(LinesCodec);

impl tokio_util::codec::Decoder for Lines {
    type Item = Line;
    type Error = tokio_util::codec::LinesCodecError;

    fn decode(&mut self, buf: &mut tokio_util::bytes::BytesMut) -> Result<Option<Line>, Self::Error> {
        match self.0.decode(buf) {
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            other => other.map(|l| l.map(Line::Text)),
        }
    }

    fn decode_eof(&mut self, buf: &mut tokio_util::bytes::BytesMut) -> Result<Option<Line>, Self::Error> {
        match self.0.decode_eof(buf) {
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            other => other.map(|l| l.map(Line::Text)),
        }
    }
}

/// Reads plugind's lines until the connection ends.
async fn read_lines(shared: &Arc<Shared>, read: Reader, out: &mpsc::UnboundedSender<Vec<u8>>) {
    let mut lines = FramedRead::new(read, Lines(LinesCodec::new_with_max_length(MAX_LINE)));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(Line::Text(line)) => line,
            // The codec skips the rest of that line and reads on. Whose answer it was cannot be
            // read; with a single call waiting it can only be that one's, which then ends saying
            // why (not "connection lost": plugind is fine).
            Ok(Line::TooLong) => {
                let mut state = shared.lock();
                if state.pending.len() == 1 {
                    let only = state.pending.keys().next().copied();
                    if let Some(p) = only.and_then(|id| state.pending.remove(&id)) {
                        let why =
                            format!("plugind's answer was over {} MiB, more than this client takes", MAX_LINE >> 20);
                        let _ = p.answer.send(Err(ClientError::Rpc(plugind_protocol::jsonrpc::RpcError::new(
                            plugind_protocol::codes::INTERNAL_ERROR,
                            why,
                        ))));
                    }
                }
                continue;
            }
            Err(_) => return,
        };
        match Message::parse(line.as_bytes()) {
            Ok(Message::Response { id, outcome }) => {
                let Some(id) = Message::numeric_id(id) else {
                    if let (Err(e), "null") = (outcome, id.get()) {
                        shared.lock().farewell = Some(e);
                    }
                    continue;
                };
                let Some(p) = shared.lock().pending.remove(&id) else { continue };
                // Not decoded here: a result nested past serde_json's limit (128) was
                // "connection lost" though plugind answered fine (audit 21).
                let result = match outcome {
                    Ok(raw) => Ok(raw.to_owned()),
                    Err(e) => Err(ClientError::Rpc(e)),
                };
                let _ = p.answer.send(result);
            }
            Ok(Message::Notification { method, params }) => {
                let params: Value = params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                notification(shared, &method, params);
            }
            Ok(Message::Request { id, method, params }) => request(shared, out, id, &method, params),
            Err(_) => {}
        }
    }
}

/// `$/progress` goes to its call, `$/cancel` aborts the request it names, the rest to the
/// client's notifications.
fn notification(shared: &Shared, method: &str, params: Value) {
    let mut st = shared.lock();
    match method {
        methods::PROGRESS => {
            let Some(id) = params["id"].as_u64() else { return };
            let Some(tx) = st.pending.get(&id).and_then(|p| p.progress.as_ref()) else { return };
            if let Ok(p) = serde_json::from_value(params) {
                let _ = tx.send(p);
            }
        }
        methods::CANCEL => {
            if let Some(h) = st.serving.remove(&params["id"].to_string()) {
                h.abort();
            }
        }
        _ => {
            if let Some(tx) = &st.notify {
                let _ = tx.send((method.to_owned(), params));
            }
        }
    }
}

/// plugind's `execute` for a provided service: served in a task of its own, answered on `out`.
fn request(
    shared: &Arc<Shared>,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    id: &RawValue,
    method: &str,
    params: Option<&RawValue>,
) {
    let key = id.get().to_owned();
    let id: Box<RawValue> = id.to_owned();
    if method != methods::EXECUTE {
        let _ = out.send(jsonrpc::error_line(&id, &jsonrpc::RpcError::method_not_found(method)));
        return;
    }
    let call: methods::ExecuteParams = match params.map(|p| serde_json::from_str(p.get())) {
        Some(Ok(p)) => p,
        _ => {
            let _ =
                out.send(jsonrpc::error_line(&id, &jsonrpc::RpcError::invalid_params("expected { method, params }")));
            return;
        }
    };
    let mut st = shared.lock();
    let provided = st.provided.iter().find(|p| call.service.as_deref().is_none_or(|s| s == p.name));
    let Some(provided) = provided else {
        let e =
            jsonrpc::RpcError::new(plugind_protocol::codes::SERVICE_NOT_FOUND, "this host provides no such service");
        let _ = out.send(jsonrpc::error_line(&id, &e));
        return;
    };
    let caller = Caller { plugin: call.caller, service: call.service };
    let work = provided.handlers.serve(&call.method, call.params, caller);
    let (out, shared2, key2) = (out.clone(), shared.clone(), key.clone());
    // Spawned under the lock so the task cannot finish (and forget itself) before it is recorded.
    let task = tokio::spawn(async move {
        let line = match work.await {
            Ok(v) => jsonrpc::result_line(&id, &v),
            Err(e) => jsonrpc::error_line(&id, &e.to_rpc()),
        };
        shared2.lock().serving.remove(&key2);
        let _ = out.send(line);
    });
    st.serving.insert(key, task.abort_handle());
}

#[cfg(test)]
mod tests {
    /// Progress figures pass on as the plugin wrote them: integers stay integers.
    #[test]
    fn whole_progress_figures_serialize_as_integers() {
        let p = super::Progress { message: None, progress: Some(1.0), total: Some(2.5) };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"progress":1,"total":2.5}"#);
        let p = super::Progress { message: Some("m".into()), progress: Some(-3.0), total: None };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"message":"m","progress":-3}"#);
    }
}
