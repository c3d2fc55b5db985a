//! A plugin's lifecycle as one state machine: events in, actions out, no I/O.
//!
//! The actor ([`crate::plugin::actor`]) is a thin shell around a [`Machine`]: it turns operator
//! commands, instance reports and timers into [`Event`]s, feeds them to [`Machine::step`], and
//! carries out the [`Action`]s that come back (spawn, stop, kill, publish routes, answer). Every
//! lifecycle rule lives here, in one place, where a model-based property test
//! (`supervisor/tests/props/lifecycle.rs`) can drive it through any interleaving of events.
//!
//! # The data
//! - `desired`: what the operator asked for last: running or stopped.
//! - Instances by key, each with its generation and [`Phase`]: `Starting` (spawned, handshake
//!   pending), `Ready` (may serve), `Leaving` (told to stop, retire or die; its exit is awaited).
//! - The serving generation (`gen`, with its manifest) and at most one `next` generation being
//!   started beside it (hot reload, graceful restart). A generation is a manifest plus the
//!   instances started from it; only the serving one is routed to.
//! - `failed`, `blocked`, the restart backoff and cool-down instants, and the tickets owed an
//!   answer.
//!
//! The public state ([`PluginState`]) is derived from that data after every step, never stored
//! apart from it, so it cannot disagree with the instances.
//!
//! # Invariants kept after every step
//! 1. Every ticket is answered exactly once: settle-waiters when the plugin settles
//!    ([`Machine::is_settled`]), swap-waiters when their swap completes or is abandoned.
//! 2. Routes hold only `Ready` instances of the serving generation, and none unless the plugin is
//!    desired running: a stopped, stopping or failed plugin has no route.
//! 3. Once a swap completes, every instance of an older generation is `Leaving`; once a stop
//!    completes (`stopped` answered), no instance is left at all.
//! 4. With no further commands, a running plugin converges to exactly `instances` ready
//!    instances of its manifest, and a stopped one to none.

use crate::plugin::state::{AfterExit, PluginState, RestartTracker};
use plugind_protocol::manifest::{Manifest, RestartMode};
use plugind_protocol::methods::ServiceDecl;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How soon a cool-down start is tried again while a killed instance has not reported its exit.
const COOLDOWN_RECHECK: Duration = Duration::from_millis(100);

/// Names one instance within its plugin's machine (the shell maps it to a process).
pub type Key = u64;
/// Names one command owed an answer.
pub type Ticket = u64;
/// Required dependencies no provider serves now, as `name@range` (None: all met).
pub type Unmet = Option<Vec<String>>;

/// Where one instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Spawned; `init` and `register` not answered yet.
    Starting,
    /// Handshake done: it serves calls if its generation does.
    Ready,
    /// Told to go; its exit is awaited.
    Leaving(Leave),
}

/// How an instance is told to go, weakest first (a stronger one may follow a weaker one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leave {
    /// Finish the calls in flight, then stop gracefully (after a swap).
    Retire,
    /// `teardown`, close stdin, SIGTERM, SIGKILL.
    Stop,
    /// SIGKILL now.
    Kill,
}

/// One instance as the machine sees it.
#[derive(Debug, Clone)]
pub struct Inst {
    /// Its generation.
    pub gen: u64,
    /// Its phase.
    pub phase: Phase,
    services: Vec<ServiceDecl>,
}

/// How an instance ended, as far as the lifecycle cares.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Exit code 0, no signal, no error: the plugin chose to end.
    pub clean: bool,
    /// Human summary (`exited with code 3`, `init timed out…`).
    pub describe: String,
}

/// What happens to a plugin.
#[derive(Debug, Clone)]
pub enum Event {
    /// Operator (or boot, or a provider coming up): run it.
    Start {
        /// Answered once the plugin settles.
        ticket: Ticket,
        /// Dependencies unmet now.
        unmet: Unmet,
    },
    /// Operator (or shutdown, or removal): stop every process.
    Stop {
        /// Answered once no process is left.
        ticket: Ticket,
    },
    /// `plugins.restart`: graceful (a new generation beside the old) unless `hard`.
    Restart {
        /// Answered when the new instances serve (or the plugin settles otherwise).
        ticket: Ticket,
        /// Stop, then start.
        hard: bool,
        /// Dependencies unmet now.
        unmet: Unmet,
    },
    /// The manifest was re-read (hot reload, rescan): swap it in.
    Reload {
        /// Answered when the swap completes or fails, or the plugin settles.
        ticket: Ticket,
        /// The new manifest, or why it does not load.
        manifest: Result<Arc<Manifest>, String>,
        /// Dependencies of the new manifest unmet now.
        unmet: Unmet,
    },
    /// An instance finished its handshake.
    Ready {
        /// Which.
        key: Key,
        /// Its services, or why the handshake failed (the instance then ends itself).
        result: Result<Vec<ServiceDecl>, String>,
    },
    /// An instance's process is gone (or never started). Always its last event.
    Exited {
        /// Which.
        key: Key,
        /// How.
        exit: Exit,
    },
    /// Time passed (the shell wakes at [`Machine::next_deadline`]).
    Tick {
        /// Dependencies unmet now (for a start after a cool-down).
        unmet: Unmet,
    },
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin settled; its status tells in which state.
    Settled,
    /// The command did not take effect; why (a graceful restart or reload whose new instance
    /// failed: the old one keeps serving).
    Failed(String),
}

