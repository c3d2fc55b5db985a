//! plugind as a service: sd_notify (readiness, status, watchdog, reload, stop) and SIGHUP.
//!
//! Without `NOTIFY_SOCKET` every notification is a silent no-op (the `sd-notify` crate), so the
//! same code runs under systemd, under another supervisor and in a terminal.
//!
//! - `READY=1` once every startable plugin has settled (after [`crate::Daemon::start_all`]),
//!   and again after each SIGHUP reload, each time with `STATUS=`.
//! - `STATUS=` ("3 running, 1 failed, 0 blocked of 4") whenever the counts change: the
//!   [`Service`] follows the daemon's lifecycle events, and re-checks every few seconds anyway.
//! - `WATCHDOG=1` every half `WATCHDOG_USEC`, from the daemon's main loop, and only after a
//!   liveness check went through: a `supervisor.status` round trip over plugind's own control
//!   socket (accept loop, connection task, dispatch, the plugin table). A wedged runtime, accept
//!   loop or table lock therefore stops the pings and systemd restarts plugind.
//! - SIGHUP: `RELOADING=1` + `MONOTONIC_USEC=`, `plugins.reload`, then `READY=1`.
//! - `STOPPING=1` when a graceful stop begins.

use crate::Daemon;
use plugind_client::Client;
use plugind_protocol::control::{Event, ReloadResult};
use sd_notify::NotifyState;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::broadcast;
use tokio::time::{interval, Interval, MissedTickBehavior};

/// How often `STATUS=` is re-checked even without events.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

type ReloadFuture = Pin<Box<dyn Future<Output = ReloadResult> + Send>>;

/// The daemon's side of the service manager contract; it owns the main loop.
pub struct Service {
    daemon: Arc<Daemon>,
    /// Watchdog ping period (half `WATCHDOG_USEC`), if systemd asked for one.
    watchdog: Option<Duration>,
    watchdog_tick: Interval,
    refresh_tick: Interval,
    events: broadcast::Receiver<Event>,
    hup: Option<Signal>,
    last_status: String,
    /// Prefix of `STATUS=` while not simply serving ("starting: ", "stopping: ").
    phase: &'static str,
}

impl Service {
    /// Reads `NOTIFY_SOCKET`/`WATCHDOG_USEC`; `hup` is [`sighup`], taken as early as possible.
    pub fn new(daemon: Arc<Daemon>, hup: Option<Signal>) -> Service {
        let watchdog = sd_notify::watchdog_enabled().map(|usec| (usec / 2).max(Duration::from_millis(1)));
        if let Some(sock) = notify_socket() {
            tracing::info!(socket = %sock.to_string_lossy(), watchdog = ?watchdog, "notifying the service manager");
        }
        let mut watchdog_tick = interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        watchdog_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh_tick = interval(STATUS_REFRESH);
        refresh_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Service {
            events: daemon.subscribe_events(),
            daemon,
            watchdog,
            watchdog_tick,
            refresh_tick,
            hup,
            last_status: String::new(),
            phase: "starting: ",
        }
    }

    /// Runs `work` while keeping the watchdog and `STATUS=` going; None if `stop` (or a
    /// `supervisor.shutdown`) came first.
    pub async fn until<T>(&mut self, work: impl Future<Output = T>, stop: impl Future<Output = ()>) -> Option<T> {
        let shutdown = self.daemon.shutdown.clone();
        let stop = async move {
            tokio::select! {
                _ = stop => {}
                _ = shutdown.cancelled() => {}
            }
        };
        self.drive(work, stop).await
    }

    /// Runs `work` to its end while keeping the watchdog and `STATUS=` going (the graceful
    /// stop itself: nothing interrupts it but a second signal).
    pub async fn during<T>(&mut self, work: impl Future<Output = T>) -> T {
        match self.drive(work, std::future::pending::<()>()).await {
            Some(r) => r,
            None => unreachable!("UNWRAP: a pending stop never completes"),
        }
    }

    async fn drive<T>(&mut self, work: impl Future<Output = T>, stop: impl Future<Output = ()>) -> Option<T> {
        tokio::pin!(work, stop);
        loop {
            tokio::select! {
                _ = &mut stop => return None,
                r = &mut work => return Some(r),
                _ = self.watchdog_tick.tick(), if self.watchdog.is_some() => self.watchdog().await,
                ev = self.events.recv() => self.on_event(ev),
                _ = self.refresh_tick.tick() => self.status(),
            }
        }
    }

