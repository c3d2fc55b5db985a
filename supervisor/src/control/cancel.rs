//! A host's own requests in flight: `$/cancel` ends one, `$/progress` reaches it.
//!
//! `execute`, `services.call` and `hooks.run` run under [`host_call`]: the progress of every
//! call they make is relayed to the host under the host's request id.
//!
//! Cancellation costs a request nothing until it happens. The connection keeps every line it is
//! serving as an [`InFlight`] future in its set of requests. A `$/cancel { id }` is one such line
//! too: its future, parsing it as every line is parsed, ends with the target's id
//! ([`cancel_target`]) and the connection then looks through the others for that request
//! (cancels are rare: parsing the lines in flight then is cheap; a search for the marker in
//! every line was 2 % of a 64 KiB call),
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

/// `-32800`: the host cancelled its request; `data` names what it called (`plugin` for an
/// `execute`, `service` or `hook` for the others).
pub fn cancelled(data: serde_json::Value) -> RpcError {
    RpcError::with_data(codes::REQUEST_CANCELLED, "request cancelled", data)
}

/// Runs the host's request `id` (`fut`) with the progress of the calls it makes relayed to the
/// host under that id.
pub fn host_call<F: Future<Output = Reply>>(conn: &Conn, id: &RawValue, fut: F) -> impl Future<Output = Reply> {
    relaying_progress(progress_to(conn, id), fut)
}

/// Where the progress of the calls made for the host's request `id` goes.
pub fn progress_to(conn: &Conn, id: &RawValue) -> ProgressTo {
    ProgressTo { conn: conn.id, id: HostId::of(id) }
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

/// What serving a line ends with: the id of a request to cancel, when the line was a `$/cancel`.
pub type Served = Option<serde_json::Value>;

impl<F: Future<Output = Served>> InFlight<F> {
    /// `fut` serving `line`.
    pub fn new(line: Bytes, fut: F) -> Self {
        InFlight { line, waker: None, answer: None, fut: Some(fut) }
    }

    /// If this is the cancellable request with id `id`: what it called, as the `data` of its
    /// `-32800` answer (`{ plugin }`, `{ service }` or `{ hook }`).
    fn called(&self, id: &serde_json::Value) -> Option<serde_json::Value> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            id: Option<serde_json::Value>,
            #[serde(borrow)]
            method: Option<std::borrow::Cow<'a, str>>,
            #[serde(default)]
            params: Option<Target>,
        }
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Target {
            #[serde(skip_serializing_if = "Option::is_none")]
            plugin: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            service: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            hook: Option<String>,
        }
        let head = serde_json::from_slice::<Head<'_>>(&self.line).ok()?;
        let cancellable =
            head.id.as_ref() == Some(id) && head.method.is_some_and(|m| CANCELLABLE.contains(&m.as_ref()));
        cancellable.then(|| serde_json::to_value(head.params).unwrap_or_default())
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

impl<F: Future<Output = Served>> Future for InFlight<F> {
    type Output = Served;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Served> {
        let mut this = self.project();
        if let Some(answer) = this.answer.as_mut() {
            // Dropping the request cancels what it waits on (the plugin gets `$/cancel`).
            this.fut.set(None);
            return answer.as_mut().poll(cx).map(|()| None);
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.waker = Some(cx.waker().clone());
        }
        match this.fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(None),
        }
    }
}

/// The target of a notification `method` with `params`, if it is a `$/cancel`.
pub fn cancel_target(method: &str, params: Option<&RawValue>) -> Served {
    #[derive(serde::Deserialize)]
    struct CancelParams {
        id: serde_json::Value,
    }
    if method != plugind_protocol::methods::CANCEL {
        return None;
    }
    Some(serde_json::from_str::<CancelParams>(params?.get()).ok()?.id)
}

/// Cancels the host's request `id` among `inflight`, if it is there and cancellable.
pub fn cancel_in_flight<F: Future<Output = Served>>(
    inflight: Pin<&mut futures::stream::FuturesUnordered<InFlight<F>>>,
    conn: &Arc<Conn>,
    id: serde_json::Value,
) {
    for request in inflight.iter_pin_mut() {
        if let Some(data) = request.called(&id) {
            let peer = conn.peer.clone();
            let raw = serde_json::value::to_raw_value(&id).expect("UNWRAP: a JSON value serializes");
            request.cancel(Box::pin(async move { peer.respond(&raw, Err(&cancelled(data))).await }));
            return;
        }
    }
}
