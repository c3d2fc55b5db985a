//! MCP interoperability (docs/mcp.md): MCP servers as `"protocol": "mcp"` plugins, and
//! `pluginctl mcp` offering plugind's plugins to MCP clients.
//!
//! The first tests use an MCP server written here with Python's standard library only (raw JSON
//! lines), so they run wherever the other tests do. The last ones use the official MCP Python SDK
//! (its server as a plugin, its client driving `pluginctl mcp`); they need a Python with the `mcp`
//! package: `$PLUGIND_MCP_PYTHON`, else the bench's venv `target/bench-peers/python/venv` (made
//! by `make bench` and by `.ci/run`). Without one they print `skipped: …` and pass.

use crate::support::*;
use plugind_client::{CallOptions, Progress};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// A stdio MCP server with the standard library only. Tools: `add` (schema'd, structured
/// result), `fail` (`isError`), `slow` (never answers; reports `notifications/cancelled` on
/// stderr), `progress` (two progress notifications, then an answer), `crash` (exits), `spawn`
/// (forks `sleep` children: one in its process group, one in a new session). It lists its tools
/// in two pages, logs every `tools/call` on stderr, prints a banner on stdout (garbage, for
/// plugind to report) and sends one `notifications/message`.
const SERVER: &str = r#"import json, os, subprocess, sys
VERSION = "v1"
TOOLS = [
    {"name": "add", "description": "Adds two integers (" + VERSION + ")",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                     "required": ["a", "b"], "additionalProperties": False},
     "outputSchema": {"type": "object", "properties": {"sum": {"type": "integer"}}},
     "annotations": {"idempotentHint": True}},
    {"name": "fail", "description": "Always a tool error", "inputSchema": {"type": "object"}},
    {"name": "slow", "description": "Never answers", "inputSchema": {"type": "object"}},
    {"name": "progress", "inputSchema": {"type": "object"}},
    {"name": "crash", "inputSchema": {"type": "object"}},
    {"name": "spawn", "inputSchema": {"type": "object"}},
]
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
def log(s):
    sys.stderr.write(s + "\n"); sys.stderr.flush()
def text(t, **extra):
    return dict({"content": [{"type": "text", "text": t}]}, **extra)
print("mcp test server starting (a banner on stdout)", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    m = json.loads(line)
    method, mid, p = m.get("method"), m.get("id"), m.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": os.environ.get("ANSWER_VERSION", "2025-06-18"),
              "capabilities": {"tools": {"listChanged": True}, "logging": {}}, "serverInfo": {"name": "stdlib-test", "version": "1.0"}}})
    elif method == "notifications/initialized":
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "notice", "logger": "t", "data": "hello from the mcp server"}})
    elif method == "notifications/cancelled":
        log("cancelled %s: %s" % (p.get("requestId"), p.get("reason")))
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "tools/list":
        page = TOOLS[:3] if "cursor" not in p else TOOLS[3:]
        r = {"tools": page}
        if "cursor" not in p:
            r["nextCursor"] = "page2"
        send({"jsonrpc": "2.0", "id": mid, "result": r})
    elif method == "tools/call":
        name, args = p["name"], p.get("arguments", {})
        log("call %s id=%s args=%s" % (name, mid, json.dumps(args, sort_keys=True)))
        token = (p.get("_meta") or {}).get("progressToken")
        if name == "add":
            s = args["a"] + args["b"]
            send({"jsonrpc": "2.0", "id": mid, "result": text(str(s), structuredContent={"sum": s})})
        elif name == "fail":
            send({"jsonrpc": "2.0", "id": mid, "result": text("it failed on purpose", isError=True)})
        elif name == "slow":
            pass
        elif name == "progress":
            for i in (1, 2):
                send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": i, "total": 2, "message": "step %d" % i}})
            send({"jsonrpc": "2.0", "id": mid, "result": text("done")})
        elif name == "crash":
            os._exit(3)
        elif name == "spawn":
            a = subprocess.Popen(["sleep", "600"])
            b = subprocess.Popen(["sleep", "600"], start_new_session=True)
            send({"jsonrpc": "2.0", "id": mid, "result": text("spawned", structuredContent={"group": a.pid, "session": b.pid})})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": "unknown tool " + name}})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no " + str(method)}})
"#;

/// The manifest of the stdlib server as plugin `name`.
fn manifest(name: &str) -> String {
    json!({
        "name": name, "version": "1.0.0", "main": "server.py", "protocol": "mcp",
        "permissions": ["process"], "timeout_ms": 3000,
        "restart": { "max_restarts": 10 },
    })
    .to_string()
}

