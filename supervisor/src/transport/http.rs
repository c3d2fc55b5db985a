//! Serving HTTP/1.1 connections on a TCP port that anyone who can reach it may connect to
//! (`--listen`, `--metrics`): bounded, so that connecting cannot take the descriptors plugind
//! needs for its control socket and its plugins.
//!
//! [`Slots`] caps the connections open at once ([`max_connections`]); one over the cap gets a
//! `503` and is closed at once. [`serve_connection`] closes a connection that sends no request
//! headers within [`HEADER_READ_TIMEOUT`] (from when it opened or its last answer went out), and
//! upgrades to WebSocket when the service answers `101`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client has to send a request's headers: a connection that sends nothing is
/// closed after it (an idle keep-alive one too), so silent connections cannot pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection over the cap gets before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 31\r\n\r\ntoo many connections to plugind\n";

/// Most TCP connections one port serves at once: 256, or an eighth of plugind's open-file limit
/// when that is lower (at least 8).
pub fn max_connections() -> usize {
    super::open_files_share(8, 8, 256)
}

/// The places of one port's connections.
pub struct Slots {
    what: &'static str,
    max: usize,
    free: Arc<Semaphore>,
    /// Refusals are logged at most once a second, with their count: a flood of them is one event.
    refusals: Mutex<crate::time::Throttle>,
}

impl Slots {
    /// [`max_connections`] places for the connections of `what` (`--listen`, `--metrics`).
    pub fn new(what: &'static str) -> Slots {
        let max = max_connections();
        let refusals = Mutex::new(crate::time::Throttle::new(Duration::from_secs(1)));
        Slots { what, max, free: Arc::new(Semaphore::new(max)), refusals }
    }

    /// How many connections may be open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for `sock`, or None after answering it `503` (it is then dropped, and closed).
    pub fn take(&self, sock: &TcpStream, remote: SocketAddr) -> Option<Arc<OwnedSemaphorePermit>> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(Arc::new(slot));
        }
        let mut refusals = self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        refusals.hold();
        let refused = refusals.due(Instant::now());
        if refused > 0 {
            tracing::warn!(%remote, max_connections = self.max, refused, "{}: connections refused, too many open", self.what);
        }
        let _ = sock.try_write(TOO_MANY_CONNECTIONS);
        None
    }
}

/// Makes the kernel end `sock` once its peer has given no sign of life (not even a TCP
/// acknowledgement) for twice `idle`: a peer that vanished without a FIN or a reset (a host that
/// lost power, a cable pulled, a NAT that forgot the flow) would otherwise keep the connection,
/// its place under the cap and what it holds (a host's services) until plugind stops, since
/// nothing is sent on an idle WebSocket. After `idle` of silence the kernel sends up to three
/// keepalive probes `idle / 3` apart; `TCP_USER_TIMEOUT` ends the connection as soon as what
/// plugind sent has gone unacknowledged for `2 × idle`, probes or not (without it a peer gone
/// while plugind had an answer on its way would be retransmitted to for about 15 minutes).
/// A failure is only logged: the connection works without.
pub fn keep_alive(sock: &TcpStream, idle: Duration) {
    use nix::sys::socket::{setsockopt, sockopt};
    let secs = u32::try_from(idle.as_secs()).unwrap_or(u32::MAX).max(1);
    let user_timeout_ms = secs.saturating_mul(2).saturating_mul(1000);
    let set = setsockopt(sock, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepIdle, &secs))
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepInterval, &(secs / 3).max(1)))
        .and_then(|()| setsockopt(sock, sockopt::TcpKeepCount, &3))
        .and_then(|()| setsockopt(sock, sockopt::TcpUserTimeout, &user_timeout_ms));
    if let Err(e) = set {
        tracing::debug!("TCP keepalive not set on a connection: {e}");
    }
}

/// Serves one TCP connection (HTTP/1.1, upgraded to WebSocket on request) until it closes, its
/// client stays silent past [`HEADER_READ_TIMEOUT`], or `stop` completes (then the requests in
/// progress are answered first). `slot` is dropped when it ends; a service that upgrades
/// connections keeps a clone of it for as long as the upgraded one lives (hyper's part ends
/// with the `101`).
pub async fn serve_connection<S, B, I>(
    sock: I,
    svc: S,
    stop: impl std::future::Future<Output = ()>,
    slot: Arc<OwnedSemaphorePermit>,
) where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _slot = slot;
    let io = hyper_util::rt::TokioIo::new(sock);
    let service = hyper_util::service::TowerToHyperService::new(svc);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn, stop);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = &mut stop => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
