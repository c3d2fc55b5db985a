//! `logs.tail`, `events.subscribe`, `plugins.trace`: looking at plugins without touching them.
//! The streaming ones answer at once, then send notifications on the same connection until the
//! client goes away.

use crate::control::connection::Conn;
use crate::router::unknown_plugin;
use crate::Daemon;
use plugind_protocol::control::{self as c, LogsTailParams, LogsTailResult, NameParams};
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Default number of lines for `logs.tail`.
const DEFAULT_LINES: usize = 100;

/// Recent log lines, of one plugin or of all (merged by time).
pub fn logs_tail(daemon: &Daemon, conn: &Conn, p: LogsTailParams) -> Result<Box<RawValue>, RpcError> {
    let n = p.lines.unwrap_or(DEFAULT_LINES);
    let mut lines = match &p.plugin {
        Some(name) => daemon.plugin(name).ok_or_else(|| unknown_plugin(name))?.log.tail(n),
        None => daemon.plugins().iter().flat_map(|e| e.log.tail(n)).collect(),
    };
    lines.sort_by(|a, b| a.ts.cmp(&b.ts));
    let lines = lines.split_off(lines.len().saturating_sub(n));
    if p.follow {
        let filter = p.plugin.clone();
        let keep = move |l: &plugind_protocol::control::LogLine| filter.as_ref().is_none_or(|f| *f == l.plugin);
        forward(conn, daemon.follow_logs(), c::LOG_NOTIFICATION, keep, |_| None);
    }
    Ok(to_raw(&LogsTailResult { lines }))
}

/// Lifecycle events from now on, as `event` notifications.
pub fn events_subscribe(daemon: &Daemon, conn: &Conn) -> Result<Box<RawValue>, RpcError> {
    // A subscriber that falls behind is told how much it missed (audit 19: 13,480 of 20,000
    // events, a restart's among them, were dropped without a word).
    let lagged = |missed: u64| {
        Some(plugind_protocol::control::Event {
            ts: crate::time::now_rfc3339(),
            plugin: String::new(),
            kind: "lagged".to_owned(),
            state: None,
            detail: format!(
                "{missed} events were dropped: this subscriber fell more than 1024 behind; \
                 plugins.list has the states now"
            ),
            trace_id: None,
        })
    };
    forward(conn, daemon.subscribe_events(), c::EVENT_NOTIFICATION, |_| true, lagged);
    Ok(to_raw(&()))
}

/// Every wire message of one plugin from now on, as `trace` notifications.
pub fn plugins_trace(daemon: &Daemon, conn: &Conn, p: NameParams) -> Result<Box<RawValue>, RpcError> {
    let entry = daemon.plugin(&p.name).ok_or_else(|| unknown_plugin(&p.name))?;
    let watch = entry.log.tap.watch();
    let (peer, closed, running) = (conn.peer.clone(), conn.closed.clone(), conn.stream_started());
    tokio::spawn(async move {
        let _running = running;
        let mut watch = watch;
        loop {
            tokio::select! {
                _ = closed.cancelled() => break,
                m = watch.rx.recv() => match m {
                    Ok(m) => if !peer.notify_wait(c::TRACE_NOTIFICATION, &m).await { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    Ok(to_raw(&()))
}

/// Sends what `rx` yields (and `keep` accepts) as notifications until the client goes away;
/// when the client fell so far behind that messages were dropped, what `lagged` makes of their
/// number, if anything.
fn forward<T: Clone + Serialize + Send + Sync + 'static>(
    conn: &Conn,
    mut rx: broadcast::Receiver<T>,
    method: &'static str,
    keep: impl Fn(&T) -> bool + Send + 'static,
    lagged: impl Fn(u64) -> Option<T> + Send + 'static,
) {
    let (peer, closed, running): (Arc<_>, _, _) = (conn.peer.clone(), conn.closed.clone(), conn.stream_started());
    tokio::spawn(async move {
        let _running = running;
        loop {
            tokio::select! {
                _ = closed.cancelled() => break,
                m = rx.recv() => match m {
                    Ok(m) if keep(&m) => if !peer.notify_wait(method, &m).await { break },
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => match lagged(n) {
                        Some(m) => if !peer.notify_wait(method, &m).await { break },
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
}
