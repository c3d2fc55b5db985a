//! Bytes to JSON-RPC: framing and the calling side of a connection.
//!
//! Architecture invariant: only this module and the owners of a read half (instance task,
//! control connection) touch a plugin's or client's byte streams.

pub mod budget;
pub mod frame;
pub mod http;
pub mod outbox;
pub mod peer;
pub mod pipe;
pub mod tap;
