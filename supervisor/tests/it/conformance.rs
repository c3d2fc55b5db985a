//! One scenario, the same calls and the same expected answers, against every shipped example:
//! the Rust, Python and Node SDK plugins and the plain-Python one (no SDK).

use crate::support::*;
use serde_json::json;

const EXAMPLES: [&str; 4] = ["echo-rust", "echo-python", "echo-node", "plain-python"];

async fn scenario(d: &Daemon, p: &str) {
    assert_eq!(d.execute(p, "hello", json!({})).await.unwrap(), json!({"greeting": "Hello, world!"}), "{p}");
    assert_eq!(d.execute(p, "hello", json!({"name": "Ada"})).await.unwrap(), json!({"greeting": "Hello, Ada!"}), "{p}");
    let payload = json!({"a": [1, {"b": null}], "s": "ü ✓", "n": -1.5});
    assert_eq!(d.execute(p, "echo", payload.clone()).await.unwrap(), payload, "{p}");

    let r = d.execute(p, "fail", json!({"code": 1234, "message": "nope"})).await;
    assert_eq!(code(&r), 1234, "{p}");
    assert_eq!(data(&r)["plugin"], p, "a plugin's own error names it: {r:?}");
    let r = d.execute(p, "no-such-method", json!({})).await;
    assert_eq!(code(&r), -32601, "{p}");
    assert_eq!(data(&r)["plugin"], p, "{r:?}");
    // An error passed on from a service call keeps the plugin that made it.
    let r = d
        .execute(
            p,
            "call",
            json!({"service": "perl-echo", "method": "fail", "params": {"code": 77, "message": "deep"}}),
        )
        .await;
    assert_eq!(code(&r), 77, "{p}: {r:?}");
    assert_eq!(data(&r)["plugin"], "perl-echo", "{p}: {r:?}");

    // A deadline: -32001 for the caller, $/cancel for the plugin (its SDK then answers -32800,
    // which plugind takes as the end of the work and drops).
    let r = d.call("execute", json!({"plugin": p, "method": "sleep", "params": {"ms": 5000}, "timeout_ms": 300})).await;
    assert_eq!(code(&r), -32001, "{p}");
    // $/progress keeps a call alive past its deadline: 4 steps of 150 ms under a 300 ms deadline.
    let r = d
        .call(
            "execute",
            json!({"plugin": p, "method": "progress", "params": {"steps": 4, "interval_ms": 150}, "timeout_ms": 300}),
        )
        .await;
    assert_eq!(r.unwrap(), json!({"steps": 4}), "{p}");

    assert_eq!(d.execute(p, "env", json!({"name": "PLUGIND_PLUGIN"})).await.unwrap(), json!({"value": p}), "{p}");
    assert_eq!(d.execute(p, "print", json!({})).await.unwrap(), json!({"printed": true}), "{p}");

    // A registry call through plugind: allowed for a declared dependency, denied otherwise.
    let r = d.execute(p, "call", json!({"service": "perl-echo", "method": "echo", "params": {"via": p}})).await;
    assert_eq!(r.unwrap(), json!({"via": p}), "{p}");
    let r = d.execute(p, "call", json!({"service": "py-probe", "method": "echo", "params": {}})).await;
    assert_eq!(code(&r), -32005, "{p}");
    assert_eq!(data(&r)["dependency"], "py-probe", "{p}");

    // Still serving after all that, with no protocol complaints about it.
    assert_eq!(d.execute(p, "echo", json!("ok")).await.unwrap(), json!("ok"), "{p}");
    let log = d.log();
    for bad in ["non-JSON line on stdout", "unknown id"] {
        assert!(!log.lines().any(|l| l.contains(bad) && l.contains(&format!("\"{p}\""))), "{p}: {bad} in log");
    }

    // Crash: -32003 for the call in flight, then a restart.
    let r = d.execute(p, "exit", json!({"code": 9})).await;
    assert_eq!(code(&r), -32003, "{p}");
    // Its message says where the exit and the last stderr lines are.
    let Err(plugind_client::ClientError::Rpc(e)) = &r else { unreachable!("checked above") };
    assert!(e.message.contains(&format!("`pluginctl status {p}`")), "{p}: {}", e.message);
    let s = wait_for("a restart", async || {
        let s = d.status(p).await;
        (s["state"] == "running" && s["restarts"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["last_exit"]["code"], 9, "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_answers_the_same_contract() {
    let mut b = Daemon::builder().plugin("perl-echo").plugin("py-probe");
    for p in EXAMPLES {
        b = b.example(p).manifest(p, |m| m["dependencies"] = json!({"required": ["perl-echo@^1"]}));
    }
    let d = b.start().await;
    for p in EXAMPLES {
        assert_eq!(d.status(p).await["state"], "running", "{p}: {}", d.status(p).await);
    }
    futures::future::join_all(EXAMPLES.map(|p| scenario(&d, p))).await;
}

/// The 40-line plain-Python plugin of docs/protocol.md, section 9, taken from the doc as it is:
/// it runs under plugind (hello, and a `sleep` cancelled by its deadline), and by hand, piped one
/// request, it prints its answer (it used to exit at EOF before its thread wrote).
#[tokio::test(flavor = "multi_thread")]
async fn the_plugin_in_the_protocol_doc_runs_under_plugind_and_by_hand() {
    let doc = std::fs::read_to_string(repo().join("docs/protocol.md")).unwrap();
    let section = &doc[doc.find("## 9. A complete plugin").expect("the section is there")..];
    let start = section.find("```python\n").unwrap() + "```python\n".len();
    let source = &section[start..start + section[start..].find("```").unwrap()];
    let manifest = r#"{"name":"hello-py","version":"0.1.0","main":"main.py"}"#;
    let d = Daemon::builder().plugin_files("hello-py", &[("plugin.json", manifest), ("main.py", source)]).start().await;
    assert_eq!(
        d.execute("hello-py", "hello", json!({"name": "Ada"})).await.unwrap(),
        json!({"greeting": "Hello, Ada!"})
    );
    let r = d
        .call("execute", json!({"plugin": "hello-py", "method": "sleep", "params": {"ms": 5000}, "timeout_ms": 200}))
        .await;
    assert_eq!(code(&r), -32001);
    let main = d.dir.path().join("plugins/hello-py/main.py");
    // hello, and a 100 ms sleep: at EOF, the answers still being made are written.
    for (request, answer) in [
        (&b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"execute\",\"params\":{\"method\":\"hello\",\"params\":{\"name\":\"Ada\"}}}\n"[..], "Hello, Ada!"),
        (b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"execute\",\"params\":{\"method\":\"sleep\",\"params\":{\"ms\":100}}}\n", "\"slept\": 100"),
    ] {
        let mut child = std::process::Command::new("python3")
            .arg(&main)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(answer), "{out:?}");
    }
}
