//! The reader loop: frames lines, routes messages, runs each call as a task.

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Poll, Waker};

use plugind_protocol::jsonrpc::{error_line, result_line, Message};
use plugind_protocol::methods::{
    self, CancelParams, HookResult, InitParams, InitResult, OnErrorParams, ServiceDecl, ServicesChangedParams,
    SupervisorInfo,
};
use plugind_protocol::version::PROTOCOL_VERSION;
use plugind_protocol::{codes, RpcError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use crate::conn::{self, Conn};
use crate::context::{CancelToken, Context, Request, TraceContext};
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
    let read = read_lines(reader, |line| dispatch(&plugin, &conn, line)).await;
    conn.wind_down(crate::EOF_GRACE).await;
    let written = writer.await.map_err(io::Error::other)?;
    read?;
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Calls `on_line` with every line of `reader` (without `\n` or `\r\n`) until its end.
///
/// A line that fits in the read buffer is passed without copying; longer ones are collected,
/// up to [`MAX_FRAME_BYTES`].
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(reader: R, mut on_line: impl FnMut(&[u8])) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut partial: Vec<u8> = Vec::new();
    // Set while skipping the rest of an over-long line.
    let mut skipping = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !partial.is_empty() && !skipping {
                on_line(trim(&partial));
            }
            return Ok(());
        }
        let (chunk, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let used = chunk.len() + usize::from(complete);
        if skipping {
            skipping = !complete;
        } else if partial.len() + chunk.len() > MAX_FRAME_BYTES {
            eprintln!("plugind-sdk: skipping a line from plugind longer than {MAX_FRAME_BYTES} bytes");
            partial = Vec::new();
            skipping = !complete;
        } else if complete && partial.is_empty() {
            on_line(trim(chunk));
        } else {
            partial.extend_from_slice(chunk);
            if complete {
                on_line(trim(&partial));
                partial.clear();
                if partial.capacity() > 1024 * 1024 {
                    partial = Vec::new();
                }
            }
        }
        reader.consume(used);
    }
}

fn trim(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn dispatch<P: Plugin>(plugin: &Arc<P>, conn: &Arc<Conn>, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match Message::parse(line) {
        Ok(Message::Request { id, method, params }) => on_request(plugin, conn, id, &method, params),
        Ok(Message::Notification { method, params }) => on_notification(plugin, conn, &method, params),
        Ok(Message::Response { id, outcome }) => conn.complete(id, outcome),
        Err(e) => eprintln!("plugind-sdk: skipping a line from plugind: {e}"),
    }
}

/// Absent params read as `{}`.
fn params_of<T: DeserializeOwned>(params: Option<&RawValue>) -> Result<T, RpcError> {
    serde_json::from_str(params.map_or("{}", RawValue::get)).map_err(RpcError::invalid_params)
}

#[derive(Serialize)]
struct Empty {}

/// `execute` params, with the trace context plugind passes in `_meta`.
#[derive(Deserialize)]
struct ExecuteIn {
    method: String,
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
struct HookIn {
    hook: String,
    #[serde(default)]
    payload: Value,
    #[serde(default, rename = "_meta")]
    meta: Option<TraceContext>,
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

fn on_request<P: Plugin>(plugin: &Arc<P>, conn: &Arc<Conn>, id: &RawValue, method: &str, params: Option<&RawValue>) {
    let needs_init = matches!(method, methods::REGISTER | methods::EXECUTE | methods::HOOK);
    if needs_init && conn.init.get().is_none() {
        conn.send(error_line(id, &not_initialized(method)));
        return;
    }
    let p = || Arc::clone(plugin);
    let spawned = match method {
        methods::PING => {
            conn.send(result_line(id, &Empty {}));
            Ok(())
        }
        methods::INIT => params_of::<LenientInit>(params).map(|params| {
            let params = InitParams::from(params);
            let _ = conn.init.set(params.clone());
            let p = p();
            start_call(conn, id, None, None, None, |ctx| async move {
                p.init(ctx, params).await?;
                Ok(InitResult { protocol_version: Some(u64::from(PROTOCOL_VERSION)) })
            })
        }),
        methods::REGISTER => {
            let p = p();
            start_call(conn, id, None, None, None, |ctx| async move {
                let mut registry = Registry::new(ctx);
                p.register(&mut registry).await?;
                let (services, methods) = registry.into_parts();
                Ok(RegisterAnswer { services, methods })
            });
            Ok(())
        }
        methods::EXECUTE => params_of::<ExecuteIn>(params).map(|call| {
            let ExecuteIn { method, params, service, caller, meta } = call;
            let p = p();
            start_call(conn, id, caller, service, meta, |ctx| async move { p.execute(ctx, &method, params).await })
        }),
        methods::HOOK => params_of::<HookIn>(params).map(|h| {
            let p = p();
            start_call(conn, id, None, None, h.meta, |ctx| async move {
                let result: HookResult = p.hook(ctx, &h.hook, h.payload).await?;
                Ok(result)
            })
        }),
        methods::TEARDOWN => {
            let p = p();
            start_call(conn, id, None, None, None, |ctx| async move {
                p.teardown(ctx).await?;
                Ok(Value::Null)
            });
            Ok(())
        }
        other => Err(RpcError::method_not_found(other)),
    };
    if let Err(e) = spawned {
        conn.send(error_line(id, &e));
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

/// Starts one call from plugind and answers it, unless it was cancelled.
///
/// The handler's future is polled once right here, on the reader: a handler that does not wait
/// (most do not) is answered at once, with no task, no waker and no entry in the table of calls in
/// flight. Only one that is still pending becomes a task of its own, registered so that
/// `$/cancel` can reach it. The reader handles the next line only after this returns, so a
/// `$/cancel` for this call always finds it registered.
fn start_call<T, F, Fut>(
    conn: &Arc<Conn>,
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
    let req = Arc::new(Request { id: id.to_owned(), cancel: CancelToken::new(), caller, service, trace });
    // Boxed on its own: the handler's future sits inside the task's future several times over
    // (the panic guard, the answer), which made each task about 1.9 KB, past glibc's per-thread
    // cache, so every call took malloc's slow path and copied the task around.
    let mut call = Box::pin(make(Context::new(Arc::clone(conn), Some(Arc::clone(&req)))));
    // A waker that does nothing: a handler that stays pending is polled again by its task, with
    // the task's waker, which every tokio resource then registers in its place.
    let mut cx = std::task::Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(outcome)) => answer(conn, &req, &outcome),
        Err(panic) => answer::<T>(conn, &req, &Err(panicked(&*panic))),
        Ok(Poll::Pending) => {
            let key: Box<str> = id.get().into();
            conn.begin(key.clone(), req.cancel.clone());
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

/// Sends a call's answer, unless plugind cancelled the call (it has answered the caller).
fn answer<T: Serialize>(conn: &Conn, req: &Request, outcome: &Result<T, RpcError>) {
    if !req.cancel.is_cancelled() {
        conn.send(match outcome {
            Ok(result) => result_line(&req.id, result),
            Err(e) => error_line(&req.id, e),
        });
    }
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
