//! The control API (SPEC §4): a Unix socket speaking NDJSON JSON-RPC to hosts and `pluginctl`.
//!
//! - [`socket`]: binding (stale files, a live daemon, mode 0600) and peer credentials.
//! - [`connection`]: one task per client: read requests, run them concurrently, write answers.
//! - [`handlers`]: one function per method, dispatched by one exhaustive match.

pub mod connection;
pub mod handlers;
pub mod socket;

use crate::Daemon;
use std::sync::Arc;
use tokio::net::UnixListener;

/// Accepts clients until the task is aborted.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred)
                if (cred.uid() == me || cred.uid() == 0)
                    && cred.pid().is_some_and(|p| daemon.is_plugin_process(p as u32)) =>
            {
                // Plugins run as plugind's user, but must not steer plugind (stop or call other
                // plugins) behind the registry's back: their processes are refused.
                tracing::warn!(pid = ?cred.pid(), "refused control connection from a plugin process");
                continue;
            }
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused control connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!("cannot read control peer credentials: {e}; refused");
                continue;
            }
        }
        tokio::spawn(connection::run(daemon.clone(), stream));
    }
}
