//! What one peer's requests may make plugind hold at once.
//!
//! Every request plugind serves for a peer is a future that holds the request's params while
//! it runs and its answer until the peer's outbox takes it. A peer that sends requests faster
//! than they end, or never reads its answers, would otherwise make plugind hold without bound:
//! a plugin with no permission at all, writing `registry.listServices` in a loop and never
//! reading its stdin, grew plugind by 230 MB a second.
//!
//! A [`Budget`] counts the requests of one peer in flight and the bytes they hold (the request
//! line, then the answer while it waits for room). [`Budget::admit`] refuses a request once
//! either bound is reached; its [`Ticket`] gives the request's share back when it drops. What
//! is held passes the bytes bound by one message at most, and no message is refused for its
//! own size. (A request refused for its size while a little room is left would make the peer's
//! reader think there is room, read the next, and refuse that too, each refusal held by a peer
//! that does not read.)

use crate::transport::peer::{Peer, Reply};
use plugind_protocol::jsonrpc::RpcError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests of one plugin (all its instances) served at once, as for a control connection: a
/// plugin that gathers a few thousand `kv.set`s at once is not refused, and the futures are a
/// few KB each.
pub const PLUGIN_REQUESTS: usize = 4096;

/// Bytes one plugin's requests in flight may hold, all its instances together: their lines, and
/// their answers while the plugin has not read them. Four frames of the largest size.
pub const PLUGIN_REQUEST_BYTES: usize = 64 << 20;

/// What a request gets in place of an answer of `len` bytes dropped because `who`'s requests
/// in flight and unread answers already hold `max` bytes ([`Ticket::answer`]).
pub fn unread_answer(who: &str, len: usize, max: usize) -> RpcError {
    RpcError::new(
        plugind_protocol::codes::OVERLOADED,
        format!(
            "{who}: the answer ({len} bytes) was dropped: the requests in flight and their unread answers already hold {} MiB, the most allowed; read answers as they come",
            max >> 20
        ),
    )
}

/// A peer's requests in flight and what they hold, with their bounds. Clones share the count:
/// a plugin's instances, in every generation, draw on one budget.
#[derive(Debug, Clone)]
pub struct Budget {
    held: Arc<Held>,
    max_requests: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Held {
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `max_requests` are in flight.
    Requests(usize),
    /// The requests in flight hold `max_bytes` or would with this one.
    Bytes(usize),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Requests(n) => write!(f, "{n} requests are in flight, the most allowed"),
            Exceeded::Bytes(n) => {
                write!(f, "the requests in flight and their unread answers hold {} MiB, the most allowed", n >> 20)
            }
        }
    }
}

impl Budget {
    /// A budget of `max_requests` requests holding `max_bytes` at most.
    pub fn new(max_requests: usize, max_bytes: usize) -> Self {
        Budget { held: Arc::default(), max_requests, max_bytes }
    }

    /// The budget of one plugin's requests to plugind.
    pub fn for_plugin() -> Self {
        Budget::new(PLUGIN_REQUESTS, PLUGIN_REQUEST_BYTES)
    }

    /// Admits a request of `bytes`, or says which bound is reached.
    pub fn admit(&self, bytes: usize) -> Result<Ticket, Exceeded> {
        if self.held.requests.load(Ordering::Relaxed) >= self.max_requests {
            return Err(Exceeded::Requests(self.max_requests));
        }
        if self.held.bytes.load(Ordering::Relaxed) >= self.max_bytes {
            return Err(Exceeded::Bytes(self.max_bytes));
        }
        self.held.requests.fetch_add(1, Ordering::Relaxed);
        self.held.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(Ticket { held: self.held.clone(), bytes, max_bytes: self.max_bytes })
    }

    /// Whether a request would be refused now.
    pub fn is_spent(&self) -> bool {
        self.held.requests.load(Ordering::Relaxed) >= self.max_requests
            || self.held.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Requests in flight.
    pub fn requests(&self) -> usize {
        self.held.requests.load(Ordering::Relaxed)
    }
}

/// One admitted request's share of its [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Ticket {
    held: Arc<Held>,
    bytes: usize,
    max_bytes: usize,
}

impl Ticket {
    /// The answer to send for this request: `reply` itself, unless the peer's outbox is full
    /// (the answer would wait there) and holding it would take the budget past its bytes; then
    /// the answer is dropped and `dropped(its length, the bound)` goes in its place.
    pub fn answer(&mut self, peer: &Peer, reply: Reply, dropped: impl FnOnce(usize, usize) -> RpcError) -> Reply {
        if !peer.outbox_full() {
            return reply;
        }
        let len = reply.as_ref().map_or(0, |r| r.get().len());
        if self.hold(len) {
            reply
        } else {
            Err(dropped(len, self.max_bytes))
        }
    }

    /// Counts an answer of `bytes` that must wait for the peer to read: false (and nothing
    /// counted) when the others already hold the budget's bytes.
    pub fn hold(&mut self, bytes: usize) -> bool {
        let others = self.held.bytes.load(Ordering::Relaxed) - self.bytes;
        if others >= self.max_bytes {
            return false;
        }
        self.held.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.bytes += bytes;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.held.requests.fetch_sub(1, Ordering::Relaxed);
        self.held.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_admitted_until_a_bound_is_reached() {
        let b = Budget::new(3, 100);
        let one = b.admit(60).unwrap();
        let two = b.admit(50).unwrap(); // 110: past the bytes by this one
        assert!(b.is_spent());
        assert_eq!(b.admit(1).unwrap_err(), Exceeded::Bytes(100));
        drop(one);
        assert!(!b.is_spent());
        let three = b.admit(10).unwrap();
        let _four = b.admit(0).unwrap();
        assert_eq!(b.admit(0).unwrap_err(), Exceeded::Requests(3));
        drop((two, three));
        assert_eq!(b.requests(), 1);
        // Any size is admitted while the bound is not reached.
        let big = b.admit(1000).unwrap();
        assert!(b.is_spent());
        drop(big);
        assert!(b.admit(1).is_ok());
    }

    #[test]
    fn an_answer_is_held_while_the_others_leave_room() {
        let b = Budget::new(10, 100);
        let mut alone = b.admit(10).unwrap();
        assert!(alone.hold(500), "the only request may hold any answer");
        drop(alone);
        let mut one = b.admit(10).unwrap();
        let mut two = b.admit(10).unwrap();
        assert!(one.hold(70));
        assert!(two.hold(95), "the others hold 80: room left (past it by this answer)");
        assert!(!one.hold(1), "the others hold 105");
        drop(one);
        assert_eq!(b.held.bytes.load(Ordering::Relaxed), 105);
    }
}
