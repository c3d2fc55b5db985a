//! Hot reload's eyes: file changes under the plugin dirs, debounced, mapped to plugins.
//!
//! One recursive watch per plugin dir (`--plugins`) sees every plugin's files and also the plugin
//! directories themselves, so a directory replaced by a symlink flip is seen like a file change.
//! Events are debounced (a burst of writes is one change) and then matched against each plugin's
//! `watch` globs (default: `plugin.json` and the `main` file). A match sends the plugin's actor a
//! reload; a plugin directory that appeared or vanished triggers a rescan (`Daemon::reload`).

use crate::plugin::entry::Command;
use crate::Daemon;
use globset::{Glob, GlobSetBuilder};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last change of a burst before acting on it.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watcher {
    _debouncer: Box<dyn std::any::Any + Send>,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Starts watching every plugin dir of `daemon`; changes are acted on by a task on the runtime.
pub fn start(daemon: Arc<Daemon>) -> Result<Watcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |r: DebounceEventResult| {
        if let Ok(events) = r {
            // Opening and reading files (every plugin start reads its own) is no change.
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !matches!(e.event.kind, notify::EventKind::Access(_)))
                .flat_map(|e| e.event.paths)
                .collect();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
    })
    .map_err(|source| WatchError { path: PathBuf::new(), source })?;
    for root in &daemon.config().plugin_dirs {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.clone());
        debouncer.watch(&root, RecursiveMode::Recursive).map_err(|source| WatchError { path: root.clone(), source })?;
    }
    let debouncer = Arc::new(std::sync::Mutex::new(debouncer));
    let rewatch = debouncer.clone();
    tokio::spawn(async move {
        while let Some(mut paths) = rx.recv().await {
            // Whatever else arrived meanwhile joins this batch.
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            for dir in on_change(&daemon, &paths).await {
                // A plugin dir that was replaced (a symlink flipped to a new release): watch
                // what it points to now, or changes inside the new target go unseen.
                let mut d = rewatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(e) = d.watch(&dir, RecursiveMode::Recursive) {
                    tracing::warn!(dir = %dir.display(), "cannot watch: {e}");
                }
            }
        }
    });
    Ok(Watcher { _debouncer: Box::new(debouncer) })
}

/// Maps changed paths to plugins and reloads them; returns the plugin dirs that were themselves
/// replaced (to be watched anew).
async fn on_change(daemon: &Arc<Daemon>, paths: &[PathBuf]) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> =
        daemon.config().plugin_dirs.iter().map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone())).collect();
    let plugins = daemon.plugins();
    let mut reload = BTreeSet::new();
    let mut rescan = false;
    let mut replaced: Vec<PathBuf> = Vec::new();
    for path in paths {
        let Some((dir, rel)) = split(&roots, path) else { continue };
        if rel.as_os_str().is_empty() && dir.is_dir() && !replaced.contains(&dir) {
            replaced.push(dir.clone());
        }
        match plugins.iter().find(|p| p.dir == dir) {
            None => rescan |= dir.join("plugin.json").exists(),
            Some(_) if !dir.join("plugin.json").exists() => rescan = true,
            Some(p) => {
                if rel.as_os_str().is_empty() || is_watched(p, &rel) {
                    reload.insert(p.name.to_string());
                }
            }
        }
    }
    if rescan {
        tracing::info!("plugin directories changed: rescanning");
        daemon.reload().await;
        return replaced;
    }
    for name in reload {
        let Some(p) = daemon.plugin(&name) else { continue };
        tracing::info!(plugin = %name, "files changed: hot reload");
        if p.ctl.is_none() {
            // An invalid plugin has no actor: a rescan picks up a fixed manifest.
            daemon.reload().await;
            continue;
        }
        let (tx, _rx) = tokio::sync::oneshot::channel();
        if let Some(ctl) = &p.ctl {
            let _ = ctl.send(Command::Reload(tx));
        }
    }
    replaced
}

/// The plugin directory a path is in and the path relative to it.
fn split(roots: &[PathBuf], path: &Path) -> Option<(PathBuf, PathBuf)> {
    for root in roots {
        if let Ok(rest) = path.strip_prefix(root) {
            let mut parts = rest.components();
            let first = parts.next()?;
            return Some((root.join(first), parts.as_path().to_path_buf()));
        }
    }
    None
}

/// Whether `rel` (relative to the plugin dir) matches the plugin's `watch` globs.
fn is_watched(p: &crate::PluginEntry, rel: &Path) -> bool {
    let Some(m) = p.status().manifest.clone() else { return rel == Path::new("plugin.json") };
    let patterns: Vec<String> = if m.watch.is_empty() {
        let mut d = vec!["plugin.json".to_owned()];
        if let Some(main) = &m.main {
            d.push(main.trim_start_matches("./").to_owned());
        }
        d
    } else {
        m.watch.iter().map(|g| g.trim_start_matches("./").to_owned()).collect()
    };
    let mut b = GlobSetBuilder::new();
    for pat in &patterns {
        match Glob::new(pat) {
            Ok(g) => {
                b.add(g);
            }
            Err(e) => tracing::warn!(plugin = %p.name, "bad watch glob {pat:?}: {e}"),
        }
    }
    rel == Path::new("plugin.json") || b.build().is_ok_and(|set| set.is_match(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_plugin_dir() {
        let roots = vec![PathBuf::from("/p")];
        assert_eq!(
            split(&roots, Path::new("/p/a/dist/x.js")),
            Some((PathBuf::from("/p/a"), PathBuf::from("dist/x.js")))
        );
        assert_eq!(split(&roots, Path::new("/p/a")), Some((PathBuf::from("/p/a"), PathBuf::new())));
        assert_eq!(split(&roots, Path::new("/elsewhere/a")), None);
    }
}
