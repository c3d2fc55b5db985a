//! A bound on what `--listen` WebSocket frames can make plugind allocate before their bytes
//! arrive.
//!
//! soketto (the WebSocket crate under jsonrpsee, and ours) allocates, and zero-fills, a frame's
//! whole announced payload as soon as it has read the frame's header. A 14-byte header announcing
//! 32 MiB therefore cost plugind 32 MiB at once: 40 WebSockets that each sent one header and
//! stalled took it from 15 MB to 1.3 GB, 70 got it OOM-killed. [`FrameGate`] sits under soketto
//! and reads the frame headers as they pass (without changing a byte): a frame announcing more
//! than [`SMALL_FRAME`] is let through only once its size is taken from one budget shared by
//! every WebSocket ([`BUDGET_KIB`]), and gives it back when its last byte has passed. So what
//! plugind holds for frames still arriving is bounded across connections; past the budget, a
//! large frame waits (its connection is not read meanwhile), while small ones never do.

use futures::{AsyncRead, AsyncWrite};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// Frames up to this size pass without taking from the budget.
pub const SMALL_FRAME: u64 = 64 * 1024;

/// Everything large frames still arriving may announce at once, over all WebSockets, in KiB.
pub const BUDGET_KIB: usize = 256 * 1024;

fn budget() -> Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BUDGET_KIB))).clone()
}

/// Where the reader is in the stream of frames.
enum At {
    /// Reading a header: its bytes so far (at most 14), held until the header is whole.
    Header { bytes: [u8; 14], have: usize },
    /// A whole header, waiting for its budget; then handed on.
    Waiting { bytes: [u8; 14], len: usize, payload: u64, kib: u32 },
    /// Handing on the header's bytes from `sent`, then its payload.
    Sending { bytes: [u8; 14], len: usize, sent: usize, payload: u64, _permit: Option<OwnedSemaphorePermit> },
}

/// A byte stream read under the frame budget: see the module docs.
pub struct FrameGate<T> {
    inner: T,
    at: At,
    budget: PollSemaphore,
    /// The largest frame soketto takes: one announcing more is refused from its header, with
    /// nothing allocated, so it needs no budget.
    max_frame: u64,
}

impl<T> FrameGate<T> {
    /// `inner`, positioned at the first frame header (the handshake is over).
    pub fn new(inner: T, max_frame: usize) -> Self {
        FrameGate {
            inner,
            at: At::Header { bytes: [0; 14], have: 0 },
            budget: PollSemaphore::new(budget()),
            max_frame: max_frame as u64,
        }
    }
}

/// The length of a frame header that starts with `first_two`.
fn header_len(first_two: [u8; 2]) -> usize {
    let extended = match first_two[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length a whole frame header announces.
fn payload_len(bytes: &[u8]) -> u64 {
    match bytes[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        127 => u64::from_be_bytes(bytes[2..10].try_into().unwrap_or_default()),
        n => u64::from(n),
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameGate<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match &mut this.at {
                At::Header { bytes, have } => {
                    let need = if *have < 2 { 2 } else { header_len([bytes[0], bytes[1]]) };
                    if *have == need {
                        let payload = payload_len(&bytes[..need]);
                        let kib = if payload > SMALL_FRAME && payload <= this.max_frame {
                            u32::try_from(payload.div_ceil(1024)).unwrap_or(u32::MAX).min(BUDGET_KIB as u32)
                        } else {
                            0
                        };
                        this.at = At::Waiting { bytes: *bytes, len: need, payload, kib };
                        continue;
                    }
                    let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut bytes[*have..need]))?;
                    if n == 0 {
                        // The end of the stream: what was held goes on, and then the end.
                        if *have == 0 {
                            return Poll::Ready(Ok(0));
                        }
                        let (bytes, len) = (*bytes, *have);
                        this.at = At::Sending { bytes, len, sent: 0, payload: 0, _permit: None };
                        continue;
                    }
                    *have += n;
                }
                At::Waiting { bytes, len, payload, kib } => {
                    let permit = if *kib > 0 {
                        match ready!(this.budget.poll_acquire_many(cx, *kib)) {
                            Some(permit) => Some(permit),
                            None => return Poll::Ready(Err(io::Error::other("the frame budget is closed"))),
                        }
                    } else {
                        None
                    };
                    let (bytes, len, payload) = (*bytes, *len, *payload);
                    this.at = At::Sending { bytes, len, sent: 0, payload, _permit: permit };
                }
                At::Sending { bytes, len, sent, payload, .. } => {
                    if *sent < *len {
                        let n = (*len - *sent).min(buf.len());
                        buf[..n].copy_from_slice(&bytes[*sent..*sent + n]);
                        *sent += n;
                        if *sent == *len && *payload == 0 {
                            this.at = At::Header { bytes: [0; 14], have: 0 };
                        }
                        return Poll::Ready(Ok(n));
                    }
                    let room = usize::try_from(*payload).unwrap_or(usize::MAX).min(buf.len());
                    let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..room]))?;
                    if n == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    *payload -= n as u64;
                    if *payload == 0 {
                        // The frame is in: its budget goes back.
                        this.at = At::Header { bytes: [0; 14], have: 0 };
                    }
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameGate<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt as _;

    /// A frame of `payload` bytes (masked with key 0, as a client sends it).
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81u8];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// Every byte passes unchanged, whatever the sizes of the reads, for frames small and large.
    #[tokio::test]
    async fn the_stream_passes_unchanged() {
        let mut stream = Vec::new();
        for size in [0, 5, 125, 126, 1000, 65_535, 65_536, 200_000] {
            stream.extend(frame(&vec![b'x'; size]));
        }
        for chunk in [1, 3, 7, 4096, 1 << 20] {
            let mut gate = FrameGate::new(futures::io::Cursor::new(stream.clone()), 1 << 20);
            let mut out = Vec::new();
            let mut buf = vec![0u8; chunk];
            loop {
                let n = gate.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, stream, "reads of {chunk}");
        }
    }
}
