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

/// A traced line longer than this is shown as its first bytes, as text with a marker: the
/// backlog holds [`TRACE_BACKLOG`] messages per tap, and a plugin writing 15 MB `log` lines grew
/// plugind by gigabytes in seconds under a `pluginctl trace` (its log cut them; the trace did
/// not).
pub const TRACE_LINE_BYTES: usize = 16 * 1024;

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
        let message = if line.len() > TRACE_LINE_BYTES {
            let head = String::from_utf8_lossy(&line[..TRACE_LINE_BYTES]);
            Value::String(format!("{head}…[truncated: {} bytes in all]", line.len()))
        } else {
            serde_json::from_slice(line).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(line).into_owned()))
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A line over [`TRACE_LINE_BYTES`] is traced as its head, as text; a short one as JSON.
    #[test]
    fn long_lines_are_traced_cut() {
        let tap = Tap::new("p");
        let mut watch = tap.watch();
        let long = format!(r#"{{"jsonrpc":"2.0","method":"log","params":{{"message":"{}"}}}}"#, "x".repeat(1 << 20));
        tap.record(Dir::In, long.as_bytes());
        tap.record(Dir::In, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let cut = watch.rx.try_recv().unwrap().message;
        let text = cut.as_str().unwrap();
        assert!(text.starts_with(r#"{"jsonrpc":"2.0","method":"log""#), "{}", &text[..80]);
        assert!(
            text.len() < TRACE_LINE_BYTES + 100 && text.ends_with(&format!("[truncated: {} bytes in all]", long.len()))
        );
        assert_eq!(watch.rx.try_recv().unwrap().message["id"], 1);
    }
}
