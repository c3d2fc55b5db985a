//! A model-based test of the plugin lifecycle machine (`plugin/machine.rs`).
//!
//! [`World`] plays everything around one [`Machine`]: the operator (start, stop, restart both
//! ways, reload to another `instances` or to a broken manifest, start with a dependency
//! missing), the processes (each `Spawn` action makes one; they become ready, fail their
//! handshake, fail to start at all, crash, or exit once told to go) and the clock. It keeps its own account of the
//! processes and tickets, from the actions alone, and after every step checks:
//! - every answer names a ticket issued and not answered before;
//! - actions name processes that exist; the machine's instances are exactly the live processes;
//! - routes name only ready processes nobody told to go, and none while the plugin is stopped,
//!   stopping or failed; a stopped plugin has no process;
//! - once a swap completes, every process of an older generation has been told to go;
//! - a command is answered `settled` only when the plugin has (running with every instance
//!   ready, or stopped, failed or blocked with no process left); a stop may also be answered
//!   the moment the plugin is stopped with no process, before a start that waited for it.
//!
//! Then [`World::settle`] lets time pass with no more commands or crashes (processes get ready,
//! those told to go exit, timers fire) and checks convergence: every ticket answered exactly
//! once; a plugin desired running has exactly `instances` ready processes, all routed, all of the
//! serving generation; a stopped one has none.

#![allow(dead_code)]

use plugind::plugin::machine::{Action, Event, Exit, Key, Machine, Outcome, Phase, Ticket};
use plugind::plugin::state::PluginState;
use plugind_protocol::manifest::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One thing that happens.
#[derive(Debug, Clone)]
pub enum Step {
    /// `plugins.start`.
    Start,
    /// `plugins.start` while a required dependency is missing.
    StartBlocked,
    /// `plugins.stop`.
    Stop,
    /// `plugins.restart`.
    Restart {
        /// `--hard`.
        hard: bool,
    },
    /// The manifest changed to this many `instances` (0: it no longer loads).
    Reload(u32),
    /// A starting process answers its handshake (or fails it).
    Ready {
        /// Which of the starting processes.
        pick: usize,
        /// Answered `register`.
        ok: bool,
    },
    /// A process that has not answered its handshake yet could not be started at all (no such
    /// program, a sandbox set-up that failed): its only report is its exit.
    SpawnFail {
        /// Which of the starting processes.
        pick: usize,
    },
    /// A live process exits on its own.
    Crash {
        /// Which.
        pick: usize,
        /// With code 0.
        clean: bool,
    },
    /// A process told to go exits.
    Exit {
        /// Which.
        pick: usize,
    },
    /// Time passes.
    Wait {
        /// How long.
        ms: u64,
    },
}

#[derive(Debug)]
struct Proc {
    ready: bool,
    told: bool,
}

/// The machine and everything around it.
pub struct World {
    m: Machine,
    now: Instant,
    procs: BTreeMap<Key, Proc>,
    issued: BTreeSet<Ticket>,
    /// The tickets of stops.
    stops: BTreeSet<Ticket>,
    answered: BTreeMap<Ticket, Outcome>,
    next_ticket: Ticket,
    routes: Vec<Key>,
    state: PluginState,
    log: Vec<String>,
}

/// A manifest with `instances` processes and a small restart budget.
pub fn manifest(instances: u32) -> Arc<Manifest> {
    let doc = serde_json::json!({
        "name": "p", "version": "1.0.0", "main": "p.py", "instances": instances,
        "restart": { "max_restarts": 3, "window_s": 60, "cooldown_s": 30 },
    });
    Arc::new(Manifest::from_value(&doc).expect("a valid manifest"))
}

impl World {
    /// A stopped plugin of `instances` processes.
    pub fn new(instances: u32) -> Self {
        World {
            m: Machine::new(manifest(instances)),
            now: Instant::now(),
            procs: BTreeMap::new(),
            issued: BTreeSet::new(),
            stops: BTreeSet::new(),
            answered: BTreeMap::new(),
            next_ticket: 1,
            routes: Vec::new(),
            state: PluginState::Stopped,
            log: Vec::new(),
        }
    }

