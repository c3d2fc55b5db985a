//! Issue 9: a chaos run. Eight plugins in four languages (Rust SDK, Python plain and SDK, Node
//! SDK, Perl) under steady load from several clients while a driver SIGKILLs a random plugin
//! process every 50–200 ms. Every call must resolve (a result, or -32001/-32002/-32003) within its
//! deadline + 250 ms, plugind must survive, every plugin must come back to `running`, and
//! plugind's fds, threads and RSS must return to their baseline (no leaks).
//!
//! Bounded: ~20 s of storm plus recovery. `CHAOS_SEED` replays a run (the seed is printed).

use crate::support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The plugins: (fixture or example, name). Eight processes, four languages.
const PLUGINS: [(&str, &str); 8] = [
    ("echo-rust", "echo-rust"),
    ("echo-rust", "echo-rust-2"),
    ("echo-python", "echo-python"),
    ("py-probe", "py-probe"),
    ("py-probe", "py-probe-2"),
    ("echo-node", "echo-node"),
    ("echo-node", "echo-node-2"),
    ("perl-echo", "perl-echo"),
];
const STORM: Duration = Duration::from_secs(20);
const WARMUP: Duration = Duration::from_secs(2);
const CLIENTS: usize = 4;
const CALL_TIMEOUT_MS: u64 = 1000;
const LATE_MARGIN: Duration = Duration::from_millis(250);

/// plugind's resource figures from /proc.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub fds: usize,
    pub threads: u64,
    pub rss_kb: u64,
}

/// Reads a process's open fds, threads and RSS.
pub fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage { fds, threads: field("Threads:"), rss_kb: field("VmRSS:") }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    by_code: Mutex<std::collections::BTreeMap<i64, u64>>,
    worst_overrun_ms: AtomicU64,
}

fn builder() -> DaemonBuilder {
    let restart = json!({"max_restarts": 1000, "window_s": 60});
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut b = Daemon::builder().example("echo-rust").example("echo-python").example("echo-node");
    for (fixture, name) in PLUGINS {
        if fixture != name {
            b = b.plugin_as(fixture, name);
        } else if fixture.starts_with("py-") || fixture.starts_with("perl-") {
            b = b.plugin(fixture);
        }
        let restart = restart.clone();
        b = b.manifest(name, move |m| {
            m["restart"] = restart;
            if m["env"].is_null() {
                m["env"] = json!({});
            }
            m["env"]["PLUGIND_PROFILE"] = json!(profile);
        });
    }
    b
}

/// One client: random calls until `stop`; checks each against its deadline.
async fn client(d: &Daemon, seed: u64, stop: &AtomicBool, tally: &Tally) {
    let mut rng = Rng(seed);
    let c = d.client().await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let plugin = PLUGINS[rng.below(PLUGINS.len() as u64) as usize].1;
        let sleep = rng.below(5) == 0;
        let (method, params) = if sleep {
            ("sleep", json!({"ms": 20 + rng.below(150)}))
        } else {
            ("echo", json!({"n": n, "from": seed % 1000}))
        };
        n += 1;
        let t = Instant::now();
        let r = c
            .call(
                "execute",
                &json!({"plugin": plugin, "method": method, "params": params, "timeout_ms": CALL_TIMEOUT_MS}),
            )
            .await;
        let took = t.elapsed();
        let limit = Duration::from_millis(CALL_TIMEOUT_MS) + LATE_MARGIN;
        assert!(took <= limit, "{plugin} {method} took {took:?} (limit {limit:?}): {r:?}");
        let overrun = took.saturating_sub(Duration::from_millis(CALL_TIMEOUT_MS)).as_millis() as u64;
        tally.worst_overrun_ms.fetch_max(overrun, Ordering::Relaxed);
        match r {
            Ok(v) => {
                if !sleep {
                    assert_eq!(v, params, "{plugin} echo");
                }
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(plugind_client::ClientError::Rpc(e)) => {
                assert!([-32001, -32002, -32003].contains(&e.code), "{plugin} {method}: untyped error {e:?}");
                assert_eq!(e.data.as_ref().map(|d| d["plugin"].clone()), Some(json!(plugin)), "{e:?}");
                *tally.by_code.lock().unwrap().entry(e.code).or_default() += 1;
                if e.code == -32002 {
                    // Like a real client: back off a little from a plugin that is not there.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Err(e) => panic!("{plugin} {method}: the connection to plugind failed: {e:?}"),
        }
    }
}

/// Kills a random running plugin every 50–200 ms until `stop`; returns how many it killed.
async fn killer(d: &Daemon, seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(seed);
    let c = d.client().await;
    let mut kills = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(151))).await;
        let list = c.call("plugins.list", &json!({})).await.expect("plugind answers plugins.list during the storm");
        let pids: Vec<u64> = list.as_array().unwrap().iter().filter_map(|p| p["pid"].as_u64()).collect();
        if pids.is_empty() {
            continue;
        }
        let pid = pids[rng.below(pids.len() as u64) as usize];
        // SAFETY: plain kill(2) of a plugin process plugind just listed.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            kills += 1;
        }
    }
    kills
}

