//! The adapter between an MCP server's stdio and plugind's plugin protocol (see [`crate::mcp`]).
//!
//! [`adapt`] takes the child's real pipes and returns two in-memory ones that the instance task
//! uses instead, as if the child spoke plugind's protocol. Two tasks translate, one per
//! direction, so neither side's slowness can block the other's reading:
//! - *downstream* reads what plugind writes (`init`, `register`, `execute`, `ping`, `$/cancel`…)
//!   and writes MCP to the child's stdin, or answers plugind itself (`teardown`, `hook`);
//! - *upstream* reads the child's stdout and writes plugind's protocol: answers to the calls it
//!   forwarded, `$/progress`, `log`; it answers the server's `ping` itself.
//!
//! Both write through [`spawn_writer`] tasks (bounded queues, batched writes), like every
//! connection in plugind. They share one [`Shared`]: the MCP ids in flight, each remembering what
//! it was sent for ([`Pending`]). The id lock is a `std` mutex, never held across an `.await`.
//!
//! Lifetimes: when the child's stdout ends, upstream fails the adapter's own requests in flight
//! and closes the pipe plugind reads, so the instance sees EOF exactly as it would from the child
//! (then its calls in flight end with `-32003`). When plugind closes its side (a stop closes
//! stdin), downstream closes the child's stdin, which ends a stdio MCP server.

use super::{check_version, is_tool_error, log_params, tool_error_message, HandshakeError, Tool};
use crate::logs::PluginLog;
use crate::transport::chatter::Chatter;
use crate::transport::frame::{
    Frame, FrameDecoder, LongLineTurn, DEFAULT_MAX_FRAME, LONG_LINE, TURN_MIN_PROGRESS, TURN_STALL,
};
use crate::transport::outbox::{self, spawn_writer, Outbox, Outgoing};
use futures::StreamExt;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{self, Message, RpcError};
use plugind_protocol::methods::{self, LogLevel};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

/// Bytes buffered in each in-memory pipe between the instance task and the adapter.
const PIPE_BYTES: usize = 64 * 1024;

/// What the adapter needs to know about its plugin.
pub struct AdapterContext {
    /// The plugin's name (in `-32010`'s `data.plugin` and in log lines).
    pub plugin: Arc<str>,
    /// The plugin's log: the server's version, caps, oversized lines.
    pub log: Arc<PluginLog>,
    /// The plugin's turn at long stdout lines (`crate::transport::frame`).
    pub long_lines: LongLineTurn,
    /// The plugin's rate of chatter (`crate::transport::chatter`): the server's lines the
    /// adapter handles itself count here; those passed on are counted by the instance.
    pub chatter: Chatter,
}

/// Puts an adapter between the MCP server's `stdin`/`stdout` and plugind. Returns the pipe
/// plugind writes (in place of the child's stdin) and the one it reads (in place of its stdout).
pub fn adapt<W, R>(stdin: W, stdout: R, ctx: AdapterContext) -> (DuplexStream, DuplexStream)
where
    W: AsyncWrite + Unpin + Send + crate::transport::pipe::Growable + 'static,
    R: AsyncRead + Unpin + Send + crate::transport::pipe::Growable + 'static,
{
    let (plugind_writes, adapter_reads) = tokio::io::duplex(PIPE_BYTES);
    let (adapter_writes, plugind_reads) = tokio::io::duplex(PIPE_BYTES);
    let (to_server, server_rx) = outbox::channel();
    let (to_plugind, plugind_rx) = outbox::channel();
    spawn_writer(stdin, server_rx);
    spawn_writer(adapter_writes, plugind_rx);
    let shared = Arc::new(Shared {
        plugin: ctx.plugin,
        log: ctx.log,
        to_server,
        to_plugind,
        next_id: AtomicU64::new(1),
        has_tools: AtomicBool::new(true),
        calls: Mutex::new(Calls::default()),
    });
    tokio::spawn(downstream(shared.clone(), adapter_reads));
    tokio::spawn(upstream(shared, stdout, ctx.long_lines, ctx.chatter));
    (plugind_writes, plugind_reads)
}

/// What an MCP request of the adapter was sent for.
enum Pending {
    /// A `tools/call` for plugind's `execute` request `id`.
    Execute {
        /// plugind's request id, echoed in the answer.
        id: Box<RawValue>,
        /// The tool, for the message of a tool error.
        tool: Box<str>,
    },
    /// A `ping` for plugind's `ping` request `id`: any answer proves liveness.
    Ping(Box<RawValue>),
    /// The adapter's own request (`initialize`, `tools/list`): the answer goes to a task.
    Own(oneshot::Sender<Result<Box<RawValue>, RpcError>>),
}

