//! `Message::parse` on arbitrary bytes: no panic, typed errors, parse(print(msg)) == msg. The
//! properties live in `sdk/protocol/tests/props/jsonrpc.rs` (shared with the proptests).
#![no_main]

#[path = "../../sdk/protocol/tests/props/jsonrpc.rs"]
mod jsonrpc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| jsonrpc::check_line(data));
