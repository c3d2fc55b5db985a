//! The SDK driven through its own `testing::TestHost`: the protocol as plugind sees it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Barrier};

use crate::testing::{Notification, TestHost};
use crate::{
    codes, Context, InitParams, LogLevel, MetricKind, Plugin, Registry, RpcError, ServiceCallParams,
    ServicesChangedParams,
};

/// Safety net for tests that would hang on a bug; no test waits for it on success.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f).await.expect("timed out")
}

/// A plugin whose methods each exercise one SDK feature; it reports what it saw on `events`.
struct Probe {
    barrier: Barrier,
    events: mpsc::UnboundedSender<String>,
}

const RENDEZVOUS: usize = 8;

fn probe() -> (Probe, mpsc::UnboundedReceiver<String>) {
    let (events, rx) = mpsc::unbounded_channel();
    (Probe { barrier: Barrier::new(RENDEZVOUS), events }, rx)
}

impl Probe {
    fn event(&self, e: impl Into<String>) {
        let _ = self.events.send(e.into());
    }
}

impl Plugin for Probe {
    async fn init(&self, _ctx: Context, params: InitParams) -> Result<(), RpcError> {
        if params.config["fail_init"] == json!(true) {
            return Err(RpcError::with_data(-1, "refusing to start", json!({ "why": "asked to" })));
        }
        Ok(())
    }

    async fn register(&self, registry: &mut Registry) -> Result<(), RpcError> {
        registry.register_service("probe", "1.2.3").methods(["a", "b"]).capability("test");
        registry
            .declare_method("echo")
            .description("Answers its params")
            .params(json!({ "type": "object" }))
            .result(json!({ "type": "object" }))
            .timeout_ms(250)
            .idempotent(true);
        registry.declare_method("who");
        Ok(())
    }

    async fn execute(&self, ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params),
            "rendezvous" => {
                self.barrier.wait().await;
                Ok(json!("met"))
            }
            "wait_cancel" => {
                ctx.cancelled().await;
                let after = ctx.kv_get("k").await.map_err(|e| e.code);
                self.event(format!("cancelled; kv_get then gave {after:?}"));
                Ok(json!("too late"))
            }
            "progress" => {
                for i in 1..=3 {
                    ctx.progress(Some("step"), Some(f64::from(i)), Some(3.0));
                }
                ctx.progress(None, Some(0.5), None);
                Ok(json!({ "done": true }))
            }
            "nested" => ctx.call_service("other", "m", params).await,
            "nested_with" => {
                let call = ServiceCallParams {
                    service: "other".into(),
                    version: Some("^1".into()),
                    method: "m".into(),
                    params,
                    timeout_ms: Some(100),
                    parent: None,
                };
                ctx.call_service_with(&call).await
            }
            "trace" => Ok(json!({
                "traceparent": ctx.traceparent(),
                "tracestate": ctx.tracestate(),
                "params": params,
            })),
            "kv" => {
                ctx.kv_set("a/1", json!({ "n": 1 })).await?;
                ctx.kv_set("b", json!(2)).await?;
                let got = ctx.kv_get("a/1").await?;
                let missing = ctx.kv_get("nope").await?;
                let keys = ctx.kv_list(Some("a/")).await?;
                let deleted = ctx.kv_delete("b").await?;
                let again = ctx.kv_delete("b").await?;
                Ok(json!({ "got": got, "missing": missing, "keys": keys, "deleted": [deleted, again] }))
            }
            "registry" => {
                let none = ctx.get_service("x", Some("^1")).await?;
                let all = ctx.list_services(None).await?;
                let required = ctx.require_service("x", None).await.map_err(|e| e.code);
                Ok(json!({ "get": none, "list": all, "require": format!("{required:?}") }))
            }
            "panic" => panic!("boom {}", 42),
            "fail" => Err(RpcError::with_data(42, "custom failure", json!({ "why": "test" }))),
            "notes" => {
                ctx.log(LogLevel::Warn, "careful");
                ctx.log_with(LogLevel::Info, "with fields", json!({ "k": "v" }));
                ctx.metric("hits", 2.0, MetricKind::Counter);
                ctx.metric("ratio", 0.25, MetricKind::Gauge);
                Ok(Value::Null)
            }
            "who" => Ok(json!({
                "caller": ctx.caller(),
                "service": ctx.service(),
                "name": ctx.init_params().map(|p| p.name.clone()),
                "config": ctx.init_params().map(|p| p.config.clone()),
                "id": ctx.request_id().map(|id| id.get().to_owned()),
            })),
            _ => Err(RpcError::method_not_found(method)),
        }
    }

    async fn teardown(&self, _ctx: Context) -> Result<(), RpcError> {
        self.event("teardown");
        Ok(())
    }

    async fn on_error(&self, _ctx: Context, error: RpcError) {
        self.event(format!("onError {} {}", error.code, error.message));
    }

    async fn services_changed(&self, _ctx: Context, change: ServicesChangedParams) {
        self.event(format!("changed {} {:?}", change.service, change.event));
    }
}

