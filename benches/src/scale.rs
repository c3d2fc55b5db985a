//! (g) scale: N small plugins (copies of echo-rust) under one plugind. Once all are `running` and
//! the start-up work has settled, it measures plugind's resident memory, its CPU use while idle
//! (nothing is called; plugind only keeps the health pings going), and the latency of
//! `plugins.list`, whose answer grows with N.
//!
//! RSS and idle CPU have targets rather than floors (issue 10: < 60 MB and < 2 % of one core at
//! N = 1000); their lines print the target in the floor column, so the ratio says how much of it
//! is used. `plugins.list` has no floor: nothing else produces that answer.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::report::{line, Floor, Samples};
use crate::wire::{LineConn, Request, Timing};
use anyhow::{bail, Context as _};
use std::time::Duration;
use tokio::runtime::Runtime;

/// Plugind's RSS target at 1000 plugins, MB.
const RSS_TARGET_MB: f64 = 60.0;
/// Plugind's idle CPU target at 1000 plugins, % of one core.
const IDLE_CPU_TARGET_PCT: f64 = 2.0;

/// How a scale run is shaped.
pub struct Shape {
    /// How many plugins.
    pub plugins: usize,
    /// How long to wait after all are `running` before measuring.
    pub settle: Duration,
    /// How long to measure idle CPU (cover at least one health-ping period, 10 s by default, for a
    /// figure that includes a full round of pings).
    pub idle: Duration,
    /// Timing of the `plugins.list` measurement.
    pub list: Timing,
}

/// Starts plugind on `shape.plugins` echo-rust copies and prints the (g) lines.
pub fn run(rt: &Runtime, bins: &Bins, placement: &str, shape: &Shape) -> anyhow::Result<()> {
    let n = shape.plugins;
    let name = |what: &str| format!("g.scale.n{n}.{what}");
    let defs: Vec<PluginDef> = (0..n).map(|i| PluginDef::plain(format!("p-{i:04}"))).collect();
    let mut daemon = Daemon::start(bins, &defs)?;
    let started = rt.block_on(daemon.wait_running(n as u64, Duration::from_secs(300)))?;
    line(&name("start"), placement, started.as_secs_f64() * 1e3, "ms", None);
    std::thread::sleep(shape.settle);

    let pid = daemon.pid();
    let rss_mb = proc_status_kb(pid, "VmRSS:")? / 1024.0;
    let target = Floor { value: RSS_TARGET_MB, name: "target" };
    line(&name("rss"), placement, rss_mb, "MB", Some(target));

    let cpu0 = cpu_ns(pid)?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(shape.idle);
    let pct = (cpu_ns(pid)? - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let target = Floor { value: IDLE_CPU_TARGET_PCT, name: "target" };
    line(&name("idle_cpu"), placement, pct, "% of a core", Some(target));

    let mut conn = LineConn::unix(&daemon.socket)?;
    let req = Request::new("plugins.list", "{}");
    let listed = conn.result(&req).context("plugins.list")?;
    let count = listed.as_array().map_or(0, Vec::len);
    if count != n {
        bail!("plugins.list listed {count} plugins, expected {n}");
    }
    println!("# {}: the plugins.list answer is {} bytes", name("list"), listed.to_string().len());
    let s = Samples::new(conn.latencies(&req, shape.list)?);
    for p in [50.0, 99.0] {
        line(&format!("{}.p{p}", name("list")), placement, s.pct_ms(p), "ms", None);
    }
    drop(conn);
    rt.block_on(daemon.stop())
}

/// A `kB` field of /proc/PID/status.
fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU time of `pid` (all its threads, exited ones included: `utime + stime` of /proc/PID/stat),
/// in ns. The kernel counts it in 10 ms ticks, so a 10 s window resolves 0.1 % of a core.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).context("malformed /proc/PID/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks(14)? + ticks(15)?) * 1_000_000_000 / hz)
}
