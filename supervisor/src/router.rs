//! The call path: from "call method M of plugin P" to the plugin's answer.
//!
//! 1. Find the plugin ([`Daemon::plugin`]) and its least-loaded ready instance
//!    ([`PluginEntry::pick`]); none → `-32002` with the state, at once.
//! 2. For `execute`: check the params against the method's `params` schema, if the instance's
//!    catalog has one (`-32602` on a mismatch, and the plugin is not called), and take the
//!    method's `timeout_ms` when the call gives none ([`crate::catalog`]).
//! 3. Admit the call ([`Instance::admit`]): one of `max_inflight` slots, else a place in the
//!    queue, else `-32006`.
//! 4. Send `execute` with the caller's params as raw JSON (parsed only for a schema) and wait
//!    until the deadline ([`Peer::call`]); a timeout sends `$/cancel` and answers `-32001`, a
//!    crash `-32003`.

use crate::plugin::instance::{self, Admission, Instance};
use crate::plugin::PluginEntry;
use crate::trace::{Hop, TraceIn};
use crate::transport::outbox::WRITE_DIRECT;
use crate::transport::peer::{CallError, Deadline, RawJson, Splice};
use crate::Daemon;
use bytes::Bytes;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{self, RpcError};
use plugind_protocol::methods;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `execute` params as sent to a plugin (or host); `params` stays raw.
pub struct ExecuteOut<'a> {
    /// The method.
    pub method: &'a str,
    /// The caller's params, verbatim.
    pub params: &'a RawValue,
    /// The service, for calls through the registry.
    pub service: Option<&'a str>,
    /// The calling plugin.
    pub caller: Option<&'a str>,
    /// The hop's trace context, sent as `_meta`.
    pub trace: Option<&'a Hop>,
    /// The line `params` were read from, if that line has no line break in it: large params
    /// are then passed on from it, not copied ([`Splice`]).
    pub params_line: Option<&'a Bytes>,
}

impl ExecuteOut<'_> {
    /// Appends `{"method":…,"params":…,"service":…,"caller":…}`: the keys as literals, the
    /// strings escaped, the params copied as they came (a serializer pass over them would only
    /// re-check JSON that was checked when it was read). Large params from a line without line
    /// breaks are not copied: they are handed back as a [`Splice`], with the text after them.
    ///
    /// The params lose their line breaks, if they have any: a pretty-printed body over `--listen`
    /// would otherwise split the line, and so would a lone `\r` for a plugin whose line reader
    /// breaks lines at one (universal newlines: Python's `open()`, Node's `readline`). In JSON
    /// text `\n` and `\r` can only be whitespace between tokens (strings escape them), so
    /// dropping them changes nothing.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Option<Splice> {
        let params = self.params.get().as_bytes();
        let shared = match self.params_line {
            Some(line) if params.len() >= WRITE_DIRECT => RawJson::from_line(line, self.params),
            _ => None,
        };
        // Room for the whole line at once: grown piece by piece, a large payload was copied by
        // every reallocation, the last one (for `_meta`, after it) included.
        let names = self.method.len() + self.service.map_or(0, str::len) + self.caller.map_or(0, str::len);
        out.reserve(if shared.is_some() { 0 } else { params.len() } + names + 256);
        out.extend_from_slice(br#"{"method":"#);
        jsonrpc::write_str(out, self.method);
        out.extend_from_slice(br#","params":"#);
        // What follows the params goes after them in `out`, or, when they are spliced, in a
        // tail of its own.
        let mut tail = Vec::new();
        let rest = match shared {
            Some(_) => {
                tail.reserve(names + 256);
                &mut tail
            }
            None => {
                // memchr: a byte-set `contains` walks the text a byte at a time.
                if memchr::memchr2(b'\n', b'\r', params).is_some() {
                    out.extend(params.iter().filter(|b| !matches!(b, b'\n' | b'\r')));
                } else {
                    out.extend_from_slice(params);
                }
                out
            }
        };
        for (key, value) in [(&br#","service":"#[..], self.service), (br#","caller":"#, self.caller)] {
            if let Some(v) = value {
                rest.extend_from_slice(key);
                jsonrpc::write_str(rest, v);
            }
        }
        if let Some(hop) = self.trace {
            hop.write_meta(rest);
        }
        rest.push(b'}');
        shared.map(|body| Splice { body, tail })
    }
}

/// One routed call.
pub struct Call<'a> {
    /// Method passed to the plugin's `execute`.
    pub method: &'a str,
    /// Params, raw (`null` when absent).
    pub params: Option<&'a RawValue>,
    /// The caller's own deadline, if it gave one.
    pub timeout_ms: Option<u64>,
    /// The service name, for calls through the registry.
    pub service: Option<&'a str>,
    /// The calling plugin.
    pub caller: Option<&'a str>,
    /// A deadline inherited from the call that caused this one.
    pub not_after: Option<Instant>,
    /// The trace this call continues (its `_meta`, or the call that caused it).
    pub trace: TraceIn,
    /// The line `params` were read from, if it has no line break (see [`ExecuteOut`]).
    pub params_line: Option<&'a Bytes>,
}

