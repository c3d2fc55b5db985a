//! The control API (docs/control-api.md): a Unix socket speaking NDJSON JSON-RPC to hosts and `pluginctl`.
//!
//! - [`socket`]: binding (stale files, a live daemon, mode 0600) and peer credentials.
//! - [`connection`]: one task per client: read requests, run them concurrently, write answers.
//! - [`handlers`]: one function per method, dispatched by one exhaustive match.
//! - [`cancel`]: a host's `$/cancel` and `$/progress` for its own requests.
//! - [`websocket`]: a `--listen` WebSocket served as one more control connection.
//! - [`frame_gate`]: what WebSocket frames may make plugind allocate before they arrive, bounded.

pub mod cancel;
pub mod connection;
pub mod frame_gate;
pub mod handlers;
pub mod socket;
pub mod websocket;

use crate::Daemon;
use std::sync::Arc;
use tokio::net::UnixListener;

/// Most control connections open at once: a quarter of plugind's open-file limit, at least 16
/// and at most 4096. Each costs plugind a descriptor, and its plugins and listeners need theirs:
/// a local client holding tens of thousands of idle connections had plugind unable to spawn a
/// plugin or answer anyone.
fn max_connections() -> usize {
    crate::transport::open_files_share(4, 16, 4096)
}

/// Accepts clients until the task is aborted.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let me = nix::unistd::geteuid().as_raw();
    let max = max_connections();
    let free = Arc::new(tokio::sync::Semaphore::new(max));
    let mut refusals = crate::time::Throttle::new(std::time::Duration::from_secs(1));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let pid = match stream.peer_cred() {
            Ok(cred) if (cred.uid() == me || cred.uid() == 0) && is_plugin_peer(&daemon, cred.pid()) => {
                // Plugins run as plugind's user, but must not steer plugind (stop or call other
                // plugins) behind the registry's back: their processes are refused, without an
                // answer. (The socket is hidden from them too; this holds where it is not.)
                tracing::warn!(pid = ?cred.pid(), "refused control connection from a plugin process");
                continue;
            }
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => cred.pid(),
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused control connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!("cannot read control peer credentials: {e}; refused");
                continue;
            }
        };
        let Ok(place) = free.clone().try_acquire_owned() else {
            // Told why (if its socket takes the line at once), then closed.
            let e = plugind_protocol::jsonrpc::RpcError::new(
                plugind_protocol::codes::OVERLOADED,
                format!("plugind has {max} control connections open, the most it takes: close some"),
            );
            let _ = stream.try_write(&plugind_protocol::jsonrpc::error_line(plugind_protocol::jsonrpc::null_id(), &e));
            refusals.hold();
            let refused = refusals.due(std::time::Instant::now());
            if refused > 0 {
                tracing::warn!(max_connections = max, refused, "control connections refused: too many open");
            }
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            connection::run(daemon, stream, pid).await;
            drop(place);
        });
    }
}

/// Whether the peer `pid` is a plugin's process, or one it started (setsid'd or not, during
/// `init` or while retiring): by its cgroup, which a plugin cannot leave, where instances have
/// one; else by the instances plugind routes to and their sessions and ancestry. A peer whose
/// pid is unknown or already gone is treated as a plugin: it cannot be told apart.
fn is_plugin_peer(daemon: &Daemon, pid: Option<i32>) -> bool {
    let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0) else { return true };
    if crate::sandbox::host().cgroups.any() {
        return crate::sandbox::cgroup::in_instance_cgroup(pid).unwrap_or(true);
    }
    daemon.is_plugin_process(pid)
}
