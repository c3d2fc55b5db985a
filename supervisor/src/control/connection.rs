//! One control client: requests in, answers out, several in flight at once.

use crate::control::{cancel, handlers};
use crate::transport::budget::{unread_answer, Budget, Ticket};
use crate::transport::frame::{Frame, FrameDecoder, DEFAULT_MAX_FRAME};
use crate::transport::outbox::{self, spawn_writer};
use crate::transport::peer::{Incoming, Peer};
use crate::transport::pipe::Growable;
use crate::Daemon;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{null_id, RpcError};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

/// What a handler may use of its connection.
pub struct Conn {
    /// Unique per connection: host services are keyed by it.
    pub id: u64,
    /// The calling side of this connection (notifications, requests to a host).
    pub peer: Arc<Peer>,
    /// The client's process (`SO_PEERCRED`) on the Unix socket, to name the host in messages.
    pub client_pid: Option<i32>,
    /// Cancelled when the client goes away: ends its subscriptions.
    pub closed: tokio_util::sync::CancellationToken,
    /// Streams running for this client (`events.subscribe`, `plugins.trace`, following logs):
    /// a client that half-closed is kept while one runs.
    streams: Arc<AtomicUsize>,
}

impl Conn {
    /// Connection `id`, calling the other side through `peer`.
    pub fn new(id: u64, peer: Arc<Peer>) -> Self {
        Conn { id, peer, client_pid: None, closed: Default::default(), streams: Arc::default() }
    }

    /// A host on `id` names its service's provider: its connection, and its process when known.
    pub fn host_described(&self) -> String {
        match self.client_pid {
            Some(pid) => format!("the host on control connection {} (pid {pid})", self.id),
            None => format!("the host on control connection {}", self.id),
        }
    }

    /// Counts a stream as running until the guard is dropped.
    pub fn stream_started(&self) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.streams.clone())
    }

    fn streams_running(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
    }
}

/// A running stream of a connection ([`Conn::stream_started`]).
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests read in a row before the connection lets the writers run.
///
/// A client that pipelines sends many requests in one write, and plugind reads them in one read.
/// Forwarding them all before the plugin's writer runs made the stages take turns: plugind
/// parsed 64 requests, then the plugin answered 64, then plugind forwarded 64 answers. Handing the
/// first ones over while the rest are parsed lets the plugin work meanwhile on another CPU:
/// unpinned on 2 vCPUs with 64 in flight, 178–191 k → 205–236 k calls/s; on one vCPU no change
/// (the bursts only cost a few more writes); 8 was slower than 16 in both placements.
const FLUSH_EVERY: usize = 16;

/// Most requests of one client served at once; past it a new request is answered `-32006`
/// overloaded at once (answers and `$/cancel`s are still taken). Far above what a client
/// pipelines (the benchmark's 256), and bounding what one client can make plugind hold: a few
/// KB of future per request. (While the client does not read its answers, nothing is read.)
const MAX_IN_FLIGHT: usize = 4096;

/// Most bytes one client's requests in flight may hold: their lines (calls waiting for a
/// provider that does not read, a paused host or a plugin at its `max_inflight`, hold their
/// params), and their answers while the client does not read them. Far above the benchmark's
/// 16 calls of 1 MiB in flight.
const MAX_IN_FLIGHT_BYTES: usize = 256 << 20;

/// Serves one client of the control socket until it disconnects.
/// (`client_pid`: its process, from the socket's peer credentials.)
pub async fn run(daemon: Arc<Daemon>, stream: UnixStream, client_pid: Option<i32>) {
    let (read, write) = stream.into_split();
    serve(daemon, read, write, client_pid, |read: &OwnedReadHalf| hung_up(read.as_ref())).await;
}

