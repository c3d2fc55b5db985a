//! The shared view of one plugin and the handle to command it.

use crate::logs::PluginLog;
use crate::plugin::instance::Instance;
use crate::plugin::machine::Outcome;
use crate::plugin::state::PluginState;
use plugind_protocol::control::{CallCounts, HistoryEntry, LastExit, PluginStatus, ServiceRef};
use plugind_protocol::manifest::Manifest;
use plugind_protocol::methods::ServiceDecl;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// History entries kept per plugin.
pub const HISTORY_LEN: usize = 50;

/// Where the answer to a [`Command`] goes, and whether its sender wants the plugin's status
/// with it (an operator's command does; the daemon's own, at boot or in a rescan, do not).
#[derive(Debug)]
pub struct Reply {
    tx: oneshot::Sender<Answer>,
    with_status: bool,
}

impl Reply {
    fn channel(with_status: bool) -> (Reply, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx, with_status }, rx)
    }

    /// Answers the command; `status` is taken, now, only if its sender wants it.
    pub fn answer(self, outcome: Outcome, status: impl FnOnce() -> PluginStatus) {
        let status = self.with_status.then(status);
        let _ = self.tx.send(Answer { outcome, status });
    }
}

/// The answer to a [`Command`]: its outcome, and the plugin's status as it was at that moment
/// (taken by the actor as it answers, so a command that follows at once cannot show through:
/// a `stop` answers `stopped` even when a `start` is already under way).
#[derive(Debug)]
pub struct Answer {
    /// Whether the command took effect.
    pub outcome: Outcome,
    /// [`PluginEntry::snapshot`] when the command was answered, if its sender asked for it
    /// ([`PluginEntry::request`]).
    pub status: Option<PluginStatus>,
}

/// What an operator or the daemon asks a plugin actor to do. Each carries a reply, sent exactly
/// once: when the plugin has settled (reached a state it stays in without further action), or
/// when a swap (reload, graceful restart) completes or fails.
#[derive(Debug)]
pub enum Command {
    /// Start if not running.
    Start(Reply),
    /// Stop all instances.
    Stop(Reply),
    /// Restart: by default a new generation beside the old one (like a hot reload, no call
    /// fails); `hard`: stop, then start.
    Restart {
        /// Stop, then start.
        hard: bool,
        /// The answer.
        reply: Reply,
    },
    /// Re-read the manifest and swap in a new generation without failing a call (hot reload).
    Reload(Reply),
    /// The daemon dropped the plugin from its table (its directory went away, or now names
    /// another plugin): stop every instance, answer, and end the actor. Commands sent after it
    /// are answered at once, the plugin removed ([`PluginEntry::is_removed`]).
    Remove(Reply),
}

/// Mutable status, written only by the plugin's actor (and the loader for invalid plugins).
#[derive(Debug)]
pub struct Status {
    /// Lifecycle state.
    pub state: PluginState,
    /// The manifest, if it loads.
    pub manifest: Option<Arc<Manifest>>,
    /// Version string (from the manifest, or salvaged from an invalid one).
    pub version: String,
    /// Restarts performed after crashes.
    pub restarts: u64,
    /// When the plugin last reached `running`.
    pub running_since: Option<Instant>,
    /// Last error, human-readable.
    pub last_error: Option<String>,
    /// How the last instance ended.
    pub last_exit: Option<LastExit>,
    /// Recent lifecycle events.
    pub history: VecDeque<HistoryEntry>,
    /// Services from `register` as answered (within the caps): those the manifest declares add
    /// their methods and capabilities, the others are refused (`registry::rules`).
    pub registered: Vec<ServiceDecl>,
}

/// Counters of calls routed to the plugin.
pub struct CallCounters {
    /// All calls.
    pub total: AtomicU64,
    /// Calls that ended in an error.
    pub failed: AtomicU64,
    /// Calls that hit their deadline.
    pub timed_out: AtomicU64,
    /// This plugin's series of the call latency histogram, looked up once.
    pub latency: prometheus::Histogram,
}

impl CallCounters {
    fn new(plugin: &str) -> Self {
        CallCounters {
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            latency: crate::metrics::CALL_LATENCY.with_label_values(&[plugin]),
        }
    }
}

/// Everything about one plugin that others may read.
pub struct PluginEntry {
    /// The plugin's name.
    pub name: Arc<str>,
    /// Its directory.
    pub dir: PathBuf,
    /// Its log.
    pub log: Arc<PluginLog>,
    /// Status, written by the actor.
    pub status: Mutex<Status>,
    /// Instances that serve calls, replaced whole (copy on write) by the actor.
    routes: RwLock<Arc<[Arc<Instance>]>>,
    /// Every instance whose process may be alive (starting, serving, retiring, stopping): what
    /// must be refused on the control socket and killed at the end, not only what is routed.
    processes: RwLock<Arc<[Arc<Instance>]>>,
    /// Call counters.
    pub counters: CallCounters,
    /// The actor's command queue (`None` for invalid plugins, which have no actor).
    pub(crate) ctl: Option<mpsc::UnboundedSender<Command>>,
    /// Dropped from the daemon's table: whoever still holds the entry learns it is gone.
    removed: std::sync::atomic::AtomicBool,
}

