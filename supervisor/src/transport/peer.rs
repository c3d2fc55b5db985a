//! One side of a bidirectional JSON-RPC connection: calls out with deadlines, replies matched by id.
//!
//! A [`Peer`] is shared (`Arc`) by everybody who calls the other side. It owns nothing that
//! blocks: outgoing lines go to a writer task through a bounded queue ([`crate::transport::outbox`]), and
//! the owner of the read half feeds every incoming line to [`Peer::accept`], which resolves
//! responses on the spot and hands requests and notifications back to the owner.
//!
//! Architecture invariant: the `pending` lock is never held across an `.await`.

use crate::trace::TraceIn;
use crate::transport::outbox::{Outbox, Outgoing, Refused, WRITE_DIRECT};
use crate::transport::tap::{Dir, Tap};
use plugind_protocol::jsonrpc::{self, Message, ParseError, RpcError, LINE_END};
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a call came back with.
pub type Reply = Result<RawJson, RpcError>;

/// What a request's params writer ([`Peer::call_traced`]) returns when the params hold a large
/// value it does not copy: the value, and the params' text after it. The request line is then
/// the text written so far, `body`, and `tail` (with the line's end added).
pub struct Splice {
    /// The large value, shared ([`RawJson::is_shared`]).
    pub body: RawJson,
    /// The params' text after it.
    pub tail: Vec<u8>,
}

/// A JSON value's text, checked when it was read: in an allocation of its own, or, for a large
/// result from the other side, a slice of the buffer its line was read into, which passes on to
/// the caller and out to a host without being copied (a 1 MiB result was copied out of the read
/// buffer only to be written out again). Reads as a [`RawValue`].
#[derive(Debug, Clone)]
pub struct RawJson(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Boxed(Box<RawValue>),
    /// The text of a `&RawValue` (so valid UTF-8 and one JSON value), sliced from its line.
    Shared(bytes::Bytes),
}

impl RawJson {
    /// The value in an allocation of its own (copied only if it is a shared slice).
    pub fn into_boxed(self) -> Box<RawValue> {
        match self.0 {
            Repr::Boxed(b) => b,
            Repr::Shared(_) => (*self).to_owned(),
        }
    }

    /// `value`, a span of `line` (a `&RawValue` parsed from it), shared with `line` if it is
    /// large, else copied out; None if `value` is not in `line`.
    pub fn from_line(line: &bytes::Bytes, value: &RawValue) -> Option<Self> {
        let (within, text) = (line.as_ptr_range(), value.get().as_bytes().as_ptr_range());
        (within.start <= text.start && text.end <= within.end).then(|| RawJson::of(line, value))
    }

    /// Whether it is a slice of a read buffer.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared(_))
    }

    /// [`RawJson::from_line`] for a value known to be in `line`.
    fn of(line: &bytes::Bytes, value: &RawValue) -> Self {
        if value.get().len() >= WRITE_DIRECT {
            RawJson(Repr::Shared(line.slice_ref(value.get().as_bytes())))
        } else {
            RawJson(Repr::Boxed(value.to_owned()))
        }
    }
}

impl std::ops::Deref for RawJson {
    type Target = RawValue;

    fn deref(&self) -> &RawValue {
        match &self.0 {
            Repr::Boxed(b) => b,
            Repr::Shared(bytes) => {
                // SAFETY: a `Shared` value is made only by `RawJson::of`, from the bytes of a
                // `&RawValue`, which is a `str` (valid UTF-8) holding one JSON value; `Bytes`
                // never changes its contents.
                let text = unsafe { std::str::from_utf8_unchecked(bytes) };
                plugind_protocol::scan::raw(text)
            }
        }
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(b: Box<RawValue>) -> Self {
        RawJson(Repr::Boxed(b))
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// Why a call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The other side answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The deadline passed; the other side was sent `$/cancel`.
    #[error("deadline exceeded after {0:?}")]
    Timeout(Duration),
    /// The connection closed (the process exited) before an answer came.
    #[error("connection closed")]
    Closed,
    /// The other side is being stopped: the call was cancelled (it was sent `$/cancel`), or was
    /// never sent ([`Peer::cancel_work`]).
    #[error("cancelled: the other side is stopping")]
    Stopping,
}

/// When a call must be answered.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Time allowed since the call was sent or since the last `$/progress`.
    pub idle: Duration,
    /// The call never runs past this instant, progress or not.
    pub hard: Instant,
    /// When the deadline was set: the call's clock starts here (read once per call; reading the
    /// clock was a twentieth of plugind's time per call when every step read it again).
    pub start: Instant,
}

impl Deadline {
    /// `idle` from now, extendable by progress up to `max` from now.
    pub fn new(idle: Duration, max: Duration) -> Self {
        Deadline::starting(Instant::now(), idle, max)
    }

    /// [`Deadline::new`] with the clock already read.
    pub fn starting(now: Instant, idle: Duration, max: Duration) -> Self {
        Deadline { idle, hard: now + max.max(idle), start: now }
    }

