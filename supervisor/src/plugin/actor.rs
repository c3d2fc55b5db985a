//! The plugin actor: the one task that changes a plugin's state.
//!
//! It owns the plugin's instance slots (one per `instances`), receives [`Command`]s from the
//! daemon and [`InstanceEvent`]s from its instances, applies the restart policy, and publishes
//! the result: the status (for readers) and the routing table (for callers).

use crate::logs::PluginLog;
use crate::plugin::entry::{Command, PluginEntry};
use crate::plugin::instance::{self, ExitReport, Instance, InstanceEvent, InstanceSpec};
use crate::plugin::spawn::{self, SpawnPlan};
use crate::plugin::state::{AfterExit, PluginState, RestartTracker};
use crate::Daemon;
use plugind_protocol::control::LastExit;
use plugind_protocol::manifest::Manifest;
use plugind_protocol::methods::ServiceEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One process position of a plugin (`instances: N` gives N slots).
#[derive(Default)]
struct Slot {
    instance: Option<Arc<Instance>>,
    ready: bool,
    /// When to (re)start this slot.
    due: Option<Instant>,
}

/// The actor's state.
pub struct PluginActor {
    entry: Arc<PluginEntry>,
    daemon: Arc<Daemon>,
    manifest: Arc<Manifest>,
    slots: Vec<Slot>,
    tracker: RestartTracker,
    /// Whether the operator wants it running (start) or not (stop).
    want_running: bool,
    /// After the current stop completes, start again (restart).
    start_after_stop: bool,
    /// Replies owed once the plugin settles.
    waiters: Vec<oneshot::Sender<()>>,
    /// Next start of a `failed` plugin with `cooldown_s`.
    cooldown_due: Option<Instant>,
    events_tx: mpsc::UnboundedSender<InstanceEvent>,
    /// A hot reload in progress: the new generation starting beside the old one.
    next: Option<NextGeneration>,
    /// A change arrived during a reload: reload once more when this one ends.
    reload_again: bool,
    /// Old instances finishing their calls before they are torn down.
    retiring: Vec<Arc<Instance>>,
    /// Replies owed when the reload in progress ends.
    reload_waiters: Vec<oneshot::Sender<()>>,
}

/// The instances of a new manifest, started beside the old ones; they take over once every one
/// of them has passed `init` and `register`.
struct NextGeneration {
    manifest: Arc<Manifest>,
    slots: Vec<Slot>,
}

impl PluginActor {
    /// Spawns the actor of a loaded plugin; returns its command queue.
    pub fn spawn(
        entry_of: impl FnOnce(mpsc::UnboundedSender<Command>) -> Arc<PluginEntry>,
        daemon: Arc<Daemon>,
        manifest: Arc<Manifest>,
    ) -> Arc<PluginEntry> {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let entry = entry_of(ctl_tx);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let slots = (0..manifest.instances).map(|_| Slot::default()).collect();
        let actor = PluginActor {
            entry: entry.clone(),
            daemon,
            manifest,
            slots,
            tracker: RestartTracker::default(),
            want_running: false,
            start_after_stop: false,
            waiters: Vec::new(),
            cooldown_due: None,
            events_tx,
            next: None,
            reload_again: false,
            retiring: Vec::new(),
            reload_waiters: Vec::new(),
        };
        tokio::spawn(actor.run(ctl_rx, events_rx));
        entry
    }

    /// Records a lifecycle event in the history and publishes it to `events.subscribe`.
    fn note(&self, event: &str, detail: String) {
        self.entry.status().record(event, detail.clone());
        self.daemon.publish_event(&self.entry.name, event, None, detail);
    }

