//! A connection's outgoing queue: lines appended by whoever calls or answers the other side,
//! written by one writer task ([`spawn_writer`]) in as few system calls as it can.
//!
//! Small lines go straight into a shared batch buffer, under a lock held only to copy them in
//! (or to write them there, [`Outbox::try_write`]: no line of their own is allocated). The
//! writer takes the whole queue at once, swapping it for an empty one, and writes it in one
//! `write`. It is woken only when the queue goes from empty to not empty: while it is scheduled
//! or writing, lines pile up behind it and go out together in its next round. An earlier queue,
//! a tokio `mpsc` channel of one allocated line per message, cost a fifteenth of plugind's
//! instructions per call in its semaphore, list and wake-ups.
//!
//! A large line ([`Outgoing::Spliced`], or a line of [`WRITE_DIRECT`] bytes or more) is queued
//! as it is, in order with the small ones, and written from where it is.
//!
//! Bounded: past [`OUTBOX_BYTES`] queued, a sender waits for room ([`Outbox::send`]) or is
//! refused ([`Outbox::try_send`]). A queue holds at least one message whatever its size.
//!
//! Closing: [`Outgoing::Close`] has the writer flush, shut the write half down (a child's stdin
//! closes) and stop; so does dropping the [`Outbox`]. Once the writer has stopped (closed,
//! or a write failed: the other side is gone), every send fails.

use crate::transport::pipe::Growable;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::peer::RawJson;

/// Bytes queued before senders wait. A queue below it takes any one message.
pub const OUTBOX_BYTES: usize = 1 << 20;

/// Lines at least this long are written from where they are, not copied into the batch, and
/// values at least this long pass through plugind without a copy ([`RawJson`],
/// [`super::peer::Splice`]).
pub const WRITE_DIRECT: usize = 16 * 1024;

/// A batch buffer grows to at most this much before a new one is started (so the writer's
/// rounds stay bounded and a spare buffer is not held at the size of a burst forever).
const BATCH_BYTES: usize = 256 * 1024;

/// A message for the writer task.
#[derive(Debug)]
pub enum Outgoing {
    /// One `\n`-terminated line.
    Line(Vec<u8>),
    /// One line in three parts, written without copying `body`: a large answer, or a request
    /// forwarding large params (each would otherwise be copied into a line).
    Spliced {
        /// The line up to `body` (`{"jsonrpc":"2.0","id":ID,"result":`, say).
        head: Vec<u8>,
        /// The large value, as it came.
        body: RawJson,
        /// The rest of the line, `\n` included.
        tail: Cow<'static, [u8]>,
    },
    /// Flush, shut the write half down (closes a child's stdin) and stop.
    Close,
}

impl Outgoing {
    /// Its length in bytes.
    fn len(&self) -> usize {
        match self {
            Outgoing::Line(l) => l.len(),
            Outgoing::Spliced { head, body, tail } => head.len() + body.get().len() + tail.len(),
            Outgoing::Close => 0,
        }
    }
}

/// Why a message was not queued.
#[derive(Debug)]
pub enum Refused<T> {
    /// The queue is full; try again later (or [`Outbox::send`], which waits).
    Full(T),
    /// The writer has stopped: the connection is gone.
    Closed(T),
}

/// Wakes the writer, if a sender took its waker (outside the lock).
fn wake(writer: Option<Waker>) {
    if let Some(w) = writer {
        w.wake();
    }
}

