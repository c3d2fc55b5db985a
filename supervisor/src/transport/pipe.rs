//! Pipe capacity: a plugin whose lines are large gets larger pipes.
//!
//! A Linux pipe holds 64 KiB by default. A line that does not fit (a document, an image in
//! base64) is written in parts, and writer and reader take turns, a context switch per part: with
//! 16 calls of 64 KiB in flight on one vCPU, plugind switched 2.4 times per call. So once a line
//! of [`WRITE_DIRECT`] bytes or more goes through a plugin's pipe, that pipe grows to
//! [`LARGE_PIPE`] (plugind's CPU per 64 KiB call: 21.0 → 18.8 µs).
//!
//! [`WRITE_DIRECT`]: crate::transport::outbox::WRITE_DIRECT
//!
//! Only then, not at spawn: pipe capacity counts against a per-user budget
//! (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default) when plugind runs without
//! `CAP_SYS_RESOURCE`, and a thousand plugins that only ever pass small lines must not spend it.
//! Growing is best effort: past the budget the kernel refuses (`EPERM`) and the pipe stays as it
//! was. 256 KiB, not the 1 MiB an unprivileged process may ask for: a 1 MiB line then goes in
//! four parts, and the data stays in cache between writer and reader (1 MiB pipes measured no
//! better for 1 MiB lines, and worse at times).

use std::os::fd::{AsFd, AsRawFd};

/// What a plugin's pipe grows to once a large line goes through it.
pub const LARGE_PIPE: usize = 256 * 1024;

/// A stream plugind reads or writes, which may be a pipe: one it can grow, and look into.
pub trait Growable {
    /// Grows the pipe to [`LARGE_PIPE`], if it is one (best effort).
    fn grow(&self) {}

    /// Bytes written to the pipe and not read yet, if it is one (None: cannot tell). What tells
    /// a writer that stalled from a reader that did not run for a while.
    fn unread(&self) -> Option<usize> {
        None
    }
}

impl Growable for tokio::process::ChildStdin {
    fn grow(&self) {
        let _ = grow(self);
    }
}

impl Growable for tokio::process::ChildStdout {
    fn grow(&self) {
        let _ = grow(self);
    }

    fn unread(&self) -> Option<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int through the pointer given.
        let ok = unsafe { libc::ioctl(self.as_raw_fd(), libc::FIONREAD, &mut n) } == 0;
        ok.then(|| usize::try_from(n).unwrap_or(0))
    }
}

impl Growable for tokio::io::DuplexStream {}

impl Growable for tokio::net::unix::OwnedWriteHalf {}

/// Grows the pipe `fd` to [`LARGE_PIPE`]. Refused past the user's pipe budget (`EPERM`): the
/// pipe then stays as it was, which works, so plugind ignores the error.
pub fn grow(fd: impl AsFd) -> nix::Result<()> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(LARGE_PIPE as i32)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's pipes grow to [`LARGE_PIPE`] when asked.
    #[tokio::test]
    async fn child_pipes_grow() {
        let mut child = tokio::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let size = |fd: &dyn AsFd| nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
        assert!(size(&stdin) < LARGE_PIPE && size(&stdout) < LARGE_PIPE);
        stdin.grow();
        stdout.grow();
        assert_eq!((size(&stdin), size(&stdout)), (LARGE_PIPE, LARGE_PIPE));
    }

    /// What waits unread in a child's stdout is seen.
    #[tokio::test]
    async fn unread_bytes_in_a_childs_stdout_are_seen() {
        let mut child =
            tokio::process::Command::new("printf").arg("12345").stdout(std::process::Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        child.wait().await.unwrap();
        assert_eq!(stdout.unread(), Some(5));
        assert_eq!(tokio::io::duplex(8).0.unread(), None);
    }
}
