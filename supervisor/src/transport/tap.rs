//! Wire taps for `plugins.trace`: a copy of every message to and from one plugin, made only while
//! somebody is watching (one atomic load per message otherwise).

use plugind_protocol::control::TraceMessage;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Direction of a traced message, as seen from plugind.
#[derive(Debug, Clone, Copy)]
pub enum Dir {
    /// Plugin → plugind.
    In,
    /// plugind → plugin.
    Out,
}

/// The tap of one plugin (shared by all its instances, across restarts).
pub struct Tap {
    plugin: Arc<str>,
    watchers: AtomicUsize,
    /// Made by the first watcher: a broadcast channel allocates all its slots up front (about
    /// 128 KiB for 1024 messages), which for 1000 plugins nobody traces would be 128 MiB.
    tx: OnceLock<broadcast::Sender<TraceMessage>>,
}

/// Messages a watcher may fall behind by before it loses the oldest.
const TRACE_BACKLOG: usize = 1024;

/// A watcher of a [`Tap`]; the tap goes quiet again when the last one is dropped.
pub struct Watch {
    tap: Arc<Tap>,
    /// Traced messages; lagging watchers lose the oldest.
    pub rx: broadcast::Receiver<TraceMessage>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// A quiet tap for `plugin`.
    pub fn new(plugin: &str) -> Arc<Self> {
        Arc::new(Tap { plugin: plugin.into(), watchers: AtomicUsize::new(0), tx: OnceLock::new() })
    }

    /// Starts watching.
    pub fn watch(self: &Arc<Self>) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let rx = self.tx.get_or_init(|| broadcast::channel(TRACE_BACKLOG).0).subscribe();
        Watch { tap: self.clone(), rx }
    }

    /// Whether somebody watches (a line in parts need not be put together otherwise).
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Records one line if somebody watches.
    pub fn record(&self, dir: Dir, line: &[u8]) {
        if self.watchers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(tx) = self.tx.get() else { return };
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let message =
            serde_json::from_slice(line).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(line).into_owned()));
        let dir = match dir {
            Dir::In => "in",
            Dir::Out => "out",
        };
        let _ = tx.send(TraceMessage {
            ts: crate::time::now_rfc3339(),
            plugin: self.plugin.to_string(),
            dir: dir.to_owned(),
            message,
        });
    }
}
