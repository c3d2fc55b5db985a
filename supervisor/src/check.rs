//! `plugind check DIR` (run by `pluginctl check DIR`): validates a plugin and drives it through its lifecycle without a
//! daemon (`init`, `register`, `ping`, an optional `execute`, `teardown`), reporting what a
//! plugin author needs to fix before deploying it.

use crate::config::Config;
use crate::plugin::context::{ActorHost, InstanceHost};
use crate::plugin::instance::{self, InstanceEvent, InstanceSpec};
use crate::transport::peer::Deadline;
use crate::Daemon;
use plugind_protocol::manifest::Manifest;
use plugind_protocol::methods;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How one finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Must be fixed.
    Fail,
}

/// What `check` found, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// Findings.
    pub findings: Vec<(Level, String)>,
}

impl Report {
    fn push(&mut self, level: Level, text: impl Into<String>) {
        self.findings.push((level, text.into()));
    }

    /// Whether nothing failed.
    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|(l, _)| *l == Level::Fail)
    }
}

/// An `init` slower than this gets a warning.
const SLOW_INIT: Duration = Duration::from_secs(1);

/// Checks the plugin in `dir`; `execute` is an optional `(method, params)` to call. With
/// `diagnose`, a plugin that breaks before it is ready is started again with parts of its
/// sandbox off ([`diagnose`]); without, the report says how to ask for that.
pub async fn check(dir: &Path, execute: Option<(String, Value)>, diagnose_it: bool) -> Report {
    let mut r = Report::default();
    let version = semver::Version::parse(crate::VERSION).expect("UNWRAP: crate version is semver");
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let found = crate::discovery::load(&dir, &version);
    let m = match found.manifest {
        Ok(m) => Arc::new(m),
        Err(e) => {
            r.push(Level::Fail, format!("manifest: {e}"));
            return r;
        }
    };
    r.push(Level::Ok, format!("manifest: {} {} ({})", m.name, m.version, dir.join("plugin.json").display()));
    for w in &m.warnings {
        r.push(Level::Warn, format!("manifest: {w}"));
    }
    // A plugin that requires itself (by name or a service it provides) is a cycle a daemon
    // refuses to load; the rest is checked by a daemon, which has the other plugins: until one
    // provides them, it waits `blocked`.
    if let Some(cycle) = crate::discovery::find_cycles(&[(m.name.as_str(), &m)]).into_values().next() {
        r.push(Level::Fail, format!("dependencies: {}", crate::discovery::cycle_error(&dir, &cycle)));
    }
    for (kind, deps) in [("requires", &m.required), ("may use", &m.optional)] {
        for d in deps.iter().filter(|d| kind == "may use" || !m.declares_service(&d.name)) {
            let range = d.range.as_ref().map_or_else(|| "any version".to_owned(), ToString::to_string);
            r.push(Level::Ok, format!("dependencies: {kind} {} ({range}); not checked without a daemon", d.name));
        }
    }
    for g in crate::sandbox::guarantees(&m) {
        let text = match &g.why {
            None => format!("sandbox: {} holds ({})", g.guarantee, g.mechanism),
            Some(why) => format!("sandbox: {} does NOT hold on this host: {why}", g.guarantee),
        };
        r.push(if g.held { Level::Ok } else { Level::Warn }, text);
    }
    for (name, p) in crate::sandbox::report(&m) {
        let text = match (p.granted, p.enforced) {
            (true, _) => format!("permission {name}: granted"),
            (false, true) => format!("permission {name}: denied, enforced here by {}", p.mechanism),
            (false, false) => format!("permission {name}: denied, but this host cannot enforce it (advisory)"),
        };
        r.push(if p.granted || p.enforced { Level::Ok } else { Level::Warn }, text);
    }

    let state = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            r.push(Level::Fail, format!("cannot create a scratch state dir: {e}"));
            return r;
        }
    };
    let daemon = Daemon::new(Config::new(Vec::new(), state.path().join("unused.sock"), state.path().to_path_buf()));
    let name: Arc<str> = m.name.as_str().into();
    let spec = match InstanceSpec::new(&daemon.instance_settings(&m), &name, &dir, &m, 1) {
        Ok(s) => s,
        Err(e) => {
            r.push(Level::Fail, format!("start: {e}"));
            return r;
        }
    };
    let argv = spec.plan.argv.join(" ");
    let log = daemon.plugin_log(&m.name);
    let (tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let inst = match instance::launch(
        1,
        spec,
        daemon.clone() as Arc<dyn InstanceHost>,
        instance::PluginShared::new(log.clone()),
        tx,
    ) {
        Ok(i) => i,
        Err(e) => {
            r.push(Level::Fail, format!("start: {e}"));
            return r;
        }
    };
    // The instance ends the handshake itself at `startup_timeout_ms`; a second more for its report.
    let handshake =
        tokio::time::timeout(Duration::from_millis(m.startup_timeout_ms.saturating_add(1000)), events.recv()).await;
    if let Ok(Some(InstanceEvent::SpawnFailed { error, .. })) = &handshake {
        r.push(Level::Fail, format!("start: {error}"));
        return r;
    }
    r.push(Level::Ok, format!("started: {argv} (pid {})", inst.pid()));
    // A plugin that exited or answered an error before it was ready may have tripped over the
    // sandbox: then `diagnose` finds over which part. (One that hangs is not retried: each try
    // would wait for the whole handshake budget.)
    let exited_already = matches!(handshake, Ok(Some(InstanceEvent::Exited { .. })));
    // (Nor one whose handshake ran out of time: that is a hang, or output never flushed.)
    // Whether it answered `init` or `register` with an error of its own: on purpose, as a rule
    // (a missing setting), so only a part of the sandbox that does explain it is worth saying.
    let answered_error = matches!(&handshake, Ok(Some(InstanceEvent::Ready { result: Err(e), .. })) if e.contains(" failed: ") && e.contains("(code "));
    let broke_early = match &handshake {
        // (Nor one that ran out of memory: its error says what to do, and without the mount
        // namespace a JVM can see its cgroup and starts, which blamed the namespace.)
        Ok(Some(InstanceEvent::Ready { result: Err(e), .. })) => {
            !e.contains("startup_timeout_ms") && !e.contains("ran out of memory")
        }
        Ok(Some(InstanceEvent::Exited { .. })) => true,
        _ => false,
    };
    match handshake {
        Ok(Some(InstanceEvent::Ready { result: Ok(services), .. })) => {
            let took = started.elapsed();
            let level = if took > SLOW_INIT { Level::Warn } else { Level::Ok };
            r.push(level, format!("init + register answered in {} ms", took.as_millis()));
            // What a daemon would route; the rest it refuses (see `registry::rules`).
            let names: Vec<String> = services
                .iter()
                .filter(|s| crate::registry::rules::check(&m, s).is_ok())
                .map(|s| format!("{}@{}", s.name, s.version))
                // Its own service, when `register` names it too, is listed once.
                .filter(|s| *s != format!("{}@{}", m.name, m.version))
                .collect();
            for refused in crate::registry::rules::refused(&m, &services) {
                let (name, version, why) = (refused.name, refused.version, refused.reason);
                r.push(Level::Warn, format!("register: service {name}@{version} refused: {why}"));
            }
            r.push(
                Level::Ok,
                format!(
                    "services: {}@{}{}",
                    m.name,
                    m.version,
                    names.iter().map(|n| format!(", {n}")).collect::<String>()
                ),
            );
            // The catalog a daemon would serve; what register got rejected is in the log (below).
            if let Some(catalog) = inst.catalog() {
                r.push(Level::Ok, catalog.summary());
            }
        }
        Ok(Some(InstanceEvent::Ready { result: Err(e), .. })) => r.push(Level::Fail, format!("handshake: {e}")),
        Ok(Some(InstanceEvent::Exited { exit, .. })) => {
            r.push(Level::Fail, format!("exited before the handshake: {}", exit.describe()))
        }
        Ok(Some(InstanceEvent::SpawnFailed { .. })) => {} // reported and returned above
        Ok(None) | Err(_) => r.push(Level::Fail, "handshake: no answer to init/register".to_owned()),
    }
    if r.passed() {
        let d = Deadline::new(Duration::from_millis(m.timeout_ms), Duration::from_millis(m.timeout_ms));
        match inst.peer.call(methods::PING, &serde_json::json!({}), d).await {
            Ok(_) | Err(crate::transport::peer::CallError::Rpc(_)) => r.push(Level::Ok, "ping answered"),
            Err(e) => r.push(Level::Fail, format!("ping: {e}")),
        }
        if let Some((method, params)) = execute {
            // Checked against the catalog first, as a daemon would: a mismatch is its -32602.
            let raw = serde_json::value::to_raw_value(&params).ok();
            let checked = inst
                .catalog()
                .and_then(|c| c.get(&method))
                .map_or(Ok(()), |spec| spec.check_params(&m.name, &method, raw.as_deref()));
            let call = serde_json::json!({ "method": method, "params": params });
            let answer = match checked {
                Ok(()) => inst.peer.call(methods::EXECUTE, &call, d).await,
                Err(e) => Err(crate::transport::peer::CallError::Rpc(e)),
            };
            match answer {
                Ok(v) => r.push(Level::Ok, format!("execute {method}: {}", v.get())),
                Err(e) => {
                    r.push(Level::Fail, format!("execute {method}: {e}"));
                    // Its dependencies are not running here: a service call answered -32004 may
                    // be why it failed, which says nothing of how it runs under plugind.
                    let deps: Vec<&str> = m.required.iter().chain(&m.optional).map(|d| d.name.as_str()).collect();
                    if !deps.is_empty() {
                        r.push(
                            Level::Warn,
                            format!(
                                "execute {method}: check runs the plugin alone, so its service calls to {} are \
                                 answered -32004 (service not found); try the call under plugind with \
                                 `pluginctl call {} {method}`",
                                deps.join(", "),
                                m.name
                            ),
                        );
                    }
                }
            }
        }
    }
    inst.stop();
    let exit = loop {
        if exited_already {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(8), events.recv()).await {
            Ok(Some(InstanceEvent::Exited { exit, .. })) => break Some(exit),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break None,
        }
    };
    match exit {
        Some(e) if e.code == Some(0) => r.push(Level::Ok, "teardown: exited with code 0"),
        Some(e) if r.passed() => r.push(Level::Warn, format!("teardown: {}", e.describe())),
        Some(_) => {}
        None if exited_already => {}
        None => r.push(Level::Fail, "teardown: the process did not exit"),
    }
    // Protocol mistakes the instance logged (stray stdout above all). Past a few of one kind, a
    // count: a JVM's crash report on stdout is hundreds of lines, each one finding.
    const SHOWN_PER_KIND: usize = 3;
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for line in log.tail(1000) {
        // (Refused services are reported above, from the `register` answer.)
        let reported = ["missed health ping", "register: service "].iter().any(|p| line.message.starts_with(p));
        if line.stream == "plugind" && line.level == "warn" && !reported {
            let kind = ["non-JSON", "unknown id", "not a JSON-RPC"].into_iter().find(|k| line.message.contains(k));
            let level = if kind.is_some() { Level::Fail } else { Level::Warn };
            let kind = kind.unwrap_or("other");
            let seen = match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    kinds.push((kind, 1));
                    1
                }
            };
            if seen <= SHOWN_PER_KIND {
                r.push(level, format!("protocol: {}", line.message));
            }
        }
    }
    for (kind, n) in kinds.into_iter().filter(|(_, n)| *n > SHOWN_PER_KIND) {
        let level = if kind == "other" { Level::Warn } else { Level::Fail };
        r.push(level, format!("protocol: … and {} more like these ({kind})", n - SHOWN_PER_KIND));
    }
    if !r.passed() {
        let tail = log.stderr_tail();
        if !tail.is_empty() {
            r.push(Level::Warn, format!("last stderr lines:\n    {}", tail.join("\n    ")));
        }
        // Out of memory at start: what to do is known (and without the mount namespace a JVM
        // sees its cgroup and starts, which would blame the namespace).
        let out_of_memory = instance::memory_hint(inst.said_out_of_memory(), m.limits.memory_mb);
        let said = r.findings.iter().any(|(_, t)| t.contains("ran out of memory"));
        if let (Some(hint), false) = (&out_of_memory, said) {
            r.push(Level::Fail, hint.trim_start_matches("; ").to_owned());
        }
        if broke_early && out_of_memory.is_none() {
            if diagnose_it {
                diagnose(&mut r, &daemon, &name, &dir, &m, answered_error).await;
            } else if !answered_error {
                // Not by default: those runs leave parts of the sandbox off, and the plugin is
                // a stranger's code (audit 19: it wrote outside its dirs, reached the network and
                // stopped a running plugind from a `check`).
                r.push(
                    Level::Warn,
                    "sandbox: to find the part of the sandbox it trips over, run check again with --diagnose \
                     (it starts the plugin with parts of its sandbox off: only for code you trust)",
                );
            }
        }
    }
    r
}

