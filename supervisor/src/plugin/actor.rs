//! The plugin actor: the one task that changes a plugin's state.
//!
//! A thin async shell around the pure [`Machine`] (`plugin/machine.rs`), which holds every
//! lifecycle rule. The shell turns what happens into machine [`Event`]s — commands from the
//! daemon, [`InstanceEvent`]s from its instances, its timer — and carries out the [`Action`]s that
//! come back: it spawns and stops processes, publishes the routing table and the status, and
//! answers commands. It decides nothing itself.

use crate::logs::PluginLog;
use crate::plugin::context::{ActorHost, InstanceHost};
use crate::plugin::entry::{Command, PluginEntry, Reply};
use crate::plugin::instance::{self, Instance, InstanceEvent, InstanceSpec};
use crate::plugin::machine::{self, Action, Event, Key, Leave, Machine, Ticket, Unmet};
use crate::plugin::state::PluginState;
use plugind_protocol::control::LastExit;
use plugind_protocol::manifest::Manifest;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The actor's state: the machine, and the processes and replies its keys and tickets name.
pub struct PluginActor {
    entry: Arc<PluginEntry>,
    /// The daemon, seen through what a lifecycle may ask of it.
    host: Arc<dyn ActorHost>,
    machine: Machine,
    /// The process of each machine key.
    instances: HashMap<Key, Arc<Instance>>,
    /// Machine key of each instance id (instance events carry the id).
    keys: HashMap<u64, Key>,
    /// Replies owed, by ticket.
    replies: HashMap<Ticket, Reply>,
    next_ticket: Ticket,
    events_tx: mpsc::UnboundedSender<InstanceEvent>,
    /// Events the shell produced itself (a spawn that failed at once), fed before anything else.
    own: VecDeque<Event>,
    /// `instances` changed since the entry's list of processes was last published.
    processes_changed: bool,
    /// What the plugin's instances of every generation share: its log, its turn at long stdout
    /// lines, its rate of chatter.
    shared: instance::PluginShared,
    /// The ticket of [`Command::Remove`]'s stop, once it came: the actor ends when it is
    /// answered and no instance is left.
    removing: Option<Ticket>,
}

/// Why a command to a removed plugin did not take effect.
const REMOVED: &str = "the plugin was removed (its directory went away, or its manifest now names another plugin)";

impl PluginActor {
    /// Spawns the actor of a loaded plugin; returns its entry.
    pub fn spawn(
        entry_of: impl FnOnce(mpsc::UnboundedSender<Command>) -> Arc<PluginEntry>,
        host: Arc<dyn ActorHost>,
        manifest: Arc<Manifest>,
    ) -> Arc<PluginEntry> {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let entry = entry_of(ctl_tx);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let actor = PluginActor {
            entry: entry.clone(),
            host,
            machine: Machine::new(manifest),
            instances: HashMap::new(),
            keys: HashMap::new(),
            replies: HashMap::new(),
            next_ticket: 1,
            events_tx,
            own: VecDeque::new(),
            processes_changed: false,
            shared: instance::PluginShared::new(entry.log.clone()),
            removing: None,
        };
        tokio::spawn(actor.run(ctl_rx, events_rx));
        entry
    }

