//! Taking the process's stdio over for the protocol.
//!
//! The protocol gets private close-on-exec duplicates of fds 0 and 1; then fd 1 becomes a copy of
//! stderr and fd 0 reads `/dev/null`, so stray output and stray reads cannot touch the wire.
//! Pipes and sockets (what plugind gives) are driven by the tokio reactor in non-blocking mode;
//! anything else (a terminal, a file) goes through tokio's blocking-pool file wrapper, because
//! making a terminal non-blocking would also change it for the shell that shares it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Takes stdio over; fails if called twice in one process.
pub(crate) fn take() -> io::Result<(Reader, Writer)> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("stdio is already serving plugind (serve called twice)"));
    }
    // F_DUPFD_CLOEXEC: children the plugin spawns do not inherit the protocol.
    let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    redirect(io::stderr().as_raw_fd(), 1)?;
    let null = File::open("/dev/null")?;
    redirect(null.as_raw_fd(), 0)?;
    Ok((reader(input)?, writer(output)?))
}

/// `dup2(from, to)`.
fn redirect(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only changes the descriptor table; `to` is 0 or 1, which std never closes and
    // which now refers to an open file again, so no `OwnedFd` is invalidated.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_pollable(file: &File) -> io::Result<bool> {
    let kind = file.metadata()?.file_type();
    Ok(kind.is_fifo() || kind.is_socket())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own have no memory effects.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn reader(file: File) -> io::Result<Reader> {
    if is_pollable(&file)? {
        Ok(Box::new(Pipe::new(file)?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }
}

fn writer(file: File) -> io::Result<Writer> {
    if is_pollable(&file)? {
        Ok(Box::new(Pipe::new(file)?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }
}

/// A pipe or socket end driven by the tokio reactor.
struct Pipe(AsyncFd<File>);

impl Pipe {
    fn new(file: File) -> io::Result<Self> {
        let fd = OwnedFd::from(file);
        set_nonblocking(&fd)?;
        // `AsyncFd::new` is deprecated in tokio 1.54 because an arbitrary `T: AsRawFd` may close or
        // swap its fd; a `File` owns its fd for its whole life, which is what `AsyncFd::register`
        // (1.54+) asks its caller to promise. `new` keeps the workspace's `tokio = "1.47"` honest.
        #[allow(deprecated)]
        let fd = AsyncFd::new(File::from(fd))?;
        Ok(Self(fd))
    }
}

impl AsyncRead for Pipe {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            match guard.try_io(|f| f.get_ref().read(buf.initialize_unfilled())) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