    /// A deadline no later than `self` and no later than `other`'s hard limit.
    pub fn within(self, hard: Instant) -> Self {
        Deadline { hard: self.hard.min(hard), ..self }
    }
}

/// What a caller waiting for an answer is told: the answer, or why none will come.
type Outcome = Result<Reply, Unanswered>;

/// Why a pending call was given up on.
enum Unanswered {
    /// The deadline of the call has passed (told by [`sweep`]).
    Expired,
    /// The other side is being stopped (told by [`Peer::cancel_work`]); it was sent `$/cancel`.
    Stopping,
}

struct Pending {
    /// Taken when the answer is delivered, or when the deadline passes.
    reply: Option<oneshot::Sender<Outcome>>,
    /// Set by `$/progress`: the deadline restarts from here.
    progressed: Option<Instant>,
    /// The first deadline: `idle` after the call was sent, never past `hard`.
    due: Instant,
    /// Time allowed since the last `$/progress`.
    idle: Duration,
    /// The call's hard deadline: calls the other side makes on its behalf must end by then.
    hard: Instant,
    /// Cancelled when this call ends in any way (the entry is dropped), so work done on its
    /// behalf stops too. Made only when somebody asks (`parent_of`): most calls never need one.
    done: Option<CancellationToken>,
    /// Whether calls made by the other side while this one is pending may be on its behalf
    /// (not for pings and teardown, which run beside real work).
    parentable: bool,
    /// The host whose request caused this call: the other side's `$/progress` for it goes there.
    relay: Option<ProgressTo>,
    /// The trace a call the other side makes on this one's behalf continues.
    trace: Option<TraceIn>,
    /// Whether the call holds one of the other side's `max_inflight` slots ([`SlotKeeper`]).
    slotted: bool,
}

impl Pending {
    /// When the call times out, with the progress so far: `due`, moved to `idle` after the last
    /// `$/progress`, never past `hard`.
    fn deadline(&self) -> Instant {
        match self.progressed {
            Some(at) => self.due.max((at + self.idle).min(self.hard)),
            None => self.due,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(done) = &self.done {
            done.cancel();
        }
    }
}

/// A host's request id, as the host sent it: numbers (what host libraries use) kept inline, so
/// relaying progress costs no allocation per call; anything else kept as its JSON text.
#[derive(Debug, Clone)]
pub enum HostId {
    /// An integer id.
    Num(i64),
    /// Any other id, as JSON text.
    Json(Arc<str>),
}

impl HostId {
    /// The id of a host's request.
    pub fn of(id: &RawValue) -> Self {
        id.get().parse().map_or_else(|_| HostId::Json(id.get().into()), HostId::Num)
    }

    fn to_value(&self) -> serde_json::Value {
        match self {
            HostId::Num(n) => (*n).into(),
            HostId::Json(text) => serde_json::from_str(text).unwrap_or_default(),
        }
    }
}

/// Where the `$/progress` of calls made for a host's request goes: that host's connection (by the
/// id it registered with [`relay_target`]), under the host's own request id. Copied into every
/// call made for the request, so it holds no reference count: the connection is looked up only
/// when a progress notification actually comes.
#[derive(Clone)]
pub struct ProgressTo {
    /// The host's connection id.
    pub conn: u64,
    /// The host's request id.
    pub id: HostId,
}

/// The host connections that relayed progress can reach, by connection id.
static RELAY_TARGETS: std::sync::LazyLock<std::sync::RwLock<std::collections::HashMap<u64, std::sync::Weak<Peer>>>> =
    std::sync::LazyLock::new(Default::default);

/// A host connection registered as a target of relayed progress; unregistered on drop.
#[must_use = "the connection is a relay target only while this lives"]
pub struct RelayTarget(u64);

/// Registers `peer`, the host connection `conn`, as a target of relayed progress.
pub fn relay_target(conn: u64, peer: &Arc<Peer>) -> RelayTarget {
    RELAY_TARGETS.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(conn, Arc::downgrade(peer));
    RelayTarget(conn)
}

impl Drop for RelayTarget {
    fn drop(&mut self) {
        RELAY_TARGETS.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.0);
    }
}

std::thread_local! {
    /// While a host's request is being polled: where the progress of the calls it makes goes.
    /// Every call [`Peer::call_with`] makes meanwhile copies it into its pending entry. Set only
    /// for the extent of one poll of a [`Relaying`] future (so it is per task, like a
    /// task-local: the calls are made several layers down (router, registry, hook chains) and
    /// the calls plugins make on their own, in their reader tasks, must not relay). A pointer in
    /// a `Cell` rather than tokio's `task_local!`, whose scope swaps the value in and out of a
    /// `RefCell` twice per poll (a percent of plugind's time per call).
    static PROGRESS_TO: std::cell::Cell<*const ProgressTo> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// The relay target of the host request being polled on this thread, if any.
fn current_relay() -> Option<ProgressTo> {
    PROGRESS_TO.with(|cell| {
        let to = cell.get();
        // SAFETY: non-null only while a `Relaying` future is inside its own `poll`, pointing at
        // its `to`, which that poll borrows for its whole extent (see `Relaying::poll`).
        (!to.is_null()).then(|| unsafe { (*to).clone() })
    })
}

pin_project_lite::pin_project! {
    /// A future whose calls relay their progress to `to` (see [`relaying_progress`]).
    pub struct Relaying<F> {
        to: ProgressTo,
        #[pin]
        fut: F,
    }
}

impl<F: std::future::Future> std::future::Future for Relaying<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        with_progress_to(this.to, || this.fut.poll(cx))
    }
}

/// Runs `f` (a poll) with the progress of the calls it makes relayed to `to`: the scope of
/// [`Relaying`], for a caller that polls a future pinned where it stands rather than moving it
/// into a `Relaying`.
pub fn with_progress_to<R>(to: &ProgressTo, f: impl FnOnce() -> R) -> R {
    let _restore = RestoreRelay(PROGRESS_TO.with(|cell| cell.replace(to)));
    f()
}

/// Puts back the enclosing scope's relay target when a scope ends, also if its poll panics.
struct RestoreRelay(*const ProgressTo);

impl Drop for RestoreRelay {
    fn drop(&mut self) {
        PROGRESS_TO.with(|cell| cell.set(self.0));
    }
}

