//! plugind: a process-isolated plugin supervisor.
//!
//! Plugins are child processes speaking JSON-RPC 2.0 over stdio (see `docs/protocol.md`); plugind
//! spawns them with limits, hands them calls with deadlines, restarts them when they crash, and
//! routes calls between hosts and plugins. `pluginctl` talks to it over a Unix socket.
//!
//! # Layout
//! - [`transport`]: NDJSON framing and the bidirectional JSON-RPC [`transport::peer::Peer`].
//! - [`plugin`]: one actor per plugin, one task per instance, spawning and limits.
//! - [`router`]: the call path: pick an instance, admit, call with a deadline, map errors.
//! - [`host`]: what plugins may ask plugind (`registry.*`, `service.call`, `kv.*`).
//! - [`control`]: the control socket and its handlers (the client side is the `plugind-client`
//!   crate, which `pluginctl` and hosts use).
//! - [`discovery`], [`config`], [`logs`]: finding plugins, settings, log rings.
//! - [`mcp`]: `"protocol": "mcp"` plugins, an adapter between an MCP server's stdio and the plugin protocol.
//! - [`caps`]: the bounds on what a plugin can make plugind hold (log lines, services, series).
//!
//! # Theory of operation
//! [`run`] binds the control socket, loads every plugin directory into a [`PluginEntry`] with an
//! actor task, starts them, serves the socket until asked to stop, then stops every plugin.
//! The [`Daemon`] is the shared state everybody holds an `Arc` of: the plugin table and settings.

pub mod caps;
pub mod catalog;
pub mod check;
pub mod config;
pub mod control;
pub mod discovery;
pub mod hooks;
pub mod host;
pub mod kv;
pub mod listen;
pub mod log_files;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod plugin;
pub mod procfs;
pub mod registry;
pub mod router;
pub mod sandbox;
pub mod schema_cost;
pub mod service;
pub mod statedir;
pub mod time;
pub mod tmpdirs;
pub mod trace;
pub mod transport;
pub mod watch;

use crate::config::{Config, StatePaths};
use crate::logs::PluginLog;
use crate::plugin::actor::PluginActor;
use crate::plugin::context::{ActorHost, InstanceSettings};
use crate::plugin::entry::{Command, Status};
use crate::plugin::state::PluginState;
pub use crate::plugin::PluginEntry;
use crate::registry::HostService;
use plugind_protocol::control::ServiceRef;
use plugind_protocol::control::{LogLine, ReloadResult};
use plugind_protocol::manifest::Manifest;
use plugind_protocol::methods::{ServiceEvent, ServicesChangedParams};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// plugind's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The daemon's shared state.
pub struct Daemon {
    config: Config,
    paths: StatePaths,
    /// When the daemon started (for `uptime_ms`).
    pub started: Instant,
    plugins: RwLock<BTreeMap<String, Arc<PluginEntry>>>,
    next_instance: AtomicU64,
    /// Every plugin log line, for followers (`logs -f`).
    log_follow: broadcast::Sender<LogLine>,
    /// Cancelled when a client asks for `supervisor.shutdown`.
    pub shutdown: CancellationToken,
    /// Services offered by hosts over their control connections.
    host_services: RwLock<Vec<Arc<HostService>>>,
    next_conn: AtomicU64,
    /// One rescan at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set when plugind begins to stop ([`Daemon::stop_all`]): nothing starts a plugin after.
    stopping: std::sync::atomic::AtomicBool,
    /// Lifecycle events for `events.subscribe`.
    events: broadcast::Sender<plugind_protocol::control::Event>,
    /// Emitted metrics and the Prometheus registry.
    pub metrics: metrics::Metrics,
    /// The plugins' key-value store, opened by [`run`] (or lazily by whoever needs it first).
    kv: std::sync::OnceLock<Arc<kv::KvStore>>,
    /// The plugins' log rings on disk, opened by [`run`] (`check` keeps its lines in memory).
    log_files: std::sync::OnceLock<Arc<log_files::LogFiles>>,
    /// Providers by service name, cached between registry changes.
    services: registry::ServiceIndex,
    /// Names whose holding directory is gone, reserved for it (`discovery::scan`): never
    /// routed to a plugin providing a service of that name.
    reserved_names: RwLock<std::collections::BTreeSet<String>>,
    /// The threads that fork plugins, started with the first plugin.
    spawner: std::sync::OnceLock<std::io::Result<plugin::spawner::Spawner>>,
    /// What each running plugin's dependents were last told it serves (`services.changed`):
    /// a hot reload compares its new services with these.
    announced: std::sync::Mutex<std::collections::HashMap<Arc<str>, Vec<ServiceRef>>>,
}

impl Daemon {
    /// A daemon with no plugins loaded yet.
    pub fn new(config: Config) -> Arc<Self> {
        let (log_follow, _) = broadcast::channel(1024);
        Arc::new(Daemon {
            paths: StatePaths::new(&config.state_dir),
            config,
            started: Instant::now(),
            plugins: RwLock::new(BTreeMap::new()),
            next_instance: AtomicU64::new(1),
            log_follow,
            shutdown: CancellationToken::new(),
            host_services: RwLock::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            events: broadcast::channel(1024).0,
            metrics: metrics::Metrics::default(),
            kv: std::sync::OnceLock::new(),
            log_files: std::sync::OnceLock::new(),
            services: registry::ServiceIndex::default(),
            reserved_names: RwLock::default(),
            spawner: std::sync::OnceLock::new(),
            announced: Default::default(),
        })
    }

    /// The plugin spawner threads, started on first use (inside the runtime).
    pub fn spawner(&self) -> Result<&plugin::spawner::Spawner, String> {
        self.spawner
            .get_or_init(plugin::spawner::Spawner::start)
            .as_ref()
            .map_err(|e| format!("cannot start the spawner threads: {e}"))
    }