    /// The main loop after startup: SIGHUP reloads, watchdog, status; returns when `stop`
    /// completes or a client asks for `supervisor.shutdown`.
    pub async fn serve(&mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let shutdown = self.daemon.shutdown.clone();
        let mut reload: Option<ReloadFuture> = None;
        let mut again = false;
        // When a reload still settling gets its READY=1 anyway (`READY_WITHIN`).
        let mut ready_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = shutdown.cancelled() => break,
                Some(()) = recv_hup(&mut self.hup) => {
                    if reload.is_some() {
                        again = true;
                    } else {
                        reload = Some(self.begin_reload());
                        ready_due = Some(tokio::time::Instant::now() + self.daemon.config.ready_timeout);
                    }
                }
                r = async { reload.as_mut().expect("UNWRAP: guarded by is_some").await }, if reload.is_some() => {
                    reload = None;
                    tracing::info!(added = ?r.added, removed = ?r.removed, changed = ?r.changed, errors = r.errors.len(), "SIGHUP reload done");
                    if again {
                        again = false;
                        reload = Some(self.begin_reload());
                        // It sent RELOADING=1 again: it owes a READY=1 of its own.
                        ready_due = Some(tokio::time::Instant::now() + self.daemon.config.ready_timeout);
                    } else if ready_due.take().is_some() {
                        self.ready();
                    }
                }
                () = tokio::time::sleep_until(ready_due.unwrap_or_else(tokio::time::Instant::now)), if ready_due.is_some() => {
                    ready_due = None;
                    let after = self.daemon.config.ready_timeout.as_secs();
                    tracing::warn!("the reload's plugins have not all settled after {after} s (ready_timeout_s): ready now, they go on");
                    self.ready();
                }
                _ = self.watchdog_tick.tick(), if self.watchdog.is_some() => self.watchdog().await,
                ev = self.events.recv() => self.on_event(ev),
                _ = self.refresh_tick.tick() => self.status(),
            }
        }
    }

    fn begin_reload(&mut self) -> ReloadFuture {
        tracing::info!("SIGHUP: rescanning plugin directories");
        let mut states = vec![NotifyState::Reloading];
        match NotifyState::monotonic_usec_now() {
            Ok(now) => states.push(now),
            Err(e) => tracing::warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
        }
        states.push(NotifyState::Status("reloading: rescanning plugin directories"));
        notify(&states);
        self.last_status.clear();
        let d = self.daemon.clone();
        Box::pin(async move { d.reload().await })
    }

    /// `READY=1` with the counts: every startable plugin has settled.
    pub fn ready(&mut self) {
        self.phase = "";
        let text = self.status_text();
        tracing::debug!(status = %text, "READY=1");
        notify(&[NotifyState::Ready, NotifyState::Status(&text)]);
        self.last_status = text;
    }

    /// `STOPPING=1`: a graceful stop begins.
    pub fn stopping(&mut self) {
        self.phase = "stopping: ";
        let text = self.status_text();
        notify(&[NotifyState::Stopping, NotifyState::Status(&text)]);
        self.last_status = text;
    }

    fn on_event(&mut self, ev: Result<Event, broadcast::error::RecvError>) {
        match ev {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.status(),
            // The daemon holds the sender for its whole life.
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// `STATUS=` if the counts changed since the last one sent.
    pub fn status(&mut self) {
        let text = self.status_text();
        if text != self.last_status {
            notify(&[NotifyState::Status(&text)]);
            self.last_status = text;
        }
    }

    fn status_text(&self) -> String {
        let c = self.daemon.counts();
        format!("{}{} running, {} failed, {} blocked of {}", self.phase, c.running, c.failed, c.blocked, c.total)
    }

    /// `WATCHDOG=1`, only if plugind answers on its own control socket within half the period.
    async fn watchdog(&mut self) {
        let Some(period) = self.watchdog else { return };
        let limit = (period / 2).max(Duration::from_millis(5));
        let socket = self.daemon.config().socket.clone();
        let check = async {
            let c = Client::connect(&socket).await.map_err(|e| e.to_string())?;
            c.call(plugind_protocol::control::SUPERVISOR_STATUS, &serde_json::json!({}))
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(limit, check).await {
            Ok(Ok(_)) => notify(&[NotifyState::Watchdog]),
            Ok(Err(e)) => {
                tracing::warn!("watchdog: the control socket failed ({e}); not notifying the service manager")
            }
            Err(_) => tracing::warn!(
                "watchdog: the control socket did not answer within {limit:?}; not notifying the service manager"
            ),
        }
    }
}

/// Takes over SIGHUP: from now on it is a reload (handled once the plugins have started), never
/// the default "terminate".
pub fn sighup() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("cannot handle SIGHUP ({e}); reload with pluginctl reload"))
        .ok()
}

async fn recv_hup(hup: &mut Option<Signal>) -> Option<()> {
    match hup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// `NOTIFY_SOCKET`, unless unset or empty (systemd's own rule: empty is unset).
fn notify_socket() -> Option<std::ffi::OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())
}

/// Sends to `NOTIFY_SOCKET` (nothing without it); a failure is logged, never fatal.
fn notify(states: &[NotifyState]) {
    if notify_socket().is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Raises plugind's own soft `RLIMIT_NOFILE` to its hard limit, as systemd recommends for
/// daemons that need many descriptors: each plugin instance holds three pipes and a pidfd, so
/// 1000 plugins need about 4000 descriptors against a default soft limit of 1024. Plugins do not
/// inherit it: every child gets its manifest's `limits.open_files` (soft = hard) before `exec`.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the soft open-files limit"),
            Err(e) => tracing::warn!(soft, hard, "cannot raise the soft open-files limit: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
    }
}