pin_project_lite::pin_project! {
    /// A future whose calls relay no progress, even inside a [`Relaying`] one (see [`unrelayed`]).
    pub struct Unrelayed<F> {
        #[pin]
        fut: F,
    }
}

impl<F: std::future::Future> std::future::Future for Unrelayed<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let _restore = RestoreRelay(PROGRESS_TO.with(|cell| cell.replace(std::ptr::null())));
        self.project().fut.poll(cx)
    }
}

/// Runs `fut` with no progress relayed from the calls it makes, within a host's request whose
/// calls relay theirs: work beside the request that the host must not hear of (a shadow hook).
pub fn unrelayed<F: std::future::Future>(fut: F) -> Unrelayed<F> {
    Unrelayed { fut }
}

/// Runs `fut` with the progress of the calls it makes relayed to `to`.
pub fn relaying_progress<F: std::future::Future>(to: ProgressTo, fut: F) -> Relaying<F> {
    Relaying { to, fut }
}

/// The params of a `$/progress` from the other side; `progress`/`total` pass on as they came.
#[derive(serde::Deserialize)]
struct ProgressIn<'a> {
    id: u64,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    progress: Option<&'a RawValue>,
    #[serde(default, borrow)]
    total: Option<&'a RawValue>,
}

/// A `$/progress` as relayed to a host: the host's id, the rest only where the plugin gave it.
#[derive(Serialize)]
struct ProgressOut<'a> {
    id: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<&'a RawValue>,
}

/// A call of ours that the other side is working on, as seen by the calls it makes meanwhile.
#[derive(Debug, Clone)]
pub struct ParentCall {
    /// Its id.
    pub id: u64,
    /// Nested calls end no later than this.
    pub hard: Instant,
    /// Cancelled when the parent call ends.
    pub done: CancellationToken,
    /// The trace calls made on its behalf continue.
    pub trace: Option<TraceIn>,
}

/// The other side's `max_inflight` slots, as a peer sees them: a call given up on (its deadline
/// passed, or its caller went away) that held a slot keeps it while the other side may still be
/// working on it: until its late answer comes (the SDKs answer a cancelled call `-32800` when its
/// handler ends), or for the plugin's grace to stop ([`SlotKeeper::keep`]: a plugin that stops
/// silently, as the contract allows, loses the slot that long at most), or until the peer closes.
///
/// A plugin that ignores `$/cancel` and runs every call it gets was otherwise sent a new call for
/// every one given up on: when queued calls with deadlines a few milliseconds apart expired
/// together, each was sent with moments to live and given up on at once, and the plugin got 65
/// calls at once with `max_inflight` 2, and crashed (audit 20).
pub trait SlotKeeper: Send + Sync {
    /// A call that holds a slot was given up on: its slot stays taken when the call ends, for
    /// the time returned at most (the plugin's grace to stop the work; not the caller's
    /// `timeout_ms`: a tiny one freed the slot at once, and 1 ms calls were sent 88 at once with
    /// `max_inflight` 2; a long one held it for minutes after its caller went away).
    fn keep(&self) -> Duration;
    /// `n` slots kept by [`SlotKeeper::keep`] are free again.
    fn give_back(&self, n: usize);
}

#[derive(Default)]
struct Calls {
    /// The calls waiting for an answer, by the id plugind gave them.
    pending: FxHashMap<u64, Pending>,
    /// Ids given up on recently, so their late answers are dropped quietly; true for those that
    /// keep a slot ([`SlotKeeper`]).
    abandoned: FxHashMap<u64, bool>,
    abandoned_order: VecDeque<u64>,
    closed: bool,
    /// Set by [`Peer::cancel_work`]: calls of real work are refused from then on.
    stopping: bool,
    /// When the deadline sweeper ([`sweep`]) wakes next: no later than the earliest deadline
    /// pending. None while it waits for a call (or before it is started).
    sweep_at: Option<Instant>,
    /// Whether the sweeper task has been started.
    sweeper: bool,
}

