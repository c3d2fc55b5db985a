//! Tells an instance at once when its pids cgroup refuses a fork, so that a plugin over its
//! `processes` limit is stopped (and restarted by its policy) like one over any other limit,
//! rather than living on with a refused `fork` it may ignore.
//!
//! The kernel signals a change of `pids.events` (its `max` counter) as a file modification; one
//! inotify watch serves every instance (a user may have only 128 inotify instances by default),
//! each instance waking on its own file. Where the watch cannot be made, the limit is still
//! reported when the instance exits (`super::limits`).

use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::Notify;

/// The one watcher (None until first needed, or if it could not be made).
static WATCHER: LazyLock<Mutex<Option<notify::RecommendedWatcher>>> = LazyLock::new(|| {
    let made = notify::recommended_watcher(|event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let alarms = ALARMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for path in &event.paths {
            if let Some(alarm) = alarms.get(path) {
                alarm.notify_one();
            }
        }
    });
    match made {
        Ok(w) => Mutex::new(Some(w)),
        Err(e) => {
            tracing::warn!(
                "cannot watch pids.events ({e}): a plugin over `processes` is reported when it exits, not stopped"
            );
            Mutex::new(None)
        }
    }
});

/// Each watched `pids.events` file and the instance waiting on it.
static ALARMS: LazyLock<Mutex<HashMap<PathBuf, Arc<Notify>>>> = LazyLock::new(Default::default);

/// A watched `pids.events`; unwatched on drop.
pub struct PidsAlarm {
    path: PathBuf,
    note: Arc<Notify>,
}

impl PidsAlarm {
    /// Watches `events` (an instance cgroup's `pids.events`); None if it cannot be watched.
    pub fn watch(events: &Path) -> Option<PidsAlarm> {
        let note = Arc::new(Notify::new());
        // Registered first: a refusal between the watch and the registration is not missed.
        ALARMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(events.to_owned(), note.clone());
        let watched = WATCHER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .is_some_and(|w| w.watch(events, RecursiveMode::NonRecursive).is_ok());
        let alarm = PidsAlarm { path: events.to_owned(), note };
        watched.then_some(alarm)
    }

    /// Resolves at the next change of the file (a fork refused, or the count read again).
    pub async fn changed(&self) {
        self.note.notified().await
    }
}

impl Drop for PidsAlarm {
    fn drop(&mut self) {
        ALARMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.path);
        if let Some(w) = WATCHER.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            let _ = w.unwatch(&self.path);
        }
    }
}
