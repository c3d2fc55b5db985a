//! The method catalog: manifest and `register` methods merged, params validated at the boundary
//! (control `execute`, `services.call`, a plugin's `service.call`) before the plugin sees them,
//! per-method deadlines, and the catalog in `plugins.get`, `pluginctl methods` and `check`.
//!
//! The fixture `catalog-probe` records every `execute` it receives (method `calls` answers the
//! list), so each rejection is shown never to have reached the plugin.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PROBE: &str = "catalog-probe";

/// The `execute` calls `plugin` has received so far, as `[method, params]` pairs.
async fn calls(d: &Daemon, plugin: &str) -> Vec<Value> {
    d.execute(plugin, "calls", json!(null)).await.unwrap().as_array().unwrap().clone()
}

/// The `path`s of a `-32602` answer's `data.errors`, after checking the rest of its shape.
fn error_paths(r: &Result<Value, plugind_client::ClientError>, plugin: &str, method: &str) -> Vec<String> {
    assert_eq!(code(r), -32602, "{r:?}");
    let data = data(r);
    assert_eq!((data["plugin"].as_str(), data["method"].as_str()), (Some(plugin), Some(method)), "{data}");
    let errors = data["errors"].as_array().expect("data.errors is an array");
    assert!(errors.iter().all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())), "{data}");
    errors.iter().map(|e| e["path"].as_str().expect("path is a string").to_owned()).collect()
}

