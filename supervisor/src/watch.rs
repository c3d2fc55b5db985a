//! Hot reload's eyes: file changes under the plugin dirs, settled, mapped to plugins.
//!
//! One recursive watch per plugin dir (`--plugins`) sees every plugin's files and also the plugin
//! directories themselves, so a directory replaced by a symlink flip is seen like a file change.
//! Events settle (a burst of writes is one change; see [`start`] for the rule) and are then
//! matched against each plugin's `watch` globs (default: `plugin.json` and the `main` file). A match sends the plugin's actor a
//! reload; a plugin directory that appeared or vanished triggers a rescan (`Daemon::reload`).

use crate::plugin::entry::Command;
use crate::Daemon;
use globset::{Glob, GlobSetBuilder};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Quiet time after a write that is not known to be finished (data written, file still open).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Quiet time after a finished change (a file closed after writing, a rename, a removal): only
/// long enough to take the other files of the same save or deploy into one reload.
pub const SETTLE: Duration = Duration::from_millis(15);

/// How far along a changed path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Closed after writing, renamed into place, removed: complete.
    Done,
    /// Written to and maybe still open: more may come.
    Writing,
}

/// What a file event says about its paths; None for what is no change (opening and reading
/// files, which every plugin start does).
fn classify(kind: &EventKind) -> Option<Change> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Done),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) | EventKind::Remove(_) => Some(Change::Done),
        EventKind::Create(CreateKind::Folder) => Some(Change::Done),
        _ => Some(Change::Writing),
    }
}

/// A path that has not settled yet may wait at most this long (a file written without pause).
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Paths waiting to settle at most; beyond, all are acted on at once.
const MAX_PENDING: usize = 4096;

/// One changed path waiting to settle.
#[derive(Debug, Clone, Copy)]
struct Pending {
    change: Change,
    first: Instant,
    last: Instant,
}

impl Pending {
    /// When it is acted on: once quiet for its window, and never later than [`MAX_WAIT`] after
    /// its first change.
    fn due(&self) -> Instant {
        let quiet = if self.change == Change::Done { SETTLE } else { DEBOUNCE };
        (self.last + quiet).min(self.first + MAX_WAIT)
    }
}

/// Whether a change of `path` can reload or rescan anything: a plugin directory itself, any
/// `plugin.json` directly in one, or a file of a loaded plugin that its `watch` globs match.
fn matters(roots: &[PathBuf], plugins: &[Arc<crate::PluginEntry>], path: &Path) -> bool {
    let Some((dir, rel)) = split(roots, path) else { return false };
    if rel.as_os_str().is_empty() || rel == Path::new("plugin.json") {
        return true;
    }
    plugins.iter().find(|p| p.dir == dir).is_some_and(|p| is_watched(p, &rel))
}