/// What the [`Peer`] shares with its deadline sweeper.
#[derive(Default)]
struct Shared {
    calls: Mutex<Calls>,
    /// The other side's slots, for the calls that hold one.
    keeper: Option<Arc<dyn SlotKeeper>>,
    /// Wakes the sweeper: an earlier deadline, or the peer closed or dropped.
    rearm: tokio::sync::Notify,
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A panic while holding this lock would be a bug in this module; keep serving regardless.
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A peer's deadline sweeper: one timer for all its calls, set to the earliest deadline pending;
/// when it fires, every call whose deadline (moved by `$/progress`) has passed is told so, and
/// gives up as before (`$/cancel`, the id remembered). A call costs no timer of its own: a
/// timer registered and cleared per call was a twentieth of plugind's time per call. The
/// sweeper ends when the peer closes or is dropped.
async fn sweep(shared: Arc<Shared>) {
    loop {
        let at = {
            let calls = shared.calls();
            if calls.closed {
                return;
            }
            calls.sweep_at
        };
        let Some(at) = at else {
            shared.rearm.notified().await;
            continue;
        };
        tokio::select! {
            biased;
            () = shared.rearm.notified() => continue,
            () = tokio::time::sleep_until(at) => {}
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut calls = shared.calls();
            let mut next: Option<Instant> = None;
            for p in calls.pending.values_mut() {
                if p.reply.is_none() {
                    continue;
                }
                let deadline = p.deadline();
                if deadline <= now {
                    expired.extend(p.reply.take());
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
            calls.sweep_at = next;
        }
        // Outside the lock: a send wakes the caller.
        for reply in expired {
            let _ = reply.send(Err(Unanswered::Expired));
        }
    }
}

const ABANDONED_MEMORY: usize = 4096;

impl Calls {
    /// Remembers `id` as given up on (`held`: it keeps its slot). Returns how many slots kept
    /// are free again: the oldest id is forgotten past [`ABANDONED_MEMORY`].
    #[must_use]
    fn abandon(&mut self, id: u64, held: bool) -> usize {
        if self.abandoned.insert(id, held).is_none() {
            self.abandoned_order.push_back(id);
            if self.abandoned_order.len() > ABANDONED_MEMORY {
                if let Some(old) = self.abandoned_order.pop_front() {
                    return usize::from(self.abandoned.remove(&old) == Some(true));
                }
            }
        }
        0
    }

    /// Frees the slot `id` keeps, if it still keeps one: true if it did.
    fn release_kept(&mut self, id: u64) -> bool {
        match self.abandoned.get_mut(&id) {
            Some(held) if *held => {
                *held = false;
                true
            }
            _ => false,
        }
    }
}

impl Shared {
    fn give_back(&self, n: usize) {
        if n > 0 {
            if let Some(k) = &self.keeper {
                k.give_back(n);
            }
        }
    }
}

/// What [`Peer::accept`] could not handle itself.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A request from the other side; answer with [`Peer::respond`].
    Request {
        /// Its id, to echo.
        id: &'a RawValue,
        /// Method name.
        method: Cow<'a, str>,
        /// Raw params.
        params: Option<&'a RawValue>,
    },
    /// A notification from the other side.
    Notification {
        /// Method name.
        method: Cow<'a, str>,
        /// Raw params.
        params: Option<&'a RawValue>,
    },
    /// A response was delivered to its caller (or to a caller who had given up).
    Delivered,
    /// A response whose id we never sent or long forgot.
    UnknownResponse(String),
    /// Not a message.
    Invalid(ParseError),
}

/// The calling side of a connection.
pub struct Peer {
    out: Outbox,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// Copies messages for `plugins.trace` while somebody watches.
    tap: Option<Arc<Tap>>,
}

impl Peer {
    /// A peer writing through `out` (the queue of a [`crate::transport::outbox::spawn_writer`]
    /// task).
    pub fn new(out: Outbox) -> Self {
        Self::keeping(out, None)
    }

    /// A peer whose calls made with `slotted` hold one of `keeper`'s slots (a plugin
    /// instance's `max_inflight`), kept for a while when they are given up on.
    pub fn with_slots(out: Outbox, keeper: Arc<dyn SlotKeeper>) -> Self {
        Self::keeping(out, Some(keeper))
    }

    fn keeping(out: Outbox, keeper: Option<Arc<dyn SlotKeeper>>) -> Self {
        let shared = Shared { keeper, ..Shared::default() };
        Peer { out, shared: Arc::new(shared), next_id: AtomicU64::new(1), tap: None }
    }

    /// The same peer, copying every message in and out to `tap`.
    pub fn with_tap(mut self, tap: Arc<Tap>) -> Self {
        self.tap = Some(tap);
        self
    }

    fn trace(&self, dir: Dir, line: &[u8]) {
        if let Some(t) = &self.tap {
            t.record(dir, line);
        }
    }

    /// [`Peer::trace`] for a message going out, as one line.
    fn trace_out(&self, item: &Outgoing) {
        match item {
            Outgoing::Line(line) => self.trace(Dir::Out, line),
            Outgoing::Spliced { head, body, tail } if self.tap.as_ref().is_some_and(|t| t.watched()) => {
                self.trace(Dir::Out, &[&head[..], body.get().as_bytes(), tail].concat());
            }
            _ => {}
        }
    }

    /// Queues a line without waiting; false if the outbox is full or closed.
    fn push_now(&self, line: Vec<u8>) -> bool {
        self.trace(Dir::Out, &line);
        self.out.try_send(Outgoing::Line(line)).is_ok()
    }

    /// Queues a line, waiting for room; false if the connection is gone.
    async fn push(&self, line: Vec<u8>) -> bool {
        self.trace(Dir::Out, &line);
        self.queue_until(Outgoing::Line(line), None).await.unwrap_or(false)
    }

    /// Queues a message for the writer (traced by the caller), waiting for room until `due`
    /// (`Err` past it); false if the connection is gone.
    ///
    /// Tries without waiting first: the outbox is rarely full, and the waiting `send` and its
    /// timer are large enough to grow the future of every request (allocated once per request),
    /// so they are boxed and made only when needed.
    async fn queue_until(&self, item: Outgoing, due: Option<Instant>) -> Result<bool, tokio::time::error::Elapsed> {
        match self.out.try_send(item) {
            Ok(()) => Ok(true),
            Err(Refused::Closed(_)) => Ok(false),
            Err(Refused::Full(waiting)) => Box::pin(self.out.send_until(waiting, due)).await,
        }
    }

    /// Writes a line straight into the outbox's batch (no line of its own), when nobody watches
    /// this peer's messages (a watched line is recorded whole, so it is made apart); otherwise,
    /// or when the outbox is full, `write` makes a line that is queued as a message. `write`
    /// returns the rest of the line when it ends with a large value written from where it is
    /// ([`Outgoing::Spliced`], its head empty). False if the connection is gone; `Err` if `due`
    /// passed while the outbox was full.
    async fn write_line(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Option<Outgoing>,
        due: Option<Instant>,
    ) -> Result<bool, tokio::time::error::Elapsed> {
        let watched = self.tap.as_ref().is_some_and(|t| t.watched());
        let write = if watched {
            write
        } else {
            match self.out.try_write(write) {
                Ok(()) => return Ok(true),
                Err(Refused::Closed(_)) => return Ok(false),
                Err(Refused::Full(w)) => w,
            }
        };
        let mut line = Vec::with_capacity(128);
        let item = match write(&mut line) {
            Some(Outgoing::Spliced { body, tail, .. }) => Outgoing::Spliced { head: line, body, tail },
            _ => Outgoing::Line(line),
        };
        self.trace_out(&item);
        self.queue_until(item, due).await
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.shared.calls()
    }

    /// Calls `method` and waits for the answer until `deadline`.
    ///
    /// On timeout the other side gets `$/cancel { id }`. Dropping the returned future before it
    /// completes also cancels the call.
    pub async fn call<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        deadline: Deadline,
    ) -> Result<RawJson, CallError> {
        self.call_with(
            method,
            |out| {
                jsonrpc::write_json(out, params);
                None
            },
            deadline,
        )
        .await
    }

    /// [`Peer::call`] with params that `write_params` appends to the request line as JSON text,
    /// or writes up to a large value it passes on without a copy ([`Splice`]).
    pub async fn call_with(
        &self,
        method: &str,
        write_params: impl FnOnce(&mut Vec<u8>) -> Option<Splice>,
        deadline: Deadline,
    ) -> Result<RawJson, CallError> {
        self.call_traced(method, write_params, deadline, None, false).await
    }

    /// [`Peer::call_with`] for a call that is a hop of trace `trace`: calls the other side makes
    /// on its behalf ([`Peer::parent_of`]) continue that trace. `slotted`: the caller holds one
    /// of the [`SlotKeeper`]'s slots for it (kept while the call is given up on but may still
    /// run).
    pub async fn call_traced(
        &self,
        method: &str,
        write_params: impl FnOnce(&mut Vec<u8>) -> Option<Splice>,
        deadline: Deadline,
        trace: Option<TraceIn>,
        slotted: bool,
    ) -> Result<RawJson, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let start = deadline.start;
        let due = (start + deadline.idle).min(deadline.hard);
        let start_sweeper = {
            let mut calls = self.calls();
            if calls.closed {
                return Err(CallError::Closed);
            }
            let parentable = method != plugind_protocol::methods::PING && method != plugind_protocol::methods::TEARDOWN;
            if parentable && calls.stopping {
                return Err(CallError::Stopping);
            }
            let relay = current_relay();
            let pending = Pending {
                reply: Some(tx),
                progressed: None,
                due,
                idle: deadline.idle,
                hard: deadline.hard,
                done: None,
                parentable,
                relay,
                trace,
                slotted: slotted && self.shared.keeper.is_some(),
            };
            calls.pending.insert(id, pending);
            // The sweeper's timer is moved only for a deadline earlier than it: calls with the
            // same timeout come in the order of their deadlines and never move it.
            if calls.sweep_at.is_none_or(|at| due < at) {
                calls.sweep_at = Some(due);
                Some(!std::mem::replace(&mut calls.sweeper, true))
            } else {
                None
            }
        };
        match start_sweeper {
            Some(true) => drop(tokio::spawn(sweep(self.shared.clone()))),
            Some(false) => self.shared.rearm.notify_one(),
            None => {}
        }
        let mut guard = CancelOnDrop { peer: self, id, armed: true };
        let line = |out: &mut Vec<u8>| {
            jsonrpc::append_request_head(out, id, method);
            match write_params(out) {
                None => {
                    out.extend_from_slice(LINE_END);
                    None
                }
                Some(Splice { body, mut tail }) => {
                    tail.extend_from_slice(LINE_END);
                    Some(Outgoing::Spliced { head: Vec::new(), body, tail: Cow::Owned(tail) })
                }
            }
        };
        match self.write_line(line, Some(due)).await {
            Ok(true) => {}
            Ok(false) => {
                guard.armed = false;
                self.calls().pending.remove(&id);
                return Err(CallError::Closed);
            }
            Err(_) => {
                guard.armed = false;
                self.calls().pending.remove(&id);
                return Err(CallError::Timeout(start.elapsed()));
            }
        }
        match rx.await {
            Ok(Ok(reply)) => {
                guard.armed = false;
                reply.map_err(CallError::Rpc)
            }
            Ok(Err(Unanswered::Expired)) => {
                // The guard sends `$/cancel` and forgets the id (unless the answer came meanwhile).
                drop(guard);
                Err(CallError::Timeout(start.elapsed()))
            }
            Ok(Err(Unanswered::Stopping)) => {
                // `cancel_work` already sent `$/cancel` and forgot the id.
                guard.armed = false;
                Err(CallError::Stopping)
            }
            Err(_) => {
                guard.armed = false;
                Err(CallError::Closed)
            }
        }
    }

