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

/// At boot, a plugin whose dependency no plugin still starting could provide reads `blocked`
/// at once, naming what it lacks, not `stopped` with no reason until every other plugin has
/// settled (audit 21: a plugin hanging in `init` kept it so for a minute); one whose provider is
/// still starting waits `stopped` (what boot pollers take as not settled yet) and runs once it
/// does; an operator's `stop` of a blocked one meanwhile holds.
#[tokio::test(flavor = "multi_thread")]
async fn at_boot_a_plugin_nothing_can_serve_reads_blocked_at_once() {
    let main = fixture("perl-echo").join("main.pl");
    let d = Daemon::builder()
        .plugin_files(
            "slow",
            &[
                (
                    "plugin.json",
                    r#"{"name": "slow", "version": "1.0.0", "main": "run.sh", "startup_timeout_ms": 60000, "permissions": ["process"]}"#,
                ),
                // Not ready until the test says so (`sleep` is a process of its own).
                ("run.sh", &format!("while [ ! -e go ]; do sleep 0.02; done\nexec perl {}\n", main.display())),
            ],
        )
        .plugin_as("perl-echo", "prov")
        .manifest("prov", |m| m["provides"] = json!([{"name": "x", "version": "2.0.0"}]))
        .plugin_as("perl-echo", "needs-x")
        .manifest("needs-x", |m| m["dependencies"] = json!({"required": ["x@^1"]}))
        .plugin_as("perl-echo", "stopped-at-boot")
        .manifest("stopped-at-boot", |m| m["dependencies"] = json!({"required": ["x@^1"]}))
        .plugin_as("perl-echo", "waiter")
        .manifest("waiter", |m| m["dependencies"] = json!({"required": ["slow@^1"]}))
        .spawn()
        .await;
    let s = d.wait_state("needs-x", "blocked").await;
    assert!(s["last_error"].as_str().unwrap().contains("unmet dependencies x@^1 (runs only at 2.0.0"), "{s}");
    assert_eq!(d.status("slow").await["state"], "starting", "while slow is still starting");
    assert_eq!(d.status("waiter").await["state"], "stopped", "slow may yet come up");
    // The operator stops one of them meanwhile: the boot does not start it behind their back.
    d.wait_state("stopped-at-boot", "blocked").await;
    assert_eq!(d.call("plugins.stop", json!({"name": "stopped-at-boot"})).await.unwrap()["state"], "stopped");
    std::fs::write(d.plugins.join("slow/go"), "").unwrap();
    d.wait_state("waiter", "running").await;
    assert_eq!(d.execute("waiter", "echo", json!(4)).await.unwrap(), json!(4));
    wait_for("the boot to end", async || d.log().contains("plugins started").then_some(())).await;
    assert_eq!(d.status("stopped-at-boot").await["state"], "stopped");
    assert_eq!(d.status("needs-x").await["state"], "blocked");
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

/// Rewrites `plugin`'s manifest with `edit`, as a deploy does (write aside, rename over).
fn edit_manifest(d: &Daemon, plugin: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = d.plugins.join(plugin).join("plugin.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(path.with_extension("tmp~"), m.to_string()).unwrap();
    std::fs::rename(path.with_extension("tmp~"), path).unwrap();
}

/// A provider that comes into a blocked plugin's range by a hot reload (its manifest edited from
/// 2.0.0 back to 1.4.0, then a rescan) starts it: only a plugin's state becoming
/// `running` woke blocked plugins, and a swap changes no state (audit 19: the dependent stayed
/// `blocked` beside `met: true`).
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_plugin_starts_when_a_hot_reload_brings_its_provider_into_range() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "prov")
        .manifest("prov", |m| m["version"] = json!("2.0.0"))
        .plugin_as("perl-echo", "waiter")
        .manifest("waiter", |m| m["dependencies"] = json!({"required": ["prov@^1"]}))
        .start()
        .await;
    d.wait_state("waiter", "blocked").await;
    edit_manifest(&d, "prov", |m| m["version"] = json!("1.4.0"));
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert_eq!(r["changed"], json!(["prov"]), "{r}");
    assert_eq!(d.status("prov").await["version"], "1.4.0");
    d.wait_state("waiter", "running").await;
    assert_eq!(d.execute("waiter", "echo", json!(3)).await.unwrap(), json!(3));
}

/// A hot reload that drops a service tells its dependents it went `down`, and one that brings it
/// back that it came `up` (audit 19: the drop said nothing, the return said `replaced`).
#[tokio::test(flavor = "multi_thread")]
async fn a_hot_reload_that_drops_a_service_tells_dependents_it_went_down() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "prov")
        .manifest("prov", |m| m["provides"] = json!([{"name": "feat", "version": "1.0.0"}]))
        .plugin("py-probe")
        .manifest("py-probe", |m| m["dependencies"] = json!({"optional": ["feat"]}))
        .start()
        .await;
    let heard = async |last: &[&str]| {
        wait_for(&format!("services.changed ending {last:?}"), async || {
            let tail = d.status("py-probe").await["stderr_tail"].clone();
            let lines: Vec<&str> = tail
                .as_array()?
                .iter()
                .filter_map(|l| l.as_str())
                .filter(|l| l.starts_with("services.changed"))
                .collect();
            lines.ends_with(last).then_some(())
        })
        .await
    };
    edit_manifest(&d, "prov", |m| m["provides"] = json!([]));
    d.call("plugins.reload", json!({})).await.unwrap();
    heard(&["services.changed feat 1.0.0 prov down"]).await;
    edit_manifest(&d, "prov", |m| m["provides"] = json!([{"name": "feat", "version": "1.0.0"}]));
    d.call("plugins.reload", json!({})).await.unwrap();
    heard(&["services.changed feat 1.0.0 prov down", "services.changed feat 1.0.0 prov up"]).await;
}

/// An edit that closes a cycle of required dependencies is refused like one found at a rescan:
/// the watcher's hot reload adopted it (both ends then `blocked` on each other for good once
/// stopped), and every rescan hot-reloaded the other end too, whose file had not changed
/// (audit 19). The old version goes on serving and the log names the cycle.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_that_closes_a_dependency_cycle_is_refused() {
    let d = Daemon::builder()
        .watch()
        .plugin_as("perl-echo", "cx")
        .manifest("cx", |m| m["dependencies"] = json!({"required": ["cy"]}))
        .plugin_as("perl-echo", "cy")
        .start()
        .await;
    d.wait_state("cx", "running").await;
    let pid_x = d.status("cx").await["pid"].clone();
    edit_manifest(&d, "cy", |m| m["dependencies"] = json!({"required": ["cx"]}));
    wait_for("cy's log to name the cycle", async || {
        let r = d.call("logs.tail", json!({"plugin": "cy", "lines": 100})).await.ok()?;
        r.to_string().contains("dependency cycle").then_some(())
    })
    .await;
    let s = d.status("cy").await;
    assert_eq!((&s["state"], &s["dependencies"]), (&json!("running"), &json!([])), "{s}");
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert!(r["errors"].to_string().contains("dependency cycle"), "{r}");
    assert!(!r["changed"].to_string().contains("cx"), "cx's file did not change: {r}");
    assert_eq!(d.status("cx").await["pid"], pid_x, "cx was not reloaded");
    assert_eq!(d.status("cy").await["dependencies"], json!([]), "cy still serves its old manifest");
}
