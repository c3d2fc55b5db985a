//! One control client: requests in, answers out, several in flight at once.

use crate::control::handlers;
use crate::transport::frame::{Frame, FrameDecoder, DEFAULT_MAX_FRAME};
use crate::transport::peer::{spawn_writer, Incoming, Peer, OUTBOX_CAPACITY};
use crate::Daemon;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{null_id, RpcError};
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// What a handler may use of its connection.
pub struct Conn {
    /// Unique per connection: host services are keyed by it.
    pub id: u64,
    /// The calling side of this connection (notifications, requests to a host).
    pub peer: Arc<Peer>,
    /// Cancelled when the client goes away: ends its subscriptions.
    pub closed: tokio_util::sync::CancellationToken,
}

/// Serves one client until it disconnects.
pub async fn run(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
    spawn_writer(write, rx);
    let conn = Arc::new(Conn { id: daemon.next_conn_id(), peer: Arc::new(Peer::new(tx)), closed: Default::default() });
    let mut frames = FramedRead::new(read, FrameDecoder::new(DEFAULT_MAX_FRAME));
    let mut inflight = FuturesUnordered::new();
    let mut eof = false;
    loop {
        tokio::select! {
            frame = frames.next() => {
                let line = match frame {
                    Some(Ok(Frame::Line(l))) => l,
                    Some(Ok(Frame::Oversized { len })) => {
                        let e = RpcError::new(codes::INVALID_REQUEST, format!("request of {len} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit"));
                        conn.peer.respond(null_id(), Err(&e)).await;
                        continue;
                    }
                    Some(Err(_)) => break,
                    None => {
                        eof = true;
                        break;
                    }
                };
                match conn.peer.accept(&line) {
                    Incoming::Request { id, method, params } => {
                        let id: Box<RawValue> = id.to_owned();
                        let method = method.into_owned();
                        let params: Option<Box<RawValue>> = params.map(ToOwned::to_owned);
                        let (daemon, conn) = (daemon.clone(), conn.clone());
                        inflight.push(async move {
                            let reply = handlers::dispatch(&daemon, &conn, &method, params.as_deref()).await;
                            conn.peer.respond(&id, reply.as_deref()).await;
                        });
                    }
                    Incoming::Invalid(e) => {
                        let err = RpcError::new(e.code(), e.to_string());
                        conn.peer.respond(null_id(), Err(&err)).await;
                    }
                    Incoming::Notification { .. } | Incoming::Delivered | Incoming::UnknownResponse(_) => {}
                }
            }
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
        }
    }
    // Nothing more will be read: calls to this client (its host services) fail at once.
    conn.peer.close();
    if eof {
        // The client may have shut down only its write half and still be reading (`echo … |
        // socat - UNIX-CONNECT:…`): answer what it asked, unless it hangs up entirely.
        let socket: &UnixStream = frames.get_ref().as_ref();
        let mut check = tokio::time::interval(HANGUP_CHECK);
        while !inflight.is_empty() {
            tokio::select! {
                _ = inflight.next() => {}
                _ = check.tick() => if hung_up(socket) { break },
            }
        }
    }
    // Last: a `services.register` still in flight at the EOF has registered by now.
    daemon.remove_host_services(conn.id);
    conn.closed.cancel();
}

/// How often a half-closed client is checked for a full hang-up while its calls finish.
const HANGUP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether the client closed its side entirely (POLLHUP), not just its write half.
fn hung_up(socket: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: socket.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: one valid pollfd for a socket this task owns; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n < 0 || (n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}