    /// Sends a notification without waiting for room in the outbox; false if it was dropped.
    pub fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> bool {
        self.push_now(jsonrpc::notification_line(method, params))
    }

    /// Sends a notification, waiting for room in the outbox.
    pub async fn notify_wait<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> bool {
        self.push(jsonrpc::notification_line(method, params)).await
    }

    /// Answers a request of the other side.
    pub async fn respond(&self, id: &RawValue, reply: Result<&RawValue, &RpcError>) {
        let line = |out: &mut Vec<u8>| {
            match reply {
                Ok(result) => jsonrpc::append_raw_result_line(out, id, result),
                Err(e) => out.extend_from_slice(&jsonrpc::error_line(id, e)),
            }
            None
        };
        let _ = self.write_line(line, None).await;
    }

    /// Answers a request of the other side with an error if the outbox has room now; false
    /// (nothing sent) if it is full or gone.
    pub fn respond_now(&self, id: &RawValue, error: &RpcError) -> bool {
        self.push_now(jsonrpc::error_line(id, error))
    }

    /// [`Peer::respond`] with the answer's ownership: a result of [`WRITE_DIRECT`] bytes or more
    /// goes to the writer as it is ([`Outgoing::Spliced`]) instead of being copied into a line.
    pub async fn respond_with(&self, id: &RawValue, reply: Reply) {
        let body = match reply {
            Ok(result) if result.get().len() >= WRITE_DIRECT => result,
            other => return self.respond(id, other.as_deref()).await,
        };
        let answer = Outgoing::Spliced { head: jsonrpc::result_head(id), body, tail: Cow::Borrowed(LINE_END) };
        self.trace_out(&answer);
        let _ = self.queue_until(answer, None).await;
    }

