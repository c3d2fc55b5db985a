//! A plugin's lifecycle state and the restart policy, as plain data with no I/O.
//!
//! ```text
//!            start                 all instances ready
//! stopped ─────────► starting ─────────────────────────► running
//!    ▲                  │ ▲ backoff elapsed                 │ crash
//!    │ stop             │ └──────── restarting ◄──────────┘
//!    │                  │ crash         │ more than max_restarts in window_s
//! stopping ◄────────────┴───────────────┴──────────────► failed ──(cooldown_s)──► starting
//! ```
//! `blocked` (a required dependency is missing) and `invalid` (the manifest does not load) are
//! states a plugin waits in until something outside changes.

use plugind_protocol::manifest::{RestartMode, RestartPolicy};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Where a plugin is in its lifecycle (docs/control-api.md states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Instances are being spawned and handshaked.
    Starting,
    /// At least one instance serves calls.
    Running,
    /// Waiting out a backoff delay before the next start.
    Restarting {
        /// The delay.
        delay: Duration,
    },
    /// Instances are being torn down.
    Stopping,
    /// Not running, by request or after a clean exit.
    Stopped,
    /// Crashed too often; no more restarts until asked.
    Failed,
    /// A required dependency is not available.
    Blocked {
        /// The unmet dependencies, as `name@range` (with the versions that do run, if any).
        unmet: Vec<String>,
    },
    /// The manifest does not load.
    Invalid,
}

impl PluginState {
    /// The state's name on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Restarting { .. } => "restarting",
            PluginState::Stopping => "stopping",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
            PluginState::Blocked { .. } => "blocked",
            PluginState::Invalid => "invalid",
        }
    }

    /// Whether calls can be routed to it.
    pub fn is_running(&self) -> bool {
        matches!(self, PluginState::Running)
    }

    /// Whether the supervisor is still working towards running it (for readiness).
    pub fn is_settling(&self) -> bool {
        matches!(self, PluginState::Starting | PluginState::Restarting { .. })
    }
}

/// First restart delay (manifests/README.md `restart`).
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What to do after an instance ended without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExit {
    /// Start again after this delay.
    RestartIn(Duration),
    /// Give up: crashed too often, or policy `never` after a failure.
    Fail,
    /// Stay stopped: a clean exit under `on-failure`/`never`.
    Stop,
}

/// Counts restarts within the policy window and computes backoff.
#[derive(Debug, Default)]
pub struct RestartTracker {
    recent: VecDeque<Instant>,
    /// Starts in a row that ended before the instance was ready: a start that fails slowly (its
    /// `startup_timeout_ms` of 30 s) never makes `max_restarts` within a 60 s window, and the
    /// plugin stayed `starting` for good (audit 19: 25 restarts in 13 minutes). Like
    /// supervisord's `startretries`, one more than `max_restarts` in a row fails it too.
    failed_starts: u32,
}

impl RestartTracker {
    /// Decides what follows an exit; `clean` is exit code 0 without a signal; `never_ready`: the
    /// instance exited before it answered `init` and `register`.
    pub fn after_exit(&mut self, policy: &RestartPolicy, clean: bool, never_ready: bool, now: Instant) -> AfterExit {
        match policy.policy {
            RestartMode::Never => return if clean { AfterExit::Stop } else { AfterExit::Fail },
            RestartMode::OnFailure if clean => return AfterExit::Stop,
            RestartMode::OnFailure | RestartMode::Always => {}
        }
        let window = Duration::from_secs(policy.window_s);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.recent.pop_front();
        }
        if never_ready {
            self.failed_starts += 1;
        }
        if self.recent.len() >= policy.max_restarts as usize || self.failed_starts > policy.max_restarts {
            return AfterExit::Fail;
        }
        let delay = backoff(self.recent.len() as u32);
        self.recent.push_back(now);
        AfterExit::RestartIn(delay)
    }

    /// Forgets past restarts (an operator's explicit start or restart).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.failed_starts = 0;
    }

    /// An instance became ready: the starts that failed before it no longer count in a row.
    pub fn started(&mut self) {
        self.failed_starts = 0;
    }

    /// Whether the failed starts in a row are what failed the plugin.
    pub fn failed_to_start(&self, policy: &RestartPolicy) -> bool {
        self.failed_starts > policy.max_restarts
    }
}

/// The delay before restart number `n` (0-based): 100 ms doubling up to 10 s.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<_> = (0..9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(backoff(60), BACKOFF_MAX);
    }

    #[test]
    fn more_than_max_restarts_failed_starts_in_a_row_fail_whatever_the_window() {
        let p = RestartPolicy { max_restarts: 2, window_s: 60, ..RestartPolicy::default() };
        let mut t = RestartTracker::default();
        let mut now = Instant::now();
        for _ in 0..2 {
            assert!(matches!(t.after_exit(&p, false, true, now), AfterExit::RestartIn(_)));
            now += Duration::from_secs(31);
        }
        // Each 31 s apart: never three within the window, but three failed starts in a row.
        assert_eq!(t.after_exit(&p, false, true, now), AfterExit::Fail);
        assert!(t.failed_to_start(&p));
        // A start that got ready in between breaks the row.
        let mut t = RestartTracker::default();
        for _ in 0..2 {
            assert!(matches!(t.after_exit(&p, false, true, now), AfterExit::RestartIn(_)));
            t.started();
            now += Duration::from_secs(61);
        }
        assert!(matches!(t.after_exit(&p, false, true, now), AfterExit::RestartIn(_)));
    }

    #[test]
    fn more_than_max_restarts_in_window_fails() {
        let p = RestartPolicy { max_restarts: 3, window_s: 60, ..RestartPolicy::default() };
        let mut t = RestartTracker::default();
        let now = Instant::now();
        assert_eq!(t.after_exit(&p, false, false, now), AfterExit::RestartIn(Duration::from_millis(100)));
        assert_eq!(t.after_exit(&p, false, false, now), AfterExit::RestartIn(Duration::from_millis(200)));
        assert_eq!(t.after_exit(&p, false, false, now), AfterExit::RestartIn(Duration::from_millis(400)));
        assert_eq!(t.after_exit(&p, false, false, now), AfterExit::Fail);
        // Outside the window the count starts over.
        let later = now + Duration::from_secs(61);
        assert_eq!(t.after_exit(&p, false, false, later), AfterExit::RestartIn(Duration::from_millis(100)));
    }

    #[test]
    fn clean_exit_follows_the_policy() {
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let on_failure = RestartPolicy::default();
        assert_eq!(t.after_exit(&on_failure, true, false, now), AfterExit::Stop);
        let always = RestartPolicy { policy: RestartMode::Always, ..RestartPolicy::default() };
        assert!(matches!(t.after_exit(&always, true, false, now), AfterExit::RestartIn(_)));
        let never = RestartPolicy { policy: RestartMode::Never, ..RestartPolicy::default() };
        assert_eq!(t.after_exit(&never, false, false, now), AfterExit::Fail);
        assert_eq!(t.after_exit(&never, true, false, now), AfterExit::Stop);
    }
}