impl Call<'_> {
    /// The `execute` params this call sends as hop `hop` (plugins and hosts get the same shape).
    pub fn execute_out<'h>(&'h self, hop: &'h Hop) -> ExecuteOut<'h> {
        ExecuteOut {
            method: self.method,
            params: self.params.unwrap_or(RawValue::NULL),
            service: self.service,
            caller: self.caller,
            trace: Some(hop),
            params_line: self.params_line,
        }
    }
}

/// `-32004` for an unknown plugin.
pub fn unknown_plugin(name: &str) -> RpcError {
    RpcError::with_data(
        codes::SERVICE_NOT_FOUND,
        format!("no plugin named {name:?}"),
        serde_json::json!({ "plugin": name }),
    )
}

/// `-32002` for a plugin that is not running; `-32007` for one that cannot run (its manifest is
/// invalid: no start would help).
pub fn unavailable(entry: &PluginEntry) -> RpcError {
    let st = entry.status();
    let state = st.state.as_str();
    let why = st.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    if st.state == crate::plugin::state::PluginState::Invalid {
        return RpcError::with_data(
            codes::INVALID_MANIFEST,
            format!("plugin {} cannot run, its manifest is invalid{why}", entry.name),
            serde_json::json!({ "plugin": &*entry.name, "state": state }),
        );
    }
    RpcError::with_data(
        codes::PLUGIN_UNAVAILABLE,
        format!("plugin {} is {state}{why}", entry.name),
        serde_json::json!({ "plugin": &*entry.name, "state": state }),
    )
}

impl Daemon {
    /// Calls `execute` on plugin `name`.
    pub async fn execute(&self, name: &str, call: Call<'_>) -> Result<RawJson, RpcError> {
        let entry = self.plugin(name).ok_or_else(|| unknown_plugin(name))?;
        execute_on(&entry, call).await
    }
}

/// Checks `params` against `method`'s schema on a blocking thread, at most as many at once as
/// there are CPUs: a check that may take up to a second must not hold up the event loop, nor
/// take every CPU when a plugin sends many.
async fn check_off_loop(
    catalog: Arc<crate::catalog::Catalog>,
    plugin: &str,
    method: &str,
    params: Option<&RawValue>,
) -> Result<(), RpcError> {
    static CHECKING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
    });
    let _turn = CHECKING.acquire().await.map_err(|_| RpcError::internal("the params checker is closed"))?;
    let (plugin, method, params) = (plugin.to_owned(), method.to_owned(), params.map(RawValue::to_owned));
    tokio::task::spawn_blocking(move || match catalog.get(&method) {
        Some(m) => m.check_params(&plugin, &method, params.as_deref()),
        None => Ok(()),
    })
    .await
    .map_err(|e| RpcError::internal(format!("checking the params failed: {e}")))?
}

/// Calls `execute` on a plugin entry: control `execute`, `services.call` and a plugin's
/// `service.call` all end here. The instance's method catalog (`crate::catalog`) is applied
/// first: params that do not match the method's `params` schema are answered `-32602` and never
/// reach the plugin, and the method's `timeout_ms` stands in for the plugin's when the call
/// gives none.
pub async fn execute_on(entry: &Arc<PluginEntry>, call: Call<'_>) -> Result<RawJson, RpcError> {
    let Some(instance) = entry.pick() else { return Err(unavailable(entry)) };
    let method = instance.catalog().and_then(|c| c.get(call.method));
    if let Some(m) = method {
        if m.check_is_heavy(call.params) {
            let catalog = instance.catalog().cloned().expect("the method came from it");
            // Boxed: its state would otherwise grow every call's future, checked or not.
            Box::pin(check_off_loop(catalog, &entry.name, call.method, call.params)).await?;
        } else {
            m.check_params(&entry.name, call.method, call.params)?;
        }
    }
    let hop = Hop::start(&call.trace, "execute", Some(&entry.name), call.method);
    let params = call.execute_out(&hop);
    // Deadline precedence: the call's own, else the method's, else the plugin's.
    let timeout_ms = call.timeout_ms.or_else(|| method.and_then(|m| m.spec.timeout_ms));
    let result = call_instance(
        entry,
        instance,
        methods::EXECUTE,
        |out| params.write_json(out),
        timeout_ms,
        call.not_after,
        &hop,
    )
    .await;
    if let Err(e) = &result {
        call_failed(entry, call.method, e, &hop);
    }
    hop.finish(&result);
    result
}