    /// Whether the other side has stopped reading: its queue is full.
    pub fn outbox_full(&self) -> bool {
        self.out.is_full()
    }

    /// Waits until the other side has read enough for the queue to take more.
    pub async fn outbox_room(&self) {
        self.out.room().await;
    }

    /// Sends a pre-built line (already `\n`-terminated).
    pub async fn send_line(&self, line: Vec<u8>) -> bool {
        self.push(line).await
    }

    /// Restarts the deadline of our request `id` (the other side sent `$/progress`).
    pub fn progress(&self, id: u64) -> bool {
        match self.calls().pending.get_mut(&id) {
            Some(p) => {
                p.progressed = Some(Instant::now());
                true
            }
            None => false,
        }
    }

    /// The other side's `$/progress`: restarts the call's deadline and, for a call made for a
    /// host's request, tells that host under its own id (the message cut as plugind keeps it).
    fn progress_from(&self, params: Option<&RawValue>) {
        let Some(p) = params.and_then(|raw| serde_json::from_str::<ProgressIn<'_>>(raw.get()).ok()) else { return };
        let relay = match self.calls().pending.get_mut(&p.id) {
            Some(pending) => {
                pending.progressed = Some(Instant::now());
                pending.relay.clone()
            }
            None => None,
        };
        let Some(to) = relay else { return };
        let target = RELAY_TARGETS.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&to.conn).cloned();
        let Some(host) = target.and_then(|w| w.upgrade()) else { return };
        let message = p.message.map(|m| crate::caps::cut_progress(&m).unwrap_or(m.into_owned()));
        let out = ProgressOut { id: to.id.to_value(), message, progress: p.progress, total: p.total };
        host.notify(plugind_protocol::methods::PROGRESS, &out);
    }

