//! Call benchmarks: floors (i) pipe, (ii) Unix socket, (iii) ideal relay; then plugind's
//! (a) sequential `execute`, (b) pipelined `execute`, (c) plugin → plugin `service.call`.
//!
//! plugind and the relay run side by side and are measured in alternating rounds, so a drift of
//! the machine (other tenants of the VM, frequency) hits both and the ratios stay meaningful.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::report::{line, skipped, Floor, Samples};
use crate::wire::{echo_params, service_call_params, LineConn, Timing, PAYLOAD};
use anyhow::{bail, Context as _};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Pipelining depths of (b).
pub const DEPTHS: [usize; 2] = [64, 256];

/// Prints a p50/p99 pair, against `factor` × the floor's percentiles if there is one.
fn latency_lines(name: &str, placement: &str, s: &Samples, floor: Option<(&Samples, &'static str, f64)>) {
    for p in [50.0, 99.0] {
        let f = floor.map(|(f, n, factor)| Floor { value: factor * f.pct_us(p), name: n });
        line(&format!("{name}.p{p}"), placement, s.pct_us(p), "us", f);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A child that printed `ready` on stdout; killed if dropped before it exits.
struct Ready(Child);

impl Ready {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Ready> {
        let mut child = Ready(cmd.stdout(Stdio::piped()).spawn()?);
        let mut first = String::new();
        BufReader::new(child.0.stdout.take().context("stdout")?).read_line(&mut first)?;
        if first.trim() != "ready" {
            bail!("child did not start: {first:?}");
        }
        Ok(child)
    }

    /// Waits for the exit (after the client hung up).
    fn wait(mut self) -> anyhow::Result<()> {
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Floor (i): round trips over a pipe to a child running `--child-pipe`.
pub fn pipe_floor(bins: &Bins, placement: &str, t: Timing) -> anyhow::Result<()> {
    let mut child = Command::new(&bins.me).arg("--child-pipe").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let (r, w) = (child.stdout.take().context("stdout")?, child.stdin.take().context("stdin")?);
    let mut conn = LineConn::new(Box::new(r), Box::new(w));
    conn.check(&echo_params("echo"), PAYLOAD)?;
    let s = Samples::new(conn.latencies(&echo_params("echo"), t)?);
    drop(conn);
    child.wait()?;
    latency_lines("floor.pipe", placement, &s, None);
    Ok(())
}

/// Floor (ii): round trips over a Unix socket to a child running `--child-unix`.
pub fn unix_floor(bins: &Bins, dir: &Path, placement: &str, t: Timing) -> anyhow::Result<()> {
    let sock = dir.join("floor.sock");
    let child = Ready::spawn(Command::new(&bins.me).arg("--child-unix").arg(&sock))?;
    let mut conn = LineConn::unix(&sock)?;
    conn.check(&echo_params("echo"), PAYLOAD)?;
    let s = Samples::new(conn.latencies(&echo_params("echo"), t)?);
    drop(conn);
    child.wait()?;
    latency_lines("floor.unix", placement, &s, None);
    Ok(())
}

/// A relay (`--relay`) in front of `plugin` (argv), connected.
fn relay(bins: &Bins, sock: &Path, plugin: &[&OsStr]) -> anyhow::Result<(Ready, LineConn)> {
    let child = Ready::spawn(Command::new(&bins.me).arg("--relay").arg(sock).args(plugin))?;
    let mut conn = LineConn::unix(sock)?;
    conn.check(&echo_params("echo"), PAYLOAD)?;
    Ok((child, conn))
}

/// Diagnostic: the relay in front of the `--child-pipe` echo instead of echo-rust, to show how
/// much of the relay floor is the plugin (its SDK) rather than the relaying.
pub fn relay_rawchild(bins: &Bins, dir: &Path, placement: &str, t: Timing) -> anyhow::Result<()> {
    let name = "floor.relay_rawchild";
    let (child, mut conn) = relay(bins, &dir.join("rawchild.sock"), &[bins.me.as_os_str(), "--child-pipe".as_ref()])?;
    let params = echo_params("echo");
    latency_lines(name, placement, &Samples::new(conn.latencies(&params, t)?), None);
    for depth in DEPTHS {
        line(&format!("{name}.tput{depth}"), placement, conn.throughput(&params, depth, t)?, "calls/s", None);
    }
    drop(conn);
    child.wait()
}

/// The plugins of the call benchmarks: `echo`, and `caller` allowed to call it.
pub fn call_plugins() -> Vec<PluginDef> {
    vec![PluginDef::plain("echo"), PluginDef { name: "caller".into(), requires: vec!["echo".into()] }]
}

/// Floor (iii) and (a), (b), (c): the relay and a plugind already running [`call_plugins`],
/// in `rounds` alternating rounds of `t` each.
pub fn relay_and_plugind(
    bins: &Bins,
    dir: &Path,
    daemon: &Daemon,
    placement: &str,
    t: Timing,
    rounds: usize,
) -> anyhow::Result<()> {
    let (relay_child, mut relay) = relay(bins, &dir.join("relay.sock"), &[bins.echo.as_os_str()])?;
    let mut ours = LineConn::unix(&daemon.socket)?;
    let params = echo_params("echo");
    ours.check(&params, PAYLOAD).context("(a) execute")?;

    let (mut floor_seq, mut our_seq) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor_seq.extend(relay.latencies(&params, t)?);
        our_seq.extend(ours.latencies(&params, t)?);
    }
    let floor_seq = Samples::new(floor_seq);
    latency_lines("floor.relay", placement, &floor_seq, None);
    latency_lines("a.execute", placement, &Samples::new(our_seq), Some((&floor_seq, "relay", 1.0)));

    for depth in DEPTHS {
        let (mut floor_rates, mut our_rates) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            floor_rates.push(relay.throughput(&params, depth, t)?);
            our_rates.push(ours.throughput(&params, depth, t)?);
        }
        let floor = median(floor_rates);
        line(&format!("floor.relay.tput{depth}"), placement, floor, "calls/s", None);
        let f = Some(Floor { value: floor, name: "relay" });
        line(&format!("b.execute.tput{depth}"), placement, median(our_rates), "calls/s", f);
    }
    drop(relay);
    relay_child.wait()?;

    let params = service_call_params("caller", "echo");
    match ours.check(&params, PAYLOAD) {
        Ok(()) => {
            let mut s = Vec::new();
            for _ in 0..rounds {
                s.extend(ours.latencies(&params, t)?);
            }
            latency_lines("c.service_call", placement, &Samples::new(s), Some((&floor_seq, "2x relay", 2.0)));
        }
        Err(e) => skipped("c.service_call", placement, &format!("{e:#}")),
    }
    Ok(())
}

/// A short pause so one benchmark's stragglers (exiting children) do not leak into the next.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}
