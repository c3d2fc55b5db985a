//! `Manifest::parse` on arbitrary bytes: no panic, errors that name fields, loaded manifests
//! that hold what plugind relies on. The properties live in `sdk/protocol/tests/props/manifest.rs`.
#![no_main]

#[path = "../../sdk/protocol/tests/props/manifest.rs"]
mod manifest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| manifest::check_text(data));
