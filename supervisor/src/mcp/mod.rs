//! `"protocol": "mcp"` plugins: any stdio MCP server supervised as a plugin (`docs/mcp.md`).
//!
//! # Theory of operation
//! An MCP server does not speak plugind's plugin protocol, but everything plugind does around a
//! plugin — sandboxed spawn, limits, deadlines, restarts, hot reload, routing, status, logs —
//! only needs *a process whose stdio speaks plugind's protocol*. So an MCP plugin is spawned
//! exactly like any other, and its pipes are put behind an [`adapter`]: the instance task reads
//! and writes two in-memory pipes as if they were the child's stdout and stdin, and the adapter
//! translates between them and the real pipes:
//!
//! ```text
//!  Instance task ──plugind protocol──► adapter ──MCP──► child stdin
//!  Instance task ◄─plugind protocol─── adapter ◄─MCP─── child stdout
//! ```
//!
//! | plugind → plugin | MCP |
//! |---|---|
//! | `init` | `initialize` (offering [`OFFERED_VERSION`]; an answer older than [`OLDEST_VERSION`] fails the start), then `notifications/initialized` |
//! | `register` | `tools/list`, every page; answered `{ services: [], methods: { TOOL: { description, params, result, idempotent } } }` |
//! | `execute { method, params }` | `tools/call { name: method, arguments: params, _meta: { progressToken } }`; the `CallToolResult` comes back unchanged, or as error `-32010` when `isError` |
//! | `$/cancel { id }` | `notifications/cancelled { requestId, reason }` |
//! | `ping` | `ping` (any answer proves liveness) |
//! | `teardown` | answered at once: plugind then closes stdin, which ends a stdio MCP server |
//! | `hook` | answered `-32601`: an MCP server has no hooks |
//!
//! | MCP server → plugind | plugin protocol |
//! |---|---|
//! | `notifications/progress` (for the token of a `tools/call`) | `$/progress { id }` of that `execute` |
//! | `notifications/message` | `log` (MCP's eight levels onto plugind's five; `logger` and non-text `data` as fields) |
//! | `notifications/tools/list_changed` | a line in the plugin's log: the catalog is the `register` answer, so it is refreshed by the next (graceful) restart |
//! | request `ping` | answered `{}` by the adapter |
//! | any other request (`roots/list`, `sampling/createMessage`, `elicitation/create`) | `-32601`: plugind offers no client capabilities |
//! | a non-JSON or non-JSON-RPC line | passed on as it came, so the instance reports it exactly as for any plugin |
//!
//! Why an own translation rather than the `rmcp` client: the adapter must keep plugind's own
//! sandboxed spawn and pipes (rmcp can take them), pass `CallToolResult`s through byte for byte
//! (rmcp would parse them into its types and write them out again, dropping what it does not
//! know), survive garbage on stdout like every plugin does, and stay cheap on the call path: an
//! `execute` costs one envelope parse, one map insert and one line written each way. That is a
//! few hundred lines over plugind's own framing; rmcp would add eleven crates and a second
//! JSON-RPC engine to do the same.
//!
//! `plugins.trace` shows the plugind-protocol side of the adapter (what plugind sees); the MCP
//! side is in the plugin's log only where something went wrong.

pub mod adapter;

use plugind_protocol::manifest::{Manifest, Protocol};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::fmt;