/// What the shell must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Start a process of `manifest` under `key`.
    Spawn {
        /// The new instance.
        key: Key,
        /// Its manifest.
        manifest: Arc<Manifest>,
    },
    /// Tell an instance to go.
    Leave {
        /// Which.
        key: Key,
        /// How.
        how: Leave,
    },
    /// Calls go to exactly these instances from now on.
    Route(Vec<Key>),
    /// Answer a command.
    Answer {
        /// Which.
        ticket: Ticket,
        /// How it ended.
        outcome: Outcome,
    },
    /// The public state changed.
    State(PluginState),
    /// A new manifest is the plugin's from now on.
    Adopt(Arc<Manifest>),
    /// The services the serving generation registered.
    Registered(Vec<ServiceDecl>),
    /// Set or clear `last_error`.
    LastError(Option<String>),
    /// A history entry (and an `events.subscribe` event).
    Note {
        /// Kind.
        event: &'static str,
        /// What.
        detail: String,
    },
    /// A line in the plugin's log, from plugind.
    Log {
        /// A warning rather than information.
        warn: bool,
        /// What.
        message: String,
    },
    /// One more crash restart (the status `restarts` counter).
    Restarted,
    /// A new generation took over: dependents hear `services.changed` `replaced`.
    Swapped,
}

/// A generation starting beside the serving one.
#[derive(Debug)]
struct Next {
    gen: u64,
    manifest: Arc<Manifest>,
    /// Answered when this swap completes or is abandoned.
    waiters: Vec<Ticket>,
    /// Whether a graceful restart (not a reload) started it, for the history and the log.
    restart: bool,
}

/// The lifecycle of one plugin. See the module doc.
#[derive(Debug)]
pub struct Machine {
    /// Whether the operator wants it running.
    running: bool,
    /// Start again once every instance has gone (a hard restart, or a start during a stop).
    start_after_stop: Option<Unmet>,
    /// Crashed too often: no more restarts until asked (or the cool-down).
    failed: bool,
    /// Waiting for these dependencies.
    blocked: Unmet,
    /// Every instance was ready at once since the last start: from then on the plugin is
    /// `running` while any instance serves (one crashed of three is still running), but a
    /// start is `starting` until all of them are.
    up: bool,
    /// The serving generation's manifest.
    manifest: Arc<Manifest>,
    /// The serving generation.
    gen: u64,
    /// The last generation number handed out.
    last_gen: u64,
    next: Option<Next>,
    insts: BTreeMap<Key, Inst>,
    next_key: Key,
    /// When the missing instances of a crashed plugin start again, and the delay that was.
    restart_at: Option<(Instant, Duration)>,
    /// When a `failed` plugin with `cooldown_s` gets one more start.
    cooldown_at: Option<Instant>,
    tracker: RestartTracker,
    /// Answered once the plugin settles.
    waiters: Vec<Ticket>,
    /// Stops: answered once the plugin settles, or once its last instance has gone when a start
    /// waits for that (a stop racing with a start answers `stopped`, whatever the start does
    /// next).
    stop_waiters: Vec<Ticket>,
    /// What the shell was last told.
    state: PluginState,
    routes: Vec<Key>,
}

impl Machine {
    /// A stopped plugin with this manifest.
    pub fn new(manifest: Arc<Manifest>) -> Self {
        Machine {
            running: false,
            start_after_stop: None,
            failed: false,
            blocked: None,
            up: false,
            manifest,
            gen: 0,
            last_gen: 0,
            next: None,
            insts: BTreeMap::new(),
            next_key: 1,
            restart_at: None,
            cooldown_at: None,
            tracker: RestartTracker::default(),
            waiters: Vec::new(),
            stop_waiters: Vec::new(),
            state: PluginState::Stopped,
            routes: Vec::new(),
        }
    }

    /// The public state.
    pub fn state(&self) -> &PluginState {
        &self.state
    }

    /// The serving generation's manifest.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// Every instance not yet reported gone.
    pub fn instances(&self) -> &BTreeMap<Key, Inst> {
        &self.insts
    }

    /// The serving generation.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Whether a new generation is starting beside the serving one.
    pub fn swapping(&self) -> bool {
        self.next.is_some()
    }

    /// Whether the operator wants it running.
    pub fn desired_running(&self) -> bool {
        self.running
    }

    /// The routes last published.
    pub fn routes(&self) -> &[Key] {
        &self.routes
    }

