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
        };
        tokio::spawn(actor.run(ctl_rx, events_rx));
        entry
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
                _ = sleep_until_opt(next_due) => self.on_timer(),
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
        let id = self.daemon.next_instance_id();
        let spec = match self.instance_spec(id) {
            Ok(s) => s,
            Err(e) => return self.start_failed(slot, e),
        };
        match instance::launch(id, spec, self.daemon.clone(), self.entry.log.clone(), self.events_tx.clone()) {
            Ok(inst) => {
                self.slots[slot].instance = Some(inst);
                self.slots[slot].ready = false;
            }
            Err(e) => self.start_failed(slot, e.to_string()),
        }
    }

    fn instance_spec(&self, id: u64) -> Result<InstanceSpec, String> {
        let m = &self.manifest;
        let argv = spawn::argv_for(m, &self.entry.dir).map_err(|e| e.to_string())?;
        let paths = self.daemon.paths();
        let data_dir = m.grants(plugind_protocol::manifest::Permission::Storage).then(|| paths.data_dir(&m.name));
        if let Some(d) = &data_dir {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create data dir {}: {e}", d.display()))?;
        }
        let tmp_dir = paths.tmp_dir(&m.name, id);
        let env = spawn::plugin_env(m, data_dir.as_deref(), &tmp_dir, &self.daemon.operator_env(&m.name));
        Ok(InstanceSpec {
            plugin: self.entry.name.clone(),
            manifest: m.clone(),
            plan: SpawnPlan { argv, cwd: self.entry.dir.clone(), env, limits: m.limits.clone() },
            config: self.daemon.plugin_config(m),
            data_dir,
            tmp_dir,
            ping_every: self.daemon.ping_interval(),
        })
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
        match ev {
            InstanceEvent::Ready { id, result } => {
                let Some(slot) = self.slot_of(id) else { return };
                match result {
                    Ok(services) => {
                        self.slots[slot].ready = true;
                        self.entry.status().registered = services;
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
                    st.record("exit", exit.describe());
                }
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
                {
                    let mut st = self.entry.status();
                    st.record("restart", format!("in {} ms", delay.as_millis()));
                }
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
                self.entry.status().record("failed", detail);
                if let Some(c) = self.manifest.restart.cooldown_s {
                    self.cooldown_due = Some(Instant::now() + Duration::from_secs(c));
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

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
