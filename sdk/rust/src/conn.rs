//! The connection to plugind: the writer task, the plugin's own requests matched by id, and the
//! calls in flight that `$/cancel` can reach.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use plugind_protocol::jsonrpc::{self, Message};
use plugind_protocol::methods::InitParams;
use plugind_protocol::{codes, RpcError};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::context::CancelToken;

/// What the writer task is fed.
pub(crate) enum Out {
    /// One `\n`-terminated line.
    Line(Vec<u8>),
    /// Flush and stop; later lines are dropped.
    Close,
}

type Reply = Result<Box<RawValue>, RpcError>;

/// State shared by the reader loop, every handler task and every [`crate::Context`].
pub(crate) struct Conn {
    /// Lines for the writer task.
    /// Unbounded so that `log`, `progress` and responses can be sent from synchronous code; what
    /// plugind sends is bounded by its `max_inflight`, so the queue only grows if plugind stops
    /// reading, and then the plugin is about to be killed anyway.
    out: mpsc::UnboundedSender<Out>,
    /// Id of the next request the plugin sends; ids are unique per direction.
    next_id: AtomicU64,
    /// The plugin's requests awaiting plugind's answer.
    /// `None` once stdin has closed: no answer can come, so new requests fail at once.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    /// plugind's requests being handled, keyed by the id's JSON text, so `$/cancel` can reach them.
    inflight: Mutex<HashMap<Box<str>, CancelToken>>,
    /// Woken whenever `inflight` empties, for the end-of-input grace period.
    idle: Notify,
    /// Tripped when the connection winds down; the cancel token of contexts outside a request.
    pub(crate) closed: CancelToken,
    /// The `init` params, kept for `Context::init_params`.
    pub(crate) init: OnceLock<InitParams>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler cannot leave these maps inconsistent: every critical section is one call.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Error of a request that can get no answer because the connection closed.
pub(crate) fn closed_error() -> RpcError {
    RpcError::new(codes::INTERNAL_ERROR, "the connection to plugind is closed")
}

/// Removes a pending request when its waiter goes away (answered, cancelled or dropped).
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(map) = lock(&self.conn.pending).as_mut() {
            map.remove(&self.id);
        }
    }
}

impl Conn {
    pub(crate) fn new(out: mpsc::UnboundedSender<Out>) -> Self {
        Self {
            out,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(Some(HashMap::new())),
            inflight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            closed: CancelToken::new(),
            init: OnceLock::new(),
        }
    }

    /// Queues one line for the writer. Lost if the writer has stopped, which only happens once
    /// plugind is gone.
    pub(crate) fn send(&self, line: Vec<u8>) {
        let _ = self.out.send(Out::Line(line));
    }

    pub(crate) fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) {
        self.send(jsonrpc::notification_line(method, params));
    }

    /// Sends a request to plugind and waits for its answer, or for `cancel`.
    pub(crate) async fn request<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        cancel: &CancelToken,
    ) -> Result<Box<RawValue>, RpcError> {
        if cancel.is_cancelled() {
            return Err(crate::cancelled_error());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(map) => map.insert(id, tx),
            None => return Err(closed_error()),
        };
        let _guard = PendingGuard { conn: self, id };
        self.send(jsonrpc::request_line(id, method, params));
        tokio::select! {
            reply = rx => reply.unwrap_or_else(|_| Err(closed_error())),
            () = cancel.cancelled() => Err(crate::cancelled_error()),
        }
    }

    /// Hands plugind's answer to the request waiting for it.
    pub(crate) fn complete(&self, id: &RawValue, outcome: Result<&RawValue, RpcError>) {
        let n = Message::numeric_id(id);
        match n.and_then(|n| lock(&self.pending).as_mut()?.remove(&n)) {
            Some(tx) => {
                let _ = tx.send(outcome.map(ToOwned::to_owned));
            }
            // An id we sent whose waiter gave up (its call was cancelled): a late answer, normal.
            None if n.is_some_and(|n| n < self.next_id.load(Ordering::Relaxed)) => {}
            None => eprintln!("plugind-sdk: ignoring a response to request {}, which the plugin never sent", id.get()),
        }
    }

    /// Records a call from plugind as in flight.
    pub(crate) fn begin(&self, key: Box<str>, token: CancelToken) {
        lock(&self.inflight).insert(key, token);
    }

    /// The call is answered (or abandoned).
    pub(crate) fn end(&self, key: &str) {
        let mut inflight = lock(&self.inflight);
        inflight.remove(key);
        if inflight.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// `$/cancel`: trips the call's token; a call already answered is not found, which is fine.
    pub(crate) fn cancel(&self, key: &str) {
        if let Some(token) = lock(&self.inflight).get(key) {
            token.cancel();
        }
    }

    /// stdin closed: fail our requests, give calls in flight `grace` to answer, cancel the rest,
    /// and stop the writer once it has written everything queued.
    pub(crate) async fn wind_down(&self, grace: Duration) {
        // Dropping the senders makes every waiting request fail with `closed_error`.
        drop(lock(&self.pending).take());
        let _ = tokio::time::timeout(grace, self.until_idle()).await;
        for token in lock(&self.inflight).values() {
            token.cancel();
        }
        self.closed.cancel();
        let _ = self.out.send(Out::Close);
    }

    async fn until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let idle = lock(&self.inflight).is_empty();
            if idle {
                return;
            }
            notified.await;
        }
    }
}

/// The writer task: writes what is queued, flushes when the queue is empty.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut rx: mpsc::UnboundedReceiver<Out>, w: W) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    'burst: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next {
            match out {
                Out::Line(line) => w.write_all(&line).await?,
                Out::Close => break 'burst,
            }
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    w.shutdown().await
}