#[derive(Default)]
struct Calls {
    /// By MCP request id (the adapter's own numbers).
    pending: HashMap<u64, Pending>,
    /// plugind's `execute` (or `ping`) id → the MCP id it became, for `$/cancel`.
    by_call: HashMap<u64, u64>,
    /// The server's stdout ended: no more answers will come.
    closed: bool,
}

/// What both directions share.
struct Shared {
    plugin: Arc<str>,
    log: Arc<PluginLog>,
    /// Lines for the child's stdin.
    to_server: Outbox,
    /// Lines for the instance task (as if from the child's stdout).
    to_plugind: Outbox,
    /// The next MCP request id.
    next_id: AtomicU64,
    /// Whether the server declared the `tools` capability (else `register` lists nothing).
    has_tools: AtomicBool,
    calls: Mutex<Calls>,
}

/// `execute` params, borrowed from plugind's line; the tool's arguments stay raw.
#[derive(Deserialize)]
struct ExecuteIn<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    /// plugind's `_meta` (a traceparent): passed on in the `tools/call`'s `_meta`.
    #[serde(default, rename = "_meta")]
    meta: Option<Map<String, Value>>,
}

/// A `tools/list` page; its tools stay raw, to be walked one at a time ([`each_tool`]).
#[derive(Deserialize)]
struct ToolsPage<'a> {
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default, rename = "nextCursor")]
    next_cursor: Option<String>,
}

/// Calls `take` with each item of the JSON array `tools`, borrowed, until it returns false; the
/// rest is skipped unread. A page is never a list of trees, nor a list at all: a 15 MiB page of
/// `0,`s would be 8 million pointers (audit 21).
fn each_tool<'a>(tools: &'a str, take: impl FnMut(&'a RawValue) -> bool) -> serde_json::Result<()> {
    struct Items<F>(F);
    impl<'de, F: FnMut(&'de RawValue) -> bool> serde::de::Visitor<'de> for Items<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of tools")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(tool) = seq.next_element::<&'de RawValue>()? {
                if !(self.0)(tool) {
                    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                    break;
                }
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(tools);
    serde::Deserializer::deserialize_seq(&mut de, Items(take))?;
    de.end()
}

/// A tool over [`super::MAX_TOOL_BYTES`]: only its name is read, for the warning.
#[derive(Default, Deserialize)]
struct ToolName<'a> {
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
}

/// What an `initialize` answer tells the adapter, each member raw until it is known to be wanted
/// (a tree of the whole answer would be 36 times its text).
#[derive(Default, Deserialize)]
struct InitializeOut<'a> {
    #[serde(default, borrow, rename = "protocolVersion")]
    protocol_version: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "serverInfo")]
    server_info: Option<&'a RawValue>,
    #[serde(default, borrow)]
    capabilities: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
struct ServerInfo<'a> {
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    version: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
struct Capabilities<'a> {
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
}

/// `notifications/progress` params, kept raw: those passed on are copied as they came.
#[derive(Default, Deserialize)]
struct ProgressIn<'a> {
    #[serde(default, borrow, rename = "progressToken")]
    token: Option<&'a RawValue>,
    #[serde(default, borrow)]
    progress: Option<&'a RawValue>,
    #[serde(default, borrow)]
    total: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
}