/// One queued piece, in order.
enum Chunk {
    /// Small lines, concatenated.
    Batch(Vec<u8>),
    /// A message written as it is.
    Item(Outgoing),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Chunk>,
    /// Bytes in `queue`.
    bytes: usize,
    /// Cleared batch buffers the writer has written, for the next lines (no allocation per round).
    spare: Vec<Vec<u8>>,
    /// The writer's waker while it waits for lines; taken by the sender that wakes it.
    writer: Option<Waker>,
    /// Senders wait for room (the writer tells them when it has written).
    waiting: bool,
    /// The writer has stopped, or will stop after what is queued: sends fail.
    closed: bool,
    /// The [`Outbox`] was dropped: the writer stops after what is queued.
    sender_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    room: tokio::sync::Notify,
    /// `bytes >= OUTBOX_BYTES` of an open queue, kept under the lock as `bytes` changes: a
    /// connection asks before each line it reads ([`Outbox::is_full`]), without the lock.
    full: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Notes whether `st` (this queue's state, locked) is now full.
    fn note_full(&self, st: &State) {
        self.full.store(!st.closed && st.bytes >= OUTBOX_BYTES, std::sync::atomic::Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; keep serving regardless.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending side, one per connection (its [`crate::transport::peer::Peer`], shared through
/// the peer's `Arc`).
pub struct Outbox(Arc<Shared>);

/// The writing side, for [`spawn_writer`].
pub struct OutboxReader(Arc<Shared>);

/// A new queue: its sending side and the side its writer takes.
pub fn channel() -> (Outbox, OutboxReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        room: tokio::sync::Notify::new(),
        full: Default::default(),
    });
    (Outbox(shared.clone()), OutboxReader(shared))
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let writer = {
            let mut st = self.0.state();
            st.sender_gone = true;
            st.writer.take()
        };
        wake(writer);
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        // The writer is gone (or never ran): nothing will be written any more.
        let mut st = self.0.state();
        st.closed = true;
        st.queue.clear();
        st.bytes = 0;
        self.0.note_full(&st);
        drop(st);
        self.0.room.notify_waiters();
    }
}

impl State {
    /// `what` back if the queue takes a message now; refused if it is closed or full (then the
    /// writer tells the waiting senders when it has made room).
    fn admit<T>(&mut self, what: T) -> Result<T, Refused<T>> {
        if self.closed {
            return Err(Refused::Closed(what));
        }
        if self.bytes >= OUTBOX_BYTES {
            self.waiting = true;
            return Err(Refused::Full(what));
        }
        Ok(what)
    }

    /// The batch buffer lines are appended to: the last chunk, if it is a batch with room, else
    /// a new one (a spare buffer if there is one).
    fn batch(&mut self) -> &mut Vec<u8> {
        let open = matches!(self.queue.back(), Some(Chunk::Batch(b)) if b.len() < BATCH_BYTES);
        if !open {
            let buf = self.spare.pop().unwrap_or_default();
            self.queue.push_back(Chunk::Batch(buf));
        }
        match self.queue.back_mut() {
            Some(Chunk::Batch(b)) => b,
            _ => unreachable!("a batch was just made the last chunk"),
        }
    }

    /// Queues `item`; the writer's waker, if it waits.
    fn queue(&mut self, item: Outgoing) -> Option<Waker> {
        self.bytes += item.len();
        match item {
            Outgoing::Line(line) if line.len() < WRITE_DIRECT => self.batch().extend_from_slice(&line),
            item => self.queue.push_back(Chunk::Item(item)),
        }
        self.writer.take()
    }
}

impl Outbox {
    /// Queues `item` without waiting.
    pub fn try_send(&self, item: Outgoing) -> Result<(), Refused<Outgoing>> {
        let writer = {
            let mut st = self.0.state();
            let item = st.admit(item)?;
            let writer = st.queue(item);
            self.0.note_full(&st);
            writer
        };
        wake(writer);
        Ok(())
    }

    /// Appends a line that `write` writes (`\n` included) straight into the batch, without a
    /// buffer of its own, and queues the message it returns right after it, in the same turn of
    /// the lock (the rest of a line whose large value is written from where it is:
    /// [`Outgoing::Spliced`] with an empty head). If the queue is full or closed, `write` comes
    /// back unused (see [`Outbox::try_send`]). `write` runs under the queue's lock: it must only
    /// write.
    pub fn try_write<F: FnOnce(&mut Vec<u8>) -> Option<Outgoing>>(&self, write: F) -> Result<(), Refused<F>> {
        let writer = {
            let mut st = self.0.state();
            let write = st.admit(write)?;
            let batch = st.batch();
            let before = batch.len();
            let then = write(batch);
            let written = batch.len() - before;
            st.bytes += written;
            let writer = match then {
                Some(item) => st.queue(item),
                None => st.writer.take(),
            };
            self.0.note_full(&st);
            writer
        };
        wake(writer);
        Ok(())
    }

    /// Queues [`Outgoing::Close`] behind what is queued, whether the queue is full or not (it
    /// holds no bytes): closing must not wait for a peer that does not read.
    pub fn close_when_written(&self) {
        let writer = {
            let mut st = self.0.state();
            if st.closed {
                return;
            }
            st.queue(Outgoing::Close)
        };
        wake(writer);
    }

    /// Queues `item`, waiting for room until `due` (`Err` past it); false if the connection is
    /// gone.
    pub async fn send_until(
        &self,
        mut item: Outgoing,
        due: Option<Instant>,
    ) -> Result<bool, tokio::time::error::Elapsed> {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before the check: a writer that makes room after it wakes this wait.
            room.as_mut().enable();
            item = match self.try_send(item) {
                Ok(()) => return Ok(true),
                Err(Refused::Closed(_)) => return Ok(false),
                Err(Refused::Full(item)) => item,
            };
            match due {
                Some(due) => tokio::time::timeout_at(due, room).await?,
                None => room.await,
            }
        }
    }

    /// Queues `item`, waiting for room; false if the connection is gone.
    pub async fn send(&self, item: Outgoing) -> bool {
        self.send_until(item, None).await.unwrap_or(false)
    }

    /// Whether the queue is full: the other side does not read what is written to it.
    pub fn is_full(&self) -> bool {
        self.0.full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the queue has room (at once if it has, or if the connection is gone).
    pub async fn room(&self) {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before the check, as in `send_until`.
            room.as_mut().enable();
            {
                let mut st = self.0.state();
                if st.closed || st.bytes < OUTBOX_BYTES {
                    return;
                }
                st.waiting = true;
            }
            room.await;
        }
    }
}

impl OutboxReader {
    /// Waits for what is queued and takes all of it; None once no sender is left and the queue
    /// is empty.
    async fn take(&self, into: &mut VecDeque<Chunk>) -> Option<()> {
        std::future::poll_fn(|cx| {
            let mut st = self.0.state();
            if !st.queue.is_empty() {
                std::mem::swap(&mut st.queue, into);
                st.bytes = 0;
                self.0.note_full(&st);
                let waiting = std::mem::take(&mut st.waiting);
                drop(st);
                if waiting {
                    self.0.room.notify_waiters();
                }
                return Poll::Ready(Some(()));
            }
            if st.sender_gone {
                return Poll::Ready(None);
            }
            st.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Gives written batch buffers back for reuse (at most two kept, each of a bounded size).
    fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut st = self.0.state();
        if st.spare.len() < 2 {
            st.spare.push(buf);
        }
    }

    /// Whether anything is queued.
    fn is_empty(&self) -> bool {
        self.0.state().queue.is_empty()
    }

    /// No more sends: the writer is stopping.
    fn close(&self) {
        let mut st = self.0.state();
        st.closed = true;
        self.0.note_full(&st);
    }
}

/// Spawns the task that writes what is queued in `outbox` to `w`: each round, everything queued
/// (small lines in one write, large ones from where they are), then a flush when nothing more
/// is queued. The first large message grows `w`'s pipe, if it is one ([`crate::transport::pipe`]).
/// It stops after [`Outgoing::Close`] (shutting `w` down), when the [`Outbox`] is dropped,
/// or when a write fails; sends fail from then on.
pub fn spawn_writer<W>(mut w: W, outbox: OutboxReader) -> tokio::task::JoinHandle<()>
where
    W: AsyncWrite + Unpin + Send + Growable + 'static,
{
    tokio::spawn(async move {
        let mut round = VecDeque::new();
        let mut grown = false;
        'serve: while outbox.take(&mut round).await.is_some() {
            while let Some(chunk) = round.pop_front() {
                match chunk {
                    Chunk::Batch(buf) => {
                        if !grown && buf.len() >= WRITE_DIRECT {
                            w.grow();
                            grown = true;
                        }
                        if w.write_all(&buf).await.is_err() {
                            break 'serve;
                        }
                        outbox.recycle(buf);
                    }
                    Chunk::Item(item) => {
                        if !grown && item.len() >= WRITE_DIRECT {
                            w.grow();
                            grown = true;
                        }
                        let written = match item {
                            Outgoing::Line(line) => w.write_all(&line).await,
                            Outgoing::Spliced { head, body, tail } => {
                                // Three parts: `writev`s where the writer takes them.
                                use bytes::Buf;
                                let mut parts = (&head[..]).chain(body.get().as_bytes()).chain(&tail[..]);
                                w.write_all_buf(&mut parts).await
                            }
                            Outgoing::Close => {
                                outbox.close();
                                let _ = w.flush().await;
                                let _ = w.shutdown().await;
                                break 'serve;
                            }
                        };
                        if written.is_err() {
                            break 'serve;
                        }
                    }
                }
            }
            if outbox.is_empty() && w.flush().await.is_err() {
                break;
            }
        }
        // Dropping the reader closes the queue: later sends fail at once.
        drop(outbox);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Lines, a spliced answer and the lines after it leave in order and whole, through a pipe
    /// that takes a few bytes at a time (partial writes in the middle of every part).
    #[tokio::test]
    async fn spliced_answers_are_written_whole_and_in_order() {
        use plugind_protocol::jsonrpc;
        let (ours, mut theirs) = tokio::io::duplex(61);
        let (tx, rx) = channel();
        let writer = spawn_writer(ours, rx);
        let body = "x".repeat(100_000);
        let id = jsonrpc::to_raw(&7);
        let result = jsonrpc::to_raw(&body);
        let expected =
            [&b"{\"a\":1}\n"[..], &jsonrpc::raw_result_line(&id, &result), b"{\"b\":2}\n{\"c\":3}\n"].concat();
        assert!(tx.send(Outgoing::Line(b"{\"a\":1}\n".to_vec())).await);
        let spliced =
            Outgoing::Spliced { head: jsonrpc::result_head(&id), body: result.into(), tail: Cow::Borrowed(b"}\n") };
        assert!(tx.send(spliced).await);
        assert!(tx.send(Outgoing::Line(b"{\"b\":2}\n".to_vec())).await);
        assert!(tx
            .try_write(|out| {
                out.extend_from_slice(b"{\"c\":3}\n");
                None
            })
            .is_ok());
        assert!(tx.send(Outgoing::Close).await);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes differ");
        assert!(!tx.send(Outgoing::Line(b"late\n".to_vec())).await, "a send after Close succeeded");
    }

    /// A full queue refuses `try_send` and makes `send` wait until the writer has made room;
    /// every line arrives, in order.
    #[tokio::test]
    async fn a_full_queue_waits_for_the_writer() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (tx, rx) = channel();
        // Filled before the writer starts: nothing is taken meanwhile.
        let line = |n: usize| format!("{n:0>1023}\n").into_bytes();
        let mut n = 0;
        while tx.try_send(Outgoing::Line(line(n))).is_ok() {
            n += 1;
        }
        assert_eq!(n, OUTBOX_BYTES / 1024, "the queue took {n} KiB");
        assert!(matches!(tx.try_write(|_| None), Err(Refused::Full(_))));
        let writer = spawn_writer(ours, rx);
        let more = tokio::spawn(async move {
            for m in n..n + 100 {
                assert!(tx.send(Outgoing::Line(line(m))).await);
            }
            tx
        });
        let total = (n + 100) * 1024;
        let mut got = vec![0u8; total];
        theirs.read_exact(&mut got).await.unwrap();
        for (m, l) in got.chunks(1024).enumerate() {
            assert_eq!(l, line(m), "line {m}");
        }
        drop(more.await.unwrap());
        writer.await.unwrap();
    }

    /// A line written into the batch with a spliced rest wakes a writer that waits for lines.
    #[tokio::test]
    async fn a_spliced_rest_wakes_a_waiting_writer() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (tx, rx) = channel();
        let writer = spawn_writer(ours, rx);
        while tx.0.state().writer.is_none() {
            tokio::task::yield_now().await;
        }
        let body = plugind_protocol::jsonrpc::to_raw(&"y".repeat(WRITE_DIRECT));
        let expected = format!("{{\"x\":{}}}\n", body.get());
        let queued = tx.try_write(|out| {
            out.extend_from_slice(b"{\"x\":");
            Some(Outgoing::Spliced { head: Vec::new(), body: body.into(), tail: Cow::Borrowed(b"}\n") })
        });
        assert!(queued.is_ok());
        let mut got = vec![0u8; expected.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert!(got == expected.as_bytes(), "the bytes differ");
        drop(tx);
        writer.await.unwrap();
    }

    /// With the writer gone (the other side closed), sends fail at once instead of queueing.
    #[tokio::test]
    async fn sends_fail_once_the_writer_is_gone() {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let (tx, rx) = channel();
        let writer = spawn_writer(ours, rx);
        assert!(tx.send(Outgoing::Line(b"x\n".to_vec())).await);
        writer.await.unwrap();
        assert!(matches!(tx.try_send(Outgoing::Line(b"y\n".to_vec())), Err(Refused::Closed(_))));
        assert!(!tx.send(Outgoing::Line(b"z\n".to_vec())).await);
    }
}
