//! The JSON-RPC 2.0 envelope, one message per line.
//!
//! Incoming lines are parsed into a borrowed [`Message`]: only the envelope (`id`, `method`,
//! `error`) is decoded, `params` and `result` stay raw JSON slices of the line. Outgoing messages
//! are written with [`request_line`], [`notification_line`], [`result_line`] and [`error_line`],
//! each producing one `\n`-terminated line.
//!
//! Leniency: a missing `"jsonrpc"` member is accepted (hand-written plugins forget it); a wrong
//! one is not. Batches (arrays) are not used by plugind and are rejected as not JSON-RPC.

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

use crate::{codes, scan};

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`crate::codes`], or the plugin's own code.
    pub code: i64,
    /// Human-readable summary.
    pub message: String,
    /// Structured detail; plugind puts `plugin`, `state`, `timeout_ms`… here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A request's params as `T` (which may borrow from them), `{}` when absent; `-32602` invalid
/// params when they do not fit. Every side that serves requests (plugind's control API, its
/// answers to plugins) uses it.
pub fn parse_params<'a, T: serde::Deserialize<'a>>(raw: Option<&'a RawValue>) -> Result<T, RpcError> {
    serde_json::from_str(raw.map_or("{}", RawValue::get)).map_err(|e| RpcError::params_not_fitting(&e))
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    /// An error with `data`.
    pub fn with_data(code: i64, message: impl Into<String>, data: Value) -> Self {
        Self { code, message: message.into(), data: Some(data) }
    }

    /// `-32601 method not found`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(codes::METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    /// `-32602 invalid params` with the reason.
    pub fn invalid_params(reason: impl fmt::Display) -> Self {
        Self::new(codes::INVALID_PARAMS, format!("invalid params: {reason}"))
    }

    /// `-32602 invalid params` for params serde could not read as the method's type: what did
    /// not fit (``missing field `name` ``), without serde's position, which counts within the
    /// params alone and so points nowhere the caller can see (`at line 1 column 2`).
    pub fn params_not_fitting(e: &serde_json::Error) -> Self {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        Self::invalid_params(text.strip_suffix(&position).unwrap_or(&text))
    }

    /// `-32603 internal error` with the reason.
    pub fn internal(reason: impl fmt::Display) -> Self {
        Self::new(codes::INTERNAL_ERROR, format!("internal error: {reason}"))
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// One parsed line, borrowing from it.
#[derive(Debug)]
pub enum Message<'a> {
    /// A request: the peer expects a response with the same `id`.
    Request {
        /// The id as written by the peer (number or string), echoed back verbatim.
        id: &'a RawValue,
        /// The method name.
        method: Cow<'a, str>,
        /// Raw params, if any.
        params: Option<&'a RawValue>,
    },
    /// A notification: no response.
    Notification {
        /// The method name.
        method: Cow<'a, str>,
        /// Raw params, if any.
        params: Option<&'a RawValue>,
    },
    /// A response to a request we sent.
    Response {
        /// The id of our request (raw; ours are numbers).
        id: &'a RawValue,
        /// `result` (raw) or `error`.
        outcome: Result<&'a RawValue, RpcError>,
    },
}

/// Why a line is not a message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (or not UTF-8).
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// Not UTF-8, so not JSON.
    #[error("not JSON: invalid UTF-8")]
    NotUtf8,
    /// Valid JSON that is not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
}

impl ParseError {
    /// The JSON-RPC code to answer with: `-32700` for non-JSON, `-32600` otherwise.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::NotJson(_) | ParseError::NotUtf8 => codes::PARSE_ERROR,
            ParseError::NotJsonRpc(_) => codes::INVALID_REQUEST,
        }
    }
}

/// Whether `id` is an id JSON-RPC allows: a string, a number or `null`.
pub fn valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
}

