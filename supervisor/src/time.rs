//! Time: wall-clock timestamps for logs, history and events; timers; throttled reports.

/// Now as RFC 3339 with milliseconds, UTC (`2026-11-22T01:02:03.456Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Sleeps until `t`, or forever when there is no `t` (an unarmed timer in a `select!`).
pub async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Reports of an event that may come in floods (lines dropped, connections refused, exports
/// failed): at most one per period, each with the count of those held back since the last.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl Throttle {
    /// At most one report per `every`.
    pub const fn new(every: std::time::Duration) -> Self {
        Throttle { every, last: None, held: 0 }
    }

    /// Counts one more event to report.
    pub fn hold(&mut self) {
        self.held += 1;
    }

    /// How many events to report now: all held since the last report, once `every` has passed
    /// since it; 0 otherwise (or when none is held).
    pub fn due(&mut self, now: std::time::Instant) -> u64 {
        if self.held == 0 || self.last.is_some_and(|at| now.duration_since(at) < self.every) {
            return 0;
        }
        self.last = Some(now);
        std::mem::take(&mut self.held)
    }

    /// Whether anything was reported since it was made.
    pub fn reported(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[test]
    fn a_throttle_reports_once_per_period_with_what_it_held() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.due(t0), 0, "nothing held");
        t.hold();
        assert_eq!(t.due(t0), 1);
        t.hold();
        t.hold();
        assert_eq!(t.due(t0 + Duration::from_millis(500)), 0, "within the period");
        assert_eq!(t.due(t0 + Duration::from_secs(1)), 2);
        assert!(t.reported());
    }
}
