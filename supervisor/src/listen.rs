//! `--listen ADDR`: the control API over HTTP and WebSocket (jsonrpsee), behind a bearer token.
//!
//! Every request must carry `Authorization: Bearer <token>`, the token being the first line of
//! `--token-file`; anything else gets `401 Unauthorized` before any JSON is read. Each JSON-RPC
//! call then goes through [`crate::control::handlers::dispatch`], the very function the Unix
//! socket uses, so both APIs answer alike (same methods, results and error codes).
//!
//! What the NDJSON socket can do and this cannot: methods that send notifications or requests
//! back on the connection (`events.subscribe`, `plugins.trace`, `logs.tail` with `follow`,
//! `services.register`) answer `-32601` with a message pointing to the socket. What is not a
//! request gets the socket's answers (`read_post` checks an HTTP body with the socket's parser;
//! `Dispatch::batch` answers each request of a batch `-32600`). A WebSocket connection is one
//! control connection (one `Conn`) for its lifetime; a plain HTTP request is one of its own.
//!
//! Connecting needs no token, so connections are bounded ([`crate::transport::http`]): a cap on
//! how many are open, a timeout on silent ones. Descriptors are what plugind's control socket
//! and plugins need.

use crate::control::connection::Conn;
use crate::control::handlers;
use crate::transport::budget::Budget;
use crate::transport::frame::DEFAULT_MAX_FRAME;
use crate::transport::http::{serve_connection, Slots};
use crate::transport::peer::Peer;
use crate::Daemon;
use jsonrpsee::server::middleware::rpc::{
    Batch, BatchEntry, MethodResponse, Notification, Request, RpcServiceBuilder, RpcServiceT,
};
use jsonrpsee::server::{
    stop_channel, BatchRequestConfig, HttpBody, HttpResponse, Methods, ServerConfig, ServerHandle,
};
use jsonrpsee::types::{ErrorObject, Id};
use jsonrpsee::ResponsePayload;
use plugind_protocol::codes;
use plugind_protocol::control as c;
use plugind_protocol::jsonrpc::{null_id, Message, ParseError, RpcError, PARAMS_SHAPE};
use serde_json::value::RawValue;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::Service as _;

/// Largest answer sent (the socket has no such cap; this only guards memory).
const MAX_RESPONSE: u32 = 64 * 1024 * 1024;

/// A bound `--listen` address with its token, not serving yet (bound early, so a taken port
/// stops plugind before any plugin starts).
pub struct Listener {
    tcp: TcpListener,
    token: Arc<str>,
}

/// The running HTTP/WebSocket server; [`Serving::stop`] ends it.
pub struct Serving {
    handle: ServerHandle,
    /// The address actually bound.
    pub addr: SocketAddr,
}

impl Serving {
    /// Stops accepting and lets the connections finish their requests.
    pub fn stop(self) {
        let _ = self.handle.stop();
    }
}

/// Binds `addr` and reads the token file.
pub async fn bind(addr: &str, token_file: &Path) -> anyhow::Result<Listener> {
    let token = plugind_client::read_token(token_file).map_err(anyhow::Error::msg)?;
    if let Ok(meta) = std::fs::metadata(token_file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %token_file.display(), "the token file is readable by other users; chmod 600 it");
        }
    }
    let tcp = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(Listener { tcp, token: token.into() })
}