    /// When the shell must send [`Event::Tick`] next.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.restart_at.map(|(t, _)| t), self.cooldown_at].into_iter().flatten().min()
    }

    /// Applies one event; returns what the shell must do, in order.
    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start { ticket, unmet } => {
                self.waiters.push(ticket);
                self.on_start(unmet, &mut out);
            }
            Event::Stop { ticket } => {
                self.stop_waiters.push(ticket);
                self.stop(&mut out);
            }
            Event::Restart { ticket, hard, unmet } => self.on_restart(ticket, hard, unmet, &mut out),
            Event::Reload { ticket, manifest, unmet } => self.on_reload(ticket, manifest, unmet, &mut out),
            Event::Ready { key, result } => self.on_ready(key, result, &mut out),
            Event::Exited { key, exit } => self.on_exit(now, key, &exit, &mut out),
            Event::Tick { unmet } => self.on_tick(now, unmet, &mut out),
        }
        self.finish(&mut out);
        out
    }

    /// A start from `stopped` or `failed`: the failure is forgotten; the start happens now, or
    /// once the last instance still stopping is gone.
    fn start_fresh(&mut self, unmet: Unmet, out: &mut Vec<Action>) {
        self.failed = false;
        self.cooldown_at = None;
        if self.insts.is_empty() {
            self.begin_start(unmet, true, out);
        } else {
            self.start_after_stop = Some(unmet);
        }
    }

    fn on_start(&mut self, unmet: Unmet, out: &mut Vec<Action>) {
        if !self.running {
            self.start_fresh(unmet, out);
        } else if self.blocked.is_some() {
            self.begin_start(unmet, true, out);
        } else if self.restart_at.take().is_some() {
            // The operator does not wait out a crash backoff.
            self.tracker.reset();
            self.fill(out);
        }
    }

    fn on_restart(&mut self, ticket: Ticket, hard: bool, unmet: Unmet, out: &mut Vec<Action>) {
        self.tracker.reset();
        if !hard && self.running && self.serving() > 0 {
            // A reload under way brought a newer manifest: restart into that one.
            let m = self.next.as_ref().map_or_else(|| self.manifest.clone(), |n| n.manifest.clone());
            self.begin_swap(m, ticket, out);
            if let Some(next) = self.next.as_mut() {
                next.restart = true;
            }
            return;
        }
        self.waiters.push(ticket);
        if self.insts.is_empty() {
            self.failed = false;
            self.cooldown_at = None;
            return self.begin_start(unmet, true, out);
        }
        self.stop(out);
        self.start_after_stop = Some(unmet);
    }

    fn on_reload(
        &mut self,
        ticket: Ticket,
        manifest: Result<Arc<Manifest>, String>,
        unmet: Unmet,
        out: &mut Vec<Action>,
    ) {
        let m = match manifest {
            Ok(m) => m,
            Err(why) => {
                self.report_swap_failure(&why, out);
                out.push(Action::Answer { ticket, outcome: Outcome::Failed(why) });
                return;
            }
        };
        out.push(Action::Log {
            warn: false,
            message: format!("reloading: version {} → {}", self.manifest.version, m.version),
        });
        if self.running && self.serving() > 0 {
            return self.begin_swap(m, ticket, out);
        }
        // Nothing serves: take the new manifest at once; what was starting is of the old one.
        self.waiters.push(ticket);
        if let Some(next) = self.next.take() {
            // Superseded: its waiters wait for this manifest to settle.
            self.waiters.extend(next.waiters);
            for k in self.keys_of(next.gen) {
                self.leave(k, Leave::Kill, out);
            }
        }
        self.adopt(m, true, out);
        self.restart_at = None;
        if self.running {
            let starting: Vec<Key> =
                self.insts.iter().filter(|(_, i)| !matches!(i.phase, Phase::Leaving(_))).map(|(k, _)| *k).collect();
            for k in starting {
                self.leave(k, Leave::Kill, out);
            }
            self.tracker.reset();
            self.begin_start(unmet, true, out);
        } else if self.failed {
            // A fixed plugin comes back.
            self.start_fresh(unmet, out);
        } else if self.start_after_stop.is_some() {
            self.start_after_stop = Some(unmet);
        }
    }

    fn on_ready(&mut self, key: Key, result: Result<Vec<ServiceDecl>, String>, out: &mut Vec<Action>) {
        let Some(inst) = self.insts.get_mut(&key) else { return };
        if inst.phase != Phase::Starting {
            return; // told to go meanwhile
        }
        let gen = inst.gen;
        match result {
            Ok(services) => {
                inst.phase = Phase::Ready;
                self.tracker.started();
                if gen == self.gen && self.running {
                    out.push(Action::Registered(services.clone()));
                    inst.services = services;
                } else if self.next.as_ref().is_some_and(|n| n.gen == gen) {
                    inst.services = services;
                    let want = self.next.as_ref().map_or(0, |n| n.manifest.instances as usize);
                    if self.count(gen, |p| p == Phase::Ready) >= want {
                        self.complete_swap(out);
                    }
                } else {
                    self.leave(key, Leave::Stop, out);
                }
            }
            Err(e) => {
                out.push(Action::Log { warn: true, message: format!("start failed: {e}") });
                out.push(Action::LastError(Some(e.clone())));
                // The instance ends itself; its exit applies the restart policy.
                if self.next.as_ref().is_some_and(|n| n.gen == gen) {
                    self.leave(key, Leave::Kill, out);
                    self.abandon_next(&e, out);
                    self.report_swap_failure(&e, out);
                }
            }
        }
    }

    fn on_exit(&mut self, now: Instant, key: Key, exit: &Exit, out: &mut Vec<Action>) {
        let Some(inst) = self.insts.remove(&key) else { return };
        if matches!(inst.phase, Phase::Leaving(_)) {
            return;
        }
        if self.next.as_ref().is_some_and(|n| n.gen == inst.gen) {
            let why = format!("new instance {}", exit.describe);
            self.abandon_next(&why, out);
            return self.report_swap_failure(&why, out);
        }
        if inst.gen != self.gen || !self.running {
            return;
        }
        let never_ready = inst.phase == Phase::Starting;
        // An exit before the handshake is a failed start, code 0 or not (systemd's view of a
        // `Type=notify` service that exits before READY). Whether plugind saw the end of its
        // stdout during `init` before it reaped the process decided it before: the same plugin
        // was `stopped` or restarted, by chance (audit 20).
        let clean = exit.clean && !never_ready;
        if !clean {
            // "instance exited with code 3", "instance closed its stdout…"; a hint is a
            // sentence of its own ("it said a fork was refused…").
            let sep = if exit.describe.starts_with("it ") { " ended: " } else { " " };
            out.push(Action::LastError(Some(format!("instance{sep}{}", exit.describe))));
        }
        match self.tracker.after_exit(&self.manifest.restart, clean, never_ready, now) {
            AfterExit::RestartIn(delay) => {
                let at = now + delay;
                if self.restart_at.is_none_or(|(t, _)| at < t) {
                    self.restart_at = Some((at, delay));
                }
                out.push(Action::Note { event: "restart", detail: format!("in {} ms", delay.as_millis()) });
                out.push(Action::Log { warn: false, message: format!("restarting in {} ms", delay.as_millis()) });
            }
            AfterExit::Fail => {
                let policy = &self.manifest.restart;
                // None (never) for a period past the end of time (`cooldown_s: u64::MAX`).
                self.cooldown_at = policy.cooldown_s.and_then(|c| now.checked_add(Duration::from_secs(c)));
                let why = match policy.policy {
                    RestartMode::Never => "exited, and its restart policy is `never`".to_owned(),
                    _ if self.tracker.failed_to_start(policy) => {
                        format!("it failed to start more than {} in a row", times(policy.max_restarts))
                    }
                    _ => format!(
                        "more than {} restart{} within {} s",
                        policy.max_restarts,
                        if policy.max_restarts == 1 { "" } else { "s" },
                        policy.window_s
                    ),
                };
                let then = match (self.cooldown_at, policy.cooldown_s) {
                    (Some(_), Some(c)) => {
                        format!(
                            "one more start in {c} s (`cooldown_s`), at `pluginctl restart` or when its files change (if watched)"
                        )
                    }
                    _ => "giving up until `pluginctl restart` or a change to its files (if watched)".to_owned(),
                };
                let detail = format!("{why}; {then}");
                out.push(Action::Log { warn: true, message: format!("failed: {detail}") });
                out.push(Action::Note { event: "failed", detail });
                self.halt(Leave::Kill, out);
                self.failed = true;
            }
            AfterExit::Stop => {
                // A clean exit the policy does not restart: the plugin is done.
                out.push(Action::Log { warn: false, message: "exited cleanly: stopped".into() });
                self.halt(Leave::Stop, out);
            }
        }
    }

    fn on_tick(&mut self, now: Instant, unmet: Unmet, out: &mut Vec<Action>) {
        if self.restart_at.is_some_and(|(t, _)| t <= now) {
            self.restart_at = None;
            if self.running {
                // A restart after a crash is a start: with nothing of the serving generation
                // left (serving or starting) and a required provider gone, the plugin waits
                // `blocked` for it, as a `start` would.
                let live = self.insts.values().any(|i| i.gen == self.gen && !matches!(i.phase, Phase::Leaving(_)));
                if !live {
                    if let Some(u) = &unmet {
                        out.push(Action::LastError(Some(blocked_by(u))));
                        self.blocked = unmet.clone();
                    }
                }
                let spawned = self.fill(out);
                out.extend(std::iter::repeat_n(Action::Restarted, spawned));
            }
        }
        if self.cooldown_at.is_some_and(|t| t <= now) {
            self.cooldown_at = None;
            if self.failed && !self.insts.is_empty() {
                // A killed instance has not reported its exit yet: look again shortly.
                self.cooldown_at = Some(now + COOLDOWN_RECHECK);
            } else if self.failed {
                out.push(Action::Log { warn: false, message: "cool-down elapsed: one more start".into() });
                self.failed = false;
                self.begin_start(unmet, false, out);
            }
        }
    }

    /// Desired running from now: spawn the serving generation's instances (unless blocked).
    fn begin_start(&mut self, unmet: Unmet, reset: bool, out: &mut Vec<Action>) {
        self.running = true;
        self.up = false;
        self.start_after_stop = None;
        self.restart_at = None;
        if reset {
            self.tracker.reset();
        }
        if let Some(u) = &unmet {
            out.push(Action::LastError(Some(blocked_by(u))));
        }
        self.blocked = unmet;
        self.fill(out);
    }

    /// Desired stopped: every instance goes, no swap goes on.
    fn stop(&mut self, out: &mut Vec<Action>) {
        self.failed = false;
        self.cooldown_at = None;
        self.halt(Leave::Stop, out);
    }

    /// Desired stopped without touching `failed`: every instance goes. A swap under way ends
    /// too, but its manifest (which loaded fine) is kept for the next start, and its waiters
    /// are answered when the plugin settles.
    fn halt(&mut self, how: Leave, out: &mut Vec<Action>) {
        self.running = false;
        self.up = false;
        self.start_after_stop = None;
        self.blocked = None;
        self.restart_at = None;
        if let Some(next) = self.next.take() {
            self.waiters.extend(next.waiters);
            self.adopt(next.manifest, true, out);
        }
        let keys: Vec<Key> = self.insts.keys().copied().collect();
        for k in keys {
            self.leave(k, how, out);
        }
    }

    /// Starts a new generation of `m` beside the serving one; `ticket` is answered when it takes
    /// over. A swap already under way is replaced (the newest manifest wins) and its waiters
    /// wait for this one.
    fn begin_swap(&mut self, m: Arc<Manifest>, ticket: Ticket, out: &mut Vec<Action>) {
        let mut waiters = vec![ticket];
        if let Some(old) = self.next.take() {
            waiters.extend(old.waiters);
            let keys: Vec<Key> = self.keys_of(old.gen);
            for k in keys {
                self.leave(k, Leave::Kill, out);
            }
        }
        self.last_gen += 1;
        let gen = self.last_gen;
        for _ in 0..m.instances {
            self.spawn(gen, &m, out);
        }
        self.next = Some(Next { gen, manifest: m, waiters, restart: false });
    }

    /// The new generation is ready: route to it, retire the old one, answer its waiters.
    fn complete_swap(&mut self, out: &mut Vec<Action>) {
        let Some(next) = self.next.take() else { return };
        let old: Vec<Key> = self.insts.iter().filter(|(_, i)| i.gen != next.gen).map(|(k, _)| *k).collect();
        for k in old {
            let how = match self.insts[&k].phase {
                Phase::Ready => Leave::Retire,
                // Already going (an earlier swap retired it, and it is draining its calls):
                // it goes as it was told.
                Phase::Leaving(_) => continue,
                Phase::Starting => Leave::Kill,
            };
            self.leave(k, how, out);
        }
        self.gen = next.gen;
        self.restart_at = None;
        let services = self.insts.values().find(|i| i.gen == next.gen).map(|i| i.services.clone()).unwrap_or_default();
        self.adopt(next.manifest, false, out);
        out.push(Action::Registered(services));
        out.push(Action::LastError(None));
        let (done, how) =
            if next.restart { ("restarted gracefully", "restarted gracefully: ") } else { ("reloaded", "") };
        out.push(Action::Note {
            event: "reload",
            detail: format!("{how}now serving version {}", self.manifest.version),
        });
        out.push(Action::Log { warn: false, message: format!("{done}: serving version {}", self.manifest.version) });
        out.push(Action::Swapped);
        // Routes first, so a waiter's answer sees the new instances serving.
        self.publish(out);
        for ticket in next.waiters {
            out.push(Action::Answer { ticket, outcome: Outcome::Settled });
        }
    }

    /// Gives up the swap under way, killing its instances and failing its waiters with `why`.
    fn abandon_next(&mut self, why: &str, out: &mut Vec<Action>) {
        let Some(next) = self.next.take() else { return };
        for k in self.keys_of(next.gen) {
            self.leave(k, Leave::Kill, out);
        }
        for ticket in next.waiters {
            out.push(Action::Answer { ticket, outcome: Outcome::Failed(why.to_owned()) });
        }
    }

    fn report_swap_failure(&mut self, why: &str, out: &mut Vec<Action>) {
        out.push(Action::Log { warn: true, message: format!("reload failed, the loaded version stays: {why}") });
        out.push(Action::LastError(Some(format!("reload failed: {why}"))));
        out.push(Action::Note { event: "reload", detail: format!("failed: {why}") });
    }

    /// `m` is the plugin's manifest from now on; `new_gen`: for a generation yet to start.
    fn adopt(&mut self, m: Arc<Manifest>, new_gen: bool, out: &mut Vec<Action>) {
        if new_gen {
            self.last_gen += 1;
            self.gen = self.last_gen;
        }
        self.manifest = m.clone();
        out.push(Action::Adopt(m));
    }

    /// Spawns (or, after `instances` went down, stops) serving-generation instances until
    /// `instances` of them are starting or ready. Returns how many it spawned.
    fn fill(&mut self, out: &mut Vec<Action>) -> usize {
        if !self.running || self.blocked.is_some() {
            return 0;
        }
        let want = self.manifest.instances as usize;
        let live: Vec<Key> = self
            .insts
            .iter()
            .filter(|(_, i)| i.gen == self.gen && !matches!(i.phase, Phase::Leaving(_)))
            .map(|(k, _)| *k)
            .collect();
        // Extra ones go, those still starting first.
        let mut extra: Vec<Key> = live.clone();
        extra.sort_by_key(|k| (self.insts[k].phase == Phase::Ready, std::cmp::Reverse(*k)));
        for k in extra.into_iter().take(live.len().saturating_sub(want)) {
            // A ready one finishes its calls in flight first: fewer instances fail no call.
            let how = if self.insts[&k].phase == Phase::Ready { Leave::Retire } else { Leave::Stop };
            self.leave(k, how, out);
        }
        let missing = want.saturating_sub(live.len());
        let m = self.manifest.clone();
        for _ in 0..missing {
            self.spawn(self.gen, &m, out);
        }
        missing
    }

    fn spawn(&mut self, gen: u64, m: &Arc<Manifest>, out: &mut Vec<Action>) {
        let key = self.next_key;
        self.next_key += 1;
        self.insts.insert(key, Inst { gen, phase: Phase::Starting, services: Vec::new() });
        out.push(Action::Spawn { key, manifest: m.clone() });
    }

    /// Tells an instance to go, unless it was already told as firmly.
    fn leave(&mut self, key: Key, how: Leave, out: &mut Vec<Action>) {
        let Some(inst) = self.insts.get_mut(&key) else { return };
        if let Phase::Leaving(was) = inst.phase {
            if was >= how {
                return;
            }
        }
        inst.phase = Phase::Leaving(how);
        out.push(Action::Leave { key, how });
    }

    fn keys_of(&self, gen: u64) -> Vec<Key> {
        self.insts.iter().filter(|(_, i)| i.gen == gen).map(|(k, _)| *k).collect()
    }

    fn count(&self, gen: u64, phase: impl Fn(Phase) -> bool) -> usize {
        self.insts.values().filter(|i| i.gen == gen && phase(i.phase)).count()
    }

    /// Ready instances of the serving generation.
    fn serving(&self) -> usize {
        self.count(self.gen, |p| p == Phase::Ready)
    }

    /// The state the data says the plugin is in.
    fn derive_state(&self) -> PluginState {
        if self.failed {
            PluginState::Failed
        } else if !self.running {
            // Stopped means no process at all.
            if !self.insts.is_empty() || self.start_after_stop.is_some() {
                PluginState::Stopping
            } else {
                PluginState::Stopped
            }
        } else if let Some(unmet) = &self.blocked {
            PluginState::Blocked { unmet: unmet.clone() }
        } else if self.serving() > 0 && (self.up || self.serving() >= self.manifest.instances as usize) {
            PluginState::Running
        } else if let Some((_, delay)) = self.restart_at {
            PluginState::Restarting { delay }
        } else {
            PluginState::Starting
        }
    }

    /// Whether the plugin has reached a state it stays in without further events of its own.
    pub fn is_settled(&self) -> bool {
        match self.state {
            // Answered once the processes are gone, not merely told to go.
            PluginState::Stopped | PluginState::Failed | PluginState::Blocked { .. } | PluginState::Invalid => {
                self.insts.is_empty()
            }
            PluginState::Running => {
                self.serving() == self.manifest.instances as usize
                    && self.count(self.gen, |p| p == Phase::Starting) == 0
            }
            PluginState::Starting | PluginState::Restarting { .. } | PluginState::Stopping => false,
        }
    }

    /// Publishes routes that changed.
    fn publish(&mut self, out: &mut Vec<Action>) {
        let routes: Vec<Key> = if self.running {
            self.insts.iter().filter(|(_, i)| i.gen == self.gen && i.phase == Phase::Ready).map(|(k, _)| *k).collect()
        } else {
            Vec::new()
        };
        if routes != self.routes {
            self.routes = routes.clone();
            out.push(Action::Route(routes));
        }
    }

    /// End of every step: a stop that completed may start again; routes, state and settled
    /// answers follow the data.
    fn finish(&mut self, out: &mut Vec<Action>) {
        if !self.running && self.insts.is_empty() {
            if let Some(unmet) = self.start_after_stop.take() {
                // The stop is complete: whoever asked for it hears `stopped` now, before the
                // start that waited for it begins (audit 18: it heard `running` later).
                if !self.stop_waiters.is_empty() {
                    self.publish(out);
                    if self.state != PluginState::Stopped {
                        self.state = PluginState::Stopped;
                        out.push(Action::State(PluginState::Stopped));
                    }
                    for ticket in self.stop_waiters.drain(..) {
                        out.push(Action::Answer { ticket, outcome: Outcome::Settled });
                    }
                }
                self.begin_start(unmet, true, out);
            }
        }
        self.publish(out);
        if self.running && self.serving() >= self.manifest.instances as usize {
            self.up = true;
        }
        let state = self.derive_state();
        if state != self.state {
            if state == PluginState::Running && self.serving() == self.manifest.instances as usize {
                out.push(Action::LastError(None));
            }
            self.state = state.clone();
            out.push(Action::State(state));
        }
        if self.is_settled() {
            for ticket in self.stop_waiters.drain(..).chain(self.waiters.drain(..)) {
                out.push(Action::Answer { ticket, outcome: Outcome::Settled });
            }
        }
    }
}

