//! (e) start-up: plugind spawned → N plugins `running`, against two floors: spawning the same N
//! echo-rust processes directly and taking each through `init` and `register`, and the same
//! under plugind's sandbox, started by plugind's own spawn code.

use crate::daemon::{write_plugins, Bins, Daemon, PluginDef};
use crate::echo::Echo;
use crate::report::{line, Floor, Samples};
use plugind::config::StatePaths;
use plugind::plugin::context::InstanceSettings;
use plugind::plugin::instance::InstanceSpec;
use plugind::plugin::spawn;
use plugind::sandbox;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Spawns `n` echo-rust processes, sends each `init`, collects the answers, then the same for
/// `register` (so the handshakes overlap across processes, as in plugind).
fn bare_spawn(bins: &Bins, n: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut procs =
        (0..n).map(|i| Echo::spawn(&bins.echo, &[], &format!("echo-{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
    handshakes(&mut procs)?;
    let took = t0.elapsed();
    for p in procs {
        p.finish()?;
    }
    Ok(took)
}

/// Takes `procs` through `init` and `register`, each sent to all before any answer is read.
fn handshakes(procs: &mut [Echo]) -> anyhow::Result<()> {
    for (i, p) in procs.iter_mut().enumerate() {
        p.send_init(&format!("echo-{i}"))?;
    }
    for p in procs.iter_mut() {
        p.expect_result("init")?;
        p.send_register()?;
    }
    for p in procs.iter_mut() {
        p.expect_result("register")?;
    }
    Ok(())
}

/// The floor under the same sandbox: the plugin dirs plugind gets, each plugin spawned one after
/// the other by plugind's own code (`plugind::plugin::spawn`: its manifest read, the argv and
/// environment plugind gives it, a private temp dir, the instance's cgroup, the mount namespace,
/// dropped capabilities, rlimits, Landlock and seccomp), then the handshakes as in [`bare_spawn`].
/// What is left out is plugind itself: its start, the lifecycle, the registry, the control socket.
fn sandboxed_spawn(rt: &Runtime, bins: &Bins, n: usize) -> anyhow::Result<Duration> {
    // One path for every run of this process: what plugind hides from its plugins is set once
    // per process (`sandbox::protect`), so the dirs it names must stay where they were.
    let root = std::env::temp_dir().join(format!("plugind-bench-floor.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (plugins, state) = (root.join("plugins"), root.join("state"));
    std::fs::create_dir_all(&state)?;
    let defs: Vec<PluginDef> = (0..n).map(|i| PluginDef::plain(format!("echo-{i:03}"))).collect();
    write_plugins(&plugins, &defs, &bins.echo)?;
    sandbox::protect(sandbox::PrivatePaths {
        state_dirs: vec![state.clone()],
        plugin_roots: vec![plugins.clone()],
        ..Default::default()
    });
    sandbox::probe::host();
    let version = semver::Version::parse(env!("CARGO_PKG_VERSION"))?;
    let _in_runtime = rt.enter();
    let t0 = Instant::now();
    let mut procs = Vec::with_capacity(n);
    for (i, d) in defs.iter().enumerate() {
        procs.push(spawn_one(&plugins.join(&d.name), &state, i as u64 + 1, &version)?);
    }
    handshakes(&mut procs)?;
    let took = t0.elapsed();
    for p in procs {
        p.finish()?;
    }
    std::fs::remove_dir_all(&root)?;
    Ok(took)
}

/// One plugin dir spawned as plugind spawns instance `id` of it: its instance spec (argv,
/// environment, temp dir) made by plugind's own `InstanceSpec::new`, the temp dir created as
/// `instance::launch` does, then `spawn::spawn`.
fn spawn_one(dir: &Path, state: &Path, id: u64, version: &semver::Version) -> anyhow::Result<Echo> {
    let manifest = Arc::new(plugind::discovery::load(dir, version).manifest.map_err(anyhow::Error::msg)?);
    let settings = InstanceSettings {
        paths: StatePaths::new(state),
        operator_env: Vec::new(),
        config: serde_json::json!({}),
        ping_every: Duration::from_secs(10),
    };
    let name: Arc<str> = manifest.name.as_str().into();
    let spec = InstanceSpec::new(&settings, &name, dir, &manifest, id).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&spec.tmp_dir)?;
    let request = sandbox::Request {
        manifest: &manifest,
        data_dir: spec.data_dir.as_deref(),
        tmp_dir: &spec.tmp_dir,
        instance: id,
    };
    Echo::sandboxed(spawn::spawn(&spec.plan, &request)?)
}

/// plugind on `n` fresh copies of the echo-rust plugin: spawn → all `running`.
fn plugind_start(rt: &Runtime, bins: &Bins, n: usize) -> anyhow::Result<Duration> {
    let defs: Vec<PluginDef> = (0..n).map(|i| PluginDef::plain(format!("echo-{i:03}"))).collect();
    let mut daemon = Daemon::start(bins, &defs)?;
    let took = rt.block_on(daemon.wait_running(n as u64, Duration::from_secs(60)))?;
    rt.block_on(daemon.stop())?;
    Ok(took)
}

/// Runs the three `repeats` times for each `n`, in turns; prints the medians: `e.start` against
/// the bare spawn, and again (`.vs_sandboxed`, the target of issue 20) against the spawn under
/// the same sandbox, whose own figure is `floor.sandboxed_spawn`.
pub fn run(rt: &Runtime, bins: &Bins, placement: &str, sizes: &[(usize, usize)]) -> anyhow::Result<()> {
    for &(n, repeats) in sizes {
        let (mut bare, mut sandboxed, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            bare.push(bare_spawn(bins, n)?);
            crate::calls::settle();
            sandboxed.push(sandboxed_spawn(rt, bins, n)?);
            crate::calls::settle();
            ours.push(plugind_start(rt, bins, n)?);
            crate::calls::settle();
        }
        let bare = Floor { value: Samples::new(bare).pct_ms(50.0), name: "bare spawn" };
        let sandboxed = Samples::new(sandboxed).pct_ms(50.0);
        let ours = Samples::new(ours);
        let runs = ours.len();
        line(&format!("floor.sandboxed_spawn.n{n}.median_of_{runs}"), placement, sandboxed, "ms", None);
        line(&format!("e.start.n{n}.median_of_{runs}"), placement, ours.pct_ms(50.0), "ms", Some(bare));
        let f = Floor { value: sandboxed, name: "sandboxed spawn" };
        line(&format!("e.start.n{n}.vs_sandboxed"), placement, ours.pct_ms(50.0), "ms", Some(f));
    }
    Ok(())
}