fn with_server(b: DaemonBuilder, name: &str) -> DaemonBuilder {
    b.plugin_files(name, &[("plugin.json", &manifest(name)), ("server.py", SERVER)])
}

/// The plugin's stderr lines so far.
async fn stderr_lines(d: &Daemon, plugin: &str) -> Vec<String> {
    let s = d.status(plugin).await;
    s["stderr_tail"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect()
}

/// The plugin's log lines (stderr, `log`, plugind's own) so far.
async fn log_lines(d: &Daemon, plugin: &str) -> Vec<Value> {
    let r = d.call("logs.tail", json!({ "plugin": plugin, "lines": 1000 })).await.unwrap();
    r["lines"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_server_is_a_plugin_with_its_tools_as_catalog() {
    let d = with_server(Daemon::builder(), "calc").start().await;
    let s = d.wait_state("calc", "running").await;
    assert_eq!(s["protocol"], "mcp");
    // Both pages of tools/list, as methods with their schemas and hints.
    let methods = &s["methods"];
    let names: Vec<&str> = methods.as_object().expect("methods in plugins.get").keys().map(String::as_str).collect();
    assert_eq!(names, ["add", "crash", "fail", "progress", "slow", "spawn"]);
    assert_eq!(methods["add"]["description"], "Adds two integers (v1)");
    assert_eq!(methods["add"]["params"]["required"], json!(["a", "b"]));
    assert_eq!(methods["add"]["result"]["properties"]["sum"]["type"], "integer");
    assert_eq!(methods["add"]["idempotent"], true);

    // execute → tools/call, the CallToolResult unchanged.
    let r = d.execute("calc", "add", json!({ "a": 2, "b": 3 })).await.unwrap();
    assert_eq!(r, json!({ "content": [{ "type": "text", "text": "5" }], "structuredContent": { "sum": 5 } }));
    // pluginctl call goes the same way.
    let out = d.ctl(&["call", "calc", "add", r#"{"a": 1, "b": 1}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["structuredContent"]["sum"], 2);

    // isError → -32010 with the result in data.
    let r = d.execute("calc", "fail", json!({})).await;
    assert_eq!(code(&r), -32010);
    let failed = data(&r);
    assert_eq!(failed["plugin"], "calc");
    assert_eq!(failed["result"]["isError"], true);
    assert_eq!(failed["result"]["content"][0]["text"], "it failed on purpose");

    // Params are checked against the tool's inputSchema before the server sees them.
    let r = d.execute("calc", "add", json!({ "a": "two", "b": 3 })).await;
    assert_eq!(code(&r), -32602, "{r:?}");
    assert!(data(&r)["errors"].as_array().is_some_and(|e| !e.is_empty()), "{r:?}");
    let calls = stderr_lines(&d, "calc").await;
    assert!(!calls.iter().any(|l| l.contains("\"two\"")), "the invalid call reached the server: {calls:?}");

    // The server's banner on stdout is reported like any plugin's, and its logging message is
    // a log line of the plugin.
    let log = log_lines(&d, "calc").await;
    let has = |needle: &str| log.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)));
    assert!(has("non-JSON line on stdout skipped"), "{log:?}");
    assert!(has("hello from the mcp server"), "{log:?}");
    assert!(has("speaks protocol version 2025-06-18"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_reaches_the_server_as_notifications_cancelled_and_progress_is_relayed() {
    let d = with_server(Daemon::builder(), "calc").start().await;
    let r = d.call("execute", json!({ "plugin": "calc", "method": "slow", "params": {}, "timeout_ms": 300 })).await;
    assert_eq!(code(&r), -32001);
    // The server logged the call with its MCP id, then the cancellation of that id.
    let (id, reason) = wait_for("notifications/cancelled to reach the server", async || {
        let lines = stderr_lines(&d, "calc").await;
        let id = lines.iter().find_map(|l| l.strip_prefix("call slow id=")?.split(' ').next().map(str::to_owned))?;
        let reason = lines.iter().find_map(|l| l.strip_prefix(&format!("cancelled {id}: ")).map(str::to_owned))?;
        Some((id, reason))
    })
    .await;
    assert!(!id.is_empty() && reason.contains("gave up"), "{id} {reason}");

    // The server's progress for the call's token reaches the host as $/progress of its call.
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let host = d.client().await;
    let opts = CallOptions::new().on_progress(move |p: Progress| sink.lock().unwrap().push(p));
    let r = host.execute("calc", "progress", json!({}), opts).await.unwrap();
    assert_eq!(r["content"][0]["text"], "done");
    wait_for("both progress notifications", async || (seen.lock().unwrap().len() == 2).then_some(())).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1].progress, Some(2.0));
    assert_eq!(seen[1].total, Some(2.0));
    assert_eq!(seen[1].message.as_deref(), Some("step 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_server_is_restarted_and_its_forked_children_die_with_it() {
    let d = with_server(Daemon::builder(), "calc").start().await;
    let pid = d.status("calc").await["pid"].as_u64().unwrap();
    let r = d.execute("calc", "crash", json!({})).await;
    assert_eq!(code(&r), -32003);
    let s = wait_for("calc to be running again", async || {
        let s = d.status("calc").await;
        (s["state"] == "running" && s["pid"].as_u64() != Some(pid)).then_some(s)
    })
    .await;
    assert!(s["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(d.execute("calc", "add", json!({ "a": 1, "b": 2 })).await.unwrap()["structuredContent"]["sum"], 3);

    // A launcher-like server forks children; they go when the plugin stops. The one in the
    // plugin's process group goes with the group; the one in its own session only with the
    // instance's cgroup, so it is checked where plugind has one.
    let r = d.execute("calc", "spawn", json!({})).await.unwrap();
    let group = r["structuredContent"]["group"].as_u64().unwrap() as u32;
    let session = r["structuredContent"]["session"].as_u64().unwrap() as u32;
    assert!(alive(group) && alive(session));
    let out = d.ctl(&["stop", "calc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the forked child in the group to die", async || (!alive(group)).then_some(())).await;
    if instance_cgroups(&d.log()).is_empty() {
        eprintln!("skipped: no instance cgroup on this host, so a child that left the session is not followed");
        unsafe { libc::kill(session as i32, libc::SIGKILL) };
    } else {
        wait_for("the forked child in its own session to die", async || (!alive(session)).then_some(())).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_server_is_hot_reloaded_and_an_old_protocol_version_fails_the_start() {
    let d = with_server(Daemon::builder().watch(), "calc")
        .plugin_files("old", &[("plugin.json", &manifest("old")), ("server.py", SERVER)])
        .manifest("old", |m| {
            m["env"] = json!({ "ANSWER_VERSION": "2024-10-07" });
            m["restart"] = json!({ "policy": "never" });
        })
        .start()
        .await;
    let s = d.wait_state("old", "failed").await;
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("2024-10-07") && why.contains("2024-11-05"), "{s}");

    let pid = d.status("calc").await["pid"].as_u64().unwrap();
    let file = d.plugins.join("calc/server.py");
    std::fs::write(&file, SERVER.replace("VERSION = \"v1\"", "VERSION = \"v2\"")).unwrap();
    let s = wait_for("the reloaded server to serve", async || {
        let s = d.status("calc").await;
        (s["state"] == "running" && s["pid"].as_u64() != Some(pid)).then_some(s)
    })
    .await;
    assert_eq!(s["methods"]["add"]["description"], "Adds two integers (v2)");
    assert_eq!(d.execute("calc", "add", json!({ "a": 20, "b": 22 })).await.unwrap()["structuredContent"]["sum"], 42);
}

// ---- the official MCP Python SDK ----

/// A Python that has the `mcp` package, or why there is none.
fn sdk_python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("PLUGIND_MCP_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = PathBuf::from(env!("CARGO_BIN_EXE_plugind")).parent().unwrap().parent().unwrap().to_path_buf();
            target.join("bench-peers/python/venv/bin/python")
        }
    };
    if !python.exists() {
        return Err(format!(
            "no Python with the MCP SDK at {} (set PLUGIND_MCP_PYTHON, or run .ci/run or make bench to make the venv)",
            python.display()
        ));
    }
    let ok = Command::new(&python)
        .args(["-c", "import mcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!("{} cannot import mcp", python.display()));
    }
    Ok(python)
}

/// The SDK's high-level server (`MCPServer`, 1.x's `FastMCP`): one tool with a structured
/// result, one that raises.
const SDK_SERVER: &str = r#"from typing import TypedDict

from mcp.server import MCPServer

server = MCPServer("sdk-greeter")


class Greeting(TypedDict):
    greeting: str


@server.tool()
def greet(name: str) -> Greeting:
    """Greets someone."""
    return {"greeting": f"Hello, {name}!"}


@server.tool()
def boom() -> str:
    """Always raises."""
    raise ValueError("boom on purpose")


if __name__ == "__main__":
    server.run("stdio")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_server_is_a_plugin() {
    let python = match sdk_python() {
        Ok(p) => p,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let manifest = json!({
        "name": "sdk", "version": "1.0.0", "main": "server.py", "protocol": "mcp",
        "command": [python.to_string_lossy(), "server.py"], "startup_timeout_ms": 15000,
    });
    let d = Daemon::builder()
        .plugin_files("sdk", &[("plugin.json", &manifest.to_string()), ("server.py", SDK_SERVER)])
        .start()
        .await;
    let s = d.wait_state("sdk", "running").await;
    assert_eq!(s["methods"]["greet"]["description"], "Greets someone.");
    assert_eq!(s["methods"]["greet"]["params"]["required"], json!(["name"]));
    assert_eq!(s["methods"]["greet"]["result"]["required"], json!(["greeting"]));
    let r = d.execute("sdk", "greet", json!({ "name": "Ada" })).await.unwrap();
    assert_eq!(r["structuredContent"], json!({ "greeting": "Hello, Ada!" }), "{r}");
    let r = d.execute("sdk", "boom", json!({})).await;
    assert_eq!(code(&r), -32010, "{r:?}");
    assert!(data(&r)["result"]["content"][0]["text"].as_str().unwrap().contains("boom"), "{r:?}");
    let r = d.execute("sdk", "greet", json!({ "name": 7 })).await;
    assert_eq!(code(&r), -32602, "{r:?}");
}

/// A plain plugind plugin with a catalog in its manifest: `hello` (schema'd, object result),
/// `fail` (a JSON-RPC error).
const GREETER: &str = r#"import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m: continue
    if m["method"] == "execute":
        p = m["params"]
        if p["method"] == "hello":
            r = {"result": {"greeting": "Hello, %s!" % p["params"].get("name", "world")}}
        else:
            r = {"error": {"code": 42, "message": "greeter refuses"}}
    else:
        r = {"result": None if m["method"] == "teardown" else {}}
    print(json.dumps(dict({"jsonrpc": "2.0", "id": m["id"]}, **r)), flush=True)
"#;

/// The SDK's client over stdio, driving `pluginctl mcp`; prints one JSON line of findings.
const SDK_CLIENT: &str = r#"import asyncio, json, sys
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

async def main(pluginctl, socket):
    server = StdioServerParameters(command=pluginctl, args=["--socket", socket, "mcp"])
    async with stdio_client(server) as (read, write), ClientSession(read, write) as s:
        init = await s.initialize()
        tools = (await s.list_tools()).tools
        hello = await s.call_tool("greeter__hello", {"name": "Ada"})
        fail = await s.call_tool("greeter__fail", {})
        add = await s.call_tool("calc__add", {"a": 2, "b": 40})
        tool_error = await s.call_tool("calc__fail", {})
        try:
            await s.call_tool("nobody__nothing", {})
            unknown = None
        except Exception as e:
            unknown = str(e)
        print(json.dumps({
            "version": init.protocol_version,
            "tools": {t.name: {"description": t.description, "schema": t.input_schema,
                               "idempotent": t.annotations.idempotent_hint if t.annotations else None} for t in tools},
            "hello": {"structured": hello.structured_content, "text": hello.content[0].text, "is_error": hello.is_error},
            "fail": {"text": fail.content[0].text, "is_error": fail.is_error},
            "add": {"structured": add.structured_content, "is_error": add.is_error},
            "tool_error": {"text": tool_error.content[0].text, "is_error": tool_error.is_error},
            "unknown": unknown,
        }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_client_uses_plugins_through_pluginctl_mcp() {
    let python = match sdk_python() {
        Ok(p) => p,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let greeter = json!({
        "name": "greeter", "version": "1.0.0", "main": "g.py",
        "methods": {
            "hello": { "description": "Greets", "idempotent": true,
                       "params": { "type": "object", "properties": { "name": { "type": "string" } } } },
            "fail": { "description": "Refuses" },
        },
    });
    let d = with_server(Daemon::builder(), "calc")
        .plugin_files("greeter", &[("plugin.json", &greeter.to_string()), ("g.py", GREETER)])
        .start()
        .await;
    let script = d.dir.path().join("client.py");
    std::fs::write(&script, SDK_CLIENT).unwrap();
    let out = tokio::task::spawn_blocking({
        let (pluginctl, socket) = (pluginctl(), d.socket.clone());
        move || Command::new(python).arg(script).arg(pluginctl).arg(socket).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(r["version"], "2025-11-25", "{r}");
    let tools = r["tools"].as_object().unwrap();
    for name in ["greeter__hello", "greeter__fail", "calc__add", "calc__slow"] {
        assert!(tools.contains_key(name), "{name} missing: {r}");
    }
    assert_eq!(tools["greeter__hello"]["description"], "Greets");
    assert_eq!(tools["greeter__hello"]["idempotent"], true);
    assert_eq!(tools["greeter__fail"]["schema"], json!({ "type": "object" }));
    assert_eq!(tools["calc__add"]["schema"]["required"], json!(["a", "b"]));
    assert_eq!(r["hello"]["structured"], json!({ "greeting": "Hello, Ada!" }));
    assert_eq!(serde_json::from_str::<Value>(r["hello"]["text"].as_str().unwrap()).unwrap()["greeting"], "Hello, Ada!");
    assert_eq!(r["hello"]["is_error"], false);
    assert_eq!(r["fail"], json!({ "text": "greeter refuses", "is_error": true }));
    // An MCP plugin's own results pass through, errors included.
    assert_eq!(r["add"]["structured"], json!({ "sum": 42 }));
    assert_eq!(r["tool_error"], json!({ "text": "it failed on purpose", "is_error": true }));
    assert!(r["unknown"].as_str().is_some_and(|e| e.contains("unknown tool")), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_mcp_server_works_as_documented() {
    let d = Daemon::builder().plugin("mcp-python").start().await;
    let s = d.wait_state("mcp-python", "running").await;
    assert_eq!(s["methods"]["word_count"]["idempotent"], true);
    let r = d.execute("mcp-python", "word_count", json!({ "text": "hello plugin world" })).await.unwrap();
    assert_eq!(r["structuredContent"], json!({ "words": 3, "characters": 18 }));
    let r = d.execute("mcp-python", "divide", json!({ "a": 1, "b": 0 })).await;
    assert_eq!(code(&r), -32010);
    // Each progress step restarts the deadline, so the first step is made longer than it.
    let r = d.call("execute", json!({ "plugin": "mcp-python", "method": "count_to", "params": { "n": 5, "delay_ms": 2000 }, "timeout_ms": 300 })).await;
    assert_eq!(code(&r), -32001);
    wait_for("the example to stop counting", async || {
        stderr_lines(&d, "mcp-python")
            .await
            .iter()
            .any(|l| l.starts_with("count_to ") && l.contains("cancelled"))
            .then_some(())
    })
    .await;
}

/// `pluginctl mcp` for daemon `d`, its stdin and stdout piped.
fn pluginctl_mcp(d: &Daemon) -> tokio::process::Child {
    tokio::process::Command::new(pluginctl())
        .arg("--socket")
        .arg(&d.socket)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `pluginctl mcp`'s stdout, a message a line.
type McpLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Reads `pluginctl mcp`'s messages until one satisfies `pick`; returns it and those before it.
async fn until(lines: &mut McpLines, pick: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.expect("an answer in time").unwrap();
        let v: Value = serde_json::from_str(&line.expect("pluginctl mcp still running")).unwrap();
        if pick(&v) {
            return (v, before);
        }
        before.push(v);
    }
}

/// A plugin named to collide with another's tools (`file.manager` beside `file_manager`) never
/// receives a call the client meant for the other: while both run, neither has the shared name
/// and each has a name of its own that does not depend on the other (a digest of its plugin and
/// method); a tool keeps the route of the client's last `tools/list` until the client lists
/// again, even after the plugin it named stopped (which gives the other the name in a new list).
#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_mcp_tool_names_do_not_change_hands_until_the_client_lists_again() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d =
        Daemon::builder().plugin_as("mcp-python", "file_manager").plugin_as("mcp-python", "file.manager").start().await;
    let mut child = pluginctl_mcp(&d);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |v: Value| stdin.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})).await;
    until(&mut lines, |v| v["id"] == 1).await;
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
    send(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})).await;
    let (listed, _) = until(&mut lines, |v| v["id"] == 2).await;
    let names: Vec<String> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    // Both run: the shared name goes to neither; each has its own, a 16-digit digest after it.
    assert!(!names.iter().any(|n| n == "file_manager__count_to"), "{names:?}");
    let theirs: Vec<&String> = names.iter().filter(|n| n.starts_with("file_manager__count_to_")).collect();
    assert_eq!(theirs.len(), 2, "{names:?}");
    assert!(theirs.iter().all(|n| n.len() == "file_manager__count_to_".len() + 16), "{theirs:?}");
    // Which is file_manager's: the one whose call it receives.
    let mut owner = None;
    for (k, name) in theirs.iter().enumerate() {
        let n = 7 + k;
        let call = json!({"name": name, "arguments": {"n": n, "delay_ms": 1}});
        send(json!({"jsonrpc":"2.0","id":20 + k,"method":"tools/call","params":call})).await;
        let (answer, _) = until(&mut lines, |v| v["id"] == 20 + k).await;
        assert_eq!(answer["result"]["content"][0]["text"], format!("counted to {n}"), "{answer}");
        let mine = stderr_lines(&d, "file_manager").await.iter().any(|l| l.ends_with(&format!("started: n={n}")));
        let other = stderr_lines(&d, "file.manager").await.iter().any(|l| l.ends_with(&format!("started: n={n}")));
        assert!(mine != other, "one plugin got call {n}");
        if mine {
            owner = Some((*name).clone());
        }
    }
    let owner = owner.expect("one of the names is file_manager's");

    // The colliding plugin restarts, the one the client knows stops; the client does not list.
    assert!(d.ctl(&["restart", "file.manager"]).status.success());
    assert!(d.ctl(&["stop", "file_manager"]).status.success());
    let call = json!({"name": owner, "arguments": {"n": 1, "delay_ms": 1}});
    send(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":call})).await;
    let (answer, _) = until(&mut lines, |v| v["id"] == 3).await;
    assert_eq!(answer["result"]["isError"], true, "the call went to a plugin: {answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("file_manager") && text.contains("stopped"), "{answer}");
    assert!(
        !stderr_lines(&d, "file.manager").await.iter().any(|l| l.contains("started: n=1")),
        "file.manager received a call meant for file_manager"
    );

    // Once the client lists again, file.manager alone has the shared name, as the list says;
    // file_manager back, each has its own name again, the same as before.
    send(json!({"jsonrpc":"2.0","id":4,"method":"tools/list"})).await;
    until(&mut lines, |v| v["id"] == 4).await;
    let bare = json!({"name": "file_manager__count_to", "arguments": {"n": 1, "delay_ms": 1}});
    send(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":bare})).await;
    let (answer, _) = until(&mut lines, |v| v["id"] == 5).await;
    assert_eq!(answer["result"]["content"][0]["text"], "counted to 1", "{answer}");
    assert!(d.ctl(&["start", "file_manager"]).status.success());
    send(json!({"jsonrpc":"2.0","id":6,"method":"tools/list"})).await;
    let (listed, _) = until(&mut lines, |v| v["id"] == 6).await;
    let again: Vec<&str> =
        listed["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(again.contains(&owner.as_str()), "{again:?}");
}

/// `pluginctl mcp` driven with raw JSON lines (no SDK needed): progress for a token,
/// `notifications/cancelled` reaching the plugin, `ping`, an unknown tool, `list_changed` when a
/// plugin stops, exit 0 when stdin closes.
#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_mcp_relays_progress_and_cancellation() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d = Daemon::builder().plugin("mcp-python").start().await;
    let mut child = pluginctl_mcp(&d);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |v: Value| stdin.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})).await;
    let (init, _) = until(&mut lines, |v| v["id"] == 1).await;
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05");
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;

    let args = json!({"n": 2, "delay_ms": 10});
    send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"mcp-python__count_to","arguments":args,"_meta":{"progressToken":"t1"}}})).await;
    let (done, before) = until(&mut lines, |v| v["id"] == 2).await;
    assert_eq!(done["result"]["content"][0]["text"], "counted to 2");
    let progress: Vec<&Value> = before.iter().filter(|v| v["method"] == "notifications/progress").collect();
    assert_eq!(progress.len(), 2, "{before:?}");
    assert_eq!(
        progress[1]["params"],
        json!({"progressToken": "t1", "progress": 2.0, "total": 2.0, "message": "2 of 2"})
    );

    let slow = json!({"n": 3, "delay_ms": 5000});
    send(
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"mcp-python__count_to","arguments":slow}}),
    )
    .await;
    wait_for("the slow call to reach the plugin", async || {
        stderr_lines(&d, "mcp-python").await.iter().any(|l| l.ends_with("started: n=3")).then_some(())
    })
    .await;
    send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"reason":"user"}})).await;
    wait_for("the plugin to stop counting", async || {
        stderr_lines(&d, "mcp-python")
            .await
            .iter()
            .any(|l| l.starts_with("count_to ") && l.contains("cancelled"))
            .then_some(())
    })
    .await;
    send(json!({"jsonrpc":"2.0","id":4,"method":"ping"})).await;
    send(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"nobody__nothing","arguments":{}}}))
        .await;
    let (unknown, before) = until(&mut lines, |v| v["id"] == 5).await;
    assert_eq!(unknown["error"]["code"], -32602);
    assert!(before.iter().any(|v| v["id"] == 4 && v["result"] == json!({})), "{before:?}");
    assert!(!before.iter().any(|v| v["id"] == 3), "a cancelled request is not answered: {before:?}");

    assert!(d.ctl(&["stop", "mcp-python"]).status.success());
    until(&mut lines, |v| v["method"] == "notifications/tools/list_changed").await;
    drop(stdin);
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await.expect("exit when stdin closes").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A scripted client (`printf … | pluginctl mcp`): the requests read before stdin closed are all
/// answered, a batch (MCP 2025-03-26) member by member, before it exits.
#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_mcp_answers_what_it_read_before_stdin_closed_and_takes_batches() {
    use tokio::io::AsyncWriteExt;
    let d = Daemon::builder().plugin("mcp-python").start().await;
    let mut child = pluginctl_mcp(&d);
    let script = [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
        json!([{"jsonrpc":"2.0","id":50,"method":"ping"},{"jsonrpc":"2.0","id":51,"method":"ping"}]),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"mcp-python__count_to","arguments":{"n": 2, "delay_ms": 200}}}),
    ];
    let mut stdin = child.stdin.take().unwrap();
    for m in &script {
        stdin.write_all(format!("{m}\n").as_bytes()).await.unwrap();
    }
    drop(stdin); // before the call can have finished
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.expect("it exits").unwrap();
    assert_eq!(out.status.code(), Some(0));
    let answers: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_id =
        |id: u64| answers.iter().find(|a| a["id"] == id).unwrap_or_else(|| panic!("no answer {id}: {answers:?}"));
    assert_eq!(by_id(1)["result"]["protocolVersion"], "2025-03-26");
    assert_eq!((by_id(50)["result"].clone(), by_id(51)["result"].clone()), (json!({}), json!({})));
    assert_eq!(by_id(2)["result"]["content"][0]["text"], "counted to 2", "{answers:?}");
}