    /// The call of ours that a request of the other side is made on behalf of: the one named by
    /// `explicit` (an id the other side passed along), else the only call it is working on.
    /// None when that is ambiguous or nothing is pending.
    pub fn parent_of(&self, explicit: Option<u64>) -> Option<ParentCall> {
        let mut calls = self.calls();
        let id = match explicit {
            Some(id) => calls.pending.contains_key(&id).then_some(id)?,
            None => {
                let mut candidates = calls.pending.iter().filter(|(_, p)| p.parentable).map(|(id, _)| *id);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    _ => return None,
                }
            }
        };
        let p = calls.pending.get_mut(&id)?;
        let done = p.done.get_or_insert_with(CancellationToken::new).clone();
        Some(ParentCall { id, hard: p.hard, done, trace: p.trace.clone() })
    }

    /// The trace id of the only call the other side is working on (what a `log` notification
    /// without its own trace id is attributed to); None when there is no such single call.
    pub fn current_trace_id(&self) -> Option<String> {
        let calls = self.calls();
        let mut candidates = calls.pending.values().filter(|p| p.parentable);
        match (candidates.next(), candidates.next()) {
            (Some(only), None) => only.trace.as_ref()?.parent.map(|s| s.trace_id_hex()),
            _ => None,
        }
    }

    /// Handles one incoming line: responses are delivered here, the rest is returned.
    pub fn accept<'a>(&self, line: &'a bytes::Bytes) -> Incoming<'a> {
        self.trace(Dir::In, line);
        match Message::parse(line) {
            // Not an answer to take (both `result` and `error`, say): reported by whoever reads
            // it, and no call ends for it: the right answer may follow (docs/protocol.md).
            Err(e) => Incoming::Invalid(e),
            Ok(Message::Request { id, method, params }) => Incoming::Request { id, method, params },
            Ok(Message::Notification { method, params }) => {
                if method == plugind_protocol::methods::PROGRESS {
                    self.progress_from(params);
                }
                Incoming::Notification { method, params }
            }
            Ok(Message::Response { id, outcome }) => {
                let Some(n) = Message::numeric_id(id) else {
                    // plugind's ids are numbers: one echoed as a string (`"3"` for 3, a common
                    // slip of shell and jq plugins) answers no call, but the report says why.
                    let text = id.get();
                    let pending = text
                        .strip_prefix('"')
                        .and_then(|s| s.strip_suffix('"'))
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|n| self.awaits(*n));
                    return Incoming::UnknownResponse(match pending {
                        Some(n) => format!(
                            "{text} (a string: call {n} is waiting for its answer, whose id must be the number {n}, as it was sent)"
                        ),
                        None => text.to_owned(),
                    });
                };
                let mut calls = self.calls();
                match calls.pending.remove(&n) {
                    Some(mut p) => {
                        drop(calls);
                        if let Some(reply) = p.reply.take() {
                            let _ = reply.send(Ok(outcome.map(|result| RawJson::of(line, result))));
                        }
                        Incoming::Delivered
                    }
                    None => match calls.abandoned.remove(&n) {
                        Some(held) => {
                            drop(calls);
                            // Its late answer: the plugin is done with it, and its slot free.
                            self.shared.give_back(usize::from(held));
                            Incoming::Delivered
                        }
                        None => Incoming::UnknownResponse(n.to_string()),
                    },
                }
            }
        }
    }

    /// Whether call `n` is waiting for its answer.
    pub fn awaits(&self, n: u64) -> bool {
        self.calls().pending.contains_key(&n)
    }

    /// Ends call `n`, if it is in flight, with `error` as its answer: its answer came but could
    /// not be taken (malformed, over the frame limit). True when there was such a call.
    pub fn fail_call(&self, n: u64, error: RpcError) -> bool {
        let pending = self.calls().pending.remove(&n);
        match pending.and_then(|mut p| p.reply.take()) {
            Some(reply) => reply.send(Ok(Err(error))).is_ok(),
            None => false,
        }
    }

    /// Fails every call in flight with [`CallError::Closed`] and refuses new ones.
    /// Called when the other side is gone (EOF, process exit).
    pub fn close(&self) {
        let (drained, kept): (Vec<Pending>, usize) = {
            let mut calls = self.calls();
            calls.closed = true;
            let kept = calls.abandoned.values_mut().map(|held| usize::from(std::mem::take(held))).sum();
            (calls.pending.drain().map(|(_, p)| p).collect(), kept)
        };
        drop(drained); // dropping the senders wakes every caller with Closed
        self.shared.give_back(kept);
        self.shared.rearm.notify_one(); // the sweeper ends
    }

    /// The start of a graceful stop: every call of real work in flight (not pings or teardown)
    /// ends now with [`CallError::Stopping`], the other side gets `$/cancel` for each (so it
    /// can answer `teardown` promptly instead of finishing work nobody waits for), and new
    /// calls of real work are refused the same way. Returns how many calls were cancelled.
    pub fn cancel_work(&self) -> usize {
        let cancelled: Vec<(u64, Pending)> = {
            let mut calls = self.calls();
            calls.stopping = true;
            let cancelled: Vec<(u64, Pending)> = calls.pending.extract_if(|_, p| p.parentable).collect();
            let mut freed = 0;
            for (id, _) in &cancelled {
                // Not kept: the instance is being stopped, it gets no new call.
                freed += calls.abandon(*id, false);
            }
            drop(calls);
            self.shared.give_back(freed);
            cancelled
        };
        // Outside the lock: a send wakes the caller; dropping the entry cancels the calls the
        // other side made on its behalf.
        let count = cancelled.len();
        for (id, mut pending) in cancelled {
            if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Err(Unanswered::Stopping));
            }
            self.notify(plugind_protocol::methods::CANCEL, &serde_json::json!({ "id": id }));
        }
        count
    }

    /// Has the writer task close the write half once what is queued is written. Never waits:
    /// a stop goes on (SIGTERM, SIGKILL) while a peer that does not read keeps it from closing.
    pub fn close_output(&self) {
        self.out.close_when_written();
    }

    /// Calls of real work (not pings or teardown) waiting for an answer.
    pub fn busy(&self) -> usize {
        self.calls().pending.values().filter(|p| p.parentable).count()
    }

    /// Calls waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.calls().pending.len()
    }

    /// Whether [`Peer::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.calls().closed
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Nobody can call through it any more: the sweeper ends.
        self.calls().closed = true;
        self.shared.rearm.notify_one();
    }
}