async fn started() -> (TestHost, mpsc::UnboundedReceiver<String>) {
    let (plugin, events) = probe();
    (within(TestHost::start(plugin)).await.expect("init and register"), events)
}

#[tokio::test]
async fn handshake_answers_follow_the_spec() {
    let (plugin, _events) = probe();
    let mut host = TestHost::builder(plugin).connect();
    assert_eq!(within(host.ping()).await, Ok(json!({})));
    let init = json!({
        "protocol_version": 1, "name": "probe", "version": "1.0.0", "config": {}, "data_dir": null,
        "supervisor": { "name": "plugind", "version": "0.1.0" }
    });
    assert_eq!(within(host.request("init", init)).await, Ok(json!({ "protocol_version": 1 })));
    assert_eq!(
        within(host.request("register", json!({}))).await,
        Ok(json!({
            "services": [{ "name": "probe", "version": "1.2.3", "methods": ["a", "b"], "capabilities": ["test"] }],
            "methods": {
                "echo": {
                    "description": "Answers its params", "params": { "type": "object" },
                    "result": { "type": "object" }, "timeout_ms": 250, "idempotent": true,
                },
                "who": {},
            },
        }))
    );
    assert_eq!(within(host.request("teardown", json!({}))).await, Ok(Value::Null));
    within(host.close()).await.expect("serve ends cleanly");
}

#[tokio::test]
async fn requests_before_init_are_rejected() {
    let (plugin, _events) = probe();
    let host = TestHost::builder(plugin).connect();
    for method in ["register", "hook", "execute"] {
        let err = within(host.request(method, json!({ "method": "echo", "hook": "h" }))).await.expect_err(method);
        assert_eq!(err.code, codes::PLUGIN_UNAVAILABLE, "{method}: {err:?}");
        assert_eq!(err.data, Some(json!({ "state": "starting" })));
    }
    // Liveness needs no handshake.
    assert_eq!(within(host.ping()).await, Ok(json!({})));
}

#[tokio::test]
async fn init_params_are_read_leniently() {
    let (plugin, _events) = probe();
    let host = TestHost::builder(plugin).connect();
    let init = json!({ "protocol_version": 1, "name": "probe", "version": "1.0.0" });
    assert_eq!(within(host.request("init", init)).await, Ok(json!({ "protocol_version": 1 })));
    let who = within(host.execute("who", json!({}))).await.expect("who");
    assert_eq!((&who["name"], &who["config"]), (&json!("probe"), &Value::Null));
}

#[tokio::test]
async fn services_from_register_are_kept_by_the_host() {
    let (host, _events) = started().await;
    assert_eq!(host.services().len(), 1);
    assert_eq!(host.services()[0].name, "probe");
}

#[tokio::test]
async fn init_error_fails_the_start_unchanged() {
    let (plugin, _events) = probe();
    let err =
        within(TestHost::builder(plugin).config(json!({ "fail_init": true })).start()).await.expect_err("init fails");
    assert_eq!(err, RpcError::with_data(-1, "refusing to start", json!({ "why": "asked to" })));
}

