//! Newline-delimited framing with a size cap.
//!
//! [`FrameDecoder`] splits a byte stream into lines. A line longer than the limit is not buffered
//! whole: the decoder yields one [`Frame::Oversized`] as soon as the line is found too long (so
//! the owner can report it, and end the call it was for at once), then drops its bytes as they
//! arrive, up to the next `\n`. Bytes are not checked for UTF-8 here; the JSON
//! parser rejects invalid text, which is then reported like any other non-JSON line.
//!
//! A line is held whole while it arrives, up to the limit. A decoder [`taking_turns`] holds at
//! most [`LONG_LINE`] of a line (and what the read that passed it brought) before its owner
//! takes its plugin's [`LongLineTurn`]: one instance of a plugin at a time reads a line longer
//! than that, so a plugin holds about [`LONG_LINE`] and a read per instance and one line of the
//! limit, not the limit per instance.
//!
//! [`taking_turns`]: FrameDecoder::taking_turns

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};

/// Default frame limit (docs/protocol.md): 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Spare room past the limit, so reading the byte that proves a line too long needs no growth.
const READ_ROOM: usize = 8 * 1024;

/// A buffer left this much larger than a normal read is dropped once the long line is gone.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// Room kept in the buffer while the rest of a dropped line is read and thrown away: without
/// it, the emptied buffer had no capacity and each read took 8 bytes (a 100 MB line took 18 s).
const DISCARD_ROOM: usize = 64 * 1024;

/// How much of a line a plugin's stdout decoder reads before it needs the plugin's turn
/// ([`FrameDecoder::taking_turns`]). Answers of a megabyte or less (most) never wait for one.
pub const LONG_LINE: usize = 1024 * 1024;

/// How long a long line holding its plugin's turn may make no progress (less than
/// [`TURN_MIN_PROGRESS`]) while another instance
/// waits for the turn ([`LongLineTurn::is_awaited`]) before its reader drops it
/// ([`FrameDecoder::abandon_line`]).
pub const TURN_STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// Less than this much more of a long line in [`TURN_STALL`] counts as no progress: a line
/// trickled a byte at a time held the turn for as long as it liked, and its siblings' answers
/// ran out of time behind it. (Any writer that is not stalling writes far faster.)
pub const TURN_MIN_PROGRESS: usize = 64 * 1024;

/// One item of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its `\n` (a trailing `\r` is removed too).
    Line(Bytes),
    /// A line over the limit, dropped: yielded as soon as it is found too long; the rest of it,
    /// up to its `\n`, is dropped as it arrives, with no other frame.
    Oversized {
        /// Its length when it was found too long: all of it if its `\n` had arrived, else as
        /// much as had (more than the limit).
        len: usize,
        /// Its first [`HEAD`] bytes (fewer under a smaller limit): enough to read the id of an
        /// answer or request written id first, so that the call it was for ends at once
        /// instead of at its deadline.
        head: Bytes,
    },
    /// A line longer than the decoder's threshold (for a plugin, [`LONG_LINE`]) has begun, and
    /// this decoder takes turns: its owner reads no more until it has its plugin's
    /// [`LongLineTurn`] and says so with [`FrameDecoder::take_turn`]. Only from a decoder
    /// [`taking_turns`].
    ///
    /// [`taking_turns`]: FrameDecoder::taking_turns
    LongLine,
    /// More of a line over the limit was dropped: this many bytes since the last report (its
    /// `\n` included when it came). Only from a decoder [`reporting_drops`], whose owner counts
    /// them (a plugin's chatter, `crate::transport::chatter`).
    ///
    /// [`reporting_drops`]: FrameDecoder::reporting_drops
    Dropped(usize),
}

/// One plugin's turn at long lines, shared by its instances (clones share it): the instance
/// holding it may read a line past [`LONG_LINE`], up to the frame limit; the others wait before
/// reading more of theirs. Each holder only reads what its own plugin process is writing, so a
/// wait ends when that line does; a holder whose line stops coming while others wait
/// ([`LongLineTurn::is_awaited`]) gives it up (the instance task drops the line).
#[derive(Clone, Debug)]
pub struct LongLineTurn {
    turn: Arc<Semaphore>,
    /// How many wait for the turn.
    waiting: Arc<AtomicUsize>,
}

/// One waiter counted in [`LongLineTurn::waiting`], for as long as it waits.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The turn, held: dropped once the long line is read.
#[derive(Debug)]
pub struct Turn {
    _held: OwnedSemaphorePermit,
}

