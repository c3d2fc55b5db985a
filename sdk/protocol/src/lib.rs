//! Wire types of plugind, shared by the supervisor and the Rust SDK.
//!
//! This crate is the contract (the manifest, `docs/protocol.md`, `docs/control-api.md`) written as Rust types. It does no I/O, spawns
//! nothing and depends on no runtime, so that both sides of the wire — the supervisor (`plugind`)
//! and the plugin SDK (`plugind-sdk`) — can depend on it without depending on each other.
//!
//! # Layout
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope: parsing one line into a borrowed [`jsonrpc::Message`],
//!   writing requests, notifications and responses as lines, and [`jsonrpc::RpcError`].
//! - [`codes`]: the error codes of §3.3.
//! - [`methods`]: method names and typed params/results of plugind ⇄ plugin messages (§3).
//! - [`control`]: the control API of §4 (hosts and `pluginctl` ⇄ plugind).
//! - [`manifest`]: `plugin.json` (§2) parsed and validated, with every error pointing at its field.
//! - [`version`]: the protocol version and the one compatibility rule.
//!
//! # Theory of operation
//! Messages are parsed lazily: [`jsonrpc::Message::parse`] reads only the envelope and keeps
//! `params`/`result` as borrowed raw JSON, so a relay can route a call without parsing its payload.

pub mod codes;
pub mod control;
pub mod jsonrpc;
pub mod manifest;
pub mod methods;
pub mod scan;
pub mod text;
pub mod version;

pub use jsonrpc::{Message, RpcError};
pub use manifest::Manifest;