impl Message<'_> {
    /// The id to answer a line that is not a valid message but has a `method` and an `id` (a
    /// request, however malformed) under: its own id when an answer can carry it (a string, a
    /// number, null), else `null`. None for anything else (a malformed notification or
    /// response is never answered).
    pub fn request_id_of(line: &[u8]) -> Option<&RawValue> {
        let (id, method) = Self::id_and_method(line)?;
        // An id no answer can carry (an object, a boolean) gets its answer under `null`, as
        // JSON-RPC 2.0 says for an id that cannot be read.
        id.filter(|_| method).map(|id| if valid_id(id) { id } else { null_id() })
    }

    /// [`Message::request_id_of`] of a line, or of each member of a batch (which plugind does
    /// not take, but answers member by member so no requester waits for nothing).
    pub fn request_ids_of(line: &[u8]) -> Vec<&RawValue> {
        match Self::batch_members(line) {
            Some(members) => members.into_iter().filter_map(|m| Self::request_id_of(m.get().as_bytes())).collect(),
            None => Self::request_id_of(line).into_iter().collect(),
        }
    }

    /// The numeric id of a line that is not a valid message and has no `method`: meant as an
    /// answer to the request plugind sent under that id (which it does not end: the right
    /// answer may follow). None for anything else.
    pub fn answer_id_of(line: &[u8]) -> Option<u64> {
        let (id, method) = Self::id_and_method(line)?;
        id.filter(|_| !method).and_then(Message::numeric_id)
    }

    /// The members of a batch (a JSON array), which plugind does not take: each request in it is
    /// answered by itself (`request_id_of`), so nobody waits on a batch for an answer that
    /// never comes. None when the line is not an array.
    pub fn batch_members(line: &[u8]) -> Option<Vec<&RawValue>> {
        if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
            return None;
        }
        serde_json::from_slice(line).ok()
    }

    /// What the start of a line too long to take says it was, from the members before the cut:
    /// an answer to plugind's request `n` (a numeric `id`, then `result` or `error`, no
    /// `method` before them), or a request with its `id` (an `id` and a `method`). None when
    /// the head does not tell (say `result` came before `id`).
    pub fn oversized_head(head: &[u8]) -> Option<Oversized<'_>> {
        let (mut id, mut method, mut outcome) = (None, false, false);
        let _ = scan::members(head, |key, value| {
            match key {
                // An id the cut may have shortened (`"id":12|34`) tells nothing.
                "id" => id = value.text().ok().filter(|t| !ends_at(head, t)).map(scan::raw),
                "method" => method = true,
                // The huge value is surely this one: stop before walking into it.
                "result" | "error" => {
                    outcome = true;
                    return Err(scan::NotTaken);
                }
                _ => {}
            }
            Ok(())
        });
        match (id, method) {
            (Some(id), false) if outcome => Message::numeric_id(id).map(Oversized::Answer),
            (Some(id), true) => Some(Oversized::Request(if valid_id(id) { id } else { null_id() })),
            _ => None,
        }
    }

    /// A line's `id` (as it is) and whether it has a `method`, read without parsing the rest.
    fn id_and_method(line: &[u8]) -> Option<(Option<&RawValue>, bool)> {
        let (mut id, mut method) = (None, false);
        scan::fields(line, ["id", "method"], |n, value| {
            match n {
                0 => id = Some(scan::raw(value.text()?)),
                _ => method = value.text().is_ok(),
            }
            Ok(())
        })
        .ok()?;
        Some((id, method))
    }
}

/// Whether `part`, a slice of `whole`, runs to its very end.
fn ends_at(whole: &[u8], part: &str) -> bool {
    part.as_ptr() as usize + part.len() == whole.as_ptr() as usize + whole.len()
}

/// What a line too long to take was, as far as its head tells ([`Message::oversized_head`]).
#[derive(Debug, Clone, Copy)]
pub enum Oversized<'a> {
    /// An answer to the request the reader sent under this id.
    Answer(u64),
    /// A request, to be answered under this id.
    Request(&'a RawValue),
}

/// The largest error object read whole. A larger one (a plugin's 15 MiB `data` of small numbers
/// was read into a tree 40 times its size, audit 21) keeps its code and the start of its
/// message; its `data` is dropped unread and its size said instead.
pub const ERROR_MAX: usize = 64 * 1024;

