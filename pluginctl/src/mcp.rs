//! `pluginctl mcp`: plugind's plugins as the tools of an MCP server on stdio (`docs/mcp.md`).
//!
//! # Theory of operation
//! An MCP client (an IDE, a desktop assistant, the MCP SDKs) starts `pluginctl mcp` as a stdio
//! server. Each line on stdin is one JSON-RPC message; each answer is one line on stdout (nothing
//! else is ever written there). Behind it is one [`Client`] connection to plugind, reconnected
//! if plugind restarts.
//! - `tools/list` asks plugind for `plugins.list`, then `plugins.get` of each running plugin, and
//!   offers every method of its catalog (`methods`) as the tool `PLUGIN__METHOD` ([`tool_name`]),
//!   with the method's `params` schema as `inputSchema` (`{"type":"object"}` without one), its
//!   description, and `idempotent` as `annotations.idempotentHint`.
//! - `tools/call` is plugind's `execute` ([`Server::call`]): a plain JSON result becomes a text
//!   content with the JSON (and `structuredContent` when it is an object); an MCP plugin's own
//!   `CallToolResult` passes through, also when it is a tool error (`-32010` carries it); any
//!   other plugin error is a result with `isError: true` and the message as text, so the model
//!   sees it. An unknown tool and arguments plugind refused (`-32602`) are JSON-RPC errors.
//! - Each call runs as its own task: `notifications/cancelled` aborts it, which drops the
//!   `execute` future, which makes the client library send plugind `$/cancel`. With a
//!   `_meta.progressToken`, plugind's `$/progress` for the call becomes `notifications/progress`.
//! - `notifications/tools/list_changed`: after `notifications/initialized`, plugind's lifecycle
//!   events make the server rebuild its list, and it tells the client when the list changed.
//! - It ends when stdin closes (exit 0), once the requests it read have been answered.
//! - A batch (a JSON array of messages, MCP 2025-03-26) is taken member by member, each answered
//!   on its own line.

use plugind_client::{CallOptions, Client, ClientError, Progress};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// The MCP versions this server speaks, oldest first; it answers the client's when it is one of
/// them, else the newest.
pub const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The longest tool name MCP clients accept.
pub const MAX_TOOL_NAME: usize = 64;

/// JSON-RPC codes this server answers with.
const INVALID_PARAMS: i64 = -32602;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;
/// plugind's tool error: an MCP plugin's `CallToolResult` with `isError` in `data.result`.
const TOOL_ERROR: i64 = plugind_protocol::codes::TOOL_ERROR;

/// Why `pluginctl mcp` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// Reading stdin failed.
    #[error("reading stdin: {0}")]
    Stdin(#[source] std::io::Error),
}