    /// Opens the kv store in the state dir; a corrupt or unwritable database is an error.
    pub fn open_kv(&self) -> Result<Arc<kv::KvStore>, kv::KvError> {
        if let Some(kv) = self.kv.get() {
            return Ok(kv.clone());
        }
        let store = kv::KvStore::open(&self.paths.root().join("kv.sqlite"))?;
        Ok(self.kv.get_or_init(|| store).clone())
    }

    /// Opens the plugins' log files in the state dir (`logs/`): from now on a plugin's log is
    /// kept there too, and a plugin loaded afterwards starts with the lines of its last run.
    pub fn open_log_files(&self) -> std::io::Result<()> {
        let files = log_files::LogFiles::open(&self.paths.root().join("logs"), self.config.log_lines)?;
        let _ = self.log_files.set(Arc::new(files));
        Ok(())
    }

    /// Waits (a little) for the log lines still queued for the log files to be written.
    pub async fn flush_log_files(&self) {
        if let Some(files) = self.log_files.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || files.flush(Duration::from_secs(2))).await;
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Paths under the state dir.
    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// One plugin by name.
    pub fn plugin(&self, name: &str) -> Option<Arc<PluginEntry>> {
        self.plugins.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Every plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<PluginEntry>> {
        self.plugins.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    /// Publishes a lifecycle event to subscribers (`events.subscribe`).
    pub fn publish_event(&self, plugin: &str, kind: &str, state: Option<&str>, detail: String) {
        let _ = self.events.send(plugind_protocol::control::Event {
            ts: time::now_rfc3339(),
            plugin: plugin.to_owned(),
            kind: kind.to_owned(),
            state: state.map(str::to_owned),
            detail,
            trace_id: None,
        });
    }

    /// Subscribes to lifecycle events.
    pub fn subscribe_events(&self) -> broadcast::Receiver<plugind_protocol::control::Event> {
        self.events.subscribe()
    }

    /// Called by actors on every state change.
    pub fn state_changed(&self, entry: &PluginEntry, state: &str, was_running: bool) {
        self.registry_changed();
        tracing::info!(plugin = %entry.name, state, "state changed");
        let detail = entry.status().last_error.clone().filter(|_| state != "running").unwrap_or_default();
        self.publish_event(&entry.name, "state", Some(state), detail);
        let is_running = state == "running";
        if is_running != was_running {
            let announced = || self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if is_running {
                let services = self.routed_services(entry);
                announced().insert(entry.name.clone(), services.clone());
                self.notify_dependents(&entry.name, &services, ServiceEvent::Up);
            } else {
                let told = announced().remove(&entry.name);
                let services = told.unwrap_or_else(|| self.routed_services(entry));
                self.notify_dependents(&entry.name, &services, ServiceEvent::Down);
            }
        }
        if is_running {
            self.wake_blocked();
        }
    }

    /// Asks every blocked plugin to try again: a provider may have come up.
    fn wake_blocked(&self) {
        for p in self.plugins() {
            if p.state_name() == "blocked" {
                drop(p.send(Command::Start));
            }
        }
    }

    /// Sends `services.changed` to every running plugin that depends on one of `services`.
    pub fn notify_dependents(&self, provider: &str, services: &[ServiceRef], event: ServiceEvent) {
        for other in self.plugins() {
            if &*other.name == provider {
                continue;
            }
            let Some(m) = other.status().manifest.clone() else { continue };
            for s in services {
                if m.dependencies().any(|(d, _)| d.name == s.name) {
                    let params = ServicesChangedParams {
                        service: s.name.clone(),
                        version: s.version.clone(),
                        plugin: provider.to_owned(),
                        event,
                    };
                    for i in other.routes().iter() {
                        i.peer.notify(plugind_protocol::methods::SERVICES_CHANGED, &params);
                    }
                }
            }
        }
    }

    /// Whether `pid` is a plugin instance or runs under one (its session, process group or an
    /// ancestor is an instance's): such processes may not use the control socket.
    pub fn is_plugin_process(&self, pid: u32) -> bool {
        let instances: Vec<u32> =
            self.plugins().iter().flat_map(|p| p.processes().iter().map(|i| i.pid()).collect::<Vec<_>>()).collect();
        if instances.is_empty() {
            return false;
        }
        let me = std::process::id();
        let mut cur = pid;
        for _ in 0..64 {
            let Some((ppid, pgrp, session)) = procfs::ids(cur) else { return false };
            if instances.contains(&cur) || instances.contains(&pgrp) || instances.contains(&session) {
                return true;
            }
            if ppid <= 1 || ppid == me {
                return false;
            }
            cur = ppid;
        }
        false
    }

    /// A fresh control connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Services offered by hosts now.
    pub fn host_services(&self) -> Vec<Arc<HostService>> {
        self.host_services.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A host starts offering a service.
    pub fn add_host_service(&self, h: Arc<HostService>) {
        let service = ServiceRef { name: h.info.name.clone(), version: h.info.version.clone() };
        let provider = h.info.plugin.clone();
        self.host_services.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(h);
        self.registry_changed();
        tracing::info!(service = %service.name, version = %service.version, host = %provider, "host registered a service");
        self.notify_dependents(&provider, &[service], ServiceEvent::Up);
        self.wake_blocked();
    }

    /// A control connection closed: its services go away.
    pub fn remove_host_services(&self, conn: u64) {
        let gone: Vec<Arc<HostService>> = {
            let mut all = self.host_services.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (gone, keep) = all.drain(..).partition(|h| h.conn == conn);
            *all = keep;
            gone
        };
        self.registry_changed();
        for h in gone {
            tracing::info!(service = %h.info.name, host = %h.info.plugin, "host service gone");
            let service = ServiceRef { name: h.info.name.clone(), version: h.info.version.clone() };
            self.notify_dependents(&h.info.plugin, &[service], ServiceEvent::Down);
        }
    }

    /// Required dependencies of `m` that no running provider satisfies, as `name@range`, with the
    /// versions that do run when some do (`base@^2 (runs only at 0.1.0, plugin base)`); None if
    /// all are met.
    pub fn unmet_dependencies(&self, m: &Manifest) -> Option<Vec<String>> {
        let unmet: Vec<String> = m
            .required
            .iter()
            .filter(|dep| self.resolve(dep).is_none())
            .map(|dep| match self.not_found(dep).data.as_ref().and_then(|d| d.get("running")?.as_array().cloned()) {
                Some(running) => format!(
                    "{dep} (runs only at {})",
                    running.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(", ")
                ),
                None => dep.to_string(),
            })
            .collect();
        (!unmet.is_empty()).then_some(unmet)
    }

    /// The status object of a plugin, with what only the daemon knows (dependencies met,
    /// permissions enforced).
    pub fn status_of(&self, entry: &PluginEntry) -> plugind_protocol::control::PluginStatus {
        self.status_with_details(entry, entry.snapshot())
    }

    /// `s`, a [`PluginEntry::snapshot`] of `entry`, with what the daemon knows besides: whether
    /// each dependency is met, and what this host enforces of each permission.
    pub fn status_with_details(
        &self,
        entry: &PluginEntry,
        mut s: plugind_protocol::control::PluginStatus,
    ) -> plugind_protocol::control::PluginStatus {
        use plugind_protocol::control::DependencyStatus;
        let manifest = entry.status().manifest.clone();
        if let Some(m) = manifest {
            s.dependencies = m
                .dependencies()
                .map(|(d, required)| DependencyStatus {
                    name: d.name.clone(),
                    range: d.range_text(),
                    required,
                    met: self.resolve(d).is_some(),
                })
                .collect();
            // What this host's kernel enforces (probed once at startup), per permission.
            s.permissions = sandbox::report(&m);
        }
        // A declared service named after another plugin is never routed here: listed as refused.
        let (shadowing, routed): (Vec<ServiceRef>, Vec<ServiceRef>) =
            s.services.drain(..).partition(|svc| self.is_shadowing(entry, &svc.name));
        s.services = routed;
        s.refused_services.extend(shadowing.into_iter().map(|svc| plugind_protocol::control::RefusedService {
            reason: format!("named after plugin {:?}: a plugin's name is its service alone", svc.name),
            name: svc.name,
            version: svc.version,
        }));
        s
    }

    fn new_log(&self, name: &str) -> Arc<PluginLog> {
        let log = PluginLog::new(name, self.config.log_lines, self.log_follow.clone()).with_events(self.events.clone());
        // Only a valid name is a file name (an `invalid` entry is named `NAME@DIR`).
        match self.log_files.get() {
            Some(files) if plugind_protocol::manifest::is_valid_name(name) => Arc::new(log.with_files(files.clone())),
            _ => Arc::new(log),
        }
    }

    /// A log for a plugin that is not (yet) in the table, e.g. for `pluginctl check`.
    pub fn plugin_log(&self, name: &str) -> Arc<PluginLog> {
        self.new_log(name)
    }

    /// Subscribes to every plugin log line.
    pub fn follow_logs(&self) -> broadcast::Receiver<LogLine> {
        self.log_follow.subscribe()
    }

    /// Scans the plugin dirs: every plugin found, with dependency cycles turned into load errors.
    /// `release_gone`: the operator asked (`pluginctl reload`, SIGHUP), so names whose holders
    /// are gone are given up (`discovery::scan`).
    fn scan(&self, release_gone: bool) -> (Vec<discovery::Found>, Vec<String>) {
        let version = semver::Version::parse(VERSION).expect("UNWRAP: crate version is semver");
        // Who holds each name: a directory that appears later with the same name does not take
        // it over. Who held it when plugind last scanned, as kept in the state dir (a name owns
        // its kv data and data dir, so a directory added while plugind was down, sorted first,
        // must not take them, nor one added while its holder is away), then the table.
        let names_file = self.paths.names_file();
        let mut holders = discovery::read_holders(&names_file);
        {
            let table = self.plugins.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, e) in table.iter().filter(|(name, _)| !name.contains('@')) {
                holders.plugins.insert(name.clone(), e.dir.clone());
                holders.services.remove(name);
            }
            // The services they provide under other names, held by them too (unless recorded).
            for e in table.values() {
                let Some(m) = e.status().manifest.clone() else { continue };
                for p in m.provides.iter().filter(|p| !holders.plugins.contains_key(&p.name)) {
                    holders.services.entry(p.name.clone()).or_insert_with(|| e.dir.clone());
                }
            }
        }
        let (mut found, errors) = discovery::scan(&self.config.plugin_dirs, &version, &holders, release_gone);
        let holders = discovery::write_holders(&names_file, &holders, &found, release_gone);
        *self.reserved_names.write().unwrap_or_else(std::sync::PoisonError::into_inner) = holders.reserved();
        // A `--plugins` dir that is missing or unreadable names itself (else a typo there is a
        // daemon with no plugins and no word why).
        for e in &errors {
            tracing::warn!("{e}");
        }
        let cycles = {
            let loaded: Vec<(&str, &Manifest)> =
                found.iter().filter_map(|f| f.manifest.as_ref().ok().map(|m| (f.name.as_str(), m))).collect();
            discovery::find_cycles(&loaded)
        };
        for f in &mut found {
            if let Some(cycle) = cycles.get(&f.name) {
                f.manifest = Err(discovery::cycle_error(&f.dir, cycle));
            }
            // The operator's `[plugins.NAME] limits` (config file) win over the manifest's.
            if let Ok(m) = &mut f.manifest {
                self.config.apply_overrides(m);
            }
        }
        (found, errors)
    }

    /// An entry (with its actor, if the manifest loads) for a plugin found on disk.
    fn make_entry(self: &Arc<Self>, f: discovery::Found) -> Arc<PluginEntry> {
        let log = self.new_log(&f.name);
        let (state, version, manifest, last_error) = match f.manifest {
            Ok(m) => {
                // In the plugin's own log too (`pluginctl logs`), not only on plugind's stderr.
                for w in &m.warnings {
                    log.warn(format!("plugin.json: {w}"));
                }
                (PluginState::Stopped, m.version.to_string(), Some(Arc::new(m)), None)
            }
            Err(e) => {
                tracing::error!(plugin = %f.name, "invalid manifest: {e}");
                log.warn(format!("invalid manifest: {e}"));
                (PluginState::Invalid, f.version, None, Some(e))
            }
        };
        let status = Status {
            state,
            version,
            manifest: manifest.clone(),
            restarts: 0,
            running_since: None,
            last_error,
            last_exit: None,
            history: VecDeque::new(),
            registered: Vec::new(),
        };
        match manifest {
            Some(m) => PluginActor::spawn(
                |ctl| Arc::new(PluginEntry::new(&f.name, f.dir, log, status, Some(ctl))),
                self.clone() as Arc<dyn ActorHost>,
                m,
            ),
            None => Arc::new(PluginEntry::new(&f.name, f.dir, log, status, None)),
        }
    }

    /// Scans the plugin dirs and creates an entry (and actor) per plugin found.
    pub fn load(self: &Arc<Self>) -> Vec<String> {
        // At boot a gone directory's name is given up, as by the operator's reload: plugind was
        // restarted by its operator, perhaps with its plugins moved (another `--plugins`); a
        // holder gone with several claimants still leaves none of them the name.
        let (found, mut errors) = self.scan(true);
        let mut table = BTreeMap::new();
        for f in found {
            if let Err(e) = &f.manifest {
                errors.push(e.clone());
            }
            table.insert(f.name.clone(), self.make_entry(f));
        }
        *self.plugins.write().unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        self.registry_changed();
        errors
    }

    /// Rescans the plugin dirs (`plugins.reload`, SIGHUP): new directories are added and started,
    /// removed ones stopped and dropped, changed ones hot-reloaded (docs/security.md). Answers
    /// once the plugins it started or reloaded have settled.
    /// Being the operator's, it also releases the names of directories that are gone.
    /// A changed plugin whose new version failed to start (the old one serves on), and a plugin
    /// it started that ended `failed`, are among the `errors`: the reload did not take effect for
    /// them (audit 20: it read as a success, and every later reload said `changed` again). The
    /// wait ends after `ready_timeout_s`, as at start: a plugin in a long crash loop settles only
    /// when it gives up, and that one is named as not settled.
    pub async fn reload(self: &Arc<Self>) -> ReloadResult {
        use plugin::{entry::Answer, machine::Outcome};
        let (mut result, settling) = self.rescan_dirs_releasing(true).await;
        let until = tokio::time::Instant::now() + self.config.ready_timeout;
        for (name, answer) in settling {
            match tokio::time::timeout_at(until, answer).await {
                Ok(Ok(Answer { outcome: Outcome::Failed(why), .. })) => result.errors.push(format!("{name}: {why}")),
                Ok(Ok(Answer { status: Some(s), .. })) if s.state == "failed" => result
                    .errors
                    .push(format!("{name}: failed: {}", s.last_error.as_deref().unwrap_or("it did not start"))),
                Ok(_) => {}
                Err(_) => result.errors.push(format!(
                    "{name}: not settled after {} s (ready_timeout_s): still starting or restarting",
                    self.config.ready_timeout.as_secs()
                )),
            }
        }
        result
    }

    /// [`Daemon::reload`] without waiting for the plugins to settle: the starts and reloads are
    /// sent, and their answers come on the receivers returned. Rescans run one at a time, and
    /// none waits for another's plugins to settle: a plugin that never settles (a crash loop
    /// with a high `max_restarts`) must not hold up the next rescan, which may be the one that
    /// removes it.
    pub async fn rescan_dirs(self: &Arc<Self>) -> (ReloadResult, Vec<Settling>) {
        self.rescan_dirs_releasing(false).await
    }

    /// [`Daemon::rescan_dirs`], releasing the names of gone directories when `release_gone`.
    async fn rescan_dirs_releasing(self: &Arc<Self>, release_gone: bool) -> (ReloadResult, Vec<Settling>) {
        let refused = || (ReloadResult { errors: vec![STOPPING.to_owned()], ..ReloadResult::default() }, Vec::new());
        if self.is_stopping() {
            return refused();
        }
        let _serial = self.reload_lock.lock().await;
        // The stop may have begun while this waited for the lock.
        if self.is_stopping() {
            return refused();
        }
        let (found, mut errors) = self.scan(release_gone);
        let mut result = ReloadResult::default();
        let current = self.plugins();
        let mut to_start = Vec::new();
        let mut to_reload = Vec::new();
        let mut to_remove: Vec<Arc<PluginEntry>> = Vec::new();
        let mut kept_dirs = Vec::new();
        for f in found {
            if let Err(e) = &f.manifest {
                errors.push(e.clone());
            }
            let existing = current.iter().find(|p| p.dir == f.dir).cloned();
            kept_dirs.push(f.dir.clone());
            match existing {
                None => {
                    result.added.push(f.name.clone());
                    to_start.push(f);
                }
                Some(e) => {
                    let old = e.status().manifest.clone();
                    match (&old, &f.manifest) {
                        // Same name, loadable before: the actor reloads it (a broken new manifest
                        // leaves the old version serving).
                        (Some(om), Ok(nm)) if om.name == nm.name && **om != *nm => {
                            result.changed.push(f.name.clone());
                            to_reload.push(e);
                        }
                        // On a cycle the other end's file closed: nothing of its own changed
                        // (audit 19: every rescan hot-reloaded it).
                        (Some(om), Err(_)) if self.unchanged_on_disk(&f.dir, om) => {}
                        (Some(om), Err(_)) if *e.name == f.name || om.name == f.name => {
                            result.changed.push(f.name.clone());
                            to_reload.push(e);
                        }
                        (Some(om), Ok(nm)) if om.name == nm.name => {}
                        (None, Err(err)) if e.status().last_error.as_deref() == Some(err.as_str()) => {}
                        // A new name, or invalid before: a removal plus an addition.
                        _ => {
                            result.changed.push(f.name.clone());
                            to_remove.push(e);
                            to_start.push(f);
                        }
                    }
                }
            }
        }
        for e in &current {
            if !kept_dirs.contains(&e.dir) {
                result.removed.push(e.name.to_string());
                to_remove.push(e.clone());
            }
        }
        for e in &to_remove {
            // Out of the table first, so no command finds it any more, then stopped for good:
            // a start that raced with the stop ran it on, out of the table (audit 18).
            e.mark_removed();
            self.plugins.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&*e.name);
            self.registry_changed();
            e.command(Command::Remove).await;
        }
        let mut added = Vec::new();
        for f in to_start {
            let entry = self.make_entry(f);
            self.plugins
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(entry.name.to_string(), entry.clone());
            self.registry_changed();
            added.push(entry);
        }
        let mut settling: Vec<Settling> =
            to_reload.iter().filter_map(|e| Some((e.name.clone(), e.send_for_status(Command::Reload)?))).collect();
        // Like at boot, plugins the config file disables are added but not started.
        let startable = added.iter().filter(|e| self.config.enabled(&e.name));
        settling.extend(startable.filter_map(|e| Some((e.name.clone(), e.send_for_status(Command::Start)?))));
        result.errors = errors;
        tracing::info!(added = ?result.added, removed = ?result.removed, changed = ?result.changed, "plugins reloaded");
        (result, settling)
    }

    /// Whether the manifest in `dir` is `current` still (the operator's overrides applied), though
    /// the scan refused it for what other manifests do (a dependency cycle).
    fn unchanged_on_disk(&self, dir: &std::path::Path, current: &Manifest) -> bool {
        let version = semver::Version::parse(VERSION).expect("UNWRAP: crate version is semver");
        match discovery::load(dir, &version).manifest {
            Ok(mut m) => {
                self.config.apply_overrides(&mut m);
                m == *current
            }
            Err(_) => false,
        }
    }

    /// Starts every loadable plugin in dependency order and waits until each has settled
    /// (running, failed, blocked…). Plugins whose required dependencies are already served start
    /// at once, together; each that settles lets start at once those it was the last missing
    /// provider of, without waiting for unrelated plugins (one that hangs in `init` holds up only
    /// its own dependents). One that waits for a dependency no plugin still to settle declares
    /// is told to start at once and reads `blocked`; whatever is left when nothing is starting
    /// (a cycle) is started too and ends up `blocked`.
    ///
    /// Plugins the config file disables (`[plugins.NAME] enabled = false`) stay `stopped`.
    pub async fn start_all(&self) {
        let mut pending: Vec<Arc<PluginEntry>> = self
            .plugins()
            .into_iter()
            .filter(|p| p.ctl.is_some())
            .filter(|p| {
                let on = self.config.enabled(&p.name);
                if !on {
                    tracing::info!(plugin = %p.name, "disabled in the config file: not started");
                    p.log.plugind("disabled in the config file (enabled = false): not started at boot".to_owned());
                }
                on
            })
            .collect();
        let mut starting = futures::stream::FuturesUnordered::new();
        // Started and not settled yet.
        let mut unsettled: std::collections::HashMap<Arc<str>, Arc<PluginEntry>> = Default::default();
        let mut told_to_wait: std::collections::HashSet<Arc<str>> = Default::default();
        // One told to wait that is `stopped` now was stopped by the operator meanwhile: it stays
        // so (start_all starts, it does not overrule a `pluginctl stop`).
        fn stopped_since(told_to_wait: &std::collections::HashSet<Arc<str>>, p: &PluginEntry) -> bool {
            told_to_wait.contains(&p.name) && p.state_name() == "stopped"
        }
        loop {
            let (ready, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| {
                let m = p.status().manifest.clone();
                m.is_some_and(|m| self.unmet_dependencies(&m).is_none())
            });
            pending = waiting;
            for p in ready.into_iter().filter(|p| !stopped_since(&told_to_wait, p)) {
                unsettled.insert(p.name.clone(), p.clone());
                starting.push(async move {
                    p.command(Command::Start).await;
                    p.name.clone()
                });
            }
            // A plugin that waits for a dependency no plugin still to settle declares is told to
            // start now: it goes `blocked`, its status naming what it lacks (it read `stopped`,
            // with no reason, until every other plugin had settled: a minute behind a plugin
            // hanging in `init`, audit 21). Not awaited: it starts by itself if a provider comes
            // up after all. One whose provider may yet come up stays as it is, `stopped`, which
            // no one polling for the end of the boot takes as settled.
            let may_come: Vec<Arc<Manifest>> = pending
                .iter()
                .filter(|q| !told_to_wait.contains(&q.name))
                .chain(unsettled.values())
                .filter_map(|q| q.status().manifest.clone())
                .collect();
            for p in &pending {
                let Some(m) = p.status().manifest.clone() else { continue };
                let awaited = m
                    .required
                    .iter()
                    .filter(|d| self.resolve(d).is_none())
                    .any(|d| may_come.iter().any(|q| q.name != m.name && q.declares_service(&d.name)));
                if !awaited && told_to_wait.insert(p.name.clone()) {
                    drop(p.send(Command::Start));
                }
            }
            // One settled: what it provides may be what a waiting plugin lacked.
            match futures::StreamExt::next(&mut starting).await {
                Some(name) => drop(unsettled.remove(&name)),
                None => break,
            }
        }
        let leftover = pending.iter().filter(|p| !stopped_since(&told_to_wait, p));
        futures::future::join_all(leftover.map(|p| p.command(Command::Start))).await;
    }

    /// Stops every plugin in reverse dependency order and waits for their processes to end.
    ///
    /// Dependents go first: a plugin gets `teardown` only once every plugin that depends on one
    /// of its services (required or optional, by the manifests) has stopped. Plugins with no
    /// running dependent stop together in one wave; if a cycle leaves no such plugin, the rest
    /// stop together. [`run`] bounds the whole with the stop timeout.
    pub async fn stop_all(&self) {
        // Nothing starts a plugin from now on (`plugins.start`, `restart`, rescans, the watcher,
        // SIGHUP): audit 18 had plugins started after their wave had stopped, still running
        // when plugind said it had stopped. A rescan under way ends first (its removals stop
        // their plugins); none begins after.
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        let _no_rescan = self.reload_lock.lock().await;
        // docs/systemd.md: `onShutdown` hooks run before the first `teardown`, within half the
        // stop budget: a hook allowed more must not leave no time for any plugin's teardown.
        let budget = Some(self.config.stop_timeout / 2);
        match self
            .run_hook(
                "onShutdown",
                plugind_protocol::jsonrpc::to_raw(&serde_json::json!({})),
                budget,
                &trace::TraceIn::default(),
            )
            .await
        {
            Ok(hooked) if !hooked.handled_by.is_empty() => {
                tracing::info!(handled_by = ?hooked.handled_by, "onShutdown hooks ran");
            }
            Ok(_) => {}
            // A closed onShutdown plugin that failed cannot stop the shutdown.
            Err(e) => tracing::warn!("onShutdown hooks: {}", e.message),
        }

        let mut pending = self.plugins();
        while !pending.is_empty() {
            // What each pending plugin serves: its name, its declared and its registered services.
            let serves: Vec<Vec<String>> = pending
                .iter()
                .map(|p| {
                    let mut names = vec![p.name.to_string()];
                    if let Some(m) = p.status().manifest.clone() {
                        names.extend(m.provides.iter().map(|s| s.name.clone()));
                    }
                    names.extend(p.snapshot().services.into_iter().map(|s| s.name));
                    names
                })
                .collect();
            let needs: Vec<Vec<String>> = pending
                .iter()
                .map(|p| {
                    p.status()
                        .manifest
                        .clone()
                        .map(|m| m.dependencies().map(|(d, _)| d.name.clone()).collect())
                        .unwrap_or_default()
                })
                .collect();
            // i may stop now if no other pending plugin needs what i serves.
            let free: Vec<bool> = (0..pending.len())
                .map(|i| !(0..pending.len()).any(|j| j != i && needs[j].iter().any(|n| serves[i].contains(n))))
                .collect();
            let (wave, rest): (Vec<_>, Vec<_>) = if free.iter().any(|f| *f) {
                let (w, r): (Vec<_>, Vec<_>) = pending.into_iter().zip(free).partition(|(_, f)| *f);
                (w.into_iter().map(|(p, _)| p).collect(), r.into_iter().map(|(p, _)| p).collect())
            } else {
                tracing::warn!("dependency cycle among the plugins left: stopping them together");
                (std::mem::take(&mut pending), Vec::new())
            };
            tracing::debug!(plugins = ?wave.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(), "stopping");
            // `Remove`, not `Stop`: the actor ends after it, and answers a command that comes
            // after it at once without starting anything.
            futures::future::join_all(wave.iter().map(|p| p.command(Command::Remove))).await;
            pending = rest;
        }
    }

    /// Whether plugind has begun to stop: no plugin starts any more.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts by state for `supervisor.status`.
    pub fn counts(&self) -> plugind_protocol::control::PluginCounts {
        let mut c = plugind_protocol::control::PluginCounts::default();
        for p in self.plugins() {
            c.total += 1;
            match p.state_name() {
                "running" => c.running += 1,
                "failed" => c.failed += 1,
                "blocked" => c.blocked += 1,
                _ => {}
            }
        }
        c
    }
}

/// The daemon as its plugin actors see it (`plugin/context.rs`).
impl ActorHost for Daemon {
    fn next_instance_id(&self) -> u64 {
        self.next_instance.fetch_add(1, Ordering::Relaxed)
    }