/// The MCP protocol version plugind offers in `initialize` (the newest it knows).
pub const OFFERED_VERSION: &str = "2025-11-25";
/// The oldest protocol version plugind accepts in a server's `initialize` answer.
pub const OLDEST_VERSION: &str = "2024-11-05";
/// Tools taken from one server's `tools/list`; later ones are dropped with one warning.
pub const MAX_TOOLS: usize = crate::caps::REGISTER_METHODS;
/// Bytes of `tools/list` answers (all pages together) read at start; the rest is not fetched.
pub const MAX_TOOLS_LIST_BYTES: usize = 4 * 1024 * 1024;
/// Pages of `tools/list` followed (a server whose cursor never ends cannot hold the start).
pub const MAX_TOOLS_PAGES: usize = 64;
/// Bytes of a tool name kept (longer names are dropped): the catalog's method names.
pub const MAX_TOOL_NAME_BYTES: usize = crate::caps::REGISTER_NAME_BYTES;
/// Bytes of one tool as `tools/list` lists it that are parsed at all: four times what its
/// catalog entry may take (room for whitespace, `title`, `icons`…). A longer one is dropped
/// unread: its schemas as a tree would be about 36 times their text (audit 21).
pub const MAX_TOOL_BYTES: usize = 4 * crate::caps::REGISTER_METHOD_BYTES;
/// Bytes of an `isError` `CallToolResult` kept in `-32010`'s `data.result`, where it is parsed
/// (plugind reads an error's `data` as a tree); a longer one is replaced by a result holding its
/// first text, cut, and `data.result_bytes` says so. Four calls answered with 15 MiB errors at
/// once took plugind to the OOM killer (audit 21). Under the bound of an error object plugind
/// reads whole ([`plugind_protocol::jsonrpc::ERROR_MAX`]), with room for the message: past that
/// bound the whole `data` would be dropped, the first text with it.
pub const MAX_TOOL_ERROR_BYTES: usize = plugind_protocol::jsonrpc::ERROR_MAX - 8 * 1024;
const _: () =
    assert!(MAX_TOOL_ERROR_BYTES + crate::caps::ERROR_TEXT_BYTES + 1024 < plugind_protocol::jsonrpc::ERROR_MAX);

/// Whether the manifest says the plugin is an MCP server (`"protocol": "mcp"`).
pub fn is_mcp(manifest: &Manifest) -> bool {
    manifest.protocol == Protocol::Mcp
}

/// Why an MCP server's `initialize` answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The answer has no `protocolVersion` string.
    #[error("the MCP server's initialize answer has no protocolVersion")]
    NoVersion,
    /// The version is not a date or is older than [`OLDEST_VERSION`].
    #[error("the MCP server speaks protocol version {0:?}; plugind needs {OLDEST_VERSION} or later")]
    TooOld(String),
}

/// Checks the `protocolVersion` of a server's `initialize` answer: a `YYYY-MM-DD` date no older
/// than [`OLDEST_VERSION`]. MCP versions are dates, so they compare as text.
pub fn check_version(answer: &Value) -> Result<&str, HandshakeError> {
    let v = answer.get("protocolVersion").and_then(Value::as_str).ok_or(HandshakeError::NoVersion)?;
    let is_date = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !is_date || v < OLDEST_VERSION {
        return Err(HandshakeError::TooOld(v.to_owned()));
    }
    Ok(v)
}

/// One MCP `Tool` as `tools/list` lists it (only what the catalog takes).
#[derive(Debug, Deserialize)]
pub struct Tool {
    /// The tool's name: the method name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of its arguments: the method's `params` schema.
    #[serde(default, rename = "inputSchema")]
    pub input_schema: Option<Value>,
    /// JSON Schema of its `structuredContent`: the method's `result` schema.
    #[serde(default, rename = "outputSchema")]
    pub output_schema: Option<Value>,
    /// Hints; `idempotentHint` becomes the method's `idempotent`.
    #[serde(default)]
    pub annotations: Option<Value>,
}

impl Tool {
    /// The catalog entry of this tool: `{ description?, params?, result?, idempotent? }`.
    pub fn method_entry(&self) -> Value {
        let mut m = Map::new();
        if let Some(d) = &self.description {
            m.insert("description".into(), json!(d));
        }
        if let Some(s) = &self.input_schema {
            m.insert("params".into(), s.clone());
        }
        if let Some(s) = &self.output_schema {
            m.insert("result".into(), s.clone());
        }
        if let Some(b) = self.annotations.as_ref().and_then(|a| a.get("idempotentHint")).and_then(Value::as_bool) {
            m.insert("idempotent".into(), json!(b));
        }
        Value::Object(m)
    }
}

