//! (j) What trace context costs with no exporter: sequential `execute` of echo-rust's `echo`
//! through a plugind that passes a `traceparent` on (the default: one random id and a `_meta`
//! of 70 bytes added to every `execute` the plugin gets), against a plugind started with
//! `PLUGIND_TRACE_CONTEXT=off`, alternating between the two in the same run. Both run the same
//! binary on the same plugins; the target is an overhead of at most 5 % of the untraced p50
//! (`docs/benchmarks.md`).

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::report::{Overhead, Samples};
use crate::wire::{LineConn, Request, Timing, PAYLOAD};
use std::time::Duration;

/// The overhead allowed, as a fraction of the untraced p50.
const TARGET: f64 = 0.05;

/// Runs (j) on two plugind processes.
pub fn run(rt: &tokio::runtime::Runtime, bins: &Bins, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let defs = [PluginDef::plain("echo")];
    let mut on = Daemon::start(bins, &defs)?;
    let mut off = Daemon::start_with_env(bins, &defs, &[("PLUGIND_TRACE_CONTEXT", "off")])?;
    rt.block_on(on.wait_running(1, Duration::from_secs(60)))?;
    rt.block_on(off.wait_running(1, Duration::from_secs(60)))?;
    let (mut c_on, mut c_off) = (LineConn::unix(&on.socket)?, LineConn::unix(&off.socket)?);
    let echo = Request::echo("echo");
    c_on.check(&echo, PAYLOAD)?;
    c_off.check(&echo, PAYLOAD)?;
    let (mut traced, mut untraced) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        untraced.extend(c_off.latencies(&echo, t)?);
        traced.extend(c_on.latencies(&echo, t)?);
    }
    drop((c_on, c_off));
    rt.block_on(on.stop())?;
    rt.block_on(off.stop())?;

    let report = Overhead {
        tag: "j.trace",
        what: "trace context",
        base_line: "j.execute_untraced.p50",
        with_line: "j.execute_traced.p50",
        floor_name: "untraced",
        target: TARGET,
    };
    report.print(placement, &Samples::new(untraced), &Samples::new(traced));
    Ok(())
}
