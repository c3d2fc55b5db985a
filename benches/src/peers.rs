//! Peers: the MCP SDKs doing the work of (a) and (b), so that plugind's figures can be read against
//! the tools people would otherwise use to call a local tool over stdio.
//!
//! Each peer is a client and a stdio server written with one MCP SDK: the TypeScript SDK
//! (`mcp_ts`, `benches/peers/node`) and the Python SDK (`mcp_py`, `benches/peers/python`). The
//! client starts the server, checks one `echo` call in full (`{"msg":"hello","n":42}` comes back),
//! then measures what plugind's (a) and (b) measure: sequential calls → p50/p99 latency, and 64 /
//! 256 calls in flight with the window kept full → calls per second. Each measurement has a 0.2 s
//! warm-up. The client prints one JSON line; this module turns it into result lines and into
//! comparisons with plugind's figures of the same run (`a.execute.p50.vs_mcp_ts`…, where the
//! floor is the peer's figure).
//!
//! The peers are installed by the bench, not by `make test`: into `target/bench-peers/` (beside
//! the binaries' directory), with `npm ci` from a committed lockfile and a venv with pinned
//! requirements. That needs node ≥ 18 with npm, python3 ≥ 3.10 and the package registries, once;
//! later runs reuse the installation while its manifest is unchanged. A peer that cannot be
//! installed or started is `skipped` (the bench does not depend on it); a peer that runs but
//! answers wrongly is a failure. `--smoke` installs nothing and runs only the peers already there.
//!
//! The clients run as children of the bench, so they inherit its CPU placement (`taskset -c 0`).

use crate::report::{line, skipped, Floor};
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One peer's figures.
#[derive(Clone, Copy, Debug)]
pub struct PeerFigures {
    /// Sequential calls: median latency, µs.
    pub p50_us: f64,
    /// Sequential calls: 99th-percentile latency, µs.
    pub p99_us: f64,
    /// Calls per second with 64 in flight.
    pub tput64: f64,
    /// Calls per second with 256 in flight.
    pub tput256: f64,
}

/// plugind's own figures from the same run, to compare with.
#[derive(Clone, Copy, Debug)]
pub struct Ours {
    /// `a.execute.p50`, µs.
    pub p50_us: f64,
    /// `a.execute.p99`, µs.
    pub p99_us: f64,
    /// `b.execute.tput64`, calls/s.
    pub tput64: f64,
    /// `b.execute.tput256`, calls/s.
    pub tput256: f64,
}

/// How long a client may take before it is killed (it measures for about 4 × `seconds`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The runtime a peer is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Node,
    Python,
}

/// One peer: where its sources are, what decides whether its installation is current, how to
/// install and run it.
struct Peer {
    /// In result names: `peer.<name>.*` and `*.vs_<name>`.
    name: &'static str,
    /// In the floor column of the comparisons.
    label: &'static str,
    /// Directory under `benches/peers/` and under `target/bench-peers/`.
    dir: &'static str,
    /// The files that pin its dependencies: a change reinstalls them.
    manifests: &'static [&'static str],
    runtime: Runtime,
}

const PEERS: [Peer; 2] = [
    Peer {
        name: "mcp_ts",
        label: "mcp-ts",
        dir: "node",
        manifests: &["package.json", "package-lock.json"],
        runtime: Runtime::Node,
    },
    Peer { name: "mcp_py", label: "mcp-py", dir: "python", manifests: &["requirements.txt"], runtime: Runtime::Python },
];