/// A call that timed out, was cancelled or lost its process is logged in the plugin's log and
/// published as a `call_failed` event, both with the call's trace id (an error the plugin
/// answered itself is the caller's business, not plugind's). A call refused as overloaded
/// (`-32006`) is not: under overload that would be a line and an event per refused call, and the
/// overload shows in the metrics already.
pub fn call_failed(entry: &PluginEntry, method: &str, e: &RpcError, hop: &Hop) {
    if matches!(e.code, codes::DEADLINE_EXCEEDED | codes::PLUGIN_CRASHED | codes::REQUEST_CANCELLED) {
        let trace_id = hop.span.trace_id_hex();
        entry.log.warn_traced(format!("call {method} failed: {}", e.message), &trace_id);
        entry.log.call_event("call_failed", format!("{method}: {}", e.message), trace_id);
    }
}

/// Sends request `method` to the least-loaded ready instance of a plugin, with admission
/// (`max_inflight`, queue), the deadline (`timeout_ms` or the manifest's, never past
/// `not_after`), error mapping and call accounting. `execute` and hook steps both go through it.
pub async fn call_plugin(
    entry: &Arc<PluginEntry>,
    method: &str,
    write_params: impl FnOnce(&mut Vec<u8>) -> Option<Splice>,
    timeout_ms: Option<u64>,
    not_after: Option<Instant>,
    hop: &Hop,
) -> Result<RawJson, RpcError> {
    let Some(instance) = entry.pick() else { return Err(unavailable(entry)) };
    call_instance(entry, instance, method, write_params, timeout_ms, not_after, hop).await
}

