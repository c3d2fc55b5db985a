//! The service registry: plugin → plugin calls, version ranges, cycles, deadline budgets across
//! hops, cascading cancellation, host-provided services, instances.

use crate::support::*;
use plugind_client::ClientError;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The seed's provider: perl-echo renamed, offering `llm-service` 2.1.0 through `provides`.
fn with_llm_gateway(b: DaemonBuilder, version: &str) -> DaemonBuilder {
    let v = version.to_owned();
    b.plugin_as("perl-echo", "llm-gateway").manifest("llm-gateway", move |m| {
        m["provides"] = json!([{"name": "llm-service", "version": v}]);
        m["capabilities"] = json!(["llm"]);
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_manifest_node_plugin_calls_its_required_service() {
    let d = with_llm_gateway(Daemon::builder().plugin("llama-extension"), "2.1.0").start().await;
    let r = d.execute("llama-extension", "generate", json!({"prompt": "hi"})).await.unwrap();
    assert_eq!(r, json!({"text": "llama says: hi"}));
    let services = d.call("services.list", json!({"capability": "llm"})).await.unwrap();
    let names: Vec<(&str, &str)> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["plugin"].as_str().unwrap()))
        .collect();
    assert!(names.contains(&("llm-service", "llm-gateway")), "{names:?}");
    assert!(names.contains(&("llama-extension", "llama-extension")), "{names:?}");
    // services.call from a host reaches the provider with `service` set.
    let r = d
        .call("services.call", json!({"service": "llm-service", "version": "^2", "method": "echo", "params": [1]}))
        .await;
    assert_eq!(r.unwrap(), json!([1]));
    let r = d
        .call("services.call", json!({"service": "llm-service", "version": "^3", "method": "echo", "params": {}}))
        .await;
    assert_eq!(code(&r), -32004);
    // It runs, but not at that version: the error says which versions do run.
    let running = data(&r)["running"].clone();
    assert!(
        running.as_array().is_some_and(|r| r.iter().any(|v| v.as_str().is_some_and(|v| v.starts_with("2.")))),
        "{r:?}"
    );
    let out = d.ctl(&["service", "llm-service@^3", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llm-service@^3") && err.contains("it runs only at 2."), "{err}");
    let r = d.call("services.call", json!({"service": "no-such-service", "method": "echo", "params": {}})).await;
    assert_eq!(data(&r)["running"], Value::Null, "nothing runs under that name: {r:?}");
    // pluginctl services / service.
    let out = d.ctl(&["services"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NAME") && text.contains("llm-service") && text.contains("llm-gateway"), "{text}");
    let out = d.ctl(&["service", "llm-service@^2", "echo", r#"{"a":1}"#]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"a": 1}));
    // Its provider stopped: the error names the plugin that declares it and its state, so the
    // caller learns what to start; a range that plugin does not meet names nobody.
    d.call("plugins.stop", json!({"name": "llm-gateway"})).await.unwrap();
    let r = d.call("services.call", json!({"service": "llm-service", "version": "^2", "method": "echo"})).await;
    assert_eq!(code(&r), -32004);
    assert_eq!(
        data(&r)["not_running"],
        json!([{"plugin": "llm-gateway", "version": "2.1.0", "state": "stopped"}]),
        "{r:?}"
    );
    let Err(ClientError::Rpc(e)) = &r else { panic!("{r:?}") };
    let message = &e.message;
    assert!(message.contains("plugin llm-gateway (2.1.0) is stopped"), "{message}");
    let r = d.call("services.call", json!({"service": "llm-service", "version": "^3", "method": "echo"})).await;
    assert_eq!(data(&r)["not_running"], Value::Null, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn range_mismatch_blocks_until_a_matching_host_service_appears_and_goes() {
    let d = with_llm_gateway(Daemon::builder().plugin("llama-extension"), "1.4.0").start().await;
    let s = d.wait_state("llama-extension", "blocked").await;
    assert!(s["last_error"].as_str().unwrap().contains("llm-service@^2.0.0"), "{s}");

    // A host registers llm-service 2.0.0 on its control connection and answers execute itself.
    let mut host = UnixStream::connect(&d.socket).await.unwrap();
    host.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"services.register\",\"params\":{\"name\":\"llm-service\",\"version\":\"2.0.0\"}}\n")
        .await
        .unwrap();
    let (read, mut write) = host.into_split();
    let mut lines = BufReader::new(read).lines();
    let registered: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(registered["result"], json!(null));
    let host_task = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).unwrap();
            if req["method"] == "execute" {
                assert_eq!(req["params"]["service"], "llm-service");
                assert_eq!(req["params"]["caller"], "llama-extension");
                let answer = json!({"jsonrpc": "2.0", "id": req["id"], "result": {"prompt": format!("host:{}", req["params"]["params"]["prompt"].as_str().unwrap())}});
                write.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
        }
        write
    });
    d.wait_state("llama-extension", "running").await;
    let r = d.execute("llama-extension", "generate", json!({"prompt": "yo"})).await.unwrap();
    assert_eq!(r, json!({"text": "llama says: host:yo"}));

    // The host disconnects: its service is gone.
    host_task.abort();
    let _ = host_task.await;
    wait_for("the host service to go", async || {
        let r = d.execute("llama-extension", "generate", json!({"prompt": "x"})).await;
        matches!(r, Err(plugind_client::ClientError::Rpc(ref e)) if e.code == -32004).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dependency_cycle_is_a_load_error_naming_the_cycle() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "chicken")
        .manifest("chicken", |m| m["dependencies"] = json!({"required": ["egg"]}))
        .plugin_as("perl-echo", "egg")
        .manifest("egg", |m| m["dependencies"] = json!({"required": ["chicken@^1"]}))
        .plugin("py-probe")
        .start()
        .await;
    for p in ["chicken", "egg"] {
        let s = d.status(p).await;
        assert_eq!(s["state"], "invalid", "{s}");
        let e = s["last_error"].as_str().unwrap();
        assert!(
            e.contains("dependency cycle") && e.contains("chicken → egg → chicken")
                || e.contains("egg → chicken → egg"),
            "{e}"
        );
        assert!(e.contains("plugin.json") && e.contains("/dependencies/required"), "{e}");
    }
    assert_eq!(d.status("py-probe").await["state"], "running");
}

/// echo-python with py-probe as a dependency: its `call` method makes a `service.call`.
async fn two_hops() -> Daemon {
    Daemon::builder()
        .plugin("py-probe")
        .example("echo-python")
        .manifest("echo-python", |m| m["dependencies"] = json!({"required": ["py-probe"]}))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_call_gets_what_is_left_of_the_callers_deadline() {
    let d = two_hops().await;
    let started = Instant::now();
    // The nested call asks for 10 s, but its caller only has 600 ms.
    let r = d
        .call(
            "execute",
            json!({"plugin": "echo-python", "method": "call", "timeout_ms": 600,
                   "params": {"service": "py-probe", "method": "sleep", "params": {"ms": 10000}, "timeout_ms": 10000}}),
        )
        .await;
    assert_eq!(code(&r), -32001, "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    wait_stderr(&d, "py-probe", "cancelled").await;
    // The second hop timed out on its own budget (not only by cascade): py-probe counted it.
    let s = d.status("py-probe").await;
    assert_eq!(s["calls"]["total"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_call_cancels_the_calls_made_on_its_behalf() {
    let d = two_hops().await;
    // A raw client starts a long two-hop call and then goes away: plugind cancels the call to
    // echo-python, and the service.call it made to py-probe with it.
    let mut c = UnixStream::connect(&d.socket).await.unwrap();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"plugin": "echo-python", "method": "call",
        "params": {"service": "py-probe", "method": "sleep", "params": {"ms": 15000}}, "timeout_ms": 20000}});
    c.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    wait_for("the nested call to reach py-probe", async || {
        (d.status("py-probe").await["calls"]["total"] == 1).then_some(())
    })
    .await;
    let started = Instant::now();
    drop(c);
    wait_stderr(&d, "py-probe", "cancelled").await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_share_the_load() {
    let d = Daemon::builder().plugin("py-probe").manifest("py-probe", |m| m["instances"] = json!(3)).start().await;
    let s = d.wait_state("py-probe", "running").await;
    assert_eq!(s["instances"], 3);
    let calls = (0..9).map(|_| d.execute("py-probe", "sleep", json!({"ms": 300})));
    let results = futures::future::join_all(calls).await;
    let mut pids: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap()["pid"].as_u64().unwrap()).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "calls went to every instance: {pids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dependents_hear_when_a_service_goes_down_and_comes_up() {
    let d = Daemon::builder()
        .plugin("perl-echo")
        .plugin("py-probe")
        .manifest("py-probe", |m| m["dependencies"] = json!({"optional": ["perl-echo"]}))
        .start()
        .await;
    d.wait_state("py-probe", "running").await;
    d.call("plugins.stop", json!({"name": "perl-echo"})).await.unwrap();
    d.call("plugins.start", json!({"name": "perl-echo"})).await.unwrap();
    wait_for("services.changed down then up", async || {
        let tail = d.status("py-probe").await["stderr_tail"].clone();
        let lines: Vec<&str> =
            tail.as_array()?.iter().filter_map(|l| l.as_str()).filter(|l| l.starts_with("services.changed")).collect();
        (lines.ends_with(&[
            "services.changed perl-echo 1.0.0 perl-echo down",
            "services.changed perl-echo 1.0.0 perl-echo up",
        ]))
        .then_some(())
    })
    .await;
}

/// py-greedy as `name`, answering `register` with `services`.
fn greedy(b: DaemonBuilder, name: &str, services: Value) -> DaemonBuilder {
    b.plugin_as("py-greedy", name).manifest(name, move |m| m["env"] = json!({ "REGISTER": services.to_string() }))
}

/// What `plugin` gets for `method` from plugind: its whole response (`result` or `error`).
async fn ask(d: &Daemon, plugin: &str, method: &str, params: Value) -> Value {
    d.execute(plugin, "request", json!({ "method": method, "params": params })).await.unwrap()
}

/// The plugin that answers a call through the registry: asks it for its `PLUGIND_PLUGIN`.
fn who(service: &str, version: Option<&str>) -> Value {
    let mut p = json!({ "service": service, "method": "env", "params": { "name": "PLUGIND_PLUGIN" } });
    if let Some(v) = version {
        p["version"] = json!(v);
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_refuses_services_the_manifest_does_not_declare() {
    // `evil` claims another plugin's name at a higher version (which would win every
    // resolution), and its own declared service at an undeclared version.
    let claims = json!([
        {"name": "victim", "version": "99.0.0"},
        {"name": "evil-svc", "version": "2.0.0"},
        {"name": "evil-svc", "version": "1.0.0", "methods": ["env"]},
        {"name": "evil", "version": "1.0.0"},
    ]);
    let b = Daemon::builder().plugin_as("perl-echo", "victim");
    let b = greedy(b, "evil", claims)
        .manifest("evil", |m| m["provides"] = json!([{"name": "evil-svc", "version": "1.0.0"}]));
    let b = greedy(b, "caller", json!([])).manifest("caller", |m| m["dependencies"] = json!({"required": ["victim"]}));
    let d = b.start().await;

    // Calls meant for `victim` reach victim: from a plugin depending on it, and from a host.
    let r = ask(&d, "caller", "service.call", who("victim", None)).await;
    assert_eq!(r["result"], json!({"value": "victim"}), "{r}");
    let r = d.call("services.call", who("victim", None)).await.unwrap();
    assert_eq!(r, json!({"value": "victim"}));
    let r = d.call("services.call", who("victim", Some(">=2"))).await;
    assert_eq!(code(&r), -32004, "no victim >= 2 exists: {r:?}");

    // The refusals show in the status (and in plugins.list), and were warned about.
    let s = d.status("evil").await;
    let refused = s["refused_services"].as_array().unwrap();
    let names: Vec<(&str, &str)> =
        refused.iter().map(|r| (r["name"].as_str().unwrap(), r["version"].as_str().unwrap())).collect();
    assert_eq!(names, [("victim", "99.0.0"), ("evil-svc", "2.0.0")], "{s}");
    assert!(refused[0]["reason"].as_str().unwrap().contains("provides"), "{s}");
    assert!(refused[1]["reason"].as_str().unwrap().contains("1.0.0"), "{s}");
    let services = s["services"].to_string();
    assert!(!services.contains("victim") && !services.contains("2.0.0"), "{services}");
    let list = d.call("plugins.list", json!({})).await.unwrap();
    let listed = list.as_array().unwrap().iter().find(|p| p["name"] == "evil").unwrap();
    assert_eq!(listed["refused_services"], s["refused_services"]);
    assert_eq!(d.status("victim").await["refused_services"], json!([]));
    let out = String::from_utf8_lossy(&d.ctl(&["status", "evil"]).stdout).into_owned();
    assert!(
        out.contains("refused services") && out.contains("  victim@99.0.0: not in the manifest's provides"),
        "{out}"
    );
    let tail = d.call("logs.tail", json!({"plugin": "evil"})).await.unwrap();
    let warned = tail["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["level"] == "warn" && l["message"].as_str().unwrap().contains("service victim@99.0.0 refused"));
    assert!(warned, "{tail}");

    // What the manifest declares still registers, with the methods `register` gave.
    let listed = d.call("services.list", json!({})).await.unwrap();
    let providers: Vec<(&str, &str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["version"].as_str().unwrap(), s["plugin"].as_str().unwrap()))
        .collect();
    assert!(providers.contains(&("evil-svc", "1.0.0", "evil")), "{providers:?}");
    assert!(!providers.iter().any(|p| p.2 == "evil" && (p.0 == "victim" || p.1 == "2.0.0")), "{providers:?}");
    let evil_svc = listed.as_array().unwrap().iter().find(|s| s["name"] == "evil-svc").unwrap();
    assert_eq!(evil_svc["methods"], json!(["env"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_version_only_narrows_its_declared_range() {
    // `dep` exists at 1.0.0 and 2.0.0; the caller declares `dep@^1`.
    let provide = |v: &'static str| move |m: &mut Value| m["provides"] = json!([{"name": "dep", "version": v}]);
    let b = Daemon::builder()
        .plugin_as("perl-echo", "dep-one")
        .manifest("dep-one", provide("1.0.0"))
        .plugin_as("perl-echo", "dep-two")
        .manifest("dep-two", provide("2.0.0"));
    let b = greedy(b, "caller", json!([])).manifest("caller", |m| m["dependencies"] = json!({"optional": ["dep@^1"]}));
    let d = b.start().await;

    // Asking for >=2 cannot widen ^1: nothing matches both.
    let r = ask(&d, "caller", "service.call", who("dep", Some(">=2"))).await;
    assert_eq!(r["error"]["code"], -32004, "{r}");
    let r = ask(&d, "caller", "registry.requireService", json!({"name": "dep", "version": ">=2"})).await;
    assert_eq!(r["error"]["code"], -32004, "{r}");
    let r = ask(&d, "caller", "registry.getService", json!({"name": "dep", "version": ">=2"})).await;
    assert_eq!(r["result"], json!(null), "{r}");
    // Without a version, and with one inside the range, the declared range decides.
    let r = ask(&d, "caller", "service.call", who("dep", None)).await;
    assert_eq!(r["result"], json!({"value": "dep-one"}), "{r}");
    let r = ask(&d, "caller", "service.call", who("dep", Some(">=1.0.0"))).await;
    assert_eq!(r["result"], json!({"value": "dep-one"}), "{r}");
    let r = ask(&d, "caller", "registry.getService", json!({"name": "dep"})).await;
    assert_eq!((&r["result"]["plugin"], &r["result"]["version"]), (&json!("dep-one"), &json!("1.0.0")), "{r}");
    // A host has no declared range: its version alone applies, so 2.0.0 is there to be found.
    let r = d.call("services.call", who("dep", Some(">=2"))).await.unwrap();
    assert_eq!(r, json!({"value": "dep-two"}));
}
