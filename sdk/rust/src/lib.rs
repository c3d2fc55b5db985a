//! Rust SDK for plugind plugins (in progress).