    /// Records a lifecycle event in the history and publishes it to `events.subscribe`.
    fn note(&self, event: &str, detail: String) {
        self.entry.status().record(event, detail.clone());
        self.host.publish_event(&self.entry.name, event, detail);
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
            tokio::select! {
                cmd = ctl.recv() => match cmd {
                    Some(cmd) => {
                        let ev = self.command_event(cmd);
                        if let Some(ev) = ev {
                            self.feed(ev);
                        }
                    }
                    // Never: the entry this actor holds holds the sender. A plugin is ended by
                    // `Command::Remove` (below).
                    None => break,
                },
                Some(ev) = events.recv() => {
                    let ev = self.instance_event(ev);
                    if let Some(ev) = ev {
                        self.feed(ev);
                    }
                }
                _ = crate::time::sleep_until_opt(self.machine.next_deadline()) => {
                    let unmet = self.unmet(&self.machine.manifest().clone());
                    self.feed(Event::Tick { unmet });
                }
            }
            if self.removing.is_some_and(|t| !self.replies.contains_key(&t)) && self.instances.is_empty() {
                // Removed and stopped: nothing of the plugin is left to run. Commands still
                // queued are answered as removed when the queue is dropped with the actor.
                for (_, r) in self.replies.drain() {
                    r.answer(machine::Outcome::Failed(REMOVED.into()), || self.entry.snapshot());
                }
                break;
            }
        }
    }

    fn unmet(&self, m: &Manifest) -> Unmet {
        self.host.unmet_dependencies(m)
    }

    fn ticket(&mut self, reply: Reply) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.replies.insert(t, reply);
        t
    }

    /// The machine event of a command (None if the shell answered it itself).
    fn command_event(&mut self, cmd: Command) -> Option<Event> {
        let current = self.machine.manifest().clone();
        if self.removing.is_some() {
            // Removed: no command starts it again (a start racing with the removal's stop ran
            // the plugin on, out of the table, its processes beyond reach: audit 18).
            let reply = match cmd {
                Command::Start(r) | Command::Stop(r) | Command::Reload(r) | Command::Remove(r) => r,
                Command::Restart { reply, .. } => reply,
            };
            reply.answer(machine::Outcome::Failed(REMOVED.into()), || self.entry.snapshot());
            return None;
        }
        Some(match cmd {
            Command::Remove(reply) => {
                let ticket = self.ticket(reply);
                self.removing = Some(ticket);
                Event::Stop { ticket }
            }
            Command::Start(reply) => Event::Start { ticket: self.ticket(reply), unmet: self.unmet(&current) },
            Command::Stop(reply) => Event::Stop { ticket: self.ticket(reply) },
            Command::Restart { hard, reply } => {
                Event::Restart { ticket: self.ticket(reply), hard, unmet: self.unmet(&current) }
            }
            Command::Reload(reply) => {
                let manifest = match self.read_manifest() {
                    Some(m) => m,
                    None => {
                        reply.answer(machine::Outcome::Settled, || self.entry.snapshot());
                        return None;
                    }
                };
                let unmet = manifest.as_ref().ok().and_then(|m| self.unmet(m));
                Event::Reload { ticket: self.ticket(reply), manifest, unmet }
            }
        })
    }

    /// Re-reads the plugin's manifest. None when it now names another plugin: that is a removal
    /// plus an addition, which the daemon's rescan does.
    fn read_manifest(&self) -> Option<Result<Arc<Manifest>, String>> {
        let version = semver::Version::parse(crate::VERSION).expect("UNWRAP: crate version is semver");
        let found = crate::discovery::load(&self.entry.dir, &version);
        match found.manifest {
            Ok(mut m) if m.name == *self.entry.name => {
                // A rescan refuses a cycle of required dependencies; so does a reload (audit 19:
                // an edit that closed one was adopted, and a rescan then reloaded both ends).
                if let Some(cycle) = self.host.dependency_cycle(&self.entry.name, &m) {
                    return Some(Err(crate::discovery::cycle_error(&self.entry.dir, &cycle)));
                }
                // The operator's overrides (config file) apply to a reloaded manifest too.
                self.host.apply_overrides(&mut m);
                Some(Ok(Arc::new(m)))
            }
            Ok(m) => {
                self.log().plugind(format!("the manifest now names plugin {:?}: rescanning", m.name));
                self.host.clone().rescan();
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The machine event of an instance report; records how an instance ended.
    fn instance_event(&mut self, ev: InstanceEvent) -> Option<Event> {
        match ev {
            InstanceEvent::Ready { id, result } => Some(Event::Ready { key: *self.keys.get(&id)?, result }),
            InstanceEvent::SpawnFailed { id, error } => {
                let key = self.keys.remove(&id)?;
                self.instances.remove(&key);
                self.processes_changed = true;
                self.log().warn(format!("cannot start: {error}"));
                Some(Event::Exited { key, exit: spawn_failure(error) })
            }
            InstanceEvent::Exited { id, exit } => {
                let key = self.keys.remove(&id)?;
                self.instances.remove(&key);
                self.processes_changed = true;
                self.entry.status().last_exit = Some(LastExit {
                    code: exit.code,
                    signal: exit.signal.map(instance::signal_name),
                    limit: exit.limit.map(str::to_owned),
                    ts: Some(crate::time::now_rfc3339()),
                });
                self.note(if exit.limit.is_some() { "limit" } else { "exit" }, exit.describe());
                Some(Event::Exited { key, exit: machine::Exit { clean: exit.is_clean(), describe: exit.describe() } })
            }
        }
    }

    /// Steps the machine with `ev` (and with whatever the actions give back), carrying out the
    /// actions in order.
    fn feed(&mut self, ev: Event) {
        self.own.push_back(ev);
        while let Some(ev) = self.own.pop_front() {
            let actions = self.machine.step(Instant::now(), ev);
            for a in actions {
                self.act(a);
            }
        }
        self.publish_processes();
    }

    /// Shows the instances' processes in the entry, if they changed.
    fn publish_processes(&mut self) {
        if std::mem::take(&mut self.processes_changed) {
            self.entry.set_processes(self.instances.values().cloned().collect());
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn { key, manifest } => self.launch(key, &manifest),
            Action::Leave { key, how } => {
                if let Some(i) = self.instances.get(&key) {
                    match how {
                        Leave::Retire => i.retire(),
                        Leave::Stop => i.stop(),
                        Leave::Kill => i.kill(),
                    }
                }
            }
            Action::Route(keys) => {
                self.entry.set_routes(keys.iter().filter_map(|k| self.instances.get(k).cloned()).collect());
            }
            Action::Answer { ticket, outcome } => {
                if let Some(r) = self.replies.remove(&ticket) {
                    // The status as the command leaves it, processes included.
                    r.answer(outcome, || {
                        self.publish_processes();
                        self.entry.snapshot()
                    });
                }
            }
            Action::State(state) => self.set_state(state),
            Action::Adopt(m) => {
                {
                    let mut st = self.entry.status();
                    st.version = m.version.to_string();
                    st.manifest = Some(m);
                }
                self.host.registry_changed();
            }
            Action::Registered(services) => {
                self.entry.status().registered = services;
                self.host.registry_changed();
            }
            Action::LastError(e) => self.entry.status().last_error = e,
            Action::Note { event, detail } => self.note(event, detail),
            Action::Log { warn: true, message } => self.log().warn(message),
            Action::Log { warn: false, message } => self.log().plugind(message),
            Action::Restarted => self.entry.status().restarts += 1,
            Action::Swapped => {
                self.entry.status().running_since = Some(Instant::now());
                self.host.swapped(&self.entry);
            }
        }
    }

    fn set_state(&mut self, state: PluginState) {
        let mut st = self.entry.status();
        let name = state.as_str();
        if state.is_running() {
            st.running_since = Some(Instant::now());
            drop(st);
            self.log().plugind("running".into());
            st = self.entry.status();
        }
        st.record("state", name);
        let was_running = st.state.is_running();
        st.state = state;
        drop(st);
        self.host.state_changed(&self.entry, name, was_running);
    }

    /// Starts the process of machine key `key`; a failure to even begin comes back as its exit.
    fn launch(&mut self, key: Key, m: &Arc<Manifest>) {
        let id = self.host.next_instance_id();
        let settings = self.host.instance_settings(m);
        let host: Arc<dyn InstanceHost> = self.host.clone();
        let started = InstanceSpec::new(&settings, &self.entry.name, &self.entry.dir, m, id).and_then(|spec| {
            instance::launch(id, spec, host, self.shared.clone(), self.events_tx.clone()).map_err(|e| e.to_string())
        });
        match started {
            Ok(inst) => {
                self.keys.insert(id, key);
                self.instances.insert(key, inst);
                self.processes_changed = true;
            }
            Err(error) => {
                self.log().warn(format!("cannot start: {error}"));
                self.own.push_back(Event::Exited { key, exit: spawn_failure(error) });
            }
        }
    }
}

/// The exit of an instance that never started.
fn spawn_failure(error: String) -> machine::Exit {
    // Not `instance::ExitReport::describe`: there was no process, so no "(ended)".
    machine::Exit { clean: false, describe: format!("could not be started: {error}") }
}
