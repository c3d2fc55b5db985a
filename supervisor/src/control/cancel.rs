//! A host's own requests in flight: `$/cancel` ends one, `$/progress` reaches it.
//!
//! `execute`, `services.call` and `hooks.run` run under [`host_call`]: the progress of every
//! call they make is relayed to the host under the host's request id, and a `$/cancel { id }`
//! from the host drops the request's future, which cancels what it waits on the usual way
//! (the plugin gets `$/cancel`, and so does every `service.call` made on the call's behalf) and
//! answers `-32800`.
//!
//! Nothing is recorded per request: a cancel is kept in a short list and every waiting request
//! is woken to look for its id. Cancels are rare; requests are not.

use crate::control::connection::Conn;
use crate::transport::peer::{relaying_progress, HostId, ProgressTo, Reply};
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::RpcError;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Cancels not yet picked up by their request. A cancel for a request already answered is never
/// picked up; the oldest ones are forgotten past this many.
const KEPT: usize = 256;

/// The `$/cancel`s a connection received.
#[derive(Default)]
pub struct Cancels {
    ids: Mutex<VecDeque<Value>>,
    /// `ids.len()`, read without the lock on every wake-up.
    count: AtomicUsize,
    wake: Notify,
}

impl Cancels {
    /// Records the host's `$/cancel` params and wakes the requests in flight.
    pub fn cancel(&self, params: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct CancelIn {
            id: Value,
        }
        let Some(p) = params.and_then(|raw| serde_json::from_str::<CancelIn>(raw.get()).ok()) else { return };
        {
            let mut ids = self.lock();
            ids.push_back(p.id);
            if ids.len() > KEPT {
                ids.pop_front();
            }
            self.count.store(ids.len(), Ordering::Release);
        }
        self.wake.notify_waiters();
    }

    /// Whether request `id` was cancelled (forgetting the cancel).
    fn take(&self, id: &RawValue) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let Ok(id) = serde_json::from_str::<Value>(id.get()) else { return false };
        let mut ids = self.lock();
        let Some(at) = ids.iter().position(|c| *c == id) else { return false };
        ids.remove(at);
        self.count.store(ids.len(), Ordering::Release);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `-32800`: the host cancelled its request.
pub fn cancelled() -> RpcError {
    RpcError::new(codes::REQUEST_CANCELLED, "request cancelled")
}

/// Runs the host's request `id` (`fut`): relays its progress to the host and ends it with
/// `-32800` when the host cancels it.
pub async fn host_call(conn: &Conn, id: &RawValue, fut: impl Future<Output = Reply>) -> Reply {
    let relay = ProgressTo { peer: conn.peer.clone(), id: HostId::of(id) };
    let mut fut = std::pin::pin!(relaying_progress(relay, fut));
    loop {
        // Made before looking, so a cancel arriving in between still wakes this request.
        let woken = conn.cancels.wake.notified();
        if conn.cancels.take(id) {
            return Err(cancelled());
        }
        tokio::select! {
            biased;
            reply = &mut fut => return reply,
            () = woken => {}
        }
    }
}
