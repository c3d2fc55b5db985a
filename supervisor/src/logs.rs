//! Per-plugin log: stderr lines, `log` notifications and plugind's own events about the plugin.
//!
//! Each line goes to `tracing` (with the plugin's name as a field) and into a bounded ring, so
//! `logs.tail` and the status's `stderr_tail` can show recent lines without unbounded memory.
//! The ring is bounded twice: by its line count (`log_lines`) and by the bytes of text it holds
//! ([`caps::LOG_RING_BYTES`]), since a plugin chooses how long its lines are.
//!
//! What a plugin sends is rate-limited per source (stderr lines and `log` notifications each
//! have a token bucket), and a `log` notification is capped ([`caps::LOG_MESSAGE_BYTES`],
//! [`caps::LOG_FIELDS_BYTES`]) before it is kept.

use crate::caps::{self, Cap, Overflows};
use crate::transport::tap::Tap;
use plugind_protocol::control::{Event, LogLine};
use plugind_protocol::methods::{LogLevel, LogParams};
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
    /// What each of `lines` costs ([`line_bytes`]), so evicting one needs no re-serializing.
    sizes: VecDeque<usize>,
    /// Bytes of message and fields text in `lines`: their sum.
    bytes: usize,
    stderr: VecDeque<String>,
    /// Stderr lines: a flooding plugin cannot flood plugind's log too.
    stderr_bucket: Bucket,
    /// `log` notifications, limited apart from stderr so one source cannot starve the other.
    log_bucket: Bucket,
    /// plugind's own lines about what the plugin wrote on stdout (a line skipped, an answer to
    /// no call…): one per line it writes, so limited like its own lines.
    output_bucket: Bucket,
    /// plugind's lines about calls that failed (timed out, cancelled, crashed): a plugin can
    /// make those by the thousand a second (`service.call`s to itself with `timeout_ms: 1`).
    calls_bucket: Bucket,
}

impl Rings {
    /// Keeps `line` (costing `size`), letting the oldest go past `capacity` lines or
    /// [`caps::LOG_RING_BYTES`].
    fn keep(&mut self, line: LogLine, size: usize, capacity: usize) {
        while self.lines.len() >= capacity || (self.bytes + size > caps::LOG_RING_BYTES && !self.lines.is_empty()) {
            self.lines.pop_front();
            self.bytes -= self.sizes.pop_front().unwrap_or(0);
        }
        self.bytes += size;
        self.sizes.push_back(size);
        self.lines.push_back(line);
    }
}

/// A token bucket of lines and of their bytes, counting what it refused.
struct Bucket {
    tokens: f64,
    /// Bytes of text that may still pass: long lines at the line rate would still be megabytes a
    /// second of plugind's log (200 lines of 64 KiB: 12.8 MB/s, a terabyte a day).
    bytes: f64,
    refilled: std::time::Instant,
    /// Lines dropped, reported at most once per [`DROPS_REPORTED_EVERY`]: under a sustained
    /// flood every line let through would otherwise come with a report of its own.
    dropped: crate::time::Throttle,
}

/// How often a rate limit says how many lines it dropped, at most.
const DROPS_REPORTED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Bucket {
    fn new() -> Self {
        Bucket {
            tokens: STDERR_BURST,
            bytes: BYTES_BURST,
            refilled: std::time::Instant::now(),
            dropped: crate::time::Throttle::new(DROPS_REPORTED_EVERY),
        }
    }

    /// Takes a token for a line of `len` bytes: `Some(lines dropped to report now)` (0 most of
    /// the time), or `None` (over the rate).
    fn take(&mut self, len: usize) -> Option<u64> {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * STDERR_RATE).min(STDERR_BURST);
        self.bytes = (self.bytes + elapsed * BYTES_RATE).min(BYTES_BURST);
        self.refilled = now;
        if self.tokens < 1.0 || self.bytes < len as f64 {
            self.dropped.hold();
            return None;
        }
        self.tokens -= 1.0;
        self.bytes -= len as f64;
        Some(self.dropped.due(now))
    }
}

/// Lines per second kept, sustained, of stderr and of `log` notifications each.
pub const STDERR_RATE: f64 = 200.0;
/// Lines kept in a burst, of stderr and of `log` notifications each.
pub const STDERR_BURST: f64 = 1000.0;
/// Bytes of text per second kept, sustained, of stderr and of `log` notifications each.
pub const BYTES_RATE: f64 = 1024.0 * 1024.0;
/// Bytes of text kept in a burst, of stderr and of `log` notifications each.
pub const BYTES_BURST: f64 = 8.0 * 1024.0 * 1024.0;

