//! Call benchmarks: floors (i) pipe, (ii) Unix socket, (iii) ideal relay, (iv) ideal router;
//! then plugind's (a) sequential `execute`, (b) pipelined `execute`, (c) plugin → plugin
//! `service.call` (against the router), (d) `hooks.run` through a chain of 3 plugins (against
//! three relay round trips).
//!
//! plugind and the relay run side by side and are measured in alternating rounds, so a drift of
//! the machine (other tenants of the VM, frequency) hits both and the ratios stay meaningful.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::peers::Ours;
use crate::report::{line, Floor, Samples};
use crate::wire::{LineConn, Request, Timing, PAYLOAD};
use anyhow::{bail, Context as _};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Sequential latencies of `req` on `floor` and on `ours`, in `rounds` alternating rounds.
fn alternate_latencies(
    floor: &mut LineConn,
    ours: &mut LineConn,
    req: &Request,
    t: Timing,
    rounds: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let (mut f, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        f.extend(floor.latencies(req, t)?);
        o.extend(ours.latencies(req, t)?);
    }
    Ok((Samples::new(f), Samples::new(o)))
}

/// Calls per second of `req` with `depth` in flight on `floor` and on `ours`: the medians of
/// `rounds` alternating rounds.
fn alternate_throughput(
    floor: &mut LineConn,
    ours: &mut LineConn,
    req: &Request,
    depth: usize,
    t: Timing,
    rounds: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut f, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        f.push(floor.throughput(req, depth, t)?);
        o.push(ours.throughput(req, depth, t)?);
    }
    Ok((median(f), median(o)))
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
    conn.check(&Request::echo("echo"), PAYLOAD)?;
    let s = Samples::new(conn.latencies(&Request::echo("echo"), t)?);
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
    conn.check(&Request::echo("echo"), PAYLOAD)?;
    let s = Samples::new(conn.latencies(&Request::echo("echo"), t)?);
    drop(conn);
    child.wait()?;
    latency_lines("floor.unix", placement, &s, None);
    Ok(())
}

/// A relay (`--relay`) in front of `plugin` (argv), connected.
fn relay(bins: &Bins, sock: &Path, plugin: &[&OsStr]) -> anyhow::Result<(Ready, LineConn)> {
    relay_as("--relay", bins, sock, plugin)
}

/// The relay of `mode` (`--relay`, `--relay-async`) in front of `plugin` (argv), connected.
fn relay_as(mode: &str, bins: &Bins, sock: &Path, plugin: &[&OsStr]) -> anyhow::Result<(Ready, LineConn)> {
    let child = Ready::spawn(Command::new(&bins.me).arg(mode).arg(sock).args(plugin))?;
    let mut conn = LineConn::unix(sock)?;
    conn.check(&Request::echo("echo"), PAYLOAD)?;
    Ok((child, conn))
}

/// Diagnostic: the relay in front of the `--child-pipe` echo instead of echo-rust, to show how
/// much of the relay floor is the plugin (its SDK) rather than the relaying.
pub fn relay_rawchild(bins: &Bins, dir: &Path, placement: &str, t: Timing) -> anyhow::Result<()> {
    let name = "floor.relay_rawchild";
    let (child, mut conn) = relay(bins, &dir.join("rawchild.sock"), &[bins.me.as_os_str(), "--child-pipe".as_ref()])?;
    let req = Request::echo("echo");
    latency_lines(name, placement, &Samples::new(conn.latencies(&req, t)?), None);
    for depth in DEPTHS {
        line(&format!("{name}.tput{depth}"), placement, conn.throughput(&req, depth, t)?, "calls/s", None);
    }
    drop(conn);
    child.wait()
}

/// The hook of (d).
const HOOK: &str = "onRequest";

/// The plugins of the call benchmarks: `echo`, `caller` allowed to call it, and the chain of (d):
/// `hook-1`..`hook-3` handling [`HOOK`] in that order (each passes the payload on unchanged).
pub fn call_plugins() -> Vec<PluginDef> {
    let mut defs =
        vec![PluginDef::plain("echo"), PluginDef { requires: vec!["echo".into()], ..PluginDef::plain("caller") }];
    defs.extend(
        (1..=3).map(|i| PluginDef { hooks: vec![(HOOK.into(), i * 10)], ..PluginDef::plain(format!("hook-{i}")) }),
    );
    // (d2) the gateway's request path: one plugin per hook, and the `echo` service as the model.
    defs.extend(
        GATEWAY_HOOKS.iter().map(|&(h, plugin)| PluginDef { hooks: vec![(h.into(), 10)], ..PluginDef::plain(plugin) }),
    );
    defs
}