/// Sends `$/cancel` for a call whose caller stopped waiting.
struct CancelOnDrop<'a> {
    peer: &'a Peer,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = &self.peer.shared;
        let (was_pending, grace, freed) = {
            let mut calls = self.peer.calls();
            match calls.pending.remove(&self.id) {
                Some(p) => {
                    let freed = calls.abandon(self.id, p.slotted);
                    // Under the lock: a late answer read meanwhile would give back a slot not
                    // yet counted as kept.
                    let grace = shared.keeper.as_ref().filter(|_| p.slotted).map(|k| k.keep());
                    (true, grace, freed)
                }
                None => (false, None, 0),
            }
        };
        shared.give_back(freed);
        if let Some(grace) = grace {
            // For the plugin's grace at most: its late answer frees it first.
            let (shared, id) = (shared.clone(), self.id);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                drop(rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    let freed = shared.calls().release_kept(id);
                    shared.give_back(usize::from(freed));
                }));
            }
        }
        if was_pending {
            self.peer.notify(plugind_protocol::methods::CANCEL, &serde_json::json!({ "id": self.id }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{Frame, FrameDecoder};
    use futures::StreamExt;
    use std::sync::Arc;
    use tokio_util::codec::FramedRead;

    /// A peer talking to an in-memory "plugin" driven by the test.
    fn pair() -> (Arc<Peer>, FramedRead<tokio::io::DuplexStream, FrameDecoder>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (their_read, their_write) = (theirs, ours);
        let (tx, rx) = crate::transport::outbox::channel();
        crate::transport::outbox::spawn_writer(their_write, rx);
        let peer = Arc::new(Peer::new(tx));
        let (to_us_w, to_us_r) = tokio::io::duplex(1 << 16);
        let _ = to_us_r;
        (peer, FramedRead::new(their_read, FrameDecoder::default()), to_us_w)
    }

    #[tokio::test]
    async fn response_is_matched_by_id() {
        let (peer, mut plugin_in, _) = pair();
        let p2 = peer.clone();
        let call = tokio::spawn(async move {
            p2.call(
                "execute",
                &serde_json::json!({"x": 1}),
                Deadline::new(Duration::from_secs(5), Duration::from_secs(5)),
            )
            .await
        });
        let Some(Ok(Frame::Line(req))) = plugin_in.next().await else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&req).unwrap();
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{"ok":true}}}}"#, v["id"]);
        assert!(matches!(peer.accept(&answer.into()), Incoming::Delivered));
        assert_eq!(call.await.unwrap().unwrap().get(), r#"{"ok":true}"#);
    }

    /// A large result reaches its caller as a slice of the line it came in (no copy); a small
    /// one in an allocation of its own (the read buffer is not held for it).
    #[tokio::test]
    async fn large_results_are_shared_with_their_line() {
        let (peer, mut plugin_in, _) = pair();
        for (n, size) in [(1, WRITE_DIRECT * 4), (2, 10)] {
            let p2 = peer.clone();
            let call = tokio::spawn(async move {
                p2.call("execute", &(), Deadline::new(Duration::from_secs(5), Duration::from_secs(5))).await
            });
            let Some(Ok(Frame::Line(_req))) = plugin_in.next().await else { panic!() };
            let result = format!(r#"{{"blob":"{}"}}"#, "é".repeat(size / 2));
            let line = bytes::Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{n},"result":{result}}}"#));
            assert!(matches!(peer.accept(&line), Incoming::Delivered));
            let got = call.await.unwrap().unwrap();
            assert_eq!(got.get(), result);
            let inside = line.as_ptr_range().contains(&got.get().as_ptr());
            assert_eq!(inside, size >= WRITE_DIRECT, "size {size}");
            assert_eq!(got.clone().into_boxed().get(), result);
        }
    }

    #[tokio::test]
    async fn timeout_sends_cancel_and_late_answer_is_quiet() {
        let (peer, mut plugin_in, _) = pair();
        let d = Deadline::new(Duration::from_millis(50), Duration::from_millis(50));
        let r = peer.call("execute", &serde_json::json!({}), d).await;
        assert!(matches!(r, Err(CallError::Timeout(_))));
        let Some(Ok(Frame::Line(_req))) = plugin_in.next().await else { panic!() };
        let Some(Ok(Frame::Line(cancel))) = plugin_in.next().await else { panic!() };
        assert_eq!(std::str::from_utf8(&cancel).unwrap(), r#"{"jsonrpc":"2.0","method":"$/cancel","params":{"id":1}}"#);
        let answer = |text: &'static [u8]| bytes::Bytes::from_static(text);
        assert!(matches!(peer.accept(&answer(br#"{"id":1,"result":1}"#)), Incoming::Delivered));
        assert!(matches!(peer.accept(&answer(br#"{"id":99,"result":1}"#)), Incoming::UnknownResponse(_)));
    }

    /// An answer that cannot be taken (its id plugind's number as a string, or both `result`
    /// and `error`) ends no call: the right answer that follows is delivered.
    #[tokio::test]
    async fn a_malformed_answer_leaves_its_call_waiting_for_the_right_one() {
        let (peer, mut plugin_in, _) = pair();
        let p2 = peer.clone();
        let call = tokio::spawn(async move {
            p2.call("execute", &serde_json::json!({}), Deadline::new(Duration::from_secs(30), Duration::from_secs(30)))
                .await
        });
        let Some(Ok(Frame::Line(_req))) = plugin_in.next().await else { panic!() };
        let line = bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":"1","result":{}}"#);
        let Incoming::UnknownResponse(said) = peer.accept(&line) else { panic!("not an unknown response") };
        assert!(said.contains("call 1 is waiting") && said.contains("the number 1"), "{said}");
        let line =
            bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#);
        assert!(matches!(peer.accept(&line), Incoming::Invalid(_)));
        let line = bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":"right"}"#);
        assert!(matches!(peer.accept(&line), Incoming::Delivered));
        let answer = call.await.unwrap().unwrap();
        assert_eq!(answer.get(), r#""right""#);
    }

    #[tokio::test]
    async fn progress_extends_up_to_the_hard_limit() {
        let (peer, _plugin_in, _) = pair();
        let p2 = peer.clone();
        let d = Deadline::new(Duration::from_millis(100), Duration::from_millis(400));
        let started = Instant::now();
        let call = tokio::spawn(async move {
            let r = p2.call("execute", &(), d).await;
            (r, started.elapsed())
        });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            peer.progress(1);
        }
        let (r, took) = call.await.unwrap();
        assert!(matches!(r, Err(CallError::Timeout(_))));
        assert!(took >= Duration::from_millis(390) && took < Duration::from_millis(600), "{took:?}");
    }

    #[tokio::test]
    async fn progress_relay_is_set_only_inside_its_scope() {
        let to = |id| ProgressTo { conn: 7, id: HostId::Num(id) };
        let id_now = || {
            current_relay().map(|t| match t.id {
                HostId::Num(n) => n,
                HostId::Json(_) => -1,
            })
        };
        assert_eq!(id_now(), None);
        let outer = relaying_progress(to(1), async {
            assert_eq!(id_now(), Some(1));
            relaying_progress(to(2), async { assert_eq!(id_now(), Some(2)) }).await;
            tokio::task::yield_now().await;
            assert_eq!(id_now(), Some(1));
        });
        outer.await;
        assert_eq!(id_now(), None);
    }

    #[tokio::test]
    async fn close_fails_calls_in_flight_at_once() {
        let (peer, _plugin_in, _) = pair();
        let p2 = peer.clone();
        let call = tokio::spawn(async move {
            p2.call("execute", &(), Deadline::new(Duration::from_secs(30), Duration::from_secs(30))).await
        });
        while peer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        peer.close();
        assert!(matches!(call.await.unwrap(), Err(CallError::Closed)));
        assert!(matches!(
            peer.call("x", &(), Deadline::new(Duration::from_secs(1), Duration::from_secs(1))).await,
            Err(CallError::Closed)
        ));
    }
}
