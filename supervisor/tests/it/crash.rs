//! Crashes: calls in flight end with -32003, restarts back off, crash loops end in `failed`,
//! hung plugins are caught by health pings.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn crash_ends_calls_in_flight_with_32003_and_restarts() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let pid = d.status("py-probe").await["pid"].as_u64().unwrap();
    let started = Instant::now();
    let sleeps = futures::future::join_all((0..3).map(|_| d.execute("py-probe", "sleep", json!({"ms": 10_000}))));
    let killer = async {
        wait_for("calls in flight", async || (d.status("py-probe").await["calls"]["total"] == 3).then_some(())).await;
        let _ = d.execute("py-probe", "exit", json!({"code": 7})).await;
    };
    let (results, ()) = tokio::join!(sleeps, killer);
    for r in &results {
        assert_eq!(code(r), -32003, "{r:?}");
        assert_eq!(data(r)["plugin"], "py-probe");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "calls ended at once, not at their deadline");
    let s = wait_for("the restart", async || {
        let s = d.status("py-probe").await;
        (s["state"] == "running" && s["restarts"] == 1).then_some(s)
    })
    .await;
    assert_ne!(s["pid"].as_u64().unwrap(), pid);
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["last_exit"]["code"], 7);
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l == "exiting with 7"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_backs_off_then_fails_and_restart_revives() {
    let d = Daemon::builder()
        .plugin_files(
            "crasher",
            &[
                (
                    "plugin.json",
                    r#"{"name": "crasher", "version": "0.1.0", "main": "run.sh", "restart": {"max_restarts": 3, "window_s": 60}}"#,
                ),
                ("run.sh", "echo 'crasher: boom' >&2\nexit 3\n"),
            ],
        )
        .start()
        .await;
    let s = d.wait_state("crasher", "failed").await;
    assert_eq!(s["restarts"], 3);
    assert_eq!(s["last_exit"]["code"], 3);
    assert!(s["last_error"].as_str().unwrap().contains("exited"), "{s}");
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l == "crasher: boom"));
    // Restart delays double: 100, 200, 400 ms.
    let delays: Vec<String> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"] == "restart")
        .map(|h| h["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delays, ["in 100 ms", "in 200 ms", "in 400 ms"]);
    // Calls to a failed plugin get -32002 with the state.
    let r = d.execute("crasher", "x", json!({})).await;
    assert_eq!(code(&r), -32002);
    assert_eq!(data(&r)["state"], "failed");
    // Fix it; an explicit restart brings it back.
    std::fs::write(
        d.plugins.join("crasher/run.sh"),
        format!("exec perl {}\n", fixture("perl-echo").join("main.pl").display()),
    )
    .unwrap();
    let out = d.ctl(&["restart", "crasher"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "crasher: running", "{out:?}");
    assert_eq!(d.execute("crasher", "echo", json!(5)).await.unwrap(), json!(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_is_measured_between_restarts() {
    let d = Daemon::builder()
        .plugin_files(
            "flaky",
            &[
                (
                    "plugin.json",
                    r#"{"name": "flaky", "version": "0.1.0", "main": "run.sh", "restart": {"max_restarts": 4}, "permissions": ["process", "filesystem"]}"#,
                ),
                ("run.sh", "date +%s%N >> starts.txt\nexit 1\n"),
            ],
        )
        .start()
        .await;
    d.wait_state("flaky", "failed").await;
    let starts: Vec<u128> = std::fs::read_to_string(d.plugins.join("flaky/starts.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 5, "1 start + 4 restarts");
    let gaps_ms: Vec<u128> = starts.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    for (gap, want) in gaps_ms.iter().zip([100u128, 200, 400, 800]) {
        assert!(*gap >= want && *gap < want + 1000, "gaps {gaps_ms:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_plugin_misses_three_pings_and_is_restarted() {
    let d = Daemon::builder()
        .plugin("py-probe")
        .manifest("py-probe", |m| m["timeout_ms"] = json!(500))
        .arg("--ping-interval-ms")
        .arg("100")
        .start()
        .await;
    let pid = d.status("py-probe").await["pid"].as_u64().unwrap();
    let r = d.execute("py-probe", "hang", json!({})).await;
    assert!(matches!(code(&r), -32001 | -32003), "{r:?}");
    let s = wait_for("a restart after missed pings", async || {
        let s = d.status("py-probe").await;
        (s["restarts"] == 1 && s["state"] == "running").then_some(s)
    })
    .await;
    assert_ne!(s["pid"].as_u64().unwrap(), pid);
    assert!(!alive(pid as u32));
    let hist = s["history"].to_string();
    assert!(hist.contains("missed 3 health pings"), "{hist}");
}

#[tokio::test(flavor = "multi_thread")]
async fn init_error_fails_the_start_and_says_why() {
    let d = Daemon::builder()
        .plugin_files(
            "badinit",
            &[
                ("plugin.json", r#"{"name": "badinit", "version": "0.1.0", "main": "p.py", "restart": {"policy": "never"}}"#),
                (
                    "p.py",
                    "import sys, json\nfor l in sys.stdin:\n    m = json.loads(l)\n    print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'error': {'code': -1, 'message': 'no config', 'data': {'field': 'api_key'}}}), flush=True)\n",
                ),
            ],
        )
        .start()
        .await;
    let s = d.wait_state("badinit", "failed").await;
    assert!(s["last_error"].as_str().unwrap().contains("init failed: no config"), "{s}");
    // With the error's data, where a plugin says what is wrong.
    assert!(s["last_error"].as_str().unwrap().contains(r#"data: {"field":"api_key"}"#), "{s}");
    // plugind ended it for its refusal: not reported as a kill, which reads as a limit.
    assert!(!s["last_error"].as_str().unwrap().contains("SIGKILL"), "{s}");
    // The history says why it is failed: its policy, not restarts it never had.
    let failed = s["history"].as_array().unwrap().iter().find(|h| h["event"] == "failed").cloned();
    let detail = failed.as_ref().map(|h| h["detail"].to_string()).unwrap_or_default();
    assert!(detail.contains("restart policy is `never`") && !detail.contains("restarts within"), "{s}");
    assert!(detail.contains("until `pluginctl restart` or a change to its files (if watched)"), "{s}");
}

/// A plugin whose answers are pretty-printed never gets through `init`: each start ran out of its
/// `startup_timeout_ms` (30 s by default), so its crashes never came `max_restarts` within the
/// 60 s window and it stayed `starting` for good, with `pluginctl start` waiting on it (audit 19:
/// 25 restarts in 13 minutes). One more failed start in a row than `max_restarts` fails it too,
/// whatever the window; and its log says what the lone `{` lines are.
#[tokio::test(flavor = "multi_thread")]
async fn starts_that_fail_slowly_in_a_row_end_in_failed() {
    let manifest = json!({
        "name": "pretty", "version": "0.1.0", "main": "p.py",
        // Each failed start takes longer than the window: never two restarts within it.
        "startup_timeout_ms": 1100,
        "restart": {"max_restarts": 2, "window_s": 1},
    });
    let d = Daemon::builder()
        .plugin_files(
            "pretty",
            &[
                ("plugin.json", &manifest.to_string()),
                (
                    "p.py",
                    "import sys, json\nfor l in sys.stdin:\n    m = json.loads(l)\n    print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': {}}, indent=2), flush=True)\n",
                ),
            ],
        )
        .spawn()
        .await;
    let s = d.wait_state("pretty", "failed").await;
    let failed = s["history"].as_array().unwrap().iter().find(|h| h["event"] == "failed").cloned();
    let detail = failed.as_ref().map(|h| h["detail"].to_string()).unwrap_or_default();
    assert!(detail.contains("failed to start more than twice in a row"), "{s}");
    let log = d.call("logs.tail", json!({"plugin": "pretty", "lines": 200})).await.unwrap().to_string();
    assert!(log.contains("pretty-printed JSON?"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cooldown_gives_a_failed_plugin_one_more_start_per_period() {
    let d = Daemon::builder()
        .plugin_files(
            "cooler",
            &[
                (
                    "plugin.json",
                    r#"{"name": "cooler", "version": "0.1.0", "main": "run.sh", "restart": {"max_restarts": 1, "window_s": 60, "cooldown_s": 1}}"#,
                ),
                ("run.sh", "exit 2\n"),
            ],
        )
        .start()
        .await;
    let s = d.wait_state("cooler", "failed").await;
    let history = s["history"].to_string();
    assert!(history.contains("one more start in 1 s") && !history.contains("giving up"), "{s}");
    // Fixed meanwhile: the next cool-down start brings it up.
    std::fs::write(
        d.plugins.join("cooler/run.sh"),
        format!("exec perl {}\n", fixture("perl-echo").join("main.pl").display()),
    )
    .unwrap();
    let s = d.wait_state("cooler", "running").await;
    assert!(s["history"].to_string().contains("failed"), "{s}");
    assert_eq!(d.execute("cooler", "echo", json!(1)).await.unwrap(), json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_main_that_cannot_be_executed_fails_the_start_and_says_why() {
    // `run` has no execute bit, so the exec fails (EACCES, for root too): the instance never
    // has a process, and the restart policy treats that like a crash at start.
    let d = Daemon::builder()
        .plugin_files(
            "noexec",
            &[
                (
                    "plugin.json",
                    r#"{"name": "noexec", "version": "0.1.0", "main": "run", "restart": {"policy": "on-failure", "max_restarts": 1}}"#,
                ),
                ("run", "#!/bin/sh\nexit 0\n"),
            ],
        )
        .start()
        .await;
    let s = d.wait_state("noexec", "failed").await;
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot start") && why.contains("ermission denied"), "{s}");
    assert!(why.starts_with("instance could not be started: ") && !why.contains("(ended)"), "{s}");
    assert!(s["pid"].is_null(), "{s}");
}

/// An executable script without a `#!` line: the C library's `execvp` handed it to /bin/sh, whose
/// errors ("import: not found") said nothing of the cause (audit 19). The start fails saying what
/// to add.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_without_its_hash_bang_line_fails_the_start_and_says_why() {
    let d = Daemon::builder()
        .plugin_files(
            "noshebang",
            &[
                (
                    "plugin.json",
                    r#"{"name": "noshebang", "version": "0.1.0", "main": "run", "restart": {"policy": "never"}}"#,
                ),
                ("run", "import sys, json\nprint('never runs')\n"),
            ],
        )
        .spawn()
        .await;
    let run = d.plugins.join("noshebang/run");
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = d.call("plugins.restart", json!({"name": "noshebang", "hard": true})).await;
    let s = d.wait_state("noshebang", "failed").await;
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("nor a script with a `#!` line"), "{r:?} {s}");
    assert!(!s["stderr_tail"].to_string().contains("not found"), "/bin/sh ran it: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_outlive_an_idle_spell_of_the_threads_that_forked_them() {
    // A plugin dies with the *thread* that forked it (PR_SET_PDEATHSIG). tokio's blocking pool
    // retires a thread after 10 s idle; plugind's spawner threads must not, whatever forks next.
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let before = d.status("perl-echo").await;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1));
    let after = d.status("perl-echo").await;
    assert_eq!(after["pid"], before["pid"], "{after}");
    assert_eq!(after["restarts"], 0, "{after}");
}

/// A `main` that is not there yet (a compiled plugin not built) fails the start naming the file
/// and field and saying to build it, and the plugin starts by itself once the file appears (its
/// history said it gives up "until `pluginctl restart` or a change to its files").
#[tokio::test(flavor = "multi_thread")]
async fn a_main_not_built_yet_says_so_and_starts_once_it_appears() {
    let d = Daemon::builder()
        .plugin_files(
            "unbuilt",
            &[(
                "plugin.json",
                r#"{"name": "unbuilt", "version": "0.1.0", "main": "unbuilt", "restart": {"max_restarts": 1}}"#,
            )],
        )
        .watch()
        .start()
        .await;
    let s = d.wait_state("unbuilt", "failed").await;
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains(r#"field /main: file "unbuilt" not found"#) && why.contains("cargo build --release"), "{s}");
    assert!(why.starts_with("instance could not be started: ") && !why.contains("(ended)"), "{s}");
    // Built elsewhere and moved into place, as a build or deploy does.
    let built = d.dir.path().join("unbuilt.pl");
    std::fs::copy(fixture("perl-echo").join("main.pl"), &built).unwrap();
    std::fs::set_permissions(&built, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&built, d.plugins.join("unbuilt/unbuilt")).unwrap();
    d.wait_state("unbuilt", "running").await;
    assert_eq!(d.execute("unbuilt", "echo", json!(7)).await.unwrap(), json!(7));
}

/// A plugin that writes its answer and exits at once (a one-shot tool, a `sys.exit` after the
/// last print): the exit could be seen before the answer was read from the pipe, and the call
/// ended `-32003` with its answer unread (audit 21). What it wrote before exiting is read
/// first, with its `\n` or without.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_written_just_before_exiting_is_delivered() {
    let main = r#"
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    if m["method"] == "execute":
        end = "\n" if m["params"]["params"]["newline"] else ""
        os.write(1, (json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": "bye"}) + end).encode())
        os._exit(0)
    result = {"protocol_version": 1} if m["method"] == "init" else {}
    os.write(1, (json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}) + "\n").encode())
"#;
    let manifest = json!({"name": "oneshot", "version": "1.0.0", "main": "main.py", "restart": {"policy": "never"}});
    let d = Daemon::builder()
        .plugin_files("oneshot", &[("plugin.json", &manifest.to_string()), ("main.py", main)])
        .start()
        .await;
    for i in 0..16 {
        if i > 0 {
            assert_eq!(d.call("plugins.start", json!({"name": "oneshot"})).await.unwrap()["state"], "running");
        }
        let r = d.execute("oneshot", "bye", json!({"newline": i % 2 == 0})).await;
        assert_eq!(r.unwrap(), json!("bye"), "call {i}");
        wait_for("the exit", async || (d.status("oneshot").await["state"] != "running").then_some(())).await;
    }
}
