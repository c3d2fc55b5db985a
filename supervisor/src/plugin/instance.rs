//! One plugin process and the actor task that owns it.
//!
//! [`launch`] starts a task that has the child forked (on a [`crate::plugin::spawner`] thread),
//! then, in one `select!` loop, reads the child's stdout (delivering responses through the
//! [`Peer`], handling the plugin's own requests), runs the handshake, pings it, carries out a stop
//! (teardown → close stdin → SIGTERM → SIGKILL) and waits for its exit. The plugin actor hears
//! about the instance through exactly two events: [`InstanceEvent::Ready`] (handshake outcome)
//! and, always last, [`InstanceEvent::Exited`]; or, if the process could not be started, only
//! [`InstanceEvent::SpawnFailed`].
//!
//! Callers do not go through this task: they hold an `Arc<Instance>` from the routing table and
//! call through its `Peer` directly, so one call costs one write and one read.

use crate::catalog::{self, Catalog};
use crate::logs::PluginLog;
use crate::plugin::context::{Caller, InstanceHost, InstanceSettings};
use crate::plugin::spawn::{self, SpawnError, SpawnPlan};
use crate::sandbox::{self, cgroup::Cgroup};
use crate::transport::budget::{unread_answer, Budget, Exceeded, Ticket};
use crate::transport::chatter::Chatter;
use crate::transport::frame::{
    Frame, FrameDecoder, LongLineTurn, Turn, DEFAULT_MAX_FRAME, LONG_LINE, TURN_MIN_PROGRESS, TURN_STALL,
};
use crate::transport::outbox::{self, spawn_writer, OutboxReader, WRITE_DIRECT};
use crate::transport::peer::{CallError, Deadline, Incoming, Peer, SlotKeeper};
use crate::transport::pipe::Growable;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use plugind_protocol::manifest::{Manifest, Permission};
use plugind_protocol::methods::{
    self, InitParams, InitResult, LogLevel, LogParams, RegisterResult, ServiceDecl, SupervisorInfo,
};
use plugind_protocol::version;
use serde_json::value::RawValue;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

/// How often the forks refused at an instance's `processes` limit are counted (see `run`).
const PIDS_POLL: Duration = Duration::from_millis(250);

/// How long what an instance wrote on stdout before it exited is read after its exit.
const LAST_WORDS: Duration = Duration::from_millis(250);

/// Grace between steps of a stop (docs/protocol.md): teardown answer, stdin closed → SIGTERM → SIGKILL.
pub const STOP_STEP: Duration = Duration::from_secs(2);
/// Stdout frames an instance task handles in a row before it looks at anything else.
const FRAMES_IN_A_ROW: usize = 32;

/// The longest notification line handled; a longer one is reported and ignored unparsed (the
/// MCP adapter has the same rule).
const NOTIFICATION_MAX: usize = crate::caps::NOTIFICATION_BYTES;

/// How often requests refused past a plugin's request budget are reported in its log.
const REFUSALS_REPORTED_EVERY: Duration = Duration::from_secs(10);
/// Health pings missed in a row before the instance counts as crashed.
pub const PING_MISSES: u32 = 3;

/// What the instance tells its plugin actor.
#[derive(Debug)]
pub enum InstanceEvent {
    /// The handshake finished: the services from `register`, or why it failed.
    Ready {
        /// Which instance.
        id: u64,
        /// Services declared in `register`, or the error.
        result: Result<Vec<ServiceDecl>, String>,
    },
    /// The process could not be started (the only event of such an instance).
    SpawnFailed {
        /// Which instance.
        id: u64,
        /// Why.
        error: String,
    },
    /// The process is gone. Always the last event of an instance.
    Exited {
        /// Which instance.
        id: u64,
        /// How.
        exit: ExitReport,
    },
}

/// How an instance ended.
#[derive(Debug, Clone, Default)]
pub struct ExitReport {
    /// Exit code.
    pub code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
    /// The limit that fired, if one did.
    pub limit: Option<&'static str>,
    /// Why plugind thinks it ended, for `last_error`.
    pub reason: Option<String>,
    /// plugind asked it to stop.
    pub requested: bool,
}

impl ExitReport {
    /// Exit code 0 and no signal.
    pub fn is_clean(&self) -> bool {
        self.code == Some(0) && self.signal.is_none() && self.reason.is_none()
    }

    /// Human summary: `exited with code 3`, `killed by SIGKILL`…
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by {}", signal_name(s)),
            (None, None) => "ended".to_owned(),
        };
        match (&self.reason, self.limit) {
            // plugind's own verdict (init failed, a deadline, missed pings), after which it
            // killed the process: "killed by SIGKILL" read as a limit or a crash (audit 19).
            (Some(r), None) if self.signal == Some(libc::SIGKILL) => format!("{r} (plugind ended it)"),
            (Some(r), _) => format!("{r} ({how})"),
            (None, Some(l)) => format!("{how}: limit {l} exceeded"),
            (None, None) => how,
        }
    }
}

/// `SIGKILL` for 9.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

/// Why a call was not admitted to an instance.
#[derive(Debug)]
pub enum Admission {
    /// `max_inflight` busy and the queue full.
    Overloaded,
    /// The deadline passed while queued.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopKind {
    /// Let the calls in flight finish (up to `max_timeout_ms`), then stop gracefully.
    Drain,
    Graceful,
    Kill,
}

/// A running plugin process, shared by the routing table and callers.
pub struct Instance {
    /// Unique among all instances plugind started.
    pub id: u64,
    /// The child's pid (also its process group id); 0 until it is forked.
    pid: AtomicU32,
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Calls to the child.
    pub peer: Arc<Peer>,
    /// When it was spawned.
    pub started: Instant,
    /// The manifest's `timeout_ms` and `max_timeout_ms`, here so a call needs no lock to read them.
    pub timeouts: (Duration, Duration),
    /// `max_inflight` slots (shared with the peer, which keeps those of calls given up on).
    limiter: Arc<Limiter>,
    /// Calls waiting for a slot.
    queued: AtomicU32,
    max_queue: u32,
    /// Calls admitted or waiting: what "least loaded" compares.
    load: AtomicUsize,
    stop_tx: mpsc::Sender<StopKind>,
    /// Its method catalog, set once when it has answered `register` (before it is routed).
    catalog: OnceLock<Arc<Catalog>>,
    /// Whether one of its own first stderr or non-JSON stdout lines (a JVM prints its report on
    /// stdout) said it ran out of memory: its death is explained by that (the plugin's log
    /// mixes in instances before it, and a JVM's report is hundreds of lines long).
    said_out_of_memory: AtomicBool,
    /// Whether one of them said a fork was refused (see [`says_fork_refused`]).
    said_fork_refused: AtomicBool,
    /// How many of its lines were looked at for that ([`WORDS_LOOKED_AT`] at most).
    words_looked_at: AtomicU32,
}

/// Longest id (as JSON text) of a request a plugin sends plugind: ids are numbers or short
/// strings, and one is kept, copied and echoed for every request.
const REQUEST_ID_MAX: usize = 1024;

/// How many of an instance's stderr and non-JSON stdout lines are looked at for an
/// out-of-memory report: those of its start.
const WORDS_LOOKED_AT: u32 = 5_000;

/// How long a call given up on keeps its `max_inflight` slot at most, unless the plugin answers
/// it first (the SDKs answer `-32800` when the handler ends): the plugin's time to stop the work
/// after `$/cancel`. The contract lets a plugin stop silently, so it must be short (a caller that
/// goes away must not take a slot for long); a plugin that ignores `$/cancel` is then sent at
/// most `max_inflight` new calls per grace, not one per call given up on (audit 20).
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Holds an instance's `max_inflight` slot and its load count for the duration of one call.
pub struct CallSlot<'a> {
    instance: &'a Instance,
}

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        self.instance.limiter.release();
        self.instance.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call in an instance's queue: counted out of it when it leaves, and out of the instance's