/// One plugin's log.
pub struct PluginLog {
    /// The plugin's wire tap (`plugins.trace`), here because the log lives as long as the plugin.
    pub tap: Arc<Tap>,
    plugin: String,
    capacity: usize,
    rings: Mutex<Rings>,
    follow: broadcast::Sender<LogLine>,
    /// The daemon's event stream, for events about one call (`call_failed`).
    events: Option<broadcast::Sender<Event>>,
    /// Caps this plugin went over: each is warned about once.
    overflows: Overflows,
    /// Where its lines are kept on disk too, when plugind keeps them there.
    files: Option<Arc<crate::log_files::LogFiles>>,
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
                sizes: VecDeque::new(),
                bytes: 0,
                stderr: VecDeque::new(),
                stderr_bucket: Bucket::new(),
                log_bucket: Bucket::new(),
                output_bucket: Bucket::new(),
                calls_bucket: Bucket::new(),
            }),
            follow,
            events: None,
            overflows: Overflows::default(),
            files: None,
        }
    }

    /// The same log, kept in `files` too, and starting with the lines they hold (its last run's),
    /// within the ring's bounds.
    pub fn with_files(mut self, files: Arc<crate::log_files::LogFiles>) -> Self {
        {
            let mut r = self.rings();
            for line in files.load(&self.plugin) {
                let size = line_bytes(&line);
                r.keep(line, size, self.capacity);
            }
        }
        self.files = Some(files);
        self
    }

    /// The same log, publishing events about calls to `events` (`events.subscribe`).
    pub fn with_events(mut self, events: broadcast::Sender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Publishes an event about one call of this plugin, with its trace id.
    pub fn call_event(&self, kind: &str, detail: String, trace_id: String) {
        if let Some(events) = &self.events {
            let _ = events.send(Event {
                ts: crate::time::now_rfc3339(),
                plugin: self.plugin.clone(),
                kind: kind.to_owned(),
                state: None,
                detail,
                trace_id: Some(trace_id),
            });
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one line.
    pub fn push(&self, stream: Stream, level: LogLevel, message: String) {
        self.push_with(stream, level, message, None, None);
    }

    /// Records one line with structured fields.
    ///
    /// Every line is cut to [`caps::LOG_MESSAGE_BYTES`], whatever its source: plugind's own
    /// lines can quote what a plugin sent (an unknown response id, an error message).
    fn push_with(
        &self,
        stream: Stream,
        level: LogLevel,
        mut message: String,
        fields: Option<serde_json::Value>,
        trace_id: Option<String>,
    ) {
        caps::truncate(&mut message, caps::LOG_MESSAGE_BYTES);
        let plugin = self.plugin.as_str();
        // The plugin's fields travel as one JSON field of plugind's own log line. Its control
        // characters are escaped there: a `\n` must not forge a line of plugind's own.
        let f = fields.as_ref().map(tracing::field::display);
        let shown = plugind_protocol::text::printable(&message);
        match level {
            LogLevel::Error => tracing::error!(plugin, stream = stream.as_str(), fields = f, "{shown}"),
            LogLevel::Warn => tracing::warn!(plugin, stream = stream.as_str(), fields = f, "{shown}"),
            LogLevel::Info => tracing::info!(plugin, stream = stream.as_str(), fields = f, "{shown}"),
            LogLevel::Debug => tracing::debug!(plugin, stream = stream.as_str(), fields = f, "{shown}"),
            LogLevel::Trace => tracing::trace!(plugin, stream = stream.as_str(), fields = f, "{shown}"),
        }
        drop(shown);
        let line = LogLine {
            ts: crate::time::now_rfc3339(),
            plugin: self.plugin.clone(),
            stream: stream.as_str().to_owned(),
            level: level.as_str().to_owned(),
            message,
            fields,
            trace_id,
        };
        let size = line_bytes(&line);
        let mut r = self.rings();
        if stream == Stream::Stderr {
            if r.stderr.len() == STDERR_TAIL {
                r.stderr.pop_front();
            }
            r.stderr.push_back(line.message.clone());
        }
        r.keep(line.clone(), size, self.capacity);
        drop(r);
        if let Some(files) = &self.files {
            files.append(&self.plugin, &line);
        }
        let _ = self.follow.send(line);
    }

    /// A stderr line, subject to the rate limit: lines over it are counted and reported as
    /// one "N lines dropped" line once the rate allows again.
    pub fn stderr(&self, message: String) {
        let Some(dropped) = self.rings().stderr_bucket.take(message.len()) else { return };
        self.report_dropped(dropped, "stderr lines");
        self.push(Stream::Stderr, LogLevel::Info, message);
    }

    /// A `log` notification: rate-limited like stderr, its message cut to
    /// [`caps::LOG_MESSAGE_BYTES`] and its `fields` kept up to [`caps::LOG_FIELDS_BYTES`].
    pub fn notification(&self, p: LogParams) {
        // Counted as kept: the message cut to its cap.
        let Some(dropped) = self.rings().log_bucket.take(p.message.len().min(caps::LOG_MESSAGE_BYTES)) else { return };
        self.report_dropped(dropped, "`log` notifications");
        let LogParams { level, mut message, fields, mut trace_id } = p;
        // A plugin's own trace id is kept only if it looks like one.
        trace_id = trace_id.filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        if caps::truncate(&mut message, caps::LOG_MESSAGE_BYTES) {
            self.over_cap(Cap::LogMessage, format!("a `log` message was cut to {} bytes", caps::LOG_MESSAGE_BYTES));
        }
        let fields = fields.filter(|f| {
            let fits = serde_json::to_string(f).is_ok_and(|t| t.len() <= caps::LOG_FIELDS_BYTES);
            if !fits {
                self.over_cap(
                    Cap::LogFields,
                    format!("`log` fields over {} bytes of JSON dropped", caps::LOG_FIELDS_BYTES),
                );
            }
            fits
        });
        self.push_with(Stream::Log, level, message, fields, trace_id);
    }

    /// plugind's line about something the plugin wrote on its stdout, made by `message` only
    /// if kept: rate-limited like stderr (a plugin writing garbage at full speed would otherwise
    /// have plugind write a warning per line, hundreds of MB a second of its own log, and spend
    /// its CPU on them). Whether it was kept.
    pub fn about_output(&self, level: LogLevel, message: impl FnOnce() -> String) -> bool {
        let Some(dropped) = self.rings().output_bucket.take(0) else { return false };
        self.report_dropped(dropped, "warnings about its stdout");
        self.push(Stream::Plugind, level, message());
        true
    }

    /// Says how many lines a rate limit dropped, once the rate allows a line again.
    fn report_dropped(&self, dropped: u64, what: &str) {
        if dropped > 0 {
            self.push(
                Stream::Plugind,
                LogLevel::Warn,
                format!(
                    "{dropped} {what} dropped: over {STDERR_RATE} lines/s (burst {STDERR_BURST}) or {} KiB/s (burst {} MiB)",
                    BYTES_RATE as u64 >> 10,
                    BYTES_BURST as u64 >> 20
                ),
            );
        }
    }

    /// The plugin went over `cap`: warns the first time, with what happened and that repeats
    /// are not reported.
    pub fn over_cap(&self, cap: Cap, what: String) {
        if self.overflows.first(cap) {
            self.warn(format!("{what} (further ones are not reported)"));
        }
    }

    /// plugind's own event about this plugin.
    pub fn plugind(&self, message: String) {
        self.push(Stream::Plugind, LogLevel::Info, message);
    }

    /// plugind's own warning about one call, with the call's trace id.
    /// Rate-limited like the plugin's own lines (the calls may come by the thousand a second).
    pub fn warn_traced(&self, message: String, trace_id: &str) {
        let Some(dropped) = self.rings().calls_bucket.take(message.len()) else { return };
        self.report_dropped(dropped, "warnings about failed calls");
        self.push_with(Stream::Plugind, LogLevel::Warn, message, None, Some(trace_id.to_owned()));
    }

    /// plugind's own warning about this plugin.
    pub fn warn(&self, message: String) {
        self.push(Stream::Plugind, LogLevel::Warn, message);
    }

    /// The last stderr lines, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.rings().stderr.iter().cloned().collect()
    }

    /// Bytes of text the ring holds.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.rings().bytes
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let r = self.rings();
        r.lines.iter().skip(r.lines.len().saturating_sub(n)).cloned().collect()
    }
}