impl Listener {
    /// Serves the control API until [`Serving::stop`].
    pub fn serve(self, daemon: Arc<Daemon>) -> anyhow::Result<Serving> {
        let addr = self.tcp.local_addr()?;
        let (stop_handle, handle) = stop_channel();
        let config = ServerConfig::builder()
            // Batches reach `Dispatch::batch`, which answers each request in one `-32600`,
            // as the socket does (jsonrpsee's own refusal has a code of plugind's).
            .set_batch_request_config(BatchRequestConfig::Unlimited)
            .max_request_body_size(u32::try_from(DEFAULT_MAX_FRAME).unwrap_or(u32::MAX))
            .max_response_body_size(MAX_RESPONSE)
            // The cap is ours (`Slots`), counted per TCP connection.
            .max_connections(u32::MAX)
            // Answers buffered for a WebSocket's sender: few, as each may be large.
            .set_message_buffer_capacity(64)
            .build();
        let builder = jsonrpsee::server::Server::builder().set_config(config).to_service_builder();
        let Listener { tcp, token } = self;
        let slots = Slots::new("--listen");
        let max_connections = slots.max();
        tokio::spawn(async move {
            loop {
                let (sock, remote) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("--listen accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop_handle.clone().shutdown() => break,
                };
                // Over the cap the connection is closed at once (after a 503 if it takes one):
                // each costs plugind a descriptor, and its control socket and plugins need theirs.
                let Some(slot) = slots.take(&sock, remote) else { continue };
                let gate =
                    Arc::new(Gate { unsent: Budget::new(WS_UNSENT, WS_UNSENT_BYTES), reader: Default::default() });
                let (daemon, token, builder, stop, held, gated) =
                    (daemon.clone(), token.clone(), builder.clone(), stop_handle.clone(), slot.clone(), gate.clone());
                let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let authorized = bearer_ok(req.headers(), &token);
                    let mut rpc = builder
                        .clone()
                        .set_rpc_middleware(RpcServiceBuilder::new().layer(DispatchLayer {
                            daemon: daemon.clone(),
                            slot: held.clone(),
                            gate: gated.clone(),
                        }))
                        .build(Methods::new(), stop.clone());
                    async move {
                        if !authorized {
                            tracing::warn!(%remote, "--listen: request without a valid bearer token refused");
                            return Ok::<_, jsonrpsee::core::BoxError>(unauthorized());
                        }
                        match read_post(req).await {
                            Ok(req) => rpc.call(req).await,
                            Err(answer) => Ok(answer),
                        }
                    }
                });
                let sock = Gated { inner: sock, gate };
                tokio::spawn(serve_connection(sock, svc, stop_handle.clone().shutdown(), slot));
            }
        });
        tracing::info!(%addr, max_connections, "control API over HTTP and WebSocket (bearer token required)");
        Ok(Serving { handle, addr })
    }
}

/// How long an authorized request's body may take to arrive in full.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An authorized request made ready for jsonrpsee: a POST's body is read in full (bounded in
/// size and time) and checked as the control socket checks a line, so that what is not a
/// request gets the socket's very answer (`-32700`/`-32600`, under the request's own id, one
/// per request of a batch); anything else (a WebSocket upgrade) passes as it came.
async fn read_post(req: http::Request<hyper::body::Incoming>) -> Result<http::Request<HttpBody>, HttpResponse> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return Ok(http::Request::from_parts(parts, HttpBody::new(body)));
    }
    let too_large = |len: Option<u64>| {
        let size = len.map_or_else(|| "more than".to_owned(), |n| n.to_string());
        let e = RpcError::new(
            codes::INVALID_REQUEST,
            format!("request of {size} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit"),
        );
        json_answer(http::StatusCode::PAYLOAD_TOO_LARGE, error_line(null_id(), &e))
    };
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DEFAULT_MAX_FRAME as u64) {
        return Err(too_large(declared));
    }
    let limited = http_body_util::Limited::new(body, DEFAULT_MAX_FRAME);
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(None)),
        Ok(Err(e)) => return Err(plain(http::StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}\n"))),
        Err(_) => {
            let secs = BODY_READ_TIMEOUT.as_secs();
            return Err(plain(
                http::StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {secs} s\n"),
            ));
        }
    };
    if let Err(e) = Message::parse(&bytes) {
        let err = RpcError::new(e.code(), e.to_string());
        let ids = Message::request_ids_of(&bytes);
        let body = if ids.is_empty() {
            error_line(null_id(), &err)
        } else if Message::batch_members(&bytes).is_some() {
            // A batch's answer is an array, even of one; bounded like any answer (a body of tiny
            // members would make one many times its size).
            let mut body = String::from("[");
            for id in ids {
                if body.len() > MAX_RESPONSE as usize {
                    body = error_line(null_id(), &err);
                    break;
                }
                if body.len() > 1 {
                    body.push(',');
                }
                body.push_str(&error_line(id, &err));
            }
            if body.starts_with('[') {
                body.push(']');
            }
            body
        } else {
            error_line(ids[0], &err)
        };
        return Err(json_answer(http::StatusCode::OK, body));
    }
    Ok(http::Request::from_parts(parts, HttpBody::new(http_body_util::Full::new(bytes))))
}