/// plugind's `$/progress` params (keys in the order a tree of them was written).
#[derive(serde::Serialize)]
struct ProgressOut<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<&'a RawValue>,
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn to_plugind(&self, line: Vec<u8>) {
        let _ = self.to_plugind.send(Outgoing::Line(line)).await;
    }

    async fn to_server(&self, line: Vec<u8>) -> bool {
        self.to_server.send(Outgoing::Line(line)).await
    }

    /// Answers plugind's request `id`.
    async fn answer(&self, id: &RawValue, reply: Result<Value, RpcError>) {
        let line = match reply {
            Ok(v) => jsonrpc::result_line(id, &v),
            Err(e) => jsonrpc::error_line(id, &e),
        };
        self.to_plugind(line).await;
    }

    /// Sends the adapter's own request to the server and waits for its answer (no deadline
    /// here: the instance's handshake has `startup_timeout_ms` and kills a server that misses it).
    async fn request(&self, method: &str, params: &Value) -> Result<Box<RawValue>, RpcError> {
        let gone = || RpcError::new(codes::INTERNAL_ERROR, format!("the MCP server closed its stdout during {method}"));
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = self.calls();
            if calls.closed {
                return Err(gone());
            }
            calls.pending.insert(id, Pending::Own(tx));
        }
        if !self.to_server(jsonrpc::request_line(id, method, params)).await {
            return Err(gone());
        }
        rx.await.map_err(|_| gone())?
    }

    /// plugind's `init`: MCP's `initialize` and `notifications/initialized`.
    async fn init(&self) -> Result<Value, RpcError> {
        let offer = json!({
            "protocolVersion": super::OFFERED_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "plugind", "version": crate::VERSION },
        });
        let raw = self.request("initialize", &offer).await?;
        let answer: InitializeOut<'_> = super::object(Some(&raw));
        let answer_version =
            super::string(answer.protocol_version).map_or_else(|| json!({}), |v| json!({ "protocolVersion": v }));
        let version = check_version(&answer_version)
            .map_err(|e: HandshakeError| RpcError::new(codes::INVALID_REQUEST, e.to_string()))?;
        let info: ServerInfo<'_> = super::object(answer.server_info);
        let caps: Capabilities<'_> = super::object(answer.capabilities);
        let has_tools = caps.tools.is_some_and(|t| t.get() != "null");
        self.has_tools.store(has_tools, Ordering::Relaxed);
        self.log.plugind(format!(
            "MCP server {} {} speaks protocol version {version}{}",
            super::string(info.name).as_deref().unwrap_or("(unnamed)"),
            super::string(info.version).as_deref().unwrap_or(""),
            if has_tools { "" } else { "; it declares no tools" },
        ));
        self.to_server(jsonrpc::notification_line("notifications/initialized", &json!({}))).await;
        Ok(json!({ "protocol_version": plugind_protocol::version::PROTOCOL_VERSION }))
    }

    /// plugind's `register`: every page of `tools/list`, within the caps, as catalog methods.
    async fn register(&self) -> Result<Value, RpcError> {
        let mut methods = Map::new();
        if !self.has_tools.load(Ordering::Relaxed) {
            return Ok(json!({ "services": [], "methods": methods }));
        }
        let (mut cursor, mut bytes, mut pages) = (None::<String>, 0usize, 0usize);
        // The size of the methods kept so far, as they will be sent.
        let mut answer_bytes = 0usize;
        let mut over = Vec::new();
        loop {
            let params = cursor.as_ref().map_or_else(|| json!({}), |c| json!({ "cursor": c }));
            let raw = self.request("tools/list", &params).await?;
            bytes += raw.get().len();
            pages += 1;
            let not_a_page = |e: serde_json::Error| {
                RpcError::new(
                    codes::INVALID_REQUEST,
                    format!("tools/list: the answer is not {{\"tools\": [...]}}: {e}"),
                )
            };
            let page: ToolsPage<'_> = serde_json::from_str(raw.get()).map_err(not_a_page)?;
            let take = |raw_tool: &RawValue| {
                if methods.len() >= super::MAX_TOOLS {
                    over.push(format!("more than {} tools (the rest are not methods)", super::MAX_TOOLS));
                    return false;
                }
                if raw_tool.get().len() > super::MAX_TOOL_BYTES {
                    let name = super::string(super::object::<ToolName<'_>>(Some(raw_tool)).name).unwrap_or_default();
                    let mut name = format!("{name:?}");
                    crate::caps::truncate(&mut name, super::MAX_TOOL_NAME_BYTES);
                    over.push(format!(
                        "tool {name} listed in {} bytes dropped unread (at most {})",
                        raw_tool.get().len(),
                        super::MAX_TOOL_BYTES
                    ));
                    return true;
                }
                match serde_json::from_str::<Tool>(raw_tool.get()) {
                    Ok(t) if t.name.is_empty() || t.name.len() > super::MAX_TOOL_NAME_BYTES => {
                        over.push(format!("a tool name of {} bytes dropped", t.name.len()))
                    }
                    Ok(t) if methods.contains_key(&t.name) => {
                        self.log.warn(format!("tools/list lists tool {:?} twice; the first is kept", t.name))
                    }
                    Ok(t) => {
                        // What the catalog would drop anyway is dropped here, and the answer stays
                        // well under the frame limit whatever the server lists.
                        let entry = t.method_entry();
                        let size = entry.to_string().len();
                        if size > crate::caps::REGISTER_METHOD_BYTES {
                            over.push(format!(
                                "tool {:?} of {size} bytes dropped (at most {} per tool)",
                                t.name,
                                crate::caps::REGISTER_METHOD_BYTES
                            ));
                        } else if answer_bytes + size > super::MAX_TOOLS_LIST_BYTES {
                            over.push(format!(
                                "the tools past {} bytes of schemas are not methods",
                                super::MAX_TOOLS_LIST_BYTES
                            ));
                            return false;
                        } else {
                            answer_bytes += size;
                            methods.insert(t.name.clone(), entry);
                        }
                    }
                    Err(e) => self.log.warn(format!("tools/list: a tool is not a Tool object ({e}); dropped")),
                }
                true
            };
            // An absent (or null) `tools` lists nothing.
            if let Some(tools) = page.tools {
                each_tool(tools.get(), take).map_err(not_a_page)?;
            }
            match page.next_cursor {
                None => break,
                Some(_) if !over.is_empty() => break,
                Some(_) if pages >= super::MAX_TOOLS_PAGES || bytes >= super::MAX_TOOLS_LIST_BYTES => {
                    over.push(format!(
                        "tools/list read up to {} pages or {} bytes; the later pages are not fetched",
                        super::MAX_TOOLS_PAGES,
                        super::MAX_TOOLS_LIST_BYTES
                    ));
                    break;
                }
                Some(next) => cursor = Some(next),
            }
        }
        over.dedup();
        for o in over {
            self.log.warn(format!("over a cap: {o}"));
        }
        self.log.plugind(format!("MCP server lists {} tools", methods.len()));
        Ok(json!({ "services": [], "methods": methods }))
    }

    /// plugind's `execute`: a `tools/call` whose progress token is its own MCP id.
    async fn execute(&self, id: &RawValue, params: Option<&RawValue>) {
        let call = match params.map(|p| serde_json::from_str::<ExecuteIn<'_>>(p.get())) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return self.answer(id, Err(RpcError::invalid_params(e))).await,
            None => return self.answer(id, Err(RpcError::invalid_params("execute without params"))).await,
        };
        let mcp_id = self.next_id();
        let mut meta = call.meta.unwrap_or_default();
        meta.insert("progressToken".into(), json!(mcp_id));
        let arguments = call.params.map(RawValue::get).filter(|a| *a != "null").unwrap_or("{}");
        let line = jsonrpc::request_line_with(mcp_id, "tools/call", |out| {
            out.extend_from_slice(br#"{"name":"#);
            jsonrpc::write_json(out, &*call.method);
            out.extend_from_slice(br#","arguments":"#);
            out.extend_from_slice(arguments.as_bytes());
            out.extend_from_slice(br#","_meta":"#);
            jsonrpc::write_json(out, &meta);
            out.push(b'}');
        });
        {
            let mut calls = self.calls();
            if let Some(n) = Message::numeric_id(id) {
                calls.by_call.insert(n, mcp_id);
            }
            calls.pending.insert(mcp_id, Pending::Execute { id: id.to_owned(), tool: call.method.into() });
        }
        // If the server is gone, the instance sees its exit and fails the call with -32003.
        self.to_server(line).await;
    }

    /// plugind's `$/cancel { id }`: `notifications/cancelled` for the `tools/call` (or `ping`) it became.
    /// Its entry is forgotten, so a late answer is dropped (plugind has answered the caller).
    async fn cancel(&self, params: Option<&RawValue>) {
        #[derive(Deserialize)]
        struct CancelIn {
            id: u64,
        }
        let Some(c) = params.and_then(|p| serde_json::from_str::<CancelIn>(p.get()).ok()) else { return };
        let mcp_id = {
            let mut calls = self.calls();
            let Some(mcp_id) = calls.by_call.remove(&c.id) else { return };
            calls.pending.remove(&mcp_id);
            mcp_id
        };
        let reason = "the caller gave up (deadline passed or call cancelled)";
        let params = json!({ "requestId": mcp_id, "reason": reason });
        self.to_server(jsonrpc::notification_line("notifications/cancelled", &params)).await;
    }

    /// One line from the server.
    /// Handles one line of the server's; returns whether it was chatter the adapter dealt with
    /// itself (not an answer to a call, not passed on to plugind).
    async fn on_server_line(&self, line: &[u8]) -> bool {
        match Message::parse(line) {
            // Not a message: plugind's instance reports it as for any plugin (a non-JSON line
            // is logged with the hint to write logs to stderr) and goes on.
            Err(_) => {
                self.to_plugind([line, b"\n"].concat()).await;
                false
            }
            Ok(Message::Response { id, outcome }) => !self.response(id, outcome).await,
            Ok(Message::Request { id, method, .. }) => {
                let reply = match &*method {
                    "ping" => jsonrpc::result_line(id, &json!({})),
                    other => jsonrpc::error_line(
                        id,
                        &RpcError::new(
                            codes::METHOD_NOT_FOUND,
                            format!("plugind offers no MCP client capability for {other}"),
                        ),
                    ),
                };
                self.to_server(reply).await;
                true
            }
            Ok(Message::Notification { method, params }) => !self.notification(&method, params, line.len()).await,
        }
    }

    /// Passes on the answer to a call; returns whether it was one (an answer to nothing is
    /// dropped, with a warning if plugind never sent its id).
    async fn response(&self, id: &RawValue, outcome: Result<&RawValue, RpcError>) -> bool {
        let n = Message::numeric_id(id);
        let pending = n.and_then(|n| {
            let mut calls = self.calls();
            let p = calls.pending.remove(&n)?;
            if let Pending::Execute { id, .. } | Pending::Ping(id) = &p {
                if let Some(call) = Message::numeric_id(id) {
                    calls.by_call.remove(&call);
                }
            }
            Some(p)
        });
        let line = match pending {
            Some(Pending::Execute { id, tool }) => match outcome {
                Ok(result) if is_tool_error(result.get()) => {
                    let (text, len) = (result.get(), result.get().len());
                    // The instance reads an error's data as a tree: a long result is not kept.
                    let data = if len <= super::MAX_TOOL_ERROR_BYTES {
                        let result: Value = serde_json::from_str(text).unwrap_or_default();
                        json!({ "plugin": &*self.plugin, "result": result })
                    } else {
                        let first = super::first_text(text).unwrap_or_default();
                        let result = json!({ "content": [{ "type": "text", "text": first }], "isError": true });
                        json!({ "plugin": &*self.plugin, "result": result, "result_bytes": len })
                    };
                    let e = RpcError::with_data(codes::TOOL_ERROR, tool_error_message(&tool, text), data);
                    jsonrpc::error_line(&id, &e)
                }
                Ok(result) => jsonrpc::raw_result_line(&id, result),
                Err(e) => jsonrpc::error_line(&id, &e),
            },
            Some(Pending::Ping(id)) => jsonrpc::result_line(&id, &json!({})),
            Some(Pending::Own(tx)) => {
                let _ = tx.send(outcome.map(ToOwned::to_owned));
                return true;
            }
            // An answer to a call cancelled meanwhile: nobody waits for it any more.
            None if n.is_some_and(|n| n < self.next_id.load(Ordering::Relaxed)) => return false,
            None => {
                // Rate-limited: a server may write such answers at full speed.
                self.log.about_output(LogLevel::Warn, || {
                    format!("the MCP server answered request id {} that plugind never sent; ignored", id.get())
                });
                return false;
            }
        };
        self.to_plugind(line).await;
        true
    }

    /// Turns a notification of the server's into plugind's, if it has one; returns whether it
    /// was passed on. Params are read only for the methods handled, by method name first, and
    /// never into a tree: a tree of them is about 36 times their text, and a server writing
    /// 15 MiB `zz/x` notifications in a loop took plugind from 20 MB to 676 MB (audit 21). A
    /// line over [`crate::caps::NOTIFICATION_BYTES`] is not read at all (a `notifications/message`
    /// but for its level and data, cut), as for plugind's own plugins.
    async fn notification(&self, method: &str, params: Option<&RawValue>, len: usize) -> bool {
        let huge = len > crate::caps::NOTIFICATION_BYTES;
        match method {
            "notifications/message" => {
                let mut params = log_params(params, huge);
                if let Some(Value::String(message)) = params.get_mut("message").filter(|_| huge) {
                    if crate::caps::truncate(message, crate::caps::LOG_MESSAGE_BYTES) {
                        self.log.over_cap(
                            crate::caps::Cap::LogMessage,
                            format!("a `log` message was cut to {} bytes", crate::caps::LOG_MESSAGE_BYTES),
                        );
                    }
                }
                self.to_plugind(jsonrpc::notification_line(methods::LOG, &params)).await;
                true
            }
            _ if huge => {
                self.log.about_output(LogLevel::Warn, || {
                    format!(
                        "MCP notification `{method}` of {len} bytes ignored unread: over {} KiB",
                        crate::caps::NOTIFICATION_BYTES >> 10
                    )
                });
                false
            }
            "notifications/progress" => {
                let p: ProgressIn<'_> = super::object(params);
                let token = match p.token.map(RawValue::get) {
                    Some(t) if t.starts_with('"') => super::string(p.token).and_then(|s| s.parse().ok()),
                    Some(t) => t.parse::<u64>().ok(),
                    None => None,
                };
                let call = token.and_then(|t| match self.calls().pending.get(&t) {
                    Some(Pending::Execute { id, .. }) => Message::numeric_id(id),
                    _ => None,
                });
                let Some(call) = call else { return false };
                fn set(v: Option<&RawValue>) -> Option<&RawValue> {
                    v.filter(|v| v.get() != "null")
                }
                let out =
                    ProgressOut { id: call, message: set(p.message), progress: set(p.progress), total: set(p.total) };
                self.to_plugind(jsonrpc::notification_line(methods::PROGRESS, &out)).await;
                true
            }
            "notifications/tools/list_changed" => {
                self.log.about_output(LogLevel::Info, || {
                    "the MCP server says its tools changed; the catalog keeps the tools listed at start until the \
                     plugin restarts (`pluginctl restart NAME` is graceful)"
                        .to_owned()
                });
                false
            }
            _ => {
                tracing::debug!(plugin = %self.plugin, method, "MCP notification ignored");
                false
            }
        }
    }

    /// The server's stdout ended: the adapter's own requests fail; plugind's calls are failed by
    /// the instance when it sees the EOF that follows.
    fn close(&self) {
        let drained: Vec<Pending> = {
            let mut calls = self.calls();
            calls.closed = true;
            calls.by_call.clear();
            calls.pending.drain().map(|(_, p)| p).collect()
        };
        drop(drained);
    }
}

/// plugind → server.
async fn downstream(shared: Arc<Shared>, from_plugind: DuplexStream) {
    let mut frames = FramedRead::new(from_plugind, FrameDecoder::new(DEFAULT_MAX_FRAME));
    while let Some(Ok(frame)) = frames.next().await {
        // plugind's own lines are never oversized or malformed.
        let Frame::Line(line) = frame else { continue };
        match Message::parse(&line) {
            Ok(Message::Request { id, method, params }) => match &*method {
                methods::EXECUTE => shared.execute(id, params).await,
                methods::PING => {
                    let mcp_id = shared.next_id();
                    {
                        let mut calls = shared.calls();
                        // Remembered for `$/cancel` too: a ping plugind gave up on is forgotten.
                        if let Some(n) = Message::numeric_id(id) {
                            calls.by_call.insert(n, mcp_id);
                        }
                        calls.pending.insert(mcp_id, Pending::Ping(id.to_owned()));
                    }
                    shared.to_server(jsonrpc::request_line(mcp_id, "ping", &json!({}))).await;
                }
                // The handshake steps wait for the server's answers, which upstream delivers:
                // they run as tasks so this loop keeps reading.
                methods::INIT | methods::REGISTER => {
                    let (shared, id, register) = (shared.clone(), id.to_owned(), method == methods::REGISTER);
                    tokio::spawn(async move {
                        let reply = if register { shared.register().await } else { shared.init().await };
                        shared.answer(&id, reply).await;
                    });
                }
                // Stopping needs nothing from a stdio MCP server: closing its stdin (next) ends it.
                methods::TEARDOWN => shared.answer(id, Ok(Value::Null)).await,
                other => {
                    let e = RpcError::new(codes::METHOD_NOT_FOUND, format!("an MCP server plugin has no {other:?}"));
                    shared.answer(id, Err(e)).await;
                }
            },
            Ok(Message::Notification { method, params }) if method == methods::CANCEL => shared.cancel(params).await,
            // `services.changed`, `onError`: nothing an MCP server would understand.
            _ => {}
        }
    }
    let _ = shared.to_server.send(Outgoing::Close).await;
}

/// Server → plugind.
async fn upstream<R: AsyncRead + Unpin + crate::transport::pipe::Growable>(
    shared: Arc<Shared>,
    stdout: R,
    long_lines: LongLineTurn,
    chatter: Chatter,
) {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME).taking_turns(LONG_LINE).reporting_drops();
    let mut frames = FramedRead::new(stdout, decoder);
    let mut turn = None;
    // While the turn is held: how much of the line had come at the last look.
    let mut seen = 0;
    loop {
        let frame = if turn.is_some() {
            match tokio::time::timeout(TURN_STALL, frames.next()).await {
                Ok(frame) => frame,
                // The line stopped coming while another instance waits: dropped, the turn goes.
                // (Nothing more came, and nothing waits in the pipe unread.)
                Err(_)
                    if frames.read_buffer().len().saturating_sub(seen) < TURN_MIN_PROGRESS
                        && long_lines.is_awaited()
                        && frames.get_ref().unread() == Some(0) =>
                {
                    let (len, _) = FrameDecoder::abandon_line_in(&mut frames);
                    turn = None;
                    chatter.charge(1, len);
                    shared.log.about_output(LogLevel::Warn, || {
                        format!(
                            "stdout line stalled mid-way ({len} bytes of it read, less than {} KiB more in {} s) while holding the plugin's turn at long lines, which another instance waited for; discarded",
                            TURN_MIN_PROGRESS >> 10,
                            TURN_STALL.as_secs()
                        )
                    });
                    continue;
                }
                Err(_) => {
                    seen = frames.read_buffer().len();
                    continue;
                }
            }
        } else {
            frames.next().await
        };
        let Some(frame) = frame else { break };
        // Frames decoded from one read never touch the pipe: counted here, as reads are, so a
        // server writing short lines at full speed cannot keep this task from yielding.
        tokio::task::consume_budget().await;
        if turn.is_some() && !frames.decoder().has_turn() {
            turn = None; // its line has ended: let go before that line is passed on
        }
        match frame {
            // A line past `LONG_LINE`: read on once it is this instance's turn.
            Ok(Frame::LongLine) => {
                turn = Some(long_lines.wait().await);
                frames.decoder_mut().take_turn();
                seen = frames.read_buffer().len();
            }
            Ok(Frame::Line(line)) => {
                if shared.on_server_line(&line).await {
                    chatter.charge(1, line.len());
                }
            }
            Ok(Frame::Dropped(len)) => chatter.charge(0, len),
            Ok(Frame::Oversized { len, .. }) => {
                chatter.charge(1, len);
                shared.log.about_output(LogLevel::Warn, || {
                    format!(
                        "stdout line exceeds the frame limit of {DEFAULT_MAX_FRAME} bytes ({len} bytes read when it was found too long); discarded"
                    )
                });
            }
            Err(_) => break,
        }
        if let Some((wait, said)) = chatter.pause("stdout") {
            if let Some(said) = said {
                shared.log.warn(said);
            }
            tokio::time::sleep(wait).await;
        }
    }
    shared.close();
    let _ = shared.to_plugind.send(Outgoing::Close).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// An adapter over in-memory pipes: (plugind's writer, plugind's reader, the server's
    /// reader of its stdin, the server's writer of its stdout).
    fn rig() -> (
        DuplexStream,
        tokio::io::Lines<BufReader<DuplexStream>>,
        tokio::io::Lines<BufReader<DuplexStream>>,
        DuplexStream,
    ) {
        let (server_stdin_w, server_stdin_r) = tokio::io::duplex(1 << 16);
        let (server_stdout_w, server_stdout_r) = tokio::io::duplex(1 << 16);
        let (tx, _rx) = tokio::sync::broadcast::channel(4);
        let log = Arc::new(PluginLog::new("m", 100, tx));
        let (w, r) = adapt(
            server_stdin_w,
            server_stdout_r,
            AdapterContext { plugin: "m".into(), log, long_lines: LongLineTurn::new(), chatter: Chatter::new() },
        );
        (w, BufReader::new(r).lines(), BufReader::new(server_stdin_r).lines(), server_stdout_w)
    }

    async fn next_json(lines: &mut tokio::io::Lines<BufReader<DuplexStream>>) -> Value {
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
    }

    async fn send(w: &mut DuplexStream, v: Value) {
        w.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn execute_becomes_tools_call_and_is_error_becomes_32010() {
        let (mut plugind, mut from_adapter, mut server_in, mut server_out) = rig();
        send(&mut plugind, json!({"jsonrpc":"2.0","id":7,"method":"execute","params":{"method":"add","params":{"a":1},"_meta":{"traceparent":"00-x"}}})).await;
        let call = next_json(&mut server_in).await;
        assert_eq!(call["method"], "tools/call");
        assert_eq!(call["params"]["name"], "add");
        assert_eq!(call["params"]["arguments"], json!({"a":1}));
        assert_eq!(call["params"]["_meta"]["traceparent"], "00-x");
        assert_eq!(call["params"]["_meta"]["progressToken"], call["id"]);
        // Progress for the token reaches plugind under its own id.
        send(&mut server_out, json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":call["id"],"progress":1,"total":2}})).await;
        assert_eq!(next_json(&mut from_adapter).await["params"], json!({"id":7,"progress":1,"total":2}));
        let result = json!({"content":[{"type":"text","text":"3"}],"structuredContent":{"sum":3}});
        send(&mut server_out, json!({"jsonrpc":"2.0","id":call["id"],"result":result})).await;
        let answer = next_json(&mut from_adapter).await;
        assert_eq!(answer, json!({"jsonrpc":"2.0","id":7,"result":result}));

        send(&mut plugind, json!({"jsonrpc":"2.0","id":8,"method":"execute","params":{"method":"add","params":null}}))
            .await;
        let call = next_json(&mut server_in).await;
        assert_eq!(call["params"]["arguments"], json!({}));
        let failed = json!({"content":[{"type":"text","text":"nope"}],"isError":true});
        send(&mut server_out, json!({"jsonrpc":"2.0","id":call["id"],"result":failed})).await;
        let answer = next_json(&mut from_adapter).await;
        assert_eq!(answer["error"]["code"], codes::TOOL_ERROR);
        assert_eq!(answer["error"]["data"], json!({"plugin":"m","result":failed}));
        assert_eq!(answer["error"]["message"], "tool add failed: nope");
    }

    #[tokio::test]
    async fn cancel_becomes_notifications_cancelled_and_the_late_answer_is_dropped() {
        let (mut plugind, mut from_adapter, mut server_in, mut server_out) = rig();
        send(&mut plugind, json!({"jsonrpc":"2.0","id":3,"method":"execute","params":{"method":"slow","params":{}}}))
            .await;
        let call = next_json(&mut server_in).await;
        send(&mut plugind, json!({"jsonrpc":"2.0","method":"$/cancel","params":{"id":3}})).await;
        let cancelled = next_json(&mut server_in).await;
        assert_eq!(cancelled["method"], "notifications/cancelled");
        assert_eq!(cancelled["params"]["requestId"], call["id"]);
        send(&mut server_out, json!({"jsonrpc":"2.0","id":call["id"],"result":{"content":[]}})).await;
        // The server pings; the adapter answers it, and nothing about the late answer reaches plugind.
        send(&mut server_out, json!({"jsonrpc":"2.0","id":"p1","method":"ping"})).await;
        assert_eq!(next_json(&mut server_in).await, json!({"jsonrpc":"2.0","id":"p1","result":{}}));
        send(
            &mut server_out,
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"warning","data":"hm"}}),
        )
        .await;
        assert_eq!(next_json(&mut from_adapter).await["method"], "log");
    }

    #[tokio::test]
    async fn a_tool_too_big_for_the_catalog_is_dropped_and_the_rest_kept() {
        let (mut plugind, mut from_adapter, mut server_in, mut server_out) = rig();
        send(&mut plugind, json!({"jsonrpc":"2.0","id":1,"method":"init","params":{}})).await;
        let init = next_json(&mut server_in).await;
        send(&mut server_out, json!({"jsonrpc":"2.0","id":init["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}}}})).await;
        next_json(&mut server_in).await;
        next_json(&mut from_adapter).await;
        send(&mut plugind, json!({"jsonrpc":"2.0","id":2,"method":"register","params":{}})).await;
        let list = next_json(&mut server_in).await;
        let huge = "x".repeat(crate::caps::REGISTER_METHOD_BYTES + 1);
        let tools = json!([{"name":"big","description":huge}, {"name":"small","description":"S"}]);
        send(&mut server_out, json!({"jsonrpc":"2.0","id":list["id"],"result":{"tools":tools}})).await;
        let reg = next_json(&mut from_adapter).await;
        assert_eq!(reg["result"]["methods"], json!({"small":{"description":"S"}}));
    }

    #[tokio::test]
    async fn handshake_lists_every_page_and_refuses_old_versions() {
        let (mut plugind, mut from_adapter, mut server_in, mut server_out) = rig();
        send(&mut plugind, json!({"jsonrpc":"2.0","id":1,"method":"init","params":{}})).await;
        let init = next_json(&mut server_in).await;
        assert_eq!(init["params"]["protocolVersion"], super::super::OFFERED_VERSION);
        send(&mut server_out, json!({"jsonrpc":"2.0","id":init["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"1"}}})).await;
        assert_eq!(next_json(&mut server_in).await["method"], "notifications/initialized");
        assert_eq!(next_json(&mut from_adapter).await["result"], json!({"protocol_version":1}));
        send(&mut plugind, json!({"jsonrpc":"2.0","id":2,"method":"register","params":{}})).await;
        let list = next_json(&mut server_in).await;
        send(&mut server_out, json!({"jsonrpc":"2.0","id":list["id"],"result":{"tools":[{"name":"a","inputSchema":{"type":"object"}}],"nextCursor":"p2"}})).await;
        let list = next_json(&mut server_in).await;
        assert_eq!(list["params"]["cursor"], "p2");
        send(&mut server_out, json!({"jsonrpc":"2.0","id":list["id"],"result":{"tools":[{"name":"b","description":"B","annotations":{"idempotentHint":false}}]}})).await;
        let reg = next_json(&mut from_adapter).await;
        assert_eq!(
            reg["result"],
            json!({"services":[],"methods":{"a":{"params":{"type":"object"}},"b":{"description":"B","idempotent":false}}})
        );

        let (mut plugind, mut from_adapter, mut server_in, mut server_out) = rig();
        send(&mut plugind, json!({"jsonrpc":"2.0","id":1,"method":"init","params":{}})).await;
        let init = next_json(&mut server_in).await;
        send(
            &mut server_out,
            json!({"jsonrpc":"2.0","id":init["id"],"result":{"protocolVersion":"2024-01-01","capabilities":{}}}),
        )
        .await;
        let e = next_json(&mut from_adapter).await;
        assert!(e["error"]["message"].as_str().unwrap().contains("\"2024-01-01\""), "{e}");
    }

    #[tokio::test]
    async fn garbage_passes_through_and_eof_reaches_plugind() {
        let (_plugind, mut from_adapter, _server_in, mut server_out) = rig();
        server_out.write_all(b"Starting server...\n").await.unwrap();
        assert_eq!(from_adapter.next_line().await.unwrap().unwrap(), "Starting server...");
        drop(server_out);
        assert!(from_adapter.next_line().await.unwrap().is_none());
    }
}