/// load unless it was admitted (its [`CallSlot`] then holds the load).
struct InQueue<'a> {
    instance: &'a Instance,
    admitted: bool,
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.instance.queued.fetch_sub(1, Ordering::Relaxed);
        if !self.admitted {
            self.instance.load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// `max_inflight` slots: one atomic word while a slot is free or nobody waits, a FIFO semaphore
/// only to hand a freed slot to a call waiting in the queue.
///
/// tokio's `Semaphore` alone took its waiters' mutex for every release, waiters or not (a
/// percent of plugind's instructions per call). The word holds the free slots (low half) and
/// the queued calls not yet handed a slot (high half), so a release either frees its slot or
/// hands it to a waiter, never both and never neither, and a caller either takes a free slot or
/// counts itself as waiting in the same step: no slot can be freed unseen by a caller going to
/// wait. As with tokio's semaphore, a queued call is served before a newcomer takes a slot.
struct Limiter {
    /// `free | waiting << 32`.
    state: AtomicU64,
    /// Holds the slots handed to waiters (none at rest); FIFO among them.
    handoff: Semaphore,
    /// Slots kept by calls given up on ([`SlotKeeper`]): as many releases free nothing.
    kept: AtomicU32,
    /// How long a slot is kept at most ([`CANCEL_GRACE`], or the plugin's `timeout_ms` if less).
    keep_at_most: Duration,
}

const FREE: u64 = 1;
const WAITING: u64 = 1 << 32;

impl Limiter {
    fn new(slots: u32, keep_at_most: Duration) -> Self {
        Limiter {
            state: AtomicU64::new(u64::from(slots)),
            handoff: Semaphore::new(0),
            kept: AtomicU32::new(0),
            keep_at_most,
        }
    }

    /// Takes a free slot, if one is free.
    fn try_take(&self) -> bool {
        self.state
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |s| (s & 0xffff_ffff != 0).then(|| s - FREE))
            .is_ok()
    }

    /// Takes a free slot, else counts the caller as waiting: true if it took one.
    fn take_or_wait(&self) -> bool {
        let prev = self
            .state
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |s| {
                Some(if s & 0xffff_ffff != 0 { s - FREE } else { s + WAITING })
            })
            .unwrap_or_else(|s| s);
        prev & 0xffff_ffff != 0
    }

    /// Waits for a slot until `until`: true if it got one. Dropped while it waits (its caller
    /// cancelled or hung up, or the call a `service.call` was made for ended), it leaves the
    /// queue as if it had given up ([`Queued`]).
    async fn wait(self: &Arc<Self>, until: Instant) -> bool {
        if self.take_or_wait() {
            return true;
        }
        let mut queued = Queued { limiter: self, done: false };
        let acquire = self.handoff.acquire();
        tokio::pin!(acquire);
        // `handoff` is never closed.
        let got = tokio::time::timeout_at(until, &mut acquire).await;
        queued.done = true;
        if let Ok(Ok(p)) = got {
            p.forget();
            return true;
        }
        if !self.leave_queue() {
            // Every caller still queued has a slot on its way (this one kept its place in the
            // queue), so this wait is only for a release between its two steps: pass it on.
            if let Ok(p) = acquire.await {
                p.forget();
            }
            self.release();
        }
        false
    }

    /// Leaves the queue, unless a release has already counted this caller out (then a slot is
    /// on its way to it, through `handoff`): true if it left.
    fn leave_queue(&self) -> bool {
        self.state.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| (s >= WAITING).then(|| s - WAITING)).is_ok()
    }

    /// Frees a slot, or hands it to the first call waiting, unless a slot is to stay kept for a
    /// call given up on: then that is what this one becomes (slots are alike).
    fn release(&self) {
        if self.kept.load(Ordering::Relaxed) != 0
            && self.kept.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |k| k.checked_sub(1)).is_ok()
        {
            return;
        }
        self.free_one();
    }

    /// Frees a slot, or hands it to the first call waiting.
    fn free_one(&self) {
        let prev = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                Some(if s >= WAITING { s - WAITING } else { s + FREE })
            })
            .unwrap_or_else(|s| s);
        if prev >= WAITING {
            self.handoff.add_permits(1);
        }
    }
}

/// A caller counted as waiting in a [`Limiter`]: dropped before it was served or gave up, it
/// leaves the queue. Without this, each queued call whose future was dropped (a host's
/// `$/cancel` or hang-up, the end of the call a `service.call` was made for) stayed counted as
/// waiting, and every later release handed that ghost a slot no call took: after `max_inflight`
/// of them the plugin refused every call, idle, until restarted (audit 21).
struct Queued<'a> {
    limiter: &'a Arc<Limiter>,
    done: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.done || self.limiter.leave_queue() {
            return;
        }
        // A slot is on its way to this caller: pass it on. It is in `handoff` already unless
        // its release is between its two steps; then whoever waits next gets it, or a task
        // that waits for it and passes it on.
        match self.limiter.handoff.try_acquire() {
            Ok(p) => {
                p.forget();
                self.limiter.release();
            }
            Err(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let limiter = self.limiter.clone();
                    runtime.spawn(async move {
                        if let Ok(p) = limiter.handoff.acquire().await {
                            p.forget();
                        }
                        limiter.release();
                    });
                }
            }
        }
    }
}

impl SlotKeeper for Limiter {
    fn keep(&self) -> Duration {
        // Called while the call still holds its slot, before its `CallSlot` releases it.
        self.kept.fetch_add(1, Ordering::AcqRel);
        self.keep_at_most
    }

    fn give_back(&self, n: usize) {
        for _ in 0..n {
            self.free_one();
        }
    }
}

impl Instance {
    /// The child's pid (also its process group id); 0 while it is being forked.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Whether its stderr or stdout said it ran out of memory (see [`OUT_OF_MEMORY`]).
    pub fn said_out_of_memory(&self) -> bool {
        self.said_out_of_memory.load(Ordering::Relaxed)
    }

    /// Looks at one of its first stderr or non-JSON stdout lines for an out-of-memory report or a
    /// refused fork.
    fn look_at_words(&self, line: &[u8]) {
        if self.words_looked_at.fetch_add(1, Ordering::Relaxed) >= WORDS_LOOKED_AT {
            return;
        }
        let text = String::from_utf8_lossy(&line[..line.len().min(1024)]).to_lowercase();
        if OUT_OF_MEMORY.iter().any(|p| text.contains(p)) {
            self.said_out_of_memory.store(true, Ordering::Relaxed);
        }
        if says_fork_refused(&text) {
            self.said_fork_refused.store(true, Ordering::Relaxed);
        }
    }

    /// What its own words explain about an exit it was not asked for, appended to the reason:
    /// out of memory (at start only), a fork refused for want of `process`.
    fn exit_hints(&self, m: &Manifest, at_start: bool) -> String {
        let memory = memory_hint(at_start && self.said_out_of_memory(), m.limits.memory_mb);
        let process = (self.said_fork_refused.load(Ordering::Relaxed) && !m.grants(Permission::Process)).then_some(
            "; it said a fork was refused: starting processes (a shell's $(...), pipes and commands, a launcher such as \
             npx) needs the `process` permission in the manifest",
        );
        format!("{}{}", memory.unwrap_or_default(), process.unwrap_or_default())
    }

    /// Its method catalog (the manifest's merged with its `register` answer's); None until it
    /// has registered.
    pub fn catalog(&self) -> Option<&Arc<Catalog>> {
        self.catalog.get()
    }

    /// Calls in flight plus calls queued.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Waits for one of `max_inflight` slots, queueing up to `max_queue`, until `until`.
    pub async fn admit(&self, until: Instant) -> Result<CallSlot<'_>, Admission> {
        self.load.fetch_add(1, Ordering::Relaxed);
        if self.limiter.try_take() {
            return Ok(CallSlot { instance: self });
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.load.fetch_sub(1, Ordering::Relaxed);
            return Err(Admission::Overloaded);
        }
        // Counted out of the queue (and out of the load unless it gets a slot) however the wait
        // ends, dropped included (audit 21: a dropped wait left both counts raised for good).
        let mut in_queue = InQueue { instance: self, admitted: false };
        // Boxed: only queued calls wait, and the waiting future would grow every call's.
        let got = Box::pin(self.limiter.wait(until)).await;
        in_queue.admitted = got;
        drop(in_queue);
        if got {
            Ok(CallSlot { instance: self })
        } else {
            Err(Admission::Timeout)
        }
    }

    /// Starts a graceful stop: teardown, close stdin, SIGTERM, SIGKILL.
    pub fn stop(&self) {
        let _ = self.stop_tx.try_send(StopKind::Graceful);
    }

    /// Retires the instance after a hot reload: no new calls are routed to it (the caller has
    /// already switched routes), the calls in flight finish, then it stops gracefully.
    pub fn retire(&self) {
        let _ = self.stop_tx.try_send(StopKind::Drain);
    }

    /// Kills the process group now.
    pub fn kill(&self) {
        let _ = self.stop_tx.try_send(StopKind::Kill);
    }
}

/// What an instance needs to know about its plugin.
#[derive(Clone)]
pub struct InstanceSpec {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// argv, env, cwd, limits.
    pub plan: SpawnPlan,
    /// Merged config for `init`.
    pub config: serde_json::Value,
    /// Data dir for `init` (with `storage`).
    pub data_dir: Option<PathBuf>,
    /// Private temp dir, removed when the instance ends.
    pub tmp_dir: PathBuf,
    /// Health ping period.
    pub ping_every: Duration,
}