/// An answer of `status` with `body` of `content_type`.
fn answer(status: http::StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut r = HttpResponse::new(HttpBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn json_answer(status: http::StatusCode, body: String) -> HttpResponse {
    answer(status, "application/json", body)
}

fn plain(status: http::StatusCode, text: String) -> HttpResponse {
    answer(status, "text/plain; charset=utf-8", text)
}

fn error_line(id: &RawValue, e: &RpcError) -> String {
    let line = plugind_protocol::jsonrpc::error_line(id, e);
    String::from_utf8_lossy(line.trim_ascii_end()).into_owned()
}

/// Whether the headers carry `Authorization: Bearer <token>` (compared in constant time).
fn bearer_ok(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, value)) = given.trim().split_once(' ') else { return false };
    scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(value.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> HttpResponse {
    let mut r = plain(http::StatusCode::UNAUTHORIZED, "401 Unauthorized: send Authorization: Bearer <token>\n".into());
    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    r
}

/// Makes one [`Dispatch`] per HTTP request, or per WebSocket connection.
#[derive(Clone)]
struct DispatchLayer {
    daemon: Arc<Daemon>,
    /// The TCP connection's place under the cap: a WebSocket connection holds it for its life.
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    /// The TCP connection's read gate.
    gate: Arc<Gate>,
}

/// A `--listen` connection's reading stops while [`WS_UNSENT`] of its calls, or calls holding
/// [`WS_UNSENT_BYTES`] of params and answers, are in flight or answered and not yet handed to its sender:
/// jsonrpsee runs every WebSocket message it reads at once, so a client that sends without
/// reading would otherwise grow plugind without bound. Its messages then wait in its own
/// socket, as on the control socket.
struct Gate {
    unsent: Budget,
    /// The connection's reader, woken when a place comes free.
    reader: futures::task::AtomicWaker,
}

impl Gate {
    fn shut(&self) -> bool {
        self.unsent.is_spent()
    }
}

/// A TCP stream read only while its [`Gate`] is open.
struct Gated {
    inner: tokio::net::TcpStream,
    gate: Arc<Gate>,
}

impl tokio::io::AsyncRead for Gated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.gate.shut() {
            // Registered before the second look: a place freed in between wakes this read.
            self.gate.reader.register(cx.waker());
            if self.gate.shut() {
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Gated {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> tower::Layer<S> for DispatchLayer {
    type Service = Dispatch;
    fn layer(&self, _jsonrpsee_methods: S) -> Dispatch {
        // A control connection whose peer writes nowhere: the methods that need one to talk
        // back are refused before they run (see `streaming`).
        let (tx, _) = crate::transport::outbox::channel();
        let conn = Conn::new(self.daemon.next_conn_id(), Arc::new(Peer::new(tx)));
        let guard = ConnGuard { conn, daemon: self.daemon.clone(), _slot: self.slot.clone(), gate: self.gate.clone() };
        Dispatch { daemon: self.daemon.clone(), conn: Arc::new(guard) }
    }
}

/// Ends the connection's subscriptions and host services when the last request is done.
struct ConnGuard {
    conn: Conn,
    daemon: Arc<Daemon>,
    _slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    gate: Arc<Gate>,
}

/// Most calls of one `--listen` connection in flight or waiting for room in its send buffer;
/// at it, the connection is not read ([`Gate`]), and a call read meanwhile is answered `-32006`.
const WS_UNSENT: usize = 256;

/// Most bytes the calls of one `--listen` connection may hold, their params while in flight and
/// their answers until handed to its sender (as on the control socket).
const WS_UNSENT_BYTES: usize = 256 << 20;

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conn.peer.close();
        self.conn.closed.cancel();
        self.daemon.remove_host_services(self.conn.id);
    }
}

/// The jsonrpsee middleware that answers every call with `handlers::dispatch` (jsonrpsee's own
/// method table stays empty).
#[derive(Clone)]
struct Dispatch {
    daemon: Arc<Daemon>,
    conn: Arc<ConnGuard>,
}

/// Why `method` cannot be served without a connection to talk back on, if it cannot.
fn streaming(method: &str, params: Option<&RawValue>) -> Option<RpcError> {
    let follows = || {
        params
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
            .is_some_and(|v| v.get("follow").and_then(serde_json::Value::as_bool) == Some(true))
    };
    let streams = matches!(method, c::EVENTS_SUBSCRIBE | c::PLUGINS_TRACE | c::SERVICES_REGISTER)
        || (method == c::LOGS_TAIL && follows());
    streams.then(|| {
        RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("{method} talks back on its connection, which the HTTP/WebSocket API does not do; use the control socket"),
        )
    })
}

impl RpcServiceT for Dispatch {
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let (daemon, guard) = (self.daemon.clone(), self.conn.clone());
        async move {
            let id = req.id.into_owned();
            // jsonrpsee runs every message of a WebSocket at once and never stops reading it:
            // the calls of one connection, and their answers not yet handed to its sender, are
            // bounded here instead (a client that does not read would otherwise grow plugind).
            let size = req.params.as_ref().map_or(0, |p| p.get().len());
            let mut place = match guard.gate.unsent.admit(size) {
                Ok(place) => place,
                Err(exceeded) => {
                    let e = RpcError::new(
                        codes::OVERLOADED,
                        format!("{exceeded} for one connection (in flight or unsent): read their answers first"),
                    );
                    return MethodResponse::error(id, error_object(e));
                }
            };
            let params: Option<&RawValue> = req.params.as_deref();
            let reply = match streaming(&req.method, params) {
                Some(e) => Err(e),
                // jsonrpsee takes any params; the socket (and JSON-RPC) only an object or array.
                None if params.is_some_and(|p| !p.get().starts_with(['{', '['])) => {
                    Err(RpcError::new(codes::INVALID_REQUEST, ParseError::NotJsonRpc(PARAMS_SHAPE).to_string()))
                }
                None => handlers::dispatch(&daemon, &guard.conn, &req.method, params).await,
            };
            // An answer waits until the client reads: it counts in the connection's bytes, and
            // one past them is dropped for an error (as on the control socket).
            let reply = match reply {
                Ok(raw) if !place.hold(raw.get().len()) => {
                    Err(crate::transport::budget::unread_answer("this connection", raw.get().len(), WS_UNSENT_BYTES))
                }
                other => other,
            };
            let payload = match reply {
                Ok(raw) => ResponsePayload::success(raw),
                Err(e) => ResponsePayload::error(error_object(e)),
            };
            // The place is given back once the answer is in the connection's send buffer.
            let (payload, handed) = payload.notify_on_completion();
            let gate = guard.gate.clone();
            tokio::spawn(async move {
                let _ = handed.await;
                drop(place);
                gate.reader.wake();
            });
            MethodResponse::response(id, payload, MAX_RESPONSE as usize)
        }
    }

    fn batch<'a>(&self, requests: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Not taken, as on the socket: each request in it is answered `-32600` under its id.
        let refusal = || error_object(batch_refusal());
        let mut answers = jsonrpsee::core::server::BatchResponseBuilder::new_with_limit(MAX_RESPONSE as usize);
        for entry in requests {
            if let Ok(BatchEntry::Call(req)) = entry {
                let _ = answers.append(MethodResponse::error(req.id.into_owned(), refusal()));
            }
        }
        std::future::ready(if answers.is_empty() {
            MethodResponse::error(Id::Null, refusal())
        } else {
            MethodResponse::from_batch(answers.finish())
        })
    }

    fn notification<'a>(&self, _n: Notification<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // No method of the control API is a notification: nothing to do, nothing to answer.
        std::future::ready(MethodResponse::notification())
    }
}

/// A batch's refusal, worded as the socket's.
fn batch_refusal() -> RpcError {
    RpcError::new(codes::INVALID_REQUEST, ParseError::NotJsonRpc(plugind_protocol::jsonrpc::BATCH).to_string())
}

fn error_object(e: RpcError) -> ErrorObject<'static> {
    let code = i32::try_from(e.code).unwrap_or(codes::INTERNAL_ERROR as i32);
    ErrorObject::owned(code, e.message, e.data)
}
