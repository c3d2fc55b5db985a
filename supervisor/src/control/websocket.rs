//! A `--listen` WebSocket served as a control connection: each message the client sends is one
//! line to [`connection::serve`], the very loop a control socket's client gets, and each line
//! that loop writes is one text message back. So a WebSocket client has all the socket has:
//! `$/cancel` and `$/progress`, `events.subscribe`, `plugins.trace`, `logs.tail` with `follow`,
//! `services.register` and the `execute` requests plugind then sends to a host's services.
//!
//! The bridge is two in-memory pipes ([`tokio::io::duplex`]) and two pumps, each waiting on the
//! other side, so the socket's bounds hold as they are: the connection stops reading while its
//! outbox is full, the outgoing pump while the client's TCP socket is, and the incoming pump
//! (so the client's TCP socket) while the connection does not read.

use crate::control::connection;
use crate::Daemon;
use futures::{AsyncRead, AsyncWrite};
use soketto::connection::Error;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, DuplexStream};

/// Each pipe's buffer between a pump and the connection.
const PIPE: usize = 64 * 1024;

/// A message buffer that grew past this (a large call) is let go after it.
const KEEP_BUFFER: usize = 1 << 20;

/// Serves one upgraded WebSocket until its client closes it, its TCP connection fails, or `stop`
/// completes (plugind is stopping).
pub async fn serve<T>(
    daemon: Arc<Daemon>,
    sender: soketto::Sender<T>,
    receiver: soketto::Receiver<T>,
    stop: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (to_conn, conn_reads) = tokio::io::duplex(PIPE);
    let (conn_writes, from_conn) = tokio::io::duplex(PIPE);
    // A WebSocket has no half-close: once its client has gone (a close message, or its TCP
    // connection failed), the answers still owed cannot reach it.
    let gone = tokio_util::sync::CancellationToken::new();
    let hung_up = {
        let gone = gone.clone();
        move |_: &DuplexStream| gone.is_cancelled()
    };
    let inbound = async {
        // `to_conn` is dropped with the pump: the connection reads its end.
        let ended = tokio::select! {
            ended = pump_in(receiver, to_conn) => ended,
            () = stop => Ok(()),
        };
        gone.cancel();
        match ended {
            Err(Error::MessageTooLarge { current, maximum }) => {
                tracing::warn!(
                    "--listen: a WebSocket message of {current} bytes or more, over {maximum}; connection closed"
                );
            }
            Err(e) => tracing::debug!("--listen WebSocket closed: {e}"),
            Ok(()) => {}
        }
    };
    let outbound = async {
        if let Err(e) = pump_out(sender, from_conn).await {
            tracing::debug!("--listen WebSocket: cannot send: {e}");
        }
    };
    tokio::join!(connection::serve(daemon, conn_reads, conn_writes, None, hung_up), inbound, outbound);
}

/// The client's messages to the connection, a line each, until the client closes.
async fn pump_in<T: AsyncRead + AsyncWrite + Unpin>(
    mut receiver: soketto::Receiver<T>,
    mut to_conn: DuplexStream,
) -> Result<(), Error> {
    let mut message = Vec::new();
    loop {
        match receiver.receive_data(&mut message).await {
            Ok(_) => {}
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(e),
        }
        // A line break in a message can only be JSON whitespace (a JSON string holds none
        // raw): a space keeps the message one line, and its meaning.
        for b in &mut message {
            if matches!(*b, b'\n' | b'\r') {
                *b = b' ';
            }
        }
        message.push(b'\n');
        to_conn.write_all(&message).await?;
        if message.capacity() > KEEP_BUFFER {
            message = Vec::new();
        } else {
            message.clear();
        }
    }
}

/// The connection's lines to the client, a text message each (binary for the rare line that is
/// not UTF-8), until the connection closes its side; then the WebSocket is closed.
async fn pump_out<T: AsyncRead + AsyncWrite + Unpin>(
    mut sender: soketto::Sender<T>,
    from_conn: DuplexStream,
) -> Result<(), Error> {
    let mut lines = tokio::io::BufReader::with_capacity(PIPE, from_conn);
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line).await? > 0 {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        match std::str::from_utf8(text) {
            Ok(text) => sender.send_text(text).await?,
            Err(_) => sender.send_binary(text).await?,
        }
        // Several answers ready at once go out in one write.
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
