//! `--listen ADDR`: the control API over HTTP and WebSocket (jsonrpsee), behind a bearer token.
//!
//! Every request must carry `Authorization: Bearer <token>`, the token being the first line of
//! `--token-file`; anything else gets `401 Unauthorized` before any JSON is read. Each JSON-RPC
//! call then goes through [`crate::control::handlers::dispatch`], the very function the Unix
//! socket uses, so both APIs answer alike (same methods, results and error codes).
//!
//! What the NDJSON socket can do and this cannot: methods that send notifications or requests
//! back on the connection (`events.subscribe`, `plugins.trace`, `logs.tail` with `follow`,
//! `services.register`) answer `-32601` with a message pointing to the socket; batches are
//! refused (`-32600`) as on the socket. A WebSocket connection is one control connection (one
//! `Conn`) for its lifetime; a plain HTTP request is one of its own.

use crate::control::connection::Conn;
use crate::control::handlers;
use crate::transport::frame::DEFAULT_MAX_FRAME;
use crate::transport::peer::Peer;
use crate::Daemon;
use jsonrpsee::server::middleware::rpc::{
    Batch, MethodResponse, Notification, Request, RpcServiceBuilder, RpcServiceT,
};
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, BatchRequestConfig, HttpBody, HttpResponse, Methods, ServerConfig,
    ServerHandle,
};
use jsonrpsee::types::{ErrorObject, Id};
use jsonrpsee::ResponsePayload;
use plugind_protocol::codes;
use plugind_protocol::control as c;
use plugind_protocol::jsonrpc::RpcError;
use serde_json::value::RawValue;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
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
            .set_batch_request_config(BatchRequestConfig::Disabled)
            .max_request_body_size(u32::try_from(DEFAULT_MAX_FRAME).unwrap_or(u32::MAX))
            .max_response_body_size(MAX_RESPONSE)
            .build();
        let builder = jsonrpsee::server::Server::builder().set_config(config).to_service_builder();
        let Listener { tcp, token } = self;
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
                let (daemon, token, builder, stop) =
                    (daemon.clone(), token.clone(), builder.clone(), stop_handle.clone());
                let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let authorized = bearer_ok(req.headers(), &token);
                    let mut rpc = builder
                        .clone()
                        .set_rpc_middleware(RpcServiceBuilder::new().layer(DispatchLayer { daemon: daemon.clone() }))
                        .build(Methods::new(), stop.clone());
                    async move {
                        if !authorized {
                            tracing::warn!(%remote, "--listen: request without a valid bearer token refused");
                            return Ok(unauthorized());
                        }
                        rpc.call(req).await
                    }
                });
                tokio::spawn(serve_with_graceful_shutdown(sock, svc, stop_handle.clone().shutdown()));
            }
        });
        tracing::info!(%addr, "control API over HTTP and WebSocket (bearer token required)");
        Ok(Serving { handle, addr })
    }
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
    let mut r = HttpResponse::new(HttpBody::from("401 Unauthorized: send Authorization: Bearer <token>\n"));
    *r.status_mut() = http::StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Makes one [`Dispatch`] per HTTP request, or per WebSocket connection.
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

/// Ends the connection's subscriptions and host services when the last request is done.
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
            let params: Option<Box<RawValue>> = req.params.map(std::borrow::Cow::into_owned);
            let reply = match streaming(&req.method, params.as_deref()) {
                Some(e) => Err(e),
                None => handlers::dispatch(&daemon, &guard.conn, &req.method, params.as_deref()).await,
            };
            match reply {
                Ok(raw) => MethodResponse::response(id, ResponsePayload::success(raw), MAX_RESPONSE as usize),
                Err(e) => MethodResponse::error(id, error_object(e)),
            }
        }
    }

    fn batch<'a>(&self, _requests: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        std::future::ready(MethodResponse::error(
            Id::Null,
            error_object(RpcError::new(codes::INVALID_REQUEST, "batches are not supported")),
        ))
    }

    fn notification<'a>(&self, _n: Notification<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // No method of the control API is a notification: nothing to do, nothing to answer.
        std::future::ready(MethodResponse::notification())
    }
}

fn error_object(e: RpcError) -> ErrorObject<'static> {
    let code = i32::try_from(e.code).unwrap_or(codes::INTERNAL_ERROR as i32);
    ErrorObject::owned(code, e.message, e.data)
}
