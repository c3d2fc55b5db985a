//! The one client every call benchmark uses: blocking NDJSON JSON-RPC over a Unix socket (plugind,
//! the relay, the socket floor) or a child's pipes (the pipe floor).
//!
//! It is deliberately the cheapest client possible (no runtime, no parse on the hot path: a reply
//! is only checked not to be an error), so the ratios charge every microsecond to the server side.

use anyhow::{bail, Context as _};
use serde_json::Value;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::time::{Duration, Instant};

/// The params echoed by every call: small, like a typical control call.
pub const PAYLOAD: &str = r#"{"msg":"hello","n":42}"#;

/// One request as sent, minus its id: `"method":…,"params":…` (the client splices the id in
/// front, so nothing is serialized on the hot path).
#[derive(Clone, Debug)]
pub struct Request(String);

impl Request {
    /// `method` with `params` (JSON text).
    pub fn new(method: &str, params: &str) -> Self {
        Request(format!(r#""method":"{method}","params":{params}"#))
    }

    /// `execute` calling `echo` on `plugin` with [`PAYLOAD`].
    pub fn echo(plugin: &str) -> Self {
        Self::new("execute", &format!(r#"{{"plugin":"{plugin}","method":"echo","params":{PAYLOAD}}}"#))
    }

    /// `execute` making `caller` do `service.call` of `echo` on `service` with [`PAYLOAD`].
    pub fn service_call(caller: &str, service: &str) -> Self {
        let inner = format!(r#"{{"service":"{service}","method":"echo","params":{PAYLOAD}}}"#);
        Self::new("execute", &format!(r#"{{"plugin":"{caller}","method":"call","params":{inner}}}"#))
    }

    /// `hooks.run` of `hook` with [`PAYLOAD`].
    pub fn hook(hook: &str) -> Self {
        Self::new("hooks.run", &format!(r#"{{"hook":"{hook}","payload":{PAYLOAD}}}"#))
    }
}

/// How long to warm up, then how long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Calls made before measuring.
    pub warmup: Duration,
    /// Measuring time.
    pub run: Duration,
}

/// One client connection sending `execute` requests.
pub struct LineConn {
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    next_id: u64,
    buf: Vec<u8>,
}

impl LineConn {
    /// Over a Unix socket.
    pub fn unix(path: &Path) -> anyhow::Result<Self> {
        let s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        Ok(Self::new(Box::new(s.try_clone()?), Box::new(s)))
    }

    /// Over a reader and a writer (a child's stdout and stdin).
    pub fn new(r: Box<dyn Read + Send>, w: Box<dyn Write + Send>) -> Self {
        LineConn {
            r: BufReader::with_capacity(64 * 1024, r),
            w: BufWriter::with_capacity(64 * 1024, w),
            next_id: 1,
            buf: Vec::with_capacity(4096),
        }
    }

    /// One round trip; returns the reply line.
    pub fn call(&mut self, req: &Request) -> anyhow::Result<&[u8]> {
        write_request(&mut self.w, self.next_id, req)?;
        self.next_id += 1;
        self.w.flush()?;
        read_reply(&mut self.r, &mut self.buf)?;
        Ok(&self.buf)
    }

    /// One round trip whose `result` must equal `expected`; the reply's error otherwise.
    pub fn check(&mut self, req: &Request, expected: &str) -> anyhow::Result<()> {
        let expected: Value = serde_json::from_str(expected)?;
        let result = self.result(req)?;
        if result != expected {
            bail!("unexpected result: {result}");
        }
        Ok(())
    }

    /// One round trip: its `result`, parsed; the reply's error otherwise.
    pub fn result(&mut self, req: &Request) -> anyhow::Result<Value> {
        let line = self.call(req)?;
        let mut v: Value = serde_json::from_slice(line).context("reply is not JSON")?;
        match v.get_mut("result") {
            Some(r) => Ok(r.take()),
            None => bail!("unexpected reply: {}", String::from_utf8_lossy(line).trim_end()),
        }
    }

    /// Sequential round trips: one in flight at a time; the latency of each after the warm-up.
    pub fn latencies(&mut self, req: &Request, t: Timing) -> anyhow::Result<Vec<Duration>> {
        let start = Instant::now();
        let mut v = Vec::with_capacity(1 << 16);
        loop {
            let t0 = Instant::now();
            self.call(req)?;
            let t1 = Instant::now();
            if t0 - start >= t.warmup {
                v.push(t1 - t0);
            }
            if t1 - start >= t.warmup + t.run {
                return Ok(v);
            }
        }
    }

    /// Pipelined calls, `depth` in flight, over this one connection: completed calls per second.
    ///
    /// A writer thread sends as long as fewer than `depth` calls are outstanding (a bounded channel
    /// of tokens, one per call in flight) and flushes whenever the window is full; this thread reads
    /// the replies. Answers may come back in any order: only their count matters.
    pub fn throughput(&mut self, req: &Request, depth: usize, t: Timing) -> anyhow::Result<f64> {
        let (tokens, slots) = sync_channel::<()>(depth);
        let stop = AtomicBool::new(false);
        let (r, w, buf, first_id) = (&mut self.r, &mut self.w, &mut self.buf, self.next_id);
        let (rate, last_id) = std::thread::scope(|s| -> anyhow::Result<(f64, u64)> {
            let stop = &stop;
            let writer = s.spawn(move || -> io::Result<u64> {
                let mut id = first_id;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(TrySendError::Full(())) = tokens.try_send(()) {
                        w.flush()?;
                        if tokens.send(()).is_err() {
                            break;
                        }
                    }
                    write_request(w, id, req)?;
                    id += 1;
                }
                w.flush()?;
                Ok(id)
            });
            let measured = (|| -> anyhow::Result<f64> {
                let start = Instant::now();
                let (mut done, mut window) = (0u64, None);
                loop {
                    if slots.recv().is_err() {
                        bail!("writer stopped");
                    }
                    read_reply(r, buf)?;
                    done += 1;
                    let now = Instant::now();
                    match window {
                        None if now - start >= t.warmup => window = Some((now, done)),
                        Some((t0, d0)) if now - t0 >= t.run => {
                            return Ok((done - d0) as f64 / (now - t0).as_secs_f64());
                        }
                        _ => {}
                    }
                }
            })();
            stop.store(true, Ordering::Relaxed);
            if measured.is_ok() {
                // Collect the calls still in flight, so the connection can be used again.
                while slots.recv().is_ok() {
                    read_reply(r, buf)?;
                }
            }
            drop(slots); // unblocks a writer waiting for a token if reading failed
            let last_id = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
            Ok((measured?, last_id))
        })?;
        self.next_id = last_id;
        Ok(rate)
    }
}

fn write_request(w: &mut impl Write, id: u64, req: &Request) -> io::Result<()> {
    writeln!(w, r#"{{"jsonrpc":"2.0","id":{id},{}}}"#, req.0)
}

/// Reads one reply line into `buf`; an `error` reply or end of stream fails.
fn read_reply(r: &mut impl BufRead, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    if r.read_until(b'\n', buf)? == 0 {
        bail!("connection closed by the server");
    }
    // Cheap check; PAYLOAD never contains this text.
    if buf.windows(8).any(|w| w == br#""error":"#) {
        bail!("error reply: {}", String::from_utf8_lossy(buf).trim_end());
    }
    Ok(())
}