async fn all_running(d: &Daemon) -> Value {
    wait_for("every plugin to be running again", async || {
        let list = d.call("plugins.list", json!({})).await.ok()?;
        list.as_array()?.iter().all(|p| p["state"] == "running").then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkill_storm_under_load() {
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("chaos: CHAOS_SEED={seed}");
    let mut d = builder().start().await;
    let list = all_running(&d).await;
    assert_eq!(list.as_array().unwrap().len(), PLUGINS.len(), "{list}");
    let pid = d.pid();

    let (stop_load, stop_kills) = (AtomicBool::new(false), AtomicBool::new(false));
    let tally = Tally::default();
    let mut seeds = Rng(seed);
    let client_seeds: Vec<u64> = (0..CLIENTS).map(|_| seeds.next() | 1).collect();
    let kill_seed = seeds.next() | 1;
    let load = futures::future::join_all(client_seeds.iter().map(|s| client(&d, *s, &stop_load, &tally)));
    let (_, (baseline, kills, storm_end_usage, recovered_in)) = tokio::join!(load, async {
        // Warm-up under load without kills, then the baseline.
        tokio::time::sleep(WARMUP).await;
        let baseline = usage(pid);
        let storm_started = Instant::now();
        let (kills, ()) = tokio::join!(killer(&d, kill_seed, &stop_kills), async {
            tokio::time::sleep(STORM).await;
            stop_kills.store(true, Ordering::Relaxed);
        });
        let storm_end_usage = usage(pid);
        eprintln!("chaos: {kills} SIGKILLs in {:?}", storm_started.elapsed());
        // Recovery under load: every plugin back to running.
        let t = Instant::now();
        all_running(&d).await;
        let recovered_in = t.elapsed();
        // A little more load on the recovered plugins, then stop the clients.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_load.store(true, Ordering::Relaxed);
        (baseline, kills, storm_end_usage, recovered_in)
    });

    // plugind survived and answers.
    assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none(), "plugind died during the storm");
    let st = d.call("supervisor.status", json!({})).await.unwrap();
    assert_eq!(st["plugins"]["running"], PLUGINS.len(), "{st}");
    let restarts: u64 = all_running(&d).await.as_array().unwrap().iter().map(|p| p["restarts"].as_u64().unwrap()).sum();
    // Every plugin serves again.
    for (_, name) in PLUGINS {
        assert_eq!(d.execute(name, "echo", json!({"after": name})).await.unwrap(), json!({"after": name}), "{name}");
    }

    // Back to the baseline: wait for idle blocking threads to exit and killed processes' fds to go.
    let tol = |b: Usage| Usage { fds: b.fds + 4, threads: b.threads + 4, rss_kb: b.rss_kb + b.rss_kb / 2 + 16 * 1024 };
    let limit = tol(baseline);
    let started = Instant::now();
    let after = loop {
        let u = usage(pid);
        if (u.fds <= limit.fds && u.threads <= limit.threads && u.rss_kb <= limit.rss_kb)
            || started.elapsed() > Duration::from_secs(20)
        {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let codes = tally.by_code.lock().unwrap().clone();
    eprintln!(
        "chaos: calls ok={} errors={codes:?}; worst overrun past the deadline {} ms; {kills} kills, {restarts} restarts; \
         recovered in {recovered_in:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.worst_overrun_ms.load(Ordering::Relaxed),
    );
    eprintln!("chaos: plugind baseline {baseline:?}; at the storm's end {storm_end_usage:?}; after {after:?} (limit {limit:?})");
    assert!(kills >= 20, "the storm killed too little: {kills}");
    assert!(tally.ok.load(Ordering::Relaxed) > 100, "too few calls succeeded");
    assert!(after.fds <= limit.fds, "fd leak: baseline {baseline:?}, after {after:?}");
    assert!(after.threads <= limit.threads, "thread leak: baseline {baseline:?}, after {after:?}");
    assert!(after.rss_kb <= limit.rss_kb, "memory leak: baseline {baseline:?}, after {after:?}");
}