impl RpcError {
    /// An error object of more than [`ERROR_MAX`] bytes, its `data` unread (`data_bytes` says how
    /// long it was) and its message cut to [`ERROR_MAX`]. None if it is not an error object.
    fn cut_from(text: &str) -> Option<RpcError> {
        #[derive(Deserialize)]
        struct Head<'a> {
            code: i64,
            #[serde(borrow)]
            message: Cow<'a, str>,
            #[serde(default, borrow)]
            data: Option<&'a RawValue>,
        }
        let head: Head<'_> = serde_json::from_str(text).ok()?;
        let mut message = head.message.into_owned();
        if message.len() > ERROR_MAX {
            let mut end = ERROR_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" […cut: over 64 KiB]");
        }
        let data = head.data.map(|d| serde_json::json!({ "data_bytes": d.get().len(), "data_dropped": "over 64 KiB" }));
        Some(RpcError { code: head.code, message, data })
    }
}

/// Why a request's params are refused when they are neither an object nor an array.
pub const PARAMS_SHAPE: &str = "\"params\" must be an object or an array";

/// Why a batch is refused, the same for plugins and hosts.
pub const BATCH: &str = "a batch (a JSON array); plugind takes one message per line, without batches";

/// Deserializes a member that is present (even as `null`) into `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An optional string borrowed from the input unless it has escapes. Needed because
/// `#[serde(borrow)]` borrows a `Cow<str>` field but not an `Option<Cow<str>>` one: that is
/// always deserialized as an owned `String` (one allocation per message for `"jsonrpc":"2.0"`).
pub fn borrowed_opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Borrowed<'de>>::deserialize(d).map(|o| o.map(|b| b.0))
}

#[derive(Deserialize, Default)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_opt_str")]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt_str")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// The envelope by the fast scanner ([`scan`]), which walks `params` and `result` without
    /// building them; `NotTaken` for whatever it leaves to serde_json (which then gives the
    /// error, if there is one): a member twice, a member of a type the envelope does not allow,
    /// escapes in `jsonrpc` or `method`.
    fn scan(line: &'a [u8]) -> Result<Self, scan::NotTaken> {
        let mut env = Envelope::default();
        scan::fields(line, ["jsonrpc", "method", "id", "params", "result", "error"], |n, value| {
            // `null` reads as absent, as an `Option` does in serde; a string with escapes or
            // another type is left to serde.
            match n {
                0 => env.jsonrpc = value.plain_str()?.map(Cow::Borrowed),
                1 => env.method = value.plain_str()?.map(Cow::Borrowed),
                _ => {
                    let slot = match n {
                        2 => &mut env.id,
                        3 => &mut env.params,
                        4 => &mut env.result,
                        _ => &mut env.error,
                    };
                    *slot = Some(scan::raw(value.text()?));
                }
            }
            Ok(())
        })?;
        Ok(env)
    }
}

impl<'a> Message<'a> {
    /// Parses one line (without its `\n`).
    pub fn parse(line: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Validate as JSON first so "not JSON" and "JSON but not an object" differ.
            serde_json::from_slice::<serde::de::IgnoredAny>(line)?;
            if first == Some(&b'[') {
                return Err(ParseError::NotJsonRpc(BATCH));
            }
            return Err(ParseError::NotJsonRpc("not a JSON object"));
        }
        // The scanner checks UTF-8 as it goes. What it leaves goes to serde_json, from `&str`:
        // validating UTF-8 up front (vectorised) is faster than serde_json's byte-wise checks
        // when parsing from a slice.
        let env: Envelope<'a> = match Envelope::scan(line) {
            Ok(env) => env,
            Err(scan::NotTaken) => {
                serde_json::from_str(std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?).map_err(|e| {
                    // Valid JSON whose members have the wrong types (`"method": 5`) is not a
                    // JSON-RPC message; only a syntax error makes it "not JSON".
                    if e.is_data() {
                        ParseError::NotJsonRpc("a member has the wrong type (\"method\" must be a string)")
                    } else {
                        ParseError::NotJson(e)
                    }
                })?
            }
        };
        if let Some(v) = &env.jsonrpc {
            if v != "2.0" {
                return Err(ParseError::NotJsonRpc("\"jsonrpc\" must be \"2.0\""));
            }
        }
        if env.id.is_some_and(|id| !valid_id(id)) {
            return Err(ParseError::NotJsonRpc("\"id\" must be a string, a number or null"));
        }
        if env.params.is_some_and(|p| !matches!(p.get().as_bytes().first(), Some(b'{' | b'[' | b'n'))) {
            return Err(ParseError::NotJsonRpc(PARAMS_SHAPE));
        }
        if let Some(method) = env.method {
            return Ok(match env.id {
                // A null id is allowed (JSON-RPC 2.0 discourages it, but a request it is): the
                // answer carries it back.
                Some(id) => Message::Request { id, method, params: env.params },
                None => Message::Notification { method, params: env.params },
            });
        }
        let Some(id) = env.id else {
            return Err(ParseError::NotJsonRpc("neither \"method\" nor \"id\""));
        };
        let outcome = match (env.result, env.error) {
            (Some(r), None) => Ok(r),
            (None, Some(e)) if e.get().len() > ERROR_MAX => {
                Err(RpcError::cut_from(e.get()).ok_or(ParseError::NotJsonRpc("\"error\" is not an error object"))?)
            }
            (None, Some(e)) => Err(serde_json::from_str::<RpcError>(e.get())
                .map_err(|_| ParseError::NotJsonRpc("\"error\" is not an error object"))?),
            (Some(_), Some(_)) => return Err(ParseError::NotJsonRpc("both \"result\" and \"error\"")),
            (None, None) => return Err(ParseError::NotJsonRpc("response without \"result\" or \"error\"")),
        };
        Ok(Message::Response { id, outcome })
    }

    /// The id of a response as a number, the only kind plugind and the SDKs send.
    pub fn numeric_id(id: &RawValue) -> Option<u64> {
        id.get().parse().ok()
    }
}

