//! Discovery, start/stop/restart, invalid manifests, graceful stop, no orphans.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifest_is_listed_and_does_not_stop_the_others() {
    let d = Daemon::builder()
        .plugin("perl-echo")
        .plugin_files("broken", &[("plugin.json", r#"{"name": "broken", "version": "not-semver", "main": "x.py"}"#)])
        .plugin_files("notjson", &[("plugin.json", "{ this is not json")])
        .start()
        .await;
    let list = d.call("plugins.list", json!({})).await.unwrap();
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["state"].as_str().unwrap().to_owned()))
        .collect();
    assert!(states.contains(&("perl-echo".into(), "running".into())), "{states:?}");
    assert!(states.contains(&("broken".into(), "invalid".into())), "{states:?}");
    assert!(states.contains(&("notjson".into(), "invalid".into())), "{states:?}");
    let broken = d.status("broken").await;
    let err = broken["last_error"].as_str().unwrap();
    assert!(err.contains("broken/plugin.json") && err.contains("/version"), "{err}");
    assert_eq!(broken["version"], "not-semver");
    let notjson = d.status("notjson").await;
    assert!(notjson["last_error"].as_str().unwrap().contains("invalid JSON"), "{notjson}");
    // Starting an invalid plugin is an error naming the cause; so is calling it (no start
    // would help: not -32002, whose states are ones a start changes); stopping it changes nothing.
    let r = d.call("plugins.start", json!({"name": "broken"})).await;
    assert_eq!(code(&r), -32007);
    let r = d.execute("broken", "echo", json!(1)).await;
    assert_eq!(
        (code(&r), data(&r)["plugin"].clone(), data(&r)["state"].clone()),
        (-32007, json!("broken"), json!("invalid"))
    );
    let s = d.call("plugins.stop", json!({"name": "broken"})).await.unwrap();
    assert_eq!(s["state"], "invalid");
    let out = d.ctl(&["stop", "broken"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = d.ctl(&["call", "broken", "echo", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pluginctl check") && !err.contains("pluginctl start"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_start_restart() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let pid = d.status("perl-echo").await["pid"].as_u64().unwrap() as u32;
    let s = d.call("plugins.stop", json!({"name": "perl-echo"})).await.unwrap();
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["pid"], json!(null));
    assert!(!alive(pid));
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l == "perl-echo teardown"), "teardown was sent: {s}");
    let s = d.call("plugins.start", json!({"name": "perl-echo"})).await.unwrap();
    assert_eq!(s["state"], "running");
    let pid2 = s["pid"].as_u64().unwrap() as u32;
    // Graceful (the default): the new instance serves when the answer comes; the old one retires.
    let s = d.call("plugins.restart", json!({"name": "perl-echo"})).await.unwrap();
    assert_eq!(s["state"], "running");
    let pid3 = s["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid3, pid2);
    wait_for("the old instance to retire", async || (!alive(pid2)).then_some(())).await;
    assert_eq!(s["restarts"], 0, "operator restarts are not crash restarts");
    // Hard: stop, then start; the old process is gone when the answer comes.
    let s = d.call("plugins.restart", json!({"name": "perl-echo", "hard": true})).await.unwrap();
    assert_eq!(s["state"], "running");
    assert_ne!(s["pid"].as_u64().unwrap() as u32, pid3);
    assert!(!alive(pid3));
    let history = s["history"].to_string();
    assert!(history.contains("stopping") && history.contains("stopped"), "a hard restart stops first: {history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_tears_down_every_plugin_and_exits_0() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("marker");
    let mut d = Daemon::builder()
        .plugin("py-probe")
        .plugin("perl-echo")
        .manifest("py-probe", |m| m["env"] = json!({"PROBE_MARKER": marker.to_str().unwrap()}))
        .start()
        .await;
    let pids: Vec<u32> = ["py-probe", "perl-echo"].iter().map(|_| 0).collect();
    let _ = pids;
    let mut pids = Vec::new();
    for p in ["py-probe", "perl-echo"] {
        pids.push(d.status(p).await["pid"].as_u64().unwrap() as u32);
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "teardown\n");
    for pid in pids {
        assert!(!alive(pid), "plugin {pid} left behind");
    }
    assert!(!d.socket.exists(), "socket removed at exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_plugind_leaves_no_orphans() {
    let mut d = Daemon::builder().plugin("py-probe").plugin("perl-echo").start().await;
    let mut pids = Vec::new();
    for p in ["py-probe", "perl-echo"] {
        pids.push(d.status(p).await["pid"].as_u64().unwrap() as u32);
    }
    d.signal(libc::SIGKILL);
    d.wait_exit().await;
    for pid in pids {
        wait_for("plugin to die with plugind", async || (!alive(pid)).then_some(())).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grandchildren_in_the_process_group_are_killed_at_stop() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let child = d.execute("py-probe", "spawn", json!({})).await.unwrap()["pid"].as_u64().unwrap() as u32;
    assert!(alive(child));
    d.call("plugins.stop", json!({"name": "py-probe"})).await.unwrap();
    wait_for("the plugin's child to be gone", async || (!alive(child)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_object_has_the_spec_fields() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let s = d.status("perl-echo").await;
    for key in [
        "name",
        "version",
        "state",
        "pid",
        "instances",
        "restarts",
        "uptime_ms",
        "services",
        "dependencies",
        "permissions",
        "last_error",
        "calls",
        "memory_kb",
        "last_exit",
        "stderr_tail",
        "history",
    ] {
        assert!(s.get(key).is_some(), "missing {key} in {s}");
    }
    assert_eq!(s["instances"], 1);
    assert!(s["memory_kb"].as_u64().unwrap() > 0);
    let st = d.call("supervisor.status", json!({})).await.unwrap();
    assert_eq!(st["plugins"]["running"], 1);
    assert_eq!(st["pid"], d.pid());
}

#[tokio::test(flavor = "multi_thread")]
async fn engines_mismatch_is_a_load_error() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "future")
        .manifest("future", |m| m["engines"] = json!({"plugind": ">=99"}))
        .plugin("perl-echo")
        .start()
        .await;
    let s = d.status("future").await;
    assert_eq!(s["state"], "invalid");
    let e = s["last_error"].as_str().unwrap();
    assert!(e.contains("future/plugin.json") && e.contains("/engines/plugind") && e.contains(">=99"), "{e}");
    assert_eq!(d.status("perl-echo").await["state"], "running");
}