/// Keeps the watch alive; dropping it stops watching.
pub struct Watcher {
    _watcher: Box<dyn std::any::Any + Send>,
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
///
/// The settle rule, per path: a change is acted on 15 ms after it ([`SETTLE`]) when the kernel
/// says it is finished (an editor's save, `cp`, a rename into place all end with one), 100 ms
/// after it ([`DEBOUNCE`]) when the file may still be open, and at the latest [`MAX_WAIT`] after
/// the path first changed. Paths due together are one batch. Changes that cannot matter (files
/// no plugin watches, like a plugin's own log in its directory) are dropped on arrival.
pub fn start(daemon: Arc<Daemon>) -> Result<Watcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Change, Vec<PathBuf>)>();
    let handler = move |r: notify::Result<notify::Event>| {
        if let Ok(event) = r {
            if let Some(change) = classify(&event.kind) {
                let _ = tx.send((change, event.paths));
            }
        }
    };
    // Symlinks inside a plugin's directory are not followed: a plugin that ships `lib -> /usr`
    // (15,000 watches), or a link into its TMPDIR where it makes directories at will (one watch
    // each in plugind, and the uid's watch limit drained), costs plugind nothing (audit 16). A
    // plugin directory that is itself a symlink (a release flipped by a deploy) is watched
    // through it, below.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config)
        .map_err(|source| WatchError { path: PathBuf::new(), source })?;
    for root in &daemon.config().plugin_dirs {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.clone());
        // Each root's parent too, not recursively: a root that is missing at start, or deleted
        // and made again (a deploy), is seen when it appears, and watched from then on.
        if let Some(parent) = root.parent().filter(|p| p.is_dir()) {
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %parent.display(), "cannot watch for {} to be made again: {e}", root.display());
            }
        }
        if !root.is_dir() {
            tracing::warn!(dir = %root.display(), "plugin directory does not exist: watching for it to appear");
            continue;
        }
        watcher.watch(&root, RecursiveMode::Recursive).map_err(|source| WatchError { path: root.clone(), source })?;
        for linked in std::fs::read_dir(&root).into_iter().flatten().flatten().map(|e| e.path()) {
            if linked.is_symlink() && linked.is_dir() {
                watch_plugin_dir(&mut watcher, &linked);
            }
        }
    }
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    let rewatch = watcher.clone();
    tokio::spawn(async move {
        let roots: Vec<PathBuf> =
            daemon.config().plugin_dirs.iter().map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone())).collect();
        // Paths changed and not yet acted on: how far along each is, when it first and last changed.
        let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
        // Each plugin dir's files as they were when this task last loaded or reloaded it.
        let mut loaded: HashMap<PathBuf, u64> = HashMap::new();
        loop {
            let due = pending.values().map(Pending::due).min();
            tokio::select! {
                got = rx.recv() => {
                    let Some((change, paths)) = got else { break };
                    // A root made (again): watch it, and rescan for what it holds.
                    let made: Vec<&PathBuf> = paths.iter().filter(|p| roots.contains(p) && p.is_dir()).collect();
                    if !made.is_empty() {
                        let mut w = rewatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for root in made {
                            tracing::info!(dir = %root.display(), "plugin directory appeared: watching it");
                            if let Err(e) = w.watch(root, RecursiveMode::Recursive) {
                                tracing::warn!(dir = %root.display(), "cannot watch: {e}");
                            }
                        }
                        drop(w);
                        let daemon = daemon.clone();
                        tokio::spawn(async move { daemon.rescan_dirs().await });
                    }
                    let now = Instant::now();
                    let plugins = daemon.plugins();
                    // Only what could reload or rescan something is kept: a plugin writing its own
                    // log in its directory must not hold up (or grow) anything.
                    for p in paths.into_iter().filter(|p| matters(&roots, &plugins, p)) {
                        pending
                            .entry(p)
                            .and_modify(|e| (e.change, e.last) = (change, now))
                            .or_insert(Pending { change, first: now, last: now });
                    }
                }
                _ = crate::time::sleep_until_opt(due) => {
                    let now = Instant::now();
                    let crowded = pending.len() > MAX_PENDING;
                    let ready: Vec<PathBuf> =
                        pending.iter().filter(|(_, e)| crowded || e.due() <= now).map(|(p, _)| p.clone()).collect();
                    for p in &ready {
                        pending.remove(p);
                    }
                    for dir in on_change(&daemon, &ready, &mut loaded).await {
                        // A plugin dir that was replaced (a symlink flipped to a new release):
                        // watch what it points to now, or changes inside the new target go unseen.
                        let mut w = rewatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        watch_plugin_dir(&mut w, &dir);
                    }
                }
            }
        }
    });
    Ok(Watcher { _watcher: Box::new(watcher) })
}

/// Watches a plugin directory that appeared or was replaced: recursively, or, when it is a
/// symlink (a release a deploy flips), through the link, one directory at a time below it, by
/// their paths through the link (so that changes map to the plugin), following no link further
/// down. (A recursive watch that follows no links would not follow the directory's own link
/// either.)
fn watch_plugin_dir(w: &mut notify::RecommendedWatcher, dir: &Path) {
    /// Most directories watched below a linked plugin directory.
    const MAX_LINKED_DIRS: usize = 4096;
    let watched = if dir.is_symlink() {
        let mut todo = vec![dir.to_path_buf()];
        let mut n = 0;
        let mut result = Ok(());
        while let Some(d) = todo.pop() {
            n += 1;
            if n > MAX_LINKED_DIRS {
                tracing::warn!(dir = %dir.display(), "over {MAX_LINKED_DIRS} directories below: the rest are not watched");
                break;
            }
            result = result.and(w.watch(&d, RecursiveMode::NonRecursive));
            let below = std::fs::read_dir(&d).into_iter().flatten().flatten();
            todo.extend(below.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| d.join(e.file_name())));
        }
        result
    } else {
        w.watch(dir, RecursiveMode::Recursive)
    };
    if let Err(e) = watched {
        tracing::warn!(dir = %dir.display(), "cannot watch: {e}");
    }
}