impl PluginEntry {
    /// A new entry.
    pub(crate) fn new(
        name: &str,
        dir: PathBuf,
        log: Arc<PluginLog>,
        status: Status,
        ctl: Option<mpsc::UnboundedSender<Command>>,
    ) -> Self {
        PluginEntry {
            name: name.into(),
            dir,
            log,
            status: Mutex::new(status),
            routes: RwLock::new(Arc::from(Vec::new())),
            processes: RwLock::new(Arc::from(Vec::new())),
            counters: CallCounters::new(name),
            ctl,
            removed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the plugin removed from the daemon's table (before its actor is told).
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the plugin was removed from the daemon's table: a command that reached it
    /// meanwhile is answered as for an unknown plugin.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Locks the status.
    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The instances serving calls now.
    pub fn routes(&self) -> Arc<[Arc<Instance>]> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_routes(&self, routes: Vec<Arc<Instance>>) {
        *self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(routes);
    }

    /// Every instance whose process may be alive, routed or not (starting, retiring, stopping).
    pub fn processes(&self) -> Arc<[Arc<Instance>]> {
        self.processes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_processes(&self, all: Vec<Arc<Instance>>) {
        *self.processes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(all);
    }

    /// The least-loaded instance serving calls.
    pub fn pick(&self) -> Option<Arc<Instance>> {
        let routes = self.routes();
        routes.iter().min_by_key(|i| i.load()).cloned()
    }

    /// The current state's name.
    pub fn state_name(&self) -> &'static str {
        self.status().state.as_str()
    }

    /// Whether the plugin has an actor (its manifest loaded).
    pub fn has_actor(&self) -> bool {
        self.ctl.is_some()
    }

    /// Sends a command and waits until the plugin settles. False if the plugin has no actor.
    pub async fn command(&self, make: impl FnOnce(Reply) -> Command) -> bool {
        match self.send(make) {
            Some(rx) => rx.await.is_ok(),
            None => false,
        }
    }

    /// Sends a command and waits for its answer, with the status the command left; None if the
    /// plugin has no actor.
    pub async fn request(&self, make: impl FnOnce(Reply) -> Command) -> Option<Answer> {
        self.send_wanting(true, make)?.await.ok()
    }

    /// Sends a command now (the actor takes commands in the order they were sent); its answer
    /// (without the status) comes on the receiver, which may be dropped. None if the plugin has
    /// no actor.
    pub fn send(&self, make: impl FnOnce(Reply) -> Command) -> Option<oneshot::Receiver<Answer>> {
        self.send_wanting(false, make)
    }

    /// [`PluginEntry::send`], the answer carrying the status the command left.
    pub fn send_for_status(&self, make: impl FnOnce(Reply) -> Command) -> Option<oneshot::Receiver<Answer>> {
        self.send_wanting(true, make)
    }

    fn send_wanting(
        &self,
        with_status: bool,
        make: impl FnOnce(Reply) -> Command,
    ) -> Option<oneshot::Receiver<Answer>> {
        let ctl = self.ctl.as_ref()?;
        let (reply, rx) = Reply::channel(with_status);
        ctl.send(make(reply)).ok()?;
        Some(rx)
    }

    /// The status object of docs/control-api.md.
    pub fn snapshot(&self) -> PluginStatus {
        let routes = self.routes();
        // The serving instances; while none serves (starting, stopping), the processes there
        // are, so a plugin stuck in `init` can be found.
        let (pid, instances) = match routes.first() {
            Some(first) => (Some(first.pid()), routes.len()),
            None => {
                let live: Vec<u32> = self.processes().iter().map(|i| i.pid()).filter(|pid| *pid > 0).collect();
                (live.first().copied(), live.len())
            }
        };
        let st = self.status();
        // A plugin provides what its manifest declares: `register` can add no service to these.
        let services = match &st.manifest {
            Some(m) => std::iter::once(ServiceRef { name: m.name.clone(), version: m.version.to_string() })
                .chain(m.provides.iter().map(|p| ServiceRef { name: p.name.clone(), version: p.version.to_string() }))
                .fold(Vec::new(), |mut acc, s| {
                    if !acc.contains(&s) {
                        acc.push(s);
                    }
                    acc
                }),
            None => Vec::new(),
        };
        PluginStatus {
            name: self.name.to_string(),
            version: st.version.clone(),
            state: st.state.as_str().to_owned(),
            pid,
            instances,
            restarts: st.restarts,
            uptime_ms: match (&st.state, st.running_since) {
                (s, Some(t)) if s.is_running() => t.elapsed().as_millis() as u64,
                _ => 0,
            },
            services,
            dependencies: Vec::new(),
            permissions: Default::default(),
            last_error: st.last_error.clone(),
            calls: CallCounts {
                total: self.counters.total.load(Ordering::Relaxed),
                failed: self.counters.failed.load(Ordering::Relaxed),
                timed_out: self.counters.timed_out.load(Ordering::Relaxed),
            },
            memory_kb: {
                let kb: u64 = routes.iter().filter_map(|i| crate::procfs::rss_kb(i.pid())).sum();
                (!routes.is_empty()).then_some(kb)
            },
            last_exit: st.last_exit.clone(),
            stderr_tail: self.log.stderr_tail(),
            history: st.history.iter().cloned().collect(),
            refused_services: st
                .manifest
                .as_ref()
                .map_or_else(Vec::new, |m| crate::registry::rules::refused(m, &st.registered)),
            dir: self.dir.to_string_lossy().into_owned(),
            sandbox: Vec::new(),
            // In `plugins.list` too (which leaves out only `sandbox` and `methods`).
            protocol: st.manifest.as_ref().map(|m| m.protocol.as_str().to_owned()),
            methods: None,
        }
    }
}

impl Status {
    /// Appends to the history, dropping the oldest entry when full.
    pub fn record(&mut self, event: &str, detail: impl Into<String>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(HistoryEntry {
            ts: crate::time::now_rfc3339(),
            event: event.to_owned(),
            detail: detail.into(),
        });
    }
}
