//! (h) `pluginctl call` end to end: one CLI process per call, against the floor of spawning the
//! same binary for `--version` (process start, no connection).

use crate::daemon::{Bins, Daemon};
use crate::report::{line, Floor, Samples};
use crate::wire::PAYLOAD;
use anyhow::bail;
use std::process::Command;
use std::time::{Duration, Instant};

fn timed(cmd: &mut Command, expect: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = cmd.output()?;
    let took = t0.elapsed();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(expect) {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(took)
}

/// `calls` runs of each; prints the p50.
pub fn run(bins: &Bins, daemon: &Daemon, placement: &str, calls: usize) -> anyhow::Result<()> {
    let mut floor = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..calls {
        floor.push(timed(Command::new(&bins.pluginctl).arg("--version"), "pluginctl")?);
        let mut call = Command::new(&bins.pluginctl);
        call.arg("--socket").arg(&daemon.socket).args(["call", "echo", "echo", PAYLOAD]);
        ours.push(timed(&mut call, "hello")?);
    }
    let f = Floor { value: Samples::new(floor).pct_ms(50.0), name: "pluginctl --version" };
    line("h.pluginctl_call.p50", placement, Samples::new(ours).pct_ms(50.0), "ms", Some(f));
    Ok(())
}