#[tokio::test]
async fn unknown_methods_are_method_not_found() {
    let (host, _events) = started().await;
    let err = within(host.request("no.such.method", json!({}))).await.expect_err("unknown");
    assert_eq!(err.code, codes::METHOD_NOT_FOUND);
    let err = within(host.execute("no_such_method", json!({}))).await.expect_err("unknown");
    assert_eq!(err.code, codes::METHOD_NOT_FOUND);
}

#[tokio::test]
async fn bad_params_are_invalid_params() {
    let (host, _events) = started().await;
    let err = within(host.request("execute", json!({ "params": {} }))).await.expect_err("no method");
    assert_eq!(err.code, codes::INVALID_PARAMS);
}

#[tokio::test]
async fn plugin_errors_pass_unchanged() {
    let (host, _events) = started().await;
    assert_eq!(
        within(host.execute("fail", json!({}))).await,
        Err(RpcError::with_data(42, "custom failure", json!({ "why": "test" })))
    );
}

#[tokio::test]
async fn echo_returns_params_verbatim() {
    let (host, _events) = started().await;
    let params = json!({ "s": "é\n\"", "n": [1, 2.5, -3, null, true], "deep": { "x": {} } });
    assert_eq!(within(host.execute("echo", params.clone())).await, Ok(params));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_in_flight_concurrently() {
    let (host, _events) = started().await;
    // Each call waits until all of them have started: serial handling would never finish.
    let calls: Vec<_> = (0..RENDEZVOUS).map(|_| host.start_execute("rendezvous", json!({}))).collect();
    for call in calls {
        assert_eq!(within(call.result()).await, Ok(json!("met")));
    }
}

/// A cancelled call is answered `-32800` when its handler ends, whatever the handler returned:
/// that tells plugind the work is over (it frees the call's `max_inflight` slot then).
#[tokio::test(flavor = "current_thread")]
async fn cancelled_call_is_answered_32800_when_its_handler_ends() {
    let (host, mut events) = started().await;
    let call = host.start_execute("wait_cancel", json!({}));
    host.cancel(call.id());
    let seen = within(events.recv()).await.expect("handler ran");
    assert_eq!(seen, format!("cancelled; kv_get then gave Err({})", crate::REQUEST_CANCELLED));
    let answer = within(call.result()).await.expect_err("an error, not the handler's result");
    assert_eq!((answer.code, answer.message.as_str()), (crate::REQUEST_CANCELLED, "cancelled"));
}

#[tokio::test]
async fn cancel_of_an_answered_or_unknown_call_is_harmless() {
    let (host, _events) = started().await;
    let call = host.start_execute("echo", json!(1));
    let id = call.id();
    assert_eq!(within(call.result()).await, Ok(json!(1)));
    host.cancel(id);
    host.cancel(9999);
    host.notify("$/cancel", json!({ "id": "not-a-number" }));
    assert_eq!(within(host.ping()).await, Ok(json!({})));
}

#[tokio::test]
async fn progress_carries_the_request_id() {
    let (host, _events) = started().await;
    let call = host.start_execute("progress", json!({}));
    let id = call.id();
    assert_eq!(within(call.result()).await, Ok(json!({ "done": true })));
    let mut seen = Vec::new();
    while let Some(n) = host.try_next_notification() {
        seen.push(n);
    }
    let progress = |params: Value| Notification { method: "$/progress".into(), params };
    assert_eq!(
        seen,
        vec![
            progress(json!({ "id": id, "message": "step", "progress": 1, "total": 3 })),
            progress(json!({ "id": id, "message": "step", "progress": 2, "total": 3 })),
            progress(json!({ "id": id, "message": "step", "progress": 3, "total": 3 })),
            progress(json!({ "id": id, "progress": 0.5 })),
        ]
    );
}

#[tokio::test]
async fn handler_calls_plugind_while_handling() {
    let (plugin, _events) = probe();
    let host = TestHost::builder(plugin)
        .on_request(|method, params| match (method, params["params"]["deny"].as_bool()) {
            ("service.call", Some(true)) => {
                Err(RpcError::with_data(-32005, "denied", json!({ "dependency": "other" })))
            }
            ("service.call", _) => Ok(json!({ "got": params })),
            (other, _) => Err(RpcError::method_not_found(other)),
        })
        .start();
    let host = within(host).await.expect("start");
    assert_eq!(
        within(host.execute("nested", json!({ "x": 1 }))).await,
        Ok(json!({ "got": { "service": "other", "method": "m", "params": { "x": 1 } } }))
    );
    // The provider's (here plugind's) error reaches the caller unchanged.
    assert_eq!(
        within(host.execute("nested", json!({ "deny": true }))).await,
        Err(RpcError::with_data(-32005, "denied", json!({ "dependency": "other" })))
    );
}

#[tokio::test]
async fn kv_and_registry_against_the_default_host() {
    let (host, _events) = started().await;
    assert_eq!(
        within(host.execute("kv", json!({}))).await,
        Ok(json!({ "got": { "n": 1 }, "missing": null, "keys": ["a/1"], "deleted": [true, false] }))
    );
    assert_eq!(
        within(host.execute("registry", json!({}))).await,
        Ok(json!({ "get": null, "list": [], "require": format!("Err({})", codes::SERVICE_NOT_FOUND) }))
    );
}

#[tokio::test]
async fn panic_is_internal_error_and_serving_goes_on() {
    let (host, _events) = started().await;
    let err = within(host.execute("panic", json!({}))).await.expect_err("panics");
    assert_eq!(err.code, codes::INTERNAL_ERROR);
    assert!(err.message.contains("boom 42"), "{err:?}");
    assert_eq!(err.data, Some(json!({ "panic": "boom 42" })));
    assert_eq!(within(host.execute("echo", json!("still here"))).await, Ok(json!("still here")));
}

#[tokio::test]
async fn default_hook_passes_the_payload_on() {
    let (host, _events) = started().await;
    let payload = json!({ "prompt": "hi" });
    assert_eq!(
        within(host.request("hook", json!({ "hook": "onPrompt", "payload": payload }))).await,
        Ok(json!({ "payload": payload }))
    );
    let result = within(host.hook("onPrompt", payload.clone())).await.expect("hook");
    assert_eq!((result.payload, result.stop), (payload, false));
}

#[tokio::test]
async fn logs_and_metrics_are_notifications() {
    let (host, _events) = started().await;
    assert_eq!(within(host.execute("notes", json!({}))).await, Ok(Value::Null));
    let mut seen = Vec::new();
    while let Some(n) = host.try_next_notification() {
        seen.push((n.method, n.params));
    }
    assert_eq!(
        seen,
        vec![
            ("log".to_owned(), json!({ "level": "warn", "message": "careful" })),
            ("log".to_owned(), json!({ "level": "info", "message": "with fields", "fields": { "k": "v" } })),
            ("metrics.emit".to_owned(), json!({ "name": "hits", "value": 2, "kind": "counter" })),
            ("metrics.emit".to_owned(), json!({ "name": "ratio", "value": 0.25, "kind": "gauge" })),
        ]
    );
}

#[tokio::test]
async fn context_knows_the_call_and_the_init_params() {
    let (plugin, _events) = probe();
    let host = within(TestHost::builder(plugin).name("probe").config(json!({ "k": 1 })).start()).await.expect("start");
    let who = within(host.execute_from("caller-plugin", "probe", "who", json!({}))).await.expect("who");
    assert_eq!(who["caller"], "caller-plugin");
    assert_eq!(who["service"], "probe");
    assert_eq!(who["name"], "probe");
    assert_eq!(who["config"], json!({ "k": 1 }));
    assert!(who["id"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()), "{who}");
    let plain = within(host.execute("who", json!({}))).await.expect("who");
    assert_eq!((&plain["caller"], &plain["service"]), (&Value::Null, &Value::Null));
}

#[tokio::test]
async fn notifications_reach_the_plugin() {
    let (mut host, mut events) = started().await;
    host.notify("services.changed", json!({ "service": "llm", "version": "1.0.0", "plugin": "p", "event": "down" }));
    assert_eq!(within(events.recv()).await.as_deref(), Some("changed llm Down"));
    host.notify("onError", json!({ "code": -32001, "message": "deadline exceeded" }));
    assert_eq!(within(events.recv()).await.as_deref(), Some("onError -32001 deadline exceeded"));
    host.notify("some.future.notification", json!({}));
    within(host.teardown()).await.expect("teardown");
    assert_eq!(within(events.recv()).await.as_deref(), Some("teardown"));
}

#[tokio::test]
async fn junk_lines_are_skipped() {
    let (host, _events) = started().await;
    for junk in ["not json", "", "   ", "[1,2]", r#"{"foo":1}"#, r#"{"jsonrpc":"2.0","id":77,"result":{}}"#] {
        host.send_line(junk);
    }
    assert_eq!(within(host.execute("echo", json!("ok"))).await, Ok(json!("ok")));
}

#[tokio::test]
async fn calls_in_flight_still_answer_after_stdin_closes() {
    let (mut host, _events) = started().await;
    let call = host.start_execute("echo", json!("last words"));
    within(host.close()).await.expect("serve ends");
    assert_eq!(within(call.result()).await, Ok(json!("last words")));
}

#[tokio::test]
async fn calls_that_outlive_the_grace_period_are_cancelled() {
    let (mut host, mut events) = started().await;
    let call = host.start_execute("wait_cancel", json!({}));
    within(host.close()).await.expect("serve ends after the grace period");
    assert_eq!(within(call.result()).await.map_err(|e| e.code), Err(codes::PLUGIN_CRASHED));
    assert!(within(events.recv()).await.is_some_and(|e| e.starts_with("cancelled")));
}

#[tokio::test]
async fn an_arc_plugin_can_be_served_and_kept() {
    let (plugin, _events) = probe();
    let plugin = Arc::new(plugin);
    let host = within(TestHost::start(Arc::clone(&plugin))).await.expect("start");
    assert_eq!(within(host.execute("echo", json!(3))).await, Ok(json!(3)));
    assert!(Arc::strong_count(&plugin) >= 2);
}

#[tokio::test]
async fn long_lines_are_read_whole() {
    let (host, _events) = started().await;
    // Bigger than the 64 KiB read buffer: exercises the collecting path of the line reader.
    let big = "x".repeat(300 * 1024);
    assert_eq!(within(host.execute("echo", json!(big))).await, Ok(json!(big)));
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn trace_context_reaches_the_handler_not_its_params() {
    let (host, _events) = started().await;
    let meta = json!({ "traceparent": TRACEPARENT, "tracestate": "vendor=1" });
    let call = json!({ "method": "trace", "params": { "x": 1 }, "_meta": meta });
    assert_eq!(
        within(host.request("execute", call)).await,
        Ok(json!({ "traceparent": TRACEPARENT, "tracestate": "vendor=1", "params": { "x": 1 } }))
    );
    assert_eq!(
        within(host.execute("trace", json!({}))).await,
        Ok(json!({ "traceparent": null, "tracestate": null, "params": {} }))
    );
    let hook = json!({ "hook": "onRequest", "payload": { "a": 1 }, "_meta": meta });
    assert_eq!(within(host.request("hook", hook)).await, Ok(json!({ "payload": { "a": 1 } })));
}

#[tokio::test]
async fn service_calls_carry_the_calls_trace_context() {
    let (plugin, _events) = probe();
    let host = TestHost::builder(plugin).on_request(|_, params| Ok(params)).start();
    let host = within(host).await.expect("start");
    let meta = json!({ "traceparent": TRACEPARENT, "tracestate": "vendor=1" });
    for method in ["nested", "nested_with"] {
        let call = json!({ "method": method, "params": { "x": 1 }, "_meta": meta });
        let sent = within(host.request("execute", call)).await.expect(method);
        assert_eq!(sent["_meta"], meta, "{method}: {sent}");
        assert_eq!(sent["params"], json!({ "x": 1 }), "{method}: {sent}");
    }
    assert_eq!(
        within(host.execute("nested_with", json!({}))).await,
        Ok(json!({ "service": "other", "version": "^1", "method": "m", "params": {}, "timeout_ms": 100 }))
    );
    assert_eq!(
        within(host.execute("nested", json!(1))).await,
        Ok(json!({ "service": "other", "method": "m", "params": 1 }))
    );
}

#[tokio::test]
async fn declared_methods_reach_the_test_host() {
    let (host, _events) = started().await;
    assert_eq!(host.methods()["echo"]["timeout_ms"], json!(250));
    assert_eq!(host.methods()["who"], json!({}));
}

/// The probe served over raw pipes, after `init`: lines in, lines out, nothing in between.
struct Raw {
    to_plugin: tokio::io::DuplexStream,
    from_plugin: tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
}

impl Raw {
    async fn start() -> Raw {
        use tokio::io::AsyncBufReadExt;
        let (plugin, _events) = probe();
        let (to_plugin, plugin_in) = tokio::io::duplex(64 * 1024);
        let (plugin_out, from_plugin) = tokio::io::duplex(64 * 1024);
        tokio::spawn(crate::serve_on(plugin, plugin_in, plugin_out));
        let mut raw = Raw { to_plugin, from_plugin: tokio::io::BufReader::new(from_plugin).lines() };
        raw.write(r#"{"jsonrpc":"2.0","id":0,"method":"init","params":{}}"#.to_owned() + "\n").await;
        assert_eq!(raw.read().await, r#"{"jsonrpc":"2.0","id":0,"result":{"protocol_version":1}}"#);
        raw
    }

    async fn write(&mut self, bytes: impl AsRef<[u8]>) {
        use tokio::io::AsyncWriteExt;
        within(self.to_plugin.write_all(bytes.as_ref())).await.expect("write");
    }

    async fn read(&mut self) -> String {
        within(self.from_plugin.next_line()).await.expect("read").expect("a line")
    }

    /// Sends `line` and returns the answer's `result`, or its `error`'s code.
    async fn call(&mut self, line: &str) -> Result<Value, i64> {
        self.write(format!("{line}\n")).await;
        let answer: Value = serde_json::from_str(&self.read().await).expect("JSON");
        match answer.get("error") {
            Some(e) => Err(e["code"].as_i64().expect("code")),
            None => Ok(answer["result"].clone()),
        }
    }
}

#[tokio::test]
async fn execute_lines_of_any_shape_are_answered_alike() {
    let mut raw = Raw::start().await;
    // plugind's shape, read in one pass; the answer line exactly as `result_line` writes it.
    let plain = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"execute","params":{{"method":"echo","params":{{"a":[1,"x"]}},"_meta":{{"traceparent":"{TRACEPARENT}"}}}}}}"#
    );
    raw.write(plain + "\n").await;
    assert_eq!(raw.read().await, r#"{"jsonrpc":"2.0","id":1,"result":{"a":[1,"x"]}}"#);
    // Other shapes take the general path, with the same outcome.
    for (line, expected) in [
        (r#"{"id":2,"params":{"method":"echo","params":[2]},"method":"execute","jsonrpc":"2.0"}"#, Ok(json!([2]))),
        (r#"{"jsonrpc":"2.0","id":3,"method":"execute","params":{"method":"e\u0063ho","params":3}}"#, Ok(json!(3))),
        (r#"{"jsonrpc":"2.0","id":4,"method":"execute","params":{"method":"echo","p\u0061rams":4}}"#, Ok(json!(4))),
        (r#"{"jsonrpc":"2.0","id":5,"x":true,"method":"execute","params":{"method":"echo","params":5}}"#, Ok(json!(5))),
        (
            r#"{"jsonrpc":"2.0","id":"six","method":"execute","params":{"method":"echo","params":6,"more":{}}}"#,
            Ok(json!(6)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"execute","params":{"method":"echo","params":1,"params":2}}"#,
            Err(codes::INVALID_PARAMS),
        ),
        (r#"{"jsonrpc":"2.0","id":8,"method":"execute","params":{"params":8}}"#, Err(codes::INVALID_PARAMS)),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"execute","params":{"method":"echo","_meta":{"traceparent":9}}}"#,
            Err(codes::INVALID_PARAMS),
        ),
        (
            r#"{"jsonrpc":"2.0","id":10,"method":"execute","params":{"method":"echo","params":null,"_meta":null}}"#,
            Ok(Value::Null),
        ),
        (r#"{"jsonrpc":"2.0","id":11,"method":"execute","params":{"method":"nope"}}"#, Err(codes::METHOD_NOT_FOUND)),
        (r#"{"jsonrpc":"2.0","id":12,"method":"execute"}"#, Err(codes::INVALID_PARAMS)),
        (
            r#"{"jsonrpc":"2.0","id":13,"method":"hook","params":{"hook":"h","payload":{"p":1},"_meta":{}}}"#,
            Ok(json!({ "payload": { "p": 1 } })),
        ),
        (
            r#"{"jsonrpc":"2.0","id":14,"method":"hook","params":{"payload":14,"hook":"h","method":"x"}}"#,
            Ok(json!({ "payload": 14 })),
        ),
        (
            r#"{"jsonrpc":"2.0","id":15,"method":"execute","params":{"method":"who","caller":"c","service":"s"}}"#,
            Ok(json!({ "caller": "c", "service": "s", "name": "", "config": null, "id": "15" })),
        ),
    ] {
        assert_eq!(raw.call(line).await, expected, "{line}");
    }
    // A traceparent that is not version 00's length is handed on as it came, and so is tracestate.
    for tp in [TRACEPARENT, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", "junk", "é"] {
        let line = json!({ "jsonrpc": "2.0", "id": 20, "method": "execute",
            "params": { "method": "trace", "_meta": { "traceparent": tp, "tracestate": "v=1" } } });
        let expected = json!({ "traceparent": tp, "tracestate": "v=1", "params": null });
        assert_eq!(raw.call(&line.to_string()).await, Ok(expected), "{tp}");
    }
}

#[tokio::test]
async fn answers_leave_when_the_input_read_is_handled() {
    let mut raw = Raw::start().await;
    // Two calls and the start of a third in one write: both answers come before the third's end.
    let call = |id: u32| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"execute","params":{{"method":"echo","params":{id}}}}}"#)
    };
    let third = call(3);
    let (head, tail) = third.split_at(20);
    raw.write(format!("{}\n{}\n{head}", call(1), call(2))).await;
    assert_eq!(raw.read().await, r#"{"jsonrpc":"2.0","id":1,"result":1}"#);
    assert_eq!(raw.read().await, r#"{"jsonrpc":"2.0","id":2,"result":2}"#);
    raw.write(format!("{tail}\n")).await;
    assert_eq!(raw.read().await, r#"{"jsonrpc":"2.0","id":3,"result":3}"#);
}

#[test]
fn trace_context_reads_and_writes_as_before() {
    let tc = crate::TraceContext::new(TRACEPARENT).with_tracestate("v=1");
    assert_eq!((tc.traceparent(), tc.tracestate()), (Some(TRACEPARENT), Some("v=1")));
    let wire = json!({ "traceparent": TRACEPARENT, "tracestate": "v=1" });
    assert_eq!(serde_json::to_value(&tc).expect("serialize"), wire);
    assert_eq!(serde_json::from_value::<crate::TraceContext>(wire).expect("deserialize"), tc);
    let empty = crate::TraceContext::default();
    assert_eq!(serde_json::to_value(&empty).expect("serialize"), json!({}));
    assert_eq!(empty.with_traceparent("x").traceparent(), Some("x"));
    assert_eq!(
        format!("{tc:?}"),
        format!(r#"TraceContext {{ traceparent: Some("{TRACEPARENT}"), tracestate: Some("v=1") }}"#)
    );
}
