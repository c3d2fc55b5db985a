//! The control socket: junk never crashes the daemon; mode 0600; stale files and live daemons.

use crate::support::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

fn roundtrip(socket: &std::path::Path, bytes: &[u8]) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    s.write_all(bytes).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_gets_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let sock = d.socket.clone();
    tokio::task::spawn_blocking(move || {
        let r = roundtrip(&sock, b"hello there\n").unwrap();
        assert_eq!(r["error"]["code"], -32700);
        assert_eq!(r["id"], json!(null));
        let r = roundtrip(&sock, b"{\"foo\": 1}\n").unwrap();
        assert_eq!(r["error"]["code"], -32600);
        let r = roundtrip(&sock, b"[1,2,3]\n").unwrap();
        assert_eq!(r["error"]["code"], -32600);
        // A request over the 16 MiB limit is discarded unread, but answered under its id.
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let big = format!("{{\"jsonrpc\":\"2.0\",\"id\":41,\"method\":\"execute\",\"params\":{{\"x\":\"{}\"}}}}\n", "y".repeat(17 << 20));
        let writer = std::thread::spawn({
            let mut s = s.try_clone().unwrap();
            move || s.write_all(big.as_bytes())
        });
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        writer.join().unwrap().unwrap();
        let r: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!((&r["id"], &r["error"]["code"]), (&json!(41), &json!(-32600)), "{r}");
        // A batch is not taken, but each request in it is answered under its own id, saying why.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.write_all(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"plugins.list\"},{\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"x\"}]\n")
            .unwrap();
        let mut answers = BufReader::new(s).lines();
        for id in [json!(1), json!("b")] {
            let r: serde_json::Value = serde_json::from_str(&answers.next().unwrap().unwrap()).unwrap();
            assert_eq!((&r["id"], &r["error"]["code"]), (&id, &json!(-32600)), "{r}");
            assert!(r["error"]["message"].as_str().unwrap().contains("without batches"), "{r}");
        }
        let r = roundtrip(&sock, b"\xff\xfe\xfd\n").unwrap();
        assert_eq!(r["error"]["code"], -32700);
        // Valid JSON that is not a valid request: -32600, under its own id when it has one.
        for (line, id) in [
            (&b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}\n"[..], json!(1)),
            (b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":{\"a\":1}}\n", json!("x")),
            (b"{\"jsonrpc\":\"1.0\",\"id\":8,\"method\":\"supervisor.status\"}\n", json!(8)),
            (b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"supervisor.status\",\"params\":\"x\"}\n", json!(9)),
            (b"{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"supervisor.status\"}\n", json!(null)),
            (b"{\"jsonrpc\":\"2.0\",\"id\":true,\"method\":\"execute\",\"params\":{\"plugin\":\"perl-echo\",\"method\":\"echo\"}}\n", json!(null)),
            (b"{\"jsonrpc\":\"2.0\",\"id\":[1],\"method\":\"supervisor.status\"}\n", json!(null)),
        ] {
            let r = roundtrip(&sock, line).unwrap();
            assert_eq!((&r["error"]["code"], &r["id"]), (&json!(-32600), &id), "{}: {r}", String::from_utf8_lossy(line));
        }
        // A null id is allowed (JSON-RPC 2.0): served, and answered under null.
        let r = roundtrip(&sock, b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"supervisor.status\"}\n").unwrap();
        assert!(r["result"]["uptime_ms"].is_u64() && r["id"].is_null(), "{r}");
        let r = roundtrip(&sock, b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no.such\"}\n").unwrap();
        assert_eq!(r["error"]["code"], -32601);
        let r = roundtrip(&sock, b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"plugins.get\",\"params\":{\"nom\":1}}\n")
            .unwrap();
        assert_eq!(r["error"]["code"], -32602);
        // What did not fit, without serde's position inside the params (it points nowhere the client sees).
        assert_eq!(r["error"]["message"], "invalid params: missing field `name`", "{r}");
        // 20 MiB without a newline, then a newline: discarded, reported, connection still usable.
        let mut s = UnixStream::connect(&sock).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            s.write_all(&chunk).unwrap();
        }
        s.write_all(b"\n{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"supervisor.status\"}\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("-32600"), "{line}");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"uptime_ms\""), "{line}");
        // A client that connects and vanishes.
        drop(UnixStream::connect(&sock).unwrap());
    })
    .await
    .unwrap();
    assert_eq!(d.execute("perl-echo", "echo", json!("still here")).await.unwrap(), json!("still here"));
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_stale_file_and_second_daemon() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second plugind on the same socket refuses to start, saying why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .args(["--socket", d.socket.to_str().unwrap(), "--state-dir", d.dir.path().join("s2").to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{out:?}");
    assert_eq!(err.matches("already listening").count(), 1, "said once: {err}");
    // The first one is unharmed.
    assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1));

    // A stale socket file (nobody listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .args(["--socket", stale.to_str().unwrap(), "--state-dir", dir.path().join("s").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the new daemon on the stale path", async || UnixStream::connect(&stale).ok()).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Two layers keep plugins off the control socket: its path is covered in their mount namespace,