impl LongLineTurn {
    /// A plugin's turn, free.
    pub fn new() -> Self {
        LongLineTurn { turn: Arc::new(Semaphore::new(1)), waiting: Arc::new(AtomicUsize::new(0)) }
    }

    /// Waits for the turn (first come, first served).
    pub fn wait(&self) -> impl std::future::Future<Output = Turn> + Send + 'static {
        let (turn, waiting) = (self.turn.clone(), self.waiting.clone());
        async move {
            let _waiting = Waiting::new(waiting);
            Turn { _held: turn.acquire_owned().await.expect("UNWRAP: the semaphore is never closed") }
        }
    }

    /// Whether an instance waits for the turn.
    pub fn is_awaited(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

impl Default for LongLineTurn {
    fn default() -> Self {
        Self::new()
    }
}

/// How much of a discarded line [`Frame::Oversized`] keeps.
pub const HEAD: usize = 512;

/// Splits bytes into [`Frame`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    /// Bytes already scanned for `\n` in the buffer (so each byte is scanned once).
    scanned: usize,
    /// Whether the rest of a line already reported (too long, or abandoned) is being dropped.
    discarding: bool,
    /// The length of the last line, if it was longer than a read: the next line is likely as
    /// long (a client or plugin sending documents sends several), so room for it is made at
    /// once, not by doubling, which copied a 64 KiB line's first 120 KiB on its way in.
    last_long: usize,
    /// Whether to note a `\r` inside a line ([`FrameDecoder::noting_cr`]).
    note_cr: bool,
    /// Whether the line being read has a `\r` in it (not the one before its `\n`).
    cr_inside: bool,
    /// `cr_inside` of the last line yielded.
    last_had_cr: bool,
    /// No line yielded yet: the first may start with a byte-order mark, which is skipped.
    first: bool,
    /// How long a line may grow before it waits for a turn ([`FrameDecoder::taking_turns`]).
    turns: Option<usize>,
    /// Whether the line being read has its plugin's turn ([`FrameDecoder::take_turn`]).
    has_turn: bool,
    /// Whether bytes dropped from a line over the limit are reported ([`Frame::Dropped`]).
    report_drops: bool,
}