/// Serves one client whose lines arrive on `read` and whose answers go to `write`, until it
/// disconnects: a control socket's client, or a `--listen` WebSocket's through its bridge
/// ([`super::websocket`]). `hung_up(read)` tells a client that has closed entirely from one that
/// only shut its write half (and still reads the answers to what it asked).
pub async fn serve<R, W>(daemon: Arc<Daemon>, read: R, write: W, client_pid: Option<i32>, hung_up: impl Fn(&R) -> bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + Growable + 'static,
{
    let (tx, rx) = outbox::channel();
    spawn_writer(write, rx);
    let conn = Arc::new(Conn { client_pid, ..Conn::new(daemon.next_conn_id(), Arc::new(Peer::new(tx))) });
    // Progress of the calls its requests make reaches it (`$/progress` under its own ids).
    let _relay = crate::transport::peer::relay_target(conn.id, &conn.peer);
    let mut frames = FramedRead::new(read, FrameDecoder::new(DEFAULT_MAX_FRAME).noting_cr());
    let mut inflight = FuturesUnordered::new();
    let budget = Budget::new(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES);
    let mut eof = false;
    let mut burst = 0usize;
    // A refusal past the budget that found no room in the outbox: sent before anything more is
    // read. (Awaited in this loop, it stopped the loop for good with a client that reads
    // nothing: its calls in flight were never polled again.)
    let mut refusal: Option<(Box<RawValue>, RpcError)> = None;
    loop {
        if let Some((id, e)) = refusal.take() {
            if !conn.peer.respond_now(&id, &e) && conn.peer.outbox_full() {
                refusal = Some((id, e));
            }
        }
        // A client that does not read its answers is not read from either: its requests wait
        // in its socket, not as futures here (each holding its answer, unbounded). Reading
        // resumes as soon as the writer has made room.
        let full = refusal.is_some() || conn.peer.outbox_full();
        tokio::select! {
            frame = frames.next(), if !full => {
                let line = match frame {
                    Some(Ok(Frame::Line(l))) => l,
                    Some(Ok(Frame::Oversized { len, head })) => {
                        // Under its own id when its head shows one, so the client's call ends;
                        // a host's answer that big ends plugind's call to it the same way.
                        use plugind_protocol::jsonrpc::{Message, Oversized};
                        let e = RpcError::new(codes::INVALID_REQUEST, format!("request exceeds the {DEFAULT_MAX_FRAME}-byte limit ({len} bytes read when it was found too long)"));
                        match Message::oversized_head(&head) {
                            Some(Oversized::Answer(n)) => {
                                let what = format!("the answer to this call is over the {DEFAULT_MAX_FRAME}-byte limit ({len} bytes read when it was found too long); discarded");
                                conn.peer.fail_call(n, RpcError::new(codes::INTERNAL_ERROR, what));
                            }
                            Some(Oversized::Request(id)) => conn.peer.respond(id, Err(&e)).await,
                            None => conn.peer.respond(null_id(), Err(&e)).await,
                        }
                        continue;
                    }
                    // Not taking turns (a client's budget bounds it): never yielded.
                    Some(Ok(Frame::LongLine)) => {
                        frames.decoder_mut().take_turn();
                        continue;
                    }
                    // Not reporting drops: never yielded.
                    Some(Ok(Frame::Dropped(_))) => continue,
                    Some(Err(_)) => break,
                    None => {
                        eof = true;
                        break;
                    }
                };
                // Boxed here, once: the request's future is large (the whole call path is in
                // it), and `FuturesUnordered::push` would otherwise move it into its task by
                // value, a copy of every byte of it, and allocate that task past the allocator's
                // small-size fast path.
                // Past its budget a new request is refused at once; the answers a host sends
                // to plugind's calls and `$/cancel`s are still taken (a host providing a service
                // must get its answers through, or the calls waiting on them would only time out).
                let ticket = match budget.admit(line.len()) {
                    Ok(ticket) => Some(ticket),
                    Err(exceeded) => {
                        if let Some(id) = plugind_protocol::jsonrpc::Message::request_id_of(&line) {
                            let e = RpcError::new(
                                codes::OVERLOADED,
                                format!("{exceeded} for one connection: wait for some answers"),
                            );
                            if !conn.peer.respond_now(id, &e) {
                                refusal = Some((id.to_owned(), e));
                            }
                            continue;
                        }
                        None
                    }
                };
                let flat = !frames.decoder().last_line_has_cr();
                let request = Box::pin(serve_line(daemon.clone(), conn.clone(), line.clone(), flat, ticket));
                inflight.push(cancel::InFlight::new(line, request));
                burst += 1;
                if burst == FLUSH_EVERY {
                    burst = 0;
                    // The new requests' first polls queue their lines; then the writers run.
                    while let Some(Some(served)) = inflight.next().now_or_never() {
                        cancel_if_asked(&mut inflight, &conn, served);
                    }
                    tokio::task::yield_now().await;
                }
            }
            Some(served) = inflight.next(), if !inflight.is_empty() => cancel_if_asked(&mut inflight, &conn, served),
            () = conn.peer.outbox_room(), if full => {}
        }
    }
    // Every line read gets its first poll (which parses it and delivers a response) before the
    // peer closes: a host's last answers reach their callers rather than failing with it.
    while let Some(Some(served)) = inflight.next().now_or_never() {
        cancel_if_asked(&mut inflight, &conn, served);
    }
    // Nothing more will be read: calls to this client (its host services) fail at once.
    conn.peer.close();
    if eof {
        // The client may have shut down only its write half and still be reading (`echo … |
        // socat - UNIX-CONNECT:…`): answer what it asked, and keep the streams it opened
        // running, unless it hangs up entirely.
        let read = frames.get_ref();
        let mut check = tokio::time::interval(HANGUP_CHECK);
        while !inflight.is_empty() || conn.streams_running() {
            tokio::select! {
                Some(served) = inflight.next() => cancel_if_asked(&mut inflight, &conn, served),
                _ = check.tick() => if hung_up(read) { break },
            }
        }
    }
    // Last: a `services.register` still in flight at the EOF has registered by now.
    daemon.remove_host_services(conn.id);
    conn.closed.cancel();
    // Close our side explicitly, after the answers already queued: waiting for the last clone
    // of the peer to drop is not enough, as a cached copy of the registry may still hold the
    // host service it was given (and a client waiting for EOF would wait forever). It never
    // waits: a client that reads nothing must not keep this task.
    conn.peer.close_output();
}

/// Cancels the request a finished line named, if it was a `$/cancel`.
fn cancel_if_asked<F: std::future::Future<Output = cancel::Served>>(
    inflight: &mut FuturesUnordered<cancel::InFlight<F>>,
    conn: &Arc<Conn>,
    served: cancel::Served,
) {
    if let Some(id) = served {
        cancel::cancel_in_flight(std::pin::Pin::new(inflight), conn, id);
    }
}

/// One line from the client: a request is dispatched and answered, a response (from a host to a
/// request plugind made of it) is delivered, a `$/cancel` ends with its target (which the
/// connection cancels), anything else is answered with an error. The line moves into the
/// future, so the request's id, method and params are borrowed from it rather than copied out
/// (three allocations per request fewer). `flat`: the line has no line break (no `\r`).
/// `ticket`: the line's share of the connection's budget, held until it is served (none for an
/// answer or a `$/cancel` read past the budget).
async fn serve_line(
    daemon: Arc<Daemon>,
    conn: Arc<Conn>,
    line: Bytes,
    flat: bool,
    mut ticket: Option<Ticket>,
) -> cancel::Served {
    // An answer that must wait for the client to read is held within its budget.
    let mut answer = |reply| match ticket.as_mut() {
        Some(t) => t.answer(&conn.peer, reply, |len, max| unread_answer("this connection", len, max)),
        None => reply,
    };
    if let Some(request) = handlers::ExecuteRequest::parse(&line) {
        let id = request.id;
        let reply = request.run(&daemon, &conn, flat.then_some(&line)).await;
        conn.peer.respond_with(id, answer(reply)).await;
        return None;
    }
    match conn.peer.accept(&line) {
        Incoming::Request { id, method, params } => {
            let reply = handlers::dispatch_request(&daemon, &conn, id, &method, params).await;
            conn.peer.respond_with(id, answer(reply)).await;
        }
        Incoming::Invalid(e) => {
            // Under the request's own id when it has one that can be read (each one of a batch).
            let err = RpcError::new(e.code(), e.to_string());
            let ids = plugind_protocol::jsonrpc::Message::request_ids_of(&line);
            if ids.is_empty() {
                conn.peer.respond(null_id(), Err(&err)).await;
            }
            for id in ids {
                conn.peer.respond(id, Err(&err)).await;
            }
        }
        Incoming::Notification { method, params } => return cancel::cancel_target(&method, params),
        Incoming::Delivered | Incoming::UnknownResponse(_) => {}
    }
    None
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
