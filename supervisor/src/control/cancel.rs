//! A host's own requests in flight: `$/cancel` ends one, `$/progress` reaches it.
//!
//! `execute`, `services.call` and `hooks.run` run under [`host_call`]: the progress of every
//! call they make is relayed to the host under the host's request id.
//!
//! Cancellation costs a request nothing until it happens. The connection keeps every line it is
//! serving as an [`InFlight`] future in its set of requests; on a `$/cancel { id }` it looks
//! through them for that request (cancels are rare: parsing the lines in flight then is cheap),
//! drops its future, which cancels what it waits on the usual way (the plugin gets `$/cancel`,
//! and so does every `service.call` made on the call's behalf), and answers `-32800` in its place.
//! A cancel for a request already answered, or for another kind of request, changes nothing.

use crate::control::connection::Conn;
use crate::transport::peer::{relaying_progress, HostId, ProgressTo, Reply};
use bytes::Bytes;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::RpcError;
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// `-32800`: the host cancelled its request.
pub fn cancelled() -> RpcError {
    RpcError::new(codes::REQUEST_CANCELLED, "request cancelled")
}

/// Runs the host's request `id` (`fut`) with the progress of the calls it makes relayed to the
/// host under that id.
pub fn host_call<F: Future<Output = Reply>>(conn: &Conn, id: &RawValue, fut: F) -> impl Future<Output = Reply> {
    relaying_progress(ProgressTo { conn: conn.id, id: HostId::of(id) }, fut)
}

/// The methods a host may cancel.
const CANCELLABLE: [&str; 3] = [
    plugind_protocol::control::EXECUTE,
    plugind_protocol::control::SERVICES_CALL,
    plugind_protocol::control::HOOKS_RUN,
];

/// The answer sent in a cancelled request's place.
type Answer = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    /// One line the connection is serving, cancellable from outside.
    pub struct InFlight<F> {
        line: Bytes,
        // The waker of the task polling this future, to poll it again when it is cancelled.
        waker: Option<Waker>,
        // Set when cancelled: the -32800 answer, sent instead of the request's own.
        answer: Option<Answer>,
        #[pin]
        fut: Option<F>,
    }
}

impl<F: Future<Output = ()>> InFlight<F> {
    /// `fut` serving `line`.
    pub fn new(line: Bytes, fut: F) -> Self {
        InFlight { line, waker: None, answer: None, fut: Some(fut) }
    }

    /// Whether this is the cancellable request with id `id` (the JSON text of an id).
    fn is_request(&self, id: &serde_json::Value) -> bool {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            id: Option<serde_json::Value>,
            #[serde(borrow)]
            method: Option<std::borrow::Cow<'a, str>>,
        }
        let Ok(head) = serde_json::from_slice::<Head<'_>>(&self.line) else { return false };
        head.id.as_ref() == Some(id) && head.method.is_some_and(|m| CANCELLABLE.contains(&m.as_ref()))
    }

    /// Cancels it: its future is dropped at its next poll and `answer` is sent instead.
    fn cancel(self: Pin<&mut Self>, answer: Answer) {
        let this = self.project();
        if this.answer.is_none() && this.fut.is_some() {
            *this.answer = Some(answer);
            if let Some(w) = this.waker.take() {
                w.wake();
            }
        }
    }
}

impl<F: Future<Output = ()>> Future for InFlight<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(answer) = this.answer.as_mut() {
            // Dropping the request cancels what it waits on (the plugin gets `$/cancel`).
            this.fut.set(None);
            return answer.as_mut().poll(cx);
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.waker = Some(cx.waker().clone());
        }
        match this.fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Whether `line` is a `$/cancel` notification; its target id if so.
pub fn cancel_target(line: &[u8]) -> Option<serde_json::Value> {
    #[derive(serde::Deserialize)]
    struct Note<'a> {
        id: Option<serde_json::Value>,
        #[serde(borrow)]
        method: std::borrow::Cow<'a, str>,
        params: Option<CancelParams>,
    }
    #[derive(serde::Deserialize)]
    struct CancelParams {
        id: serde_json::Value,
    }
    // One searcher for the process: `memmem::find` would build one per line.
    static CANCEL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""$/cancel""#));
    CANCEL.find(line)?;
    let note: Note<'_> = serde_json::from_slice(line).ok()?;
    (note.id.is_none() && note.method == plugind_protocol::methods::CANCEL).then_some(note.params?.id)
}

/// Cancels the host's request `id` among `inflight`, if it is there and cancellable.
pub fn cancel_in_flight<F: Future<Output = ()>>(
    inflight: Pin<&mut futures::stream::FuturesUnordered<InFlight<F>>>,
    conn: &Arc<Conn>,
    id: serde_json::Value,
) {
    for request in inflight.iter_pin_mut() {
        if request.is_request(&id) {
            let peer = conn.peer.clone();
            let raw = serde_json::value::to_raw_value(&id).expect("UNWRAP: a JSON value serializes");
            request.cancel(Box::pin(async move { peer.respond(&raw, Err(&cancelled())).await }));
            return;
        }
    }
}