/// A line with a byte that is not UTF-8 is answered `-32700` under a null id, as bad JSON is, and
/// the bridge goes on to answer the next request (it exited 1, `reading stdin: invalid utf-8`).
#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_mcp_answers_a_line_that_is_not_utf8_and_goes_on() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d = Daemon::builder().start().await;
    let mut child = pluginctl_mcp(&d);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"\xff\"}}\n").await.unwrap();
    stdin.write_all(format!("{}\n", json!({"jsonrpc":"2.0","id":2,"method":"ping"})).as_bytes()).await.unwrap();
    let (pong, before) = until(&mut lines, |v| v["id"] == 2).await;
    assert_eq!(pong["result"], json!({}), "{pong}");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!((&before[0]["id"], &before[0]["error"]["code"]), (&Value::Null, &json!(-32700)), "{before:?}");
    drop(stdin);
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await.expect("exit when stdin closes").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// An MCP server's instances answering results of megabytes at once: the adapter and the
/// instance reading its translation take the plugin's turn at long lines one after the other,
/// and every result arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_servers_instances_answering_long_lines_at_once_lose_none() {
    let d = Daemon::builder().plugin_as("mcp-long-lines", "bigmcp").start().await;
    let calls = (0..8).map(|i| {
        let n = (2 << 20) + i * 65_537;
        let d = &d;
        async move { (n, d.execute("bigmcp", "big", json!({"n": n})).await) }
    });
    for (n, r) in futures::future::join_all(calls).await {
        let r = r.unwrap_or_else(|e| panic!("result of {n} bytes: {e:?}"));
        assert_eq!(r["content"][0]["text"].as_str().map(str::len), Some(n));
    }
}

