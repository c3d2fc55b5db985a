//! `--listen ADDR`: the control API over HTTP and WebSocket, behind a bearer token.
//!
//! Every request must carry `Authorization: Bearer <token>`, the token being the first line of
//! `--token-file`; anything else gets `401 Unauthorized` before any JSON is read.
//!
//! - A WebSocket is one control connection for its lifetime, served by the socket's own loop
//!   ([`crate::control::websocket`]): one message per line, so everything the socket does it
//!   does (`$/cancel`, `$/progress`, `events.subscribe`, `services.register`…), with the
//!   socket's bounds and answers.
//! - A plain HTTP `POST` carries one request, which jsonrpsee hands to
//!   [`crate::control::handlers::dispatch`], the function the socket uses, so both answer alike.
//!   Methods that talk back on their connection (`events.subscribe`, `plugins.trace`,
//!   `logs.tail` with `follow`, `services.register`) answer `-32601`, pointing to the WebSocket.
//!   What is not a request gets the socket's answers (`read_post` checks a body with the
//!   socket's parser; `Dispatch::batch` answers each request of a batch `-32600`).
//!
//! Connecting needs no token, so connections are bounded ([`crate::transport::http`]): a cap on
//! how many are open, a timeout on silent ones. Descriptors are what plugind's control socket
//! and plugins need.

use crate::control::connection::Conn;
use crate::control::frame_gate::FrameGate;
use crate::control::handlers;
use crate::transport::frame::DEFAULT_MAX_FRAME;
use crate::transport::http::{keep_alive, serve_connection, Slots};
use crate::transport::peer::Peer;
use crate::Daemon;
use jsonrpsee::server::middleware::rpc::{
    Batch, BatchEntry, MethodResponse, Notification, Request, RpcServiceBuilder, RpcServiceT,
};
use jsonrpsee::server::{
    stop_channel, BatchRequestConfig, HttpBody, HttpResponse, Methods, ServerConfig, ServerHandle, StopHandle,
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

/// Largest answer to an HTTP request (the socket has no such cap; this only guards memory).
const MAX_RESPONSE: u32 = 64 * 1024 * 1024;

/// Largest WebSocket message read: one over the socket's line limit but under this is answered
/// as the socket answers a line too long (`-32600` under its id); one over this closes the
/// WebSocket (it would otherwise be held whole before anything could refuse it).
const MAX_WS_MESSAGE: usize = 2 * DEFAULT_MAX_FRAME;

/// A bound `--listen` address with its token, not serving yet (bound early, so a taken port
/// stops plugind before any plugin starts).
pub struct Listener {
    tcp: TcpListener,
    token: Arc<str>,
    keepalive: Duration,
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

/// Binds `addr` and reads the token file; `keepalive` is how long a connection's peer may be
/// silent before it is probed ([`keep_alive`]).
pub async fn bind(addr: &str, token_file: &Path, keepalive: Duration) -> anyhow::Result<Listener> {
    let token = plugind_client::read_token(token_file).map_err(anyhow::Error::msg)?;
    if let Ok(meta) = std::fs::metadata(token_file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %token_file.display(), "the token file is readable by other users; chmod 600 it");
        }
    }
    let tcp = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(Listener { tcp, token: token.into(), keepalive })
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
            // WebSockets are served by the control connection loop, not by jsonrpsee.
            .http_only()
            .build();
        let builder = jsonrpsee::server::Server::builder().set_config(config).to_service_builder();
        let Listener { tcp, token, keepalive } = self;
        let slots = Slots::new("--listen");
        let max_connections = slots.max();
        // Refusals are logged at most once a second, with their count: anyone who can reach
        // the port can send them, 100,000 a second (78 MB of log in 5 s, unthrottled).
        let refusals = Arc::new(std::sync::Mutex::new(crate::time::Throttle::new(Duration::from_secs(1))));
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
                // A WebSocket may stay open for days, holding its place and its host's
                // services: one whose peer vanished (no FIN, no reset) must end by itself.
                keep_alive(&sock, keepalive);
                let (daemon, token, builder, stop) =
                    (daemon.clone(), token.clone(), builder.clone(), stop_handle.clone());
                let (held, refusals) = (slot.clone(), refusals.clone());
                let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let authorized = bearer_ok(req.headers(), &token);
                    if !authorized {
                        let mut refusals = refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        refusals.hold();
                        let refused = refusals.due(std::time::Instant::now());
                        if refused > 0 {
                            tracing::warn!(%remote, refused, "--listen: requests without a valid bearer token refused");
                        }
                    }
                    let (daemon, builder, stop, held) = (daemon.clone(), builder.clone(), stop.clone(), held.clone());
                    async move {
                        if !authorized {
                            return Ok::<_, jsonrpsee::core::BoxError>(unauthorized());
                        }
                        if soketto::handshake::http::is_upgrade_request(&req) {
                            return Ok(upgrade(req, daemon, stop, held));
                        }
                        let mut rpc = builder
                            .set_rpc_middleware(RpcServiceBuilder::new().layer(DispatchLayer { daemon }))
                            .build(Methods::new(), stop);
                        match read_post(req).await {
                            Ok(req) => rpc.call(req).await,
                            Err(answer) => Ok(answer),
                        }
                    }
                });
                tokio::spawn(serve_connection(sock, svc, stop_handle.clone().shutdown(), slot));
            }
        });
        tracing::info!(%addr, max_connections, "control API over HTTP and WebSocket (bearer token required)");
        Ok(Serving { handle, addr })
    }
}

