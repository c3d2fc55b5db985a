//! Issue 9: crash safety of plugind's state. `kill -9` of plugind while plugins write to the kv
//! store (SQLite, WAL, `synchronous=FULL`: a write is on disk before `kv.set` is answered) loses
//! no answered write, leaves the store intact, kills no plugin less (parent-death signal), and
//! leaves no stale socket that blocks the next start.
//!
//! A process kill leaves the OS page cache alone, so this checks plugind's ordering (commit, then
//! answer) and recovery, not power-loss durability (which `synchronous=FULL` is for).

use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WRITERS: [&str; 2] = ["kv-a", "kv-b"];

fn builder() -> DaemonBuilder {
    let mut b = Daemon::builder();
    for name in WRITERS {
        let manifest = json!({"name": name, "version": "1.0.0", "main": "kv.py", "permissions": ["storage"]});
        b = b.plugin_files(name, &[("plugin.json", &manifest.to_string()), ("kv.py", KV_FORWARDER)]);
    }
    b
}

/// Starts plugind again on the same directories after a `kill -9` (what `Daemon::restart` does
/// after a graceful stop).
async fn relaunch(d: &mut Daemon) {
    let log = std::fs::OpenOptions::new().append(true).open(d.dir.path().join("plugind.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_plugind"))
        .current_dir(d.dir.path())
        .args(["--plugins", "plugins", "--socket"])
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.dir.path().join("state"))
        .arg("--no-watch")
        .env("PLUGIND_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    d.child = Some(child);
    d.wait_settled().await;
}

/// One writer: `kv.set` of increasing keys until plugind dies; returns the writes answered.
async fn write_until_killed(d: &Daemon, plugin: &str, round: u32) -> Vec<(String, u64)> {
    let mut answered = Vec::new();
    let Ok(c) = plugind_client::Client::connect(&d.socket).await else { return answered };
    for i in 0u64.. {
        let key = format!("r{round}/{i:06}");
        let value = json!({"i": i, "pad": "x".repeat(200)});
        let r = c
            .call("execute", &json!({"plugin": plugin, "method": "kv.set", "params": {"key": key, "value": value}}))
            .await;
        match r {
            Ok(v) => {
                assert_eq!(v, Value::Null, "kv.set answers null");
                answered.push((key, i));
            }
            // The kill: the connection is lost (or the plugin died a moment before plugind).
            Err(_) => return answered,
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_kv_writes_loses_no_answered_write() {
    let mut d = builder().start().await;
    let mut answered: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    for round in 0..3u32 {
        for p in WRITERS {
            d.wait_state(p, "running").await;
        }
        let plugin_pids: Vec<u32> = {
            let mut v = Vec::new();
            for p in WRITERS {
                v.push(d.status(p).await["pid"].as_u64().unwrap() as u32);
            }
            v
        };
        let pid = d.pid() as i32;
        // Writers at full speed; plugind is SIGKILLed 300–900 ms in.
        let kill_after = Duration::from_millis(300 + u64::from(round) * 300);
        let (a, b, ()) =
            tokio::join!(write_until_killed(&d, WRITERS[0], round), write_until_killed(&d, WRITERS[1], round), async {
                tokio::time::sleep(kill_after).await;
                // SAFETY: plain kill(2) of the plugind child this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            });
        assert_eq!(d.wait_exit().await, None, "killed by a signal");
        eprintln!("round {round}: {} + {} writes answered before the kill", a.len(), b.len());
        assert!(!a.is_empty() && !b.is_empty(), "the writers wrote");
        answered.entry(WRITERS[0]).or_default().extend(a);
        answered.entry(WRITERS[1]).or_default().extend(b);
        // The plugins die with plugind (parent-death signal); the socket file stays behind.
        wait_for("the plugins to die with plugind", async || plugin_pids.iter().all(|p| !alive(*p)).then_some(()))
            .await;
        assert!(d.socket.exists(), "a SIGKILLed plugind leaves its socket file");
        // The stale socket does not block the next start.
        let t = Instant::now();
        relaunch(&mut d).await;
        eprintln!("round {round}: plugind serving again {:?} after the kill", t.elapsed());
        // Every answered write is there, with its value, in every round so far.
        for (plugin, writes) in &answered {
            let keys = d.execute(plugin, "kv.list", json!({})).await.unwrap()["keys"].clone();
            let keys: std::collections::BTreeSet<&str> =
                keys.as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
            for (key, _) in writes {
                assert!(keys.contains(key.as_str()), "{plugin}: answered write {key} lost");
            }
            // Values: the last writes of each round (the ones closest to the kill) and a sample.
            for (key, i) in writes.iter().rev().take(10).chain(writes.iter().step_by(37)) {
                let v = d.execute(plugin, "kv.get", json!({"key": key})).await.unwrap();
                assert_eq!(v["value"]["i"], *i, "{plugin} {key}: {v}");
            }
        }
    }
    // A graceful stop, then the database file passes SQLite's full integrity check.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    let db = rusqlite::Connection::open(d.dir.path().join("state/kv.sqlite")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = db.query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap();
    let total: usize = answered.values().map(Vec::len).sum();
    assert!(rows as usize >= total, "{rows} rows, {total} answered writes");
}