/// An MCP server instance that stalls mid-way through a long result, holding the plugin's turn
/// at long lines, holds its siblings up for a second, not until it is killed: its line is
/// dropped and a sibling's long result arrives.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_server_stalled_mid_line_does_not_hold_up_its_siblings() {
    let d = Daemon::builder()
        .plugin_as("mcp-long-lines", "stallmcp")
        .manifest("stallmcp", |m| {
            m["instances"] = json!(2);
            m["timeout_ms"] = json!(20000);
        })
        .start()
        .await;
    // Its own call ends at its deadline (the adapter cannot tell which call a dropped line was for).
    let stall = d.call("execute", json!({"plugin": "stallmcp", "method": "stall", "params": {}, "timeout_ms": 5000}));
    let sibling = async {
        wait_for("an instance to stall mid-line", async || {
            stderr_lines(&d, "stallmcp").await.iter().any(|l| l.starts_with("stalling")).then_some(())
        })
        .await;
        let t = std::time::Instant::now();
        let r = d.execute("stallmcp", "big", json!({"n": 3 << 20})).await;
        (r, t.elapsed())
    };
    let (_stalled, (r, took)) = tokio::join!(stall, sibling);
    let r = r.unwrap_or_else(|e| panic!("the sibling's long result: {e:?}"));
    assert_eq!(r["content"][0]["text"].as_str().map(str::len), Some(3 << 20));
    assert!(took < std::time::Duration::from_secs(10), "the sibling waited {took:?}");
    let log = log_lines(&d, "stallmcp").await;
    assert!(log.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("stalled mid-way"))), "{log:?}");
}

