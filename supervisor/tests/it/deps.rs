//! Dependencies: start order, `blocked` with the unmet dependency, unblocking when a provider
//! comes up, version ranges.

use crate::support::*;
use serde_json::json;

fn ts_of(status: &serde_json::Value, event: &str, detail: &str) -> String {
    status["history"].as_array().unwrap().iter().find(|h| h["event"] == event && h["detail"] == detail).unwrap()["ts"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dependents_start_after_providers_and_missing_ones_block() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "provider")
        .manifest("provider", |m| m["version"] = json!("2.3.0"))
        .plugin_as("perl-echo", "consumer")
        .manifest("consumer", |m| m["dependencies"] = json!({"required": ["provider@^2.0.0"], "optional": ["nowhere"]}))
        .plugin_as("perl-echo", "too-new")
        .manifest("too-new", |m| m["dependencies"] = json!({"required": ["provider@>=3"]}))
        .start()
        .await;
    let provider = d.wait_state("provider", "running").await;
    let consumer = d.wait_state("consumer", "running").await;
    assert!(ts_of(&provider, "state", "running") <= ts_of(&consumer, "state", "starting"), "provider first");
    let deps = &consumer["dependencies"];
    assert_eq!(deps[0], json!({"name": "provider", "range": "^2.0.0", "required": true, "met": true}));
    assert_eq!(
        deps[1],
        json!({"name": "nowhere", "range": "*", "required": false, "met": false}),
        "optional never blocks"
    );

    let s = d.wait_state("too-new", "blocked").await;
    // The provider runs, at another version: the message says which, not that none runs.
    assert!(s["last_error"].as_str().unwrap().contains("provider@>=3 (runs only at 2.3.0 (plugin provider))"), "{s}");
    assert_eq!(s["dependencies"][0]["met"], false);
    let r = d.execute("too-new", "echo", json!({})).await;
    assert_eq!(code(&r), -32002);
    let said = format!("{r:?}");
    assert!(said.contains("is blocked: unmet dependencies") && !said.contains("blocked: blocked"), "{said}");
    assert_eq!(data(&r)["state"], "blocked");
    assert_eq!(d.call("supervisor.status", json!({})).await.unwrap()["plugins"]["blocked"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_plugin_starts_by_itself_when_its_provider_comes_up() {
    let d = Daemon::builder()
        .plugin_files(
            "late",
            &[
                (
                    "plugin.json",
                    r#"{"name": "late", "version": "1.0.0", "main": "run.sh", "restart": {"policy": "never"}}"#,
                ),
                ("run.sh", "exit 1\n"),
            ],
        )
        .plugin_as("perl-echo", "waiter")
        .manifest("waiter", |m| m["dependencies"] = json!({"required": ["late@^1"]}))
        .start()
        .await;
    d.wait_state("late", "failed").await;
    d.wait_state("waiter", "blocked").await;
    std::fs::write(
        d.plugins.join("late/run.sh"),
        format!("exec perl {}\n", fixture("perl-echo").join("main.pl").display()),
    )
    .unwrap();
    assert_eq!(d.call("plugins.start", json!({"name": "late"})).await.unwrap()["state"], "running");
    d.wait_state("waiter", "running").await;
    assert_eq!(d.execute("waiter", "echo", json!(3)).await.unwrap(), json!(3));
}

/// A dependent that crashes while its required provider is stopped comes back `blocked`, as a
/// `start` would leave it (not `running` with the dependency unmet), and runs again by itself
/// once the provider is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_dependent_restarting_after_a_crash_without_its_provider_waits_blocked() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "provider")
        .plugin_as("perl-echo", "dependent")
        .manifest("dependent", |m| m["dependencies"] = json!({"required": ["provider"]}))
        .start()
        .await;
    d.wait_state("dependent", "running").await;
    d.call("plugins.stop", json!({"name": "provider"})).await.unwrap();
    let _ = d.execute("dependent", "exit", json!({"code": 3})).await;
    let s = d.wait_state("dependent", "blocked").await;
    assert!(s["last_error"].as_str().unwrap_or_default().contains("unmet dependencies provider"), "{s}");
    assert!(s["last_error"].as_str().unwrap_or_default().contains("starts by itself once one does"), "{s}");
    assert_eq!(d.call("plugins.start", json!({"name": "provider"})).await.unwrap()["state"], "running");
    d.wait_state("dependent", "running").await;
    assert_eq!(d.execute("dependent", "echo", json!(5)).await.unwrap(), json!(5));
}
