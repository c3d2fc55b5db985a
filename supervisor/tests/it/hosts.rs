//! A host's own requests: `$/cancel` ends one (the plugin, and the plugins it called, get
//! `$/cancel`; the host gets `-32800` at once), and the plugin's `$/progress` reaches the host
//! under the host's request id. Spoken as raw lines, as any host library speaks them.

use crate::support::{wait_stderr, Daemon};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A raw control connection.
struct Raw {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Raw {
    async fn open(d: &Daemon) -> Raw {
        let (read, write) = UnixStream::connect(&d.socket).await.unwrap().into_split();
        Raw { lines: BufReader::new(read).lines(), write }
    }

    async fn send(&mut self, msg: Value) {
        let mut line = serde_json::to_vec(&msg).unwrap();
        line.push(b'\n');
        self.write.write_all(&line).await.unwrap();
    }

    /// The next message, within `within`.
    async fn next(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line()).await.expect("a message in time").unwrap();
        serde_json::from_str(&line.expect("connection open")).unwrap()
    }
}

fn peer_daemon() -> crate::support::DaemonBuilder {
    Daemon::builder()
        .plugin("py-host-peer")
        .plugin_as("py-host-peer", "helper")
        .manifest("helper", |m| m["hooks"] = json!({}))
}

#[tokio::test]
async fn hosts_cancel_reaches_the_plugin_down_the_chain_and_answers_at_once() {
    let d = peer_daemon().start().await;
    let mut c = Raw::open(&d).await;
    // py-host-peer calls helper's `sleep` on behalf of the host's request 1.
    let nested = json!({ "service": "helper", "method": "sleep", "params": { "ms": 20000 }, "timeout_ms": 30000 });
    c.send(json!({ "jsonrpc": "2.0", "id": 1, "method": "execute",
        "params": { "plugin": "py-host-peer", "method": "call", "params": nested, "timeout_ms": 30000 } }))
        .await;
    wait_stderr(&d, "helper", "sleeping").await;
    let sent = Instant::now();
    c.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": 1 } })).await;
    let answer = c.next(Duration::from_secs(2)).await;
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], -32800, "{answer}");
    assert_eq!(answer["error"]["message"], "request cancelled");
    assert_eq!(answer["error"]["data"], json!({ "plugin": "py-host-peer" }), "{answer}");
    assert!(sent.elapsed() < Duration::from_secs(1), "answered in {:?}", sent.elapsed());
    // Both the plugin called and the one it called were told.
    wait_stderr(&d, "py-host-peer", "got $/cancel").await;
    wait_stderr(&d, "helper", "got $/cancel").await;
    let seen = d.execute("helper", "cancels", json!({})).await.unwrap();
    assert_eq!(seen[0]["method"], "sleep", "{seen}");

    // A cancel for a request not in flight changes nothing; the connection serves on.
    c.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": 99 } })).await;
    c.send(json!({ "jsonrpc": "2.0", "id": 2, "method": "execute",
        "params": { "plugin": "helper", "method": "echo", "params": { "ok": true } } }))
        .await;
    let answer = c.next(Duration::from_secs(5)).await;
    assert_eq!(answer, json!({ "jsonrpc": "2.0", "id": 2, "result": { "ok": true } }));
}

#[tokio::test]
async fn hosts_cancel_works_for_services_call_and_string_ids() {
    let d = peer_daemon().start().await;
    let mut c = Raw::open(&d).await;
    c.send(json!({ "jsonrpc": "2.0", "id": "slow", "method": "services.call",
        "params": { "service": "helper", "method": "sleep", "params": { "ms": 20000 }, "timeout_ms": 30000 } }))
        .await;
    wait_stderr(&d, "helper", "sleeping").await;
    c.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": "slow" } })).await;
    let answer = c.next(Duration::from_secs(2)).await;
    assert_eq!((answer["id"].clone(), answer["error"]["code"].clone()), (json!("slow"), json!(-32800)), "{answer}");
    wait_stderr(&d, "helper", "got $/cancel").await;
}

#[tokio::test]
async fn hosts_see_progress_under_their_own_request_id() {
    let d = peer_daemon().start().await;
    let mut c = Raw::open(&d).await;
    for (id, request) in [
        (
            json!(7),
            json!({ "method": "execute", "params": { "plugin": "helper", "method": "progress", "params": { "steps": 3 } } }),
        ),
        (
            json!("p-1"),
            json!({ "method": "services.call", "params": { "service": "helper", "method": "progress", "params": { "steps": 3 } } }),
        ),
    ] {
        let mut msg = request;
        msg["jsonrpc"] = json!("2.0");
        msg["id"] = id.clone();
        c.send(msg).await;
        for step in 1..=3 {
            let note = c.next(Duration::from_secs(5)).await;
            assert_eq!(
                note,
                json!({ "jsonrpc": "2.0", "method": "$/progress",
                    "params": { "id": id, "message": format!("step {step}"), "progress": step, "total": 3 } })
            );
        }
        let answer = c.next(Duration::from_secs(5)).await;
        assert_eq!((answer["id"].clone(), answer["result"].clone()), (id, json!({ "done": 3 })));
    }
}

