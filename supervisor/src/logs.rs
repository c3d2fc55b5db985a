//! Per-plugin log: stderr lines, `log` notifications and plugind's own events about the plugin.
//!
//! Each line goes to `tracing` (with the plugin's name as a field) and into a bounded ring, so
//! `logs.tail` and the status's `stderr_tail` can show recent lines without unbounded memory.

use crate::transport::tap::Tap;
use plugind_protocol::control::LogLine;
use plugind_protocol::methods::LogLevel;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Lines of stderr kept for the status object.
pub const STDERR_TAIL: usize = 50;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The plugin's stderr.
    Stderr,
    /// A `log` notification.
    Log,
    /// plugind's own event about the plugin.
    Plugind,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stderr => "stderr",
            Stream::Log => "log",
            Stream::Plugind => "plugind",
        }
    }
}

struct Rings {
    lines: VecDeque<LogLine>,
    stderr: VecDeque<String>,
    /// Token bucket for stderr lines: a flooding plugin cannot flood plugind's log too.
    tokens: f64,
    refilled: std::time::Instant,
    dropped: u64,
}

/// Stderr lines per second kept, sustained.
pub const STDERR_RATE: f64 = 200.0;
/// Stderr lines kept in a burst.
pub const STDERR_BURST: f64 = 1000.0;

/// One plugin's log.
pub struct PluginLog {
    /// The plugin's wire tap (`plugins.trace`), here because the log lives as long as the plugin.
    pub tap: Arc<Tap>,
    plugin: String,
    capacity: usize,
    rings: Mutex<Rings>,
    follow: broadcast::Sender<LogLine>,
}

impl PluginLog {
    /// A log for `plugin` keeping `capacity` lines.
    pub fn new(plugin: &str, capacity: usize, follow: broadcast::Sender<LogLine>) -> Self {
        PluginLog {
            tap: Tap::new(plugin),
            plugin: plugin.to_owned(),
            capacity: capacity.max(STDERR_TAIL),
            rings: Mutex::new(Rings {
                lines: VecDeque::new(),
                stderr: VecDeque::new(),
                tokens: STDERR_BURST,
                refilled: std::time::Instant::now(),
                dropped: 0,
            }),
            follow,
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one line.
    pub fn push(&self, stream: Stream, level: LogLevel, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Error => tracing::error!(plugin, stream = stream.as_str(), "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, stream = stream.as_str(), "{message}"),
            LogLevel::Info => tracing::info!(plugin, stream = stream.as_str(), "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, stream = stream.as_str(), "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, stream = stream.as_str(), "{message}"),
        }
        let line = LogLine {
            ts: crate::time::now_rfc3339(),
            plugin: self.plugin.clone(),
            stream: stream.as_str().to_owned(),
            level: level.as_str().to_owned(),
            message,
        };
        let mut r = self.rings();
        if stream == Stream::Stderr {
            if r.stderr.len() == STDERR_TAIL {
                r.stderr.pop_front();
            }
            r.stderr.push_back(line.message.clone());
        }
        if r.lines.len() == self.capacity {
            r.lines.pop_front();
        }
        r.lines.push_back(line.clone());
        drop(r);
        let _ = self.follow.send(line);
    }

    /// A stderr line, subject to the rate limit: lines over it are counted and reported as
    /// one "N lines dropped" line once the rate allows again.
    pub fn stderr(&self, message: String) {
        let dropped = {
            let mut r = self.rings();
            let now = std::time::Instant::now();
            r.tokens = (r.tokens + now.duration_since(r.refilled).as_secs_f64() * STDERR_RATE).min(STDERR_BURST);
            r.refilled = now;
            if r.tokens < 1.0 {
                r.dropped += 1;
                return;
            }
            r.tokens -= 1.0;
            std::mem::take(&mut r.dropped)
        };
        if dropped > 0 {
            self.push(
                Stream::Plugind,
                LogLevel::Warn,
                format!("{dropped} stderr lines dropped: over {STDERR_RATE} lines/s (burst {STDERR_BURST})"),
            );
        }
        self.push(Stream::Stderr, LogLevel::Info, message);
    }

    /// plugind's own event about this plugin.
    pub fn plugind(&self, message: String) {
        self.push(Stream::Plugind, LogLevel::Info, message);
    }

    /// plugind's own warning about this plugin.
    pub fn warn(&self, message: String) {
        self.push(Stream::Plugind, LogLevel::Warn, message);
    }

    /// The last stderr lines, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.rings().stderr.iter().cloned().collect()
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let r = self.rings();
        r.lines.iter().skip(r.lines.len().saturating_sub(n)).cloned().collect()
    }
}