/// Answers an authorized WebSocket upgrade (`101`, or `400` for a malformed handshake) and
/// serves the upgraded connection ([`crate::control::websocket`]) in a task of its own, which
/// holds the connection's `slot` under the cap for as long as it lives (hyper's part of the
/// connection ends with the `101`).
fn upgrade(
    req: http::Request<hyper::body::Incoming>,
    daemon: Arc<Daemon>,
    stop: StopHandle,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> HttpResponse {
    let mut handshake = soketto::handshake::http::Server::new();
    let response = match handshake.receive_request(&req) {
        Ok(response) => response,
        Err(e) => return plain(http::StatusCode::BAD_REQUEST, format!("cannot upgrade to a WebSocket: {e}\n")),
    };
    tokio::spawn(async move {
        use tokio_util::compat::TokioAsyncReadCompatExt as _;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("--listen: WebSocket upgrade failed: {e}");
                return;
            }
        };
        // Under the frame budget (soketto allocates a frame's announced size before reading
        // it), read through a buffer: the gate reads each header on its own.
        let io = futures::io::BufReader::new(hyper_util::rt::TokioIo::new(upgraded).compat());
        let io = FrameGate::new(io, MAX_WS_MESSAGE);
        let mut ws = handshake.into_builder(futures::io::BufWriter::new(io));
        ws.set_max_message_size(MAX_WS_MESSAGE);
        ws.set_max_frame_size(MAX_WS_MESSAGE);
        let (sender, receiver) = ws.finish();
        crate::control::websocket::serve(daemon, sender, receiver, stop.shutdown()).await;
        drop(slot);
    });
    response.map(|()| HttpBody::empty())
}

/// How long an authorized request's body may take to arrive in full.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An authorized request made ready for jsonrpsee: a POST's body is read in full (bounded in
/// size and time) and checked as the control socket checks a line, so that what is not a
/// request gets the socket's very answer (`-32700`/`-32600`, under the request's own id, one
/// per request of a batch); another method (a `GET`) passes as it came, for jsonrpsee to refuse.
/// WebSocket upgrades never come here ([`upgrade`]).
async fn read_post(req: http::Request<hyper::body::Incoming>) -> Result<http::Request<HttpBody>, HttpResponse> {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return Ok(http::Request::from_parts(parts, HttpBody::new(body)));
    }
    // The body is read as JSON whatever it says it is (`curl -d` says a form): jsonrpsee would
    // answer anything but `application/json` with a `415` in plain text.
    parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let too_large = |len: Option<u64>| {
        let what = match len {
            Some(n) => format!("request of {n} bytes exceeds"),
            None => "request exceeds".to_owned(),
        };
        let e = RpcError::new(codes::INVALID_REQUEST, format!("{what} the {DEFAULT_MAX_FRAME}-byte limit"));
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

/// `401`, and the connection closed after it: a client without the token keeps no place under
/// the cap by sending a refused request every few seconds.
fn unauthorized() -> HttpResponse {
    let mut r = plain(http::StatusCode::UNAUTHORIZED, "401 Unauthorized: send Authorization: Bearer <token>\n".into());
    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

/// Makes one [`Dispatch`] per HTTP request.
#[derive(Clone)]
struct DispatchLayer {
    daemon: Arc<Daemon>,
}

impl<S> tower::Layer<S> for DispatchLayer {
    type Service = Dispatch;
    fn layer(&self, _jsonrpsee_methods: S) -> Dispatch {
        // A control connection whose peer writes nowhere: the methods that need one to talk
        // back are refused before they run (see `streaming`).
        let (tx, _) = crate::transport::outbox::channel();
        let conn = Conn::new(self.daemon.next_conn_id(), Arc::new(Peer::new(tx)));
        Dispatch { daemon: self.daemon.clone(), conn: Arc::new(ConnGuard { conn, daemon: self.daemon.clone() }) }
    }
}

/// Ends the request's connection (its cancellation token, its peer) once it is answered.
struct ConnGuard {
    conn: Conn,
    daemon: Arc<Daemon>,
}

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

/// Why `method` cannot be served over a plain HTTP request, which has no connection to talk
/// back on, if it cannot.
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
            format!("{method} talks back on its connection, which a plain HTTP request cannot: use a WebSocket (ws://) to this address, or the control socket"),
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
            let params: Option<&RawValue> = req.params.as_deref();
            let reply = match streaming(&req.method, params) {
                Some(e) => Err(e),
                // jsonrpsee takes any params; the socket (and JSON-RPC) only an object or array.
                None if params.is_some_and(|p| !p.get().starts_with(['{', '['])) => {
                    Err(RpcError::new(codes::INVALID_REQUEST, ParseError::NotJsonRpc(PARAMS_SHAPE).to_string()))
                }
                None => handlers::dispatch(&daemon, &guard.conn, &req.method, params).await,
            };
            let payload = match reply {
                Ok(raw) => ResponsePayload::success(raw),
                Err(e) => ResponsePayload::error(error_object(e)),
            };
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
