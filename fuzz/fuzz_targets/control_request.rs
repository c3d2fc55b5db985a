//! The control-socket request path: arbitrary client bytes into `control::connection::run` over
//! a socket pair (a daemon with no plugins, paused clock). No panic, no hang, one well-formed
//! answer per request. The properties live in `supervisor/tests/props/control.rs`.
#![no_main]

#[path = "../../supervisor/tests/props/control.rs"]
mod control;

use std::sync::OnceLock;

static HARNESS: OnceLock<control::Harness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(control::Harness::new).check(data);
});
