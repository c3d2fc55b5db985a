//! The host context of the LLMux design: hook chains, kv storage, metrics, the stderr flood guard.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A plain-Python hook handler: appends `tag` to `payload.trail`; `mode` "fail" errors, "stop"
/// ends the chain; it logs every `onError` it is told about.
fn hooker(name: &str, prio: i64, mode: &str) -> [(String, String); 2] {
    let manifest = json!({"name": name, "version": "1.0.0", "main": "h.py", "hooks": {"onPrompt": prio}});
    let code = format!(
        r#"import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("method") == "onError":
        sys.stderr.write("told: %s\n" % m["params"]["message"]); sys.stderr.flush(); continue
    if "id" not in m: continue
    if m["method"] == "hook":
        p = m["params"]["payload"]
        if "{mode}" == "fail":
            print(json.dumps({{"jsonrpc": "2.0", "id": m["id"], "error": {{"code": 7, "message": "{name} refuses"}}}}), flush=True); continue
        p["trail"] = p.get("trail", []) + ["{name}"]
        r = {{"payload": p, "stop": "{mode}" == "stop"}}
    else:
        r = None if m["method"] == "teardown" else {{}}
    print(json.dumps({{"jsonrpc": "2.0", "id": m["id"], "result": r}}), flush=True)
"#
    );
    [("plugin.json".into(), manifest.to_string()), ("h.py".into(), code)]
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_chain_runs_in_priority_order_skips_failures_and_stops() {
    let mut b = Daemon::builder();
    for (name, prio, mode) in
        [("d-last", 30, "ok"), ("a-first", 10, "ok"), ("c-stops", 20, "stop"), ("b-fails", 20, "fail")]
    {
        let files = hooker(name, prio, mode);
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        b = b.plugin_files(name, &refs);
    }
    let d = b.plugin("perl-echo").start().await;
    let r = d.call("hooks.run", json!({"hook": "onPrompt", "payload": {"text": "hi"}})).await.unwrap();
    assert_eq!(r["payload"], json!({"text": "hi", "trail": ["a-first", "c-stops"]}));
    assert_eq!(r["handled_by"], json!(["a-first", "c-stops"]));
    assert_eq!(r["stopped_by"], "c-stops");
    wait_for("b-fails to be told with onError", async || {
        let tail = d.status("b-fails").await["stderr_tail"].clone();
        tail.as_array()?
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("told:") && l.contains("refuses")))
            .then_some(())
    })
    .await;
    // A hook nobody handles returns the payload untouched.
    let r = d.call("hooks.run", json!({"hook": "onNothing", "payload": [1]})).await.unwrap();
    assert_eq!(r, json!({"payload": [1], "handled_by": [], "receipt": []}));
    // pluginctl hook prints the final payload.
    let out = d.ctl(&["hook", "onPrompt", r#"{"n": 1}"#]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"n": 1, "trail": ["a-first", "c-stops"]}));
}

fn kv_plugin(name: &str, storage: bool) -> Vec<(String, String)> {
    let perms = if storage { json!(["storage"]) } else { json!([]) };
    let manifest = json!({"name": name, "version": "1.0.0", "main": "kv.py", "permissions": perms});
    vec![("plugin.json".into(), manifest.to_string()), ("kv.py".into(), KV_FORWARDER.into())]
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_is_per_plugin_durable_across_restarts_and_needs_storage() {
    let mut b = Daemon::builder();
    for (name, storage) in [("kv-a", true), ("kv-b", true), ("kv-none", false)] {
        let files = kv_plugin(name, storage);
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        b = b.plugin_files(name, &refs);
    }
    let mut d = b.start().await;
    assert_eq!(d.execute("kv-a", "kv.set", json!({"key": "user/1", "value": {"n": 1}})).await.unwrap(), json!(null));
    d.execute("kv-a", "kv.set", json!({"key": "user/2", "value": [2]})).await.unwrap();
    d.execute("kv-b", "kv.set", json!({"key": "user/1", "value": "b"})).await.unwrap();
    assert_eq!(d.execute("kv-a", "kv.get", json!({"key": "user/1"})).await.unwrap(), json!({"value": {"n": 1}}));
    assert_eq!(d.execute("kv-b", "kv.get", json!({"key": "user/2"})).await.unwrap(), json!({"value": null}));
    assert_eq!(
        d.execute("kv-a", "kv.list", json!({"prefix": "user/"})).await.unwrap(),
        json!({"keys": ["user/1", "user/2"]})
    );
    assert_eq!(d.execute("kv-a", "kv.delete", json!({"key": "user/2"})).await.unwrap(), json!({"deleted": true}));
    let denied = d.execute("kv-none", "kv.get", json!({"key": "x"})).await;
    assert_eq!(code(&denied), -32005);
    assert_eq!(data(&denied)["permission"], "storage");
    // Survives a plugind restart (same state dir).
    d.restart().await;
    assert_eq!(d.execute("kv-a", "kv.get", json!({"key": "user/1"})).await.unwrap(), json!({"value": {"n": 1}}));
    assert_eq!(d.execute("kv-a", "kv.list", json!({})).await.unwrap(), json!({"keys": ["user/1"]}));
    assert_eq!(d.execute("kv-b", "kv.get", json!({"key": "user/1"})).await.unwrap(), json!({"value": "b"}));
}

/// plugind running plugin `emitter` (plain Python), which sends `metrics.emit` with `sample`
/// (its params) at every `execute`.
async fn emitting(sample: Value) -> Daemon {
    let emitter = format!(
        r#"import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    if m["method"] == "execute":
        print(json.dumps({{"jsonrpc": "2.0", "method": "metrics.emit", "params": {sample}}}), flush=True)
    print(json.dumps({{"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else {{}}}}), flush=True)
"#
    );
    Daemon::builder()
        .plugin_files(
            "emitter",
            &[("plugin.json", r#"{"name": "emitter", "version": "1.0.0", "main": "e.py"}"#), ("e.py", &emitter)],
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_carry_plugind_figures_and_emitted_ones() {
    let d =
        emitting(json!({"name": "jobs_done_total", "value": 3, "kind": "counter", "labels": {"queue": "fast"}})).await;
    d.execute("emitter", "work", json!({})).await.unwrap();
    d.execute("emitter", "work", json!({})).await.unwrap();
    let text = wait_for("the emitted metric", async || {
        let t = d.call("metrics.get", json!({})).await.ok()?["text"].as_str()?.to_owned();
        t.contains(r#"jobs_done_total{plugin="emitter",queue="fast"} 6"#).then_some(t)
    })
    .await;
    for needle in [
        r#"plugind_calls_total{plugin="emitter"} 2"#,
        r#"plugind_plugin_state{plugin="emitter",state="running"} 1"#,
        r#"plugind_call_duration_seconds_count{plugin="emitter"} 2"#,
        "plugind_plugin_memory_bytes{plugin=\"emitter\"}",
        r#"plugind_restarts_total{plugin="emitter"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let out = d.ctl(&["metrics"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("jobs_done_total"));
}

/// A sample the metrics library refuses (a histogram with an `le` label, its bucket label) is
/// refused and reported like any bad sample: it panicked plugind's task serving the plugin, which
/// then stayed `running` with a dead process, and `stop` never ended (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn a_sample_the_metrics_library_refuses_harms_nothing() {
    let d = emitting(json!({"name": "hh", "value": 1, "kind": "histogram", "labels": {"le": "5"}})).await;
    let pid = d.status("emitter").await["pid"].clone();
    d.execute("emitter", "work", json!({})).await.unwrap();
    wait_for("the refusal in the plugin's log", async || {
        let r = d.call("logs.tail", json!({"plugin": "emitter", "lines": 100})).await.ok()?;
        r["lines"].as_array()?.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("\"le\""))).then_some(())
    })
    .await;
    d.execute("emitter", "work", json!({})).await.unwrap();
    let s = d.status("emitter").await;
    assert_eq!((&s["state"], &s["pid"]), (&json!("running"), &pid), "{s}");
    let stopped =
        tokio::time::timeout(Duration::from_secs(10), d.call("plugins.stop", json!({"name": "emitter"}))).await;
    assert_eq!(stopped.expect("stop answered").unwrap()["state"], "stopped");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_flood_is_rate_limited_and_others_keep_answering() {
    let flood = r#"import json, sys, threading
def flood():
    line = "x" * 200 + "\n"
    for i in range(200000):
        sys.stderr.write(line)
threading.Thread(target=flood, daemon=True).start()
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m and "method" in m:
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else {}}), flush=True)
"#;
    let d = Daemon::builder()
        .plugin("perl-echo")
        .plugin_files(
            "flood",
            &[("plugin.json", r#"{"name": "flood", "version": "1.0.0", "main": "f.py"}"#), ("f.py", flood)],
        )
        .start()
        .await;
    let mut worst = Duration::ZERO;
    let client = d.client().await;
    for i in 0..200 {
        let t = Instant::now();
        let r = client.call("execute", &json!({"plugin": "perl-echo", "method": "echo", "params": i})).await.unwrap();
        assert_eq!(r, json!(i));
        worst = worst.max(t.elapsed());
    }
    assert!(worst < Duration::from_millis(1000), "a call took {worst:?} during the flood");
    let tail = wait_for("the dropped-lines report", async || {
        let r = d.call("logs.tail", json!({"plugin": "flood", "lines": 5000})).await.ok()?;
        let lines = r["lines"].as_array()?.clone();
        lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("stderr lines dropped"))).then_some(lines)
    })
    .await;
    assert!(tail.len() <= 1000, "the log ring is bounded: {}", tail.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn on_shutdown_hooks_run_before_teardown_at_a_graceful_stop() {
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("order");
    let code = r#"import json, os, sys
def mark(what):
    with open(os.environ["MARKER"], "a") as f: f.write(what + "\n")
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    r = {}
    if m["method"] == "hook":
        mark(m["params"]["hook"]); r = {"payload": m["params"]["payload"]}
    elif m["method"] == "teardown":
        mark("teardown"); r = None
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;
    let manifest = json!({"name": "closer", "version": "1.0.0", "main": "c.py", "hooks": {"onShutdown": 0},
        "permissions": ["filesystem"], "env": {"MARKER": marker.to_str().unwrap()}});
    let mut d = Daemon::builder()
        .plugin_files("closer", &[("plugin.json", &manifest.to_string()), ("c.py", code)])
        .start()
        .await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "onShutdown\nteardown\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_over_http() {
    use std::io::{Read, Write};
    // A free port: bind, read it, release it for plugind.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let addr2 = addr.clone();
    let d = Daemon::builder().plugin("perl-echo").arg("--metrics").arg(&addr).start().await;
    d.execute("perl-echo", "echo", json!(1)).await.unwrap();
    let body = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        // Byte by byte, each its own segment: a server must not answer the first read it gets.
        s.set_nodelay(true).unwrap();
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains(r#"plugind_calls_total{plugin="perl-echo"} 1"#), "{body}");
    // HEAD is GET without the body; another method on the path is 405 naming the allowed ones.
    let ask = |request: &'static str| {
        let addr = addr2.clone();
        move || http_exchange(&addr, request)
    };
    let head = tokio::task::spawn_blocking(ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
    let post = tokio::task::spawn_blocking(ask(
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ))
    .await
    .unwrap();
    assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get, head"), "{post}");
}

/// `--metrics` listens on loopback, which a `networking` plugin reaches too: holding idle
/// connections to it must not take plugind's descriptors (the cap and the timeout of
/// `--listen`), and it serves again once they are gone.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_connections_cannot_exhaust_pluginds_descriptors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::builder().plugin("perl-echo").arg("--metrics").arg(&addr).start().await;
    tcp_connections_are_capped(&d, &addr).await;
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let body = tokio::task::spawn_blocking(move || http_exchange(&addr, request)).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

/// One HTTP request written whole to `addr`, and everything it answered until it closed.
fn http_exchange(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// An `onShutdown` hook allowed more than the stop budget gets half of it: every plugin still
/// gets its `teardown` in the other half (it used to take the whole budget, and no plugin got one).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_shutdown_hook_leaves_time_for_teardown() {
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("order");
    let code = r#"import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    if m["method"] == "hook": continue  # never answers its onShutdown
    if m["method"] == "teardown":
        with open(os.environ["MARKER"], "a") as f: f.write(os.environ["NAME"] + " teardown\n")
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {} if m["method"] != "teardown" else None}), flush=True)
"#;
    let manifest = |name: &str, hooks: serde_json::Value| {
        json!({"name": name, "version": "1.0.0", "main": "c.py", "hooks": hooks, "permissions": ["filesystem"],
            "env": {"MARKER": marker.to_str().unwrap(), "NAME": name}})
        .to_string()
    };
    let mut d = Daemon::builder()
        .plugin_files(
            "slow",
            &[("plugin.json", &manifest("slow", json!({"onShutdown": {"timeout_ms": 60000}}))), ("c.py", code)],
        )
        .plugin_files("other", &[("plugin.json", &manifest("other", json!({}))), ("c.py", code)])
        .arg("--stop-timeout-s")
        .arg("4")
        .start()
        .await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    let order = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(order.contains("other teardown") && order.contains("slow teardown"), "{order:?}");
}