impl InstanceSpec {
    /// Everything instance `id` of plugin `name` (in `dir`, with manifest `m`) needs to start.
    pub fn new(
        settings: &InstanceSettings,
        name: &Arc<str>,
        dir: &std::path::Path,
        m: &Arc<Manifest>,
        id: u64,
    ) -> Result<InstanceSpec, String> {
        let argv = spawn::argv_for(m, dir).map_err(|e| e.to_string())?;
        let paths = &settings.paths;
        let data_dir = m.grants(plugind_protocol::manifest::Permission::Storage).then(|| paths.data_dir(&m.name));
        if let Some(d) = &data_dir {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create data dir {}: {e}", d.display()))?;
        }
        let tmp_dir = paths.tmp_dir(&m.name, id);
        let env = spawn::plugin_env(m, data_dir.as_deref(), &tmp_dir, &settings.operator_env);
        Ok(InstanceSpec {
            plugin: name.clone(),
            manifest: m.clone(),
            plan: SpawnPlan { argv, cwd: dir.to_path_buf(), env, limits: m.limits.clone() },
            config: settings.config.clone(),
            data_dir,
            tmp_dir,
            ping_every: settings.ping_every,
        })
    }
}

/// What a plugin's instances share, kept across its generations.
#[derive(Clone)]
pub struct PluginShared {
    pub log: Arc<PluginLog>,
    /// The plugin's turn at reading a stdout line past `LONG_LINE` (`crate::transport::frame`).
    pub long_lines: LongLineTurn,
    /// The rate of the plugin's stdout lines that are not answers or requests
    /// (`crate::transport::chatter`).
    pub chatter: Chatter,
    /// The catalog its instances share while they register alike.
    pub catalog: catalog::SharedCatalog,
    /// What its requests to plugind may hold, all instances together: a budget per instance
    /// let a plugin of 64 instances make plugind hold 4 GiB.
    pub requests: Budget,
}

impl PluginShared {
    pub fn new(log: Arc<PluginLog>) -> Self {
        PluginShared {
            log,
            long_lines: LongLineTurn::new(),
            chatter: Chatter::new(),
            catalog: catalog::SharedCatalog::default(),
            requests: Budget::for_plugin(),
        }
    }
}

/// Starts an instance: its task forks the child, then serves it. A failed fork is reported as
/// [`InstanceEvent::SpawnFailed`]; only a temp dir that cannot be made fails here.
pub fn launch(
    id: u64,
    spec: InstanceSpec,
    host: Arc<dyn InstanceHost>,
    PluginShared { log, long_lines, chatter, catalog, requests }: PluginShared,
    events: mpsc::UnboundedSender<InstanceEvent>,
) -> Result<Arc<Instance>, SpawnError> {
    // Fresh: whatever an earlier holder of the name left is set aside first.
    crate::tmpdirs::discard(&spec.tmp_dir);
    std::fs::create_dir_all(&spec.tmp_dir)
        .map_err(|source| SpawnError::TempDir { path: spec.tmp_dir.clone(), source })?;
    let (out_tx, out_rx) = outbox::channel();
    let (stop_tx, stop_rx) = mpsc::channel(4);
    let limits = &spec.manifest.limits;
    let grace = CANCEL_GRACE.min(Duration::from_millis(spec.manifest.timeout_ms));
    let limiter = Arc::new(Limiter::new(limits.max_inflight, grace));
    let instance = Arc::new(Instance {
        id,
        pid: AtomicU32::new(0),
        plugin: spec.plugin.clone(),
        peer: Arc::new(Peer::with_slots(out_tx, limiter.clone()).with_tap(log.tap.clone())),
        started: Instant::now(),
        timeouts: (
            Duration::from_millis(spec.manifest.timeout_ms),
            Duration::from_millis(spec.manifest.max_timeout_ms),
        ),
        limiter,
        queued: AtomicU32::new(0),
        max_queue: limits.max_queue,
        load: AtomicUsize::new(0),
        stop_tx,
        catalog: OnceLock::new(),
        said_out_of_memory: AtomicBool::new(false),
        said_fork_refused: AtomicBool::new(false),
        words_looked_at: AtomicU32::new(0),
    });
    let task = InstanceTask {
        instance: instance.clone(),
        spec,
        host,
        log,
        long_lines,
        chatter,
        catalog,
        events,
        requests,
        refusals: std::sync::Mutex::new(crate::time::Throttle::new(REFUSALS_REPORTED_EVERY)),
    };
    let (events, log, inst) = (task.events.clone(), task.log.clone(), instance.clone());
    tokio::spawn(async move {
        use futures::FutureExt as _;
        let Err(panic) = std::panic::AssertUnwindSafe(task.start(out_rx, stop_rx)).catch_unwind().await else {
            return;
        };
        // A bug of plugind's, caught: the instance must still end, its process with it, or its
        // plugin would wait for it for ever (`running` with a dead pid, a stop that never ends).
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let reason = format!("plugind's task serving instance {} failed: {what}", inst.id);
        log.warn(format!("{reason}; its processes are killed"));
        if inst.pid() > 0 {
            let _ = killpg(Pid::from_raw(inst.pid() as i32), Signal::SIGKILL);
        }
        inst.peer.close();
        let exit = ExitReport { reason: Some(reason), signal: Some(libc::SIGKILL), ..ExitReport::default() };
        let _ = events.send(InstanceEvent::Exited { id: inst.id, exit });
    });
    Ok(instance)
}

