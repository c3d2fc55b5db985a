//! Issue 9: plugins that misbehave, one test per behaviour of `tests/fixtures/bad-plugin`.
//!
//! For each: the calls to it end with a typed JSON-RPC error within their deadline (plus a small
//! margin), it is stopped or restarted as its restart policy says, its status (`last_error`,
//! `last_exit`, `stderr_tail`, `history`) explains what happened, and another plugin (perl-echo,
//! the bystander) keeps answering while it happens.
//!
//! `bad-plugin` is a workspace member built by `cargo build --workspace` (`make test` runs that
//! first); [`bad_plugin_bin`] also builds it once per test run, so `cargo test -p plugind` alone
//! works too.

use crate::support::*;
use plugind_client::ClientError;
use serde_json::{json, Value};
use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How late after its deadline a call may end (scheduling on a loaded 2-core CI machine).
const MARGIN: Duration = Duration::from_millis(500);

/// The bad-plugin binary next to plugind's (same target dir and profile), built once per run.
pub fn bad_plugin_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_plugind")).parent().unwrap();
        let bin = dir.join("bad-plugin");
        // A no-op when `cargo build --workspace` ran first; keeps the fixture fresh otherwise.
        let mut cargo = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "-p", "bad-plugin"]).current_dir(repo());
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        match cargo.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) if bin.exists() => {
                eprintln!("cargo build -p bad-plugin failed; using the existing binary: {out:?}")
            }
            other => panic!("bad-plugin is not built and cannot be (cargo build --workspace): {other:?}"),
        }
        assert!(bin.exists(), "{} missing after cargo build -p bad-plugin", bin.display());
        bin
    })
}

