//! Issue 16: a storm of random commands, kills and file changes on several plugins; afterwards
//! every plugin converges to exactly `instances` processes, and none is left once plugind stops.
//!
//! Seeded: the seed is printed, and `STORM_SEED=N` replays one; `STORM_SECS` sets the length
//! (default 30 s). Random pauses only pace the storm; every check waits for what it observes.

use crate::lifecycle_seams::{gated_manifest, GATED};
use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PLUGINS: [&str; 3] = ["sa", "sb", "sc"];

fn marker(root: &std::path::Path, name: &str) -> String {
    format!("{}/{name}-storm", root.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_of_commands_kills_and_changes_converges() {
    let seed = std::env::var("STORM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let secs = std::env::var("STORM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30u64);
    eprintln!("storm seed: STORM_SEED={seed} (STORM_SECS={secs})");
    let mut rng = Rng(seed);

    let mut b = Daemon::builder().watch();
    let root = b.path().to_path_buf();
    for (i, name) in PLUGINS.iter().enumerate() {
        let m = gated_manifest(name, &marker(&root, name), json!({ "instances": i + 1 }));
        b = b.plugin_files(name, &[("plugin.json", &m), ("main.py", GATED)]);
    }
    let d = b.start().await;
    let mut instances: Vec<u64> = (1..=PLUGINS.len() as u64).collect();
    let mut version = 1u64;
    let mut inflight: Vec<(String, tokio::task::JoinHandle<Result<Value, plugind_client::ClientError>>)> = Vec::new();
    let (mut kills, mut changes, mut commands) = (0, 0, 0);

    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let p = rng.below(PLUGINS.len() as u64) as usize;
        let name = PLUGINS[p];
        match rng.below(10) {
            0..=4 => {
                let (method, params) = match rng.below(6) {
                    0 => ("plugins.start", json!({ "name": name })),
                    1 => ("plugins.stop", json!({ "name": name })),
                    2 => ("plugins.restart", json!({ "name": name })),
                    3 => ("plugins.restart", json!({ "name": name, "hard": true })),
                    4 => ("plugins.reload", json!({})),
                    _ => ("execute", json!({ "plugin": name, "method": "pid", "params": {} })),
                };
                let socket = d.socket.clone();
                inflight.push((
                    format!("{method} {params}"),
                    tokio::spawn(async move {
                        let c = plugind_client::Client::connect(&socket).await.expect("socket");
                        c.call(method, &params).await
                    }),
                ));
                commands += 1;
            }
            5..=7 => {
                let pids = procs_with(&marker(&root, name));
                if !pids.is_empty() {
                    let pid = pids[rng.below(pids.len() as u64) as usize];
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    kills += 1;
                }
            }
            _ => {
                instances[p] = 1 + rng.below(3);
                version += 1;
                let delay = format!("0.{}", rng.below(4));
                let m = gated_manifest(
                    name,
                    &marker(&root, name),
                    json!({ "version": format!("1.0.{version}"), "instances": instances[p],
                            "env": { "INIT_DELAY_S": delay } }),
                );
                let path = d.plugins.join(name).join("plugin.json");
                let tmp = path.with_extension("tmp~");
                std::fs::write(&tmp, m).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                changes += 1;
            }
        }
        // Pacing only.
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
    }
    eprintln!("storm: {commands} commands, {kills} kills, {changes} manifest changes");

    // Every command is answered (errors are fine: a call to a stopped plugin, a failed swap).
    for (what, task) in inflight {
        let r = tokio::time::timeout(TIMEOUT, task).await.unwrap_or_else(|_| panic!("never answered: {what}"));
        if let Ok(Err(plugind_client::ClientError::Rpc(e))) = &r {
            assert!([-32001, -32002, -32003, -32603].contains(&e.code), "{what}: unexpected error {e:?}");
        }
    }

    // Then the last manifests, started: exactly `instances` processes each.
    d.call("plugins.reload", json!({})).await.unwrap();
    for (p, name) in PLUGINS.iter().enumerate() {
        let s = d.call("plugins.start", json!({ "name": name })).await.unwrap();
        assert!(["running", "starting", "restarting"].contains(&s["state"].as_str().unwrap()), "{s}");
        let want = instances[p] as usize;
        wait_for(&format!("{name} to converge to {want} processes"), async || {
            let s = d.status(name).await;
            let pids = procs_with(&marker(&root, name));
            (s["state"] == "running" && s["instances"] == want && pids.len() == want).then_some(())
        })
        .await;
        let s = d.status(name).await;
        assert_eq!(s["version"], json!(version_of(&d, name)), "{s}");
    }

    // Stopped: no process; and none outlives plugind.
    for name in PLUGINS {
        let s = d.call("plugins.stop", json!({ "name": name })).await.unwrap();
        assert_eq!(s["state"], "stopped");
        assert!(procs_with(&marker(&root, name)).is_empty(), "{name}: a process of a stopped plugin");
    }
    for name in PLUGINS {
        d.call("plugins.start", json!({ "name": name })).await.unwrap();
    }
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    for name in PLUGINS {
        assert!(procs_with(&marker(&root, name)).is_empty(), "{name}: an orphan outlived plugind");
    }
}

/// The version in a plugin's manifest on disk.
fn version_of(d: &Daemon, name: &str) -> String {
    let text = std::fs::read_to_string(d.plugins.join(name).join("plugin.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["version"].as_str().unwrap().to_owned()
}