/// The UTF-8 byte-order mark, which some runtimes write before their first output.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl FrameDecoder {
    /// A decoder yielding lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            scanned: 0,
            discarding: false,
            last_long: 0,
            note_cr: false,
            cr_inside: false,
            last_had_cr: false,
            first: true,
            turns: None,
            has_turn: false,
            report_drops: false,
        }
    }

    /// The same decoder, yielding [`Frame::LongLine`] once a line passes `past` bytes (for a
    /// plugin's stdout, [`LONG_LINE`]), and reading no further into it until
    /// [`take_turn`](FrameDecoder::take_turn).
    pub fn taking_turns(mut self, past: usize) -> Self {
        self.turns = Some(past);
        self
    }

    /// The same decoder, yielding [`Frame::Dropped`] for the bytes it drops of a line over the
    /// limit (once per read), so that its owner can count them: dropping an endless line costs
    /// a read and a scan per 64 KiB, about a third of a core at a pipe's speed.
    pub fn reporting_drops(mut self) -> Self {
        self.report_drops = true;
        self
    }

    /// The owner has its plugin's turn: the long line is read on, to its end or the limit.
    pub fn take_turn(&mut self) {
        self.has_turn = true;
    }

    /// Whether the line being read still has the turn: false once it ended (or was found too
    /// long and is being dropped), when the owner lets the turn go.
    pub fn has_turn(&self) -> bool {
        self.has_turn
    }

    /// Drops the unfinished line in `buf` (all it holds), and the rest of it as it arrives up to
    /// its `\n`, as for a line over the limit; returns its length so far and its head. For a
    /// line found too long, and for one its owner gives up on (stalled mid-way while it holds
    /// its plugin's turn).
    pub fn abandon_line(&mut self, buf: &mut BytesMut) -> (usize, Bytes) {
        let head = Bytes::copy_from_slice(&buf[..HEAD.min(self.max).min(buf.len())]);
        let len = buf.len();
        self.discarding = true;
        self.has_turn = false;
        self.cr_inside = false;
        buf.clear();
        release(buf);
        buf.reserve(DISCARD_ROOM);
        self.scanned = 0;
        (len, head)
    }

    /// [`FrameDecoder::abandon_line`] on what a reader of `frames` holds.
    pub fn abandon_line_in<R>(frames: &mut FramedRead<R, FrameDecoder>) -> (usize, Bytes) {
        let mut buf = std::mem::take(frames.read_buffer_mut());
        let abandoned = frames.decoder_mut().abandon_line(&mut buf);
        *frames.read_buffer_mut() = buf;
        abandoned
    }

    /// The same decoder, noting whether each line has a `\r` in it ([`last_line_has_cr`]): a
    /// search for two bytes instead of one, which costs as much again (a control connection's
    /// large params are forwarded from the line only if it has none).
    ///
    /// [`last_line_has_cr`]: FrameDecoder::last_line_has_cr
    pub fn noting_cr(mut self) -> Self {
        self.note_cr = true;
        self
    }

    /// Whether the last line yielded has a `\r` in it (always true unless [`noting_cr`]). A
    /// line without one has no line break at all (`\n` ends it), so a value from it can be
    /// forwarded to a plugin as it is: some line readers (universal newlines: Python's `open()`,
    /// Node's `readline`) break lines at a lone `\r` too, so plugind takes them out of what it
    /// forwards (see `router::ExecuteOut`), which needs a pass over the value unless this says
    /// there is none.
    ///
    /// [`noting_cr`]: FrameDecoder::noting_cr
    pub fn last_line_has_cr(&self) -> bool {
        !self.note_cr || self.last_had_cr
    }

    /// The next `\n` at or after `scanned`, noting a `\r` inside the line on the way; None with
    /// `scanned` moved past what was looked at (not past a last `\r`, which a `\n` may follow).
    fn find_newline(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.note_cr {
            let found = memchr::memchr(b'\n', &buf[self.scanned..]).map(|i| self.scanned + i);
            if found.is_none() {
                self.scanned = buf.len();
            }
            return found;
        }
        let mut from = self.scanned;
        loop {
            let Some(at) = memchr::memchr2(b'\n', b'\r', &buf[from..]).map(|i| from + i) else {
                self.scanned = buf.len();
                return None;
            };
            if buf[at] == b'\n' {
                return Some(at);
            }
            match buf.get(at + 1) {
                Some(b'\n') => return Some(at + 1),
                Some(_) => {
                    self.cr_inside = true;
                    from = at + 1;
                }
                None => {
                    self.scanned = at;
                    return None;
                }
            }
        }
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            let newline = self.find_newline(buf);
            if self.discarding {
                match newline {
                    Some(i) => {
                        buf.advance(i + 1);
                        release(buf);
                        self.scanned = 0;
                        self.discarding = false;
                        self.cr_inside = false;
                        if self.report_drops {
                            return Ok(Some(Frame::Dropped(i + 1)));
                        }
                        continue;
                    }
                    None => {
                        let dropped = buf.len();
                        buf.clear();
                        release(buf);
                        buf.reserve(DISCARD_ROOM);
                        self.scanned = 0;
                        if self.report_drops && dropped > 0 {
                            return Ok(Some(Frame::Dropped(dropped)));
                        }
                        return Ok(None);
                    }
                }
            }
            match newline {
                Some(i) if i <= self.max => {
                    // A turn taken was this line's: the buffer held nothing else then.
                    self.has_turn = false;
                    let mut line = buf.split_to(i + 1);
                    // After a long line, the rest moves to a buffer of its own: the big one goes
                    // with the line.
                    release(buf);
                    self.last_long = if i >= READ_ROOM { i } else { 0 };
                    line.truncate(i);
                    if line.last() == Some(&b'\r') {
                        line.truncate(i - 1);
                    }
                    self.scanned = 0;
                    self.last_had_cr = std::mem::take(&mut self.cr_inside);
                    if self.first {
                        self.first = false;
                        if line.starts_with(BOM) {
                            line.advance(BOM.len());
                        }
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue; // blank lines are keep-alives, not messages
                    }
                    return Ok(Some(Frame::Line(line.freeze())));
                }
                Some(i) => {
                    // Complete but too long: dropped and reported whole.
                    let head = Bytes::copy_from_slice(&buf[..HEAD.min(self.max)]);
                    buf.advance(i + 1);
                    release(buf);
                    self.scanned = 0;
                    self.cr_inside = false;
                    self.has_turn = false;
                    return Ok(Some(Frame::Oversized { len: i, head }));
                }
                None if buf.len() > self.max => {
                    // Too long before its end: reported now, the rest dropped as it comes.
                    let (len, head) = self.abandon_line(buf);
                    return Ok(Some(Frame::Oversized { len, head }));
                }
                None if !self.has_turn && self.turns.is_some_and(|past| buf.len() > past) => {
                    return Ok(Some(Frame::LongLine))
                }
                None => {
                    // A long line on its way: make room for the longest allowed at once. Growing
                    // by doubling copies the line each time, and the last doubling would briefly
                    // hold the old buffer beside one of twice the limit (48 MiB for 16).
                    let room = self.max + READ_ROOM;
                    if buf.len() > self.max / 16 && buf.capacity() < room {
                        buf.reserve(room - buf.len());
                    } else if self.last_long > buf.len()
                        && !buf.is_empty()
                        && buf.capacity() < self.last_long + READ_ROOM
                    {
                        // As long as the last line, with a read's room to find its end; only
                        // once a line has begun (an idle plugin that once wrote a 15 MiB line
                        // does not hold 15 MiB of empty buffer: 64 instances held a GB).
                        buf.reserve(self.last_long + READ_ROOM - buf.len());
                    } else if buf.len() >= READ_ROOM && buf.capacity() - buf.len() < buf.len() {
                        // Longer than a read: room for as much again in one step. Left to the
                        // reader's `reserve(1)`, a buffer shared with lines still in flight is
                        // copied into one just big enough, then grown and copied again.
                        buf.reserve(buf.len());
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if self.discarding {
            // Reported when it was found too long; what came of it since is gone.
            self.discarding = false;
            buf.clear();
            return Ok(None);
        }
        if buf.is_empty() || buf.iter().all(u8::is_ascii_whitespace) {
            buf.clear();
            return Ok(None);
        }
        // A last line without `\n`: deliver it, the peer is gone anyway. (Said to have a `\r`:
        // not worth a look.)
        self.scanned = 0;
        self.last_had_cr = true;
        self.has_turn = false;
        Ok(Some(Frame::Line(buf.split().freeze())))
    }
}

/// Drops a buffer grown for a long line once what is left of it is small, so a plugin that once
/// wrote a huge line does not keep megabytes for the rest of its life.
fn release(buf: &mut BytesMut) {
    if buf.capacity() > KEEP_CAPACITY && buf.len() < KEEP_CAPACITY / 2 {
        *buf = BytesMut::from(&buf[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    async fn frames(chunks: Vec<&'static [u8]>, max: usize) -> Vec<Frame> {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for c in chunks {
                tx.write_all(c).await.unwrap();
                tx.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let out: Vec<Frame> = FramedRead::new(rx, FrameDecoder::new(max)).map(|f| f.unwrap()).collect().await;
        writer.await.unwrap();
        out
    }

    /// After a long line, the next one gets room for as much at its first partial read, not
    /// by doubling (each doubling copies what was read so far); after a short line, no such room.
    #[test]
    fn room_for_a_long_line_after_a_long_line() {
        let mut d = FrameDecoder::default();
        let long = [vec![b'x'; 40_000], b"\n".to_vec()].concat();
        let mut buf = BytesMut::from(&long[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if l.len() == 40_000));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < READ_ROOM, "nothing begun, no room taken: {}", buf.capacity());
        buf.extend_from_slice(&[b'y'; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= 40_000 + READ_ROOM, "{}", buf.capacity());
        buf.extend_from_slice(b"\nshort\n");
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if l.len() == 100));
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if &l[..] == b"short"));
        let mut buf = BytesMut::from(&b"zz"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < READ_ROOM, "{}", buf.capacity());
    }

    /// A decoder taking turns stops at a line past `LONG_LINE` until it has the turn, reads the
    /// line whole once it has, and needs the turn again for the next long line; lines up to
    /// `LONG_LINE`, and a decoder not taking turns, never stop.
    #[test]
    fn a_long_line_waits_for_its_turn() {
        let mut d = FrameDecoder::default().taking_turns(LONG_LINE);
        let mut buf = BytesMut::from(&b"short\n"[..]);
        buf.extend_from_slice(&vec![b'x'; LONG_LINE]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if &l[..] == b"short"));
        assert_eq!(d.decode(&mut buf).unwrap(), None, "not past LONG_LINE yet");
        buf.extend_from_slice(b"x");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::LongLine));
        assert!(buf.capacity() < 2 * LONG_LINE + READ_ROOM, "no room made for the limit without the turn");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::LongLine), "asked again: still waiting");
        d.take_turn();
        assert!(d.has_turn());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"x\nnext");
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if l.len() == LONG_LINE + 2));
        assert!(!d.has_turn(), "the turn ends with its line");
        buf.extend_from_slice(&vec![b'y'; LONG_LINE]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::LongLine), "the next long line waits again");
        // A line found too long is dropped: it needs the turn no longer.
        let mut d = FrameDecoder::new(LONG_LINE + 10).taking_turns(LONG_LINE);
        let mut buf = BytesMut::from(&vec![b'z'; LONG_LINE + 1][..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::LongLine));
        d.take_turn();
        buf.extend_from_slice(&[b'z'; 20]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Oversized { len, .. })) if len == LONG_LINE + 21));
        assert!(!d.has_turn() && buf.is_empty());
        // Not taking turns: read whole.
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&vec![b'x'; 2 * LONG_LINE][..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\n");
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Line(l))) if l.len() == 2 * LONG_LINE));
    }

    /// One holder of a plugin's turn at a time, the next in the order they asked.
    #[tokio::test]
    async fn one_turn_at_a_time_in_order() {
        let turns = LongLineTurn::new();
        let first = turns.wait().await;
        assert!(!turns.is_awaited());
        let mut second = Box::pin(turns.clone().wait());
        let mut third = Box::pin(turns.wait());
        assert!(futures::poll!(&mut second).is_pending() && futures::poll!(&mut third).is_pending());
        assert!(turns.is_awaited());
        drop(first);
        assert!(futures::poll!(&mut third).is_pending(), "the second asked first");
        let second = second.await;
        assert!(futures::poll!(&mut third).is_pending());
        drop(second);
        third.await;
        assert!(!turns.is_awaited());
        // A waiter that gives up waits no more.
        let held = turns.wait().await;
        let mut gone = Box::pin(turns.wait());
        assert!(futures::poll!(&mut gone).is_pending() && turns.is_awaited());
        drop(gone);
        assert!(!turns.is_awaited());
        drop(held);
    }

    /// A `\r` inside a line is noted, wherever the reads split it; one before `\n` is not (it is
    /// taken off).
    #[test]
    fn notes_a_cr_inside_a_line() {
        for (text, want) in [
            (&b"{\"a\":1}\n"[..], false),
            (b"{\"a\":1}\r\n", false),
            (b"{\"a\":\r1}\n", true),
            (b"{\"a\":1}\r\r\n", true),
            (b"\r{}\n", true),
        ] {
            for cut in 0..text.len() {
                let mut d = FrameDecoder::default().noting_cr();
                let mut buf = BytesMut::from(&text[..cut]);
                let first = d.decode(&mut buf).unwrap();
                buf.extend_from_slice(&text[cut..]);
                let line = first.or_else(|| d.decode(&mut buf).unwrap());
                assert!(matches!(line, Some(Frame::Line(_))), "{text:?} cut at {cut}");
                assert_eq!(d.last_line_has_cr(), want, "{text:?} cut at {cut}");
            }
        }
        // Not noting, every line may have one.
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&b"{}\n"[..]);
        d.decode(&mut buf).unwrap();
        assert!(d.last_line_has_cr());
        // The flag is the last line's: a line without one after a line with one.
        let mut d = FrameDecoder::default().noting_cr();
        let mut buf = BytesMut::from(&b"{\r}\n{}\n"[..]);
        d.decode(&mut buf).unwrap();
        assert!(d.last_line_has_cr());
        d.decode(&mut buf).unwrap();
        assert!(!d.last_line_has_cr());
    }

    #[tokio::test]
    async fn split_reads_make_one_line() {
        let out = frames(vec![b"{\"a\":", b"1}", b"\n"], 1024).await;
        assert_eq!(out, vec![line("{\"a\":1}")]);
    }

    #[tokio::test]
    async fn two_messages_in_one_read() {
        let out = frames(vec![b"{\"a\":1}\n{\"b\":2}\n"], 1024).await;
        assert_eq!(out, vec![line("{\"a\":1}"), line("{\"b\":2}")]);
    }

    /// A line over the limit is reported once, as soon as it is found too long (with as much
    /// of it as had come), and the next line survives.
    #[tokio::test]
    async fn oversized_line_is_dropped_and_reported_and_the_next_line_survives() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 5000].into_boxed_slice());
        let out = frames(vec![b"{}\n", big, big, b"\n{\"ok\":1}\n"], 1000).await;
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], line("{}"));
        let Frame::Oversized { len, head } = &out[1] else { panic!("{out:?}") };
        assert!((1001..=5000).contains(len), "reported once over the limit, before its end: {len}");
        assert_eq!(head, &Bytes::from(vec![b'x'; HEAD]));
        assert_eq!(out[2], line("{\"ok\":1}"));
    }

    #[tokio::test]
    async fn oversized_complete_line_in_one_chunk() {
        let out = frames(vec![b"0123456789\nok\n"], 5).await;
        assert_eq!(out, vec![Frame::Oversized { len: 10, head: Bytes::from_static(b"01234") }, line("ok")]);
    }

    #[tokio::test]
    async fn invalid_utf8_and_crlf_pass_through_as_bytes() {
        let out = frames(vec![b"\xff\xfe\r\n", b"plain\r\n"], 100).await;
        assert_eq!(out, vec![Frame::Line(Bytes::from_static(b"\xff\xfe")), line("plain")]);
    }

    #[tokio::test]
    async fn blank_lines_are_skipped_and_last_line_without_newline_is_kept() {
        let out = frames(vec![b"\n\n  \nlast"], 100).await;
        assert_eq!(out, vec![line("last")]);
    }

    #[test]
    fn buffer_never_grows_past_the_limit_while_discarding() {
        let mut d = FrameDecoder::new(10);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'y'; 64]);
        let head = Bytes::from_static(b"yyyyyyyyyy");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Oversized { len: 64, head }), "reported at once");
        assert!(buf.is_empty());
        for _ in 0..100 {
            buf.extend_from_slice(&[b'y'; 64]);
            assert_eq!(d.decode(&mut buf).unwrap(), None);
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"\nok\n");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("ok")), "nothing more for its end");
    }

    /// While the rest of a dropped line is thrown away, the buffer keeps room for reads of a
    /// useful size (emptied to no capacity, each read took 8 bytes).
    #[test]
    fn a_dropped_line_is_read_away_in_large_reads() {
        let mut d = FrameDecoder::new(2 * KEEP_CAPACITY);
        let mut buf = BytesMut::from(&vec![b'y'; 2 * KEEP_CAPACITY + 1][..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Oversized { .. }))));
        assert!(
            buf.is_empty() && buf.capacity() >= DISCARD_ROOM && buf.capacity() < KEEP_CAPACITY,
            "{}",
            buf.capacity()
        );
        buf.extend_from_slice(&[b'y'; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty() && buf.capacity() >= DISCARD_ROOM, "{}", buf.capacity());
    }

    /// A decoder reporting drops yields every byte of an oversized line it drops, once per read,
    /// and nothing for an empty read; one that does not, nothing.
    #[test]
    fn drops_are_reported_to_the_last_byte_when_asked() {
        for report in [true, false] {
            let d = FrameDecoder::new(8);
            let mut d = if report { d.reporting_drops() } else { d };
            let mut buf = BytesMut::from(&b"0123456789ab"[..]);
            assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Oversized { len: 12, .. }))));
            let mut dropped = 0;
            for chunk in [&b"cdefgh"[..], b"", b"ij\nok\n"] {
                buf.extend_from_slice(chunk);
                while let Some(frame) = d.decode(&mut buf).unwrap() {
                    match frame {
                        Frame::Dropped(n) => dropped += n,
                        other => assert_eq!(other, line("ok")),
                    }
                }
            }
            assert_eq!(dropped, if report { 6 + 3 } else { 0 }, "the rest, with its newline");
        }
    }

    /// A line given up on by its owner is dropped to its end like one over the limit.
    #[test]
    fn an_abandoned_line_is_dropped_to_its_end() {
        let mut d = FrameDecoder::default().taking_turns(4);
        let mut buf = BytesMut::from(&b"{\"id\":7,\"result\":\"xx"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::LongLine));
        d.take_turn();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        let (len, head) = d.abandon_line(&mut buf);
        assert_eq!((len, &head[..]), (20, &b"{\"id\":7,\"result\":\"xx"[..]));
        assert!(!d.has_turn() && buf.is_empty());
        buf.extend_from_slice(b"xxxx\"}\n{}\n");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("{}")));
    }

    /// A byte-order mark before the first line is skipped; anywhere else it stays (and the line
    /// is then not JSON, as it should be).
    #[test]
    fn a_bom_before_the_first_line_is_skipped() {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF{}\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Line(Bytes::from_static(b"{\"a\":1}"))));
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Line(Bytes::from_static(b"\xEF\xBB\xBF{}"))));
    }
}