/// What a kept line costs, roughly: its message and fields text.
fn line_bytes(line: &LogLine) -> usize {
    line.message.len() + line.fields.as_ref().map_or(0, |f| f.to_string().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> PluginLog {
        PluginLog::new("p", 5000, broadcast::channel(4).0)
    }

    fn notification(message: String, fields: Option<serde_json::Value>) -> LogParams {
        LogParams { level: LogLevel::Info, message, fields, trace_id: None }
    }

    #[test]
    fn log_notifications_are_capped_and_keep_their_fields() {
        let l = log();
        l.notification(notification("x".repeat(4 << 20), Some(serde_json::json!({"k": 1}))));
        l.notification(notification("y".repeat(4 << 20), None));
        l.notification(notification(
            "small".into(),
            Some(serde_json::json!({"big": "z".repeat(caps::LOG_FIELDS_BYTES)})),
        ));
        let lines = l.tail(10);
        let kept: Vec<&LogLine> = lines.iter().filter(|l| l.stream == "log").collect();
        assert_eq!(kept.len(), 3);
        assert!(kept[0].message.len() <= caps::LOG_MESSAGE_BYTES && kept[0].message.contains("truncated"));
        assert_eq!(kept[0].fields, Some(serde_json::json!({"k": 1})));
        assert_eq!(kept[2].fields, None, "fields over the cap are dropped");
        let warnings: Vec<&LogLine> = lines.iter().filter(|l| l.stream == "plugind").collect();
        assert_eq!(warnings.len(), 2, "one warning per cap: {warnings:?}");
    }

    #[test]
    fn the_ring_holds_a_bounded_number_of_bytes() {
        let l = log();
        for _ in 0..500 {
            l.notification(notification("m".repeat(caps::LOG_MESSAGE_BYTES), None));
        }
        assert!(l.held_bytes() <= caps::LOG_RING_BYTES, "{}", l.held_bytes());
        assert!(l.tail(1000).len() < 500);
    }

    /// Under a flood that goes on, what was dropped is reported about once a second, not once
    /// per line let through. (Time is the feature: the flood lasts 1.5 s.)
    #[test]
    fn a_sustained_flood_is_reported_about_once_a_second() {
        let l = log();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(1500) {
            l.stderr("flood".into());
        }
        let lines = l.tail(100_000);
        let reports = lines.iter().filter(|x| x.message.contains("stderr lines dropped")).count();
        let kept = lines.iter().filter(|x| x.message == "flood").count();
        assert!(kept > STDERR_BURST as usize + 100, "the rate let lines through after the burst: {kept}");
        assert!((1..=3).contains(&reports), "{reports} reports for {kept} lines kept");
    }

    #[test]
    fn log_notifications_are_rate_limited_apart_from_stderr() {
        let l = log();
        for i in 0..(STDERR_BURST as usize + 500) {
            l.notification(notification(format!("n{i}"), None));
        }
        let logged = l.tail(5000).iter().filter(|x| x.stream == "log").count();
        assert!(logged < STDERR_BURST as usize + 250, "the burst passed, the rest mostly not: {logged}");
        l.stderr("still heard".into());
        assert_eq!(l.stderr_tail(), ["still heard"], "stderr has its own bucket");
    }

    /// Warnings about failed calls are rate-limited: a plugin can fail its own calls by the
    /// thousand a second (11k–18k lines a second were logged).
    #[test]
    fn warnings_about_failed_calls_are_rate_limited() {
        let l = log();
        for i in 0..(STDERR_BURST as usize + 2000) {
            l.warn_traced(format!("call m failed: deadline exceeded ({i})"), "0af7651916cd43dd8448eb211c80319c");
        }
        let kept = l.tail(5000).iter().filter(|x| x.message.starts_with("call m failed")).count();
        assert!(kept < STDERR_BURST as usize + 250, "{kept}");
    }

    /// Long lines are limited by their bytes too: of 400 lines of 64 KiB (25 MiB), well within
    /// the line burst, about the 8 MiB byte burst passes; a short line still does.
    #[test]
    fn long_lines_are_rate_limited_by_their_bytes() {
        let mut b = Bucket::new();
        let kept = (0..400).filter(|_| b.take(caps::LOG_MESSAGE_BYTES).is_some()).count();
        let burst = (BYTES_BURST as usize) / caps::LOG_MESSAGE_BYTES;
        assert!(kept >= burst && kept < burst + 5, "kept {kept} lines of 64 KiB (burst {burst})");
        assert!(b.take(10).is_some(), "a short line passes on what refilled meanwhile");
    }
}