/// The sandbox's diagnostic mode, for a plugin that did not get through `init` and `register`:
/// it is started again with one part of its sandbox left out at a time. A part whose absence lets
/// it start is what it trips over, and the report says what the plugin does that this part
/// denies. When no single part explains it, the report lists the profile it ran under.
/// `quiet`: say nothing when no part explains it (the plugin answered an error of its own).
async fn diagnose(r: &mut Report, daemon: &Arc<Daemon>, name: &Arc<str>, dir: &Path, m: &Arc<Manifest>, quiet: bool) {
    use crate::sandbox;
    let profile = sandbox::profile(m);
    let mut culprits = Vec::new();
    for (n, part) in profile.iter().enumerate() {
        sandbox::relax(Some(*part));
        if handshake_succeeds(daemon, name, dir, m, 100 + n as u64).await {
            culprits.push(*part);
        }
    }
    sandbox::relax(None);
    for part in &culprits {
        r.push(Level::Fail, format!("sandbox: it starts once the sandbox allows it: {}", part.explain()));
    }
    if culprits.is_empty() && !quiet {
        let parts: Vec<&str> = profile.iter().map(|p| p.explain()).collect();
        r.push(
            Level::Warn,
            format!(
                "sandbox: no single part of the sandbox explains the failure; it ran denying what follows:\n    {}",
                parts.join("\n    ")
            ),
        );
    }
}

/// Starts the plugin once, and whether it answers `init` and `register`; then stops it.
async fn handshake_succeeds(daemon: &Arc<Daemon>, name: &Arc<str>, dir: &Path, m: &Arc<Manifest>, id: u64) -> bool {
    let Ok(spec) = InstanceSpec::new(&daemon.instance_settings(m), name, dir, m, id) else { return false };
    let (tx, mut events) = mpsc::unbounded_channel();
    let Ok(inst) = instance::launch(
        id,
        spec,
        daemon.clone() as Arc<dyn InstanceHost>,
        instance::PluginShared::new(daemon.plugin_log(&m.name)),
        tx,
    ) else {
        return false;
    };
    let budget = Duration::from_millis(2 * m.timeout_ms + 1000);
    let ok = matches!(
        tokio::time::timeout(budget, events.recv()).await,
        Ok(Some(InstanceEvent::Ready { result: Ok(_), .. }))
    );
    inst.stop();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(8), events.recv()).await {
        if matches!(ev, InstanceEvent::Exited { .. } | InstanceEvent::SpawnFailed { .. }) {
            break;
        }
    }
    ok
}
