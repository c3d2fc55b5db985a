//! (e) start-up: plugind spawned → N plugins `running`, against the floor of spawning the same N
//! echo-rust processes directly and taking each through `init` and `register`.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::echo::Echo;
use crate::report::{line, Floor, Samples};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Spawns `n` echo-rust processes, sends each `init`, collects the answers, then the same for
/// `register` (so the handshakes overlap across processes, as in plugind).
fn bare_spawn(bins: &Bins, n: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut procs =
        (0..n).map(|i| Echo::spawn(&bins.echo, &[], &format!("echo-{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
    for (i, p) in procs.iter_mut().enumerate() {
        p.send_init(&format!("echo-{i}"))?;
    }
    for p in &mut procs {
        p.expect_result("init")?;
        p.send_register()?;
    }
    for p in &mut procs {
        p.expect_result("register")?;
    }
    let took = t0.elapsed();
    for p in procs {
        p.finish()?;
    }
    Ok(took)
}

/// plugind on `n` fresh copies of the echo-rust plugin: spawn → all `running`.
fn plugind_start(rt: &Runtime, bins: &Bins, n: usize) -> anyhow::Result<Duration> {
    let defs: Vec<PluginDef> = (0..n).map(|i| PluginDef::plain(format!("echo-{i:03}"))).collect();
    let mut daemon = Daemon::start(bins, &defs)?;
    let took = rt.block_on(daemon.wait_running(n as u64, Duration::from_secs(60)))?;
    rt.block_on(daemon.stop())?;
    Ok(took)
}

/// Runs both `repeats` times for each `n`; prints the medians.
pub fn run(rt: &Runtime, bins: &Bins, placement: &str, sizes: &[(usize, usize)]) -> anyhow::Result<()> {
    for &(n, repeats) in sizes {
        let mut floor = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..repeats {
            floor.push(bare_spawn(bins, n)?);
            crate::calls::settle();
            ours.push(plugind_start(rt, bins, n)?);
            crate::calls::settle();
        }
        let floor = Samples::new(floor).pct_ms(50.0);
        let ours = Samples::new(ours);
        let f = Floor { value: floor, name: "bare spawn" };
        line(&format!("e.start.n{n}.median_of_{}", ours.len()), placement, ours.pct_ms(50.0), "ms", Some(f));
    }
    Ok(())
}
