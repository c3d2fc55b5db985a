//! Integration tests: the real plugind binary, real plugin processes (Perl, Python, Rust SDK,
//! shell), real Unix sockets. One test binary (see `support` for the fixtures).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod authoring;
mod calls;
mod caps;
mod catalog;
mod chaos;
mod cli;
mod clients;
mod conformance;
mod containment;
mod crash;
mod crashsafe;
mod daemon;
mod deps;
mod gateway;
mod hooks;
mod host_client;
mod hostctx;
mod hosts;
mod isolation;
mod lifecycle;
mod lifecycle_seams;
mod lifecycle_storm;
mod mcp;
mod misbehave;
mod observe;
mod registry;
mod reload;
mod socket;
mod support;
mod trace;
mod unprivileged;
