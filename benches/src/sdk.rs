//! SDK overhead: the same echo plugin written raw and on each SDK (Rust, Python, Node), both
//! called through plugind: sequential `execute` p50/p99 and throughput with 64 in flight.
//!
//! The raw plugins (`benches/plugins/raw/`: one loop, the language's standard library only,
//! `serde_json` for Rust) are the floors; the SDK plugins are `echo-rust` (the Rust SDK example)
//! and `benches/plugins/sdk/echo.{py,mjs}` (the template's shape) with the SDK file copied next to
//! them, as `pluginctl new` does. One plugind serves all six; raw and SDK alternate in rounds, so a
//! drift of the machine hits both. Targets: SDK p50 ≤ 1.25 × raw, calls/s ≥ 80 % of raw.

use crate::daemon::{Bins, Daemon, Main, PluginDef};
use crate::report::{line, Floor, Samples};
use crate::wire::{LineConn, Request, Timing, PAYLOAD};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Target: the SDK's sequential p50 at most this × raw.
pub const P50_TARGET: f64 = 1.25;
/// Target: the SDK's calls/s with 64 in flight at least this × raw.
pub const TPUT_TARGET: f64 = 0.80;
/// Calls in flight for the throughput lines.
const DEPTH: usize = 64;

/// The bench's plugin sources (`benches/plugins`).
fn plugins_src() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins"))
}

/// The SDK sources: `PLUGIND_BENCH_SDK_DIR` (another checkout's `sdk/`, for a before/after), else
/// this checkout's `sdk/`.
fn sdk_src() -> PathBuf {
    std::env::var_os("PLUGIND_BENCH_SDK_DIR")
        .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk")), PathBuf::from)
}

/// One language: its raw and SDK plugins, or why it cannot run here.
struct Lang {
    name: &'static str,
    raw: PluginDef,
    sdk: PluginDef,
    missing: Option<String>,
}

fn plugin(name: &str, main: &str, files: Vec<(String, PathBuf)>, link: bool) -> PluginDef {
    PluginDef { main: Some(Main { main: main.to_owned(), files, link }), ..PluginDef::plain(name) }
}

/// `None` if `program --version` runs, else why not.
fn runtime_missing(program: &str) -> Option<String> {
    match Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`{program} --version` failed ({s})")),
        Err(e) => Some(format!("{program} not found: {e}")),
    }
}

