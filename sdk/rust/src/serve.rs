//! The reader loop: frames lines, routes messages, runs each call as a task.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Poll, Waker};

use plugind_protocol::jsonrpc::{self, error_line, result_line, Message};
use plugind_protocol::methods::{
    self, CancelParams, HookResult, InitParams, InitResult, OnErrorParams, ServiceDecl, ServicesChangedParams,
    SupervisorInfo,
};
use plugind_protocol::version::PROTOCOL_VERSION;
use plugind_protocol::{codes, RpcError};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use crate::conn::{self, Conn};
use crate::context::{Context, Request, TraceContext};
use crate::plugin::Plugin;
use crate::registry::Registry;

/// The longest line the SDK reads (16 MiB, plugind's default frame limit).
/// A longer line is skipped without being buffered whole, and reported on stderr.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Serves `plugin` over `reader` (plugind → plugin) and `writer` (plugin → plugind) until the
/// reader reaches its end; [`crate::serve`] calls it with the process's stdio.
///
/// Must run inside a tokio runtime: every call is spawned as a task.
/// Returns once every call in flight has answered or been cancelled (see [`crate::EOF_GRACE`])
/// and everything has been written. A broken pipe on the writer (plugind went away) is not an error.
pub async fn serve_on<P, R, W>(plugin: P, reader: R, writer: W) -> io::Result<()>
where
    P: Plugin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(conn::write_loop(rx, writer));
    let conn = Arc::new(Conn::new(tx));
    let plugin = Arc::new(plugin);
    // Answers the reader makes itself wait here until what it has read is handled, then leave
    // together: one line for the writer per read of stdin, not one per call.
    let mut held = Vec::new();
    let read = read_lines(reader, |input| match input {
        Input::Line(line) => {
            dispatch(&plugin, &conn, &mut held, line);
            if held.len() >= HELD_MAX {
                release(&conn, &mut held);
            }
        }
        Input::Drained => release(&conn, &mut held),
    })
    .await;
    release(&conn, &mut held);
    conn.wind_down(crate::EOF_GRACE).await;
    let written = writer.await.map_err(io::Error::other)?;
    read?;
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Held answers are handed to the writer once they reach this size, drained or not.
const HELD_MAX: usize = 64 * 1024;

/// Hands the answers held so far to the writer, as one line of the queue.
fn release(conn: &Conn, held: &mut Vec<u8>) {
    if !held.is_empty() {
        // The next read is likely to bring as much.
        let capacity = held.len().min(HELD_MAX);
        conn.send(std::mem::replace(held, Vec::with_capacity(capacity)));
    }
}

/// What [`read_lines`] hands on.
pub(crate) enum Input<'a> {
    /// One line, without `\n` or `\r\n`.
    Line(&'a [u8]),
    /// Every line read so far has been handed on, and the next step reads (and may wait).
    Drained,
}

/// Calls `on_input` with every line of `reader` until its end, and with [`Input::Drained`]
/// whenever it has handed on all it read.
///
/// A line that fits in the read buffer is passed without copying; longer ones are collected,
/// up to [`MAX_FRAME_BYTES`].
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(reader: R, mut on_input: impl FnMut(Input<'_>)) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut partial: Vec<u8> = Vec::new();
    // Set while skipping the rest of an over-long line.
    let mut skipping = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !partial.is_empty() && !skipping {
                on_input(Input::Line(trim(&partial)));
            }
            return Ok(());
        }
        let (chunk, complete) = match find_newline(buf) {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let used = chunk.len() + usize::from(complete);
        let drained = used == buf.len();
        if skipping {
            skipping = !complete;
        } else if partial.len() + chunk.len() > MAX_FRAME_BYTES {
            eprintln!("plugind-sdk: skipping a line from plugind longer than {MAX_FRAME_BYTES} bytes");
            partial = Vec::new();
            skipping = !complete;
        } else if complete && partial.is_empty() {
            on_input(Input::Line(trim(chunk)));
        } else {
            partial.extend_from_slice(chunk);
            if complete {
                on_input(Input::Line(trim(&partial)));
                partial.clear();
                if partial.capacity() > 1024 * 1024 {
                    partial = Vec::new();
                }
            }
        }
        reader.consume(used);
        if drained {
            on_input(Input::Drained);
        }
    }
}