/// An MCP logging level (RFC 5424's eight) as one of plugind's five `log` levels.
pub fn log_level(mcp: &str) -> &'static str {
    match mcp {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        "error" | "critical" | "alert" | "emergency" => "error",
        _ => "info",
    }
}

/// `T` read from `raw` when it is a JSON object, else (or when it does not fit) `T::default()`:
/// what indexing a tree by key gave, without the tree. (A derived struct would also take an
/// array, member by member.)
pub fn object<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>) -> T {
    raw.filter(|r| r.get().starts_with('{')).and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default()
}

/// The text of `raw` when it is a JSON string.
pub fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.filter(|r| r.get().starts_with('"')).and_then(|r| serde_json::from_str(r.get()).ok())
}

/// `notifications/message` params, kept raw until each is known to be wanted.
#[derive(Default, Deserialize)]
struct MessageIn<'a> {
    #[serde(default, borrow)]
    level: Option<&'a RawValue>,
    #[serde(default, borrow)]
    logger: Option<&'a RawValue>,
    /// A `null` is data too (`"null"`), not no data.
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// A member that is there, `null` included (serde takes a `null` for `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The `log` params for an MCP `notifications/message { level, logger?, data }`: text `data` is
/// the message; other data is the message as compact JSON (as written, from
/// [`crate::caps::LOG_MESSAGE_BYTES`] on: the log keeps no more, and a tree of it would be 36
/// times its text). `logger` goes into `fields`. `huge` (a line over
/// [`crate::caps::NOTIFICATION_BYTES`]): a `logger` longer than the log would keep is not read.
pub fn log_params(params: Option<&RawValue>, huge: bool) -> Value {
    let p: MessageIn<'_> = object(params);
    let level = log_level(string(p.level).as_deref().unwrap_or("info"));
    let message = match p.data {
        Some(d) if d.get().starts_with('"') => string(Some(d)).unwrap_or_default(),
        Some(d) if d.get().len() <= crate::caps::LOG_MESSAGE_BYTES => {
            serde_json::from_str::<Value>(d.get()).map(|v| v.to_string()).unwrap_or_default()
        }
        Some(d) => d.get().to_owned(),
        None => String::new(),
    };
    let mut out = json!({ "level": level, "message": message });
    let logger = p.logger.filter(|l| !huge || l.get().len() <= crate::caps::LOG_FIELDS_BYTES);
    if let Some(logger) = string(logger) {
        out["fields"] = json!({ "logger": logger });
    }
    out
}

/// Whether a `CallToolResult` says `isError: true`. Reads only that key.
pub fn is_tool_error(result: &str) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default, rename = "isError")]
        is_error: Option<bool>,
    }
    serde_json::from_str::<Flag>(result).is_ok_and(|f| f.is_error == Some(true))
}

/// The first text content of a `CallToolResult`, cut to [`crate::caps::ERROR_TEXT_BYTES`]. Its
/// `content` is walked item by item, each borrowed from `result` and dropped (a tree of a
/// 15 MiB result was 40 times its size: audit 21).
pub fn first_text(result: &str) -> Option<String> {
    /// The first item of an array with a string `text`.
    struct FirstText(Option<String>);
    impl<'de> Deserialize<'de> for FirstText {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Items;
            impl<'de> Visitor<'de> for Items {
                type Value = FirstText;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstText, A::Error> {
                    #[derive(Default, Deserialize)]
                    struct Item<'a> {
                        #[serde(default, borrow)]
                        text: Option<&'a RawValue>,
                    }
                    let mut found = None;
                    while found.is_none() {
                        let Some(item) = seq.next_element::<&'de RawValue>()? else { break };
                        found = string(object::<Item<'_>>(Some(item)).text);
                    }
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(FirstText(found))
                }
            }
            d.deserialize_seq(Items)
        }
    }
    #[derive(Default, Deserialize)]
    struct CallResult {
        #[serde(default)]
        content: Option<FirstText>,
    }
    let mut text = object::<CallResult>(serde_json::from_str::<&RawValue>(result).ok()).content?.0?;
    crate::caps::truncate(&mut text, crate::caps::ERROR_TEXT_BYTES);
    Some(text)
}

