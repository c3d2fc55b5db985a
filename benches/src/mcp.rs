//! (m) An MCP server supervised by plugind (`"protocol": "mcp"`), called through plugind's
//! `execute`, against the same server called directly by the MCP SDK's own client (the floor).
//!
//! The server is the Python peer's `server.py` (the MCP Python SDK, one `echo` tool), installed
//! by [`crate::peers`] into `target/bench-peers/python`. Through plugind, the bench's own client
//! sends `execute { plugin: "mcp-echo", method: "echo", params: {"msg":"hello","n":42} }`;
//! plugind's MCP adapter turns it into `tools/call` and the `CallToolResult` comes back as the
//! result. The floor is the peer's `client.py`: `ClientSession.call_tool` over `stdio_client`,
//! no plugind in between. Lines: `m.mcp.p50` (sequential calls) and `m.mcp.tput64` (64 in
//! flight), each with the SDK client's figure as floor; the ratio is what plugind's supervision
//! (socket hop, adapter, sandbox) costs or saves against a Python MCP host. Skipped when the peer
//! is not installed (`--smoke` installs nothing; a full run installs it first).

use crate::daemon::{Bins, Daemon};
use crate::report::{line, skipped, Floor, Samples};
use crate::wire::{LineConn, Request, Timing, PAYLOAD};
use anyhow::{bail, Context as _};
use plugind_client::Client;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The plugin's name under plugind.
const PLUGIN: &str = "mcp-echo";

/// Runs (m) in `placement`, printing its lines (or one `skipped` line).
pub fn run(rt: &tokio::runtime::Runtime, bins: &Bins, placement: &str, t: Timing) -> anyhow::Result<()> {
    let bin_dir = bins.plugind.parent().context("plugind has a directory")?;
    let peer = bin_dir.parent().unwrap_or(bin_dir).join("bench-peers/python");
    let python = peer.join("venv/bin/python");
    if !python.is_file() || !peer.join(".installed").is_file() {
        skipped("m.mcp", placement, "the MCP Python SDK peer is not installed (a full `make bench` installs it)");
        return Ok(());
    }
    let (p50, tput) = through_plugind(rt, bins, &peer, &python, t)?;
    let floor = direct(&peer, &python, t)?;
    line("m.mcp.p50", placement, p50, "us", Some(Floor { value: floor.0, name: "mcp-py direct" }));
    line("m.mcp.tput64", placement, tput, "calls/s", Some(Floor { value: floor.1, name: "mcp-py direct" }));
    Ok(())
}

/// p50 (µs) and calls/s with 64 in flight of `execute` through plugind.
fn through_plugind(
    rt: &tokio::runtime::Runtime,
    bins: &Bins,
    peer: &Path,
    python: &Path,
    t: Timing,
) -> anyhow::Result<(f64, f64)> {
    let mut d = Daemon::start(bins, &[])?;
    let dir = d.plugins_dir().join(PLUGIN);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(peer.join("server.py"), dir.join("server.py"))?;
    let manifest = json!({
        "name": PLUGIN, "version": "1.0.0", "protocol": "mcp", "main": "server.py",
        "command": [python, "server.py"],
        // The SDK imports for a while; 64 calls in flight is the window measured.
        "startup_timeout_ms": 60000, "limits": { "max_inflight": 256 },
    });
    std::fs::write(dir.join("plugin.json"), serde_json::to_vec_pretty(&manifest)?)?;
    rt.block_on(async {
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match Client::connect(&d.socket).await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > give_up => bail!("{e}{}", d.log_tail()),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        client.call("plugins.reload", &json!({})).await?;
        d.wait_running(1, Duration::from_secs(60)).await.map(drop)
    })?;
    let req = Request::echo(PLUGIN);
    let mut conn = LineConn::unix(&d.socket)?;
    let first = conn.result(&req)?;
    let text = first["content"][0]["text"].as_str().unwrap_or_default();
    if serde_json::from_str::<Value>(text).ok() != serde_json::from_str::<Value>(PAYLOAD).ok() {
        bail!("echo through plugind returned {first}");
    }
    let p50 = Samples::new(conn.latencies(&req, t)?).pct_us(50.0);
    let tput = conn.throughput(&req, 64, t)?;
    drop(conn);
    rt.block_on(d.stop())?;
    Ok((p50, tput))
}

/// The SDK client's own p50 (µs) and calls/s with 64 in flight, calling the server directly.
fn direct(peer: &Path, python: &Path, t: Timing) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(python)
        .arg("client.py")
        .args(["--seconds", &t.run.as_secs_f64().to_string()])
        .current_dir(peer)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("run the MCP SDK client")?;
    if !out.status.success() {
        bail!("client.py failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let v: Value = serde_json::from_str(last).with_context(|| format!("client.py printed {last:?}"))?;
    match (v["p50_us"].as_f64(), v["tput64"].as_f64()) {
        (Some(p50), Some(tput)) if p50 > 0.0 && tput > 0.0 => Ok((p50, tput)),
        _ => bail!("client.py printed {last:?}"),
    }
}
