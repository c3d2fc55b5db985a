//! (k) The control API over plugind's `--listen` WebSocket, against the same calls over its
//! control socket: `execute` of the echo plugin through `plugind_client::Client` both ways, so
//! that the difference is the WebSocket's alone (frames, the bridge's pipes on each side, TCP
//! on loopback). Lines: `k.listen.p50` (sequential calls, µs) and `k.listen.tput64` (calls/s
//! with 64 in flight; the median of the rounds), each against the socket's figure taken in the
//! same rounds.

use crate::daemon::{Bins, Daemon, PluginDef};
use crate::report::{line, Floor, Samples};
use crate::wire::Timing;
use futures::stream::{FuturesUnordered, StreamExt};
use plugind_client::{CallOptions, Client};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const TOKEN: &str = "plugind-bench-listen";

/// Measures both transports for `rounds` alternating rounds and prints the two lines.
pub fn run(rt: &Runtime, bins: &Bins, placement: &str, t: Timing, rounds: usize) -> anyhow::Result<()> {
    let secrets = tempfile::Builder::new().prefix("plugind-bench-token").tempdir()?;
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let token_arg = token_file.to_string_lossy().into_owned();
    let args = ["--listen", "127.0.0.1:0", "--token-file", token_arg.as_str()];
    let mut d = Daemon::start_with(bins, &[PluginDef::plain("echo")], &[], &args)?;
    let (mut socket, mut ws) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    rt.block_on(async {
        d.wait_running(1, Duration::from_secs(60)).await?;
        let url = format!("http://{}", listen_addr(&d)?);
        let on_socket = Client::connect(&d.socket).await?;
        let on_ws = Client::connect_url(&url, Some(TOKEN.to_owned())).await?;
        for _ in 0..rounds {
            for (client, into) in [(&on_socket, &mut socket), (&on_ws, &mut ws)] {
                into.0.extend(sequential(client, t).await?);
                into.1.push(in_flight(client, 64, t).await?);
            }
        }
        anyhow::Ok(())
    })?;
    rt.block_on(d.stop())?;
    let socket_p50 = Samples::new(socket.0).pct_us(50.0);
    let floor = |value| Some(Floor { value, name: "socket" });
    line("k.listen.p50", placement, Samples::new(ws.0).pct_us(50.0), "us", floor(socket_p50));
    line("k.listen.tput64", placement, median(ws.1), "calls/s", floor(median(socket.1)));
    Ok(())
}

/// The median of the rounds' throughputs.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The `--listen` address plugind logged.
fn listen_addr(d: &Daemon) -> anyhow::Result<String> {
    d.log()
        .lines()
        .find(|l| l.contains("control API over HTTP"))
        .and_then(|l| l.split("addr=").nth(1)?.split_whitespace().next().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("plugind did not log its --listen address{}", d.log_tail()))
}

async fn echo(client: &Client) -> anyhow::Result<()> {
    let answer = client.execute("echo", "echo", json!({"n": 1}), CallOptions::new()).await?;
    anyhow::ensure!(answer == json!({"n": 1}), "echo answered {answer}");
    Ok(())
}

/// Latencies of calls made one after another for `t.run` (after `t.warmup`).
async fn sequential(client: &Client, t: Timing) -> anyhow::Result<Vec<Duration>> {
    let warm = Instant::now();
    while warm.elapsed() < t.warmup {
        echo(client).await?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < t.run {
        let call = Instant::now();
        echo(client).await?;
        samples.push(call.elapsed());
    }
    Ok(samples)
}

/// Calls/s with `depth` calls in flight for `t.run`.
async fn in_flight(client: &Client, depth: usize, t: Timing) -> anyhow::Result<f64> {
    let mut calls = FuturesUnordered::new();
    for _ in 0..depth {
        calls.push(echo(client));
    }
    let start = Instant::now();
    let mut done = 0u64;
    while let Some(r) = calls.next().await {
        r?;
        if start.elapsed() >= t.warmup {
            done += 1;
        }
        if start.elapsed() < t.warmup + t.run {
            calls.push(echo(client));
        }
    }
    Ok(done as f64 / (start.elapsed().as_secs_f64() - t.warmup.as_secs_f64()).max(1e-9))
}