/// Where the first `\n` of `buf` is. libc's `memchr` is vectorised; `iter().position` went a
/// byte at a time, a tenth of the SDK's CPU per call.
fn find_newline(buf: &[u8]) -> Option<usize> {
    // SAFETY: memchr reads at most `buf.len()` bytes from the start of `buf`, all in bounds, and
    // returns null or a pointer to one of them.
    let found = unsafe { libc::memchr(buf.as_ptr().cast(), libc::c_int::from(b'\n'), buf.len()) };
    (!found.is_null()).then(|| found as usize - buf.as_ptr() as usize)
}

fn trim(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Handles one line; what the reader answers itself is appended to `held`.
fn dispatch<P: Plugin>(plugin: &Arc<P>, conn: &Arc<Conn>, held: &mut Vec<u8>, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    // Most lines are `execute` requests: read those in one pass, envelope and params together.
    // Anything else, or anything unusual about one, takes the general path, which has the last word.
    let mut parts = CallParts::default();
    if let Some(id) = parts.read(line) {
        on_call(plugin, conn, held, id, &mut parts);
        return;
    }
    match Message::parse(line) {
        Ok(Message::Request { id, method, params }) => on_request(plugin, conn, held, id, &method, params),
        Ok(Message::Notification { method, params }) => on_notification(plugin, conn, &method, params),
        Ok(Message::Response { id, outcome }) => conn.complete(id, outcome),
        Err(e) => eprintln!("plugind-sdk: skipping a line from plugind: {e}"),
    }
}

/// Absent params read as `{}`.
fn params_of<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, RpcError> {
    serde_json::from_str(params.map_or("{}", RawValue::get)).map_err(|e| RpcError::params_not_fitting(&e))
}

#[derive(Serialize)]
struct Empty {}

/// `execute` params, with the trace context plugind passes in `_meta`. The method name is
/// borrowed from the line (unless it has escapes); `caller` and `service`, which only calls
/// through the service registry carry, are owned.
#[derive(Deserialize)]
struct ExecuteIn<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    caller: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<TraceContext>,
}

/// `hook` params, with the trace context plugind passes in `_meta`.
#[derive(Deserialize)]
struct HookIn<'a> {
    #[serde(borrow)]
    hook: Cow<'a, str>,
    #[serde(default)]
    payload: Value,
    #[serde(default, rename = "_meta")]
    meta: Option<TraceContext>,
}

impl<'a> From<ExecuteIn<'a>> for CallParts<'a> {
    fn from(e: ExecuteIn<'a>) -> Self {
        CallParts {
            kind: methods::EXECUTE,
            name: Some(e.method),
            value: e.params,
            service: e.service,
            caller: e.caller,
            meta: e.meta,
        }
    }
}

impl<'a> From<HookIn<'a>> for CallParts<'a> {
    fn from(h: HookIn<'a>) -> Self {
        CallParts { kind: methods::HOOK, name: Some(h.hook), value: h.payload, meta: h.meta, ..CallParts::default() }
    }
}

/// What an `execute` or `hook` call is made of.
///
/// The one-pass read of a line fills it in place: the envelope and the params together, the
/// params' own `params` (or `payload`) parsed straight into a `Value`. (The general path parses
/// the envelope first, keeping the params raw, and then the params, which scanned every call's
/// params twice; and a derived struct returned through serde's `Result`s was copied several
/// times on its way out.)
#[derive(Default)]
struct CallParts<'a> {
    /// `methods::EXECUTE` or `methods::HOOK`.
    kind: &'static str,
    /// `params.method`, or `params.hook`.
    name: Option<Cow<'a, str>>,
    /// `params.params`, or `params.payload`.
    value: Value,
    service: Option<String>,
    caller: Option<String>,
    meta: Option<TraceContext>,
}