/// Builds one outgoing line. The envelope's keys are written as literals; only the values go
/// through serde_json (a derived `Serialize` would escape-check every key on every message, a
/// few percent of the call path's instructions).
struct Line(Vec<u8>);

impl Line {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(br#"{"jsonrpc":"2.0""#);
        Line(buf)
    }

    /// `,"KEY":` (`key` is a literal that needs no escaping).
    fn key(mut self, key: &str) -> Self {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
        self
    }

    /// `,"KEY":` then `value` as JSON.
    fn field<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Self {
        let mut line = self.key(key);
        write_json(&mut line.0, value);
        line
    }

    /// `,"KEY":` then the string `value` ([`write_str`]).
    fn str_field(self, key: &str, value: &str) -> Self {
        let mut line = self.key(key);
        write_str(&mut line.0, value);
        line
    }

    /// `,"KEY":` then `value` verbatim (no pass of the serializer over it).
    fn raw(self, key: &str, value: &RawValue) -> Self {
        let mut line = self.key(key);
        line.0.extend_from_slice(value.get().as_bytes());
        line
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(LINE_END);
        self.0
    }
}

/// Appends `value` as JSON.
pub fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys.
    serde_json::to_writer(out, value).expect("UNWRAP: plain values serialize");
}

/// Appends `s` as a JSON string: the text between quotes when it needs no escape (the names an
/// envelope carries), else as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if crate::scan::needs_escape(s) {
        return write_json(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `{"jsonrpc":"2.0","id":ID,"method":M,"params":P}\n`.
pub fn request_line<P: Serialize + ?Sized>(id: u64, method: &str, params: &P) -> Vec<u8> {
    request_line_with(id, method, |out| write_json(out, params))
}

/// A request line whose params `write_params` appends as JSON text: for params that are mostly
/// raw JSON already (a forwarded `execute`), which a serializer pass would only re-check.
pub fn request_line_with(id: u64, method: &str, write_params: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut line = request_head(id, method);
    write_params(&mut line);
    line.extend_from_slice(LINE_END);
    line
}

/// `{"jsonrpc":"2.0","id":ID,"method":M,"params":`: a request line up to its params, for a writer
/// that writes them and then [`LINE_END`].
pub fn request_head(id: u64, method: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    append_request_head(&mut out, id, method);
    out
}

/// [`request_head`] appended to `out` (a writer's batch, say).
pub fn append_request_head(out: &mut Vec<u8>, id: u64, method: &str) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    write_json(out, &id);
    out.extend_from_slice(br#","method":"#);
    write_str(out, method);
    out.extend_from_slice(br#","params":"#);
}

/// The end of every line: the envelope's `}` and the newline.
pub const LINE_END: &[u8] = b"}\n";

/// `{"jsonrpc":"2.0","method":M,"params":P}\n`.
pub fn notification_line<P: Serialize + ?Sized>(method: &str, params: &P) -> Vec<u8> {
    Line::new(128).str_field("method", method).field("params", params).end()
}

/// `{"jsonrpc":"2.0","id":ID,"result":R}\n`.
pub fn result_line<R: Serialize + ?Sized>(id: &RawValue, result: &R) -> Vec<u8> {
    Line::new(64 + id.get().len()).raw("id", id).field("result", result).end()
}

/// [`result_line`] for a result that is JSON text already (a forwarded answer): copied verbatim.
pub fn raw_result_line(id: &RawValue, result: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + id.get().len() + result.get().len());
    append_raw_result_line(&mut out, id, result);
    out
}

/// [`raw_result_line`] appended to `out` (a writer's batch, say).
pub fn append_raw_result_line(out: &mut Vec<u8>, id: &RawValue, result: &RawValue) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(result.get().as_bytes());
    out.extend_from_slice(LINE_END);
}

