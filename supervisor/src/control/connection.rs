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
                    Some(Err(_)) | None => break,
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
    conn.peer.close();
    conn.closed.cancel();
    daemon.remove_host_services(conn.id);
}