impl<'a> CallParts<'a> {
    /// Reads `line` into `self` if it is a valid `execute` or `hook` request in the shape plugind
    /// writes (`"method"` before `"params"`, no escapes in the envelope or in the params' names, no
    /// other members in the envelope) with params that fit, and returns its id; `None` for
    /// anything else, which takes the general path (and gets its error there, if it is one).
    /// A line that is not such a request is given up on at its first member that says so
    /// (`"result"`, another method), so a response costs next to nothing here.
    fn read(&mut self, line: &'a [u8]) -> Option<&'a RawValue> {
        let text = std::str::from_utf8(line).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let id = LineSeed(self).deserialize(&mut de).ok()?;
        de.end().ok()?;
        self.name.is_some().then_some(id?)
    }
}

/// Reads the envelope into a [`CallParts`]; its value is the request's id.
struct LineSeed<'p, 'a>(&'p mut CallParts<'a>);

impl<'de> DeserializeSeed<'de> for LineSeed<'_, 'de> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// The error that sends a line to the general path; never shown, the general path reads it again.
fn not_plain<E: serde::de::Error>() -> E {
    E::custom("not a plain execute or hook request")
}

impl<'de> Visitor<'de> for LineSeed<'_, 'de> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an execute or hook request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let parts = self.0;
        let (mut jsonrpc, mut id, mut params) = (false, None, false);
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "jsonrpc" if !jsonrpc => {
                    if map.next_value::<&'de str>()? != "2.0" {
                        return Err(not_plain());
                    }
                    jsonrpc = true;
                }
                "id" if id.is_none() => {
                    let value: &'de RawValue = map.next_value()?;
                    if value.get() == "null" {
                        return Err(not_plain());
                    }
                    id = Some(value);
                }
                "method" if parts.kind.is_empty() => {
                    parts.kind = match map.next_value::<&'de str>()? {
                        methods::EXECUTE => methods::EXECUTE,
                        methods::HOOK => methods::HOOK,
                        _ => return Err(not_plain()),
                    };
                }
                "params" if !params && !parts.kind.is_empty() => {
                    map.next_value_seed(ParamsSeed(&mut *parts))?;
                    params = true;
                }
                _ => return Err(not_plain()),
            }
        }
        Ok(id)
    }
}