/// The message of a tool error: its first text content, else a generic one.
pub fn tool_error_message(tool: &str, result: &str) -> String {
    match first_text(result) {
        Some(t) => format!("tool {tool} failed: {t}"),
        None => format!("tool {tool} failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dates_no_older_than_2024_11_05() {
        for ok in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"] {
            assert_eq!(check_version(&json!({ "protocolVersion": ok })), Ok(ok));
        }
        for old in ["2024-10-07", "1.0", "", "2025-1-01"] {
            assert_eq!(
                check_version(&json!({ "protocolVersion": old })),
                Err(HandshakeError::TooOld(old.into())),
                "{old}"
            );
        }
        assert_eq!(check_version(&json!({})), Err(HandshakeError::NoVersion));
        let e = check_version(&json!({ "protocolVersion": "2024-01-01" })).unwrap_err().to_string();
        assert!(e.contains("2024-01-01") && e.contains(OLDEST_VERSION), "{e}");
    }

    #[test]
    fn a_tool_becomes_a_catalog_entry() {
        let t: Tool = serde_json::from_value(json!({
            "name": "add", "title": "Add", "description": "Adds",
            "inputSchema": { "type": "object", "required": ["a"] },
            "outputSchema": { "type": "object" },
            "annotations": { "idempotentHint": true, "readOnlyHint": true }
        }))
        .unwrap();
        assert_eq!(
            t.method_entry(),
            json!({ "description": "Adds", "params": { "type": "object", "required": ["a"] },
                    "result": { "type": "object" }, "idempotent": true })
        );
        let bare: Tool = serde_json::from_value(json!({ "name": "x" })).unwrap();
        assert_eq!(bare.method_entry(), json!({}));
    }

    #[test]
    fn log_levels_map_onto_five() {
        assert_eq!(log_level("warning"), "warn");
        assert_eq!(log_level("emergency"), "error");
        assert_eq!(log_level("notice"), "info");
        let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
        let p = raw(json!({ "level": "error", "logger": "db", "data": { "code": 3 } }));
        assert_eq!(
            log_params(Some(&p), false),
            json!({ "level": "error", "message": "{\"code\":3}", "fields": { "logger": "db" } })
        );
        let p = raw(json!({ "level": "debug", "data": "hi" }));
        assert_eq!(log_params(Some(&p), false), json!({ "level": "debug", "message": "hi" }));
        // Not an object, or members of other types: what indexing a tree gave.
        let odd = raw(json!({ "level": 3, "logger": [], "data": null }));
        assert_eq!(log_params(Some(&odd), false), json!({ "level": "info", "message": "null" }));
        let odd = raw(json!(["error", "db", "x"]));
        assert_eq!(log_params(Some(&odd), false), json!({ "level": "info", "message": "" }));
    }

    #[test]
    fn tool_errors_are_recognised_by_their_flag_only() {
        assert!(is_tool_error(r#"{"content":[{"type":"text","text":"no"}],"isError":true}"#));
        assert!(!is_tool_error(r#"{"content":[],"isError":false}"#));
        assert!(!is_tool_error(r#"{"content":[]}"#));
        assert!(!is_tool_error("[1]"));
        let r =
            r#"{"content":[{"type":"image"},7,{"type":"text","text":"bad input"},{"text":"later"}],"isError":true}"#;
        assert_eq!(tool_error_message("add", r), "tool add failed: bad input");
        assert_eq!(tool_error_message("add", r#"{"content":[{"text":3}],"isError":true}"#), "tool add failed");
        assert_eq!(tool_error_message("add", r#"{"content":{"text":"x"},"isError":true}"#), "tool add failed");
    }
}
