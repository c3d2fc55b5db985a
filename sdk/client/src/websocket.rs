//! plugind's `--listen` WebSocket as a byte stream of lines, like the control socket.
//!
//! plugind serves a WebSocket with the very loop that serves a socket client, one message per
//! line; so a client needs nothing but a [`bridge`] to use its socket code unchanged: each
//! message received is one line to read, each line written one text message sent. plugind
//! uses the same bridge on its side.
//!
//! [`Target`] is the client's side: `http://HOST:PORT[/PATH]` (the `--listen` address; spoken
//! as `ws://`), the bearer token in the upgrade request. Plain `http://` only (put TLS in front
//! with a reverse proxy).

use crate::ClientError;
use futures::{AsyncRead, AsyncWrite};
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::RpcError;
use soketto::connection::Error;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Each pipe's buffer between the bridge and its user.
const PIPE: usize = 64 * 1024;

/// A message buffer that grew past this (a large call) is let go after it.
const KEEP_BUFFER: usize = 1 << 20;

/// A WebSocket made a byte stream of lines: see [`bridge`].
pub struct Bridge {
    /// The lines received, one per message, each ending with `\n`.
    pub read: DuplexStream,
    /// Where to write lines to send, each as one message.
    pub write: DuplexStream,
    /// Cancelled once nothing more will be received (the peer closed, or the connection failed):
    /// a WebSocket has no half-close, so the peer is gone.
    pub closed: CancellationToken,
    /// The task moving the messages; its result is why receiving ended.
    pub task: tokio::task::JoinHandle<Result<(), Error>>,
}

/// Bridges a WebSocket (already past its handshake) to two in-memory pipes, by a task of its
/// own. A line break inside a received message (only JSON whitespace can hold one) becomes a
/// space, so a message stays one line. Each side waits for the other: while the user does not
/// read, the WebSocket is not read either. When the user drops [`Bridge::write`], the
/// WebSocket is closed; when the WebSocket ends, [`Bridge::read`] reaches its end.
pub fn bridge<T>(sender: soketto::Sender<T>, receiver: soketto::Receiver<T>) -> Bridge
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (to_user, read) = tokio::io::duplex(PIPE);
    let (write, from_user) = tokio::io::duplex(PIPE);
    let closed = CancellationToken::new();
    let receiving = closed.clone().drop_guard();
    let task = tokio::spawn(async move {
        let inbound = async move {
            let _ended = receiving;
            receive(receiver, to_user).await
        };
        let (received, _) = tokio::join!(inbound, send(sender, from_user));
        received
    });
    Bridge { read, write, closed, task }
}

/// The messages received, a line each, until the WebSocket closes or the user stops reading.
async fn receive<T: AsyncRead + AsyncWrite + Unpin>(
    mut receiver: soketto::Receiver<T>,
    mut to_user: DuplexStream,
) -> Result<(), Error> {
    let mut message = Vec::new();
    loop {
        match receiver.receive_data(&mut message).await {
            Ok(_) => {}
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(e),
        }
        for b in &mut message {
            if matches!(*b, b'\n' | b'\r') {
                *b = b' ';
            }
        }
        message.push(b'\n');
        if to_user.write_all(&message).await.is_err() {
            return Ok(()); // the user is gone
        }
        if message.capacity() > KEEP_BUFFER {
            message = Vec::new();
        } else {
            message.clear();
        }
    }
}

/// The user's lines, a text message each (binary for a line that is not UTF-8), until the user
/// closes its side; then the WebSocket is closed.
async fn send<T: AsyncRead + AsyncWrite + Unpin>(
    mut sender: soketto::Sender<T>,
    from_user: DuplexStream,
) -> Result<(), Error> {
    let mut lines = tokio::io::BufReader::with_capacity(PIPE, from_user);
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line).await? > 0 {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        match std::str::from_utf8(text) {
            Ok(text) => sender.send_text(text).await?,
            Err(_) => sender.send_binary(text).await?,
        }
        // Several lines ready at once go out in one write.
        if lines.buffer().is_empty() {
            sender.flush().await?;
        }
        if line.capacity() > KEEP_BUFFER {
            line = Vec::new();
        } else {
            line.clear();
        }
    }
    sender.close().await
}

/// Where a plugind `--listen` endpoint is, and the token it wants.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    url: String,
    /// `host:port` to connect to.
    authority: String,
    path: String,
    token: Option<String>,
}

impl Target {
    /// `url` is `http://HOST:PORT[/PATH]` (or `ws://`).
    pub(crate) fn parse(url: &str, token: Option<String>) -> Result<Target, ClientError> {
        let bad = |why: &str| ClientError::Unreachable {
            path: PathBuf::from(url),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| bad("only http://HOST:PORT URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(bad("the URL has no host"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target { url: url.to_owned(), authority, path: path.to_owned(), token })
    }

    fn unreachable(&self, source: std::io::Error) -> ClientError {
        ClientError::Unreachable { path: PathBuf::from(&self.url), source }
    }

    /// Opens the WebSocket and bridges it. A refused token is an answer of plugind's
    /// (`-32005`, with `data.http_status`), not "cannot reach".
    pub(crate) async fn connect(&self, max_message: usize) -> Result<Bridge, ClientError> {
        use tokio_util::compat::TokioAsyncReadCompatExt as _;
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        let io = futures::io::BufReader::new(futures::io::BufWriter::new(tcp.compat()));
        let mut client = soketto::handshake::Client::new(io, &self.authority, &self.path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<_> = auth
            .iter()
            .map(|value| soketto::handshake::client::Header { name: "Authorization", value: value.as_bytes() })
            .collect();
        client.set_headers(&headers);
        let refused = |what: String| self.unreachable(std::io::Error::other(what));
        match client.handshake().await {
            Ok(soketto::handshake::ServerResponse::Accepted { .. }) => {}
            Ok(soketto::handshake::ServerResponse::Rejected { status_code: status @ (401 | 403) }) => {
                return Err(ClientError::Rpc(RpcError::with_data(
                    codes::PERMISSION_DENIED,
                    format!("plugind at {} refused the bearer token (HTTP {status}): check --token-file", self.url),
                    serde_json::json!({ "http_status": status }),
                )));
            }
            Ok(soketto::handshake::ServerResponse::Rejected { status_code }) => {
                return Err(refused(format!("HTTP {status_code}: the WebSocket upgrade was refused")));
            }
            Ok(soketto::handshake::ServerResponse::Redirect { status_code, location }) => {
                return Err(refused(format!("HTTP {status_code}: redirected to {location}")));
            }
            Err(e) => return Err(refused(format!("WebSocket handshake failed: {e}"))),
        }
        let mut ws = client.into_builder();
        ws.set_max_message_size(max_message);
        ws.set_max_frame_size(max_message);
        let (sender, receiver) = ws.finish();
        Ok(bridge(sender, receiver))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:7070", None).unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:7070", "/"));
        let t = Target::parse("http://localhost/api", None).unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("localhost:80", "/api"));
        let t = Target::parse("ws://h:1/", None).unwrap();
        assert_eq!(t.authority, "h:1");
        assert!(Target::parse("https://x:1", None).is_err());
        assert!(Target::parse("http:///x", None).is_err());
    }
}