    fn instance_settings(&self, m: &Manifest) -> InstanceSettings {
        InstanceSettings {
            paths: self.paths.clone(),
            operator_env: self.config.operator_env(&m.name),
            config: self.config.plugin_config(m),
            ping_every: self.config.ping_interval,
        }
    }

    fn apply_overrides(&self, m: &mut Manifest) {
        self.config.apply_overrides(m);
    }

    fn dependency_cycle(&self, name: &str, m: &Manifest) -> Option<String> {
        let others: Vec<(Arc<str>, Arc<Manifest>)> = self
            .plugins()
            .iter()
            .filter(|p| *p.name != *name)
            .filter_map(|p| Some((p.name.clone(), p.status().manifest.clone()?)))
            .collect();
        let all: Vec<(&str, &Manifest)> =
            others.iter().map(|(n, m)| (&**n, &**m)).chain(std::iter::once((name, m))).collect();
        discovery::find_cycles(&all).remove(name)
    }

    fn unmet_dependencies(&self, m: &Manifest) -> Option<Vec<String>> {
        Daemon::unmet_dependencies(self, m)
    }

    fn rescan(self: Arc<Self>) {
        tokio::spawn(async move { drop(self.rescan_dirs().await) });
    }

    fn state_changed(&self, entry: &PluginEntry, state: &str, was_running: bool) {
        Daemon::state_changed(self, entry, state, was_running);
    }