/// Installs (unless `smoke`: then runs only peers already installed, and prints `skipped` for
/// others) and runs both peers, printing result lines.
///
/// `bin_dir` is where the binaries under test are (`target/release`); the peers are installed
/// beside it, in `target/bench-peers/`. Every peer is tried; a failed one prints a `failed` line and
/// its error on stderr, and the result is an error naming the failed peers.
pub fn run(bin_dir: &Path, placement: &str, smoke: bool, ours: &Ours) -> anyhow::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let root = bin_dir.parent().unwrap_or(bin_dir).join("bench-peers");
    let seconds = if smoke { 0.3 } else { 1.0 };
    let mut failed = Vec::new();
    for peer in &PEERS {
        let name = format!("peer.{}", peer.name);
        let dest = root.join(peer.dir);
        if let Err(why) = prepare(peer, &src.join(peer.dir), &dest, smoke) {
            // One line: the details are in the install log, whose tail went to stderr.
            skipped(&name, placement, &format!("{why:#}").replace('\n', " "));
            continue;
        }
        match measure(peer, &dest, seconds) {
            Ok(f) => print_lines(peer, placement, &f, ours),
            Err(e) => {
                println!("{name}@{placement} | failed | - | - | - (see stderr)");
                eprintln!("plugind-bench: {name} ({placement}): {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} failed (errors above)", failed.join(", "));
    }
    Ok(())
}

/// The peer's own figures, then plugind's against them (ratio < 1: plugind is faster for
/// latencies; for throughputs, the ratio is how many times the peer's throughput plugind reaches).
fn print_lines(peer: &Peer, placement: &str, f: &PeerFigures, ours: &Ours) {
    let n = peer.name;
    line(&format!("peer.{n}.p50"), placement, f.p50_us, "us", None);
    line(&format!("peer.{n}.p99"), placement, f.p99_us, "us", None);
    line(&format!("peer.{n}.tput64"), placement, f.tput64, "calls/s", None);
    line(&format!("peer.{n}.tput256"), placement, f.tput256, "calls/s", None);
    let floor = |value| Some(Floor { value, name: peer.label });
    line(&format!("a.execute.p50.vs_{n}"), placement, ours.p50_us, "us", floor(f.p50_us));
    line(&format!("a.execute.p99.vs_{n}"), placement, ours.p99_us, "us", floor(f.p99_us));
    line(&format!("b.execute.tput64.vs_{n}"), placement, ours.tput64, "calls/s", floor(f.tput64));
    line(&format!("b.execute.tput256.vs_{n}"), placement, ours.tput256, "calls/s", floor(f.tput256));
}

/// Makes `dest` a current copy of the peer's sources with its dependencies installed. An error
/// means the peer cannot run here (no runtime, no registry, or `smoke` and not installed yet): its
/// text is the reason printed in the `skipped` line.
fn prepare(peer: &Peer, src: &Path, dest: &Path, smoke: bool) -> anyhow::Result<()> {
    let runtime_version = check_runtime(peer.runtime)?;
    // The stamp records what was installed: the manifests and the runtime's version. Installed
    // dependencies are reused only while both are unchanged.
    let mut stamp = format!("{runtime_version}\n");
    for m in peer.manifests {
        let path = src.join(m);
        stamp += &fs::read_to_string(&path).with_context(|| format!("no peer sources: {}", path.display()))?;
    }
    let stamp_path = dest.join(".installed");
    let installed = fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if !installed && smoke {
        bail!("not installed or out of date; a full run of the bench installs it");
    }
    copy_sources(src, dest)?;
    if !installed {
        let log = dest.join("install.log");
        eprintln!("plugind-bench: installing peer {} into {} (log: {})", peer.name, dest.display(), log.display());
        let t0 = Instant::now();
        install(peer.runtime, dest, &log)?;
        fs::write(&stamp_path, stamp)?;
        eprintln!("plugind-bench: peer {} installed in {:.1} s", peer.name, t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Checks that the runtime is there and recent enough; returns its version.
fn check_runtime(runtime: Runtime) -> anyhow::Result<String> {
    let (program, script, needs) = match runtime {
        Runtime::Node => (
            "node",
            "const v = process.versions.node; console.log(v); process.exit(+v.split('.')[0] >= 18 ? 0 : 1)",
            "18",
        ),
        Runtime::Python => {
            ("python3", "import sys; print(sys.version.split()[0]); sys.exit(sys.version_info < (3, 10))", "3.10")
        }
    };
    let flag = if runtime == Runtime::Node { "-e" } else { "-c" };
    let out = Command::new(program)
        .args([flag, script])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!("needs {program} >= {needs}, found {version:?}");
    }
    Ok(format!("{program} {version}"))
}

/// Copies the regular files of `src` (scripts and manifests, not subdirectories) into `dest`.
fn copy_sources(src: &Path, dest: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    for entry in fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), dest.join(entry.file_name()))
                .with_context(|| format!("copy {} to {}", entry.path().display(), dest.display()))?;
        }
    }
    Ok(())
}

