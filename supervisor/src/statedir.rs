//! The state dir: private to plugind, and used by one plugind at a time (docs/security.md).
//!
//! [`StateDir::lock`] creates the dir with mode 0700 (and tightens an existing one), then takes an
//! exclusive `flock` on `plugind.lock` inside, which holds plugind's pid. A second plugind on the
//! same dir gets [`StateDirError::InUse`] naming the holder and must exit without touching
//! anything: it kills no plugin and removes no socket. The kernel drops the lock when the holder
//! dies, however it dies, so a stale lock file never blocks a new run.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the state dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another live plugind holds the lock.
    #[error("state dir {dir} is in use by another plugind (pid {holder}); stop it or give --state-dir")]
    InUse {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (`?` if unreadable).
        holder: String,
    },
    /// Creating, opening or locking failed.
    #[error("cannot use state dir {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The locked state dir; the lock lasts as long as this value (and plugind).
#[derive(Debug)]
pub struct StateDir {
    _lock: File,
}

/// Subdirectories made with the state dir, private like it.
const SUBDIRS: [&str; 2] = ["data", "tmp"];

impl StateDir {
    /// Creates (mode 0700) and locks `dir`.
    pub fn lock(dir: &Path) -> Result<StateDir, StateDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateDirError::Io { path, source }
        };
        for d in std::iter::once(dir.to_path_buf()).chain(SUBDIRS.iter().map(|s| dir.join(s))) {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
        }
        let path = dir.join("plugind.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_owned();
                let holder = if holder.is_empty() { "?".to_owned() } else { holder };
                return Err(StateDirError::InUse { dir: dir.to_path_buf(), holder });
            }
            return Err(StateDirError::Io { path, source: err });
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(StateDir { _lock: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let first = StateDir::lock(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // flock locks belong to the open file description: a second open conflicts even in-process.
        match StateDir::lock(&dir) {
            Err(StateDirError::InUse { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        StateDir::lock(&dir).unwrap();
    }
}