/// Reads `execute` or `hook` params (whichever `kind` says) into a [`CallParts`].
struct ParamsSeed<'p, 'a>(&'p mut CallParts<'a>);

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("execute or hook params")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let parts = self.0;
        let execute = parts.kind == methods::EXECUTE;
        let (mut value, mut service, mut caller, mut meta) = (false, false, false, false);
        // Each member once, as a derived `Deserialize` requires.
        let once = |seen: &mut bool| if std::mem::replace(seen, true) { Err(not_plain()) } else { Ok(()) };
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "method" | "hook" if (key == "method") == execute => {
                    if parts.name.is_some() {
                        return Err(not_plain());
                    }
                    parts.name = Some(Cow::Borrowed(map.next_value::<&'de str>()?));
                }
                "params" | "payload" if (key == "params") == execute => {
                    once(&mut value)?;
                    parts.value = map.next_value()?;
                }
                "service" if execute => {
                    once(&mut service)?;
                    parts.service = map.next_value()?;
                }
                "caller" if execute => {
                    once(&mut caller)?;
                    parts.caller = map.next_value()?;
                }
                "_meta" => {
                    once(&mut meta)?;
                    parts.meta = map.next_value()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A method or hook name, owned by the call's future (which may outlive the line): inline when
/// short, as names are.
enum Name {
    Inline { len: u8, bytes: [u8; Name::INLINE] },
    Heap(Box<str>),
}

impl Name {
    const INLINE: usize = 31;

    fn new(s: &str) -> Self {
        let mut bytes = [0; Name::INLINE];
        match (bytes.get_mut(..s.len()), u8::try_from(s.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(s.as_bytes());
                Name::Inline { len, bytes }
            }
            _ => Name::Heap(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // A whole `str` was copied in `new`, so this never fails.
            Name::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Name::Heap(s) => s,
        }
    }
}

/// The `register` answer: the services, and the methods declared for plugind's catalog (left out
/// when none are, so a plugin that declares nothing answers as before).
#[derive(Serialize)]
struct RegisterAnswer {
    services: Vec<ServiceDecl>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    methods: serde_json::Map<String, Value>,
}

/// `init` params, read leniently: only what a plugin cannot do without is required, so a host
/// that leaves out `supervisor` or `config` still gets an answer.
#[derive(Deserialize)]
struct LenientInit {
    #[serde(default = "default_protocol_version")]
    protocol_version: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    supervisor: Option<SupervisorInfo>,
}

fn default_protocol_version() -> u32 {
    PROTOCOL_VERSION
}

impl From<LenientInit> for InitParams {
    fn from(i: LenientInit) -> Self {
        let supervisor =
            i.supervisor.unwrap_or_else(|| SupervisorInfo { name: "plugind".into(), version: String::new() });
        InitParams {
            protocol_version: i.protocol_version,
            name: i.name,
            version: i.version,
            config: i.config,
            data_dir: i.data_dir,
            supervisor,
        }
    }
}

/// The handshake comes first: calls that need an initialized plugin are refused before `init`.
fn not_initialized(method: &str) -> RpcError {
    RpcError::with_data(
        codes::PLUGIN_UNAVAILABLE,
        format!("{method} before init: plugind must send init first"),
        serde_json::json!({ "state": "starting" }),
    )
}

fn on_request<P: Plugin>(
    plugin: &Arc<P>,
    conn: &Arc<Conn>,
    held: &mut Vec<u8>,
    id: &RawValue,
    method: &str,
    params: Option<&RawValue>,
) {
    let needs_init = matches!(method, methods::REGISTER | methods::EXECUTE | methods::HOOK);
    if needs_init && conn.init.get().is_none() {
        held.extend_from_slice(&error_line(id, &not_initialized(method)));
        return;
    }
    let p = || Arc::clone(plugin);
    let spawned = match method {
        methods::PING => {
            append_result(held, id, &Empty {});
            Ok(())
        }
        methods::INIT => params_of::<LenientInit>(params).map(|params| {
            let params = InitParams::from(params);
            let _ = conn.init.set(params.clone());
            let p = p();
            start_call(conn, held, id, None, None, None, |ctx| async move {
                p.init(ctx, params).await?;
                Ok(InitResult { protocol_version: Some(u64::from(PROTOCOL_VERSION)) })
            })
        }),
        methods::REGISTER => {
            let p = p();
            start_call(conn, held, id, None, None, None, |ctx| async move {
                let mut registry = Registry::new(ctx);
                p.register(&mut registry).await?;
                let (services, methods) = registry.into_parts();
                Ok(RegisterAnswer { services, methods })
            });
            Ok(())
        }
        methods::EXECUTE => {
            params_of::<ExecuteIn>(params).map(|call| on_call(plugin, conn, held, id, &mut call.into()))
        }
        methods::HOOK => params_of::<HookIn>(params).map(|hook| on_call(plugin, conn, held, id, &mut hook.into())),
        methods::TEARDOWN => {
            let p = p();
            start_call(conn, held, id, None, None, None, |ctx| async move {
                p.teardown(ctx).await?;
                Ok(Value::Null)
            });
            Ok(())
        }
        other => Err(RpcError::method_not_found(other)),
    };
    if let Err(e) = spawned {
        held.extend_from_slice(&error_line(id, &e));
    }
}

/// Runs an `execute` or `hook` call, or refuses it before `init`.
fn on_call<P: Plugin>(plugin: &Arc<P>, conn: &Arc<Conn>, held: &mut Vec<u8>, id: &RawValue, parts: &mut CallParts<'_>) {
    if conn.init.get().is_none() {
        held.extend_from_slice(&error_line(id, &not_initialized(parts.kind)));
        return;
    }
    let name = Name::new(parts.name.as_deref().unwrap_or_default());
    let value = parts.value.take();
    let p = Arc::clone(plugin);
    if parts.kind == methods::HOOK {
        start_call(conn, held, id, None, None, parts.meta.take(), |ctx| async move {
            let result: HookResult = p.hook(ctx, name.as_str(), value).await?;
            Ok(result)
        });
    } else {
        let (caller, service, meta) = (parts.caller.take(), parts.service.take(), parts.meta.take());
        start_call(
            conn,
            held,
            id,
            caller,
            service,
            meta,
            |ctx| async move { p.execute(ctx, name.as_str(), value).await },
        );
    }
}

fn on_notification<P: Plugin>(plugin: &Arc<P>, conn: &Arc<Conn>, method: &str, params: Option<&RawValue>) {
    let ctx = || Context::new(Arc::clone(conn), None);
    match method {
        methods::CANCEL => match params_of::<CancelParams>(params) {
            Ok(c) => conn.cancel(&c.id.to_string()),
            Err(e) => eprintln!("plugind-sdk: bad $/cancel: {e}"),
        },
        methods::SERVICES_CHANGED => match params_of::<ServicesChangedParams>(params) {
            Ok(change) => {
                let (p, ctx) = (Arc::clone(plugin), ctx());
                tokio::spawn(async move { p.services_changed(ctx, change).await });
            }
            Err(e) => eprintln!("plugind-sdk: bad services.changed: {e}"),
        },
        methods::ON_ERROR => match params_of::<OnErrorParams>(params) {
            Ok(OnErrorParams { code, message, data }) => {
                let (p, ctx) = (Arc::clone(plugin), ctx());
                tokio::spawn(async move { p.on_error(ctx, RpcError { code, message, data }).await });
            }
            Err(e) => eprintln!("plugind-sdk: bad onError: {e}"),
        },
        // JSON-RPC lets a peer ignore notifications it does not know.
        _ => {}
    }
}

/// Starts one call from plugind and answers it (`-32800` if it was cancelled).
///
/// The handler's future is polled once right here, on the reader: a handler that does not wait
/// (most do not) is answered at once, with no task, no waker and no entry in the table of calls in
/// flight. Only one that is still pending becomes a task of its own, registered so that
/// `$/cancel` can reach it. The reader handles the next line only after this returns, so a
/// `$/cancel` for this call always finds it registered.
fn start_call<T, F, Fut>(
    conn: &Arc<Conn>,
    held: &mut Vec<u8>,
    id: &RawValue,
    caller: Option<String>,
    service: Option<String>,
    trace: Option<TraceContext>,
    make: F,
) where
    T: Serialize,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
{
    let req = Arc::new(Request::new(id.to_owned(), caller, service, trace));
    // Boxed on its own: the handler's future sits inside the task's future several times over
    // (the panic guard, the answer), which made each task about 1.9 KB, past glibc's per-thread
    // cache, so every call took malloc's slow path and copied the task around.
    let mut call = Box::pin(make(Context::new(Arc::clone(conn), Some(Arc::clone(&req)))));
    // A waker that does nothing: a handler that stays pending is polled again by its task, with
    // the task's waker, which every tokio resource then registers in its place.
    let mut cx = std::task::Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(outcome)) => answer_into(held, &req, &outcome),
        Err(panic) => answer_into::<T>(held, &req, &Err(panicked(&*panic))),
        Ok(Poll::Pending) => {
            let key: Box<str> = id.get().into();
            conn.begin(key.clone(), req.token().clone());
            let conn = Arc::clone(conn);
            tokio::spawn(async move {
                let outcome = catch_unwind(call).await.unwrap_or_else(|panic| Err(panicked(&*panic)));
                answer(&conn, &req, &outcome);
                // Only now: the end-of-input path waits for this before it stops the writer.
                conn.end(&key);
            });
        }
    }
}

/// Sends a call's answer; a call plugind cancelled (it has answered the caller) is answered
/// `-32800` whatever the handler returned: that tells plugind the work is over, and frees the
/// `max_inflight` slot it keeps for a cancelled call until then.
fn answer<T: Serialize>(conn: &Conn, req: &Request, outcome: &Result<T, RpcError>) {
    conn.send(match outcome {
        _ if req.is_cancelled() => error_line(&req.id, &cancelled()),
        Ok(result) => result_line(&req.id, result),
        Err(e) => error_line(&req.id, e),
    });
}

/// [`answer`] appended to the answers the reader holds.
fn answer_into<T: Serialize>(held: &mut Vec<u8>, req: &Request, outcome: &Result<T, RpcError>) {
    match outcome {
        _ if req.is_cancelled() => held.extend_from_slice(&error_line(&req.id, &cancelled())),
        Ok(result) => append_result(held, &req.id, result),
        Err(e) => held.extend_from_slice(&error_line(&req.id, e)),
    }
}

/// The answer of a cancelled call.
fn cancelled() -> RpcError {
    RpcError::new(codes::REQUEST_CANCELLED, "cancelled")
}

/// Appends [`result_line`]`(id, result)` to `out`, without a buffer of its own.
fn append_result<T: Serialize + ?Sized>(out: &mut Vec<u8>, id: &RawValue, result: &T) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(br#","result":"#);
    jsonrpc::write_json(out, result);
    out.extend_from_slice(b"}\n");
}

fn panicked(panic: &(dyn Any + Send)) -> RpcError {
    let message = panic_message(panic);
    RpcError::with_data(
        codes::INTERNAL_ERROR,
        format!("internal error: handler panicked: {message}"),
        serde_json::json!({ "panic": message }),
    )
}

/// Polls `fut`, turning a panic into `Err(payload)`.
async fn catch_unwind<F: Future>(fut: F) -> Result<F::Output, Box<dyn Any + Send>> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
        Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(panic) => Poll::Ready(Err(panic)),
    })
    .await
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
