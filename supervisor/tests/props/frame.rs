//! Properties of [`FrameDecoder`], shared by the proptests (`supervisor/tests/prop.rs`) and the
//! cargo-fuzz target `frame_decoder` (`fuzz/`), which both include this file with `#[path]`.
//!
//! The reference [`model`] is written from the decoder's contract (docs/protocol.md and
//! docs/design-choices.md), not from its code: lines end at `\n`; a line longer than the limit is
//! reported once as `Oversized`, as soon as more than the limit of it has come (with its full
//! length if its `\n` came in the same read, else with as much as had come: [`same_frames`]
//! checks it lies between); one trailing `\r` is stripped from a
//! complete line; blank lines are skipped; a last line without `\n` is delivered at EOF as is.

#![allow(dead_code)] // each includer uses part of it

use bytes::BytesMut;
use plugind::transport::frame::{Frame, FrameDecoder, HEAD};
use tokio_util::codec::Decoder;

fn blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// The frames `data` must decode to with a limit of `max` bytes per line.
pub fn model(data: &[u8], max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default(); // after the last `\n`: the unterminated rest
    for p in pieces {
        if p.len() > max {
            out.push(oversized(p, max));
        } else {
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            if !blank(p) {
                out.push(Frame::Line(bytes::Bytes::copy_from_slice(p)));
            }
        }
    }
    if last.len() > max {
        out.push(oversized(last, max));
    } else if !blank(last) {
        out.push(Frame::Line(bytes::Bytes::copy_from_slice(last)));
    }
    out
}

/// A line over the limit: its length, and its first bytes (as many as the limit, at most `HEAD`).
pub fn oversized(line: &[u8], max: usize) -> Frame {
    Frame::Oversized { len: line.len(), head: bytes::Bytes::copy_from_slice(&line[..HEAD.min(max)]) }
}

/// Feeds `data` to a decoder the way `FramedRead` does (decode until `None` after every read,
/// then `decode_eof` until `None`), in reads of the sizes in `chunks` (cycled; each at least 1).
/// Checks after every read that the buffer holds no more than `max` bytes.
pub fn decode_chunked(data: &[u8], max: usize, chunks: &[usize]) -> Vec<Frame> {
    decode_with(FrameDecoder::new(max), data, max, chunks)
}

/// [`decode_chunked`] with a decoder noting `\r`s ([`FrameDecoder::noting_cr`]); checks that a
/// line it says has none has none (what the control connection trusts when it forwards large
/// params from their line).
pub fn decode_noting_cr(data: &[u8], max: usize, chunks: &[usize]) -> Vec<Frame> {
    decode_with(FrameDecoder::new(max).noting_cr(), data, max, chunks)
}

/// [`decode_chunked`] with a decoder taking turns past `past` bytes
/// ([`FrameDecoder::taking_turns`]), its turn given at once each time it asks. The lines are the
/// model's all the same; checks that without the turn the buffer holds no more than `past` bytes
/// and a read, that it asks only without the turn, and that a line's end ends the turn.
pub fn decode_taking_turns(data: &[u8], max: usize, past: usize, chunks: &[usize]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(max).taking_turns(past);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    let mut eof = false;
    loop {
        let n = if chunks.is_empty() { rest.len() } else { chunks[i % chunks.len()].clamp(1, rest.len().max(1)) };
        if rest.is_empty() {
            eof = true;
        } else {
            i += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if !decoder.has_turn() {
                assert!(buf.len() <= past + n, "{} bytes held without the turn (past {past}, read {n})", buf.len());
            }
        }
        loop {
            let f = if eof { decoder.decode_eof(&mut buf) } else { decoder.decode(&mut buf) };
            match f.expect("decode never fails") {
                Some(Frame::LongLine) => {
                    assert!(!decoder.has_turn(), "asked for the turn while holding it");
                    decoder.take_turn();
                }
                Some(f) => {
                    assert!(!decoder.has_turn(), "the turn outlived its line: {f:?}");
                    out.push(f);
                }
                None => break,
            }
        }
        if eof {
            break;
        }
    }
    assert!(buf.is_empty(), "bytes left in the buffer at EOF: {}", buf.len());
    out
}

fn decode_with(mut decoder: FrameDecoder, data: &[u8], max: usize, chunks: &[usize]) -> Vec<Frame> {
    let note = |f: &Frame, decoder: &FrameDecoder| {
        if let Frame::Line(l) = f {
            assert!(decoder.last_line_has_cr() || !l.contains(&b'\r'), "a line with a \\r said to have none: {l:?}");
        }
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if chunks.is_empty() { rest.len() } else { chunks[i % chunks.len()].clamp(1, rest.len()) };
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = decoder.decode(&mut buf).expect("decode never fails") {
            note(&f, &decoder);
            out.push(f);
        }
        assert!(buf.len() <= max, "the buffer holds {} bytes, over the {max}-byte limit", buf.len());
    }
    while let Some(f) = decoder.decode_eof(&mut buf).expect("decode_eof never fails") {
        note(&f, &decoder);
        out.push(f);
    }
    assert!(buf.is_empty(), "bytes left in the buffer at EOF: {}", buf.len());
    out
}

/// Whether `got` are the model's frames `want`: the same lines, and an `Oversized` for each of
/// the model's with the same head and a length over the limit, at most the line's full length
/// (the decoder reports a line as soon as it is found too long, with as much as had come).
pub fn same_frames(got: &[Frame], want: &[Frame], max: usize) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|pair| match pair {
            (Frame::Oversized { len, head }, Frame::Oversized { len: full, head: want_head }) => {
                head == want_head && *len > max && len <= full
            }
            (got, want) => got == want,
        })
}

/// The frame decoder's properties for one byte stream: it yields the model's frames whether the
/// stream arrives whole, byte by byte, or in the given chunks; the buffer stays bounded.
pub fn check(data: &[u8], max: usize, chunks: &[usize]) {
    let want = model(data, max);
    let same = |got: Vec<Frame>, how: &str| {
        assert!(same_frames(&got, &want, max), "{how} (max {max}):\n got {got:?}\nwant {want:?}");
    };
    // Read whole, each oversized line is found whole: its full length.
    assert_eq!(decode_chunked(data, max, &[]), want, "read whole (max {max})");
    same(decode_chunked(data, max, chunks), &format!("read in chunks {chunks:?}"));
    same(decode_noting_cr(data, max, chunks), &format!("noting \\r, read in chunks {chunks:?}"));
    for past in [0, max / 2, max] {
        same(decode_taking_turns(data, max, past, chunks), &format!("taking turns past {past}, in chunks {chunks:?}"));
    }
    if data.len() <= 4096 {
        same(decode_chunked(data, max, &[1]), "read byte by byte");
        same(decode_noting_cr(data, max, &[1]), "noting \\r, read byte by byte");
    }
}

/// Derives a limit and chunk sizes from the first bytes of a fuzz input; the rest is the stream.
pub fn check_fuzz_input(input: &[u8]) {
    let Some((&head, rest)) = input.split_first() else { return };
    let max = 1 + usize::from(head % 64);
    let (sizes, data) = rest.split_at(rest.len().min(4));
    let chunks: Vec<usize> = sizes.iter().map(|b| 1 + usize::from(*b % 97)).collect();
    check(data, max, &chunks);
}
