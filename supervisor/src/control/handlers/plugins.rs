//! `plugins.list`, `plugins.get`, `plugins.start`, `plugins.stop`, `plugins.restart`.

use crate::plugin::entry::Command;
use crate::plugin::PluginEntry;
use crate::router::unknown_plugin;
use crate::Daemon;
use plugind_protocol::codes;
use plugind_protocol::control::NameParams;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use serde_json::value::RawValue;
use std::sync::Arc;

fn entry(daemon: &Daemon, p: &NameParams) -> Result<Arc<PluginEntry>, RpcError> {
    daemon.plugin(&p.name).ok_or_else(|| unknown_plugin(&p.name))
}

/// Every plugin's status object.
pub fn list(daemon: &Daemon) -> Result<Box<RawValue>, RpcError> {
    let all: Vec<_> = daemon.plugins().iter().map(|p| daemon.status_of(p)).collect();
    Ok(to_raw(&all))
}

/// One plugin's status object, with the sandbox's guarantees on this host.
pub fn get(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    let e = entry(daemon, &p)?;
    let mut status = daemon.status_of(&e);
    if let Some(m) = e.status().manifest.clone() {
        status.sandbox = crate::sandbox::guarantees(&m);
    }
    Ok(to_raw(&status))
}

async fn act(
    daemon: &Daemon,
    p: NameParams,
    make: fn(tokio::sync::oneshot::Sender<()>) -> Command,
) -> Result<Box<RawValue>, RpcError> {
    let e = entry(daemon, &p)?;
    if !e.command(make).await {
        let st = e.status();
        return Err(RpcError::with_data(
            codes::INVALID_MANIFEST,
            format!(
                "plugin {} cannot be started: {}",
                e.name,
                st.last_error.clone().unwrap_or_else(|| "invalid manifest".into())
            ),
            serde_json::json!({ "plugin": &*e.name, "state": st.state.as_str() }),
        ));
    }
    Ok(to_raw(&daemon.status_of(&e)))
}

/// Starts a plugin; answers once it is running (or has failed).
pub async fn start(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    act(daemon, p, Command::Start).await
}

/// Stops a plugin; answers once its processes are gone.
pub async fn stop(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    act(daemon, p, Command::Stop).await
}

/// Stops and starts a plugin, clearing its restart count window.
pub async fn restart(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    act(daemon, p, Command::Restart).await
}