/// A stdlib MCP server with no permission that answers `flood` with `n` notifications `zz/x`
/// of 15 MiB (params `[0,0,…]`), a `notifications/progress` and two `notifications/message` as
/// long (text data with a 64 KiB logger, and an array), then `done`; and `fail` with an `isError` result holding
/// 15 MiB of zeros.
const HUGE_SERVER: &str = r#"import json, sys
ZEROS = "[" + "0," * (15 << 19) + "0]"
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
def raw(s):
    sys.stdout.write(s + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    method, mid, p = m.get("method"), m.get("id"), m.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "huge", "version": "1"}}})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [{"name": "flood"}, {"name": "fail"}]}})
    elif method == "tools/call" and p["name"] == "flood":
        token = json.dumps(p["_meta"]["progressToken"])
        for _ in range(p["arguments"]["n"]):
            raw('{"jsonrpc":"2.0","method":"zz/x","params":' + ZEROS + '}')
        raw('{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":' + token + ',"progress":1,"total":' + ZEROS + '}}')
        raw('{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"warning","logger":"' + "l" * (64 << 10) + '","data":"' + "m" * (15 << 20) + '"}}')
        raw('{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error","data":' + ZEROS + '}}')
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "done"}]}})
    elif method == "tools/call" and p["name"] == "fail":
        raw('{"jsonrpc":"2.0","id":' + json.dumps(mid) + ',"result":{"content":[{"type":"text","text":"it failed"}],"structuredContent":{"zeros":' + ZEROS + '},"isError":true}}')