/// Forks the child of `spec` on a spawner thread.
async fn fork(host: &dyn InstanceHost, spec: &InstanceSpec, id: u64) -> Result<spawn::Spawned, String> {
    let (plan, manifest, data_dir, tmp_dir) =
        (spec.plan.clone(), spec.manifest.clone(), spec.data_dir.clone(), spec.tmp_dir.clone());
    let job = move || {
        let sandbox =
            sandbox::Request { manifest: &manifest, data_dir: data_dir.as_deref(), tmp_dir: &tmp_dir, instance: id };
        spawn::spawn(&plan, &sandbox)
    };
    match host.spawner()?.run(job).await {
        Some(spawned) => spawned.map_err(|e| e.to_string()),
        None => Err("the spawner thread failed".to_owned()),
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a pending background step of the actor resolves to.
enum Step {
    Handshake(Result<Vec<ServiceDecl>, String>),
    Ping(Result<(), CallError>),
    TeardownAnswered,
    Served,
}

struct InstanceTask {
    instance: Arc<Instance>,
    spec: InstanceSpec,
    host: Arc<dyn InstanceHost>,
    log: Arc<PluginLog>,
    /// The plugin's turn at reading a stdout line past `LONG_LINE` (`crate::transport::frame`).
    long_lines: LongLineTurn,
    /// The plugin's stdout lines that are not answers or requests, metered: past the rate, this
    /// instance's stdout is left unread for a while (`crate::transport::chatter`).
    chatter: Chatter,
    /// The catalog the plugin's instances share while they register alike.
    catalog: catalog::SharedCatalog,
    events: mpsc::UnboundedSender<InstanceEvent>,
    /// The plugin's requests to plugind in flight, bounded (`crate::transport::budget`).
    requests: Budget,
    /// Requests refused past that budget, reported in the plugin's log at most this often.
    refusals: std::sync::Mutex<crate::time::Throttle>,
}

/// Where a stop stands.
#[derive(Debug, Clone, Copy)]
enum StopPhase {
    /// `teardown` sent; at the instant, close stdin anyway.
    Teardown(Instant),
    /// stdin closed; at the instant, SIGTERM.
    StdinClosed(Instant),
    /// SIGTERM sent; at the instant, SIGKILL.
    Terminated(Instant),
    /// SIGKILL sent.
    Killed,
}

impl InstanceTask {
    /// Forks the child, then serves it until it exits.
    async fn start(self, out_rx: OutboxReader, stop_rx: mpsc::Receiver<StopKind>) {
        let inst = &self.instance;
        let spawn::Spawned { mut child, cgroup } = match fork(&*self.host, &self.spec, inst.id).await {
            Ok(s) => s,
            Err(error) => {
                crate::tmpdirs::discard(&self.spec.tmp_dir);
                inst.peer.close();
                let _ = self.events.send(InstanceEvent::SpawnFailed { id: inst.id, error });
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        inst.pid.store(pid, Ordering::Relaxed);
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("UNWRAP: stdin is piped"),
            child.stdout.take().expect("UNWRAP: stdout is piped"),
            child.stderr.take().expect("UNWRAP: stderr is piped"),
        );
        self.log.plugind(format!("started instance {} (pid {pid}): {}", inst.id, self.spec.plan.argv.join(" ")));
        let stderr_done = tokio::spawn(read_stderr(stderr, self.log.clone(), self.chatter.clone(), inst.clone()));
        if crate::mcp::is_mcp(&self.spec.manifest) {
            // An MCP server: the instance speaks plugind's protocol to an adapter (crate::mcp).
            let ctx = crate::mcp::adapter::AdapterContext {
                plugin: self.spec.plugin.clone(),
                log: self.log.clone(),
                long_lines: self.long_lines.clone(),
                chatter: self.chatter.clone(),
            };
            let (stdin, stdout) = crate::mcp::adapter::adapt(stdin, stdout, ctx);
            spawn_writer(stdin, out_rx);
            self.run(child, stdout, stop_rx, cgroup, stderr_done).await;
        } else {
            spawn_writer(stdin, out_rx);
            self.run(child, stdout, stop_rx, cgroup, stderr_done).await;
        }
    }

    async fn run<R: tokio::io::AsyncRead + Unpin + Growable>(
        self,
        mut child: tokio::process::Child,
        stdout: R,
        mut stop_rx: mpsc::Receiver<StopKind>,
        cgroup: Option<Cgroup>,
        mut stderr_done: tokio::task::JoinHandle<()>,
    ) {
        let inst = self.instance.clone();
        let mut frames =
            FramedRead::new(stdout, FrameDecoder::new(DEFAULT_MAX_FRAME).taking_turns(LONG_LINE).reporting_drops());
        // The plugin's turn at a long line: waited for while `turn_wait` is set (stdout unread
        // meanwhile), held while the line arrives, let go as soon as it has ended.
        let mut turn_wait: Option<BoxFut<Turn>> = None;
        let mut turn: Option<Turn> = None;
        // While the turn is held: how much of the line had come at the last look, and when to
        // look again (a line that stopped coming while others wait is dropped).
        let mut turn_check: Option<(usize, Instant)> = None;
        // Set while the plugin is over its rate of chatter: stdout is read again at the instant.
        let mut chatter_until: Option<Instant> = None;
        let mut steps: FuturesUnordered<BoxFut<Step>> = FuturesUnordered::new();
        steps.push(Box::pin(handshake(inst.clone(), self.spec.clone(), self.log.clone(), self.catalog.clone())));
        let mut ready = false;
        // Whether the handshake's error already has the instance's exit hints.
        let mut exit_hinted = false;
        let mut ping = tokio::time::interval_at(first_ping(self.spec.ping_every), self.spec.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping_out = false;
        let mut misses = 0u32;
        let mut stdout_open = true;
        // Whether stdout's pipe grew for a large line (`crate::transport::pipe`).
        let mut stdout_grown = false;
        // Whether the plugin wrote a line on stdout yet (a handshake that timed out with none
        // gets a hint about buffering).
        let mut stdout_seen = false;
        let mut stop: Option<StopPhase> = None;
        let mut reason: Option<String> = None;
        let mut requested = false;
        // Set when stdout closed while the process still runs: kill it if it does not exit soon.
        let mut eof_kill_at: Option<Instant> = None;
        // Set while retiring: the instant by which the calls in flight must have finished.
        let mut drain_until: Option<Instant> = None;
        // A fork refused at `pids.max` stops the instance like any other limit. The kernel
        // refuses the fork and kills nothing; on cgroup v1 it does not even signal the change of
        // `pids.events` to inotify, so the count is read every `PIDS_POLL`, for the instances
        // whose manifest sets `processes` only.
        let mut pids_poll = cgroup.as_ref().and_then(Cgroup::pids_refused).map(|_| tokio::time::interval(PIDS_POLL));
        let status = loop {
            if let Some(until) = drain_until {
                // Done draining when idle (re-checked after a short grace for calls routed just
                // before the switch), or when the longest possible call would be over.
                if (inst.peer.busy() == 0 && inst.load() == 0) || Instant::now() >= until {
                    drain_until = None;
                    let _ = inst.stop_tx.try_send(StopKind::Graceful);
                }
            }
            if turn.is_none() {
                turn_check = None;
            } else if let Some((seen, _)) = turn_check.filter(|(_, at)| *at <= Instant::now()) {
                let now = frames.read_buffer().len();
                // Stalled: nothing more came, and nothing waits in the pipe (this task may not
                // have run for a while on a busy machine: then the rest is there, unread).
                if now.saturating_sub(seen) < TURN_MIN_PROGRESS
                    && self.long_lines.is_awaited()
                    && frames.get_ref().unread() == Some(0)
                {
                    let (len, head) = FrameDecoder::abandon_line_in(&mut frames);
                    (turn, turn_check) = (None, None);
                    self.chatter.charge(1, len);
                    if let Some(fut) = self.on_stalled_line(len, &head) {
                        steps.push(fut);
                    }
                } else {
                    // From now, not from when it was due: after a spell in which this task did not
                    // run, a check due long ago must not come round again at once and find no
                    // progress in no time.
                    turn_check = Some((now, Instant::now() + TURN_STALL));
                }
            }
            if chatter_until.is_some_and(|t| t <= Instant::now()) {
                // Its other instances may have spent the rate meanwhile.
                chatter_until = self.chatter.wait().map(|d| Instant::now() + d);
            }
            let drain_tick = drain_until.map(|_| Instant::now() + Duration::from_millis(25));
            let timer = match stop {
                Some(StopPhase::Teardown(t) | StopPhase::StdinClosed(t) | StopPhase::Terminated(t)) => Some(t),
                _ => None,
            };
            let timer = [timer, eof_kill_at, drain_tick, turn_check.map(|(_, at)| at), chatter_until]
                .into_iter()
                .flatten()
                .min();
            let gated = self.gated();
            tokio::select! {
                status = child.wait() => break status,
                frame = frames.next(), if stdout_open && !gated && turn_wait.is_none() && chatter_until.is_none() => {
                    // The frames already read are handled in a row (up to `FRAMES_IN_A_ROW`),
                    // not one per round of this `select!`, which polls every other branch again
                    // (the child's exit, the stop channel, the timers) for each.
                    let mut frame = frame;
                    for n in 1.. {
                        if turn.is_some() && !frames.decoder().has_turn() {
                            turn = None; // its line has ended: before that line is handled
                        }
                        match frame {
                            Some(Ok(Frame::LongLine)) => {
                                turn_wait = Some(Box::pin(self.long_lines.wait()));
                                break;
                            }
                            Some(Ok(Frame::Line(line))) => {
                                stdout_seen = true;
                                if !stdout_grown && line.len() >= WRITE_DIRECT {
                                    frames.get_ref().grow();
                                    stdout_grown = true;
                                }
                                if let Some(fut) = self.on_line(&line).await {
                                    steps.push(fut);
                                }
                            }
                            Some(Ok(Frame::Oversized { len, head })) => {
                                self.chatter.charge(1, len);
                                if let Some(fut) = self.on_oversized(len, &head) {
                                    steps.push(fut);
                                }
                            }
                            Some(Ok(Frame::Dropped(len))) => self.chatter.charge(0, len),
                            Some(Err(_)) | None => {
                                stdout_open = false;
                                inst.peer.close();
                                if stop.is_none() {
                                    // A plugin without stdout cannot answer: give it a moment to exit by itself.
                                    eof_kill_at = Some(Instant::now() + Duration::from_millis(500));
                                }
                                break;
                            }
                        }
                        // Each frame counts against the task's budget of work per turn, as a
                        // read does: frames decoded from what one read brought never touch the
                        // pipe, and a plugin writing short lines at full speed (`yes`) kept
                        // this task from yielding for seconds, stalling every task queued
                        // behind it on its thread.
                        tokio::task::consume_budget().await;
                        if let Some((wait, said)) = self.chatter.pause("stdout") {
                            chatter_until = Some(Instant::now() + wait);
                            if let Some(said) = said {
                                self.log.warn(said);
                            }
                            break;
                        }
                        if n == FRAMES_IN_A_ROW || self.gated() {
                            break;
                        }
                        // With this task's own waker: a `Pending` leaves it registered for stdout.
                        match std::future::poll_fn(|cx| std::task::Poll::Ready(frames.poll_next_unpin(cx))).await {
                            std::task::Poll::Ready(next) => frame = next,
                            std::task::Poll::Pending => break,
                        }
                    }
                }
                // The plugin read some of its answers: its stdout is read again.
                () = inst.peer.outbox_room(), if gated => {}
                // The plugin's turn at a long line: this instance's is read on.
                t = async { turn_wait.as_mut().expect("UNWRAP: guarded").await }, if turn_wait.is_some() => {
                    turn_wait = None;
                    frames.decoder_mut().take_turn();
                    turn = Some(t);
                    turn_check = Some((frames.read_buffer().len(), Instant::now() + TURN_STALL));
                }
                Some(step) = steps.next(), if !steps.is_empty() => match step {
                    Step::Handshake(mut result) => {
                        self.vet_handshake(&mut result);
                        if let Err(e) = &mut result {
                            // The commonest first mistakes: a message written without its `\n`,
                            // and one left in a block-buffered stdout.
                            let pending = frames.read_buffer();
                            if !pending.iter().all(u8::is_ascii_whitespace) {
                                e.push_str(&format!(
                                    "; {} bytes on its stdout were never ended by a newline (each message is one line ending in \\n)",
                                    pending.len()
                                ));
                            } else if !stdout_seen && e.contains("expired") {
                                e.push_str(
                                    "; it wrote nothing on its stdout: if it did answer, the answer is still in its stdout buffer \
                                     (flush after every message: stdout to a pipe is block-buffered in most languages)",
                                );
                            }
                            if e.contains("exited during") {
                                // Its last words first: stderr ends when it has exited.
                                let _ = tokio::time::timeout(Duration::from_millis(300), &mut stderr_done).await;
                                e.push_str(&inst.exit_hints(&self.spec.manifest, true));
                                exit_hinted = true;
                            }
                        }
                        ready = result.is_ok();
                        if let Err(e) = &result {
                            reason = Some(e.clone());
                            stop = Some(StopPhase::Terminated(Instant::now()));
                            self.kill_group(Signal::SIGKILL);
                        }
                        let _ = self.events.send(InstanceEvent::Ready { id: inst.id, result });
                    }
                    Step::Ping(r) => {
                        ping_out = false;
                        match r {
                            // Its answer may be behind a long line waiting for the plugin's turn
                            // (stdout unread meanwhile): not this instance's fault.
                            Err(CallError::Timeout(_)) if turn_wait.is_some() => {
                                self.log.plugind("missed a health ping while waiting for the plugin's turn at long lines; not counted".to_owned());
                            }
                            Err(CallError::Timeout(_)) => {
                                misses += 1;
                                self.log.plugind(format!("missed health ping {misses}/{PING_MISSES}"));
                                if misses >= PING_MISSES && stop.is_none() {
                                    reason = Some(format!("missed {PING_MISSES} health pings in a row"));
                                    stop = Some(StopPhase::Killed);
                                    self.kill_group(Signal::SIGKILL);
                                }
                            }
                            _ => misses = 0,
                        }
                    }
                    Step::TeardownAnswered => {
                        if let Some(StopPhase::Teardown(_)) = stop {
                            inst.peer.close_output();
                            stop = Some(StopPhase::StdinClosed(Instant::now() + STOP_STEP));
                        }
                    }
                    Step::Served => {}
                },
                _ = ping.tick(), if ready && !ping_out && stop.is_none() => {
                    // The kernel holds the instance's limits for its processes together, but
                    // stops none of them: a child killed at `memory_mb`, or CPU time past
                    // `cpu_seconds` spent by several, leaves the main process running. Read
                    // with the health ping: a few counters per instance every ping interval.
                    if let Some((cg, why)) = cgroup.as_ref().and_then(|cg| self.over_limit(cg).map(|why| (cg, why))) {
                        self.log.plugind(format!("{why}: stopping it"));
                        stop = Some(StopPhase::Killed);
                        self.kill_group(Signal::SIGKILL);
                        cg.kill_all();
                        continue;
                    }
                    ping_out = true;
                    let peer = inst.peer.clone();
                    let d = Deadline::new(Duration::from_millis(self.spec.manifest.timeout_ms), Duration::from_millis(self.spec.manifest.timeout_ms));
                    steps.push(Box::pin(async move {
                        Step::Ping(peer.call(methods::PING, &serde_json::json!({}), d).await.map(drop).or_else(|e| match e {
                            CallError::Rpc(_) => Ok(()), // any answer proves liveness
                            other => Err(other),
                        }))
                    }));
                }
                _ = async { pids_poll.as_mut().expect("UNWRAP: guarded").tick().await }, if pids_poll.is_some() && stop.is_none() => {
                    if let Some(cg) = cgroup.as_ref().filter(|c| c.pids_refused().is_some_and(|n| n > 0)) {
                        self.log.plugind("a fork was refused at its processes limit: stopping it".to_owned());
                        stop = Some(StopPhase::Killed);
                        self.kill_group(Signal::SIGKILL);
                        cg.kill_all();
                    }
                }
                kind = stop_rx.recv() => match kind {
                    Some(StopKind::Drain) if stop.is_none() && drain_until.is_none() => {
                        requested = true;
                        drain_until = Some(Instant::now() + Duration::from_millis(self.spec.manifest.max_timeout_ms));
                    }
                    Some(StopKind::Drain) => {}
                    Some(StopKind::Kill) => {
                        requested = true;
                        stop = Some(StopPhase::Killed);
                        self.kill_group(Signal::SIGKILL);
                    }
                    Some(StopKind::Graceful) if stop.is_none() => {
                        requested = true;
                        if ready && stdout_open {
                            // Nobody will wait for the work in flight: each call ends now with
                            // -32002 "stopping" and the plugin gets `$/cancel` for it, so it
                            // can answer `teardown` at once rather than after its work.
                            let cancelled = inst.peer.cancel_work();
                            if cancelled > 0 {
                                self.log.plugind(format!("stopping: cancelled {cancelled} call(s) in flight"));
                            }
                            let peer = inst.peer.clone();
                            let d = Deadline::new(STOP_STEP, STOP_STEP);
                            steps.push(Box::pin(async move {
                                let _ = peer.call(methods::TEARDOWN, &serde_json::json!({}), d).await;
                                Step::TeardownAnswered
                            }));
                            stop = Some(StopPhase::Teardown(Instant::now() + STOP_STEP));
                        } else {
                            inst.peer.close_output();
                            stop = Some(StopPhase::StdinClosed(Instant::now() + STOP_STEP));
                        }
                    }
                    Some(StopKind::Graceful) => {}
                    None => {}
                },
                _ = crate::time::sleep_until_opt(timer) => match stop {
                    _ if eof_kill_at.is_some_and(|t| t <= Instant::now()) => {
                        eof_kill_at = None;
                        reason.get_or_insert_with(|| "closed its stdout but kept running".to_owned());
                        self.kill_group(Signal::SIGKILL);
                        stop = Some(StopPhase::Killed);
                    }
                    Some(StopPhase::Teardown(t)) if t <= Instant::now() => {
                        inst.peer.close_output();
                        stop = Some(StopPhase::StdinClosed(Instant::now() + STOP_STEP));
                    }
                    Some(StopPhase::StdinClosed(t)) if t <= Instant::now() => {
                        self.kill_group(Signal::SIGTERM);
                        stop = Some(StopPhase::Terminated(Instant::now() + STOP_STEP));
                    }
                    Some(StopPhase::Terminated(t)) if t <= Instant::now() => {
                        self.kill_group(Signal::SIGKILL);
                        stop = Some(StopPhase::Killed);
                    }
                    _ => {}
                },
            }
        };
        // Leftover members of the process group (children of the plugin) go with it.
        self.kill_group(Signal::SIGKILL);
        if stdout_open {
            // What it wrote last may still be in the pipe when its exit is seen first: an answer
            // written just before exiting (with or without its `\n`) was lost, the call ending
            // -32003 (audit 21). Read to the end, briefly (a process outside the group may hold
            // the pipe open).
            let rest = async {
                while let Some(Ok(frame)) = frames.next().await {
                    match frame {
                        Frame::Line(line) => drop(self.on_line(&line).await),
                        Frame::LongLine => frames.decoder_mut().take_turn(),
                        _ => {}
                    }
                }
            };
            let _ = tokio::time::timeout(LAST_WORDS, rest).await;
        }
        // Every call still in flight ends now with -32003; nothing waits for a dead process.
        inst.peer.close();
        let mut exit = ExitReport { reason, requested, ..ExitReport::default() };
        match status {
            Ok(s) => {
                exit.code = s.code();
                exit.signal = s.signal();
            }
            Err(e) => exit.reason = Some(format!("wait failed: {e}")),
        }
        // Children that left the process group die with the cgroup; then stderr reaches EOF, so
        // its last lines (the plugin's dying words) are in the log before the exit is reported.
        if let Some(cg) = &cgroup {
            cg.kill_all();
        }
        // After the kills, so that no process of the plugin is left to move the tree under the
        // remover (where there is no cgroup, one that left the process group may be: the remover
        // does not trust the tree to stay put).
        crate::tmpdirs::discard(&self.spec.tmp_dir);
        if !stderr_done.is_finished() {
            let _ = tokio::time::timeout(Duration::from_millis(500), stderr_done).await;
        }
        let hint =
            if exit.requested || exit_hinted { String::new() } else { inst.exit_hints(&self.spec.manifest, !ready) };
        if !hint.is_empty() {
            exit.reason = Some(match exit.reason.take() {
                Some(r) => format!("{r}{hint}"),
                None => hint.trim_start_matches("; ").to_owned(),
            });
        }
        // Which limit ended it: from the kernel's accounting only, never from what it printed.
        if !exit.requested {
            let facts = sandbox::ExitFacts {
                code: exit.code,
                signal: exit.signal,
                cpu_limit_s: self.spec.manifest.limits.cpu_seconds,
                cgroup: cgroup.as_ref().map(Cgroup::stats),
            };
            exit.limit = sandbox::classify(&facts).map(sandbox::Limit::as_str);
        }
        drop(cgroup); // removes it
        self.log.plugind(format!("instance {} (pid {}) {}", inst.id, inst.pid(), exit.describe()));
        let _ = self.events.send(InstanceEvent::Exited { id: inst.id, exit });
    }

    /// Bounds what the handshake brought before the actor keeps it: the `register` answer
    /// (caps, refused services warned about) or the plugin's error text (for `last_error`).
    fn vet_handshake(&self, result: &mut Result<Vec<ServiceDecl>, String>) {
        match result {
            Ok(services) => crate::registry::rules::vet_register(&self.spec.manifest, services, &self.log),
            Err(e) => {
                crate::caps::truncate(e, crate::caps::ERROR_TEXT_BYTES);
            }
        }
    }

    /// Which of the manifest's limits the instance's processes went over together, as its
    /// cgroup counts them: one of them killed by the OOM killer, or their CPU time past
    /// `cpu_seconds`.
    fn over_limit(&self, cg: &Cgroup) -> Option<String> {
        let limits = &self.spec.manifest.limits;
        let stats = cg.stats();
        if stats.oom_kills > 0 {
            return Some(format!(
                "a process of the instance was killed at its memory limit (limits.memory_mb, {} MiB)",
                limits.memory_mb
            ));
        }
        match (limits.cpu_seconds, stats.cpu_usec) {
            (Some(limit), Some(usec)) if usec >= limit.saturating_mul(1_000_000) => Some(format!(
                "its processes used {:.1} s of CPU together, past limits.cpu_seconds ({limit} s)",
                usec as f64 / 1e6
            )),
            _ => None,
        }
    }

    fn kill_group(&self, sig: Signal) {
        if self.instance.pid() > 0 {
            let _ = killpg(Pid::from_raw(self.instance.pid() as i32), sig);
        }
    }

    /// Handles one stdout line; returns work to run concurrently (a plugin request).
    async fn on_line(&self, line: &bytes::Bytes) -> Option<BoxFut<Step>> {
        match self.instance.peer.accept(line) {
            Incoming::Delivered => None,
            Incoming::Request { id, method, params } => {
                // A request for no method plugind has is answered `-32601`, and is chatter: a
                // loop of them kept 60 % of a core busy.
                let too_long_id = id.get().len() > REQUEST_ID_MAX;
                if too_long_id || !methods::PLUGIN_REQUESTS.contains(&&*method) {
                    self.chatter.charge(1, line.len());
                }
                if too_long_id {
                    // Kept, copied and echoed in the answer, a 15 MiB id cost four times the
                    // request budget (audit 16). Answered `-32600` under a null id, as a request
                    // whose id cannot be used.
                    let e = RpcError::with_data(
                        codes::INVALID_REQUEST,
                        format!("request id of {} bytes refused: at most {REQUEST_ID_MAX}", id.get().len()),
                        serde_json::json!({ "plugin": &*self.spec.plugin }),
                    );
                    self.report_bad_output(codes::INVALID_REQUEST, e.message.clone());
                    let null = RawValue::from_string("null".to_owned()).expect("UNWRAP: null is JSON");
                    return self.refuse(vec![null], e);
                }
                let mut ticket = match self.requests.admit(line.len()) {
                    Ok(ticket) => ticket,
                    Err(exceeded) => return self.refuse(vec![id.to_owned()], self.overloaded(exceeded)),
                };
                let id: Box<RawValue> = id.to_owned();
                let method = method.into_owned();
                let params: Option<Box<RawValue>> = params.map(ToOwned::to_owned);
                let host = self.host.clone();
                let peer = self.instance.peer.clone();
                let caller = Caller {
                    plugin: self.spec.plugin.clone(),
                    manifest: self.spec.manifest.clone(),
                    peer: self.instance.peer.clone(),
                };
                let plugin = self.spec.plugin.clone();
                Some(Box::pin(async move {
                    let reply = host.answer(caller, method, params).await;
                    // An answer that must wait for the plugin to read is held within the budget.
                    let reply = ticket.answer(&peer, reply, |len, max| RpcError {
                        data: Some(serde_json::json!({ "plugin": &*plugin })),
                        ..unread_answer(&format!("plugin {plugin}"), len, max)
                    });
                    peer.respond_with(&id, reply).await;
                    drop(ticket);
                    Step::Served
                }))
            }
            Incoming::Notification { method, params } => {
                self.chatter.charge(1, line.len());
                if line.len() > NOTIFICATION_MAX && method == methods::LOG {
                    // Its message is kept (cut to 64 KiB, as any), its `fields` not even read.
                    self.on_huge_log(params);
                    return None;
                }
                if line.len() > NOTIFICATION_MAX {
                    // Not parsed: params are read into a tree (`fields`, `$/progress`), about 36
                    // times the text for an array of small numbers: 500 MB for a 14 MiB line.
                    self.report_bad_output(
                        codes::INVALID_REQUEST,
                        format!(
                            "`{method}` notification of {} bytes ignored: over {} KiB",
                            line.len(),
                            NOTIFICATION_MAX >> 10
                        ),
                    );
                    return None;
                }
                self.on_notification(&method, params);
                None
            }
            Incoming::UnknownResponse(id) => {
                self.chatter.charge(1, line.len());
                self.report_bad_output(codes::INVALID_REQUEST, format!("response with unknown id {id}; ignored"));
                None
            }
            Incoming::Invalid(e) if e.code() == codes::PARSE_ERROR => {
                self.chatter.charge(1, line.len());
                self.instance.look_at_words(line);
                self.log.about_output(LogLevel::Warn, || {
                    let text = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                    // A lone bracket opens (or closes) JSON written over several lines.
                    let hint = if matches!(text.trim(), "{" | "}" | "[" | "]" | "}," | "],") {
                        "pretty-printed JSON? each message must be one line: write it without indentation \
                         (Python `json.dumps(m)`, Node `JSON.stringify(m)`)"
                    } else {
                        "stdout is the protocol channel; write logs to stderr or send a `log` notification"
                    };
                    format!("non-JSON line on stdout skipped: {text:?} — hint: {hint}")
                });
                None
            }
            Incoming::Invalid(e) => {
                self.chatter.charge(1, line.len());
                // A malformed answer ends no call (the right one may follow); the report says
                // which call it was meant for, which goes on waiting.
                let meant_for = plugind_protocol::jsonrpc::Message::answer_id_of(line)
                    .filter(|n| self.instance.peer.awaits(*n))
                    .map(|n| format!(" (call {n} goes on waiting for a valid answer)"))
                    .unwrap_or_default();
                self.report_bad_output(codes::INVALID_REQUEST, format!("stdout line is {e}; ignored{meant_for}"));
                // A request it could not make sense of is still answered, under its own id (each
                // one of a batch): a plugin waiting for that answer would wait forever.
                let ids: Vec<Box<RawValue>> = plugind_protocol::jsonrpc::Message::request_ids_of(line)
                    .into_iter()
                    .map(ToOwned::to_owned)
                    .collect();
                if ids.is_empty() {
                    return None;
                }
                let error = RpcError::with_data(
                    codes::INVALID_REQUEST,
                    e.to_string(),
                    serde_json::json!({ "plugin": &*self.spec.plugin }),
                );
                self.refuse(ids, error)
            }
        }
    }

    /// A `log` notification over [`NOTIFICATION_MAX`]: its level, message and trace id are
    /// read, its `fields` skipped unread (a tree of them could be 36 times their text).
    fn on_huge_log(&self, params: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct Lean<'a> {
            #[serde(borrow, default)]
            level: Option<&'a RawValue>,
            message: String,
            #[serde(default)]
            trace_id: Option<String>,
        }
        let lean = params.map(|p| serde_json::from_str::<Lean>(p.get()));
        let Some(Ok(lean)) = lean else {
            self.report_bad_output(codes::INVALID_PARAMS, "bad `log` params: expected {level, message}".to_owned());
            return;
        };
        // The level as the usual params read it (leniently), from its own short text.
        let level = lean.level.map_or("\"info\"", RawValue::get);
        let Ok(mut p) = serde_json::from_str::<LogParams>(&format!(r#"{{"level":{level},"message":""}}"#)) else {
            return;
        };
        p.message = lean.message;
        p.trace_id = lean.trace_id.or_else(|| self.instance.peer.current_trace_id());
        self.log.notification(p);
    }

    fn on_notification(&self, method: &str, params: Option<&RawValue>) {
        let params = params.map_or("null", RawValue::get);
        match method {
            methods::LOG => match serde_json::from_str::<LogParams>(params) {
                Ok(mut p) => {
                    // The call it was logged for: named by the plugin, else the only one in flight.
                    if p.trace_id.is_none() {
                        p.trace_id = self.instance.peer.current_trace_id();
                    }
                    self.log.notification(p)
                }
                Err(e) => self.report_bad_output(codes::INVALID_PARAMS, format!("bad `log` params: {e}")),
            },
            methods::PROGRESS => {
                let p = serde_json::from_str::<serde_json::Value>(params).unwrap_or_default();
                let fits = p.get("id").is_some_and(serde_json::Value::is_u64)
                    && p.get("message").is_none_or(|m| m.is_string() || m.is_null())
                    && ["progress", "total"].iter().all(|k| p.get(k).is_none_or(|v| v.is_number() || v.is_null()));
                if !fits {
                    let shown: String = params.chars().take(200).collect();
                    self.report_bad_output(
                        codes::INVALID_PARAMS,
                        format!("bad `$/progress` params: expected {{id: the id of plugind's call, progress?: number, total?: number, message?: string}}, found {shown}"),
                    );
                }
                if let Some(id) = p.get("id").and_then(serde_json::Value::as_u64) {
                    self.instance.peer.progress(id);
                }
                if let Some(message) = p.get("message").and_then(serde_json::Value::as_str) {
                    let message = crate::caps::progress_message(message, &self.log);
                    tracing::debug!(plugin = %self.spec.plugin, "progress: {message}");
                }
            }
            methods::METRICS_EMIT => self.host.metrics_emit(&self.spec.plugin, params),
            other => tracing::debug!(plugin = %self.spec.plugin, method = other, "ignored notification"),
        }
    }

    /// A stdout line over the frame limit, discarded: reported, and what its head tells is
    /// ended at once, not at a deadline. An answer to one of plugind's calls fails that call
    /// with `-32603`; a request is answered `-32600` under its id (returned: work to run).
    fn on_oversized(&self, len: usize, head: &[u8]) -> Option<BoxFut<Step>> {
        let why = format!(
            "is over the frame limit of {DEFAULT_MAX_FRAME} bytes ({len} bytes read when it was found too long)"
        );
        self.on_dropped_line(&why, head)
    }

    /// A long stdout line that stopped coming while it held the plugin's turn and another
    /// instance waited for it: dropped, reported like a line over the limit.
    fn on_stalled_line(&self, len: usize, head: &[u8]) -> Option<BoxFut<Step>> {
        let why = format!(
            "stalled mid-way ({len} bytes of it read, less than {} KiB more in {} s) while holding the plugin's turn at long lines, which another instance waited for",
            TURN_MIN_PROGRESS >> 10,
            TURN_STALL.as_secs()
        );
        self.on_dropped_line(&why, head)
    }

    /// A stdout line dropped unread (`why` it was: "is over…"): reported, and what its head
    /// tells is ended at once (the call its answer was for, or its request, answered under its
    /// id).
    fn on_dropped_line(&self, why: &str, head: &[u8]) -> Option<BoxFut<Step>> {
        let line = format!("stdout line {why}; discarded");
        self.report_bad_output(codes::INVALID_REQUEST, line.clone());
        match plugind_protocol::jsonrpc::Message::oversized_head(head)? {
            plugind_protocol::jsonrpc::Oversized::Answer(n) => {
                let error = RpcError::new(codes::INTERNAL_ERROR, format!("the answer to this call {why}; discarded"));
                self.instance.peer.fail_call(n, error);
                None
            }
            plugind_protocol::jsonrpc::Oversized::Request(id) => {
                let error = RpcError::with_data(
                    codes::INVALID_REQUEST,
                    format!("this request {why}; discarded"),
                    serde_json::json!({ "plugin": &*self.spec.plugin }),
                );
                self.refuse(vec![id.to_owned()], error)
            }
        }
    }

    /// Whether the plugin's stdout is left unread for now: its requests in flight have spent
    /// their budget and it is not reading their answers (its stdin is full). Anything more read
    /// from it would have to be held, each refusal included, for as long as it does not read.
    /// Its requests wait in its own pipe instead; answers it owes plugind wait there too, so a
    /// plugin that stays so misses its health pings and is restarted.
    fn gated(&self) -> bool {
        self.requests.is_spent() && self.instance.peer.outbox_full()
    }

    /// The answer to a request refused past the plugin's request budget (reported in its log,
    /// throttled: a flood refused is a flood of these).
    fn overloaded(&self, exceeded: Exceeded) -> RpcError {
        let message = format!(
            "plugin {}: {exceeded} for one plugin's requests to plugind: wait for answers (and read them) before sending more",
            self.spec.plugin
        );
        let mut refusals = self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        refusals.hold();
        let n = refusals.due(std::time::Instant::now());
        if n > 0 {
            let deaf = if self.instance.peer.outbox_full() {
                "; it does not read their answers (its stdin is full), so its stdout is not read until it does"
            } else {
                ""
            };
            self.log.warn(format!("{n} request(s) to plugind refused `-32006`: {exceeded}{deaf}"));
        }
        RpcError::with_data(codes::OVERLOADED, message, serde_json::json!({ "plugin": &*self.spec.plugin }))
    }

    /// Answers requests `ids` with `error`: at once while the plugin's stdin has room; the rest
    /// as a step that waits for room, held within the request budget (past it, the stdout is
    /// not read until there is room again, so at most one such step is made meanwhile).
    fn refuse(&self, ids: Vec<Box<RawValue>>, error: RpcError) -> Option<BoxFut<Step>> {
        let peer = self.instance.peer.clone();
        let left: Vec<Box<RawValue>> = ids.into_iter().filter(|id| !peer.respond_now(id, &error)).collect();
        if left.is_empty() || peer.is_closed() {
            return None;
        }
        let ticket: Option<Ticket> = self.requests.admit(left.iter().map(|id| id.get().len() + 128).sum()).ok();
        Some(Box::pin(async move {
            for id in &left {
                peer.respond(id, Err(&error)).await;
            }
            drop(ticket);
            Step::Served
        }))
    }

    /// A bad message on the plugin's stdout: warned in its log and told to the plugin with
    /// `onError`, both rate-limited (a plugin may write bad lines at full speed).
    fn report_bad_output(&self, code: i64, message: String) {
        if !self.log.about_output(LogLevel::Warn, || message.clone()) {
            return;
        }
        self.instance.peer.notify(
            methods::ON_ERROR,
            &serde_json::json!({ "code": code, "message": message, "data": { "plugin": &*self.spec.plugin } }),
        );
    }
}

/// `init` then `register`, both within `startup_timeout_ms` of `spawned` (not the per-call
/// `timeout_ms`: a JVM or a big interpreter may take seconds just to get to `init`).
async fn handshake(
    inst: Arc<Instance>,
    spec: InstanceSpec,
    log: Arc<PluginLog>,
    shared: catalog::SharedCatalog,
) -> Step {
    let (peer, spawned) = (&inst.peer, inst.started);
    let m = &spec.manifest;
    let until = spawned + Duration::from_millis(m.startup_timeout_ms);
    let d = || {
        let left = until.saturating_duration_since(Instant::now());
        Deadline::new(left, left)
    };
    let params = InitParams {
        protocol_version: version::PROTOCOL_VERSION,
        name: m.name.clone(),
        version: m.version.to_string(),
        config: spec.config.clone(),
        data_dir: spec.data_dir.as_ref().map(|p| p.to_string_lossy().into_owned()),
        supervisor: SupervisorInfo { name: "plugind".into(), version: crate::VERSION.into() },
    };
    let describe = |what: &str, e: CallError| match e {
        CallError::Timeout(_) => {
            format!("startup_timeout_ms ({} ms) expired before {what} was answered", m.startup_timeout_ms)
        }
        CallError::Closed => format!("exited during {what}"),
        CallError::Stopping => format!("stopped during {what}"),
        // Its `data` too: where a plugin says which config field is wrong (cut with the rest,
        // `vet_handshake`).
        CallError::Rpc(e) => match &e.data {
            Some(data) => format!("{what} failed: {e}; data: {data}"),
            None => format!("{what} failed: {e}"),
        },
    };
    let init = match peer.call(methods::INIT, &params, d()).await {
        Ok(raw) => raw,
        Err(e) => return Step::Handshake(Err(describe("init", e))),
    };
    let init: InitResult = serde_json::from_str(init.get()).unwrap_or_default();
    if !version::is_compatible(init.protocol_version) {
        return Step::Handshake(Err(format!(
            "init: plugin speaks protocol_version {}, plugind speaks {}",
            init.protocol_version.map_or_else(|| "(none)".to_owned(), |v| v.to_string()),
            version::PROTOCOL_VERSION
        )));
    }
    let reg = match peer.call(methods::REGISTER, &serde_json::json!({}), d()).await {
        Ok(raw) => raw,
        Err(e) => return Step::Handshake(Err(describe("register", e))),
    };
    match serde_json::from_str::<Option<RegisterResult>>(reg.get()) {
        Ok(r) => {
            // In place before the actor hears the instance is ready, so its first call sees it.
            // Built on a blocking thread: compiling up to 128 patterns takes a while.
            let m = m.clone();
            let built = tokio::task::spawn_blocking(move || shared.get_or_build(&m, &reg, &log)).await;
            match built {
                Ok(catalog) => {
                    let _ = inst.catalog.set(catalog);
                }
                Err(e) => return Step::Handshake(Err(format!("register: building the method catalog failed: {e}"))),
            }
            Step::Handshake(Ok(r.unwrap_or_default().services))
        }
        Err(e) => Step::Handshake(Err(format!("register: result is not {{\"services\": [...]}}: {e}"))),
    }
}

/// What its last lines say when a runtime could not get the memory it asked for at start: the JVM
/// (`os::commit_memory … error='Not enough space'`, "insufficient memory"), V8 ("heap out of
/// memory"), Python (`MemoryError`), C++ (`bad_alloc`), libc (`Cannot allocate memory`).
const OUT_OF_MEMORY: &[&str] = &[
    "cannot allocate memory",
    "not enough space",
    "insufficient memory",
    "out of memory",
    "memoryerror",
    "bad_alloc",
    "failed to reserve",
    "could not reserve enough space",
];

/// Whether a line (lowercased) says a fork was refused (seccomp's `EPERM` without `process`):
/// bash (`fork: Operation not permitted`), dash (`Cannot fork`), Perl (`Can't fork`), Node
/// (`Error: spawn /bin/sh EPERM`).
fn says_fork_refused(text: &str) -> bool {
    ["fork: operation not permitted", "cannot fork", "can't fork"].iter().any(|p| text.contains(p))
        || (text.contains("spawn") && text.contains("eperm"))
}

/// A hint for a plugin that exited during its handshake saying it was out of memory: runtimes
/// size their heaps from the host's RAM, since they cannot see `memory_mb` (it is `RLIMIT_DATA`
/// and a cgroup hidden from the plugin), so a JVM under 256 MiB fails at start.
pub fn memory_hint(said_out_of_memory: bool, memory_mb: u64) -> Option<String> {
    if !said_out_of_memory {
        return None;
    }
    // A quarter: the rest of the limit goes to thread stacks (counted in full), a JVM's
    // metaspace and code cache, V8's own reservations.
    let heap = (memory_mb / 4).max(16);
    Some(format!(
        "; it said it ran out of memory at start: limits.memory_mb ({memory_mb} MiB) is enforced on it, but runtimes cannot see it and size their \
         heap from the host's RAM: cap the heap well under the limit in the manifest's command (e.g. java -Xmx{heap}m -XX:+UseSerialGC \
         -Xss512k, node --max-old-space-size={heap}) or raise memory_mb"
    ))
}

/// Turns the child's stderr into log lines of the plugin. Its lines count as the plugin's
/// chatter (`crate::transport::chatter`): the log keeps 200 a second, but reading and splitting
/// a flood of them kept 80 % of a core of plugind busy, so past the rate stderr is left unread
/// for a while too.
async fn read_stderr(stderr: tokio::process::ChildStderr, log: Arc<PluginLog>, chatter: Chatter, inst: Arc<Instance>) {
    const MAX_LINE: usize = 16 * 1024;
    // A small first buffer (it grows with the lines): most plugins write little to stderr, and
    // 1000 idle plugins should not hold 8 MiB of read buffers for it.
    let mut frames = FramedRead::with_capacity(stderr, FrameDecoder::new(MAX_LINE).reporting_drops(), 512);
    while let Some(Ok(frame)) = frames.next().await {
        match frame {
            Frame::Line(l) => {
                chatter.charge(1, l.len());
                inst.look_at_words(&l);
                log.stderr(String::from_utf8_lossy(&l).into_owned());
            }
            Frame::Oversized { len, .. } => {
                chatter.charge(1, len);
                // Reported when found too long, often before its end (the rest is dropped as it
                // comes): at least this long.
                log.stderr(format!("[stderr line of at least {len} bytes dropped: over {MAX_LINE} bytes]"));
            }
            Frame::Dropped(len) => chatter.charge(0, len),
            // Not taking turns (its lines are far shorter): never yielded.
            Frame::LongLine => frames.decoder_mut().take_turn(),
        }
        if let Some((wait, said)) = chatter.pause("stderr") {
            if let Some(said) = said {
                log.warn(said);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Maps a failed call to an instance onto the error a caller sees (docs/protocol.md).
pub fn call_error(plugin: &str, timeout: Duration, e: CallError) -> RpcError {
    match e {
        CallError::Rpc(e) => naming_plugin(e, plugin),
        CallError::Timeout(_) => RpcError::with_data(
            codes::DEADLINE_EXCEEDED,
            format!("deadline exceeded: plugin {plugin} did not answer within {} ms", timeout.as_millis()),
            serde_json::json!({ "plugin": plugin, "timeout_ms": timeout.as_millis() as u64 }),
        ),
        CallError::Closed => RpcError::with_data(
            codes::PLUGIN_CRASHED,
            // Its exit status is not known yet when its stdout closes; status will have it.
            format!(
                "plugin {plugin} crashed while the call was in flight (its exit and last stderr lines: \
                 `pluginctl status {plugin}`)"
            ),
            serde_json::json!({ "plugin": plugin }),
        ),
        CallError::Stopping => RpcError::with_data(
            codes::PLUGIN_UNAVAILABLE,
            format!("plugin {plugin} is stopping: the call in flight was cancelled"),
            serde_json::json!({ "plugin": plugin, "state": "stopping" }),
        ),
    }
}

/// A plugin's own error as its caller gets it: code, message and data unchanged, except that
/// `data.plugin` names the plugin that answered (every error carries the plugin involved) when
/// `data` is absent or an object without `plugin`. An error passed on from further down a
/// chain keeps the plugin it names; data of another type is left as it is.
fn naming_plugin(mut e: RpcError, plugin: &str) -> RpcError {
    match &mut e.data {
        None => e.data = Some(serde_json::json!({ "plugin": plugin })),
        Some(serde_json::Value::Object(map)) if !map.contains_key("plugin") => {
            map.insert("plugin".into(), plugin.into());
        }
        Some(_) => {}
    }
    e
}

/// Raw `{}` (for results that carry nothing).
pub fn empty_object() -> Box<RawValue> {
    to_raw(&serde_json::json!({}))
}

/// When an instance sends its first health ping: at least one period from now, on a boundary
/// of the period counted from a process-wide epoch. All instances then ping in the same
/// millisecond, so an idle plugind wakes once per period for every plugin together instead of
/// once per plugin (1000 plugins: one wake-up every 10 s rather than a hundred a second).
fn first_ping(every: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let every_ns = every.as_nanos().max(1);
    let earliest = Instant::now() + every;
    let since = earliest.duration_since(epoch).as_nanos();
    let wait = (every_ns - since % every_ns) % every_ns;
    earliest + Duration::from_nanos(u64::try_from(wait).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::Limiter;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn slots_are_taken_and_freed() {
        let l = Arc::new(Limiter::new(2, Duration::ZERO));
        assert!(l.try_take() && l.try_take());
        assert!(!l.try_take());
        l.release();
        assert!(l.try_take());
        assert!(!l.wait(soon(20)).await, "no slot frees: the wait times out");
        // The timed-out waiter left the queue: a release frees the slot for anyone.
        l.release();
        assert!(l.try_take());
    }

    #[tokio::test]
    async fn a_release_goes_to_the_first_waiter_before_newcomers() {
        let l = Arc::new(Limiter::new(1, Duration::ZERO));
        assert!(l.try_take());
        let first = tokio::spawn({
            let l = l.clone();
            async move { l.wait(soon(5_000)).await }
        });
        while l.state.load(std::sync::atomic::Ordering::Relaxed) < super::WAITING {
            tokio::task::yield_now().await;
        }
        l.release();
        assert!(!l.try_take(), "the freed slot is the waiter's");
        assert!(first.await.unwrap());
        l.release();
        assert!(l.try_take());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_conserved_under_timeouts() {
        let l = Arc::new(Limiter::new(3, Duration::ZERO));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                if l.try_take() || l.wait(soon(i % 7)).await {
                    tokio::task::yield_now().await;
                    l.release();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for _ in 0..3 {
            assert!(l.try_take());
        }
        assert!(!l.try_take());
    }

    /// Waits dropped before they end (a caller's `$/cancel` or hang-up) leave the queue: each
    /// stayed counted as waiting, and every later release handed it a slot nobody took, until
    /// no slot was left (audit 21).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_conserved_when_waits_are_dropped() {
        let l = Arc::new(Limiter::new(2, Duration::ZERO));
        // Both slots busy: two waits dropped while queued.
        assert!(l.try_take() && l.try_take());
        for _ in 0..2 {
            let dropped = tokio::time::timeout(Duration::from_millis(1), l.wait(soon(60_000))).await;
            assert!(dropped.is_err(), "the wait was dropped, not ended");
        }
        l.release();
        l.release();
        assert!(l.try_take() && l.try_take(), "both slots are free again");
        l.release();
        l.release();
        // And under load: waits that end, time out or are dropped, at random.
        let mut tasks = Vec::new();
        for i in 0..300u64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let wait = l.wait(soon(i % 5 + 1));
                let got = match i % 3 {
                    0 => tokio::time::timeout(Duration::from_micros(i * 7 % 900), wait).await.unwrap_or(false),
                    _ => l.try_take() || wait.await,
                };
                if got {
                    tokio::task::yield_now().await;
                    l.release();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A slot passed on by a task the drop spawned may still be on its way.
        let until = soon(5_000);
        while l.state.load(std::sync::atomic::Ordering::Relaxed) != 2 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(l.try_take() && l.try_take());
        assert!(!l.try_take());
    }
}
