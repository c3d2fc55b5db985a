//! Looking at plugins: `plugins.trace`, `logs.tail` (+ follow), `events.subscribe`, and their
//! pluginctl commands.

use crate::support::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const TALKER: &str = r#"import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    r = {}
    if m["method"] == "execute":
        word = m["params"]["params"]["word"]
        sys.stderr.write("stderr says %s\n" % word); sys.stderr.flush()
        print(json.dumps({"jsonrpc": "2.0", "method": "log", "params": {"level": "warn", "message": "log says %s" % word}}), flush=True)
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else r}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn trace_shows_both_directions() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let watcher = d.client().await;
    assert_eq!(watcher.call("plugins.trace", &json!({"name": "perl-echo"})).await.unwrap(), json!(null));
    d.execute("perl-echo", "echo", json!({"traced": 1})).await.unwrap();
    let (m1, out) = watcher.notification().await.unwrap();
    let (_, inn) = watcher.notification().await.unwrap();
    assert_eq!(m1, "trace");
    assert_eq!(out["dir"], "out");
    assert_eq!(out["plugin"], "perl-echo");
    assert_eq!(out["message"]["method"], "execute");
    assert_eq!(out["message"]["params"]["params"], json!({"traced": 1}));
    assert_eq!(inn["dir"], "in");
    assert_eq!(inn["message"]["result"], json!({"traced": 1}));
    assert!(inn["ts"].as_str().unwrap().ends_with('Z'));
    // pluginctl trace prints one JSON line per message.
    let mut child = Command::new(pluginctl())
        .args(["--socket", d.socket.to_str().unwrap(), "trace", "perl-echo"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let d2 = &d;
    let reader = std::thread::spawn(move || lines.next().unwrap().unwrap());
    wait_for("pluginctl trace to print", async || {
        d2.execute("perl-echo", "echo", json!("cli")).await.unwrap();
        reader.is_finished().then_some(())
    })
    .await;
    let first: serde_json::Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    assert!(first["dir"] == "out" || first["dir"] == "in", "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stderr_and_log_notifications_reach_logs_tail_and_pluginctl_logs() {
    let d = Daemon::builder()
        .plugin_files(
            "talker",
            &[("plugin.json", r#"{"name": "talker", "version": "1.0.0", "main": "t.py"}"#), ("t.py", TALKER)],
        )
        .start()
        .await;
    d.execute("talker", "say", json!({"word": "alpha"})).await.unwrap();
    let tail = wait_for("both lines", async || {
        let r = d.call("logs.tail", json!({"plugin": "talker", "lines": 50})).await.ok()?;
        let lines = r["lines"].as_array()?.clone();
        (lines.iter().any(|l| l["message"] == "stderr says alpha")
            && lines.iter().any(|l| l["message"] == "log says alpha"))
        .then_some(lines)
    })
    .await;
    let log = tail.iter().find(|l| l["message"] == "log says alpha").unwrap();
    assert_eq!((log["stream"].as_str(), log["level"].as_str()), (Some("log"), Some("warn")));
    let err = tail.iter().find(|l| l["message"] == "stderr says alpha").unwrap();
    assert_eq!(err["stream"], "stderr");
    assert!(tail
        .iter()
        .any(|l| l["stream"] == "plugind" && l["message"].as_str().unwrap().contains("started instance")));

    let out = d.ctl(&["logs", "talker", "-n", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    // -f follows new lines.
    let mut child = Command::new(pluginctl())
        .args(["--socket", d.socket.to_str().unwrap(), "logs", "talker", "-n", "0", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reader =
        std::thread::spawn(move || lines.find(|l| l.as_ref().unwrap().contains("says omega")).unwrap().unwrap());
    wait_for("logs -f to show the new line", async || {
        d.execute("talker", "say", json!({"word": "omega"})).await.unwrap();
        reader.is_finished().then_some(())
    })
    .await;
    assert!(reader.join().unwrap().contains("talker"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A plugin's log ring is kept in the state dir too (`logs/NAME.jsonl`, mode 0600): after plugind
/// restarts, `logs` shows the lines of the last run before this run's, within the ring's
/// bounds; on disk a plugin's lines take at most two rings' worth, however much it logs.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_survives_a_restart_of_plugind_within_its_bounds() {
    let mut d = Daemon::builder()
        .arg("--log-lines")
        .arg("60")
        .plugin_files(
            "talker",
            &[("plugin.json", r#"{"name": "talker", "version": "1.0.0", "main": "t.py"}"#), ("t.py", TALKER)],
        )
        .start()
        .await;
    let said = |lines: &serde_json::Value, word: &str| {
        lines.as_array().unwrap().iter().position(|l| l["message"] == format!("stderr says {word}"))
    };
    d.execute("talker", "say", json!({"word": "before-the-restart"})).await.unwrap();
    wait_for("the line in the ring", async || {
        let r = d.call("logs.tail", json!({"plugin": "talker", "lines": 1000})).await.ok()?;
        said(&r["lines"], "before-the-restart").map(|_| ())
    })
    .await;
    d.restart().await;
    let r = d.call("logs.tail", json!({"plugin": "talker", "lines": 1000})).await.unwrap();
    let old = said(&r["lines"], "before-the-restart").expect("the last run's line is in the ring");
    let lines = r["lines"].as_array().unwrap();
    let started_again =
        lines.iter().rposition(|l| l["message"].as_str().unwrap().contains("started instance")).unwrap();
    assert!(old < started_again, "the last run's lines come first: {r}");
    let file = d.dir.path().join("state/logs/talker.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Many lines: the files hold at most two rings of 60, the ring after a restart the last 60.
    for n in 0..150 {
        d.execute("talker", "say", json!({"word": format!("w{n}")})).await.unwrap();
    }
    wait_for("the last line in the ring", async || {
        let r = d.call("logs.tail", json!({"plugin": "talker", "lines": 1000})).await.ok()?;
        said(&r["lines"], "w149").map(|_| ())
    })
    .await;
    d.restart().await;
    let on_disk: usize = ["talker.jsonl", "talker.jsonl.1"]
        .iter()
        .map(|f| std::fs::read_to_string(d.dir.path().join("state/logs").join(f)).unwrap_or_default().lines().count())
        .sum();
    assert!((60..=120).contains(&on_disk), "{on_disk} lines on disk for a ring of 60");
    let r = d.call("logs.tail", json!({"plugin": "talker", "lines": 1000})).await.unwrap();
    assert!(r["lines"].as_array().unwrap().len() <= 60, "{r}");
    assert!(said(&r["lines"], "w149").is_some() && said(&r["lines"], "before-the-restart").is_none(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_report_state_changes_and_restarts() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let sub = d.client().await;
    sub.call("events.subscribe", &json!({})).await.unwrap();
    let _ = d.execute("py-probe", "exit", json!({"code": 4})).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|(k, s): &(String, String)| k == "state" && s == "running") {
        let (method, ev) = tokio::time::timeout(TIMEOUT, sub.notification()).await.unwrap().unwrap();
        assert_eq!(method, "event");
        assert_eq!(ev["plugin"], "py-probe");
        seen.push((ev["kind"].as_str().unwrap().to_owned(), ev["state"].as_str().unwrap_or("").to_owned()));
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"exit") && kinds.contains(&"restart"), "{seen:?}");
    assert!(seen.contains(&("state".into(), "restarting".into())), "{seen:?}");
}

/// The followed streams (`logs -f`, `events`, `trace`) end only when plugind goes; then they
/// exit 3 saying the connection broke, like every other command (they used to exit 0 silently).
#[tokio::test(flavor = "multi_thread")]
async fn followers_exit_3_when_plugind_goes() {
    let mut d = Daemon::builder().plugin("perl-echo").start().await;
    let follow = |args: &[&str]| {
        let mut child = Command::new(pluginctl())
            .args(["--socket", d.socket.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Following once it has shown a line; its output is read to the end (a closed pipe
        // would kill it with SIGPIPE).
        let shown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stdout = child.stdout.take().unwrap();
        let seen = shown.clone();
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (child, shown)
    };
    let followers = [follow(&["logs", "-n", "0", "-f"]), follow(&["events"]), follow(&["trace", "perl-echo"])];
    // A restart makes each show something (a log line, an event, the traced handshake).
    wait_for("every follower to show a line", async || {
        d.call("plugins.restart", json!({"name": "perl-echo"})).await.ok()?;
        followers.iter().all(|(_, shown)| shown.load(std::sync::atomic::Ordering::SeqCst)).then_some(())
    })
    .await;
    d.signal(libc::SIGKILL);
    let _ = d.wait_exit().await;
    for (child, _) in followers {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("the connection to plugind broke"), "{err}");
    }
}

/// `trace` of a plugin that does not run says so on stderr, rather than wait mute.
#[tokio::test(flavor = "multi_thread")]
async fn trace_of_a_plugin_that_does_not_run_says_so() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    d.call("plugins.stop", json!({"name": "perl-echo"})).await.unwrap();
    let mut child = Command::new(pluginctl())
        .args(["--socket", d.socket.to_str().unwrap(), "trace", "perl-echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || lines.next().map(Result::unwrap)).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(first.as_deref(), Some("pluginctl: perl-echo is stopped; its messages show here once it runs"));
}

/// A plugin that answers its handshake and never an `execute`.
const DEAF_TO_CALLS: &str = r#"import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m and m.get("method") in ("init", "register", "ping", "teardown"):
        r = {"init": {}, "register": {"services": []}, "ping": {}, "teardown": None}[m["method"]]
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// An `events.subscribe` client that reads nothing while 25,000 events happen (calls that time
/// out, each a `call_failed`) is told how many it missed once it reads again: they were
/// dropped without a word, a restart's among them (audit 19).
#[tokio::test(flavor = "multi_thread")]
async fn an_events_subscriber_that_falls_behind_is_told_what_it_missed() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let manifest = json!({"name": "deaf", "version": "1.0.0", "main": "main.py", "limits": {"max_inflight": 256}});
    let d = Daemon::builder()
        .plugin_files("deaf", &[("plugin.json", &manifest.to_string()), ("main.py", DEAF_TO_CALLS)])
        .start()
        .await;
    let mut sub = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    sub.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\",\"params\":{}}\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(sub).lines();
    let answer = lines.next_line().await.unwrap().unwrap();
    assert!(answer.contains("\"result\":null"), "{answer}");
    // Not read from now on: its socket fills, then plugind's queue for it.
    let c = plugind_client::Client::connect(&d.socket).await.unwrap();
    let call = json!({"plugin": "deaf", "method": "m", "timeout_ms": 1});
    // More than its socket, plugind's queue for it and the 1024 events kept hold.
    for _ in 0..500 {
        let calls = (0..50).map(|_| c.call("execute", &call));
        for r in futures::future::join_all(calls).await {
            assert!(r.is_err(), "{r:?}");
        }
    }
    let lagged = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["params"]["kind"] == "lagged" {
                return v;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("a lagged event came");
    let detail = lagged["params"]["detail"].as_str().unwrap();
    assert!(detail.contains("events were dropped"), "{lagged}");
}