/// Installs the dependencies in `dest` (which holds the sources), logging to `log`.
fn install(runtime: Runtime, dest: &Path, log: &Path) -> anyhow::Result<()> {
    File::create(log).with_context(|| format!("create {}", log.display()))?;
    match runtime {
        // `npm ci` installs exactly the committed lockfile (and removes an old node_modules first);
        // no package needs its install scripts. One quick retry: without a registry, npm's default
        // retries take over a minute to give up, and this would be paid again at each placement.
        Runtime::Node => {
            let retries = ["--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000"];
            let npm_ci = ["ci", "--no-audit", "--no-fund", "--ignore-scripts"];
            logged("npm ci", Command::new("npm").args(npm_ci).args(retries), dest, log)
        }
        Runtime::Python => {
            let venv = dest.join("venv");
            if venv.exists() {
                fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
            }
            logged("python3 -m venv", Command::new("python3").args(["-m", "venv", "venv"]), dest, log)?;
            let pip = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", "requirements.txt"];
            logged("pip install", Command::new(venv.join("bin/python")).args(pip), dest, log)
        }
    }
}

/// Runs `cmd` (`what`, in messages) in `dir` with its output appended to `log`; fails unless it
/// exits with 0, printing the log's tail on stderr.
fn logged(what: &str, cmd: &mut Command, dir: &Path, log: &Path) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(log)?;
    writeln!(f, "$ {cmd:?}")?;
    let status = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        eprintln!("plugind-bench: `{what}` failed ({status}){}", tail(log));
        bail!("`{what}` failed ({status}); see {}", log.display());
    }
    Ok(())
}

/// The last lines of a log file, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let shown: Vec<&str> = lines.into_iter().rev().collect();
    format!("; see {}:\n{}", log.display(), shown.join("\n"))
}

/// Runs the installed peer's client for `seconds` per measurement and parses its JSON line. Any
/// failure here is a failure of the benchmark: the peer is installed, so it must answer right.
fn measure(peer: &Peer, dest: &Path, seconds: f64) -> anyhow::Result<PeerFigures> {
    let (program, script): (PathBuf, _) = match peer.runtime {
        Runtime::Node => ("node".into(), "client.mjs"),
        Runtime::Python => (dest.join("venv/bin/python"), "client.py"),
    };
    let out_path = dest.join("client.out");
    let log = dest.join("client.log");
    // Output to files, not pipes: the client and its server may write any amount to stderr while
    // this thread only polls for the exit.
    let mut child = Command::new(&program)
        .arg(script)
        .args(["--seconds", &seconds.to_string()])
        .current_dir(dest)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t0.elapsed() > CLIENT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{script} did not finish in {} s{}", CLIENT_TIMEOUT.as_secs(), tail(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        bail!("{script} failed ({status}){}", tail(&log));
    }
    let out = fs::read_to_string(&out_path)?;
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    PeerFigures::parse(last).with_context(|| format!("{script} printed {last:?}"))
}

impl PeerFigures {
    /// Parses a client's line `{"p50_us":…, "p99_us":…, "tput64":…, "tput256":…, "calls":…}`;
    /// every figure must be a positive number.
    fn parse(line: &str) -> anyhow::Result<PeerFigures> {
        let v: Value = serde_json::from_str(line).context("not JSON")?;
        let get = |key: &str| -> anyhow::Result<f64> {
            match v.get(key).and_then(Value::as_f64) {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x),
                _ => bail!("`{key}` is not a positive number"),
            }
        };
        get("calls")?;
        Ok(PeerFigures {
            p50_us: get("p50_us")?,
            p99_us: get("p99_us")?,
            tput64: get("tput64")?,
            tput256: get("tput256")?,
        })
    }
}