/// `PLUGIN__METHOD` with every character outside `[A-Za-z0-9_-]` replaced by `_`, cut to 64
/// characters: the tool name when no other tool's is the same.
fn clean_name(plugin: &str, method: &str) -> String {
    format!("{plugin}__{method}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_TOOL_NAME)
        .collect()
}

/// Tool names for `(plugin, method)` pairs, in their order: [`clean_name`] where no other pair
/// makes the same one; where several do, none of them gets it, and each gets [`digest_name`]: its
/// clean name cut, and a digest of its plugin and method. A name never depends on which other
/// plugins exist or how they sort: a plugin named to collide with another's tools
/// (`file.manager` beside `file_manager`) can neither take their names nor choose the ones they
/// get (audit 18 had the impersonator first take `_2` by sorting first, then, with the name as
/// written preferred, the bare names).
pub fn tool_names(pairs: &[(&str, &str)]) -> Vec<String> {
    let clean: Vec<String> = pairs.iter().map(|(p, m)| clean_name(p, m)).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for c in &clean {
        *count.entry(c.as_str()).or_default() += 1;
    }
    let digested: Vec<String> = pairs.iter().map(|(p, m)| digest_name(p, m)).collect();
    // A clean name that is some pair's digest name is not given either: the digest's owner
    // keeps it.
    let digests: HashSet<&str> = digested.iter().map(String::as_str).collect();
    clean
        .iter()
        .zip(digested.iter())
        .map(|(c, d)| if count[c.as_str()] == 1 && !digests.contains(c.as_str()) { c.clone() } else { d.clone() })
        .collect()
}

/// The tool name of `method` of `plugin` when its clean name is shared: the clean name cut to
/// leave room, `_`, and 16 hex digits of the SHA-1 of `plugin`, a NUL and `method` (64 bits:
/// no other pair can be found to have them).
fn digest_name(plugin: &str, method: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(plugin.as_bytes());
    h.update([0u8]);
    h.update(method.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let clean = clean_name(plugin, method);
    let keep = MAX_TOOL_NAME - 1 - hex.len();
    format!("{}_{hex}", &clean[..clean.len().min(keep)])
}

/// The version to answer a client's `initialize` with.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    VERSIONS.iter().find(|v| Some(**v) == requested).copied().unwrap_or(VERSIONS[VERSIONS.len() - 1])
}

/// Where a tool's calls go.
#[derive(Debug, Clone)]
struct Route {
    plugin: String,
    method: String,
    /// An MCP plugin: its results are `CallToolResult`s already.
    mcp: bool,
}

/// The tools as last listed.
#[derive(Default)]
struct Table {
    tools: Vec<Value>,
    routes: HashMap<String, Route>,
}

/// The MCP `Tool` for one catalog entry; None when its params schema admits no object (MCP
/// arguments are always an object).
fn tool(name: &str, spec: &Value) -> Option<Value> {
    let mut t = json!({ "name": name, "inputSchema": input_schema(spec.get("params"))? });
    if let Some(d) = spec.get("description").and_then(Value::as_str) {
        t["description"] = json!(d);
    }
    if let Some(b) = spec.get("idempotent").and_then(Value::as_bool) {
        t["annotations"] = json!({ "idempotentHint": b });
    }
    Some(t)
}

/// A method's params schema as an MCP `inputSchema`, whose `type` must be the literal
/// `"object"` (clients such as the TypeScript SDK refuse the whole `tools/list` otherwise):
/// - no schema (or not an object, or `true`): `{ "type": "object" }`;
/// - `"type": "object"`: as it is;
/// - no `type`, or a `type` list that includes `"object"`: `{ "type": "object", "allOf": [schema] }`;
/// - any other `type` (`array`, `string`…): None, the method cannot be a tool.
fn input_schema(params: Option<&Value>) -> Option<Value> {
    let Some(schema) = params.filter(|s| s.is_object()) else { return Some(json!({ "type": "object" })) };
    match schema.get("type") {
        Some(Value::String(t)) if t == "object" => Some(schema.clone()),
        None => Some(json!({ "type": "object", "allOf": [schema] })),
        Some(Value::Array(ts)) if ts.iter().any(|t| t == "object") => {
            Some(json!({ "type": "object", "allOf": [schema] }))
        }
        Some(_) => None,
    }
}

/// Every running plugin's catalog as tools, plugins and methods in name order.
async fn build_table(client: &Client) -> Result<Table, ClientError> {
    let list = client.call("plugins.list", &json!({})).await?;
    let mut names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "running")
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort_unstable();
    let mut table = Table::default();
    // (plugin, method, spec, mcp) of every method that can be a tool.
    let mut entries: Vec<(String, String, Value, bool)> = Vec::new();
    for plugin in names {
        // A plugin that went away meanwhile simply has no tools.
        let Ok(status) = client.call("plugins.get", &json!({ "name": plugin })).await else { continue };
        let mcp = status["protocol"] == "mcp";
        let Some(methods) = status["methods"].as_object() else { continue };
        let mut sorted: Vec<(&String, &Value)> = methods.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (method, spec) in sorted {
            if input_schema(spec.get("params")).is_none() {
                eprintln!("pluginctl mcp: {plugin} method {method} is not a tool: its params schema admits no object");
                continue;
            }
            entries.push((plugin.to_owned(), method.clone(), spec.clone(), mcp));
        }
    }
    let pairs: Vec<(&str, &str)> = entries.iter().map(|(p, m, _, _)| (p.as_str(), m.as_str())).collect();
    let names = tool_names(&pairs);
    for (name, (plugin, method, spec, mcp)) in names.into_iter().zip(entries) {
        let Some(t) = tool(&name, &spec) else { continue };
        table.tools.push(t);
        table.routes.insert(name, Route { plugin, method, mcp });
    }
    Ok(table)
}