    fn log(&self) -> &PluginLog {
        &self.entry.log
    }

    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<InstanceEvent>,
    ) {
        loop {
            let next_due = self.slots.iter().filter_map(|s| s.due).chain(self.cooldown_due).min();
            tokio::select! {
                cmd = ctl.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        // The daemon dropped the plugin: stop everything and end.
                        for s in &self.slots {
                            if let Some(i) = &s.instance { i.kill(); }
                        }
                        break;
                    }
                },
                Some(ev) = events.recv() => self.on_event(ev),
                _ = crate::time::sleep_until_opt(next_due) => self.on_timer(),
            }
        }
    }

    fn set_state(&mut self, state: PluginState) {
        let mut st = self.entry.status();
        if st.state == state {
            drop(st);
            if !state.is_settling() && state != PluginState::Stopping {
                self.release_waiters();
            }
            return;
        }
        let name = state.as_str();
        if state.is_running() {
            st.running_since = Some(Instant::now());
        }
        st.record("state", name);
        let was_running = st.state.is_running();
        st.state = state.clone();
        drop(st);
        self.daemon.state_changed(&self.entry, name, was_running);
        if !state.is_settling() && state != PluginState::Stopping {
            for w in self.waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(reply) => {
                self.waiters.push(reply);
                self.start_after_stop = false;
                let st = self.entry.status().state.clone();
                if matches!(st, PluginState::Running | PluginState::Starting | PluginState::Stopping) {
                    if st == PluginState::Stopping {
                        self.start_after_stop = true;
                    }
                    if st == PluginState::Running {
                        self.release_waiters();
                    }
                    return;
                }
                self.tracker.reset();
                self.start();
            }
            Command::Stop(reply) => {
                self.waiters.push(reply);
                self.start_after_stop = false;
                self.stop();
            }
            Command::Reload(reply) => {
                self.reload_waiters.push(reply);
                if self.next.is_some() {
                    self.reload_again = true;
                } else {
                    self.begin_reload();
                }
            }
            Command::Restart(reply) => {
                self.waiters.push(reply);
                self.tracker.reset();
                if self.slots.iter().any(|s| s.instance.is_some()) {
                    self.start_after_stop = true;
                    self.stop();
                } else {
                    self.start();
                }
            }
        }
    }

    fn release_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Starts every empty slot now.
    fn start(&mut self) {
        self.want_running = true;
        self.cooldown_due = None;
        if let Some(unmet) = self.daemon.unmet_dependencies(&self.manifest) {
            self.entry.status().last_error = Some(format!("blocked: unmet dependencies {}", unmet.join(", ")));
            self.set_state(PluginState::Blocked { unmet });
            return;
        }
        if !self.entry.status().state.is_running() {
            self.set_state(PluginState::Starting);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].instance.is_none() {
                self.slots[i].due = None;
                self.launch(i);
            }
        }
    }

    fn launch(&mut self, slot: usize) {
        match self.spawn_instance(&self.manifest.clone()) {
            Ok(inst) => {
                self.slots[slot].instance = Some(inst);
                self.slots[slot].ready = false;
            }
            Err(e) => self.start_failed(slot, e),
        }
    }

    /// Spawns one instance of `m` (its events come to this actor).
    fn spawn_instance(&self, m: &Arc<Manifest>) -> Result<Arc<Instance>, String> {
        let id = self.daemon.next_instance_id();
        let spec = self.instance_spec(m, id)?;
        instance::launch(id, spec, self.daemon.clone(), self.entry.log.clone(), self.events_tx.clone())
            .map_err(|e| e.to_string())
    }

    fn instance_spec(&self, m: &Arc<Manifest>, id: u64) -> Result<InstanceSpec, String> {
        instance_spec(&self.daemon, &self.entry.name, &self.entry.dir, m, id)
    }

    /// A slot could not even be spawned: treat it like an exit.
    fn start_failed(&mut self, slot: usize, error: String) {
        self.log().warn(format!("cannot start: {error}"));
        let exit = ExitReport { reason: Some(error), ..ExitReport::default() };
        self.after_unexpected_exit(slot, &exit);
    }

    fn stop(&mut self) {
        self.want_running = false;
        self.cooldown_due = None;
        for s in &mut self.slots {
            s.due = None;
        }
        let mut any = false;
        for s in &self.slots {
            if let Some(i) = &s.instance {
                i.stop();
                any = true;
            }
        }
        if any {
            self.entry.set_routes(Vec::new());
            self.set_state(PluginState::Stopping);
        } else {
            self.finish_stop();
        }
    }

    fn finish_stop(&mut self) {
        if std::mem::take(&mut self.start_after_stop) {
            // A restart: go straight on, so waiters hear about the new instance, not the stop.
            self.start();
            return;
        }
        if self.entry.status().state == PluginState::Failed {
            self.release_waiters();
        } else {
            self.set_state(PluginState::Stopped);
        }
    }

    fn slot_of(&self, id: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.instance.as_ref().is_some_and(|i| i.id == id))
    }

    fn publish_routes(&self) {
        let routes: Vec<_> = self.slots.iter().filter(|s| s.ready).filter_map(|s| s.instance.clone()).collect();
        self.entry.set_routes(routes);
    }

    fn on_event(&mut self, ev: InstanceEvent) {
        let id = match &ev {
            InstanceEvent::Ready { id, .. }
            | InstanceEvent::Exited { id, .. }
            | InstanceEvent::SpawnFailed { id, .. } => *id,
        };
        if let Some(pos) = self.retiring.iter().position(|i| i.id == id) {
            if matches!(ev, InstanceEvent::Exited { .. } | InstanceEvent::SpawnFailed { .. }) {
                self.retiring.remove(pos);
            }
            return;
        }
        if self.next.as_ref().is_some_and(|n| n.slots.iter().any(|s| s.instance.as_ref().is_some_and(|i| i.id == id))) {
            return self.on_next_generation_event(ev);
        }
        match ev {
            InstanceEvent::SpawnFailed { id, error } => {
                let Some(slot) = self.slot_of(id) else { return };
                self.slots[slot] = Slot::default();
                self.publish_routes();
                if self.want_running {
                    self.start_failed(slot, error);
                } else if self.slots.iter().all(|s| s.instance.is_none()) {
                    self.finish_stop();
                }
            }
            InstanceEvent::Ready { id, result } => {
                let Some(slot) = self.slot_of(id) else { return };
                match result {
                    Ok(services) => {
                        self.slots[slot].ready = true;
                        self.entry.status().registered = services;
                        self.daemon.registry_changed();
                        if self.want_running {
                            self.publish_routes();
                            if self.slots.iter().all(|s| s.ready) {
                                self.entry.status().last_error = None;
                                self.log().plugind("running".into());
                                self.set_state(PluginState::Running);
                            }
                        } else if let Some(i) = &self.slots[slot].instance {
                            i.stop();
                        }
                    }
                    Err(e) => {
                        self.log().warn(format!("start failed: {e}"));
                        self.entry.status().last_error = Some(e);
                    }
                }
            }
            InstanceEvent::Exited { id, exit } => {
                let Some(slot) = self.slot_of(id) else { return };
                let was_ready = self.slots[slot].ready;
                self.slots[slot] = Slot::default();
                self.publish_routes();
                {
                    let mut st = self.entry.status();
                    st.last_exit = Some(LastExit {
                        code: exit.code,
                        signal: exit.signal.map(instance::signal_name),
                        limit: exit.limit.map(str::to_owned),
                        ts: Some(crate::time::now_rfc3339()),
                    });
                }
                self.note(if exit.limit.is_some() { "limit" } else { "exit" }, exit.describe());
                if exit.requested || !self.want_running {
                    if self.slots.iter().all(|s| s.instance.is_none()) {
                        self.finish_stop();
                    }
                    return;
                }
                let _ = was_ready;
                self.after_unexpected_exit(slot, &exit);
            }
        }
    }

    /// Applies the restart policy to a slot whose process ended (or never started).
    fn after_unexpected_exit(&mut self, slot: usize, exit: &ExitReport) {
        let clean = exit.is_clean();
        if !clean {
            let msg = format!("instance {}", exit.describe());
            let mut st = self.entry.status();
            // Keep a more specific start error (init failed…) if one was just recorded.
            if exit.reason.is_some() || st.last_error.is_none() || st.state.is_running() {
                st.last_error = Some(msg);
            }
        }
        match self.tracker.after_exit(&self.manifest.restart, clean, Instant::now()) {
            AfterExit::RestartIn(delay) => {
                self.slots[slot].due = Some(Instant::now() + delay);
                self.note("restart", format!("in {} ms", delay.as_millis()));
                self.log().plugind(format!("restarting in {} ms", delay.as_millis()));
                if !self.slots.iter().any(|s| s.ready) {
                    self.set_state(PluginState::Restarting { delay });
                }
            }
            AfterExit::Fail => {
                self.want_running = false;
                for s in &mut self.slots {
                    s.due = None;
                    if let Some(i) = &s.instance {
                        i.kill();
                    }
                }
                self.entry.set_routes(Vec::new());
                let detail = format!(
                    "more than {} restarts within {} s; giving up until `pluginctl restart`",
                    self.manifest.restart.max_restarts, self.manifest.restart.window_s
                );
                self.log().warn(format!("failed: {detail}"));
                self.note("failed", detail);
                if let Some(c) = self.manifest.restart.cooldown_s {
                    // None (never) for a period past the end of time (`cooldown_s: u64::MAX`).
                    self.cooldown_due = Instant::now().checked_add(Duration::from_secs(c));
                }
                self.set_state(PluginState::Failed);
            }
            AfterExit::Stop => {
                if self.slots.iter().all(|s| s.instance.is_none()) {
                    self.want_running = false;
                    self.set_state(PluginState::Stopped);
                }
            }
        }
    }

    /// Re-reads the manifest and, if the plugin is running, starts a new generation beside the
    /// old one (SPEC §5 hot reload). The old one keeps serving until the new one is ready.
    fn begin_reload(&mut self) {
        let version = semver::Version::parse(crate::VERSION).expect("UNWRAP: crate version is semver");
        let found = crate::discovery::load(&self.entry.dir, &version);
        let m = match found.manifest {
            Ok(mut m) if m.name == *self.entry.name => {
                // The operator's overrides (config file) apply to a reloaded manifest too.
                self.daemon.apply_overrides(&mut m);
                Arc::new(m)
            }
            Ok(m) => {
                // A new name is a removal plus an addition: the daemon's rescan does both.
                self.log().plugind(format!("the manifest now names plugin {:?}: rescanning", m.name));
                let daemon = self.daemon.clone();
                tokio::spawn(async move { daemon.reload().await });
                return self.finish_reload();
            }
            Err(e) => return self.reload_failed(e),
        };
        self.log().plugind(format!("reloading: version {} → {}", self.manifest.version, m.version));
        let state = self.entry.status().state.clone();
        if !state.is_running() {
            // Nothing is serving: take the new manifest and start over if it was meant to run.
            self.adopt_manifest(m);
            self.finish_reload();
            if matches!(
                state,
                PluginState::Failed
                    | PluginState::Restarting { .. }
                    | PluginState::Blocked { .. }
                    | PluginState::Starting
            ) {
                for s in &self.slots {
                    if let Some(i) = &s.instance {
                        i.kill();
                    }
                }
                self.tracker.reset();
                self.start();
            }
            return;
        }
        let mut next = NextGeneration { manifest: m.clone(), slots: Vec::new() };
        for _ in 0..m.instances {
            match self.spawn_instance(&m) {
                Ok(i) => next.slots.push(Slot { instance: Some(i), ready: false, due: None }),
                Err(e) => {
                    for s in &next.slots {
                        if let Some(i) = &s.instance {
                            i.kill();
                        }
                    }
                    return self.reload_failed(e);
                }
            }
        }
        self.next = Some(next);
    }

    fn on_next_generation_event(&mut self, ev: InstanceEvent) {
        let Some(next) = &mut self.next else { return };
        match ev {
            InstanceEvent::Ready { id, result: Ok(services) } => {
                if let Some(s) = next.slots.iter_mut().find(|s| s.instance.as_ref().is_some_and(|i| i.id == id)) {
                    s.ready = true;
                }
                if next.slots.iter().all(|s| s.ready) {
                    self.entry.status().registered = services;
                    self.daemon.registry_changed();
                    self.switch_to_next();
                }
            }
            InstanceEvent::Ready { result: Err(e), .. } => self.abort_next(e),
            InstanceEvent::SpawnFailed { id, error } => {
                next.slots.retain(|s| s.instance.as_ref().is_none_or(|i| i.id != id));
                self.abort_next(error);
            }
            InstanceEvent::Exited { id, exit } => {
                next.slots.retain(|s| s.instance.as_ref().is_none_or(|i| i.id != id));
                self.abort_next(format!("new instance {}", exit.describe()));
            }
        }
    }

    /// The new generation is ready: route to it, let the old one drain, tell dependents.
    fn switch_to_next(&mut self) {
        let Some(next) = self.next.take() else { return };
        let old = std::mem::replace(&mut self.slots, next.slots);
        self.adopt_manifest(next.manifest);
        self.publish_routes();
        for s in old {
            if let Some(i) = s.instance {
                i.retire();
                self.retiring.push(i);
            }
        }
        {
            let mut st = self.entry.status();
            st.last_error = None;
            st.running_since = Some(Instant::now());
        }
        self.note("reload", format!("now serving version {}", self.manifest.version));
        self.log().plugind(format!("reloaded: serving version {}", self.manifest.version));
        self.daemon.notify_dependents(&self.entry.name, &self.entry.snapshot().services, ServiceEvent::Replaced);
        self.daemon.reloaded(&self.entry);
        self.finish_reload();
    }

    /// The new generation failed: keep the old one, say why.
    fn abort_next(&mut self, why: String) {
        if let Some(next) = self.next.take() {
            for s in next.slots {
                if let Some(i) = s.instance {
                    i.kill();
                    self.retiring.push(i);
                }
            }
        }
        self.reload_failed(why);
    }

    fn reload_failed(&mut self, why: String) {
        self.log().warn(format!("reload failed, the running version keeps serving: {why}"));
        {
            let mut st = self.entry.status();
            st.last_error = Some(format!("reload failed: {why}"));
        }
        self.note("reload", format!("failed: {why}"));
        self.finish_reload();
    }

    /// Answers reload waiters, or starts the one more reload a change during this one asked for.
    fn finish_reload(&mut self) {
        if std::mem::take(&mut self.reload_again) {
            return self.begin_reload();
        }
        for w in self.reload_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn adopt_manifest(&mut self, m: Arc<Manifest>) {
        if m.instances as usize != self.slots.len() && self.next.is_none() {
            self.slots.resize_with(m.instances as usize, Slot::default);
        }
        {
            let mut st = self.entry.status();
            st.version = m.version.to_string();
            st.manifest = Some(m.clone());
        }
        self.daemon.registry_changed();
        self.manifest = m;
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.cooldown_due.is_some_and(|t| t <= now) {
            self.cooldown_due = None;
            self.log().plugind("cool-down elapsed: one more start".into());
            self.start();
            return;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].due.is_some_and(|t| t <= now) {
                self.slots[i].due = None;
                if self.want_running {
                    self.entry.status().restarts += 1;
                    if !self.entry.status().state.is_running() {
                        self.set_state(PluginState::Starting);
                    }
                    self.launch(i);
                }
            }
        }
    }
}

/// Everything instance `id` of plugin `name` (in `dir`, with manifest `m`) needs to start.
pub fn instance_spec(
    daemon: &Daemon,
    name: &Arc<str>,
    dir: &std::path::Path,
    m: &Arc<Manifest>,
    id: u64,
) -> Result<InstanceSpec, String> {
    let argv = spawn::argv_for(m, dir).map_err(|e| e.to_string())?;
    let paths = daemon.paths();
    let data_dir = m.grants(plugind_protocol::manifest::Permission::Storage).then(|| paths.data_dir(&m.name));
    if let Some(d) = &data_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create data dir {}: {e}", d.display()))?;
    }
    let tmp_dir = paths.tmp_dir(&m.name, id);
    let env = spawn::plugin_env(m, data_dir.as_deref(), &tmp_dir, &daemon.operator_env(&m.name));
    Ok(InstanceSpec {
        plugin: name.clone(),
        manifest: m.clone(),
        plan: SpawnPlan { argv, cwd: dir.to_path_buf(), env, limits: m.limits.clone() },
        config: daemon.plugin_config(m),
        data_dir,
        tmp_dir,
        ping_every: daemon.ping_interval(),
    })
}