/// The manifest of bad-plugin as `bad` in `mode` (deadline 1 s), with `extra` fields on top.
pub fn bad_manifest(name: &str, mode: &str, extra: Value) -> String {
    let mut m = json!({
        "name": name,
        "version": "0.1.0",
        "command": [bad_plugin_bin().to_str().unwrap(), "--mode", mode],
        "timeout_ms": 1000,
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m.to_string()
}

/// A daemon builder with the bystander (perl-echo) and bad-plugin as `bad`.
fn with_bad(mode: &str, extra: Value) -> DaemonBuilder {
    Daemon::builder().plugin("perl-echo").plugin_files("bad", &[("plugin.json", &bad_manifest("bad", mode, extra))])
}

/// Runs `work` while the bystander is called in a loop on its own connection; asserts every
/// bystander call succeeded, each within a second.
async fn meanwhile<T>(d: &Daemon, work: impl Future<Output = T>) -> T {
    let done = Cell::new(false);
    let work = async {
        let out = work.await;
        done.set(true);
        out
    };
    let bystander = async {
        d.wait_state("perl-echo", "running").await;
        let c = d.client().await;
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        loop {
            let t = Instant::now();
            let r = c.call("execute", &json!({"plugin": "perl-echo", "method": "echo", "params": n})).await;
            assert_eq!(r.unwrap(), json!(n), "the bystander answers");
            worst = worst.max(t.elapsed());
            n += 1;
            if done.get() {
                return (n, worst);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (out, (n, worst)) = tokio::join!(work, bystander);
    assert!(worst < Duration::from_secs(1), "a bystander call took {worst:?} ({n} calls)");
    out
}

/// `execute` on `bad` with an explicit deadline; returns the result and how long it took, and
/// asserts it ended by the deadline plus [`MARGIN`].
async fn timed(d: &Daemon, method: &str, params: Value, timeout_ms: u64) -> (Result<Value, ClientError>, Duration) {
    let t = Instant::now();
    let r =
        d.call("execute", json!({"plugin": "bad", "method": method, "params": params, "timeout_ms": timeout_ms})).await;
    let took = t.elapsed();
    assert!(took <= Duration::from_millis(timeout_ms) + MARGIN, "{method} took {took:?}: {r:?}");
    (r, took)
}

/// Asserts a `-32001` for plugin `bad` that came at its deadline.
fn assert_deadline(r: &Result<Value, ClientError>, took: Duration, timeout_ms: u64) {
    assert_eq!(code(r), -32001, "{r:?}");
    assert_eq!(data(r)["plugin"], "bad");
    assert_eq!(data(r)["timeout_ms"], timeout_ms);
    assert!(took >= Duration::from_millis(timeout_ms - 50), "ended before its deadline: {took:?}");
}

/// Waits until a stderr line of `bad` contains `needle`; returns the status.
async fn stderr_says(d: &Daemon, needle: &str) -> Value {
    wait_for(&format!("stderr_tail to say {needle:?}"), async || {
        let s = d.status("bad").await;
        let tail = s["stderr_tail"].as_array()?;
        tail.iter().any(|l| l.as_str().is_some_and(|l| l.contains(needle))).then_some(s)
    })
    .await
}

/// Waits until plugind's log of plugin `bad` (logs.tail) has a line containing `needle`.
async fn log_says(d: &Daemon, needle: &str) -> String {
    wait_for(&format!("the plugin log to say {needle:?}"), async || {
        let r = d.call("logs.tail", json!({"plugin": "bad", "lines": 1000})).await.ok()?;
        let lines = r["lines"].as_array()?.clone();
        lines.iter().filter_map(|l| l["message"].as_str()).find(|m| m.contains(needle)).map(str::to_owned)
    })
    .await
}

/// Waits for a restart after a crash: `running` again with another pid and `restarts` ≥ 1.
async fn restarted(d: &Daemon, old_pid: u64) -> Value {
    wait_for("bad to be restarted", async || {
        let s = d.status("bad").await;
        (s["state"] == "running" && s["restarts"].as_u64()? >= 1 && s["pid"].as_u64()? != old_pid).then_some(s)
    })
    .await
}

/// Whether any history entry of a status mentions `needle`.
fn history_says(s: &Value, needle: &str) -> bool {
    s["history"].as_array().unwrap().iter().any(|h| h.to_string().contains(needle))
}

/// The bad plugin still serves `echo`, with no restart, after misbehaving (diagnosed, not fatal).
async fn still_serves(d: &Daemon) {
    assert_eq!(d.execute("bad", "echo", json!({"still": "here"})).await.unwrap(), json!({"still": "here"}));
    let s = d.status("bad").await;
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_exits_before_answering_init() {
    let d = with_bad("exit-before-init", json!({"restart": {"max_restarts": 2, "window_s": 60}})).spawn().await;
    let s = meanwhile(&d, async {
        // While it crash-loops, calls are refused at once with its state.
        let s = wait_for("bad to fail", async || {
            let t = Instant::now();
            let r = d.execute("bad", "echo", json!(1)).await;
            assert!(t.elapsed() < MARGIN, "refused at once");
            assert_eq!(code(&r), -32002, "{r:?}");
            assert!(
                ["stopped", "starting", "restarting", "failed"].contains(&data(&r)["state"].as_str().unwrap()),
                "{r:?}"
            );
            let s = d.status("bad").await;
            (s["state"] == "failed").then_some(s)
        })
        .await;
        s
    })
    .await;
    assert_eq!(s["restarts"], 2, "{s}");
    assert_eq!(s["last_exit"]["code"], 3, "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("exit"), "{s}");
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l == "bad-plugin: exiting before init"), "{s}");
    let r = d.execute("bad", "echo", json!(1)).await;
    assert_eq!(code(&r), -32002);
    assert_eq!(data(&r)["state"], "failed");
    assert!(rpc(&r).message.contains("exit"), "the -32002 message says why: {r:?}");
}

/// The RPC error of a failed call.
fn rpc(r: &Result<Value, ClientError>) -> plugind_protocol::jsonrpc::RpcError {
    match r {
        Err(ClientError::Rpc(e)) => e.clone(),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_answers_init_with_an_error() {
    let d = with_bad("init-error", json!({"restart": {"max_restarts": 1, "window_s": 60}})).spawn().await;
    let s = meanwhile(&d, d.wait_state("bad", "failed")).await;
    assert_eq!(s["restarts"], 1, "{s}");
    let why = s["last_error"].as_str().unwrap();
    assert!(why.contains("init failed: bad-plugin refuses to start: no config"), "{s}");
    let r = d.execute("bad", "echo", json!(1)).await;
    assert_eq!(code(&r), -32002);
    assert_eq!(data(&r)["state"], "failed");
    assert!(rpc(&r).message.contains("refuses to start"), "the -32002 message says why: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_never_answers_anything() {
    let extra = json!({"startup_timeout_ms": 500, "restart": {"max_restarts": 1, "window_s": 60}});
    let d = with_bad("silent", extra).spawn().await;
    let s = meanwhile(&d, async {
        wait_for("bad to fail", async || {
            let r = d.execute("bad", "echo", json!(1)).await;
            assert_eq!(code(&r), -32002, "{r:?}");
            let s = d.status("bad").await;
            (s["state"] == "failed").then_some(s)
        })
        .await
    })
    .await;
    assert!(
        s["last_error"].as_str().unwrap().contains("startup_timeout_ms (500 ms) expired before init was answered"),
        "{s}"
    );
    // It wrote nothing on stdout: the commonest cause, an unflushed stdout, is named.
    assert!(s["last_error"].as_str().unwrap().contains("it wrote nothing on its stdout"), "{s}");
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l == "bad-plugin: not answering init"), "{s}");
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["last_exit"]["signal"], "SIGKILL", "killed, not left behind: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_answers_with_unknown_ids() {
    let d = with_bad("unknown-ids", json!({})).start().await;
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 1000)).await;
    assert_deadline(&r, took, 1000);
    // Logged as a protocol mistake and told to the plugin with onError.
    log_says(&d, "response with unknown id").await;
    let s = stderr_says(&d, "plugind reported:").await;
    assert!(s["stderr_tail"].to_string().contains("unknown id"), "{s}");
    assert_eq!(s["calls"]["timed_out"], 1, "{s}");
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_writes_garbage_on_stdout() {
    let d = with_bad("garbage", json!({})).start().await;
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 1000)).await;
    assert_deadline(&r, took, 1000);
    let warning = log_says(&d, "non-JSON line on stdout skipped").await;
    assert!(warning.contains("write logs to stderr"), "with a hint: {warning}");
    log_says(&d, "not a JSON-RPC 2.0 message").await;
    // Valid JSON that is not JSON-RPC is reported to the plugin.
    stderr_says(&d, "plugind reported:").await;
    still_serves(&d).await;
    // plugind itself did not complain about anything else than this plugin.
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_writes_a_100_mb_line() {
    let d = with_bad("huge-line", json!({})).start().await;
    let before = peak_rss_kb(d.pid());
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 3000)).await;
    assert_deadline(&r, took, 3000);
    stderr_says(&d, "bad-plugin: wrote the 100 MB line").await;
    let report = log_says(&d, "is over the frame limit").await;
    // Reported as soon as it passed the limit, not at its end.
    let read: u64 = report.split('(').nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).expect(&report);
    assert!(((16 << 20) + 1..(20 << 20)).contains(&read), "reported once past the limit: {report}");
    stderr_says(&d, "plugind reported: \"stdout line is over the frame limit").await;
    // Discarded while streaming in, never buffered whole.
    let after = peak_rss_kb(d.pid());
    eprintln!("plugind peak RSS: {before} KiB before, {after} KiB after the 100 MB line");
    assert!(after < before + 48 * 1024, "plugind buffered the line: peak RSS {before} → {after} KiB");
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_writes_invalid_utf8() {
    let d = with_bad("invalid-utf8", json!({})).start().await;
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 1000)).await;
    assert_deadline(&r, took, 1000);
    let warning = log_says(&d, "non-JSON line on stdout skipped").await;
    assert!(warning.contains('\u{FFFD}'), "the line is shown lossily: {warning}");
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_writes_half_a_line_then_nothing() {
    let d = with_bad("half-line", json!({})).arg("--ping-interval-ms").arg("200").start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 1000)).await;
    assert_deadline(&r, took, 1000);
    // Mute from then on: the health pings catch it, it is killed and restarted.
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert!(history_says(&s, "missed 3 health pings"), "{s}");
    assert_eq!(s["last_exit"]["signal"], "SIGKILL", "{s}");
    assert!(!alive(pid as u32));
    assert!(s["stderr_tail"].to_string().contains("writing half a line"), "{s}");
    assert_eq!(d.execute("bad", "echo", json!(2)).await.unwrap(), json!(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_closes_stdout_but_keeps_running() {
    let d = with_bad("close-stdout", json!({})).start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 5000)).await;
    assert_eq!(code(&r), -32003, "the call ends with the crash: {r:?}");
    assert!(took < Duration::from_secs(2), "at once, not at the deadline: {took:?}");
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert!(history_says(&s, "closed its stdout but kept running"), "{s}");
    assert_eq!(s["last_exit"]["signal"], "SIGKILL", "{s}");
    assert!(!alive(pid as u32));
    assert!(s["stderr_tail"].to_string().contains("closing stdout, still running"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_stops_reading_stdin() {
    let d = with_bad("stop-reading", json!({})).arg("--ping-interval-ms").arg("200").start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, took) = meanwhile(&d, timed(&d, "misbehave", json!({}), 1000)).await;
    assert_deadline(&r, took, 1000);
    // More than a pipe buffer of requests: plugind's writer blocks, callers must not.
    let big = "y".repeat(200_000);
    let calls = (0..8).map(|_| timed(&d, "echo", json!(big), 1000));
    for (r, took) in meanwhile(&d, futures::future::join_all(calls)).await {
        assert!(matches!(code(&r), -32001 | -32003), "{r:?}");
        if code(&r) == -32001 {
            assert_deadline(&r, took, 1000);
        }
    }
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert!(history_says(&s, "missed 3 health pings"), "{s}");
    assert!(!alive(pid as u32));
    assert!(s["stderr_tail"].to_string().contains("no longer reading stdin"), "{s}");
    assert_eq!(d.execute("bad", "echo", json!(3)).await.unwrap(), json!(3));
}

/// A plugin that stops reading its stdin with more than its pipe holds on the way to it (plugind's
/// queue to it full, its writer blocked) is stopped all the same, on the usual steps: `teardown`
/// cannot reach it and its stdin cannot be closed, so SIGTERM comes 2 s later and SIGKILL 2 s
/// after that. The stop used to wait for room to close the stdin, for ever: the plugin stayed
/// `stopping` with its process alive, and rescans and hot reloads waited behind it (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_stops_reading_stdin_is_stopped_all_the_same() {
    let d = with_bad("stop-reading", json!({})).start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, _) = timed(&d, "misbehave", json!({}), 1000).await;
    assert_eq!(code(&r), -32001, "{r:?}");
    // 1.6 MB on its way: past its pipe and plugind's queue (1 MiB).
    let big = "y".repeat(200_000);
    let calls = (0..8).map(|_| timed(&d, "echo", json!(big), 1000));
    futures::future::join_all(calls).await;
    let t = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), d.call("plugins.stop", json!({"name": "bad"}))).await;
    let s = stopped.expect("plugins.stop answered within 20 s").unwrap();
    assert_eq!(s["state"], "stopped", "{s}");
    assert!(!alive(pid as u32), "its process is gone once stop has answered");
    assert!(t.elapsed() < Duration::from_secs(10), "stopped on the usual steps: {:?}", t.elapsed());
    // And it starts again.
    assert_eq!(d.call("plugins.start", json!({"name": "bad"})).await.unwrap()["state"], "running");
    assert_eq!(d.execute("bad", "echo", json!(3)).await.unwrap(), json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_ignores_sigterm_and_is_killed_on_stop() {
    let d = with_bad("ignore-sigterm", json!({})).start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let t = Instant::now();
    let (stopped, late) = meanwhile(&d, async {
        tokio::join!(d.call("plugins.stop", json!({"name": "bad"})), async {
            // A call during the stop ends with a typed error by its deadline.
            tokio::time::sleep(Duration::from_millis(300)).await;
            timed(&d, "echo", json!(1), 1000).await
        })
    })
    .await;
    let took = t.elapsed();
    let s = stopped.unwrap();
    // teardown answered at once → stdin closed → 2 s → SIGTERM (ignored) → 2 s → SIGKILL.
    assert!(took >= Duration::from_millis(3800) && took < Duration::from_millis(4000) + MARGIN * 2, "{took:?}");
    assert_eq!(s["state"], "stopped", "{s}");
    assert!(!alive(pid as u32));
    let s = d.status("bad").await;
    assert_eq!(s["last_exit"]["signal"], "SIGKILL", "{s}");
    let tail = s["stderr_tail"].to_string();
    assert!(tail.contains("bad-plugin: teardown") && tail.contains("got SIGTERM, ignoring it"), "{s}");
    match late.0 {
        Ok(v) => assert_eq!(v, json!(1), "answered before the stop began"),
        Err(_) => assert!([-32001, -32002, -32003].contains(&code(&late.0)), "{late:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_floods_stderr() {
    let d = with_bad("flood-stderr", json!({})).start().await;
    let worst = meanwhile(&d, async {
        let c = d.client().await;
        let mut worst = Duration::ZERO;
        for i in 0..50 {
            let t = Instant::now();
            let r = c.call("execute", &json!({"plugin": "bad", "method": "echo", "params": i})).await.unwrap();
            assert_eq!(r, json!(i));
            worst = worst.max(t.elapsed());
        }
        worst
    })
    .await;
    assert!(worst < Duration::from_secs(1), "a call to the flooding plugin took {worst:?}");
    log_says(&d, "stderr lines dropped").await;
    let s = d.status("bad").await;
    assert!(s["stderr_tail"].as_array().unwrap().len() <= 50, "stderr_tail is bounded");
    // It still stops like any other plugin.
    let t = Instant::now();
    d.call("plugins.stop", json!({"name": "bad"})).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// `fork`: a child that outlives its parent; it must die when the plugin crashes or stops.
async fn orphan_dies_with_the_plugin(mode: &str) {
    let d = with_bad(mode, json!({"permissions": ["process"]})).start().await;
    if mode == "fork-setsid" && instance_cgroups(&d.log()).is_empty() {
        eprintln!("skipping: no cgroup on this host holds a child that left the process group");
        return;
    }
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let child = d.execute("bad", "fork", json!({})).await.unwrap()["child"].as_u64().unwrap() as u32;
    assert!(alive(child));
    // A crash: the call in flight ends with -32003, the child goes with its parent.
    let (r, _) = meanwhile(&d, timed(&d, "crash", json!({}), 2000)).await;
    assert_eq!(code(&r), -32003, "{r:?}");
    wait_for("the orphan to die after the crash", async || (!alive(child)).then_some(())).await;
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert_eq!(s["last_exit"]["code"], 1, "{s}");
    assert!(s["stderr_tail"].to_string().contains("bad-plugin: crashing"), "{s}");
    // A stop: same.
    let child = d.execute("bad", "fork", json!({})).await.unwrap()["child"].as_u64().unwrap() as u32;
    assert!(alive(child));
    let s = d.call("plugins.stop", json!({"name": "bad"})).await.unwrap();
    assert_eq!(s["state"], "stopped");
    wait_for("the orphan to die after the stop", async || (!alive(child)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_forks_a_child_that_ignores_its_parents_death() {
    orphan_dies_with_the_plugin("fork-orphan").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_forks_a_child_that_leaves_the_process_group() {
    orphan_dies_with_the_plugin("fork-setsid").await;
}

/// Runs `misbehave` on `bad` with `limits`; asserts the call ended with the crash in time, the
/// status names the limit, and the plugin was restarted.
async fn hits_limit(mode: &str, limits: Value, limit: &str) -> Value {
    let d = with_bad(mode, json!({"limits": limits, "timeout_ms": 15000})).start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, _) = meanwhile(&d, timed(&d, "misbehave", json!({}), 15000)).await;
    assert_eq!(code(&r), -32003, "the call ends with the crash: {r:?}");
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert_eq!(s["last_exit"]["limit"], limit, "{s}");
    assert!(history_says(&s, &format!("limit {limit} exceeded")), "{s}");
    assert!(!alive(pid as u32));
    assert_eq!(d.execute("bad", "echo", json!(4)).await.unwrap(), json!(4));
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_leaks_memory_slowly() {
    // RLIMIT_DATA refuses the allocation (Rust aborts: an ordinary crash, no limit), unless
    // the memory cgroup's OOM killer gets there first (SIGKILL, counted: `memory_mb`).
    let d = with_bad("leak-memory", json!({"limits": {"memory_mb": 64}, "timeout_ms": 15000})).start().await;
    let pid = d.status("bad").await["pid"].as_u64().unwrap();
    let (r, _) = meanwhile(&d, timed(&d, "misbehave", json!({}), 15000)).await;
    assert_eq!(code(&r), -32003, "the call ends with the crash: {r:?}");
    let s = meanwhile(&d, restarted(&d, pid)).await;
    assert!(s["stderr_tail"].to_string().contains("leaking"), "{s}");
    if s["last_exit"]["signal"] == "SIGKILL" {
        assert_eq!(s["last_exit"]["limit"], "memory_mb", "{s}");
    } else {
        assert_eq!(s["last_exit"]["signal"], "SIGABRT", "{s}");
        assert!(s["last_exit"].get("limit").is_none(), "a refused allocation is no limit: {s}");
    }
    assert_eq!(d.execute("bad", "echo", json!(4)).await.unwrap(), json!(4));
}

/// A plain-Python plugin whose `burn` forks `n` children that each allocate `mb` MiB, or spin
/// for `cpu_s` seconds, and answers once they have ended (with how each ended).
const BURNER: &str = r#"import json, os, sys, time
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    r = None if m["method"] == "teardown" else {}
    if m["method"] == "execute":
        p = m["params"]["params"]
        kids = []
        for _ in range(p.get("n", 1)):
            pid = os.fork()
            if pid == 0:
                if p.get("mb"):
                    b = bytearray(p["mb"] << 20)
                    for i in range(0, len(b), 4096):
                        b[i] = 1
                # CPU time, not wall-clock time: on a loaded machine a wall-clock loop spends
                # less CPU than asked and the limit may not be reached.
                end = time.process_time() + p.get("cpu_s", 0)
                while time.process_time() < end:
                    pass
                os._exit(0)
            kids.append(pid)
        r = {"statuses": [os.waitpid(k, 0)[1] for k in kids], "pid": os.getpid()}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// The instance's limits hold for its processes together, and going over them through
/// children stops it like its own exit at the limit would: a child killed at `memory_mb` (the
/// plugin itself lived on, `running`, nothing reported), CPU time past `cpu_seconds` spent by
/// several children (each under it). The status names the limit, and the plugin is restarted
/// (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_for_an_instances_processes_together() {
    for (limits, burn, limit) in [
        (json!({"memory_mb": 64, "processes": 20}), json!({"n": 4, "mb": 30}), "memory_mb"),
        (json!({"cpu_seconds": 1, "processes": 20}), json!({"n": 3, "cpu_s": 0.8}), "cpu_seconds"),
    ] {
        let manifest = json!({"name": "burner", "version": "1.0.0", "main": "b.py",
            "permissions": ["process"], "limits": limits, "timeout_ms": 15000});
        let d = Daemon::builder()
            .arg("--ping-interval-ms")
            .arg("100")
            .plugin_files("burner", &[("plugin.json", &manifest.to_string()), ("b.py", BURNER)])
            .start()
            .await;
        let pid = d.status("burner").await["pid"].as_u64().unwrap();
        // Answered by the plugin itself, which lives on; or `-32003` when the stop came first
        // (the ping tick may fall while the children are still at it).
        match d.execute("burner", "burn", burn).await {
            Ok(r) => assert_eq!(r["pid"], pid, "the plugin itself lived on: {r}"),
            Err(e) => assert_eq!(code(&Err::<Value, _>(e)), -32003),
        }
        let s = wait_for("the instance to be stopped at its limit and restarted", async || {
            let s = d.status("burner").await;
            (s["state"] == "running" && s["pid"] != pid).then_some(s)
        })
        .await;
        assert_eq!(s["last_exit"]["limit"], limit, "{limit}: {s}");
        assert!(!alive(pid as u32));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehave_spins_the_cpu() {
    let s = hits_limit("spin-cpu", json!({"cpu_seconds": 1}), "cpu_seconds").await;
    assert_eq!(s["last_exit"]["signal"], "SIGXCPU", "{s}");
}

/// Extreme but valid manifest numbers (found by reading the code paths the fuzzed manifest
/// values reach): `cpu_seconds: u64::MAX` (the hard limit is soft + 1) and `cooldown_s:
/// u64::MAX` (added to the current instant when the plugin fails).
#[tokio::test(flavor = "multi_thread")]
async fn misbehave_manifest_with_extreme_numbers() {
    let max = u64::MAX;
    let d = Daemon::builder()
        .plugin_files(
            "cpu",
            &[("plugin.json", &bad_manifest("cpu", "unknown-ids", json!({"limits": {"cpu_seconds": max}})))],
        )
        .plugin_files(
            "bad",
            &[(
                "plugin.json",
                &bad_manifest("bad", "exit-before-init", json!({"restart": {"max_restarts": 0, "cooldown_s": max}})),
            )],
        )
        .plugin("perl-echo")
        .start()
        .await;
    // An unreachable CPU budget is no budget: the plugin runs.
    let s = d.wait_state("cpu", "running").await;
    assert_eq!(d.execute("cpu", "echo", json!(1)).await.unwrap(), json!(1), "{s}");
    // A cool-down that never ends: failed for good, and the plugin still obeys commands.
    let s = d.wait_state("bad", "failed").await;
    assert_eq!(s["last_exit"]["code"], 3, "{s}");
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), d.call("plugins.restart", json!({"name": "bad"}))).await;
    assert!(r.is_ok(), "plugins.restart answered (the plugin's actor is alive) in {:?}", t.elapsed());
    assert_eq!(d.status("bad").await["state"], "failed");
    assert_eq!(d.execute("perl-echo", "echo", json!(2)).await.unwrap(), json!(2));
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// A plugin's request that is valid JSON but not a valid request (`"method": 5`) is answered
/// `-32600` under its own id (a plugin waiting for it would hang), and logged as what it is, not
/// as a non-JSON line.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_malformed_request_is_answered_under_its_id() {
    let d = Daemon::builder().plugin("hostile").start().await;
    let r = d.execute("hostile", "bad_request", json!({})).await.unwrap();
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert_eq!(r["error"]["data"]["plugin"], "hostile", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("\"method\" must be a string"), "{r}");
    let log = d.log();
    assert!(!log.contains("non-JSON line"), "{log}");
}

/// Answers plugind cannot take (inside a batch, under the id as a string, of another
/// `jsonrpc`, with both `result` and `error`, with neither) are each logged and reported with
/// `onError`, and none disturbs the call it was meant for: the right answer that follows is its
/// answer. A request inside a batch is answered `-32600` under its own id, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_answers_leave_the_call_to_the_right_one() {
    let d = Daemon::builder().plugin("hostile").start().await;
    let r = d.call("execute", json!({"plugin": "hostile", "method": "malformed_answers", "params": {}})).await;
    assert_eq!(r.unwrap(), json!("the right one"));
    let r = d.call("logs.tail", json!({"plugin": "hostile", "lines": 1000})).await.unwrap();
    let log: Vec<&str> = r["lines"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    let log = log.join("\n");
    assert_eq!(log.matches("goes on waiting for a valid answer").count(), 3, "{log}");
    assert!(log.contains("a string: call") && log.contains("is waiting for its answer"), "{log}");
    assert!(log.contains("without batches"), "{log}");
    let r = d.execute("hostile", "batch_request", json!({})).await.unwrap();
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("without batches"), "{r}");
    // The plugin serves on.
    assert_eq!(d.execute("hostile", "results", json!({})).await.unwrap(), json!([]));
}

/// An answer over the frame limit is discarded (plugind never buffers it whole), but its head
/// names the call it was for: that call ends at once with `-32603` saying why, not at its
/// deadline as a misleading timeout.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_over_the_frame_limit_ends_its_call_at_once() {
    let d = Daemon::builder().plugin("hostile").start().await;
    ends_at_once_with_32603(&d, "huge_answer", "over the frame limit").await;
    assert_eq!(d.execute("hostile", "results", json!({})).await.unwrap(), json!([]), "the plugin serves on");
}

/// `hostile`'s `method` under a 30 s deadline: its answer came but cannot be taken, so the call
/// ends at once (well before the deadline) with `-32603` saying `why`.
async fn ends_at_once_with_32603(d: &Daemon, method: &str, why: &str) {
    let t = Instant::now();
    let r = d.call("execute", json!({"plugin": "hostile", "method": method, "params": {}, "timeout_ms": 30000})).await;
    let Err(ClientError::Rpc(e)) = r else { panic!("{method}: not an answer to take: {r:?}") };
    assert_eq!(e.code, -32603, "{e:?}");
    assert!(e.message.contains(why), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "{method} ended at once, not at the 30 s deadline: {:?}",
        t.elapsed()
    );
}
