//! pluginctl: output and exit codes (0 ok, 1 failed, 2 usage, 3 unreachable).

use crate::support::*;
use std::process::Command;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_status_call_and_exit_codes() {
    let d = Daemon::builder().plugin("perl-echo").plugin("py-probe").start().await;
    let out = d.ctl(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME") && header.contains("VERSION  STATE") && header.ends_with("SERVICES"), "{text}");
    let row = lines.find(|l| l.starts_with("perl-echo")).unwrap();
    assert!(row.contains("running"), "{row}");
    // Columns line up.
    assert_eq!(header.find("STATE"), row.find("running"), "{text}");

    let out = d.ctl(&["status", "py-probe"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("state:       running"), "{}", stdout(&out));

    let out = d.ctl(&["call", "perl-echo", "echo", r#"{"k": "v"}"#]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"k": "v"}));

    // 1: the operation failed, message on stderr.
    let out = d.ctl(&["call", "perl-echo", "fail", r#"{"code": 5, "message": "bad thing"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad thing"));
    let out = d.ctl(&["status", "ghost"]);
    assert_eq!(out.status.code(), Some(1));

    // 2: usage.
    assert_eq!(d.ctl(&["call", "perl-echo", "echo", "{not json"]).status.code(), Some(2));
    assert_eq!(d.ctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(d.ctl(&["start"]).status.code(), Some(2));

    // --json prints the raw result.
    let out = d.ctl(&["--json", "status", "perl-echo"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "perl-echo");

    // stop / start / restart print the new state.
    assert_eq!(stdout(&d.ctl(&["stop", "perl-echo", "py-probe"])), "perl-echo: stopped\npy-probe: stopped\n");
    assert_eq!(stdout(&d.ctl(&["start", "perl-echo"])), "perl-echo: running\n");
    assert_eq!(stdout(&d.ctl(&["restart", "perl-echo"])), "perl-echo: running\n");
}

#[test]
fn unreachable_daemon_is_exit_3() {
    let out = Command::new(pluginctl()).args(["--socket", "/nonexistent/plugind.sock", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach plugind"));
}

/// `--json` prints a failed call's JSON-RPC error object on stdout (code, message, data kept), and
/// `service` and `hook` take `--timeout-ms` like `call`.
#[tokio::test(flavor = "multi_thread")]
async fn json_errors_keep_code_and_data_and_every_call_takes_a_timeout() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let out = d.ctl(&["--json", "call", "ghost", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["error"]["code"], -32004, "{v}");
    assert_eq!(v["error"]["data"]["plugin"], "ghost", "{v}");

    let out = d.ctl(&["--json", "service", "perl-echo", "sleep", r#"{"ms": 3000}"#, "--timeout-ms", "200"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["error"]["code"], -32001, "{v}");
    assert_eq!(v["error"]["data"]["timeout_ms"], 200, "{v}");

    // A chain budget: the payload so far (no closed plugin), exit 0.
    let out = d.ctl(&["hook", "onRequest", r#"{"n": 1}"#, "--timeout-ms", "500"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_str::<serde_json::Value>(stdout(&out).trim()).unwrap(), serde_json::json!({"n": 1}));
}
