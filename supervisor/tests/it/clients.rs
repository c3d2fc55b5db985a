//! Issue 9: control clients that are unusual but legal, found by the fuzz targets
//! (`fuzz/`, docs/reliability.md): a client that half-closes the connection after its request
//! (`echo … | socat - UNIX-CONNECT:…`, docs/control-api.md), and JSON whose whitespace holds
//! line breaks (a pretty-printed body over `--listen`, a `\r` inside a socket line).

use crate::support::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `request` on a fresh socket connection, shuts the write half down and reads until
/// plugind closes the connection (at most 10 s).
async fn half_closed_exchange(d: &Daemon, request: &[u8]) -> Vec<Value> {
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("plugind closes").unwrap();
    out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_client_still_gets_its_answers() {
    let d = Daemon::builder().plugin("py-probe").plugin("perl-echo").start().await;
    // docs/control-api.md's example: `echo '{…"execute"…}' | socat - UNIX-CONNECT:$PLUGIND_SOCKET`.
    let hello = br#"{"jsonrpc":"2.0","id":1,"method":"execute","params":{"plugin":"perl-echo","method":"hello","params":{"name":"Ada"}}}
"#;
    let answers = half_closed_exchange(&d, hello).await;
    assert_eq!(answers, [json!({"jsonrpc": "2.0", "id": 1, "result": {"greeting": "Hello, Ada!"}})]);
    // Several requests in flight at the EOF, slow ones included, each answered once.
    let mut batch = Vec::new();
    for (id, ms) in [(1, 300), (2, 10), (3, 200)] {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "execute",
            "params": {"plugin": "py-probe", "method": "sleep", "params": {"ms": ms}}});
        batch.extend_from_slice(format!("{req}\n").as_bytes());
    }
    batch.extend_from_slice(
        b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"plugins.stop\",\"params\":{\"name\":\"perl-echo\"}}\n",
    );
    let answers = half_closed_exchange(&d, &batch).await;
    let mut ids: Vec<i64> = answers.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4], "{answers:?}");
    for a in &answers {
        assert!(a.get("result").is_some(), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_still_cancels_its_calls() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "execute",
        "params": {"plugin": "py-probe", "method": "sleep", "params": {"ms": 15000}, "timeout_ms": 20000}});
    s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    wait_for("the call in flight", async || (d.status("py-probe").await["calls"]["total"] == 1).then_some(())).await;
    let t = Instant::now();
    drop(s); // gone entirely, not half-closed
    wait_for("the plugin to be told with $/cancel", async || {
        let tail = d.status("py-probe").await["stderr_tail"].clone();
        tail.as_array()?.iter().any(|l| l.as_str().is_some_and(|l| l.starts_with("cancelled"))).then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "cancelled {:?} after the hang-up", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn line_breaks_in_json_whitespace_reach_no_plugin() {
    let b = Daemon::builder().plugin("py-probe").plugin("perl-echo");
    std::fs::write(b.path().join("token"), "tok\n").unwrap();
    std::fs::set_permissions(b.path().join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = b.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg("token").start().await;
    // A `\r` between JSON tokens on the socket: valid JSON, but a plugin reading with universal
    // newlines (Python's `open()` and `TextIOWrapper` defaults, as py-probe does; Node's
    // `readline`) splits lines at a lone `\r`.
    let mut c = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    c.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"execute\",\"params\":{\"plugin\":\"py-probe\",\"method\":\"echo\",\"params\":{\"a\":\r[1,\r2]},\"timeout_ms\":2000}}\n").await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while c.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["result"], json!({"a": [1, 2]}), "{v}");
    // The same with params large enough to be passed on from the client's line rather than
    // copied (16 KiB or more): with a `\r` in them they are copied without it; without one,
    // they arrive whole.
    let big = "x".repeat(40_000);
    for cr in ["\r", ""] {
        let req = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"execute\",\"params\":{{\"plugin\":\"py-probe\",\"method\":\"echo\",\"params\":{{\"a\":{cr}[1,{cr}2],\"big\":\"{big}\"}},\"timeout_ms\":5000}}}}\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut line = Vec::new();
        while c.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v["result"],
            json!({"a": [1, 2], "big": big}),
            "with {cr:?}: {}",
            &v.to_string()[..200.min(v.to_string().len())]
        );
    }
    // A pretty-printed HTTP body over --listen: its `\n`s must not reach the plugin's stdin.
    let addr = wait_for("the --listen address", async || {
        let log = d.log();
        let line = log.lines().find(|l| l.contains("control API over HTTP"))?;
        Some(line.split("addr=").nth(1)?.split_whitespace().next()?.to_owned())
    })
    .await;
    let body = "{\"jsonrpc\": \"2.0\", \"id\": 2, \"method\": \"execute\",\n \"params\": {\"plugin\": \"perl-echo\",\n  \"method\": \"echo\",\n  \"params\": {\n    \"b\": [\n      3\n    ]\n  },\n  \"timeout_ms\": 2000\n }\n}\n";
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: Bearer tok\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(v["result"], json!({"b": [3]}), "{v}");
    // Neither plugin saw a broken line.
    for p in ["py-probe", "perl-echo"] {
        let tail = d.status(p).await["stderr_tail"].to_string();
        assert!(!tail.contains("bad input") && !tail.contains("Traceback"), "{p}: {tail}");
    }
}

/// A plugin's pipes grow to 256 KiB once a line of 16 KiB or more goes through them (a 64 KiB
/// line no longer goes in parts, a context switch each), and not before: pipe capacity counts
/// against a per-user budget.
#[tokio::test(flavor = "multi_thread")]
async fn pipes_grow_for_large_lines_only() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let pipes = async || d.execute("py-probe", "pipes", json!({})).await.unwrap();
    let before = pipes().await;
    for end in ["stdin", "stdout"] {
        assert!(before[end].as_u64().unwrap() < 256 * 1024, "{before}");
    }
    d.execute("py-probe", "echo", json!({"small": "x".repeat(1000)})).await.unwrap();
    assert_eq!(pipes().await, before, "small lines grow nothing");
    // The request grows stdin before it is written; its answer grows stdout when it is read.
    let big = "x".repeat(40_000);
    assert_eq!(d.execute("py-probe", "echo", json!({"big": big})).await.unwrap()["big"], big);
    assert_eq!(pipes().await, json!({"stdin": 256 * 1024, "stdout": 256 * 1024}));
}