/// "once", "twice", "N times".
fn times(n: u32) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

/// `last_error` of a plugin waiting `blocked` for its required dependencies `unmet`.
fn blocked_by(unmet: &[String]) -> String {
    format!(
        "unmet dependencies {}: no running plugin provides them at a matching version; it starts by itself once one does (add or start it, or make the dependency optional)",
        unmet.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(instances: u32, version: &str) -> Arc<Manifest> {
        let doc = serde_json::json!({ "name": "p", "version": version, "main": "p.py", "instances": instances });
        Arc::new(Manifest::from_value(&doc).expect("UNWRAP: a valid manifest"))
    }

    fn spawned(actions: &[Action]) -> Vec<Key> {
        actions.iter().filter_map(|a| if let Action::Spawn { key, .. } = a { Some(*key) } else { None }).collect()
    }

    fn left(actions: &[Action]) -> Vec<(Key, Leave)> {
        actions
            .iter()
            .filter_map(|a| if let Action::Leave { key, how } = a { Some((*key, *how)) } else { None })
            .collect()
    }

    fn answers(actions: &[Action]) -> Vec<(Ticket, Outcome)> {
        actions
            .iter()
            .filter_map(|a| {
                if let Action::Answer { ticket, outcome } = a {
                    Some((*ticket, outcome.clone()))
                } else {
                    None
                }
            })
            .collect()
    }

    fn ready(m: &mut Machine, now: Instant, keys: &[Key]) -> Vec<Action> {
        keys.iter().flat_map(|k| m.step(now, Event::Ready { key: *k, result: Ok(Vec::new()) })).collect()
    }

    fn exit(m: &mut Machine, now: Instant, keys: &[Key]) -> Vec<Action> {
        let exit = Exit { clean: true, describe: "exited with code 0".into() };
        keys.iter().flat_map(|k| m.step(now, Event::Exited { key: *k, exit: exit.clone() })).collect()
    }

    /// A running plugin of `n` instances and their keys.
    fn running(n: u32) -> (Machine, Instant, Vec<Key>) {
        let now = Instant::now();
        let mut m = Machine::new(manifest(n, "1.0.0"));
        let keys = spawned(&m.step(now, Event::Start { ticket: 1, unmet: None }));
        assert_eq!(keys.len(), n as usize);
        let a = ready(&mut m, now, &keys);
        assert_eq!(answers(&a), [(1, Outcome::Settled)]);
        assert_eq!(*m.state(), PluginState::Running);
        (m, now, keys)
    }

    #[test]
    fn a_swap_routes_to_the_new_generation_and_retires_the_old() {
        let (mut m, now, old) = running(2);
        let a = m.step(now, Event::Reload { ticket: 2, manifest: Ok(manifest(1, "2.0.0")), unmet: None });
        let new = spawned(&a);
        assert_eq!(new.len(), 1);
        assert_eq!(m.routes(), &old[..], "the old generation serves meanwhile");
        let a = ready(&mut m, now, &new);
        assert_eq!(m.routes(), &new[..]);
        assert_eq!(left(&a), old.iter().map(|k| (*k, Leave::Retire)).collect::<Vec<_>>());
        assert_eq!(answers(&a), [(2, Outcome::Settled)]);
        assert_eq!(m.manifest().version.to_string(), "2.0.0");
    }

    #[test]
    fn a_second_swap_leaves_the_first_ones_retiring_instance_draining() {
        let (mut m, now, first) = running(1);
        let second = spawned(&m.step(now, Event::Restart { ticket: 2, hard: false, unmet: None }));
        let a = ready(&mut m, now, &second);
        assert_eq!(left(&a), [(first[0], Leave::Retire)]);
        // A second restart while the first instance still drains its calls.
        let third = spawned(&m.step(now, Event::Restart { ticket: 3, hard: false, unmet: None }));
        let a = ready(&mut m, now, &third);
        assert_eq!(left(&a), [(second[0], Leave::Retire)], "the draining one is not killed");
        assert_eq!(m.routes(), &third[..]);
    }

    /// Audit 18: a stop answered `running` when a start came while it was under way (the start
    /// began as the last instance went, so the stop's ticket waited for the next settle).
    #[test]
    fn a_stop_followed_by_a_start_answers_stopped_before_the_start_begins() {
        for hard_restart_first in [false, true] {
            let (mut m, now, keys) = running(1);
            let mut keys = keys;
            if hard_restart_first {
                m.step(now, Event::Restart { ticket: 10, hard: true, unmet: None });
                keys = spawned(&exit(&mut m, now, &keys));
                ready(&mut m, now, &keys);
            }
            m.step(now, Event::Stop { ticket: 2 });
            m.step(now, Event::Start { ticket: 3, unmet: None });
            assert_eq!(*m.state(), PluginState::Stopping);
            let a = exit(&mut m, now, &keys);
            let stopped_at =
                a.iter().position(|x| matches!(x, Action::State(PluginState::Stopped))).expect("told stopped");
            let answered_at =
                a.iter().position(|x| matches!(x, Action::Answer { ticket: 2, .. })).expect("the stop is answered");
            let spawned_at = a.iter().position(|x| matches!(x, Action::Spawn { .. })).expect("the start begins");
            assert!(stopped_at < answered_at && answered_at < spawned_at, "{a:?}");
            assert!(answers(&a).iter().all(|(t, _)| *t != 3), "the start waits for running: {a:?}");
            let a = ready(&mut m, now, &spawned(&a));
            assert_eq!(answers(&a), [(3, Outcome::Settled)]);
            assert_eq!(*m.state(), PluginState::Running);
        }
    }

    #[test]
    fn a_stop_during_a_swap_ends_both_generations_and_keeps_the_new_manifest() {
        let (mut m, now, old) = running(1);
        let new = spawned(&m.step(now, Event::Reload { ticket: 2, manifest: Ok(manifest(1, "2.0.0")), unmet: None }));
        let a = m.step(now, Event::Stop { ticket: 3 });
        assert!(m.routes().is_empty(), "no route once stopping");
        assert_eq!(left(&a), [(old[0], Leave::Stop), (new[0], Leave::Stop)]);
        assert_eq!(*m.state(), PluginState::Stopping);
        let a = exit(&mut m, now, &[old[0], new[0]]);
        assert_eq!(*m.state(), PluginState::Stopped);
        assert_eq!(answers(&a), [(3, Outcome::Settled), (2, Outcome::Settled)]);
        let a = m.step(now, Event::Start { ticket: 4, unmet: None });
        assert_eq!(spawned(&a).len(), 1);
        assert_eq!(m.manifest().version.to_string(), "2.0.0", "the next start uses the new manifest");
    }

    #[test]
    fn a_reload_while_starting_kills_what_was_starting() {
        let now = Instant::now();
        let mut m = Machine::new(manifest(3, "1.0.0"));
        let first = spawned(&m.step(now, Event::Start { ticket: 1, unmet: None }));
        let a = m.step(now, Event::Reload { ticket: 2, manifest: Ok(manifest(1, "2.0.0")), unmet: None });
        assert_eq!(left(&a), first.iter().map(|k| (*k, Leave::Kill)).collect::<Vec<_>>());
        let new = spawned(&a);
        assert_eq!(new.len(), 1);
        exit(&mut m, now, &first);
        let a = ready(&mut m, now, &new);
        assert_eq!(answers(&a), [(1, Outcome::Settled), (2, Outcome::Settled)]);
        assert_eq!(m.instances().len(), 1);
    }

    #[test]
    fn a_failed_swap_keeps_the_old_generation_serving() {
        let (mut m, now, old) = running(1);
        let new = spawned(&m.step(now, Event::Restart { ticket: 2, hard: false, unmet: None }));
        let a = m.step(now, Event::Ready { key: new[0], result: Err("init refused".into()) });
        assert_eq!(answers(&a), [(2, Outcome::Failed("init refused".into()))]);
        assert_eq!(m.routes(), &old[..]);
        assert_eq!(*m.state(), PluginState::Running);
    }

    #[test]
    fn a_hard_restart_stops_then_starts() {
        let (mut m, now, old) = running(1);
        let a = m.step(now, Event::Restart { ticket: 2, hard: true, unmet: None });
        assert_eq!(left(&a), [(old[0], Leave::Stop)]);
        assert!(spawned(&a).is_empty(), "nothing starts before the old process is gone");
        let a = exit(&mut m, now, &old);
        let new = spawned(&a);
        assert_eq!(new.len(), 1);
        let a = ready(&mut m, now, &new);
        assert_eq!(answers(&a), [(2, Outcome::Settled)]);
    }

    #[test]
    fn crashes_back_off_then_fail() {
        let (mut m, mut now, mut keys) = running(1);
        let crash = Exit { clean: false, describe: "exited with code 1".into() };
        for _ in 0..5 {
            m.step(now, Event::Exited { key: keys[0], exit: crash.clone() });
            assert!(matches!(m.state(), PluginState::Restarting { .. }));
            now = m.next_deadline().expect("UNWRAP: a backoff is pending");
            keys = spawned(&m.step(now, Event::Tick { unmet: None }));
            ready(&mut m, now, &keys);
        }
        m.step(now, Event::Exited { key: keys[0], exit: crash });
        assert_eq!(*m.state(), PluginState::Failed);
        assert!(m.routes().is_empty());
    }

    /// An instance that exits with code 0 before its handshake failed to start: the policy
    /// restarts it (and counts it), and it is never `stopped` as if it were done (audit 20:
    /// which of the two it was depended on timing).
    #[test]
    fn a_clean_exit_before_the_handshake_is_a_failed_start() {
        let now = Instant::now();
        let mut m = Machine::new(manifest(1, "1.0.0"));
        let keys = spawned(&m.step(now, Event::Start { ticket: 1, unmet: None }));
        let a = exit(&mut m, now, &keys);
        assert!(a.iter().any(|x| matches!(x, Action::Note { event: "restart", .. })), "{a:?}");
        assert!(matches!(m.state(), PluginState::Restarting { .. }), "{:?}", m.state());
    }
}