fn langs(bins: &Bins) -> Vec<Lang> {
    let (src, sdk) = (plugins_src(), sdk_src());
    let raw_rust = bins.me.with_file_name("raw-echo-rust");
    let rust_missing = (!raw_rust.is_file())
        .then(|| format!("{} not found: cargo build --release -p plugind-bench", raw_rust.display()));
    let script = |lang: &str, file: &str, sdk_file: &str, sdk_sub: &str| -> (PluginDef, PluginDef) {
        let raw = plugin(&format!("raw-{lang}"), file, vec![(file.into(), src.join("raw").join(file))], false);
        let with_sdk = plugin(
            &format!("sdk-{lang}"),
            file,
            vec![(file.into(), src.join("sdk").join(file)), (sdk_file.into(), sdk.join(sdk_sub).join(sdk_file))],
            false,
        );
        (raw, with_sdk)
    };
    let (py_raw, py_sdk) = script("python", "echo.py", "plugind_sdk.py", "python");
    let (js_raw, js_sdk) = script("node", "echo.mjs", "plugind-sdk.mjs", "node");
    vec![
        Lang {
            name: "rust",
            raw: plugin("raw-rust", "raw-echo-rust", vec![("raw-echo-rust".into(), raw_rust)], true),
            sdk: plugin("sdk-rust", "echo-rust", vec![("echo-rust".into(), bins.echo.clone())], true),
            missing: rust_missing,
        },
        Lang { name: "python", raw: py_raw, sdk: py_sdk, missing: runtime_missing("python3") },
        Lang { name: "node", raw: js_raw, sdk: js_sdk, missing: runtime_missing("node") },
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Runs the SDK overhead lines in this placement.
pub fn run(rt: &tokio::runtime::Runtime, bins: &Bins, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let mut langs = langs(bins);
    // PLUGIND_BENCH_SDK_LANGS=python,node: only those (while working on one SDK).
    if let Ok(only) = std::env::var("PLUGIND_BENCH_SDK_LANGS") {
        langs.retain(|l| only.split(',').any(|o| o == l.name));
    }
    for l in langs.iter().filter(|l| l.missing.is_some()) {
        let why = l.missing.as_deref().unwrap_or_default();
        for kind in ["floor.raw", "s.sdk"] {
            crate::report::skipped(&format!("{kind}_{}", l.name), placement, why);
        }
    }
    langs.retain(|l| l.missing.is_none());
    if langs.is_empty() {
        return Ok(());
    }
    println!("# sdk overhead: plugins from {}, SDKs from {}", plugins_src().display(), sdk_src().display());
    let defs: Vec<PluginDef> = langs.iter().flat_map(|l| [l.raw.clone(), l.sdk.clone()]).collect();
    let mut d = Daemon::start(bins, &defs)?;
    rt.block_on(d.wait_running(defs.len() as u64, Duration::from_secs(60)))?;
    let result = langs.iter().try_for_each(|l| measure(&d, l, placement, t, rounds));
    rt.block_on(d.stop())?;
    result
}

fn measure(d: &Daemon, l: &Lang, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let mut conn = LineConn::unix(&d.socket)?;
    let (raw, sdk) = (Request::echo(&l.raw.name), Request::echo(&l.sdk.name));
    conn.check(&raw, PAYLOAD).with_context(|| format!("{} echo", l.raw.name))?;
    conn.check(&sdk, PAYLOAD).with_context(|| format!("{} echo", l.sdk.name))?;
    let (mut raw_seq, mut sdk_seq, mut raw_tput, mut sdk_tput) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw_seq.extend(conn.latencies(&raw, t)?);
        sdk_seq.extend(conn.latencies(&sdk, t)?);
    }
    for _ in 0..rounds {
        raw_tput.push(conn.throughput(&raw, DEPTH, t)?);
        sdk_tput.push(conn.throughput(&sdk, DEPTH, t)?);
    }
    let (raw_seq, sdk_seq) = (Samples::new(raw_seq), Samples::new(sdk_seq));
    let (raw_tput, sdk_tput) = (median(raw_tput), median(sdk_tput));
    let (floor, sdk_name) = (format!("floor.raw_{}", l.name), format!("s.sdk_{}", l.name));
    for p in [50.0, 99.0] {
        line(&format!("{floor}.p{p}"), placement, raw_seq.pct_us(p), "us", None);
    }
    line(&format!("{floor}.tput{DEPTH}"), placement, raw_tput, "calls/s", None);
    let target = |what: &str| leak(format!("raw {}, target {what}", l.name));
    let p50_floor = Floor { value: raw_seq.pct_us(50.0), name: target(&format!("<= {P50_TARGET:.2}")) };
    line(&format!("{sdk_name}.p50"), placement, sdk_seq.pct_us(50.0), "us", Some(p50_floor));
    let p99_floor = Floor { value: raw_seq.pct_us(99.0), name: leak(format!("raw {}", l.name)) };
    line(&format!("{sdk_name}.p99"), placement, sdk_seq.pct_us(99.0), "us", Some(p99_floor));
    let tput_floor = Floor { value: raw_tput, name: target(&format!(">= {TPUT_TARGET:.2}")) };
    line(&format!("{sdk_name}.tput{DEPTH}"), placement, sdk_tput, "calls/s", Some(tput_floor));
    let (p50_ratio, tput_ratio) = (sdk_seq.pct_us(50.0) / raw_seq.pct_us(50.0), sdk_tput / raw_tput);
    // A smoke run's figures are too short to hold a target to.
    let smoke = t.run < Duration::from_millis(200);
    let verdict = |ok: bool| match (smoke, ok) {
        (true, _) => "smoke, not judged",
        (false, true) => "met",
        (false, false) => "MISSED",
    };
    println!(
        "# sdk overhead {}@{placement}: p50 {p50_ratio:.2} x raw (target <= {P50_TARGET:.2}: {}), \
         tput{DEPTH} {tput_ratio:.2} of raw (target >= {TPUT_TARGET:.2}: {})",
        l.name,
        verdict(p50_ratio <= P50_TARGET),
        verdict(tput_ratio >= TPUT_TARGET),
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
