//! The client side of `--listen`: one JSON-RPC call per HTTP/1.1 POST, with the bearer token.
//! Used through [`crate::Client::connect_url`] (`pluginctl --url`). Plain `http://`
//! only (put TLS in front with a reverse proxy); no notifications (the HTTP API streams none).

use crate::ClientError;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{self, Message, RpcError};
use serde_json::Value;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where and how to reach a plugind `--listen` endpoint.
pub(crate) struct HttpClient {
    url: String,
    /// `host:port` to connect to.
    authority: String,
    path: String,
    token: Option<String>,
}

impl HttpClient {
    /// `url` is `http://HOST:PORT[/PATH]`.
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<HttpClient, ClientError> {
        let bad = |why: &str| ClientError::Unreachable {
            path: PathBuf::from(url),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http://HOST:PORT URLs are supported"))?;
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
        Ok(HttpClient { url: url.to_owned(), authority, path: path.to_owned(), token })
    }

    fn unreachable(&self, source: std::io::Error) -> ClientError {
        ClientError::Unreachable { path: PathBuf::from(&self.url), source }
    }

    /// One call: POST, read the whole answer, map it like the socket client does.
    pub(crate) async fn call(&self, id: u64, method: &str, params: &Value) -> Result<Value, ClientError> {
        let body = jsonrpsee_body(id, method, params);
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            self.authority,
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(&self.authority).await.map_err(|e| self.unreachable(e))?;
        stream.write_all(head.as_bytes()).await.map_err(|_| ClientError::ConnectionLost)?;
        stream.write_all(&body).await.map_err(|_| ClientError::ConnectionLost)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|_| ClientError::ConnectionLost)?;
        let (status, body) = parse_response(&raw).ok_or(ClientError::ConnectionLost)?;
        if status == 401 || status == 403 {
            // plugind was reached and said no: an error of the operation, not "cannot reach".
            return Err(ClientError::Rpc(RpcError::with_data(
                codes::PERMISSION_DENIED,
                format!("plugind at {} refused the bearer token (HTTP {status}): check --token-file", self.url),
                serde_json::json!({ "http_status": status }),
            )));
        }
        match Message::parse(&body) {
            Ok(Message::Response { outcome, .. }) => match outcome {
                Ok(raw) => serde_json::from_str(raw.get()).map_err(|_| ClientError::ConnectionLost),
                Err(e) => Err(ClientError::Rpc(e)),
            },
            _ => Err(self.unreachable(std::io::Error::other(format!(
                "HTTP {status}: not a JSON-RPC answer: {}",
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            )))),
        }
    }
}

fn jsonrpsee_body(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let mut line = jsonrpc::request_line(id, method, params);
    while line.last() == Some(&b'\n') {
        line.pop();
    }
    line
}

/// Status code and body (de-chunked) of a whole HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
        assert_eq!(parse_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n").unwrap().0, 401);
    }

    #[test]
    fn urls() {
        let c = HttpClient::new("http://127.0.0.1:7070", None).unwrap();
        assert_eq!((c.authority.as_str(), c.path.as_str()), ("127.0.0.1:7070", "/"));
        let c = HttpClient::new("http://localhost/api", None).unwrap();
        assert_eq!((c.authority.as_str(), c.path.as_str()), ("localhost:80", "/api"));
        assert!(HttpClient::new("https://x:1", None).is_err());
    }
}
