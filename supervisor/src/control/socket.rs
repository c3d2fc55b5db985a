//! Binding the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be bound. Fatal: plugind does not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another plugind answers on the path.
    #[error("another plugind is already listening on {0}; stop it first or pass a different --socket")]
    AlreadyRunning(PathBuf),
    /// Another user could move the socket aside and put one of their own in its place.
    #[error(
        "control socket {path}: its directory {} belongs to uid {owner}, neither plugind's nor root's \
         (or others may write it and it is not sticky): whoever owns it could replace the socket \
         with their own; use a directory of plugind's user (or let plugind make it)",
        dir.display()
    )]
    UnsafeDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// The directory's owner.
        owner: u32,
    },
    /// The OS refused.
    #[error("cannot bind control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path` with mode 0600, replacing a stale socket file but never a live daemon's.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(io)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        // A directory another user made (before plugind started) lets them rename the socket
        // aside and bind their own, which clients of the path then talk to (audit 19). /tmp is
        // fine: others may write it, but its sticky bit keeps them off our socket.
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(parent).map_err(io)?;
        let owner = m.uid();
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (owner != nix::unistd::geteuid().as_raw() && owner != 0) || others_write {
            return Err(BindError::UnsafeDirectory { path: path.to_path_buf(), dir: parent.to_path_buf(), owner });
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let _ = BOUND.set(path.to_path_buf());
    Ok(listener)
}

/// The socket this plugind bound, for an exit that skips the graceful path (a second signal) to
/// remove it: never another plugind's, which a signal before the bind could otherwise take.
static BOUND: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Removes the socket this plugind bound, if it bound one.
pub fn remove_bound() {
    if let Some(path) = BOUND.get() {
        let _ = std::fs::remove_file(path);
    }
}
