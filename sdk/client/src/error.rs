//! The one error type of the library: what plugind answered, or why it could not answer.

use plugind_protocol::jsonrpc::RpcError;
use serde_json::Value;
use std::path::PathBuf;

/// `-32011`: the connection to plugind was lost while the call was in flight, or the library
/// is between two connections. Made by this library, never sent by plugind.
pub const CONNECTION_LOST: i64 = -32011;

/// Why a call failed. Every variant has a JSON-RPC [`code`](ClientError::code), so a host can
/// treat errors uniformly, and `pluginctl` maps them onto its exit codes (1 for [`Rpc`], 3 for
/// the others).
///
/// [`Rpc`]: ClientError::Rpc
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// plugind cannot be reached at all (no socket, refused, a bad URL or token).
    #[error("cannot reach plugind at {path}: {source}")]
    Unreachable {
        /// The socket path or URL.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke while the call was in flight, or there is no connection right now
    /// (the library is reconnecting). Code [`CONNECTION_LOST`].
    #[error("connection to plugind lost")]
    ConnectionLost,
    /// plugind (or a plugin, passed through unchanged) answered with a JSON-RPC error.
    #[error("{}", .0.message)]
    Rpc(#[from] RpcError),
}

impl ClientError {
    /// The JSON-RPC code: plugind's for [`ClientError::Rpc`], [`CONNECTION_LOST`] for a
    /// connection that is not there.
    pub fn code(&self) -> i64 {
        match self {
            ClientError::Rpc(e) => e.code,
            ClientError::Unreachable { .. } | ClientError::ConnectionLost => CONNECTION_LOST,
        }
    }

    /// The error's `data` (`plugin`, `state`, `timeout_ms`…), when plugind sent one.
    pub fn data(&self) -> Option<&Value> {
        match self {
            ClientError::Rpc(e) => e.data.as_ref(),
            _ => None,
        }
    }

    /// The error as plugind would send it: how a provided service's handler error is answered
    /// (an [`Rpc`](ClientError::Rpc) error keeps its code; anything else is `-32603`).
    pub fn to_rpc(&self) -> RpcError {
        match self {
            ClientError::Rpc(e) => e.clone(),
            other => RpcError::new(plugind_protocol::codes::INTERNAL_ERROR, other.to_string()),
        }
    }
}
