//! `FrameDecoder`: any chunking of a byte stream yields the reference model's frames; oversized
//! lines are reported with their length; the buffer stays bounded. The properties live in
//! `supervisor/tests/props/frame.rs` (shared with the proptests).
#![no_main]

#[path = "../../supervisor/tests/props/frame.rs"]
mod frame;

libfuzzer_sys::fuzz_target!(|data: &[u8]| frame::check_fuzz_input(data));