/// Maps changed paths to plugins and reloads them; returns the plugin dirs that were themselves
/// replaced (to be watched anew).
///
/// A plugin whose files are as they were when it was last loaded here (`loaded`: a
/// [`fingerprint`] per plugin dir, taken before the load read them) is not reloaded: a plugin
/// created in place (`mkdir`, `cp main`, write `plugin.json`) was started by the rescan one file
/// brought about, and the other files of the same creation, settling a moment later, reloaded it
/// at once (a second instance, SIGKILLs while the first was still starting).
async fn on_change(daemon: &Arc<Daemon>, paths: &[PathBuf], loaded: &mut HashMap<PathBuf, u64>) -> Vec<PathBuf> {
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
            None => rescan |= crate::discovery::holds_manifest(&dir),
            Some(_) if !crate::discovery::holds_manifest(&dir) => rescan = true,
            Some(p) => {
                if rel.as_os_str().is_empty() || is_watched(p, &rel) {
                    reload.insert(p.name.to_string());
                }
            }
        }
    }
    if rescan {
        tracing::info!("plugin directories changed: rescanning");
        // Each new plugin dir once, however many of its paths changed.
        let new_dirs: BTreeSet<PathBuf> = paths
            .iter()
            .filter_map(|p| split(&roots, p).map(|(dir, _)| dir))
            .filter(|dir| !plugins.iter().any(|p| &p.dir == dir))
            .collect();
        let before: Vec<(PathBuf, u64)> = new_dirs
            .into_iter()
            .map(|dir| {
                let f = fingerprint(&dir);
                (dir, f)
            })
            .collect();
        // Not waiting for the plugins to settle: this task must go on seeing changes.
        let (done, _settling) = daemon.rescan_dirs().await;
        loaded.extend(before);
        // Files of other plugins that changed in the same batch reload those plugins, unless
        // the rescan already took care of them.
        let handled =
            |name: &String| done.added.contains(name) || done.changed.contains(name) || done.removed.contains(name);
        reload.retain(|name| !handled(name));
    }
    for name in reload {
        let Some(p) = daemon.plugin(&name) else { continue };
        let now = fingerprint(&p.dir);
        if loaded.insert(p.dir.clone(), now) == Some(now) {
            tracing::debug!(plugin = %name, "files changed back or already loaded: no reload");
            continue;
        }
        tracing::info!(plugin = %name, "files changed: hot reload");
        if p.ctl.is_none() {
            // An invalid plugin has no actor: a rescan picks up a fixed manifest.
            drop(daemon.rescan_dirs().await);
            continue;
        }
        drop(p.send(Command::Reload));
    }
    replaced
}

/// Entries (files and directories) of a plugin dir looked at for a [`fingerprint`] at most (and
/// directory levels).
const FINGERPRINT_FILES: usize = 2000;
const FINGERPRINT_DEPTH: usize = 8;

/// A hash of what a plugin dir holds: each file's path, size, modification time and inode (a
/// file replaced has a new one), through symlinks to files; 0 if it cannot be read.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    // Files through symlinks (their metadata, not the link's).
    walk_files(dir, 0, &mut 0, &mut |path| {
        if let Ok(m) = std::fs::metadata(path) {
            files.push((path.to_owned(), m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH), m.ino()));
        }
    });
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
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
    let Ok(set) = b.build() else { return rel == Path::new("plugin.json") };
    if rel == Path::new("plugin.json") || set.is_match(rel) {
        return true;
    }
    // A directory renamed into place or away is one event, for the directory: what matters is
    // the files under it (audit 19: `mv src.new src` never reloaded a plugin whose main is
    // `src/main.py`). Below a directory that is there, a file the globs match; below one that
    // went, a file a pattern names.
    let full = p.dir.join(rel);
    if full.is_dir() {
        let mut found = false;
        walk_files(&full, 0, &mut 0, &mut |f| found |= f.strip_prefix(&p.dir).is_ok_and(|r| set.is_match(r)));
        return found;
    }
    !full.exists() && patterns.iter().any(|pat| Path::new(pat).starts_with(rel))
}

/// Calls `each` for the files below `dir`, looking at most at [`FINGERPRINT_FILES`] entries
/// (`seen`: files and directories, so that a tree of empty directories costs no more; audit 19:
/// 20,000 of them renamed back and forth held the event loop for a minute) and
/// [`FINGERPRINT_DEPTH`] levels down, directories only where they really are (no symlink loops).
fn walk_files(dir: &Path, depth: usize, seen: &mut usize, each: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if *seen >= FINGERPRINT_FILES {
            return;
        }
        *seen += 1;
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if depth < FINGERPRINT_DEPTH {
                walk_files(&path, depth + 1, seen, each);
            }
            continue;
        }
        each(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of empty directories counts against the walk's bound like files do (audit 19: a
    /// plugin's 20,000 empty directories, renamed back and forth, were walked in full each time).
    #[test]
    fn a_walk_looks_at_a_bounded_number_of_entries_directories_included() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..FINGERPRINT_FILES + 500 {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).unwrap();
        }
        let (mut seen, mut files) = (0, 0);
        walk_files(dir.path(), 0, &mut seen, &mut |_| files += 1);
        assert_eq!((seen, files), (FINGERPRINT_FILES, 0));
    }

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
