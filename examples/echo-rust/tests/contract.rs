//! The example contract, checked against the real binary over real stdio.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// Safety net; no test waits for it on success.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Plugin {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    stderr: thread::JoinHandle<String>,
}

impl Plugin {
    fn spawn() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_echo-rust"))
            .env("ECHO_RUST_TEST_VAR", "set")
            .env_remove("ECHO_RUST_UNSET_VAR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echo-rust");
        let stdout = child.stdout.take().expect("UNWRAP: piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("stdout is UTF-8");
                let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("non-JSON on stdout ({e}): {line:?}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("UNWRAP: piped");
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let stdin = child.stdin.take();
        let mut p = Plugin { child, stdin, lines, stderr };
        let init = json!({ "protocol_version": 1, "name": "echo-rust", "version": "1.0.0", "config": {},
            "data_dir": null, "supervisor": { "name": "plugind", "version": "0.1.0" } });
        assert_eq!(p.call(1, "init", init), json!({ "result": { "protocol_version": 1 } }));
        assert_eq!(p.call(2, "register", json!({})), json!({ "result": { "services": [] } }));
        p
    }

    fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{msg}").expect("write to the plugin");
    }

    fn next(&self) -> Value {
        self.lines.recv_timeout(TIMEOUT).expect("a message from the plugin")
    }

    /// Sends a request and returns the response's `result` or `error` member as an object.
    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let resp = self.next();
        assert_eq!(resp["id"], json!(id), "{resp}");
        outcome(resp)
    }

    fn execute(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.call(id, "execute", json!({ "method": method, "params": params }))
    }

    /// Closes stdin and returns the rest of stdout, the exit code and stderr.
    fn finish(mut self) -> (Vec<Value>, Option<i32>, String) {
        drop(self.stdin.take());
        let rest: Vec<Value> = self.lines.iter().collect();
        let status = self.child.wait().expect("wait for the plugin");
        (rest, status.code(), self.stderr.join().expect("stderr reader"))
    }
}

fn outcome(mut resp: Value) -> Value {
    let obj = resp.as_object_mut().expect("an object");
    obj.remove("jsonrpc");
    obj.remove("id");
    resp
}

#[test]
fn example_contract() {
    let mut p = Plugin::spawn();
    let anything = json!({ "s": "é\"\n", "n": [1, 2.5, -3, null, true, {}] });
    assert_eq!(p.execute(10, "echo", anything.clone()), json!({ "result": anything }));
    assert_eq!(p.execute(11, "echo", json!(null)), json!({ "result": null }));
    assert_eq!(p.execute(12, "hello", json!({})), json!({ "result": { "greeting": "Hello, world!" } }));
    assert_eq!(p.execute(13, "hello", json!({ "name": "Ada" })), json!({ "result": { "greeting": "Hello, Ada!" } }));
    assert_eq!(p.execute(14, "sleep", json!({ "ms": 20 })), json!({ "result": { "slept": 20 } }));
    assert_eq!(p.execute(15, "env", json!({ "name": "ECHO_RUST_TEST_VAR" })), json!({ "result": { "value": "set" } }));
    assert_eq!(p.execute(16, "env", json!({ "name": "ECHO_RUST_UNSET_VAR" })), json!({ "result": { "value": null } }));
    assert_eq!(
        p.execute(17, "fail", json!({ "code": 1234, "message": "nope" })),
        json!({ "error": { "code": 1234, "message": "nope" } })
    );
    assert_eq!(p.execute(18, "no_such_method", json!({}))["error"]["code"], json!(-32601));
    assert_eq!(p.execute(19, "print", json!({})), json!({ "result": { "printed": true } }));
    assert_eq!(p.call(20, "ping", json!({})), json!({ "result": {} }));
    assert_eq!(
        p.call(21, "hook", json!({ "hook": "onPrompt", "payload": [1] })),
        json!({ "result": { "payload": [1] } })
    );

    // progress: one `$/progress` per step, then the result.
    p.send(json!({ "jsonrpc": "2.0", "id": 30, "method": "execute",
        "params": { "method": "progress", "params": { "steps": 3, "interval_ms": 5 } } }));
    for i in 1..=3 {
        assert_eq!(
            p.next(),
            json!({ "jsonrpc": "2.0", "method": "$/progress", "params": { "id": 30, "progress": i, "total": 3 } })
        );
    }
    let done = p.next();
    assert_eq!(done["id"], json!(30));
    assert_eq!(outcome(done), json!({ "result": { "steps": 3 } }));

    // call: the plugin asks plugind (us) for `service.call` and returns the answer unchanged.
    for (id, answer) in
        [(40, json!({ "result": { "pong": true } })), (41, json!({ "error": { "code": -32005, "message": "denied" } }))]
    {
        p.send(json!({ "jsonrpc": "2.0", "id": id, "method": "execute",
            "params": { "method": "call", "params": { "service": "other", "method": "m", "params": { "x": 1 } } } }));
        let req = p.next();
        assert_eq!(req["method"], "service.call", "{req}");
        assert_eq!(req["params"], json!({ "service": "other", "method": "m", "params": { "x": 1 } }));
        let mut reply = answer.clone();
        reply["jsonrpc"] = json!("2.0");
        reply["id"] = req["id"].clone();
        p.send(reply);
        let resp = p.next();
        assert_eq!(resp["id"], json!(id));
        assert_eq!(outcome(resp), answer);
    }

    // sleep, cancelled: stops at once and answers -32800 (the work is over), never its result.
    p.send(json!({ "jsonrpc": "2.0", "id": 50, "method": "execute", "params": { "method": "sleep", "params": { "ms": 60000 } } }));
    p.send(json!({ "jsonrpc": "2.0", "method": "$/cancel", "params": { "id": 50 } }));
    p.send(json!({ "jsonrpc": "2.0", "id": 51, "method": "execute", "params": { "method": "echo", "params": "after cancel" } }));
    let mut answers = [p.next(), p.next()];
    answers.sort_by_key(|a| a["id"].as_u64());
    assert_eq!(
        outcome(answers[0].clone()),
        json!({ "error": { "code": -32800, "message": "cancelled" } }),
        "{answers:?}"
    );
    assert_eq!(outcome(answers[1].clone()), json!({ "result": "after cancel" }), "{answers:?}");

    assert_eq!(p.call(60, "teardown", json!({})), json!({ "result": null }));
    let started = std::time::Instant::now();
    let (rest, code, stderr) = p.finish();
    assert!(started.elapsed() < Duration::from_secs(5), "exit took {:?}", started.elapsed());
    assert_eq!(rest, Vec::<Value>::new(), "nothing after teardown");
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("must land on stderr"), "stderr:\n{stderr}");
}

#[test]
fn exit_exits_with_the_code() {
    let mut p = Plugin::spawn();
    p.send(json!({ "jsonrpc": "2.0", "id": 3, "method": "execute", "params": { "method": "exit", "params": { "code": 7 } } }));
    let (rest, code, _) = p.finish();
    assert_eq!((rest, code), (vec![], Some(7)));
}
