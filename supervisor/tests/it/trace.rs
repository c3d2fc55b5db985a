//! W3C trace context across plugin boundaries, and OTLP export (docs/tracing.md).
//!
//! `py-trace` (a raw Python fixture) answers with the `_meta` it was given and relays one
//! `service.call` to another copy of itself, so each test sees what every hop received. The OTLP
//! test runs a small HTTP receiver here and reads the spans plugind POSTs to it.

use crate::support::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

/// (trace id, span id) of a traceparent, checking its shape.
fn parts(tp: &Value) -> (String, String) {
    let s = tp.as_str().unwrap_or_else(|| panic!("a traceparent string, got {tp}"));
    let f: Vec<&str> = s.split('-').collect();
    assert_eq!(f.len(), 4, "{s}");
    assert_eq!((f[0], f[1].len(), f[2].len(), f[3].len()), ("00", 32, 16, 2), "{s}");
    assert!(s.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{s}");
    (f[1].to_owned(), f[2].to_owned())
}

/// plugind with `front` requiring `back` (two copies of py-trace).
fn two(b: DaemonBuilder) -> DaemonBuilder {
    b.plugin_as("py-trace", "back").plugin_as("py-trace", "front").manifest("front", |m| {
        m["dependencies"] = json!({ "required": ["back@^1"] });
    })
}

/// `front`'s `relay` to `back` under the test's traceparent: the `_meta` sent, and the answer
/// (`mine`: what front got, `theirs.meta`: what back got).
async fn relay_front_to_back(d: &Daemon) -> (Value, Value) {
    d.wait_state("front", "running").await;
    let meta = json!({ "traceparent": traceparent() });
    let params = json!({ "plugin": "front", "method": "relay", "params": { "service": "back" }, "_meta": meta });
    (meta, d.call("execute", params).await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_passes_the_trace_on_with_a_new_parent_span() {
    let d = two(Daemon::builder()).start().await;
    d.wait_state("front", "running").await;
    let meta = json!({ "traceparent": traceparent(), "tracestate": "vendor=x" });
    let r =
        d.call("execute", json!({ "plugin": "back", "method": "meta", "params": {}, "_meta": meta })).await.unwrap();
    let (trace, span) = parts(&r["meta"]["traceparent"]);
    assert_eq!(trace, TRACE, "same trace id: {r}");
    assert_ne!(span, PARENT, "a new parent span id: {r}");
    assert_eq!(r["meta"]["tracestate"], "vendor=x", "tracestate forwarded: {r}");

    // None given: plugind starts a trace (a fresh id each call).
    let a = d.execute("back", "meta", json!({})).await.unwrap();
    let b = d.execute("back", "meta", json!({})).await.unwrap();
    let (ta, _) = parts(&a["meta"]["traceparent"]);
    let (tb, _) = parts(&b["meta"]["traceparent"]);
    assert_ne!(ta, tb, "{a} {b}");
    assert_ne!(ta, "0".repeat(32));
    assert!(a["meta"].get("tracestate").is_none(), "{a}");

    // A malformed traceparent is ignored: a new trace, and its tracestate is dropped.
    let bad = json!({ "traceparent": "00-xyz-01", "tracestate": "vendor=x" });
    let r = d.call("execute", json!({ "plugin": "back", "method": "meta", "_meta": bad })).await.unwrap();
    let (t, _) = parts(&r["meta"]["traceparent"]);
    assert_ne!(t, TRACE);
    assert!(r["meta"].get("tracestate").is_none(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn service_calls_continue_the_trace_of_the_call_they_are_made_for() {
    let d = two(Daemon::builder()).start().await;
    let (meta, r) = relay_front_to_back(&d).await;
    let (t_front, s_front) = parts(&r["mine"]["traceparent"]);
    let (t_back, s_back) = parts(&r["theirs"]["meta"]["traceparent"]);
    assert_eq!((t_front.as_str(), t_back.as_str()), (TRACE, TRACE), "{r}");
    assert!(s_back != s_front && s_back != PARENT, "each hop its own span: {r}");

    // The plugin names the trace itself: that one wins.
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = d
        .call(
            "execute",
            json!({ "plugin": "front", "method": "relay",
                    "params": { "service": "back", "meta": { "traceparent": own } }, "_meta": meta }),
        )
        .await
        .unwrap();
    let (t_back, s_back) = parts(&r["theirs"]["meta"]["traceparent"]);
    assert_eq!(t_back, "0af7651916cd43dd8448eb211c80319c", "{r}");
    assert_ne!(s_back, "b7ad6b7169203331");

    // services.call from a host takes `_meta` too.
    let r = d
        .call("services.call", json!({ "service": "back", "method": "meta", "params": {}, "_meta": meta }))
        .await
        .unwrap();
    assert_eq!(parts(&r["meta"]["traceparent"]).0, TRACE, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_steps_get_the_chain_trace_and_logs_and_events_carry_the_trace_id() {
    let d = Daemon::builder().plugin("py-trace").start().await;
    d.wait_state("py-trace", "running").await;
    let meta = json!({ "traceparent": traceparent() });
    let r = d.call("hooks.run", json!({ "hook": "onTrace", "payload": { "a": 1 }, "_meta": meta })).await.unwrap();
    let (t, s) = parts(&r["payload"]["meta"]["traceparent"]);
    assert_eq!(t, TRACE, "{r}");
    assert_ne!(s, PARENT);

    // A `log` notification sent during a call is that call's line.
    d.call("execute", json!({ "plugin": "py-trace", "method": "meta", "_meta": meta })).await.unwrap();
    let lines = wait_for("the traced log line", async || {
        let t = d.call("logs.tail", json!({ "name": "py-trace", "lines": 50 })).await.ok()?;
        let lines = t["lines"].as_array()?.clone();
        lines.iter().any(|l| l["message"] == "meta seen" && l["trace_id"] == TRACE).then_some(lines)
    })
    .await;
    assert!(lines.iter().filter(|l| l["stream"] == "stderr").all(|l| l.get("trace_id").is_none()));

    // A call that fails in plugind's hands (here: its deadline) is logged and published as an
    // event, both with its trace id.
    let d2 = Daemon::builder().plugin("py-probe").start().await;
    let ev = d2.client().await;
    ev.call("events.subscribe", &json!({})).await.unwrap();
    let r = d2
        .call(
            "execute",
            json!({ "plugin": "py-probe", "method": "sleep", "params": { "ms": 5000 }, "timeout_ms": 200, "_meta": meta }),
        )
        .await;
    assert_eq!(code(&r), -32001, "{r:?}");
    let event = wait_for("the call_failed event", async || loop {
        let (method, params) = ev.notification().await?;
        if method == "event" && params["kind"] == "call_failed" {
            return Some(params);
        }
    })
    .await;
    assert_eq!(event["trace_id"], TRACE, "{event}");
    assert_eq!(event["plugin"], "py-probe", "{event}");
    let t = d2.call("logs.tail", json!({ "name": "py-probe", "lines": 50 })).await.unwrap();
    assert!(t["lines"].as_array().unwrap().iter().any(|l| l["trace_id"] == TRACE && l["stream"] == "plugind"), "{t}");
}

/// An OTLP/HTTP receiver: every POST body, parsed as JSON.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let keep = keep.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut length = 0usize;
                    let mut path = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_owned();
                        if path.is_empty() {
                            path = l.clone();
                        }
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    r.read_exact(&mut body).await.unwrap();
                    let parsed: Value = serde_json::from_slice(&body).unwrap_or(json!({ "unparsed": body.len() }));
                    keep.lock().unwrap().push(json!({ "request": path, "body": parsed }));
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if w.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

/// Every span received, flattened.
fn spans(bodies: &Arc<Mutex<Vec<Value>>>) -> Vec<Value> {
    let bodies = bodies.lock().unwrap();
    let mut out = Vec::new();
    for b in bodies.iter() {
        for rs in b["body"]["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

fn attr(span: &Value, key: &str) -> Value {
    let a = span["attributes"].as_array().and_then(|a| a.iter().find(|kv| kv["key"] == key).cloned());
    a.map(|kv| kv["value"].clone()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_receives_one_span_per_hop_linked_to_its_parent() {
    let (url, bodies) = otlp_receiver().await;
    let mut d = two(Daemon::builder()).arg("--otlp-endpoint").arg(&url).start().await;
    let (meta, r) = relay_front_to_back(&d).await;
    let (_, front_span) = parts(&r["mine"]["traceparent"]);
    let (_, back_span) = parts(&r["theirs"]["meta"]["traceparent"]);
    let ours = wait_for("both hops' spans", async || {
        let s: Vec<Value> = spans(&bodies).into_iter().filter(|s| s["traceId"] == TRACE).collect();
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert!(bodies.lock().unwrap().iter().all(|b| b["request"].as_str().unwrap().contains("/v1/traces")));
    let front = ours.iter().find(|s| s["spanId"] == front_span).unwrap_or_else(|| panic!("{ours:?}"));
    let back = ours.iter().find(|s| s["spanId"] == back_span).unwrap_or_else(|| panic!("{ours:?}"));
    assert_eq!(front["parentSpanId"], PARENT, "the first hop's parent is the caller's span: {front}");
    assert_eq!(back["parentSpanId"], front_span, "the second hop's parent is the first hop: {back}");
    assert_eq!(attr(front, "plugind.plugin")["stringValue"], "front", "{front}");
    assert_eq!(attr(front, "rpc.method")["stringValue"], "relay", "{front}");
    assert_eq!(attr(back, "plugind.plugin")["stringValue"], "back", "{back}");
    assert_eq!(attr(back, "plugind.outcome")["stringValue"], "ok", "{back}");

    // A failed call's span says so.
    let r = d.call("execute", json!({ "plugin": "back", "method": "nope", "_meta": meta })).await;
    assert_eq!(code(&r), -32601);
    let failed = wait_for("the failed hop's span", async || {
        spans(&bodies).into_iter().find(|s| s["traceId"] == TRACE && attr(s, "rpc.method")["stringValue"] == "nope")
    })
    .await;
    assert_eq!(attr(&failed, "plugind.outcome")["stringValue"], "error", "{failed}");
    assert_eq!(failed["status"]["code"], 2, "status error: {failed}");

    // A call its caller gave up on (the client's call dropped: `$/cancel`) still has its span,
    // marked cancelled; a successful one leaves the status unset, as OpenTelemetry asks.
    let hang = json!({ "plugin": "back", "method": "hang", "_meta": meta });
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), d.call("execute", hang)).await.is_err());
    let cancelled = wait_for("the cancelled hop's span", async || {
        spans(&bodies).into_iter().find(|s| s["traceId"] == TRACE && attr(s, "rpc.method")["stringValue"] == "hang")
    })
    .await;
    assert_eq!(attr(&cancelled, "plugind.outcome")["stringValue"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["status"]["code"], 2, "status error: {cancelled}");
    assert!(back["status"]["code"].as_i64().unwrap_or(0) == 0, "success leaves the status unset: {back}");

    // The last call's span is exported before plugind exits (queued spans are flushed).
    let last = d.execute("back", "meta", json!({})).await.unwrap();
    let (trace, span) = parts(&last["meta"]["traceparent"]);
    d.call("supervisor.shutdown", json!({})).await.unwrap();
    assert_eq!(d.wait_exit().await, Some(0));
    let after = spans(&bodies);
    assert!(
        after.iter().any(|s| s["traceId"] == trace && s["spanId"] == span),
        "the last call's span was lost at shutdown: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_otlp_endpoint_stops_plugind_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .args(["--otlp-endpoint", "https://collector:4318", "--socket", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--otlp-endpoint") && err.contains("http://"), "{err}");
}
