//! (i) What params validation costs: sequential `execute` of echo-rust's `echo` on a plugin whose
//! manifest gives `echo` a small `params` schema (3 properties), against the same call on an
//! identical plugin without one, alternating in the same run. The target is an overhead of at
//! most 10 % of the unvalidated `execute`'s p50 (`docs/benchmarks.md`).
//!
//! The schema is added to the second plugin's manifest after plugind started (the shared
//! [`Daemon`] writes plain manifests) and picked up by plugind's own hot reload; the benchmark
//! waits until `plugins.get` shows it, and checks that a mismatching call is refused before it
//! measures anything.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::report::{Overhead, Samples};
use crate::wire::{LineConn, Request, Timing, PAYLOAD};
use anyhow::{bail, Context as _};
use serde_json::json;
use std::time::{Duration, Instant};

/// The validation overhead allowed, as a fraction of the unvalidated p50.
const TARGET: f64 = 0.10;

/// Runs (i) on its own plugind.
pub fn run(rt: &tokio::runtime::Runtime, bins: &Bins, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let defs = [PluginDef::plain("plain"), PluginDef::plain("typed")];
    let mut d = Daemon::start(bins, &defs)?;
    rt.block_on(d.wait_running(defs.len() as u64, Duration::from_secs(60)))?;
    let mut conn = LineConn::unix(&d.socket)?;
    add_schema(&d, &mut conn).with_context(|| d.log_tail())?;

    let (plain, typed) = (Request::echo("plain"), Request::echo("typed"));
    conn.check(&plain, PAYLOAD)?;
    conn.check(&typed, PAYLOAD)?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.extend(conn.latencies(&plain, t)?);
        with.extend(conn.latencies(&typed, t)?);
    }
    drop(conn);
    rt.block_on(d.stop())?;

    let report = Overhead {
        tag: "i.catalog",
        what: "validation",
        base_line: "i.execute_no_schema.p50",
        with_line: "i.execute_schema.p50",
        floor_name: "no schema",
        target: TARGET,
    };
    report.print(placement, &Samples::new(without), &Samples::new(with));
    Ok(())
}

/// Gives `typed`'s `echo` a params schema matching [`PAYLOAD`] and waits until plugind serves
/// it: its own file watcher reloads the plugin; `plugins.reload` is the fallback where the
/// watcher stays silent.
fn add_schema(d: &Daemon, conn: &mut LineConn) -> anyhow::Result<()> {
    let path = d.plugins_dir().join("typed").join("plugin.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    m["methods"] = json!({ "echo": { "description": "Echoes its params.", "params": {
        "type": "object",
        "required": ["msg", "n"],
        "properties": { "msg": { "type": "string" }, "n": { "type": "integer" }, "tag": { "type": "string" } }
    }}});
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    let get = Request::new("plugins.get", r#"{"name":"typed"}"#);
    let started = Instant::now();
    let mut asked = false;
    loop {
        let s = conn.result(&get)?;
        if s["state"] == "running" && s["methods"]["echo"]["params"].is_object() {
            break;
        }
        if !asked && started.elapsed() > Duration::from_secs(5) {
            conn.result(&Request::new("plugins.reload", "{}"))?;
            asked = true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("plugind did not take up the schema: {s}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let bad = Request::new("execute", r#"{"plugin":"typed","method":"echo","params":{"msg":1,"n":"x"}}"#);
    match conn.call(&bad) {
        Err(e) if format!("{e:#}").contains("-32602") => Ok(()),
        Err(e) => Err(e.context("a mismatching call: expected -32602")),
        Ok(reply) => bail!("a mismatching call was not refused: {}", String::from_utf8_lossy(reply)),
    }
}