/// The hooks of a gateway request and the plugin handling each, in order (the model call comes
/// between the second and the third).
const GATEWAY_HOOKS: [(&str, &str); 3] =
    [("gw.onRequest", "gw-request"), ("gw.onPrompt", "gw-prompt"), ("gw.onResponse", "gw-response")];

/// (d2) One gateway request as a host makes it: `hooks.run` onRequest and onPrompt, `services.call`
/// of the model, `hooks.run` onResponse, one after the other. The floor is the same four plugins
/// called with plain `execute`s, no hook machinery: what a host would pay calling them itself.
fn gateway_lines(ours: &mut LineConn, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let [(request, p1), (prompt, p2), (response, p3)] = GATEWAY_HOOKS;
    let model = Request::new("services.call", &format!(r#"{{"service":"echo","method":"echo","params":{PAYLOAD}}}"#));
    let path = [Request::hook(request), Request::hook(prompt), model, Request::hook(response)];
    let direct = [Request::echo(p1), Request::echo(p2), Request::echo("echo"), Request::echo(p3)];
    for (req, what) in path.iter().zip(["onRequest", "onPrompt", "services.call", "onResponse"]) {
        ours.result(req).with_context(|| format!("(d2) {what}"))?;
    }
    let sequence = |conn: &mut LineConn, reqs: &[Request]| -> anyhow::Result<Vec<Duration>> {
        let start = Instant::now();
        let mut v = Vec::new();
        loop {
            let t0 = Instant::now();
            for r in reqs {
                conn.call(r)?;
            }
            let t1 = Instant::now();
            if t0 - start >= t.warmup {
                v.push(t1 - t0);
            }
            if t1 - start >= t.warmup + t.run {
                return Ok(v);
            }
        }
    };
    let (mut floor, mut s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor.extend(sequence(ours, &direct)?);
        s.extend(sequence(ours, &path)?);
    }
    let floor = Samples::new(floor);
    latency_lines("floor.gateway_direct", placement, &floor, None);
    latency_lines("d2.gateway_request", placement, &Samples::new(s), Some((&floor, "4 executes", 1.0)));
    Ok(())
}

/// Floor (iii) and (a), (b), (c), (d), and the event-loop relay: the relays and a plugind already
/// running [`call_plugins`], in `rounds` alternating rounds of `t` each. Returns plugind's (a)
/// and (b) figures, which the MCP peers are compared with.
pub fn relay_and_plugind(
    bins: &Bins,
    dir: &Path,
    daemon: &Daemon,
    placement: &str,
    t: Timing,
    rounds: usize,
) -> anyhow::Result<Ours> {
    let (relay_child, mut relay) = relay(bins, &dir.join("relay.sock"), &[bins.echo.as_os_str()])?;
    let mut ours = LineConn::unix(&daemon.socket)?;
    let req = Request::echo("echo");
    ours.check(&req, PAYLOAD).context("(a) execute")?;

    let (floor_seq, our_seq) = alternate_latencies(&mut relay, &mut ours, &req, t, rounds)?;
    latency_lines("floor.relay", placement, &floor_seq, None);
    latency_lines("a.execute", placement, &our_seq, Some((&floor_seq, "relay", 1.0)));
    let (our_p50, our_p99) = (our_seq.pct_us(50.0), our_seq.pct_us(99.0));
    let mut our_tput = Vec::new();

    for depth in DEPTHS {
        let (floor, rate) = alternate_throughput(&mut relay, &mut ours, &req, depth, t, rounds)?;
        line(&format!("floor.relay.tput{depth}"), placement, floor, "calls/s", None);
        let f = Some(Floor { value: floor, name: "relay" });
        our_tput.push(rate);
        line(&format!("b.execute.tput{depth}"), placement, rate, "calls/s", f);
    }
    drop(relay);
    relay_child.wait()?;

    // Diagnostic: (a) and (b) against the relay on an event loop (`--relay-async`), in rounds of
    // their own. Against the blocking relay, plugind pays for its event loop (an `epoll_wait`
    // before each read) and for its own work; against this one only for its own work.
    let (relay_child, mut relay) =
        relay_as("--relay-async", bins, &dir.join("relay-async.sock"), &[bins.echo.as_os_str()])?;
    let (floor, us) = alternate_latencies(&mut relay, &mut ours, &req, t, rounds)?;
    latency_lines("floor.relay_async", placement, &floor, None);
    latency_lines("a.execute.vs_relay_async", placement, &us, Some((&floor, "relay_async", 1.0)));
    let depth = DEPTHS[0];
    let (floor, rate) = alternate_throughput(&mut relay, &mut ours, &req, depth, t, rounds)?;
    line(&format!("floor.relay_async.tput{depth}"), placement, floor, "calls/s", None);
    let f = Some(Floor { value: floor, name: "relay_async" });
    line(&format!("b.execute.tput{depth}.vs_relay_async"), placement, rate, "calls/s", f);
    drop(relay);
    relay_child.wait()?;

    // (c) against the ideal router, alternating; (d) against three relay hops.
    let req = Request::service_call("caller", "echo");
    let (router_child, mut router) = service_relay(bins, &dir.join("router.sock"))?;
    ours.check(&req, PAYLOAD).context("(c) service.call")?;
    let (floor, s) = alternate_latencies(&mut router, &mut ours, &req, t, rounds)?;
    drop(router);
    router_child.wait()?;
    latency_lines("floor.router", placement, &floor, None);
    latency_lines("c.service_call", placement, &s, Some((&floor, "router", 1.0)));

    let req = Request::hook(HOOK);
    let result = ours.result(&req).context("(d) hooks.run")?;
    let chain = ["hook-1", "hook-2", "hook-3"];
    if result["payload"] != serde_json::from_str::<serde_json::Value>(PAYLOAD)?
        || result["handled_by"] != serde_json::json!(chain)
    {
        bail!("(d) hooks.run: unexpected result {result}");
    }
    let mut s = Vec::new();
    for _ in 0..rounds {
        s.extend(ours.latencies(&req, t)?);
    }
    latency_lines("d.hooks_run", placement, &Samples::new(s), Some((&floor_seq, "3x relay", 3.0)));
    gateway_lines(&mut ours, placement, t, rounds)?;
    Ok(Ours { p50_us: our_p50, p99_us: our_p99, tput64: our_tput[0], tput256: our_tput[1] })
}

/// The ideal router (`--service-relay`) in front of two echo-rust processes, connected.
fn service_relay(bins: &Bins, sock: &Path) -> anyhow::Result<(Ready, LineConn)> {
    let child = Ready::spawn(Command::new(&bins.me).arg("--service-relay").arg(sock).arg(&bins.echo))?;
    let mut conn = LineConn::unix(sock)?;
    conn.check(&Request::service_call("caller", "echo"), PAYLOAD)?;
    Ok((child, conn))
}

/// A short pause so one benchmark's stragglers (exiting children) do not leak into the next.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

/// The sizes of the large-payload lines: 64 KiB (a document) and 1 MiB (an image in base64).
pub const LARGE: [(usize, &str); 2] = [(64 * 1024, "64k"), (1024 * 1024, "1m")];
/// Calls in flight for the large-payload throughput lines.
const LARGE_DEPTH: usize = 16;

/// `{"blob": "xxx…"}` with `size` x's.
fn blob_params(size: usize) -> String {
    format!(r#"{{"blob":"{}"}}"#, "x".repeat(size))
}

/// `execute` of `echo` with [`blob_params`].
pub fn blob_request(size: usize) -> Request {
    Request::new("execute", &format!(r#"{{"plugin":"echo","method":"echo","params":{}}}"#, blob_params(size)))
}

/// (a) and (b) with large params echoed back, against the relay in the same run: `execute`
/// of echo-rust's `echo` with `{"blob": "xxx…"}` of each [`LARGE`] size; sequential p50/p99,
/// then MB/s (request bytes per second) with [`LARGE_DEPTH`] in flight.
pub fn large_payloads(
    bins: &Bins,
    dir: &Path,
    daemon: &Daemon,
    placement: &str,
    t: Timing,
    rounds: usize,
) -> anyhow::Result<()> {
    let (relay_child, mut relay) = relay(bins, &dir.join("relay-large.sock"), &[bins.echo.as_os_str()])?;
    let mut ours = LineConn::unix(&daemon.socket)?;
    for (size, tag) in LARGE {
        let params = blob_params(size);
        let req = blob_request(size);
        relay.check(&req, &params).with_context(|| format!("relay, {tag}"))?;
        ours.check(&req, &params).with_context(|| format!("plugind, {tag}"))?;
        let (floor, us) = alternate_latencies(&mut relay, &mut ours, &req, t, rounds)?;
        latency_lines(&format!("floor.relay.{tag}"), placement, &floor, None);
        latency_lines(&format!("a.execute.{tag}"), placement, &us, Some((&floor, "relay", 1.0)));
        let (floor, us) = alternate_throughput(&mut relay, &mut ours, &req, LARGE_DEPTH, t, rounds)?;
        let mb = |calls_per_s: f64| calls_per_s * size as f64 / 1e6;
        line(&format!("floor.relay.{tag}.mbps"), placement, mb(floor), "MB/s", None);
        let f = Some(Floor { value: mb(floor), name: "relay" });
        line(&format!("b.execute.{tag}.mbps"), placement, mb(us), "MB/s", f);
    }
    drop(relay);
    relay_child.wait()?;
    Ok(())
}
