//! The control-socket request path under arbitrary client bytes, shared by the proptests
//! (`supervisor/tests/prop.rs`) and the cargo-fuzz target `control_request` (`fuzz/`).
//!
//! A [`Harness`] is a [`Daemon`] with no plugins and a tokio runtime whose clock is paused (so
//! deadlines pass at once instead of stalling a run). [`Harness::check`] connects a client over
//! a socket pair to [`connection::run`], writes the bytes, shuts its write half down (as
//! `echo … | socat - UNIX-CONNECT:…` does) and reads until plugind closes. Properties:
//! - nothing panics and the connection ends (no hang);
//! - every line plugind writes is a JSON-RPC response or notification;
//! - every request, and every line that is not a message, gets exactly one answer, with the
//!   request's id (or `null`) — also when the client has only half-closed the connection;
//! - no host service (`services.register`) outlives its connection.

#![allow(dead_code)] // each includer uses part of it

use plugind::config::Config;
use plugind::control::connection;
use plugind::transport::frame::{Frame, FrameDecoder, DEFAULT_MAX_FRAME};
use plugind::Daemon;
use plugind_protocol::jsonrpc::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Decoder;

/// A daemon without plugins, and a runtime to serve one connection at a time.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    daemon: Arc<Daemon>,
    _dir: tempfile::TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// The lines of `bytes` as the connection's frame decoder splits them.
fn lines(bytes: &[u8]) -> Vec<Frame> {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.decode_eof(&mut buf).expect("never fails") {
        out.push(f);
    }
    out
}

impl Harness {
    /// A fresh daemon in a temp state dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::new(Vec::new(), dir.path().join("plugind.sock"), dir.path().join("state"));
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        let daemon = rt.block_on(async { Daemon::new(config) });
        Harness { rt, daemon, _dir: dir }
    }

    /// Serves `input` on one connection; returns what plugind wrote. Panics on a property failure.
    pub fn check(&self, input: &[u8]) -> Vec<u8> {
        let daemon = self.daemon.clone();
        let out = self.rt.block_on(async move {
            let (client, server) = UnixStream::pair().expect("socket pair");
            let serve = connection::run(daemon, server, None);
            let talk = async move {
                let (mut rd, mut wr) = client.into_split();
                let write = async move {
                    // plugind may answer before it has read everything: write and read at once.
                    let _ = wr.write_all(input).await;
                    let _ = wr.shutdown().await;
                    wr
                };
                let read = async move {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        // Quiet for ten (paused-clock) minutes: every answer is in, and a stream
                        // it opened (events, trace, following logs) holds the half-closed
                        // connection open, as it should; hang up entirely to end it.
                        match tokio::time::timeout(Duration::from_secs(600), rd.read(&mut buf)).await {
                            Ok(Ok(0) | Err(_)) | Err(_) => break,
                            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                        }
                    }
                    out
                };
                let (wr, out) = tokio::join!(write, read);
                drop(wr);
                out
            };
            // The clock is paused: an hour passes at once when nothing else can happen.
            let both = async { tokio::join!(serve, talk).1 };
            tokio::time::timeout(Duration::from_secs(3600), both).await.expect("the connection ends")
        });
        check_output(input, &out);
        assert!(self.daemon.host_services().is_empty(), "a host service outlived its connection");
        out
    }
}

/// Checks plugind's answers against the requests in `input`.
pub fn check_output(input: &[u8], out: &[u8]) {
    // What must be answered: requests by id, and lines that are not messages under their own
    // request id when they have one that can be read, else with a null id.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for frame in lines(input) {
        match frame {
            Frame::Oversized { .. } => *want.entry("null".into()).or_default() += 1,
            Frame::LongLine => unreachable!("this decoder takes no turns"),
            Frame::Dropped(_) => unreachable!("this decoder reports no drops"),
            Frame::Line(l) => match Message::parse(&l) {
                Ok(Message::Request { id, .. }) => *want.entry(id.get().to_owned()).or_default() += 1,
                Ok(_) => {}
                Err(_) => {
                    let id = Message::request_id_of(&l).map_or("null".to_owned(), |id| id.get().to_owned());
                    *want.entry(id).or_default() += 1
                }
            },
        }
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for frame in lines(out) {
        let Frame::Line(l) = frame else { panic!("plugind wrote an oversized line") };
        let text = String::from_utf8_lossy(&l);
        match Message::parse(&l) {
            Ok(Message::Response { id, .. }) => *got.entry(id.get().to_owned()).or_default() += 1,
            Ok(Message::Notification { .. }) => {}
            Ok(Message::Request { .. }) => {} // a call to a host service registered by this client
            Err(e) => panic!("plugind wrote a line that is not JSON-RPC ({e}): {text}"),
        }
    }
    assert_eq!(
        got,
        want,
        "answers by id\ninput: {}\noutput: {}",
        String::from_utf8_lossy(input),
        String::from_utf8_lossy(out)
    );
}
