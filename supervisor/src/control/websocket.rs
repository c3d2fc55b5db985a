//! A `--listen` WebSocket served as a control connection: each message the client sends is one
//! line to [`connection::serve`], the very loop a control socket's client gets, and each line
//! that loop writes is one text message back. So a WebSocket client has all the socket has:
//! `$/cancel` and `$/progress`, `events.subscribe`, `plugins.trace`, `logs.tail` with `follow`,
//! `services.register` and the `execute` requests plugind then sends to a host's services.
//!
//! The WebSocket is made a byte stream of lines by [`plugind_client::websocket::bridge`], the
//! host library's own: two in-memory pipes, each side waiting on the other, so the socket's
//! bounds hold as they are (the connection stops reading while its outbox is full, the bridge
//! while the client's TCP socket is, and the client's TCP socket fills while the connection
//! does not read).

use crate::control::connection;
use crate::Daemon;
use futures::{AsyncRead, AsyncWrite};
use soketto::connection::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long the answers still owed to a WebSocket whose client has gone may take to be sent.
const FAREWELL: Duration = Duration::from_secs(5);

/// Serves one upgraded WebSocket until its client closes it, its TCP connection fails, or `stop`
/// completes (plugind is stopping).
pub async fn serve<T>(
    daemon: Arc<Daemon>,
    sender: soketto::Sender<T>,
    receiver: soketto::Receiver<T>,
    stop: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let bridge = plugind_client::websocket::bridge(sender, receiver);
    // A WebSocket has no half-close: once its client has gone (a close message, or its TCP
    // connection failed), the answers still owed cannot reach it.
    let gone = bridge.closed.clone();
    let hung_up = move |_: &tokio::io::DuplexStream| gone.is_cancelled();
    let serving = connection::serve(daemon, bridge.read, bridge.write, None, hung_up);
    let mut task = bridge.task;
    tokio::select! {
        () = serving => {}
        () = stop => task.abort(),
    }
    let received = match tokio::time::timeout(FAREWELL, &mut task).await {
        Ok(Ok(received)) => received,
        Ok(Err(_aborted)) => return,
        Err(_) => {
            task.abort();
            return;
        }
    };
    let too_large = |size: u64, maximum: u64| {
        tracing::warn!("--listen: a WebSocket message of {size} bytes or more, over {maximum}; connection closed");
    };
    match received {
        // Over the size in one frame, or in the frames of one message.
        Err(Error::Codec(soketto::base::Error::PayloadTooLarge { actual, maximum })) => too_large(actual, maximum),
        Err(Error::MessageTooLarge { current, maximum }) => too_large(current as u64, maximum as u64),
        Err(e) => tracing::debug!("--listen WebSocket closed: {e}"),
        Ok(()) => {}
    }
}
