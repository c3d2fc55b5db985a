//! Hook chains for gateways: order, shadow, open and closed failures (by error, timeout and a
//! plugin that is not running), rejection on purpose, `stop`, the chain's budget, and the receipt.
//!
//! Every plugin here is the same plain-Python fixture; its manifest `config.do` says what it does
//! with a payload: `modify` (appends its name to `payload.seen`), `pass`, `stop`, `error`,
//! `reject` (-32009), `sleep:MS` then `modify`, or `progress:MS` (a `$/progress` every 100 ms
//! for MS ms) then `modify`.

use crate::support::{code, data, Daemon, DaemonBuilder};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HOOKER: &str = r#"import json, os, sys, time
NAME = os.environ["PLUGIND_PLUGIN"]
cfg = {}
def send(m):
    print(json.dumps(dict(m, jsonrpc="2.0")), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    method, p = m["method"], m.get("params") or {}
    if method == "init":
        cfg = p.get("config") or {}
    if method != "hook":
        send({"id": m["id"], "result": None if method == "teardown" else {}})
        continue
    do, payload = cfg.get("do", "modify"), p["payload"]
    if do.startswith("sleep:"):
        time.sleep(int(do.split(":")[1]) / 1000)
        do = "modify"
    if do.startswith("progress:"):
        end = time.time() + int(do.split(":")[1]) / 1000
        while time.time() < end:
            send({"method": "$/progress", "params": {"id": m["id"], "message": NAME + " working"}})
            time.sleep(0.1)
        do = "modify"
    if do == "modify":
        send({"id": m["id"], "result": {"payload": dict(payload, seen=payload.get("seen", []) + [NAME])}})
    elif do == "pass":
        send({"id": m["id"], "result": {"payload": payload}})
    elif do == "stop":
        send({"id": m["id"], "result": {"payload": dict(payload, stopped=NAME), "stop": True}})
    elif do == "error":
        send({"id": m["id"], "error": {"code": -32000, "message": NAME + " broke"}})
    elif do == "reject":
        send({"id": m["id"], "error": {"code": -32009, "message": NAME + " says no"}})
    elif do == "empty":
        send({"id": m["id"], "result": {}})
"#;

/// A hook plugin named `name` taking part in `onRequest` as `hook` (a priority or an object),
/// doing `action`.
fn hooker(b: DaemonBuilder, name: &str, hook: Value, action: &str) -> DaemonBuilder {
    let manifest = json!({
        "name": name, "version": "1.0.0", "main": "main.py",
        "hooks": { "onRequest": hook }, "config": { "do": action },
    });
    b.plugin_files(name, &[("plugin.json", &manifest.to_string()), ("main.py", HOOKER)])
}

async fn run(d: &Daemon, params: Value) -> Result<Value, plugind_client::ClientError> {
    d.call("hooks.run", params).await
}

/// The receipt's outcomes, in order, as `plugin:outcome`.
fn outcomes(receipt: &Value) -> Vec<String> {
    receipt
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["plugin"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_in_priority_order_ties_by_name_with_a_receipt() {
    let b = hooker(Daemon::builder(), "a", json!(20), "modify");
    let b = hooker(b, "c", json!({ "priority": 10 }), "modify");
    let b = hooker(b, "b", json!(10), "modify");
    // An object without a priority gets 100: last.
    let d = hooker(b, "z-pass", json!({}), "pass").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": { "q": 1 } })).await.unwrap();
    assert_eq!(r["payload"], json!({ "q": 1, "seen": ["b", "c", "a"] }), "{r}");
    assert_eq!(r["handled_by"], json!(["b", "c", "a", "z-pass"]), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["b:modified", "c:modified", "a:modified", "z-pass:passed"]);
    for e in r["receipt"].as_array().unwrap() {
        assert!(e["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{e}");
        assert!(e.get("error").is_none(), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_plugins_see_the_payload_but_never_change_the_chain() {
    let b = hooker(Daemon::builder(), "s-modify", json!({ "priority": 1, "mode": "shadow" }), "modify");
    // Shadow wins over failure: a closed shadow plugin that rejects changes nothing either.
    let b = hooker(b, "s-reject", json!({ "priority": 2, "mode": "shadow", "failure": "closed" }), "reject");
    let b = hooker(b, "s-error", json!({ "priority": 3, "mode": "shadow" }), "error");
    let d = hooker(b, "enforcer", json!(4), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await.unwrap();
    assert_eq!(r["payload"], json!({ "seen": ["enforcer"] }), "{r}");
    assert_eq!(r["handled_by"], json!(["enforcer"]), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["s-modify:shadow", "s-reject:shadow", "s-error:shadow", "enforcer:modified"]);
    assert_eq!(r["receipt"][1]["error"]["code"], -32009, "{r}");
    assert_eq!(r["receipt"][2]["error"]["code"], -32000, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_plugin_that_fails_is_skipped_and_the_chain_goes_on() {
    let b = hooker(Daemon::builder(), "broken", json!(1), "error");
    let d = hooker(b, "after", json!(2), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await.unwrap();
    assert_eq!(r["payload"], json!({ "seen": ["after"] }));
    assert_eq!(outcomes(&r["receipt"]), ["broken:failed", "after:modified"]);
    assert_eq!(r["receipt"][0]["error"]["code"], -32000);
    assert_eq!(r["receipt"][0]["error"]["message"], "broken broke");
}

/// An answer without `payload` is malformed, not a payload wiped: it fails like any bad answer
/// (skipped when open, the chain rejected when closed).
#[tokio::test(flavor = "multi_thread")]
async fn a_hook_answer_without_a_payload_fails_the_step() {
    let b = hooker(Daemon::builder(), "blank", json!(1), "empty");
    let d = hooker(b, "after", json!(2), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": { "user": "alice" } })).await.unwrap();
    assert_eq!(r["payload"], json!({ "user": "alice", "seen": ["after"] }), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["blank:failed", "after:modified"]);
    let b = hooker(Daemon::builder(), "blank", json!({ "priority": 1, "failure": "closed" }), "empty");
    let d = hooker(b, "after", json!(2), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": { "user": "alice" } })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    assert_eq!(data(&r)["error"]["code"], -32602, "{r:?}");
    assert_eq!(data(&r)["error"]["data"]["plugin"], "blank", "the error names the plugin: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_plugin_that_fails_rejects_the_chain() {
    let b = hooker(Daemon::builder(), "first", json!(1), "modify");
    let b = hooker(b, "auth", json!({ "priority": 2, "failure": "closed" }), "error");
    let d = hooker(b, "after", json!(3), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    let data = data(&r);
    assert_eq!(data["plugin"], "auth");
    assert_eq!(data["hook"], "onRequest");
    assert_eq!(data["error"]["code"], -32000);
    assert_eq!(outcomes(&data["receipt"]), ["first:modified", "auth:failed", "after:skipped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_plugin_that_times_out_rejects_with_a_deadline_error() {
    let b = hooker(
        Daemon::builder(),
        "slow-auth",
        json!({ "priority": 1, "timeout_ms": 200, "failure": "closed" }),
        "sleep:3000",
    );
    let d = hooker(b, "after", json!(2), "modify").start().await;
    let started = Instant::now();
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await;
    // Time is the feature here: the hook's own 200 ms, not the plugin's 5 s nor the sleep.
    assert!(started.elapsed() < Duration::from_millis(2500), "answered in {:?}", started.elapsed());
    assert_eq!(code(&r), -32008, "{r:?}");
    let data = data(&r);
    assert_eq!(data["error"]["code"], -32001);
    assert_eq!(
        (data["error"]["data"]["timeout_ms"].clone(), data["error"]["data"]["limit"].clone()),
        (json!(200), json!("timeout_ms"))
    );
    assert_eq!(outcomes(&data["receipt"]), ["slow-auth:timed_out", "after:skipped"]);
}

/// Cut off by the chain's budget (`hooks.run`'s `timeout_ms`), a closed plugin's `-32001` names
/// the budget, not the plugin's own (longer) deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_plugin_cut_off_by_the_budget_names_the_budget() {
    let b = hooker(Daemon::builder(), "slow-auth", json!({ "priority": 1, "failure": "closed" }), "sleep:3000");
    let d = b.start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {}, "timeout_ms": 300 })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    let error = &data(&r)["error"];
    assert_eq!(error["code"], -32001, "{r:?}");
    // What was left of the 300 ms budget when the plugin was called.
    let left = error["data"]["timeout_ms"].as_u64().unwrap();
    assert!((250..=300).contains(&left) && error["data"]["limit"] == "caller", "{r:?}");
    assert!(error["message"].as_str().unwrap().contains(&format!("within {left} ms (its caller's deadline)")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_plugin_that_is_not_running_rejects_the_chain() {
    let b = hooker(Daemon::builder(), "auth", json!({ "priority": 1, "failure": "closed" }), "pass");
    let d = hooker(b, "open-one", json!({ "priority": 2 }), "modify").start().await;
    d.call("plugins.stop", json!({ "name": "open-one" })).await.unwrap();
    // An open plugin that is not running fails and is skipped…
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await.unwrap();
    assert_eq!(outcomes(&r["receipt"]), ["auth:passed", "open-one:failed"]);
    assert_eq!(r["receipt"][1]["error"]["code"], -32002);
    // …a closed one ends the chain.
    d.call("plugins.stop", json!({ "name": "auth" })).await.unwrap();
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    let data = data(&r);
    assert_eq!(data["plugin"], "auth");
    assert_eq!(data["error"]["code"], -32002);
    assert_eq!(data["error"]["data"]["state"], "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_on_purpose_ends_the_chain_whatever_the_failure_mode() {
    let b = hooker(Daemon::builder(), "guard", json!(1), "reject");
    let d = hooker(b, "after", json!(2), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    let data = data(&r);
    assert_eq!(data["plugin"], "guard");
    assert_eq!(data["error"]["code"], -32009);
    assert_eq!(data["error"]["message"], "guard says no");
    assert_eq!(outcomes(&data["receipt"]), ["guard:failed", "after:skipped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_ends_the_chain_with_its_payload() {
    let b = hooker(Daemon::builder(), "first", json!(1), "modify");
    let b = hooker(b, "stopper", json!(2), "stop");
    let d = hooker(b, "after", json!({ "priority": 3, "failure": "closed" }), "modify").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {} })).await.unwrap();
    assert_eq!(r["payload"], json!({ "seen": ["first"], "stopped": "stopper" }));
    assert_eq!(r["stopped_by"], "stopper");
    assert_eq!(r["handled_by"], json!(["first", "stopper"]));
    assert_eq!(outcomes(&r["receipt"]), ["first:modified", "stopper:stopped", "after:skipped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_budget_times_out_the_running_plugin_and_skips_the_rest() {
    let b = hooker(Daemon::builder(), "quick", json!(1), "modify");
    let b = hooker(b, "slow", json!(2), "sleep:3000");
    let d = hooker(b, "later", json!(3), "modify").start().await;
    let started = Instant::now();
    let r = run(&d, json!({ "hook": "onRequest", "payload": {}, "timeout_ms": 500 })).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(2500), "answered in {:?}", started.elapsed());
    // No closed plugin involved: the payload so far.
    assert_eq!(r["payload"], json!({ "seen": ["quick"] }));
    assert_eq!(outcomes(&r["receipt"]), ["quick:modified", "slow:timed_out", "later:skipped"]);
    assert_eq!(r["receipt"][1]["error"]["code"], -32001);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_plugin_cut_off_by_the_chain_budget_rejects_the_chain() {
    let b = hooker(Daemon::builder(), "slow", json!(1), "sleep:3000");
    let d = hooker(b, "auth", json!({ "priority": 2, "failure": "closed" }), "pass").start().await;
    let r = run(&d, json!({ "hook": "onRequest", "payload": {}, "timeout_ms": 300 })).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    let data = data(&r);
    assert_eq!(data["plugin"], "auth");
    assert_eq!(data["error"]["code"], -32001);
    assert_eq!(outcomes(&data["receipt"]), ["slow:timed_out", "auth:skipped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_hook_object_is_a_load_error_naming_the_field() {
    let d = hooker(Daemon::builder(), "bad", json!({ "failure": "sometimes" }), "pass").start().await;
    let s = d.status("bad").await;
    assert_eq!(s["state"], "invalid", "{s}");
    let e = s["last_error"].as_str().unwrap();
    assert!(e.contains("/hooks/onRequest/failure") && e.contains("plugin.json"), "{e}");
}

/// A slow shadow plugin used up the chain's budget: a closed plugin after it was cut off and the
/// chain rejected, though a shadow plugin must never change the chain (audit 16). Shadow steps
/// run beside the chain now, on a copy of the payload at their place: the chain's answer is what
/// it would be without them, and one still running when the budget ends is cut off in the
/// receipt only. Without a budget, the answer waits for it (within its own timeout).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_shadow_plugin_does_not_spend_the_chains_budget() {
    let shadow = json!({ "priority": 1, "mode": "shadow", "timeout_ms": 5000 });
    let b = hooker(Daemon::builder(), "slow-shadow", shadow, "sleep:1500");
    let d = hooker(b, "auth", json!({ "priority": 2, "failure": "closed" }), "modify").start().await;
    let started = Instant::now();
    let r = run(&d, json!({ "hook": "onRequest", "payload": {}, "timeout_ms": 500 })).await.unwrap();
    // Time is the feature: the answer comes at the budget's end, before the shadow's 1.5 s.
    assert!(started.elapsed() < Duration::from_millis(1400), "{:?}: {r}", started.elapsed());
    assert_eq!(r["payload"], json!({ "seen": ["auth"] }), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["slow-shadow:shadow", "auth:modified"]);
    assert_eq!(r["receipt"][0]["error"]["code"], -32001, "{r}");
    assert!(r["receipt"][0]["error"]["message"].as_str().unwrap().contains("still running"), "{r}");

    let r = run(&d, json!({ "hook": "onRequest", "payload": { "n": 2 } })).await.unwrap();
    assert_eq!(r["payload"], json!({ "n": 2, "seen": ["auth"] }), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["slow-shadow:shadow", "auth:modified"]);
    assert!(r["receipt"][0].get("error").is_none(), "{r}");
    assert!(r["receipt"][0]["ms"].as_f64().unwrap() >= 1400.0, "it ran its 1.5 s: {r}");
}

/// A shadow plugin that keeps sending `$/progress` is still held to its own `timeout_ms` (its
/// progress restarted its deadline up to `max_timeout_ms`, 60 s, and `hooks.run` without a
/// budget waited for it), and the host hears nothing of it (its progress was relayed to the host
/// as the chain's own) (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_plugins_progress_neither_stretches_nor_reaches_the_chain() {
    let shadow = json!({ "priority": 1, "mode": "shadow", "timeout_ms": 300 });
    let b = hooker(Daemon::builder(), "chatty-shadow", shadow, "progress:3000");
    let d = hooker(b, "auth", json!({ "priority": 2, "failure": "closed" }), "modify").start().await;
    let client = d.client().await;
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = heard.clone();
    let started = Instant::now();
    let params = json!({ "hook": "onRequest", "payload": {} });
    let r = client
        .call_with_progress("hooks.run", &params, move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    // Time is the feature: the shadow's 300 ms, not its 3 s of progress.
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}: {r}", started.elapsed());
    assert_eq!(r["payload"], json!({ "seen": ["auth"] }), "{r}");
    assert_eq!(outcomes(&r["receipt"]), ["chatty-shadow:shadow", "auth:modified"]);
    assert_eq!(r["receipt"][0]["error"]["code"], -32001, "{r}");
    assert_eq!(heard.load(std::sync::atomic::Ordering::Relaxed), 0, "the host heard the shadow's progress");
}

/// A plugin that puts itself first (`priority` i64::MIN) and stops the chain skipped the closed
/// auth hook after it: `hooks.run` answered its payload, `authed` (audit 16). A chain's order is
/// its authors' choice, so the operator pins it: `[plugins.NAME] hooks = { onRequest = 100 }`.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_pins_a_plugins_place_in_a_chain() {
    let b = hooker(Daemon::builder(), "early", json!(i64::MIN), "stop");
    let b = hooker(b, "auth", json!({ "priority": 10, "failure": "closed" }), "reject");
    let run_chain = async |b: DaemonBuilder| {
        let d = b.start().await;
        run(&d, json!({ "hook": "onRequest", "payload": { "token": "bad" } })).await
    };
    // Unpinned, as its author placed it: the stop skips the auth hook.
    let b2 = hooker(
        hooker(Daemon::builder(), "early", json!(i64::MIN), "stop"),
        "auth",
        json!({ "priority": 10, "failure": "closed" }),
        "reject",
    );
    let r = run_chain(b2).await.unwrap();
    assert_eq!(outcomes(&r["receipt"]), ["early:stopped", "auth:skipped"]);
    // Pinned after the auth hook by the operator: the auth hook rejects first.
    std::fs::write(b.path().join("plugind.toml"), "[plugins.early]\nhooks = { onRequest = 100 }\n").unwrap();
    let r = run_chain(b.arg("--config").arg("plugind.toml")).await;
    assert_eq!(code(&r), -32008, "{r:?}");
    assert_eq!(outcomes(&data(&r)["receipt"]), ["auth:failed", "early:skipped"]);
}
