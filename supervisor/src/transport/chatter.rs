//! A plugin's chatter: the stdout lines it sends that are neither answers to plugind's calls nor
//! requests to plugind. That is its notifications (`log`, `$/progress`, `metrics.emit`, any
//! other) and every line of no use: not JSON, not JSON-RPC, an answer to no call, a request for
//! a method plugind does not have, a line over the frame limit (and the rest of it, dropped as
//! it comes); and its stderr lines.
//!
//! Answers are bounded by the calls plugind sends, and requests by the plugin's request budget
//! (`crate::transport::budget`). Chatter had no bound but the pipe's speed: a plugin writing
//! `yes x`, or `log` notifications at full speed, kept one of plugind's cores busy reading and
//! parsing what it then threw away (about 100 % of a core, measured), and an endless line about
//! 30 %. So chatter has a rate per plugin, shared by its instances and kept across its
//! generations: past it, [`Chatter::is_over`] turns true and the plugin's stdout readers stop
//! reading for [`Chatter::wait`]. Nothing is dropped for being over the rate: the plugin's
//! writes wait in its own pipe, which is the back-pressure any pipe gives a fast writer.
//!
//! The rate is far above what a working plugin sends (200 `log` lines a second are kept; more
//! are dropped by the log's own rate), so only a flood waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines of chatter per second, sustained, per plugin.
pub const LINES_PER_SEC: f64 = 10_000.0;
/// Lines of chatter in a burst, per plugin.
pub const LINES_BURST: f64 = 20_000.0;
/// Bytes of chatter per second, sustained, per plugin.
pub const BYTES_PER_SEC: f64 = 16.0 * 1024.0 * 1024.0;
/// Bytes of chatter in a burst, per plugin: two lines of the frame limit.
pub const BYTES_BURST: f64 = 32.0 * 1024.0 * 1024.0;
/// The shortest wait: under a steady flood, readers wake 20 times a second, not at every read.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// How often the plugin's log says its stdout was left unread, at most.
const WAITS_REPORTED_EVERY: Duration = Duration::from_secs(5);

/// One plugin's chatter meter; clones share it.
#[derive(Clone, Debug)]
pub struct Chatter {
    meter: Arc<Mutex<Meter>>,
    /// Whether the meter is in debt: read once per line by every reader, so a lock-free flag.
    over: Arc<AtomicBool>,
}

/// A token bucket of lines and bytes that may go into debt: lines already read when the rate
/// ran out are counted, and the wait that follows pays them back.
#[derive(Debug)]
struct Meter {
    lines: f64,
    bytes: f64,
    refilled: Instant,
    /// Waits, reported in the plugin's log at most once per [`WAITS_REPORTED_EVERY`].
    waits: crate::time::Throttle,
}

impl Meter {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.lines = (self.lines + elapsed * LINES_PER_SEC).min(LINES_BURST);
        self.bytes = (self.bytes + elapsed * BYTES_PER_SEC).min(BYTES_BURST);
        self.refilled = now;
    }

    /// How long until neither count is in debt.
    fn debt(&self) -> Option<Duration> {
        let secs = (-self.lines / LINES_PER_SEC).max(-self.bytes / BYTES_PER_SEC);
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

impl Chatter {
    /// A meter with its bursts whole.
    pub fn new() -> Self {
        Chatter {
            meter: Arc::new(Mutex::new(Meter {
                lines: LINES_BURST,
                bytes: BYTES_BURST,
                refilled: Instant::now(),
                waits: crate::time::Throttle::new(WAITS_REPORTED_EVERY),
            })),
            over: Arc::new(AtomicBool::new(false)),
        }
    }

    fn meter(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `lines` lines of chatter of `bytes` bytes in all (`lines` 0: more of a line being
    /// dropped).
    pub fn charge(&self, lines: u32, bytes: usize) {
        let mut m = self.meter();
        m.refill(Instant::now());
        m.lines -= f64::from(lines);
        m.bytes -= bytes as f64;
        if m.debt().is_some() {
            self.over.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the plugin went over its rate: its readers ask [`Chatter::wait`] how long to
    /// stop reading. Cheap enough for every line.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// How long the plugin's stdout readers stop reading (at least [`MIN_WAIT`]): `None` once
    /// the rate allows reading again.
    pub fn wait(&self) -> Option<Duration> {
        let mut m = self.meter();
        m.refill(Instant::now());
        let wait = m.debt().map(|d| d.max(MIN_WAIT));
        if wait.is_none() {
            self.over.store(false, Ordering::Relaxed);
        }
        wait
    }

    /// What a reader of the plugin's `stream` does after each line: `None` while the rate
    /// allows reading on (one atomic load), else how long to stop reading, with what to say in
    /// the plugin's log about it (at most once per [`WAITS_REPORTED_EVERY`]: a flood that goes
    /// on makes a wait at every burst).
    pub fn pause(&self, stream: &str) -> Option<(Duration, Option<String>)> {
        if !self.is_over() {
            return None;
        }
        let wait = self.wait()?;
        Some((wait, self.report_wait(stream, wait)))
    }

    fn report_wait(&self, stream: &str, wait: Duration) -> Option<String> {
        let mut m = self.meter();
        m.waits.hold();
        let waits = m.waits.due(Instant::now());
        (waits > 0).then(|| {
            format!(
                "{stream} left unread for {} ms ({waits} such wait(s) since the last report): over {LINES_PER_SEC} lines/s \
                 (burst {LINES_BURST}) or {} MiB/s (burst {} MiB) of notifications and unusable lines; its writes wait \
                 in its pipe meanwhile",
                wait.as_millis(),
                BYTES_PER_SEC as u64 >> 20,
                BYTES_BURST as u64 >> 20,
            )
        })
    }
}

impl Default for Chatter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_a_wait_pays_the_debt_back() {
        let c = Chatter::new();
        c.charge(LINES_BURST as u32 - 10, 100);
        assert!(!c.is_over(), "within the burst");
        assert_eq!(c.wait(), None);
        c.charge(1010, 100);
        assert!(c.is_over());
        // About 1000 lines of debt at 10 000 a second: about 100 ms (less the time since).
        let wait = c.wait().expect("in debt");
        assert!(wait > Duration::from_millis(60) && wait <= Duration::from_millis(101), "{wait:?}");
        let (_, said) = c.pause("stdout").expect("in debt");
        assert!(said.is_some_and(|m| m.starts_with("stdout left unread") && m.contains("1 such wait")));
        assert_eq!(c.pause("stdout").map(|(_, said)| said), Some(None), "reported once per period");
        std::thread::sleep(wait);
        assert_eq!(c.wait(), None, "paid back");
        assert!(!c.is_over());
    }

    #[test]
    fn bytes_count_as_well_as_lines() {
        let c = Chatter::new();
        c.charge(0, BYTES_BURST as usize + (BYTES_PER_SEC as usize) / 2);
        assert!(c.is_over());
        let wait = c.wait().expect("in debt");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(501), "{wait:?}");
    }

    #[test]
    fn a_small_debt_waits_the_minimum() {
        let c = Chatter::new();
        c.charge(LINES_BURST as u32 + 1, 0);
        assert_eq!(c.wait(), Some(MIN_WAIT));
    }

    #[test]
    fn clones_share_one_meter() {
        let (a, b) = (Chatter::new(), Chatter::new());
        let a2 = a.clone();
        a.charge(LINES_BURST as u32, 0);
        a2.charge(100, 0);
        assert!(a.is_over() && a2.is_over());
        assert!(!b.is_over());
    }
}
