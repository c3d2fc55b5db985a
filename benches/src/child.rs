//! `--child-pipe` and `--child-unix PATH`: the far side of floors (i) and (ii), a minimal JSON-RPC
//! echo in the same style as a plugin (parse the envelope, answer `params.params` as the result),
//! with blocking I/O and no runtime.

use plugind_protocol::jsonrpc::{error_line, result_line, Message, RpcError};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Answers every request line of `r` on `w` until `r` ends; flushes when no input is waiting.
pub fn serve(r: impl Read, w: impl Write) -> io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return w.flush();
        }
        w.write_all(&answer(&line))?;
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

fn answer(line: &[u8]) -> Vec<u8> {
    let null = RawValue::NULL;
    match Message::parse(line.strip_suffix(b"\n").unwrap_or(line)) {
        Ok(Message::Request { id, params, .. }) => {
            let inner: HashMap<&str, &RawValue> =
                params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or_default();
            result_line(id, inner.get("params").copied().unwrap_or(null))
        }
        _ => error_line(null, &RpcError::new(-32600, "not a request")),
    }
}

/// Binds `path`, says `ready` on stdout, serves one client.
pub fn serve_unix(path: &Path) -> io::Result<()> {
    let listener = UnixListener::bind(path)?;
    println!("ready");
    io::stdout().flush()?;
    let (s, _) = listener.accept()?;
    serve(s.try_clone()?, s)
}
