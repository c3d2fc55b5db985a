//! `plugins.list`, `plugins.get`, `plugins.start`, `plugins.stop`, `plugins.restart`.
//!
//! Start, stop and restart answer once the plugin has settled (the actor's machine says when):
//! the answer is the status object then, whatever the state (`pluginctl` turns `failed`,
//! `blocked` and `invalid` into exit code 1). A graceful restart whose new instances fail
//! answers an error naming why; the old instances keep serving.

use crate::plugin::entry::{Answer, Command, Reply};
use crate::plugin::machine::Outcome;
use crate::plugin::PluginEntry;
use crate::router::unknown_plugin;
use crate::Daemon;
use plugind_protocol::codes;
use plugind_protocol::control::{NameParams, RestartParams};
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use serde_json::value::RawValue;
use std::sync::Arc;

fn entry(daemon: &Daemon, name: &str) -> Result<Arc<PluginEntry>, RpcError> {
    daemon.plugin(name).ok_or_else(|| unknown_plugin(name))
}

/// Every plugin's status object.
pub fn list(daemon: &Daemon) -> Result<Box<RawValue>, RpcError> {
    let all: Vec<_> = daemon.plugins().iter().map(|p| daemon.status_of(p)).collect();
    Ok(to_raw(&all))
}

/// One plugin's status object, with the sandbox's guarantees on this host, its protocol and its
/// method catalog.
pub fn get(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    let e = entry(daemon, &p.name)?;
    let mut status = daemon.status_of(&e);
    if let Some(m) = e.status().manifest.clone() {
        status.sandbox = crate::sandbox::guarantees(&m);
        // The serving instance's catalog (manifest and `register` merged); the manifest's alone
        // while none serves.
        let serving = e.routes().first().and_then(|i| i.catalog().map(|c| c.specs()));
        status.methods = Some(serving.unwrap_or_else(|| m.methods.clone()));
    }
    Ok(to_raw(&status))
}

async fn act(daemon: &Daemon, name: &str, make: impl FnOnce(Reply) -> Command) -> Result<Box<RawValue>, RpcError> {
    let e = entry(daemon, name)?;
    let stopping = || {
        RpcError::with_data(
            codes::PLUGIN_UNAVAILABLE,
            format!("plugin {name}: {}", crate::STOPPING),
            serde_json::json!({ "plugin": name, "state": "stopping" }),
        )
    };
    if daemon.is_stopping() {
        return Err(stopping());
    }
    let answer = e.request(make).await;
    if daemon.is_stopping() && matches!(answer, None | Some(Answer { outcome: Outcome::Failed(_), .. })) {
        // Its actor ended with plugind's stop while the command waited.
        return Err(stopping());
    }
    if e.is_removed() {
        // Removed while the command waited (a rescan dropped it): as for any unknown plugin.
        let mut err = unknown_plugin(name);
        err.message = format!("{}: it was removed while the command waited", err.message);
        return Err(err);
    }
    match answer {
        Some(Answer { outcome, status }) => {
            // `request` asks for the status the command left; it is always there.
            let status = status.unwrap_or_else(|| e.snapshot());
            match outcome {
                Outcome::Settled => Ok(to_raw(&daemon.status_with_details(&e, status))),
                Outcome::Failed(why) => Err(RpcError::with_data(
                    codes::INTERNAL_ERROR,
                    format!("plugin {}: {why}", e.name),
                    serde_json::json!({ "plugin": &*e.name, "state": status.state, "last_error": status.last_error }),
                )),
            }
        }
        None if e.has_actor() => Err(RpcError::with_data(
            codes::INTERNAL_ERROR,
            format!("plugin {}: its actor has ended (a bug in plugind; see its log)", e.name),
            serde_json::json!({ "plugin": &*e.name }),
        )),
        None => {
            let st = e.status();
            Err(RpcError::with_data(
                codes::INVALID_MANIFEST,
                format!(
                    "plugin {} cannot be started: {}",
                    e.name,
                    st.last_error.clone().unwrap_or_else(|| "invalid manifest".into())
                ),
                serde_json::json!({ "plugin": &*e.name, "state": st.state.as_str() }),
            ))
        }
    }
}

/// Starts a plugin; answers once it has settled (running, failed, blocked).
pub async fn start(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    act(daemon, &p.name, Command::Start).await
}

/// Stops a plugin; answers once its processes are gone. A plugin that cannot run (an invalid
/// manifest) has none: stopping it succeeds and changes nothing.
pub async fn stop(daemon: &Daemon, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    let e = entry(daemon, &p.name)?;
    if !e.has_actor() {
        return Ok(to_raw(&daemon.status_of(&e)));
    }
    act(daemon, &p.name, Command::Stop).await
}

/// Restarts a plugin, clearing its restart count window: gracefully (new instances beside the
/// old, no call fails) unless `hard` (stop, then start).
pub async fn restart(daemon: &Daemon, p: RestartParams) -> Result<Box<RawValue>, RpcError> {
    act(daemon, &p.name, |reply| Command::Restart { hard: p.hard, reply }).await
}