/// A plugin's answer as an MCP `CallToolResult`, or the JSON-RPC error to answer instead.
fn to_call_result(route: &Route, outcome: Result<Value, ClientError>) -> Result<Value, Value> {
    match outcome {
        Ok(v) if route.mcp => Ok(v),
        Ok(v) => {
            let mut r = json!({ "content": [{ "type": "text", "text": v.to_string() }] });
            if v.is_object() {
                r["structuredContent"] = v;
            }
            Ok(r)
        }
        Err(e) if e.code() == TOOL_ERROR && e.data().is_some_and(|d| d["result"].is_object()) => {
            Ok(e.data().map(|d| d["result"].clone()).unwrap_or_default())
        }
        Err(e) if e.code() == INVALID_PARAMS => {
            let rpc = e.to_rpc();
            let mut err = json!({ "code": rpc.code, "message": rpc.message });
            if let Some(d) = rpc.data {
                err["data"] = d;
            }
            Err(err)
        }
        Err(e) => Ok(json!({ "content": [{ "type": "text", "text": e.to_rpc().message }], "isError": true })),
    }
}

/// The server's state, shared by the reading loop and the call tasks.
struct Server {
    client: Client,
    /// Lines for stdout.
    out: mpsc::UnboundedSender<Value>,
    table: tokio::sync::Mutex<Table>,
    /// Calls in flight by the JSON text of their id, for `notifications/cancelled`.
    calls: Mutex<HashMap<String, AbortHandle>>,
    /// The list-changed watcher, once it runs (aborted when stdin closes: it holds the server).
    watcher: Mutex<Option<AbortHandle>>,
    /// The tasks answering requests (`tools/list`, `tools/call`): when stdin closes, the
    /// requests already read are answered before the server exits.
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl Server {
    fn send(&self, v: Value) {
        let _ = self.out.send(v);
    }

    fn answer(&self, id: &Value, outcome: Result<Value, Value>) {
        self.send(match outcome {
            Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
        });
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` as a task the server waits for before it exits.
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) -> AbortHandle {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while tasks.try_join_next().is_some() {} // the finished ones
        tasks.spawn(work)
    }

    /// One line from the client: a message, or a batch of them (an array, which MCP 2025-03-26
    /// allows; each member is answered on its own line).
    fn handle(self: &Arc<Self>, line: &[u8]) {
        // From bytes: a line that is not UTF-8 is not JSON either, answered like any (a client's
        // one bad byte ended the bridge when stdin was read as text).
        let msg: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                let error = json!({ "code": PARSE_ERROR, "message": format!("not JSON: {e}") });
                return self.answer(&Value::Null, Err(error));
            }
        };
        match msg {
            Value::Array(batch) if batch.is_empty() => {
                self.answer(&Value::Null, Err(json!({ "code": INVALID_REQUEST, "message": "an empty batch" })));
            }
            Value::Array(batch) => batch.into_iter().for_each(|m| self.handle_message(m)),
            msg => self.handle_message(msg),
        }
    }

    /// One JSON-RPC message from the client.
    fn handle_message(self: &Arc<Self>, msg: Value) {
        if !msg.is_object() {
            let error = json!({ "code": INVALID_REQUEST, "message": "not a JSON-RPC message (an object)" });
            return self.answer(&Value::Null, Err(error));
        }
        if msg.get("method").is_none() {
            // A response (this server asks the client nothing) is not answered; anything else
            // without a method is not a request.
            if msg.get("result").is_none() && msg.get("error").is_none() {
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                self.answer(&id, Err(json!({ "code": INVALID_REQUEST, "message": "no \"method\"" })));
            }
            return;
        }
        let method = msg["method"].as_str().unwrap_or_default();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = msg.get("id").filter(|id| !id.is_null()).cloned() else {
            // Notifications (and the client's answers, which this server never asks for).
            match method {
                "notifications/cancelled" => {
                    if let Some(call) = self.calls().remove(&params["requestId"].to_string()) {
                        call.abort();
                    }
                }
                "notifications/initialized" => self.watch_list(),
                _ => {}
            }
            return;
        };
        match method {
            "initialize" => {
                let version = negotiate(params["protocolVersion"].as_str());
                self.answer(
                    &id,
                    Ok(json!({
                        "protocolVersion": version,
                        "capabilities": { "tools": { "listChanged": true } },
                        "serverInfo": { "name": "pluginctl", "version": env!("CARGO_PKG_VERSION") },
                        "instructions": "The methods of the plugins running under plugind, as tools named PLUGIN__METHOD.",
                    })),
                );
            }
            "ping" => self.answer(&id, Ok(json!({}))),
            "tools/list" => {
                let me = self.clone();
                self.spawn(async move {
                    let outcome = me.list().await.map(|tools| json!({ "tools": tools }));
                    me.answer(&id, outcome);
                });
            }
            "tools/call" => {
                let me = self.clone();
                let key = id.to_string();
                let mut calls = self.calls();
                if calls.contains_key(&key) {
                    drop(calls);
                    let message = format!("request id {key} is already in use by a call in flight");
                    self.answer(&id, Err(json!({ "code": INVALID_REQUEST, "message": message })));
                    return;
                }
                let task = self.spawn(async move {
                    let outcome = me.call(&params).await;
                    // Answered only if not cancelled meanwhile (then the entry is gone).
                    if me.calls().remove(&id.to_string()).is_some() {
                        me.answer(&id, outcome);
                    }
                });
                calls.insert(key, task);
            }
            other => self
                .answer(&id, Err(json!({ "code": METHOD_NOT_FOUND, "message": format!("method not found: {other}") }))),
        }
    }

    /// Rebuilds the table; the tools, or the error to answer.
    async fn list(&self) -> Result<Vec<Value>, Value> {
        let table = build_table(&self.client).await.map_err(|e| {
            let rpc = e.to_rpc();
            json!({ "code": rpc.code, "message": rpc.message })
        })?;
        let tools = table.tools.clone();
        *self.table.lock().await = table;
        Ok(tools)
    }

    /// `tools/call { name, arguments?, _meta? }` through plugind's `execute`.
    async fn call(&self, params: &Value) -> Result<Value, Value> {
        let name = params["name"].as_str().unwrap_or_default();
        let mut route = self.table.lock().await.routes.get(name).cloned();
        if route.is_none() {
            // A client may call without listing first, or a plugin may have started since.
            let _ = self.list().await;
            route = self.table.lock().await.routes.get(name).cloned();
        }
        let Some(route) = route else {
            return Err(json!({ "code": INVALID_PARAMS, "message": format!("unknown tool: {name}") }));
        };
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(a) => a.clone(),
        };
        let meta = &params["_meta"];
        let mut opts = CallOptions::new();
        if let Some(tp) = meta.get("traceparent") {
            opts = opts.meta(json!({ "traceparent": tp }));
        }
        if let Some(token) = meta.get("progressToken").filter(|t| t.is_string() || t.is_number()).cloned() {
            let out = self.out.clone();
            let mut count = 0.0;
            opts = opts.on_progress(move |p: Progress| {
                // MCP's `progress` must grow; a plugin's `$/progress` may carry none.
                count += 1.0;
                let mut n = json!({ "progressToken": token, "progress": p.progress.unwrap_or(count) });
                if let Some(t) = p.total {
                    n["total"] = json!(t);
                }
                if let Some(m) = p.message {
                    n["message"] = json!(m);
                }
                let _ = out.send(json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": n }));
            });
        }
        let outcome = self.client.execute(&route.plugin, &route.method, arguments, opts).await;
        to_call_result(&route, outcome)
    }

    /// Watches plugind's lifecycle events and tells the client when the tools changed.
    fn watch_list(self: &Arc<Self>) {
        let mut watcher = self.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if watcher.is_some() {
            return;
        }
        let server = self.clone();
        let task = tokio::spawn(async move {
            let Ok(mut events) = server.client.events().await else { return };
            let mut last = build_table(&server.client).await.map(|t| t.tools).unwrap_or_default();
            while let Some(event) = events.next().await {
                // Only lifecycle changes can change the tools (not `call_failed` and the like);
                // events already queued behind this one are folded into one rebuild.
                let mut relevant = matches!(event["kind"].as_str(), Some("state" | "reload"));
                while let Ok(Some(more)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
                    relevant |= matches!(more["kind"].as_str(), Some("state" | "reload"));
                }
                if !relevant {
                    continue;
                }
                let Ok(now) = build_table(&server.client).await.map(|t| t.tools) else { continue };
                if now != last {
                    last = now;
                    server.send(json!({ "jsonrpc": "2.0", "method": "notifications/tools/list_changed" }));
                }
            }
        });
        *watcher = Some(task.abort_handle());
    }
}

/// Serves MCP on stdin/stdout through `client` until stdin closes.
pub async fn run(client: Client) -> Result<(), McpError> {
    let (out, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut buf = Vec::new();
        while let Some(first) = out_rx.recv().await {
            buf.clear();
            for v in std::iter::once(first).chain(std::iter::from_fn(|| out_rx.try_recv().ok())) {
                let _ = serde_json::to_writer(&mut buf, &v);
                buf.push(b'\n');
            }
            if stdout.write_all(&buf).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let server = Arc::new(Server {
        client,
        out,
        table: tokio::sync::Mutex::new(Table::default()),
        calls: Mutex::new(HashMap::new()),
        watcher: Mutex::new(None),
        tasks: Mutex::new(tokio::task::JoinSet::new()),
    });
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let read = loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line).await {
            Ok(0) => break Ok(()),
            Ok(_) if line.trim_ascii().is_empty() => {}
            Ok(_) => server.handle(line.strip_suffix(b"\n").unwrap_or(&line)),
            Err(e) => break Err(McpError::Stdin(e)),
        }
    };
    // The requests already read are answered (or cancelled by the client meanwhile) first:
    // `echo … | pluginctl mcp` gets its answers.
    let mut tasks = std::mem::take(&mut *server.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    while tasks.join_next().await.is_some() {}
    if let Some(watcher) = server.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        watcher.abort();
    }
    // The writer ends once every sender is gone: the server's and those of finished tasks.
    drop(server);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_several_tools_make_goes_to_none_and_theirs_do_not_depend_on_the_others() {
        let real = digest_name("file.manager", "delete_all");
        let names = tool_names(&[("file.manager", "delete_all"), ("file_manager", "delete_all"), ("other", "x")]);
        assert_eq!(names[0], real);
        assert_eq!(names[1], digest_name("file_manager", "delete_all"));
        assert_eq!(names[2], "other__x");
        assert!(real.starts_with("file_manager__delete_all_") && real.len() == "file_manager__delete_all_".len() + 16);
        assert_ne!(names[0], names[1]);
        // In any order, and whatever else runs, file.manager's tool is named the same.
        let names = tool_names(&[("a", "b"), ("file_manager", "delete_all"), ("file.manager", "delete_all")]);
        assert_eq!(names[2], real);
        // Alone, a name with a `.` replaced is its clean form.
        assert_eq!(tool_names(&[("file.manager", "read")]), ["file_manager__read"]);
        // A pair whose clean name is another's digest name does not take it.
        let d = digest_name("x.y", "m");
        let taker = d.split_once("__").map(|(p, m)| (p.to_owned(), m.to_owned())).unwrap();
        let names = tool_names(&[("x.y", "m"), ("x_y", "m"), (&taker.0, &taker.1)]);
        assert_eq!(names[0], d);
        assert_ne!(names[2], d, "{names:?}");
        // Long names keep 64 characters.
        let long = "m".repeat(100);
        let names = tool_names(&[("p", &long), ("p", &format!("{long}x"))]);
        assert!(names.iter().all(|n| n.len() == 64) && names[0] != names[1], "{names:?}");
    }

    #[test]
    fn tool_names_are_clean_and_short() {
        assert_eq!(clean_name("echo", "hello"), "echo__hello");
        assert_eq!(clean_name("my.plugin", "a/b c"), "my_plugin__a_b_c");
        assert_eq!(clean_name("p", &"m".repeat(100)).len(), 64);
        assert_eq!(clean_name("é", "ü"), "____");
        assert_eq!(tool_names(&[("my.plugin", "a/b c"), ("my_plugin", "a_b_c")])[1], digest_name("my_plugin", "a_b_c"));
    }

    #[test]
    fn versions_are_the_clients_when_known() {
        assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate(Some("2099-01-01")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
    }

    #[test]
    fn results_map_onto_call_tool_results() {
        let plain = Route { plugin: "p".into(), method: "m".into(), mcp: false };
        let mcp = Route { mcp: true, ..plain.clone() };
        assert_eq!(
            to_call_result(&plain, Ok(json!({ "a": 1 }))),
            Ok(json!({ "content": [{ "type": "text", "text": "{\"a\":1}" }], "structuredContent": { "a": 1 } }))
        );
        assert_eq!(
            to_call_result(&plain, Ok(json!([1]))),
            Ok(json!({ "content": [{ "type": "text", "text": "[1]" }] }))
        );
        let own = json!({ "content": [], "structuredContent": { "x": 1 } });
        assert_eq!(to_call_result(&mcp, Ok(own.clone())), Ok(own));
        let rpc = |code, data: Value| Err(ClientError::Rpc(plugind_client::RpcError::with_data(code, "boom", data)));
        let failed = json!({ "content": [{ "type": "text", "text": "no" }], "isError": true });
        assert_eq!(to_call_result(&mcp, rpc(TOOL_ERROR, json!({ "plugin": "p", "result": failed }))), Ok(failed));
        assert_eq!(
            to_call_result(&plain, rpc(-32001, json!({}))),
            Ok(json!({ "content": [{ "type": "text", "text": "boom" }], "isError": true }))
        );
        let bad = to_call_result(&plain, rpc(INVALID_PARAMS, json!({ "errors": [] }))).unwrap_err();
        assert_eq!(bad["code"], INVALID_PARAMS);
        assert_eq!(bad["data"], json!({ "errors": [] }));
    }

    #[test]
    fn a_method_without_schema_takes_any_object() {
        assert_eq!(tool("p__m", &json!({})), Some(json!({ "name": "p__m", "inputSchema": { "type": "object" } })));
        let spec = json!({ "description": "D", "params": { "type": "object", "required": ["x"] }, "idempotent": true });
        assert_eq!(
            tool("p__m", &spec),
            Some(
                json!({ "name": "p__m", "description": "D", "inputSchema": spec["params"], "annotations": { "idempotentHint": true } })
            )
        );
    }

    #[test]
    fn input_schemas_always_say_type_object() {
        // No `type`, or a list with "object": wrapped, so MCP clients accept the tool list.
        let untyped = json!({ "required": ["x"], "properties": { "x": { "type": "string" } } });
        assert_eq!(input_schema(Some(&untyped)), Some(json!({ "type": "object", "allOf": [untyped] })));
        let nullable = json!({ "type": ["object", "null"] });
        assert_eq!(input_schema(Some(&nullable)), Some(json!({ "type": "object", "allOf": [nullable] })));
        // A schema no object satisfies is no tool.
        assert_eq!(input_schema(Some(&json!({ "type": "array" }))), None);
        assert_eq!(input_schema(Some(&json!(true))), Some(json!({ "type": "object" })));
    }
}