/// A plugin's log lines (`logs.tail`), joined.
async fn log_text(d: &Daemon, plugin: &str) -> String {
    let r = d.call("logs.tail", json!({"plugin": plugin, "lines": 1000})).await.unwrap();
    r["lines"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_params_are_validated_and_a_mismatch_never_reaches_the_plugin() {
    let d = Daemon::builder().plugin(PROBE).start().await;

    let r = d.execute(PROBE, "greet", json!({"times": 0})).await;
    let paths = error_paths(&r, PROBE, "greet");
    assert!(paths.contains(&String::new()), "a missing required property is reported at the root: {paths:?}");
    assert!(paths.contains(&"/times".to_owned()), "{paths:?}");

    let r = d.execute(PROBE, "sum", json!({"items": [1, "two", 3]})).await;
    assert_eq!(error_paths(&r, PROBE, "sum"), ["/items/1"]);
    let Err(plugind_client::ClientError::Rpc(e)) = &r else { unreachable!() };
    assert!(e.message.contains("/items/1"), "the message names where: {}", e.message);

    // Absent params are `null`, which an object schema refuses.
    let r = d.call("execute", json!({"plugin": PROBE, "method": "greet"})).await;
    assert_eq!(error_paths(&r, PROBE, "greet"), [""]);

    // The list is capped.
    let bad: Vec<Value> = (0..50).map(|i| json!(format!("x{i}"))).collect();
    let r = d.execute(PROBE, "sum", json!({ "items": bad })).await;
    assert_eq!(error_paths(&r, PROBE, "sum").len(), 20);

    assert_eq!(calls(&d, PROBE).await, Vec::<Value>::new(), "no rejected call reached the plugin");

    // Matching params, and methods without a schema, pass through unchanged.
    let ok = d.execute(PROBE, "greet", json!({"name": "ada", "times": 2})).await.unwrap();
    assert_eq!(ok, json!({"method": "greet", "params": {"name": "ada", "times": 2}}));
    d.execute(PROBE, "unlisted", json!([1, 2])).await.unwrap();
    assert_eq!(calls(&d, PROBE).await, [json!(["greet", {"name": "ada", "times": 2}]), json!(["unlisted", [1, 2]])]);
}

#[tokio::test(flavor = "multi_thread")]
async fn services_call_params_are_validated() {
    let d = Daemon::builder().plugin(PROBE).start().await;
    let call = |params: Value| d.call("services.call", json!({"service": PROBE, "method": "sum", "params": params}));
    let r = call(json!({"items": [[1]]})).await;
    assert_eq!(error_paths(&r, PROBE, "sum"), ["/items/0"]);
    assert_eq!(calls(&d, PROBE).await, Vec::<Value>::new());
    call(json!({"items": [1, 2]})).await.unwrap();
    assert_eq!(calls(&d, PROBE).await, [json!(["sum", {"items": [1, 2]}])]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_service_call_is_validated_before_the_provider_sees_it() {
    let d = Daemon::builder()
        .plugin(PROBE)
        .plugin_as(PROBE, "caller")
        .manifest("caller", |m| {
            m["methods"] = json!({});
            m["dependencies"] = json!({"optional": [PROBE]});
        })
        .start()
        .await;
    let forward =
        |params: Value| d.execute("caller", "forward", json!({"service": PROBE, "method": "sum", "params": params}));
    let r = forward(json!({"items": [1, 2, {"three": 3}]})).await;
    assert_eq!(error_paths(&r, PROBE, "sum"), ["/items/2"], "the caller got plugind's answer unchanged");
    assert_eq!(calls(&d, PROBE).await, Vec::<Value>::new(), "the provider was not called");

    let ok = forward(json!({"items": [4]})).await.unwrap();
    assert_eq!(ok, json!({"method": "sum", "params": {"items": [4]}}));
    assert_eq!(calls(&d, PROBE).await, [json!(["sum", {"items": [4]}])]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_methods_timeout_overrides_the_plugins_and_a_calls_own_overrides_both() {
    // `sleep` has `timeout_ms: 300`; the plugin's own is the default 5000.
    let d = Daemon::builder().plugin(PROBE).start().await;
    let started = Instant::now();
    let r = d.execute(PROBE, "sleep", json!({"ms": 2000})).await;
    assert_eq!(code(&r), -32001, "{r:?}");
    assert_eq!(data(&r)["timeout_ms"], 300);
    assert!(started.elapsed() < Duration::from_millis(1500), "answered at the method's deadline");

    // A method without its own deadline has the plugin's: the same sleep succeeds.
    d.execute(PROBE, "nap", json!(null)).await.unwrap();
    let r = d
        .call("execute", json!({"plugin": PROBE, "method": "sleep", "params": {"ms": 600}, "timeout_ms": 3000}))
        .await
        .unwrap();
    assert_eq!(r, json!({"slept": 600}), "the call's own timeout_ms wins over the method's");

    // The same precedence through the registry.
    let r = d.call("services.call", json!({"service": PROBE, "method": "sleep", "params": {"ms": 2000}})).await;
    assert_eq!(data(&r)["timeout_ms"], 300, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn register_methods_join_the_catalog_and_the_manifest_wins() {
    let d = Daemon::builder()
        .plugin(PROBE)
        .manifest(PROBE, |m| {
            m["config"] = json!({"register_methods": {
                "greet": {"description": "from register", "params": {"type": "string"}},
                "shout": {"description": "Shouts text.", "params": {"type": "object", "required": ["text"]},
                          "timeout_ms": 250},
                "broken": {"params": {"type": 12}}
            }});
        })
        .start()
        .await;
    let status = d.status(PROBE).await;
    let methods = status["methods"].as_object().expect("plugins.get has methods");
    let mut names: Vec<&str> = methods.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["greet", "shout", "sleep", "sum"], "broken is rejected");
    assert_eq!(methods["greet"]["description"], "Says hello to someone.", "the manifest wins");
    assert_eq!(
        methods["shout"],
        json!({"description": "Shouts text.", "params": {"type": "object", "required": ["text"]}, "timeout_ms": 250})
    );

    let log = log_text(&d, PROBE).await;
    assert!(log.contains("method \"greet\" ignored: the manifest defines it"), "{log}");
    assert!(log.contains("method \"broken\" rejected: /methods/broken/params/type"), "{log}");
    assert_eq!(d.status(PROBE).await["state"], "running", "a bad registered schema does not stop the plugin");

    // Registered schemas are enforced too; the manifest's `greet` schema is the one that counts.
    let r = d.execute(PROBE, "shout", json!({"txt": "hi"})).await;
    assert_eq!(error_paths(&r, PROBE, "shout"), [""]);
    assert_eq!(calls(&d, PROBE).await, Vec::<Value>::new());
    d.execute(PROBE, "shout", json!({"text": "hi"})).await.unwrap();
    d.execute(PROBE, "greet", json!({"name": "x"})).await.unwrap();
    assert_eq!(calls(&d, PROBE).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_get_has_methods_and_protocol_and_plugins_list_only_protocol() {
    let d = Daemon::builder().plugin(PROBE).plugin("perl-echo").start().await;
    let s = d.status(PROBE).await;
    assert_eq!(s["protocol"], "plugind");
    assert_eq!(s["methods"]["sleep"], json!({"description": "Sleeps params.ms.", "timeout_ms": 300}));
    assert_eq!(s["methods"]["greet"]["idempotent"], true);
    assert_eq!(s["methods"]["greet"]["params"]["required"], json!(["name"]));
    let plain = d.status("perl-echo").await;
    assert_eq!((plain["protocol"].as_str(), plain["methods"].clone()), (Some("plugind"), json!({})));

    let list = d.call("plugins.list", json!({})).await.unwrap();
    for p in list.as_array().unwrap() {
        assert!(p.get("methods").is_none() && p.get("sandbox").is_none(), "{p}");
        assert_eq!(p["protocol"], "plugind", "{p}");
    }

    // A stopped plugin still shows its manifest's catalog.
    d.call("plugins.stop", json!({"name": PROBE})).await.unwrap();
    assert_eq!(d.status(PROBE).await["methods"].as_object().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_schema_in_the_manifest_is_a_load_error_naming_its_pointer() {
    let d = Daemon::builder()
        .plugin(PROBE)
        .manifest(PROBE, |m| m["methods"]["greet"]["params"]["properties"]["name"]["type"] = json!("strng"))
        .plugin("perl-echo")
        .start()
        .await;
    let pointer = "/methods/greet/params/properties/name/type";
    let s = d.status(PROBE).await;
    assert_eq!(s["state"], "invalid");
    let why = s["last_error"].as_str().unwrap();
    assert!(why.contains(pointer) && why.contains("plugin.json"), "{why}");
    let r = d.call("plugins.start", json!({"name": PROBE})).await;
    assert_eq!(code(&r), -32007);
    let Err(plugind_client::ClientError::Rpc(e)) = &r else { unreachable!() };
    assert!(e.message.contains(PROBE) && e.message.contains(pointer), "{}", e.message);
    assert_eq!(d.status("perl-echo").await["state"], "running", "one bad manifest stops no other plugin");
}

#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_methods_prints_the_catalog_as_a_table_and_as_json() {
    let d = Daemon::builder().plugin(PROBE).plugin("perl-echo").start().await;
    let out = d.ctl(&["methods", PROBE]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("METHOD") && lines[0].contains("PARAMS") && lines[0].contains("DESCRIPTION"),
        "{text}"
    );
    let row = |m: &str| *lines.iter().find(|l| l.starts_with(m)).unwrap_or_else(|| panic!("no row for {m}: {text}"));
    let greet = row("greet");
    assert!(greet.contains("{name*: string, times: integer}") && greet.contains("yes"), "{greet}");
    assert!(greet.ends_with("Says hello to someone."), "{greet}");
    assert!(row("sleep").contains("300ms"), "{text}");
    assert_eq!(lines.len(), 4, "a header and three methods: {text}");

    let out = d.ctl(&["--json", "methods", PROBE]);
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, d.status(PROBE).await["methods"]);

    let none = d.ctl(&["methods", "perl-echo"]);
    assert!(none.status.success() && String::from_utf8_lossy(&none.stdout).contains("no methods"), "{none:?}");
    let unknown = d.ctl(&["methods", "nope"]);
    assert_eq!(unknown.status.code(), d.ctl(&["status", "nope"]).status.code(), "exits like status");
    assert_eq!(unknown.status.code(), Some(1));
}

#[test]
fn pluginctl_check_reports_the_catalog_and_bad_schemas_by_pointer() {
    let check = |dir: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(pluginctl()).arg("check").arg(dir).args(extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = check(&fixture(PROBE), &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("methods: greet [params schema, idempotent], sleep [timeout 300 ms], sum [params schema]"),
        "{text}"
    );
    let (code, text) = check(&fixture(PROBE), &["--execute", "sum", "--params", r#"{"items": [1, "x"]}"#]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("execute sum") && text.contains("/items/1"), "{text}");

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("probe");
    copy_dir(&fixture(PROBE), &dir);
    let manifest = dir.join("plugin.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["methods"]["sum"]["params"]["properties"]["items"]["items"] = json!({"type": "integer", "minimum": "zero"});
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (code, text) = check(&dir, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("/methods/sum/params/properties/items/items/minimum"), "{text}");
}

/// Checking params against a schema may take up to about a second (an `enum` of 2000 members
/// over 20,000 items here); it runs off the event loop, so calls to other plugins go on
/// meanwhile (audit 18: inline, one call's check held every plugin's calls for 30 s). The heavy
/// call's params fail at their last item, so its answer comes the moment its check ends: done
/// inline, it would come before the other plugin's answers, which wait for the loop.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_params_check_does_not_hold_up_other_plugins() {
    let members: Vec<Value> = (0..2000).map(|i| json!(i as f64 + 0.5)).collect();
    let d = Daemon::builder()
        .plugin_as("perl-echo", "heavy")
        .manifest("heavy", move |m| {
            m["methods"] = json!({"echo": {"params": {"type": "array", "items": {"enum": members}}}});
            m["timeout_ms"] = json!(120_000);
        })
        .plugin("perl-echo")
        .arg("--worker-threads")
        .arg("1")
        .start()
        .await;
    let mut items = vec![json!(1999.5); 20_000];
    items.push(json!(0));
    let mut heavy = Box::pin(d.execute("heavy", "echo", json!(items)));
    let others = async {
        for n in 0..3 {
            assert_eq!(d.execute("perl-echo", "echo", json!({"n": n})).await.unwrap(), json!({"n": n}));
        }
    };
    tokio::select! {
        biased;
        r = &mut heavy => panic!("the heavy check ended before three calls to another plugin did: {r:?}"),
        () = others => {}
    }
    let r = heavy.await;
    assert_eq!(code(&r), -32602, "{r:?}");
}
