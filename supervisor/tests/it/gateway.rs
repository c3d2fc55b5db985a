//! The LLM gateway example end to end, over HTTP: the Node gateway host (`plugind-host.mjs`) in
//! front of plugind running the example's four plugins (Python, Node, Rust).
//!
//! The example is copied into the test's temp dir with the repository's layout around it
//! (`sdk/` and `target/` linked beside it), so its relative paths resolve and a hot edit of the
//! redactor touches nothing in the checkout.

use crate::support::{alive, copy_dir, repo, wait_for, Daemon};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 exchange (one request per connection): (status, headers, body as JSON).
fn http(port: u16, method: &str, path: &str, auth: Option<&str>, body: Option<&Value>) -> (u16, String, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("gateway accepts");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("the gateway answers, never hangs");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The `x-plugind-receipt` header, parsed.
fn receipt(head: &str) -> Value {
    head.lines()
        .find_map(|l| l.strip_prefix("x-plugind-receipt: "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or(Value::Null)
}

/// `plugin:outcome` for each entry of one hook's receipt.
fn outcomes(r: &Value) -> Vec<String> {
    r.as_array()
        .map(|a| {
            a.iter().map(|e| format!("{}:{}", e["plugin"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect()
        })
        .unwrap_or_default()
}

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `node gateway.mjs` on a free port and waits for its "listening" line.
fn start_gateway(root: &Path, socket: &Path) -> Gateway {
    let mut child = Command::new("node")
        .arg(root.join("examples/llm-gateway/gateway.mjs"))
        .env("PLUGIND_SOCKET", socket)
        .env("GATEWAY_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let port = first.rsplit(':').next().and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the gateway did not start: {first:?}")
    });
    // Keep draining its request log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Gateway { child, port }
}

const CHAT: &str = "/v1/chat/completions";
const KEY: &str = "Bearer demo-key";

#[tokio::test(flavor = "multi_thread")]
async fn llm_gateway_serves_redacts_authenticates_counts_and_recovers() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("skipped: node is not installed");
        return;
    }
    let b = Daemon::builder().watch();
    let root = b.path().to_path_buf();
    copy_dir(&repo().join("examples/llm-gateway"), &root.join("examples/llm-gateway"));
    let target = Path::new(env!("CARGO_BIN_EXE_plugind")).parent().unwrap().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(repo().join("sdk"), root.join("sdk")).unwrap();
    std::os::unix::fs::symlink(target, root.join("target")).unwrap();
    // The Rust plugin's launcher picks the profile this test binary was built with.
    let mock = root.join("examples/llm-gateway/plugins/mock-llm/plugin.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mock).unwrap()).unwrap();
    m["env"] = json!({ "PLUGIND_PROFILE": if cfg!(debug_assertions) { "debug" } else { "release" } });
    std::fs::write(&mock, m.to_string()).unwrap();
    let d = b.arg("--plugins").arg("examples/llm-gateway/plugins").start().await;
    for p in ["auth", "pii-redactor", "mock-llm", "request-logger"] {
        assert_eq!(d.status(p).await["state"], "running", "{p}: {}", d.status(p).await);
    }
    let gw = start_gateway(&root, &d.socket);
    let port = gw.port;
    let ask = |text: &str| json!({ "model": "mock", "messages": [ { "role": "user", "content": text } ] });

    let (status, _, body) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/healthz", None, None)).await.unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    // A known path asked with the wrong method says which one it takes (405, `Allow`).
    let (status, head, body) = tokio::task::spawn_blocking(move || http(port, "GET", CHAT, None, None)).await.unwrap();
    assert_eq!(status, 405, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");
    let (status, _, _) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/v2/nothing", None, None)).await.unwrap();
    assert_eq!(status, 404);

    // No bearer token: auth rejects on purpose, the gateway answers 401 in OpenAI's shape.
    let q = ask("hi");
    let (status, head, body) =
        tokio::task::spawn_blocking(move || http(port, "POST", CHAT, None, Some(&q))).await.unwrap();
    assert_eq!(status, 401, "{head}\n{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert!(body["error"]["message"].is_string());
    assert_eq!(outcomes(&receipt(&head)["onRequest"]), ["auth:failed"], "{head}");

    // With the token: e-mail and phone numbers are redacted before the model sees them.
    let text = "mail bob@example.com, call +1 555-123-4567, (555) 123-4567, 555-123-4567 or +15551234567";
    let q = ask(text);
    let (status, head, body) =
        tokio::task::spawn_blocking(move || http(port, "POST", CHAT, Some(KEY), Some(&q))).await.unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "echo: mail [email], call [phone], [phone], [phone] or [phone]",
        "{body}"
    );
    assert_eq!(body["object"], "chat.completion");
    let r = receipt(&head);
    assert_eq!(outcomes(&r["onRequest"]), ["auth:passed"], "{r}");
    assert_eq!(outcomes(&r["onPrompt"]), ["pii-redactor:modified"], "{r}");
    assert_eq!(outcomes(&r["onResponse"]), ["request-logger:passed"], "{r}");

    // A multi-part message (OpenAI's `content` as a list of parts): its text parts are redacted
    // too, other parts pass as they are.
    let parts = json!([
        { "type": "text", "text": "mail bob@example.com" },
        { "type": "image_url", "image_url": { "url": "https://example.com/a.png" } },
        { "type": "text", "text": "or call 555-123-4567" }
    ]);
    let q = json!({ "model": "mock", "messages": [{ "role": "user", "content": parts }] });
    let (status, _, body) =
        tokio::task::spawn_blocking(move || http(port, "POST", CHAT, Some(KEY), Some(&q))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: mail [email] or call [phone]", "{body}");
    let r = d
        .call(
            "hooks.run",
            json!({ "hook": "onPrompt", "payload": { "messages": [{ "role": "user", "content": parts }] } }),
        )
        .await;
    let content = &r.unwrap()["payload"]["messages"][0]["content"];
    assert_eq!(content[1], parts[1], "{content}");
    assert_eq!(
        (content[0]["text"].as_str(), content[2]["text"].as_str()),
        (Some("mail [email]"), Some("or call [phone]"))
    );

    // request-logger counted what reached onResponse: two requests (the 401 did not).
    assert_eq!(d.execute("request-logger", "stats", json!({})).await.unwrap(), json!({ "requests": 2 }));

    // A SIGKILLed model: a quick JSON error, never a hang; then the gateway recovers.
    let llm = d.status("mock-llm").await["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(llm, libc::SIGKILL) };
    let started = Instant::now();
    let q = ask("anyone there?");
    let (status, _, body) =
        tokio::task::spawn_blocking(move || http(port, "POST", CHAT, Some(KEY), Some(&q))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
    if status != 200 {
        assert!([502, 503].contains(&status), "{status} {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    wait_for("the model to serve again", async || {
        let q = ask("back?");
        let (status, _, _) =
            tokio::task::spawn_blocking(move || http(port, "POST", CHAT, Some(KEY), Some(&q))).await.unwrap();
        (status == 200).then_some(())
    })
    .await;

    // Hot-editing the redactor while requests flow: no request fails, and the new code serves.
    let before = d.status("pii-redactor").await["pid"].as_u64().unwrap();
    let script = root.join("examples/llm-gateway/plugins/pii-redactor/main.mjs");
    let edited = std::fs::read_to_string(&script).unwrap().replace("\"[email]\"", "\"[e-mail]\"");
    let flow = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = http(port, "POST", CHAT, Some(KEY), Some(&ask("write to amy@example.org")));
            let content = body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
            results.push((status, content.clone()));
            if content.contains("[e-mail]") || Instant::now() > deadline {
                return results;
            }
        }
    });
    std::fs::write(&script, edited).unwrap();
    let results = flow.await.unwrap();
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "requests failed during the hot reload: {failed:?}");
    assert!(results.last().is_some_and(|(_, c)| c == "echo: write to [e-mail]"), "{:?}", results.last());
    let after = d.status("pii-redactor").await["pid"].as_u64().unwrap();
    assert_ne!(before, after, "a new instance serves");
    wait_for("the old redactor to retire", async || (!alive(before as u32)).then_some(())).await;

    // The model stopped: 503, and the error names the plugin to start.
    d.call("plugins.stop", json!({ "name": "mock-llm" })).await.unwrap();
    let q = ask("hello?");
    let (status, _, body) =
        tokio::task::spawn_blocking(move || http(port, "POST", CHAT, Some(KEY), Some(&q))).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("plugin mock-llm (1.0.0) is stopped"), "{body}");
}
