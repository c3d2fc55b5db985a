//! `supervisor.status`, `supervisor.shutdown`.

use crate::Daemon;
use plugind_protocol::control::SupervisorStatus;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use serde_json::value::RawValue;

/// Version, pid, uptime and counts.
pub fn status(daemon: &Daemon) -> Result<Box<RawValue>, RpcError> {
    Ok(to_raw(&SupervisorStatus {
        version: crate::VERSION.to_owned(),
        pid: std::process::id(),
        uptime_ms: daemon.started.elapsed().as_millis() as u64,
        plugins: daemon.counts(),
    }))
}

/// Answers `null`, then the daemon stops gracefully.
pub fn shutdown(daemon: &Daemon) -> Result<Box<RawValue>, RpcError> {
    tracing::info!("shutdown requested over the control socket");
    daemon.shutdown.cancel();
    Ok(to_raw(&()))
}