"#;

/// An MCP server's notifications and tool errors are not parsed into trees: notifications over
/// 1 MiB are ignored unread (a `notifications/message`'s text kept, cut), and a long `isError`
/// result is not kept in `-32010`'s data. A server with no permission writing 15 MiB `zz/x`
/// notifications grew plugind by 650 MB; four such tool errors at once got it OOM-killed (audit 21).
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_servers_huge_notifications_and_tool_errors_do_not_grow_plugind() {
    let manifest =
        json!({ "name": "huge", "version": "1.0.0", "main": "server.py", "protocol": "mcp", "timeout_ms": 60_000 });
    let d = Daemon::builder()
        .plugin_files("huge", &[("plugin.json", &manifest.to_string()), ("server.py", HUGE_SERVER)])
        .start()
        .await;
    d.wait_state("huge", "running").await;
    let before = rss_kb(d.pid());
    let ((flood, fails), peak) = peak_rss_during(d.pid(), async {
        // The answer comes after the notifications on the same stdout: they have all been read.
        let flood = d.execute("huge", "flood", json!({ "n": 4 })).await;
        let fails = futures::future::join_all((0..4).map(|_| d.execute("huge", "fail", json!({})))).await;
        (flood, fails)
    })
    .await;
    eprintln!("plugind: {before} KiB, at most {peak} KiB");
    assert!(peak < before + 200 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    assert_eq!(flood.unwrap()["content"][0]["text"], "done");
    for r in &fails {
        assert_eq!(code(r), -32010, "{r:?}");
        let Err(plugind_client::ClientError::Rpc(e)) = r else { unreachable!() };
        assert_eq!(e.message, "tool fail failed: it failed");
        let data = data(r);
        assert_eq!(data["plugin"], "huge");
        assert!(data["result_bytes"].as_u64().is_some_and(|n| n > 15 << 20), "{:.300}", data.to_string());
        assert_eq!(data["result"], json!({ "content": [{ "type": "text", "text": "it failed" }], "isError": true }));
    }
    let log = log_lines(&d, "huge").await;
    let messages: Vec<&str> = log.iter().filter_map(|l| l["message"].as_str()).collect();
    let ignored = |m: &&str| m.contains("notification `zz/x` of") && m.contains("ignored unread");
    assert!(messages.iter().any(ignored), "{messages:?}");
    // The messages' text is kept, cut; the logger as long is not.
    let cut = |start: &str| {
        log.iter().find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(start))).cloned().unwrap_or_default()
    };
    let text = cut("mmmm");
    let m = text["message"].as_str().unwrap_or_default();
    assert!(m.len() <= 64 * 1024 && m.contains("truncated"), "{} bytes", m.len());
    assert_eq!((&text["level"], &text["fields"]), (&json!("warn"), &Value::Null));
    let array = cut("[0,0,");
    assert!(array["message"].as_str().is_some_and(|m| m.len() <= 64 * 1024), "{array}");
    assert_eq!(array["level"], "error");
}
