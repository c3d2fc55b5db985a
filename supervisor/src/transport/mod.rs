//! Bytes to JSON-RPC: framing and the calling side of a connection.
//!
//! Architecture invariant: only this module and the owners of a read half (instance task,
//! control connection) touch a plugin's or client's byte streams.

pub mod budget;
pub mod chatter;
pub mod frame;
pub mod http;
pub mod outbox;
pub mod peer;
pub mod pipe;
pub mod tap;

/// A share of plugind's open-file limit (its soft `RLIMIT_NOFILE` over `divisor`), kept within
/// `min..=max`: how many connections of one kind plugind takes at once, so that they cannot
/// take the descriptors its plugins and other listeners need.
pub fn open_files_share(divisor: u64, min: usize, max: usize) -> usize {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    usize::try_from(soft / divisor).unwrap_or(usize::MAX).clamp(min, max)
}