    fn ticket(&mut self) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.issued.insert(t);
        t
    }

    fn pick(&self, pick: usize, f: impl Fn(&Proc) -> bool) -> Option<Key> {
        let keys: Vec<Key> = self.procs.iter().filter(|(_, p)| f(p)).map(|(k, _)| *k).collect();
        (!keys.is_empty()).then(|| keys[pick % keys.len()])
    }

    /// Applies one step (a step with nothing to act on does nothing) and checks the invariants.
    pub fn apply(&mut self, step: &Step) {
        let ev = match *step {
            Step::Start => Event::Start { ticket: self.ticket(), unmet: None },
            Step::StartBlocked => Event::Start { ticket: self.ticket(), unmet: Some(vec!["dep@^1".into()]) },
            Step::Stop => {
                let ticket = self.ticket();
                self.stops.insert(ticket);
                Event::Stop { ticket }
            }
            Step::Restart { hard } => Event::Restart { ticket: self.ticket(), hard, unmet: None },
            Step::Reload(n) => Event::Reload {
                ticket: self.ticket(),
                manifest: if n == 0 { Err("broken manifest".into()) } else { Ok(manifest(n)) },
                unmet: None,
            },
            Step::Ready { pick, ok } => {
                let Some(key) = self.pick(pick, |p| !p.ready && !p.told) else { return };
                let result = if ok { Ok(Vec::new()) } else { Err("init failed".into()) };
                if ok {
                    self.procs.get_mut(&key).expect("picked").ready = true;
                }
                Event::Ready { key, result }
            }
            Step::SpawnFail { pick } => {
                let Some(key) = self.pick(pick, |p| !p.ready && !p.told) else { return };
                self.procs.remove(&key);
                Event::Exited { key, exit: Exit { clean: false, describe: "cannot start: no such file".into() } }
            }
            Step::Crash { pick, clean } => {
                let Some(key) = self.pick(pick, |_| true) else { return };
                self.procs.remove(&key);
                Event::Exited { key, exit: Exit { clean, describe: "crashed".into() } }
            }
            Step::Exit { pick } => {
                let Some(key) = self.pick(pick, |p| p.told) else { return };
                self.procs.remove(&key);
                Event::Exited { key, exit: Exit { clean: true, describe: "stopped".into() } }
            }
            Step::Wait { ms } => {
                self.now += Duration::from_millis(ms);
                Event::Tick { unmet: None }
            }
        };
        self.feed(ev);
    }

    fn feed(&mut self, ev: Event) {
        self.log.push(format!("{ev:?}"));
        let actions = self.m.step(self.now, ev);
        let mut swapped = false;
        let mut settled_answer = false;
        for a in actions {
            self.log.push(format!("  -> {a:?}"));
            match a {
                Action::Spawn { key, .. } => {
                    assert!(self.procs.insert(key, Proc { ready: false, told: false }).is_none(), "key {key} reused");
                }
                Action::Leave { key, .. } => match self.procs.get_mut(&key) {
                    Some(p) => p.told = true,
                    None => self.fail(&format!("leave of unknown {key}")),
                },
                Action::Route(keys) => self.routes = keys,
                Action::Answer { ticket, outcome } => {
                    assert!(self.issued.contains(&ticket), "answer to a ticket never issued\n{}", self.trace());
                    // Settled when the step ends, or stopped with no process at this point of
                    // it: a stop is answered `stopped` before the start that waited for it.
                    let stopped_here =
                        self.stops.contains(&ticket) && self.state == PluginState::Stopped && self.procs.is_empty();
                    settled_answer |= outcome == Outcome::Settled && !stopped_here;
                    if self.answered.insert(ticket, outcome).is_some() {
                        self.fail(&format!("ticket {ticket} answered twice"));
                    }
                }
                Action::State(s) => self.state = s,
                Action::Swapped => swapped = true,
                _ => {}
            }
        }
        self.check(swapped);
        if settled_answer && !self.m.is_settled() {
            self.fail(&format!("a command answered `settled` while {} has not settled", self.state.as_str()));
        }
    }

    fn trace(&self) -> String {
        self.log.join("\n")
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- trace ---\n{}", self.trace())
    }

    fn check(&self, swapped: bool) {
        let ours: BTreeSet<Key> = self.procs.keys().copied().collect();
        let theirs: BTreeSet<Key> = self.m.instances().keys().copied().collect();
        if ours != theirs {
            self.fail(&format!("live processes {ours:?} but the machine knows {theirs:?}"));
        }
        if self.state != *self.m.state() {
            self.fail("published state differs from the machine's");
        }
        for k in &self.routes {
            match self.procs.get(k) {
                Some(p) if p.ready && !p.told => {}
                _ => self.fail(&format!("route to {k}, which is not a ready process still serving")),
            }
        }
        if matches!(self.state, PluginState::Stopped | PluginState::Stopping | PluginState::Failed)
            && !self.routes.is_empty()
        {
            self.fail(&format!("routes {:?} while {}", self.routes, self.state.as_str()));
        }
        if self.state == PluginState::Stopped && !self.procs.is_empty() {
            self.fail(&format!("stopped with processes {:?}", self.procs.keys()));
        }
        if swapped {
            for (k, i) in self.m.instances() {
                if i.gen != self.m.generation() && !self.procs[k].told {
                    self.fail(&format!("swap done but {k} of generation {} was not told to go", i.gen));
                }
            }
        }
        if self.procs.len() > 3 * 8 {
            self.fail(&format!("{} processes at once", self.procs.len()));
        }
    }

    /// No more commands or crashes: processes answer, those told to go exit, timers fire.
    /// Then checks convergence.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            if let Some(key) = self.pick(0, |p| p.told) {
                self.procs.remove(&key);
                self.feed(Event::Exited { key, exit: Exit { clean: true, describe: "stopped".into() } });
            } else if let Some(key) = self.pick(0, |p| !p.ready) {
                self.procs.get_mut(&key).expect("picked").ready = true;
                self.feed(Event::Ready { key, result: Ok(Vec::new()) });
            } else if let Some(t) = self.m.next_deadline() {
                self.now = self.now.max(t);
                self.feed(Event::Tick { unmet: None });
            } else {
                break;
            }
        }
        let unanswered: Vec<&Ticket> = self.issued.iter().filter(|t| !self.answered.contains_key(t)).collect();
        if !unanswered.is_empty() {
            self.fail(&format!("tickets never answered: {unanswered:?}"));
        }
        let want = self.m.manifest().instances as usize;
        if self.m.desired_running() && !matches!(self.state, PluginState::Blocked { .. }) {
            if self.state != PluginState::Running {
                self.fail(&format!("desired running but settled {}", self.state.as_str()));
            }
            if self.procs.len() != want || self.routes.len() != want {
                self.fail(&format!("{} processes, {} routes, want {want}", self.procs.len(), self.routes.len()));
            }
            if self.m.instances().values().any(|i| i.gen != self.m.generation() || i.phase != Phase::Ready) {
                self.fail("an instance of another generation, or not ready, is left");
            }
            if self.m.swapping() {
                self.fail("a swap never ended");
            }
        } else {
            if !self.procs.is_empty() || !self.routes.is_empty() {
                self.fail(&format!("not running but {} processes, routes {:?}", self.procs.len(), self.routes));
            }
            if !matches!(self.state, PluginState::Stopped | PluginState::Failed | PluginState::Blocked { .. }) {
                self.fail(&format!("settled in {}", self.state.as_str()));
            }
        }
    }
}