#[tokio::test]
async fn hosts_wiz_example_registers_its_theme_through_the_host_ui() {
    // What `make wiz` runs once plugind is built.
    let out = tokio::process::Command::new(crate::support::repo().join("examples/wiz-host/run.sh"))
        .env("PLUGIND", env!("CARGO_BIN_EXE_plugind"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("make wiz ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "theme registered: midnight"), "{stdout}");
}

#[tokio::test]
async fn hosts_hooks_run_is_cancellable_and_relays_progress() {
    let d = peer_daemon().start().await;
    let mut c = Raw::open(&d).await;
    c.send(json!({ "jsonrpc": "2.0", "id": 3, "method": "hooks.run",
        "params": { "hook": "onRequest", "payload": { "progress": true } } }))
        .await;
    let note = c.next(Duration::from_secs(5)).await;
    assert_eq!(note["method"], "$/progress", "{note}");
    assert_eq!(note["params"], json!({ "id": 3, "message": "hook", "progress": 1, "total": 1 }));
    let answer = c.next(Duration::from_secs(5)).await;
    assert_eq!(answer["result"]["handled_by"], json!(["py-host-peer"]), "{answer}");

    c.send(json!({ "jsonrpc": "2.0", "id": 4, "method": "hooks.run",
        "params": { "hook": "onRequest", "payload": { "sleep_ms": 20000 } } }))
        .await;
    wait_stderr(&d, "py-host-peer", "sleeping").await;
    c.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": 4 } })).await;
    let answer = c.next(Duration::from_secs(2)).await;
    assert_eq!((answer["id"].clone(), answer["error"]["code"].clone()), (json!(4), json!(-32800)), "{answer}");
    assert_eq!(answer["error"]["data"], json!({ "hook": "onRequest" }), "{answer}");
    wait_stderr(&d, "py-host-peer", "got $/cancel").await;
}

#[tokio::test]
async fn hosts_see_progress_of_a_service_another_host_provides() {
    let d = peer_daemon().start().await;
    let (mut a, mut b) = (Raw::open(&d).await, Raw::open(&d).await);
    b.send(json!({ "jsonrpc": "2.0", "id": 1, "method": "services.register", "params": { "name": "ui", "version": "1.0.0" } }))
        .await;
    assert_eq!(b.next(Duration::from_secs(5)).await["result"], Value::Null);
    a.send(json!({ "jsonrpc": "2.0", "id": 9, "method": "services.call",
        "params": { "service": "ui", "method": "paint", "params": {} } }))
        .await;
    let request = b.next(Duration::from_secs(5)).await;
    assert_eq!(request["method"], "execute", "{request}");
    b.send(json!({ "jsonrpc": "2.0", "method": "$/progress", "params": { "id": request["id"], "message": "half", "progress": 50, "total": 100 } }))
        .await;
    b.send(json!({ "jsonrpc": "2.0", "id": request["id"], "result": "painted" })).await;
    let note = a.next(Duration::from_secs(5)).await;
    assert_eq!(note["params"], json!({ "id": 9, "message": "half", "progress": 50, "total": 100 }), "{note}");
    assert_eq!(a.next(Duration::from_secs(5)).await["result"], "painted");
}

/// A call kept alive by progress past `max_timeout_ms` ends there, and its `-32001` says so: the
/// limit and its length (not the plugin's `timeout_ms`, which progress restarts), and pluginctl
/// does not advise a longer `--timeout-ms`, which could not help.
#[tokio::test]
async fn a_call_ended_by_max_timeout_ms_names_that_limit() {
    let d = Daemon::builder()
        .plugin("py-host-peer")
        .manifest("py-host-peer", |m| {
            m["timeout_ms"] = json!(300);
            m["max_timeout_ms"] = json!(900);
        })
        .start()
        .await;
    let r = d.execute("py-host-peer", "progress", json!({ "steps": 30, "every_ms": 100 })).await;
    assert_eq!(crate::support::code(&r), -32001, "{r:?}");
    let data = crate::support::data(&r);
    assert_eq!((data["limit"].clone(), data["timeout_ms"].clone()), (json!("max_timeout_ms"), json!(900)), "{r:?}");
    let out = d.ctl(&["call", "py-host-peer", "progress", r#"{"steps": 30, "every_ms": 100}"#, "--timeout-ms", "5000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("within 900 ms") && err.contains("max_timeout_ms") && !err.contains("--timeout-ms"), "{err}");
}

/// A host's service that does not answer in time: `-32001` naming the deadline, as for a plugin,
/// while its own errors pass as they came (no plugin to name).
#[tokio::test]
async fn a_host_service_timeout_names_its_limit_and_its_errors_pass_unchanged() {
    let d = Daemon::builder().start().await;
    let mut provider = Raw::open(&d).await;
    provider.send(json!({ "jsonrpc": "2.0", "id": 1, "method": "services.register", "params": { "name": "slow", "version": "1.0.0" } })).await;
    assert_eq!(provider.next(Duration::from_secs(5)).await["id"], 1);
    let mut caller = Raw::open(&d).await;
    caller
        .send(json!({ "jsonrpc": "2.0", "id": 7, "method": "services.call",
            "params": { "service": "slow", "method": "m", "params": {}, "timeout_ms": 200 } }))
        .await;
    let request = provider.next(Duration::from_secs(5)).await;
    assert_eq!(request["method"], "execute", "{request}");
    let answer = caller.next(Duration::from_secs(5)).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    let data = &answer["error"]["data"];
    assert_eq!((data["limit"].clone(), data["timeout_ms"].clone()), (json!("timeout_ms"), json!(200)), "{answer}");
    // The message names the host by its connection and its process, not a bare `host:N`.
    let message = answer["error"]["message"].as_str().unwrap();
    let pid = format!("(pid {})", std::process::id());
    assert!(message.contains("service slow of the host on control connection") && message.contains(&pid), "{message}");
    // Its own error, answered in time, reaches the caller as it was.
    caller
        .send(json!({ "jsonrpc": "2.0", "id": 8, "method": "services.call",
            "params": { "service": "slow", "method": "m", "params": {}, "timeout_ms": 5000 } }))
        .await;
    let mut request = provider.next(Duration::from_secs(5)).await;
    if request.get("method").is_some_and(|m| m == "$/cancel") {
        request = provider.next(Duration::from_secs(5)).await;
    }
    let own = json!({ "code": 4711, "message": "not today", "data": { "why": "test" } });
    provider.send(json!({ "jsonrpc": "2.0", "id": request["id"], "error": own })).await;
    let answer = caller.next(Duration::from_secs(5)).await;
    assert_eq!(answer["error"], own, "{answer}");
}

/// Calls cancelled while they wait in a plugin's queue (behind `max_inflight` busy ones) leave
/// it: each stayed counted as queued and as waiting for a slot, and after as many as
/// `max_inflight` the idle plugin answered every call `-32006` until restarted (audit 21; a
/// host's hang-up and the end of the call a `service.call` was made for dropped them alike).
#[tokio::test]
async fn calls_cancelled_in_the_queue_leave_no_trace() {
    let d = Daemon::builder()
        .plugin("py-probe")
        .manifest("py-probe", |m| m["limits"] = json!({"max_inflight": 1, "max_queue": 2}))
        .start()
        .await;
    let mut c = Raw::open(&d).await;
    let call = |id: u64, method: &str| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "execute",
            "params": { "plugin": "py-probe", "method": method, "params": { "ms": 30000 }, "timeout_ms": 30000 } })
    };
    // The one slot taken (a `sleep` ends early when cancelled).
    c.send(call(1, "sleep")).await;
    crate::support::wait_for("the first call routed", async || {
        (d.status("py-probe").await["calls"]["total"] == 1).then_some(())
    })
    .await;
    c.send(call(2, "echo")).await;
    c.send(call(3, "echo")).await;
    // Routed, hence queued: the plugin's one slot is taken.
    crate::support::wait_for("both calls queued", async || {
        (d.status("py-probe").await["calls"]["total"] == 3).then_some(())
    })
    .await;
    for id in [2, 3, 1] {
        c.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": id } })).await;
        let answer = c.next(Duration::from_secs(5)).await;
        assert_eq!((answer["id"].as_u64(), answer["error"]["code"].as_i64()), (Some(id), Some(-32800)), "{answer}");
    }
    for n in 0..4 {
        let r = d.execute("py-probe", "echo", json!({ "n": n })).await;
        assert_eq!(r.unwrap(), json!({ "n": n }), "call {n} after the cancels");
    }
}
