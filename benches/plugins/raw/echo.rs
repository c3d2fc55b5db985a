//! The echo plugin written raw: one loop, `std` and `serde_json` only, no SDK.
//!
//! The floor of the SDK overhead lines of plugind-bench (docs/benchmarks.md, "SDK overhead"): it
//! reads lines from a buffered stdin, answers each into a buffered stdout, and flushes whenever the
//! input buffer holds no more complete input. It knows just enough of the protocol to be a plugin:
//! `init`, `register`, `execute` method `echo` (the params back), and an empty result for anything
//! else.

use std::io::{self, BufRead, BufReader, BufWriter, Write};

use serde_json::{json, Value};

fn main() -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, io::stdin().lock());
    let mut output = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return output.flush();
        }
        let Ok(mut msg) = serde_json::from_slice::<Value>(&line) else { continue };
        let (Some(id), Some(method)) = (msg.get("id").cloned(), msg.get("method").and_then(Value::as_str)) else {
            continue; // a notification or a response: nothing to answer
        };
        let result = match method {
            "execute" => msg["params"]["params"].take(),
            "init" => json!({ "protocol_version": 1 }),
            _ => json!({}),
        };
        serde_json::to_writer(&mut output, &json!({ "jsonrpc": "2.0", "id": id, "result": result }))?;
        output.write_all(b"\n")?;
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}