/// `{"jsonrpc":"2.0","id":ID,"result":`: a result line up to its result, for a writer that
/// writes the result from where it is and then [`LINE_END`].
pub fn result_head(id: &RawValue) -> Vec<u8> {
    Line::new(32 + id.get().len()).raw("id", id).key("result").0
}

/// `{"jsonrpc":"2.0","id":ID,"error":E}\n`.
pub fn error_line(id: &RawValue, error: &RpcError) -> Vec<u8> {
    Line::new(128).raw("id", id).field("error", error).end()
}

/// The raw JSON `null`, for ids of errors answering unparseable input.
pub fn null_id() -> &'static RawValue {
    // SAFETY-free: a static literal that is valid JSON.
    static NULL: &str = "null";
    serde_json::from_str::<&RawValue>(NULL).expect("UNWRAP: literal null is valid JSON")
}

/// Raw JSON for an owned value.
pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("UNWRAP: plain values serialize")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_over_its_bound_keeps_its_code_and_drops_its_data_unread() {
        let data = format!("[{}0]", "0,".repeat(super::ERROR_MAX));
        let line = format!(r#"{{"jsonrpc":"2.0","id":3,"error":{{"code":-32042,"message":"big","data":{data}}}}}"#);
        let Ok(super::Message::Response { outcome: Err(e), .. }) = super::Message::parse(line.as_bytes()) else {
            panic!("an error response")
        };
        assert_eq!((e.code, e.message.as_str()), (-32042, "big"));
        assert_eq!(e.data, Some(serde_json::json!({ "data_bytes": data.len(), "data_dropped": "over 64 KiB" })));
        let long = "é".repeat(super::ERROR_MAX);
        let line = format!(r#"{{"jsonrpc":"2.0","id":3,"error":{{"code":1,"message":"{long}"}}}}"#);
        let Ok(super::Message::Response { outcome: Err(e), .. }) = super::Message::parse(line.as_bytes()) else {
            panic!("an error response")
        };
        assert!(
            e.message.len() < super::ERROR_MAX + 32 && e.message.ends_with("[…cut: over 64 KiB]"),
            "{}",
            e.message.len()
        );
        assert_eq!(e.data, None);
        // Under the bound, read whole, as before.
        let line = br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"m","data":[1,2]}}"#;
        let Ok(super::Message::Response { outcome: Err(e), .. }) = super::Message::parse(line) else { panic!() };
        assert_eq!(e.data, Some(serde_json::json!([1, 2])));
    }

    #[test]
    fn the_head_of_an_oversized_line_tells_an_answer_or_a_request() {
        use super::{Message, Oversized};
        let answer = |head: &str| match Message::oversized_head(head.as_bytes()) {
            Some(Oversized::Answer(n)) => Some(n),
            _ => None,
        };
        assert_eq!(answer(r#"{"jsonrpc":"2.0","id":7,"result":{"blob":"xxxxxxxx"#), Some(7));
        assert_eq!(answer(r#"{"id": 8, "jsonrpc": "2.0", "error": {"code": 1, "data": "xx"#), Some(8));
        // The result first, a method, or a cut before the id: it does not tell.
        assert_eq!(answer(r#"{"jsonrpc":"2.0","result":{"blob":"xxxxxxxx"#), None);
        assert_eq!(answer(r#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"a":"xx"#), None);
        assert_eq!(answer(r#"{"jsonrpc":"2.0","i"#), None);
        // An id the cut may have shortened is not taken for another.
        match Message::oversized_head(br#"{"jsonrpc":"2.0","method":"kv.set","id":12"#) {
            None => {}
            other => panic!("{other:?}"),
        }
        match Message::oversized_head(br#"{"jsonrpc":"2.0","id":"r1","method":"kv.set","params":{"value":"xxx"#) {
            Some(Oversized::Request(id)) => assert_eq!(id.get(), r#""r1""#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn params_errors_name_what_did_not_fit_without_a_position() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            name: String,
        }
        let raw = |t: &str| serde_json::value::RawValue::from_string(t.to_owned()).unwrap();
        let e = super::parse_params::<P>(Some(&raw("{\"x\": 1}"))).unwrap_err();
        assert_eq!(e.message, "invalid params: missing field `name`");
        let e = super::parse_params::<P>(Some(&raw("{\"name\": 5}"))).unwrap_err();
        assert_eq!(e.message, "invalid params: invalid type: integer `5`, expected a string");
    }

    /// Valid JSON with members of the wrong type is "not JSON-RPC" (-32600), not "not JSON"; a
    /// malformed request's id can still be read to answer it, a malformed response's is not.
    #[test]
    fn wrong_types_are_invalid_requests() {
        use super::{codes, Message};
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#,
        ] {
            let e = Message::parse(line.as_bytes()).unwrap_err();
            assert_eq!(e.code(), codes::INVALID_REQUEST, "{line}: {e}");
        }
        assert!(Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":null}"#).is_ok());
        assert!(Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}"#).is_ok());
        let id = |line: &str| Message::request_id_of(line.as_bytes()).map(|id| id.get().to_owned());
        assert_eq!(id(r#"{"id":"r-1","method":5}"#).as_deref(), Some(r#""r-1""#));
        assert_eq!(id(r#"{"method":[1],"id":7}"#).as_deref(), Some("7"));
        assert_eq!(id(r#"{"id":7,"result":1,"error":{}}"#), None);
        // An id an answer cannot carry back gets its answer under null.
        assert_eq!(id(r#"{"id":null,"method":5}"#).as_deref(), Some("null"));
        assert_eq!(id(r#"{"id":[7],"method":5}"#).as_deref(), Some("null"));
        assert_eq!(id(r#"{"method":5}"#), None, "a notification is never answered");
        // A malformed answer names the request it was for; a malformed request is no answer.
        assert_eq!(Message::answer_id_of(br#"{"id":7,"result":1,"error":{}}"#), Some(7));
        assert_eq!(Message::answer_id_of(br#"{"id":7,"method":5}"#), None);
        // A request with a null id is a request (JSON-RPC 2.0 allows it).
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"m"}"#),
            Ok(Message::Request { id, .. }) if id.get() == "null"
        ));
    }

    #[test]
    fn write_str_writes_what_serde_writes() {
        for text in ["execute", "", "a\"b", "tab\there", "é", "\u{1}", "back\\slash", "x/y"] {
            let mut ours = Vec::new();
            super::write_str(&mut ours, text);
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    /// An envelope's members as text, to compare the scanner's with serde's.
    fn fields(e: &Envelope<'_>) -> [Option<String>; 6] {
        let raw = |r: Option<&RawValue>| r.map(|r| r.get().to_owned());
        let s = |c: &Option<Cow<'_, str>>| c.as_deref().map(str::to_owned);
        [s(&e.jsonrpc), s(&e.method), raw(e.id), raw(e.params), raw(e.result), raw(e.error)]
    }

    /// Whatever envelope the scanner reads, serde_json reads the same (on valid messages and on
    /// every one-byte mutation of them); and it does read the usual messages.
    #[test]
    fn scanned_envelopes_match_serde() {
        let seeds = [
            r#"{"jsonrpc":"2.0","id":1,"method":"execute","params":{"method":"echo","params":{"s":"a\"b"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"x":[1,2.5]}}"#,
            r#"{"jsonrpc":"2.0","id":"q","error":{"code":-32000,"message":"m"}}"#,
            r#"{"jsonrpc":null,"method":"$/progress","params":null,"id":null,"extra":[{}]}"#,
            r#"{"method":"log","jsonrpc":"2.0","params":{"level":"info","message":"\u00e9"}}"#,
        ];
        for seed in seeds {
            assert!(Envelope::scan(seed.as_bytes()).is_ok(), "{seed}");
        }
        let mut taken = 0;
        for seed in seeds {
            for t in scan::one_byte_mutations(seed, b"\"\\{}[],:0-1.nule \x02") {
                if let Ok(ours) = Envelope::scan(t.as_bytes()) {
                    taken += 1;
                    let theirs: Envelope<'_> =
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("scanner took {t:?}, serde: {e}"));
                    assert_eq!(fields(&ours), fields(&theirs), "{t:?}");
                }
            }
        }
        assert!(taken > 100, "{taken}");
        // Left to serde: a member twice (its "duplicate field" error), escapes in the method.
        assert!(Envelope::scan(br#"{"id":1,"id":2,"result":1}"#).is_err());
        assert!(Envelope::scan(br#"{"method":null,"method":"x"}"#).is_err());
        assert!(Envelope::scan(br#"{"method":"a\u0062"}"#).is_err());
        assert!(serde_json::from_str::<Envelope<'_>>(r#"{"id":1,"id":2,"result":1}"#).is_err());
    }
    use super::*;

    #[test]
    fn request_keeps_params_raw() {
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"execute","params":{"a":[1, 2]}}"#;
        match Message::parse(line).unwrap() {
            Message::Request { id, method, params } => {
                assert_eq!(id.get(), "7");
                assert_eq!(method, "execute");
                assert_eq!(params.unwrap().get(), r#"{"a":[1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn notification_has_no_id() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","method":"log","params":{}}"#).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
    }

    #[test]
    fn null_result_is_a_result() {
        match Message::parse(br#"{"jsonrpc":"2.0","id":3,"result":null}"#).unwrap() {
            Message::Response { id, outcome } => {
                assert_eq!(Message::numeric_id(id), Some(3));
                assert_eq!(outcome.unwrap().get(), "null");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_response_is_parsed() {
        let line = br#"{"jsonrpc":"2.0","id":"x","error":{"code":-1,"message":"boom","data":{"k":1}}}"#;
        match Message::parse(line).unwrap() {
            Message::Response { outcome: Err(e), .. } => {
                assert_eq!(e.code, -1);
                assert_eq!(e.message, "boom");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_json() {
        let e = Message::parse(b"hello world").unwrap_err();
        assert_eq!(e.code(), codes::PARSE_ERROR);
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        let e = Message::parse(b"{\"method\":\"\xff\xfe\"}").unwrap_err();
        assert_eq!(e.code(), codes::PARSE_ERROR);
    }

    #[test]
    fn json_that_is_not_jsonrpc_is_invalid_request() {
        for line in [&b"[1,2]"[..], b"42", br#"{"foo":1}"#, br#"{"jsonrpc":"1.0","method":"x"}"#, br#"{"id":1}"#] {
            let e = Message::parse(line).unwrap_err();
            assert_eq!(e.code(), codes::INVALID_REQUEST, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn lines_roundtrip() {
        let l = request_line(5, "ping", &serde_json::json!({}));
        assert_eq!(l.last(), Some(&b'\n'));
        let m = Message::parse(&l[..l.len() - 1]).unwrap();
        assert!(matches!(m, Message::Request { method, .. } if method == "ping"));
        let id = to_raw(&5);
        let e = error_line(&id, &RpcError::new(-32001, "late"));
        assert!(matches!(Message::parse(&e[..e.len() - 1]).unwrap(), Message::Response { outcome: Err(_), .. }));
    }

    #[test]
    fn escaped_method_name_is_decoded() {
        let m = Message::parse(br#"{"method":"lo\u0067"}"#).unwrap();
        assert!(matches!(m, Message::Notification { method, .. } if method == "log"));
    }
}
