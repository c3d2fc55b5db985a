//! The client side of the control socket, used by `pluginctl` (and by tests and benchmarks).

use crate::transport::frame::{Frame, FrameDecoder, DEFAULT_MAX_FRAME};
use futures::StreamExt;
use plugind_protocol::jsonrpc::{self, Message, RpcError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon cannot be reached (pluginctl exit code 3).
    #[error("cannot reach plugind at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke mid-call (exit code 3).
    #[error("connection to plugind lost")]
    Lost,
    /// The daemon answered with an error (exit code 1).
    #[error("{}", .0.message)]
    Rpc(RpcError),
}

/// A connection to plugind's control socket (or, with [`Client::connect_url`], to its
/// `--listen` HTTP API).
pub struct Client {
    transport: Transport,
    next_id: u64,
    /// Notifications that arrived while waiting for a response.
    backlog: std::collections::VecDeque<(String, Value)>,
}

impl Client {
    /// The `--listen` HTTP API at `url` (`http://HOST:PORT`), with the bearer token. Each call
    /// is one HTTP request; notifications never arrive.
    pub async fn connect_url(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let http = crate::client_http::HttpClient::new(url, token)?;
        Ok(Client { transport: Transport::Http(http), next_id: 1, backlog: Default::default() })
    }

    /// Connects to `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Unreachable { path: path.to_path_buf(), source })?;
        let (read, write) = stream.into_split();
        Ok(Client {
            transport: Transport::Unix { read: FramedRead::new(read, FrameDecoder::new(DEFAULT_MAX_FRAME)), write },
            next_id: 1,
            backlog: Default::default(),
        })
    }

    /// Calls `method` and waits for its answer.
    pub async fn call(&mut self, method: &str, params: &Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let (read, write) = match &mut self.transport {
            Transport::Unix { read, write } => (read, write),
            Transport::Http(http) => return http.call(id, method, params).await,
        };
        write.write_all(&jsonrpc::request_line(id, method, params)).await.map_err(|_| ClientError::Lost)?;
        loop {
            let Some(Ok(Frame::Line(line))) = read.next().await else { return Err(ClientError::Lost) };
            match Message::parse(&line) {
                Ok(Message::Response { id: rid, outcome }) if Message::numeric_id(rid) == Some(id) => {
                    return match outcome {
                        Ok(raw) => serde_json::from_str(raw.get()).map_err(|_| ClientError::Lost),
                        Err(e) => Err(ClientError::Rpc(e)),
                    };
                }
                Ok(Message::Notification { method, params }) => {
                    let params = params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                    self.backlog.push_back((method.into_owned(), params));
                }
                _ => {}
            }
        }
    }

    /// The next notification (after a subscribing call), or None when the daemon closes.
    pub async fn notification(&mut self) -> Option<(String, Value)> {
        if let Some(n) = self.backlog.pop_front() {
            return Some(n);
        }
        let Transport::Unix { read, .. } = &mut self.transport else { return None };
        loop {
            let Some(Ok(Frame::Line(line))) = read.next().await else { return None };
            if let Ok(Message::Notification { method, params }) = Message::parse(&line) {
                let params = params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                return Some((method.into_owned(), params));
            }
        }
    }
}

/// How a [`Client`] reaches plugind.
enum Transport {
    /// The NDJSON control socket.
    Unix { read: FramedRead<OwnedReadHalf, FrameDecoder>, write: OwnedWriteHalf },
    /// The `--listen` HTTP API.
    Http(crate::client_http::HttpClient),
}