/// [`call_plugin`] on an instance already picked. The deadline is `timeout_ms` (else the
/// manifest's), never past `max_timeout_ms` nor `not_after`.
async fn call_instance(
    entry: &Arc<PluginEntry>,
    instance: Arc<Instance>,
    method: &str,
    write_params: impl FnOnce(&mut Vec<u8>) -> Option<Splice>,
    timeout_ms: Option<u64>,
    not_after: Option<Instant>,
    hop: &Hop,
) -> Result<RawJson, RpcError> {
    let (default_timeout, max) = instance.timeouts;
    let timeout = timeout_ms.map_or(default_timeout, Duration::from_millis).min(max);
    let accepted = Instant::now();
    let mut deadline = Deadline::starting(accepted, timeout, max);
    if let Some(t) = not_after {
        deadline = deadline.within(t);
    }
    entry.counters.total.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let _slot = instance.admit(deadline.hard.min(accepted + timeout)).await.map_err(|a| match a {
            Admission::Overloaded => RpcError::with_data(
                codes::OVERLOADED,
                format!("plugin {} is overloaded: max_inflight calls busy and the queue full", entry.name),
                serde_json::json!({ "plugin": &*entry.name }),
            ),
            Admission::Timeout => timed_out(&Answerer::plugin(&entry.name), timeout, max, accepted, not_after),
        })?;
        instance.peer.call_traced(method, write_params, deadline, Some(hop.as_parent())).await.map_err(|e| match e {
            CallError::Timeout(_) => timed_out(&Answerer::plugin(&entry.name), timeout, max, accepted, not_after),
            e => instance::call_error(&entry.name, timeout, e),
        })
    }
    .await;
    entry.counters.latency.observe(accepted.elapsed().as_secs_f64());
    if let Err(e) = &result {
        entry.counters.failed.fetch_add(1, Ordering::Relaxed);
        if e.code == codes::DEADLINE_EXCEEDED {
            entry.counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

/// Who did not answer in time, for [`timed_out`]: how the message names it, and the `plugin`
/// its `data` names.
pub struct Answerer<'a> {
    /// "plugin NAME", or "service NAME of the host on control connection N (pid P)".
    pub described: String,
    /// `data.plugin`.
    pub plugin: &'a str,
}

impl<'a> Answerer<'a> {
    /// A plugin.
    pub fn plugin(name: &'a str) -> Self {
        Answerer { described: format!("plugin {name}"), plugin: name }
    }
}

/// `-32001` naming the deadline that ended the call: its own (`timeout`, restarted by progress),
/// the plugin's `max_timeout_ms` (`max`, which progress never extends), or its caller's
/// (`not_after`: a hook chain's budget, the call a `service.call` was made for), in
/// `data.limit` (`"timeout_ms"`, `"max_timeout_ms"`, `"caller"`) and `data.timeout_ms`.
/// (`accepted`: when the call's clock started.)
pub fn timed_out(
    who: &Answerer<'_>,
    timeout: Duration,
    max: Duration,
    accepted: Instant,
    not_after: Option<Instant>,
) -> RpcError {
    // A hard limit fired when the call ran (about) as long as it allows.
    let ran = accepted.elapsed() + Duration::from_millis(2);
    let caller = not_after.map(|t| t.saturating_duration_since(accepted)).filter(|c| *c < max);
    let (limit, allowed) = match caller {
        Some(c) if ran >= c => ("caller", c),
        // Also when the call's own deadline was capped to it: only a larger max would help.
        _ if ran >= max => ("max_timeout_ms", max),
        _ => ("timeout_ms", timeout),
    };
    let ms = allowed.as_millis() as u64;
    let whose = match limit {
        "caller" => " (its caller's deadline)",
        "max_timeout_ms" => " (its max_timeout_ms, which progress does not extend)",
        _ => "",
    };
    RpcError::with_data(
        codes::DEADLINE_EXCEEDED,
        format!("deadline exceeded: {} did not answer within {ms} ms{whose}", who.described),
        serde_json::json!({ "plugin": who.plugin, "timeout_ms": ms, "limit": limit }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceIn;

    /// The params and the text around them, as [`ExecuteOut::write_json`] gives them: one line,
    /// or its three parts joined.
    fn written(out: &ExecuteOut<'_>) -> (Vec<u8>, Option<bool>) {
        let mut line = Vec::new();
        match out.write_json(&mut line) {
            None => (line, None),
            Some(Splice { body, tail }) => {
                let shared = body.is_shared();
                ([line, body.get().as_bytes().to_vec(), tail].concat(), Some(shared))
            }
        }
    }

    /// Large params from a line without a line break are spliced from it, the same text as
    /// when copied; small ones, and params not from such a line, are copied, line breaks taken
    /// out.
    #[test]
    fn large_params_from_a_flat_line_are_spliced() {
        let hop = Hop::start(&TraceIn::default(), "execute", Some("echo"), "echo");
        for size in [10, WRITE_DIRECT + 1] {
            let params = format!(r#"{{"blob": "{}"}}"#, "x".repeat(size));
            let line = Bytes::from(format!(r#"{{"id":1,"params":{params}}}"#));
            let in_line = &line[line.len() - 1 - params.len()..line.len() - 1];
            let raw = plugind_protocol::scan::raw(std::str::from_utf8(in_line).unwrap());
            let out = |params_line| ExecuteOut {
                method: "echo",
                params: raw,
                service: Some("svc"),
                caller: None,
                trace: Some(&hop),
                params_line,
            };
            let (copied, how) = written(&out(None));
            assert_eq!(how, None);
            let (spliced, how) = written(&out(Some(&line)));
            assert_eq!(how, (size >= WRITE_DIRECT).then_some(true), "size {size}");
            assert!(spliced == copied, "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
            assert_eq!(v["params"]["blob"].as_str().map(str::len), Some(size));
            assert_eq!(v["service"], "svc");
            // Params not in the line given are copied.
            let other = Bytes::from(line.to_vec());
            assert_eq!(written(&out(Some(&other))).1, None);
        }
        // Line breaks between tokens are taken out of copied params.
        let raw = plugind_protocol::scan::raw("{\"a\":\r\n1}");
        let out = ExecuteOut { method: "m", params: raw, service: None, caller: None, trace: None, params_line: None };
        assert_eq!(written(&out).0, br#"{"method":"m","params":{"a":1}}"#);
    }
}
