//! The daemon's settings (flags today; the TOML config file maps onto the same struct).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How plugind's own log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of one plugind.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories scanned for plugins (`--plugins`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Control socket path.
    pub socket: PathBuf,
    /// Where state lives (kv store, data dirs, temp dirs).
    pub state_dir: PathBuf,
    /// Hot reload on file changes.
    pub watch: bool,
    /// Health ping period (SPEC: 10 s).
    pub ping_interval: Duration,
    /// Log lines kept per plugin.
    pub log_lines: usize,
}

impl Config {
    /// Defaults around the given plugin dirs and socket.
    pub fn new(plugin_dirs: Vec<PathBuf>, socket: PathBuf, state_dir: PathBuf) -> Self {
        Config { plugin_dirs, socket, state_dir, watch: true, ping_interval: Duration::from_secs(10), log_lines: 1000 }
    }
}

/// Paths under the state dir.
#[derive(Debug, Clone)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    /// Paths under `root`.
    pub fn new(root: &Path) -> Self {
        StatePaths { root: root.to_path_buf() }
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A plugin's data dir (with `storage`).
    pub fn data_dir(&self, plugin: &str) -> PathBuf {
        self.root.join("data").join(plugin)
    }

    /// An instance's private temp dir.
    pub fn tmp_dir(&self, plugin: &str, instance: u64) -> PathBuf {
        self.root.join("tmp").join(format!("{plugin}-{instance}"))
    }
}

/// The control socket path when none is given (SPEC §4): `$PLUGIND_SOCKET`, else
/// `$RUNTIME_DIRECTORY/plugind.sock`, else `$XDG_RUNTIME_DIR/plugind.sock`, else
/// `/tmp/plugind-$UID.sock`.
pub fn default_socket() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("PLUGIND_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(d) = var("RUNTIME_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return PathBuf::from(first).join("plugind.sock");
    }
    if let Some(d) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("plugind.sock");
    }
    PathBuf::from(format!("/tmp/plugind-{}.sock", nix::unistd::getuid()))
}

/// The state dir when none is given: `$STATE_DIRECTORY`, else `./state`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d.to_string_lossy().split(':').next().unwrap_or_default()),
        None => PathBuf::from("state"),
    }
}