/// and a connection from a process in a plugin's cgroup is closed without an answer. The plugin
/// tries the socket's own path, then a hard link to it that the namespace does not cover.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_cannot_use_the_control_socket() {
    let steer = r#"import json, os, socket, sys
def ask(path):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.settimeout(5)
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"plugins.list"}\n')
        return {"answer": s.recv(65536).decode()}
    except OSError as e:
        return {"error": str(e)}
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    r = None if m["method"] == "teardown" else {}
    if m["method"] == "execute":
        r = {"direct": ask(os.environ["CONTROL"]), "link": ask(os.environ["LINK"])}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;
    let b = Daemon::builder();
    let sock = b.path().join("plugind.sock");
    let link = b.path().join("link.sock");
    let env = json!({"CONTROL": sock.to_str().unwrap(), "LINK": link.to_str().unwrap()});
    let manifest = json!({"name": "steer", "version": "1.0.0", "main": "s.py", "env": env});
    let d = b.plugin_files("steer", &[("plugin.json", &manifest.to_string()), ("s.py", steer)]).start().await;
    std::fs::hard_link(&sock, &link).unwrap();
    let r = d.execute("steer", "go", json!({})).await.unwrap();
    // The path leads to a read-only /dev/null in the plugin's namespace.
    let direct = r["direct"]["error"].as_str().unwrap_or_default();
    assert!(direct.contains("refused") || direct.contains("denied"), "{r}");
    // Through the link the socket is reached, and the connection closed without an answer.
    let link = &r["link"];
    assert!(
        *link == json!({"answer": ""})
            || link["error"].as_str().is_some_and(|e| e.contains("reset") || e.contains("Broken pipe")),
        "{r}"
    );
    wait_for("the refusal in the log", async || {
        d.log().contains("refused control connection from a plugin process").then_some(())
    })
    .await;
}

/// A local client holding more idle connections than plugind has descriptors for: past a
/// quarter of its open-file limit a connection is told `-32006` and closed, so plugind keeps the
/// descriptors to restart a plugin and, once one closes, to serve a new client (it used to
/// accept until `EMFILE`, and could then neither spawn nor answer).
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_exhaust_pluginds_descriptors() {
    let b = Daemon::builder().plugin("perl-echo").open_files(256);
    let d = b.manifest("perl-echo", |m| m["limits"] = json!({"open_files": 64})).start().await;
    let socket = d.socket.clone();
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let conns: Vec<UnixStream> = (0..300).map(|_| UnixStream::connect(&socket).unwrap()).collect();
        let (mut held, mut refused) = (Vec::new(), 0);
        for mut s in conns {
            // A connection taken answers; one refused has its refusal waiting (and EOF).
            let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"plugins.list\"}\n");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["error"].is_null() {
                held.push(s);
            } else {
                assert_eq!(v["error"]["code"], -32006, "{v}");
                assert!(v["error"]["message"].as_str().unwrap().contains("64 control connections"), "{v}");
                refused += 1;
            }
        }
        (held, refused)
    })
    .await
    .unwrap();
    assert_eq!((held.len(), refused), (64, 236));
    // pluginctl says why it was refused, not that the connection broke.
    let out = d.ctl(&["list"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 control connections open"), "{out:?}");
    // Their places come back once plugind has seen them close (a refused call never ran).
    drop(held);
    let r =
        wait_for("a place to come free", async || d.call("plugins.restart", json!({"name": "perl-echo"})).await.ok())
            .await;
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1));
}
