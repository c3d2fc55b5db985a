//! `plugind-bench`: plugind's call path, start-up and CLI measured against ideal floors.
//!
//! `cargo build --release --workspace && cargo run --release -p plugind-bench -- [--smoke]
//! [--placement cpu0|any|both] [--bin-dir DIR]`. See `docs/benchmarks.md` for what each line
//! means. Every result is one line `name@placement | figure | unit | floor | ratio`.
//!
//! The top-level process prints the header and re-runs itself with `--run PLACEMENT` once per
//! placement (under `taskset -c 0` for `cpu0`, so every process it starts inherits the pinning).
//! The same binary is also the far side of the floors: `--child-pipe`, `--child-unix PATH` and
//! `--relay SOCKET PROGRAM [ARGS…]`.

mod calls;
mod catalog;
mod child;
mod cli;
mod daemon;
mod echo;
mod listen;
mod mcp;
mod peers;
mod relay;
mod reload;
mod report;
mod scale;
mod sdk;
mod startup;
mod tracing;
mod wire;

use anyhow::Context as _;
use daemon::{Bins, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;
use wire::Timing;

const USAGE: &str = "usage: plugind-bench [--smoke] [--placement cpu0|any|both] [--bin-dir DIR] [--only GROUP]
       plugind-bench --load SECONDS [DEPTH [plugind|relay|relay-async [64k|1m] | service]]   (pipelined `execute` load, for profiling)
  --smoke       every benchmark briefly, only checking that it runs (part of `make test`)
  --placement   cpu0: everything under `taskset -c 0`; any: unpinned; both (default, smoke: any)
  --bin-dir     where plugind, pluginctl and echo-rust are (default: this binary's directory)
  --only        one group: floors, calls (relay, a-d, h, i, j, m, peers), sdk (SDK overhead), listen (k), start (e), reload (f), scale (g)";

struct Options {
    smoke: bool,
    placement: Option<String>,
    bin_dir: Option<PathBuf>,
    /// Run only this group of benchmarks (`--only`).
    only: Option<String>,
}

/// The groups `--only` can pick.
const GROUPS: [&str; 7] = ["floors", "calls", "sdk", "listen", "start", "reload", "scale"];

impl Options {
    fn runs(&self, group: &str) -> bool {
        self.only.as_deref().is_none_or(|g| g == group)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--child-pipe"] => child::serve(std::io::stdin().lock(), std::io::stdout().lock()).map_err(Into::into),
        ["--child-unix", path] => child::serve_unix(Path::new(path)).map_err(Into::into),
        ["--relay", socket, program, args @ ..] => relay::run(Path::new(socket), Path::new(program), args),
        ["--relay-async", socket, program, args @ ..] => relay::run_async(Path::new(socket), Path::new(program), args),
        ["--service-relay", socket, program] => relay::run_service(Path::new(socket), Path::new(program)),
        ["--load", secs, rest @ ..] => load(secs, rest),
        ["--run", placement, rest @ ..] => match parse(rest) {
            Ok(o) => return run(placement, &o),
            Err(e) => Err(e),
        },
        rest => match parse(rest) {
            Ok(o) => return top(&o),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plugind-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[&str]) -> anyhow::Result<Options> {
    let mut o = Options { smoke: false, placement: None, bin_dir: None, only: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--smoke" => o.smoke = true,
            "--placement" => o.placement = it.next().map(|s| (*s).to_owned()),
            "--bin-dir" => o.bin_dir = it.next().map(PathBuf::from),
            "--only" => match it.next() {
                Some(g) if GROUPS.contains(g) => o.only = Some((*g).to_owned()),
                other => anyhow::bail!("--only {other:?}: expected one of {GROUPS:?}\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn bin_dir(o: &Options) -> anyhow::Result<PathBuf> {
    match &o.bin_dir {
        Some(d) => Ok(std::fs::canonicalize(d)?),
        None => Ok(std::env::current_exe()?.parent().map(Path::to_path_buf).unwrap_or_default()),
    }
}

/// Header, then one `--run` child per placement.
fn top(o: &Options) -> ExitCode {
    let placements: Vec<&str> = match o.placement.as_deref() {
        None if o.smoke => vec!["any"],
        None | Some("both") => vec!["cpu0", "any"],
        Some(p @ ("cpu0" | "any")) => vec![p],
        Some(other) => {
            eprintln!("plugind-bench: unknown placement {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let dir = match bin_dir(o).and_then(|d| Bins::in_dir(&d).map(|_| d)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("plugind-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("# plugind-bench {} | {} | {}", env!("CARGO_PKG_VERSION"), report::machine(), report::utc_now());
    let mode = if o.smoke { "smoke" } else { "full" };
    println!("# binaries: {} | mode: {mode} | {}", dir.display(), report::load());
    println!("# placements: cpu0 = everything (client, plugind, plugins, relay) under `taskset -c 0`; any = unpinned");
    println!("# ratio = figure / floor (latency: lower is better; throughput: fraction of the floor's)");
    println!("name | figure | unit | floor | ratio");
    let mut ok = true;
    for p in placements {
        let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("plugind-bench"));
        let mut cmd = if p == "cpu0" {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(me);
            c
        } else {
            Command::new(me)
        };
        cmd.args(["--run", p, "--bin-dir"]).arg(&dir);
        if o.smoke {
            cmd.arg("--smoke");
        }
        if let Some(g) = &o.only {
            cmd.args(["--only", g]);
        }
        let (busy0, ours0) = report::cpu_seconds();
        let t0 = std::time::Instant::now();
        let status = cmd.status();
        let (busy1, ours1) = report::cpu_seconds();
        let others = ((busy1 - busy0) - (ours1 - ours0)).max(0.0) / t0.elapsed().as_secs_f64();
        let warn = if others > 0.1 { " (WARNING: other work shared the machine; figures are unreliable)" } else { "" };
        println!("# {p}: other processes used {others:.2} CPUs during this placement{warn}");
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("plugind-bench: placement {p} failed ({s})");
                ok = false;
            }
            Err(e) => {
                eprintln!("plugind-bench: cannot run placement {p}: {e} (is `taskset` (util-linux) installed?)");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--load SECONDS [DEPTH [plugind|relay|relay-async|service]]`: starts plugind on the call
/// plugins (or the relay, blocking or on an event loop, in front of echo-rust), prints `pid PID` of it, then keeps DEPTH (default 64) calls in
/// flight for SECONDS and prints the rate: `execute` of echo, or with `service` caller's
/// `service.call` of echo. For profilers and `perf stat -p PID` (docs/benchmarks.md).
/// `PLUGIND_BENCH_BIN_DIR` takes the binaries under test from another build (a before/after).
fn load(secs: &str, rest: &[&str]) -> anyhow::Result<()> {
    let run = Duration::from_secs_f64(secs.parse()?);
    let depth = rest.first().map_or(Ok(64), |d| d.parse())?;
    let kind = rest.get(1).copied().unwrap_or("plugind");
    // An optional payload size (`64k`, `1m`): `{"blob": "xxx…"}` echoed, as in the large lines.
    let blob = match rest.get(2).copied() {
        None => None,
        Some(tag) => {
            Some(calls::LARGE.iter().find(|(_, t)| *t == tag).map(|(size, _)| *size).with_context(|| {
                format!("unknown payload {tag:?}: expected one of {:?}", calls::LARGE.map(|(_, t)| t))
            })?)
        }
    };
    let dir = std::env::var_os("PLUGIND_BENCH_BIN_DIR").map(PathBuf::from);
    let bins = Bins::in_dir(&bin_dir(&Options { smoke: false, placement: None, bin_dir: dir, only: None })?)?;
    let req = match (kind, blob) {
        ("service", None) => wire::Request::service_call("caller", "echo"),
        ("plugind" | "relay" | "relay-async", None) => wire::Request::echo("echo"),
        ("plugind" | "relay" | "relay-async", Some(size)) => calls::blob_request(size),
        _ => {
            anyhow::bail!("unknown load {kind:?} {blob:?}: expected plugind, relay or relay-async [64k|1m], or service")
        }
    };
    let drive = |pid: u32, socket: &Path| -> anyhow::Result<()> {
        println!("pid {pid}");
        let mut conn = wire::LineConn::unix(socket)?;
        let rate = conn.throughput(&req, depth, Timing { warmup: Duration::ZERO, run })?;
        println!("{rate:.0} calls/s with {depth} in flight");
        Ok(())
    };
    if kind.starts_with("relay") {
        let tmp = tempfile::Builder::new().prefix("plugind-bench").tempdir()?;
        let sock = tmp.path().join("relay.sock");
        let mut relay = Command::new(&bins.me)
            .arg(format!("--{kind}"))
            .arg(&sock)
            .arg(&bins.echo)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(relay.stdout.take().context("stdout")?), &mut ready)?;
        drive(relay.id(), &sock)?;
        relay.wait()?;
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let plugins = calls::call_plugins();
    let mut d = Daemon::start(&bins, &plugins)?;
    rt.block_on(d.wait_running(plugins.len() as u64, Duration::from_secs(60)))?;
    drive(d.pid(), &d.socket)?;
    rt.block_on(d.stop())
}

/// Runs every benchmark in this process's placement; prints `N passed, N failed` at the end.
fn run(placement: &str, o: &Options) -> ExitCode {
    // Per measurement: warm-up, then run; relay and plugind alternate for `rounds` rounds.
    let (t, rounds, sizes, cli_calls) = if o.smoke {
        (Timing { warmup: Duration::from_millis(50), run: Duration::from_millis(400) }, 1, [(1, 1), (100, 1)], 5)
    } else {
        (Timing { warmup: Duration::from_millis(200), run: Duration::from_secs(1) }, 3, [(1, 10), (100, 5)], 100)
    };
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_owned())))
        .unwrap_or_default();
    println!("# placement {placement}: CPUs allowed {cpus}");
    let setup = || -> anyhow::Result<_> {
        let bins = Bins::in_dir(&bin_dir(o)?)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tmp = tempfile::Builder::new().prefix("plugind-bench").tempdir()?;
        Ok((bins, rt, tmp))
    };
    let (bins, rt, tmp) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plugind-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let mut record = |what: &str, r: anyhow::Result<()>| {
        match r {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("{what}@{placement} | failed | - | - | - (see stderr)");
                eprintln!("plugind-bench: {what} ({placement}): {e:#}");
            }
        }
        calls::settle();
    };
    if o.runs("floors") {
        record("floor.pipe", calls::pipe_floor(&bins, placement, t));
        record("floor.unix", calls::unix_floor(&bins, tmp.path(), placement, t));
        record("floor.relay_rawchild", calls::relay_rawchild(&bins, tmp.path(), placement, t));
    }
    if o.runs("calls") {
        let r = (|| -> anyhow::Result<()> {
            let plugins = calls::call_plugins();
            let mut d = Daemon::start(&bins, &plugins)?;
            rt.block_on(d.wait_running(plugins.len() as u64, Duration::from_secs(60)))?;
            let calls = calls::relay_and_plugind(&bins, tmp.path(), &d, placement, t, rounds);
            let large = calls::large_payloads(&bins, tmp.path(), &d, placement, t, rounds);
            let cli = cli::run(&bins, &d, placement, cli_calls);
            rt.block_on(d.stop())?;
            let ours = calls?;
            large?;
            cli?;
            // The MCP SDKs after plugind has stopped, so they have the machine to themselves.
            peers::run(&bin_dir(o)?, placement, o.smoke, &ours)
        })();
        record("relay+plugind", r);
        record("i.catalog", catalog::run(&rt, &bins, placement, t, rounds));
        record("j.trace", tracing::run(&rt, &bins, placement, t, rounds));
        record("m.mcp", mcp::run(&rt, &bins, placement, t));
    }
    if o.runs("listen") {
        record("k.listen", listen::run(&rt, &bins, placement, t, rounds));
    }
    if o.runs("sdk") {
        // Smoke: only proves that the six plugins answer through plugind.
        let (st, sr) = if o.smoke {
            (Timing { warmup: Duration::from_millis(10), run: Duration::from_millis(60) }, 1)
        } else {
            (t, rounds)
        };
        record("s.sdk", sdk::run(&rt, &bins, placement, st, sr));
    }
    if o.runs("start") {
        record("e.start", startup::run(&rt, &bins, placement, &sizes));
    }
    if o.runs("reload") {
        record("f.reload", reload::run(&rt, &bins, placement, if o.smoke { 3 } else { 20 }));
    }
    if o.runs("scale") {
        let shape = if o.smoke {
            scale::Shape { plugins: 50, settle: Duration::from_millis(100), idle: Duration::from_millis(500), list: t }
        } else {
            scale::Shape { plugins: 1000, settle: Duration::from_secs(2), idle: Duration::from_secs(10), list: t }
        };
        record("g.scale", scale::run(&rt, &bins, placement, &shape));
    }
    println!("# plugind-bench {placement}: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