    fn registry_changed(&self) {
        Daemon::registry_changed(self);
    }

    fn publish_event(&self, plugin: &str, kind: &str, detail: String) {
        Daemon::publish_event(self, plugin, kind, None, detail);
    }

    fn swapped(&self, entry: &PluginEntry) {
        // Against what the dependents were told before: a service the new version no longer
        // serves went `down`, one it serves anew came `up` (audit 19: all were `replaced`, a
        // dropped one said nothing).
        let now = self.routed_services(entry);
        let before = {
            let mut announced = self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            announced.insert(entry.name.clone(), now.clone()).unwrap_or_default()
        };
        let named = |list: &[ServiceRef], s: &ServiceRef| list.iter().any(|o| o.name == s.name);
        let gone: Vec<ServiceRef> = before.iter().filter(|s| !named(&now, s)).cloned().collect();
        let (kept, new): (Vec<ServiceRef>, Vec<ServiceRef>) = now.into_iter().partition(|s| named(&before, s));
        self.notify_dependents(&entry.name, &gone, ServiceEvent::Down);
        self.notify_dependents(&entry.name, &kept, ServiceEvent::Replaced);
        self.notify_dependents(&entry.name, &new, ServiceEvent::Up);
        tracing::info!(plugin = %entry.name, "hot reload complete");
        // The new version may be what a blocked plugin waits for (audit 19: a provider that
        // came into range by a hot reload left its dependent blocked until something else ran).
        self.wake_blocked();
    }
}

/// Runs plugind until `shutdown` completes or a client asks it to stop, then stops every plugin.
///
/// The order (docs/systemd.md): bind the control socket (and `--listen`/`--metrics`), load the plugins,
/// start them all, `READY=1`; then serve until SIGTERM/SIGINT (`shutdown`) or
/// `supervisor.shutdown`, reloading on SIGHUP; then `STOPPING=1` and stop every plugin in reverse
/// dependency order within the stop timeout. [`service::Service`] keeps the watchdog and the
/// status going throughout.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    service::raise_open_files_limit();
    // Plugins of plugind's uid must not read its memory or environment through /proc (ptrace
    // access checks refuse a non-dumpable process to anybody without CAP_SYS_PTRACE).
    // SAFETY: a prctl without pointers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // First: a second plugind on this state dir must stop here, before it touches anything.
    let _state_lock = statedir::StateDir::lock(&config.state_dir)?;
    // What plugins must not see, then the probe, which also kills what a dead run left behind
    // (before anything of this run starts).
    let exposed = sandbox::protect(sandbox::PrivatePaths {
        state_dirs: vec![config.state_dir.clone()],
        plugin_roots: config.plugin_dirs.clone(),
        files: vec![config.socket.clone()],
        secrets: [config.token_file.as_ref(), config.file.as_ref()].into_iter().flatten().cloned().collect(),
        ..Default::default()
    });
    for (file, why) in exposed {
        tracing::warn!(
            file = %file.display(),
            "hidden from plugins as a single file, not with its directory ({why}): a new version written by renaming \
             it into place (sed -i, most editors, mv) is readable to plugins already running, until they restart; \
             keep plugind's config and token files in a directory of their own, such as /etc/plugind"
        );
    }
    sandbox::init().cgroups.sweep_recorded(&config.state_dir);
    // A dead run's temp dirs: their names are this run's instances' (removed in the background).
    tmpdirs::discard_leftovers(&config.state_dir.join("tmp"));
    let hup = service::sighup();
    let listener = control::socket::bind(&config.socket)?;
    let socket = config.socket.clone();
    let cleanup = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&socket);
        e
    };
    // Bound before any plugin starts, so a taken port or a bad token file stops plugind at once.
    let api = match (&config.listen, &config.token_file) {
        (Some(addr), Some(token)) => Some(listen::bind(addr, token, config.listen_keepalive).await.map_err(cleanup)?),
        _ => None,
    };
    let metrics_listener = match &config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| cleanup(anyhow::anyhow!("cannot serve metrics on {addr}: {e}")))?,
        ),
        None => None,
    };
    if let Some(url) = &config.otlp_endpoint {
        trace::start_export(url).map_err(|e| cleanup(e.into()))?;
        tracing::info!(endpoint = %url, "exporting spans over OTLP/HTTP");
    }
    let stop_timeout = config.stop_timeout;
    let daemon = Daemon::new(config);
    // From here SIGHUP is `plugins.reload` (docs/systemd.md), handled by the service loop once the
    // plugins have started; sd_notify and the watchdog go through it too.
    let mut service = service::Service::new(daemon.clone(), hup);
    daemon.open_kv().map_err(|e| cleanup(e.into()))?;
    daemon.open_log_files().map_err(|e| cleanup(anyhow::anyhow!("cannot open the log files' directory: {e}")))?;
    let load_errors = daemon.load();
    let server = tokio::spawn(control::serve(daemon.clone(), listener));
    let api = match api {
        Some(a) => Some(a.serve(daemon.clone()).map_err(cleanup)?),
        None => None,
    };
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "serving GET /metrics");
        tokio::spawn(metrics::serve(daemon.clone(), l))
    });
    let _watcher = if daemon.config.watch {
        match watch::start(daemon.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("hot reload disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    tracing::info!(
        socket = %socket.display(),
        plugins = daemon.plugins().len(),
        invalid = load_errors.len(),
        "plugind {VERSION} listening; try: pluginctl --socket {} list",
        socket.display()
    );
    tokio::pin!(shutdown);
    // READY=1 once every plugin has settled, or after `ready_timeout_s` at the latest: a plugin that
    // hangs in `init` through all its restarts (minutes) must not keep plugind from being ready,
    // nor systemd's start timeout (90 s by default) from killing it. The start goes on.
    let mut starting = tokio::spawn({
        let daemon = daemon.clone();
        async move { daemon.start_all().await }
    });
    let ready_timeout = daemon.config.ready_timeout;
    if let Some(started) = service.until(tokio::time::timeout(ready_timeout, &mut starting), &mut shutdown).await {
        let c = daemon.counts();
        if matches!(started, Ok(Ok(()))) {
            tracing::info!(
                running = c.running,
                failed = c.failed,
                blocked = c.blocked,
                total = c.total,
                "plugins started"
            );
        } else {
            let settling: Vec<String> = daemon
                .plugins()
                .iter()
                .filter(|p| p.status().state.is_settling())
                .map(|p| p.name.to_string())
                .collect();
            tracing::warn!(
                running = c.running,
                ?settling,
                "not every plugin has settled after {} s (ready_timeout_s): ready now, they go on starting",
                ready_timeout.as_secs()
            );
        }
        service.ready();
        service.serve(&mut shutdown).await;
    }
    // A start still going (past ready_timeout_s) must not start plugins behind the stop.
    starting.abort();
    service.stopping();
    tracing::info!(timeout = ?stop_timeout, "stopping plugins");
    if service.during(tokio::time::timeout(stop_timeout, daemon.stop_all())).await.is_err() {
        let left: Vec<String> = daemon
            .plugins()
            .iter()
            .filter(|p| p.state_name() != "stopped" && p.state_name() != "invalid")
            .map(|p| p.name.to_string())
            .collect();
        tracing::warn!(?left, "stop timeout ({stop_timeout:?}) reached: exiting anyway; what is left is killed");
        sandbox::init().cgroups.kill_own_instances();
    }
    sandbox::init().cgroups.remove_own_instances(Duration::from_secs(1)).await;
    if let Some(api) = api {
        api.stop();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    server.abort();
    let _ = std::fs::remove_file(&socket);
    trace::flush(Duration::from_secs(2)).await;
    daemon.flush_log_files().await;
    tracing::info!("plugind stopped");
    Ok(())
}

/// A plugin a rescan started or reloaded, and the answer that comes when it has settled.
pub type Settling = (Arc<str>, tokio::sync::oneshot::Receiver<plugin::entry::Answer>);

/// Why nothing starts or is rescanned while plugind stops.
pub const STOPPING: &str = "plugind is stopping: no plugin is started, restarted or rescanned any more";

/// The daemon's arrows run one way (ARCHITECTURE.md, "Layers"): control → daemon services →
/// plugin room → transport and sandbox. This test reads the lower rooms' sources and fails when
/// one of them names something above it, so the layering cannot erode unnoticed.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Names above the plugin room (the daemon's state and services, the control API, the glue).
    const ABOVE_PLUGINS: &[&str] = &[
        "crate::Daemon",
        "Daemon}",
        "crate::host",
        "crate::router",
        "crate::hooks",
        "crate::control",
        "crate::kv",
        "crate::listen",
        "crate::watch",
        "crate::service::",
        "crate::check",
    ];
    /// What transport and sandbox must not name either: the plugin room above them.
    const ABOVE_TRANSPORT: &[&str] = &["crate::plugin", "crate::registry", "crate::metrics", "crate::logs"];

    fn offenders(room: &str, forbidden: &[&str]) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(room);
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("UNWRAP: the room's source dir exists") {
            let path = entry.expect("UNWRAP: readable dir").path();
            let text = std::fs::read_to_string(&path).expect("UNWRAP: readable source");
            for (n, line) in text.lines().enumerate() {
                // Doc comments may point upward ("the daemon implements this in lib.rs").
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for f in forbidden {
                    if line.contains(f) {
                        found.push(format!("{}:{}: names {f}", path.display(), n + 1));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_plugin_room_does_not_reach_up() {
        let bad = offenders("plugin", ABOVE_PLUGINS);
        assert!(bad.is_empty(), "the plugin room must go through plugin/context.rs:\n{}", bad.join("\n"));
    }

    #[test]
    fn the_mcp_adapter_sits_below_the_plugin_room() {
        let mut bad = offenders("mcp", ABOVE_PLUGINS);
        bad.extend(offenders("mcp", &["crate::plugin", "crate::registry"]));
        assert!(bad.is_empty(), "the MCP adapter is a transport for instances:\n{}", bad.join("\n"));
    }

    #[test]
    fn transport_and_sandbox_do_not_reach_up() {
        let mut bad = Vec::new();
        for room in ["transport", "sandbox"] {
            bad.extend(offenders(room, ABOVE_PLUGINS));
            bad.extend(offenders(room, ABOVE_TRANSPORT));
        }
        assert!(bad.is_empty(), "transport and sandbox are the bottom layer:\n{}", bad.join("\n"));
    }
}
