//! (f) Hot reload: a plugin's entry point rewritten → the first answer from the new instance,
//! p50 and max over N reloads (debounce included). The plugin is a plain Python script whose
//! answers carry a generation number, so the first answer of the new code is recognisable.

use crate::daemon::{Bins, Daemon};
use crate::report::{self, Samples};
use anyhow::bail;
use plugind_client::Client;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

fn source(gen: usize) -> String {
    format!(
        r#"import json, sys
GEN = {gen}
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    r = {{"gen": GEN}} if m["method"] == "execute" else (None if m["method"] == "teardown" else {{}})
    sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": m["id"], "result": r}}) + "\n"); sys.stdout.flush()
"#
    )
}

/// Measures `reloads` hot reloads and prints `f.reload.p50` and `f.reload.max`.
pub fn run(rt: &Runtime, bins: &Bins, placement: &str, reloads: usize) -> anyhow::Result<()> {
    let mut d = Daemon::start(bins, &[])?;
    let dir = d.plugins_dir().join("hot");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("plugin.json"), r#"{"name": "hot", "version": "1.0.0", "main": "main.py"}"#)?;
    std::fs::write(dir.join("main.py"), source(0))?;
    let samples = rt.block_on(async {
        d.wait_running(0, Duration::from_secs(30)).await?;
        let client = Client::connect(&d.socket).await?;
        client.call("plugins.reload", &json!({})).await?;
        let mut samples = Vec::with_capacity(reloads);
        for gen in 1..=reloads {
            // Let the previous generation settle, as separate deploys would.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let written = Instant::now();
            std::fs::write(dir.join("main.py"), source(gen))?;
            loop {
                let r = client.call("execute", &json!({"plugin": "hot", "method": "gen"})).await;
                if r.as_ref().ok().and_then(|v| v["gen"].as_u64()) == Some(gen as u64) {
                    samples.push(written.elapsed());
                    break;
                }
                if written.elapsed() > Duration::from_secs(10) {
                    bail!("reload {gen} not serving after 10 s ({r:?}){}", d.log_tail());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        anyhow::Ok(samples)
    })?;
    rt.block_on(d.stop())?;
    let s = Samples::new(samples);
    report::line("f.reload.p50", placement, s.pct_ms(50.0), "ms", None);
    report::line("f.reload.max", placement, s.pct_ms(100.0), "ms", None);
    Ok(())
}
