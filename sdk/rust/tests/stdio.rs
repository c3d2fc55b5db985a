//! `serve` over real stdio: stray output goes to stderr, never onto the wire.
//!
//! No libtest harness (`harness = false`): this binary re-runs itself as the plugin, and the
//! harness's own output would otherwise share the plugin's stdout.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use plugind_sdk::{json, Context, Plugin, RpcError, Value};

const CHILD: &str = "PLUGIND_SDK_STDIO_TEST_CHILD";

struct Stray;

impl Plugin for Stray {
    async fn execute(&self, _ctx: Context, method: &str, _params: Value) -> Result<Value, RpcError> {
        match method {
            "print" => {
                println!("stray println");
                Ok(json!({ "printed": true }))
            }
            "child" => {
                // A child process inherits fd 1, which is stderr by now.
                let status = Command::new("sh").args(["-c", "echo stray child output"]).status();
                Ok(json!({ "ok": status.map(|s| s.success()).unwrap_or(false) }))
            }
            "stdin" => {
                // fd 0 reads /dev/null, not the protocol.
                let mut s = String::new();
                let read = std::io::stdin().read_to_string(&mut s);
                Ok(json!({ "read": read.ok(), "text": s }))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        plugind_sdk::run(Stray);
        return;
    }
    let exe = std::env::current_exe().expect("UNWRAP: the test knows its own path");
    let mut child = Command::new(exe)
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the plugin");
    let requests = [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "init", "params": {
            "protocol_version": 1, "name": "stray", "version": "1.0.0", "config": {},
            "supervisor": { "name": "plugind", "version": "0" } } }),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "execute", "params": { "method": "print", "params": {} } }),
        json!({ "jsonrpc": "2.0", "id": 3, "method": "execute", "params": { "method": "child", "params": {} } }),
        json!({ "jsonrpc": "2.0", "id": 4, "method": "execute", "params": { "method": "stdin", "params": {} } }),
        json!({ "jsonrpc": "2.0", "id": 5, "method": "teardown", "params": {} }),
    ];
    let mut stdin = child.stdin.take().expect("UNWRAP: piped");
    for r in &requests {
        writeln!(stdin, "{r}").expect("write a request");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("the plugin exits once stdin closes");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}; stderr:\n{stderr}", out.status);

    let mut results = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("non-JSON on stdout ({e}): {line:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        results.insert(v["id"].as_u64().expect("only responses"), v["result"].clone());
    }
    assert_eq!(results.get(&1), Some(&json!({ "protocol_version": 1 })), "stdout:\n{stdout}");
    assert_eq!(results.get(&2), Some(&json!({ "printed": true })));
    assert_eq!(results.get(&3), Some(&json!({ "ok": true })));
    assert_eq!(results.get(&4), Some(&json!({ "read": 0, "text": "" })));
    assert_eq!(results.get(&5), Some(&Value::Null));
    assert_eq!(results.len(), 5, "stdout:\n{stdout}");
    assert!(stderr.contains("stray println"), "stderr:\n{stderr}");
    assert!(stderr.contains("stray child output"), "stderr:\n{stderr}");
    println!("stdio: println, child output and stdin reads stay off the wire ... ok");
}
