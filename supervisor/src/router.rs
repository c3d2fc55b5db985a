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

/// Turns at the off-loop params checker: one per CPU for everyone, and one at a time for each
/// calling plugin, so that a plugin sending many heavy calls waits behind its own checks and not
/// in front of everyone else's (audit 18: one plugin's flood of self-calls held both of a 2-CPU
/// machine's turns, and every other plugin's heavy check waited behind the whole flood). Hosts
/// (control connections, trusted with the token) share only the CPU-wide turns.
struct CheckTurns {
    cpus: Arc<tokio::sync::Semaphore>,
    /// One turn per calling plugin with a check waiting or running; an entry leaves with the
    /// last of them.
    per_plugin: std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<tokio::sync::Semaphore>>>,
}

/// What a check holds while it runs: dropped on the blocking thread when the check ends, not
/// when the call that waits for it gives up.
struct CheckTurn {
    _cpu: tokio::sync::OwnedSemaphorePermit,
    _own: Option<Lane>,
}

/// A calling plugin's place in its lane: waiting for its turn, then holding it. However it ends
/// (the check done, the wait given up, the call dropped), the lane leaves the table when it was
/// the last one there.
struct Lane {
    turns: &'static CheckTurns,
    caller: Box<str>,
    lane: Option<Arc<tokio::sync::Semaphore>>,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Both references to the lane go before the table is looked at.
        drop((self.turn.take(), self.lane.take()));
        self.turns.forget_idle(&self.caller);
    }
}

static CHECK_TURNS: std::sync::LazyLock<CheckTurns> = std::sync::LazyLock::new(|| {
    CheckTurns::new(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
});

impl CheckTurns {
    fn new(cpus: usize) -> Self {
        CheckTurns { cpus: Arc::new(tokio::sync::Semaphore::new(cpus)), per_plugin: Default::default() }
    }

    /// Waits for `caller`'s own turn (plugins only), then for a CPU's.
    async fn take(&'static self, caller: Option<&str>) -> CheckTurn {
        let own = match caller {
            Some(name) => {
                let lane = self
                    .per_plugin
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(name.into())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                    .clone();
                let mut place = Lane { turns: self, caller: name.into(), lane: Some(lane.clone()), turn: None };
                place.turn = Some(lane.acquire_owned().await.expect("never closed"));
                Some(place)
            }
            None => None,
        };
        // Taken after the plugin's own, so that a plugin holds at most one place in this queue.
        let cpu = self.cpus.clone().acquire_owned().await.expect("never closed");
        CheckTurn { _cpu: cpu, _own: own }
    }

    /// Drops `caller`'s lane once no check of its waits for it or holds it.
    fn forget_idle(&self, caller: &str) {
        let mut lanes = self.per_plugin.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The table's reference is the only one left: nobody waits, nobody holds.
        if lanes.get(caller).is_some_and(|lane| Arc::strong_count(lane) == 1) {
            lanes.remove(caller);
        }
    }
}

/// Checks `params` against `method`'s schema on a blocking thread, in a turn of
/// [`CheckTurns`]: a check that may take up to a second must not hold up the event loop, nor
/// take every CPU when a plugin sends many. Waiting for the turn ends at `deadline`
/// (`-32001`); a check that has begun runs to its end (its cost is bounded).
async fn check_off_loop(
    turns: &'static CheckTurns,
    catalog: Arc<crate::catalog::Catalog>,
    call: &Call<'_>,
    plugin: &str,
    deadline: Instant,
    timed_out: impl FnOnce() -> RpcError,
) -> Result<(), RpcError> {
    let Ok(turn) = tokio::time::timeout_at(deadline, turns.take(call.caller)).await else {
        return Err(timed_out());
    };
    let (plugin, method, params) = (plugin.to_owned(), call.method.to_owned(), call.params.map(RawValue::to_owned));
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        match catalog.get(&method) {
            Some(m) => m.check_params(&plugin, &method, params.as_deref()),
            None => Ok(()),
        }
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
            // The wait for a turn ends at the call's deadline (the call itself then has its own).
            let (default_timeout, max) = instance.timeouts;
            let timeout = call.timeout_ms.or(m.spec.timeout_ms).map_or(default_timeout, Duration::from_millis).min(max);
            let accepted = Instant::now();
            let deadline = call.not_after.map_or(accepted + timeout, |t| t.min(accepted + timeout));
            let expired = || timed_out(&Answerer::plugin(&entry.name), timeout, max, accepted, call.not_after);
            // Boxed: its state would otherwise grow every call's future, checked or not.
            Box::pin(check_off_loop(&CHECK_TURNS, catalog, &call, &entry.name, deadline, expired)).await?;
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
            Admission::Timeout => {
                let mut e = timed_out(&Answerer::plugin(&entry.name), timeout, max, accepted, not_after);
                e.message.push_str(
                    " (the call waited in plugind's queue for one of the plugin's max_inflight slots, and was never sent)",
                );
                e
            }
        })?;
        instance.peer.call_traced(method, write_params, deadline, Some(hop.as_parent()), true).await.map_err(
            |e| match e {
                CallError::Timeout(_) => timed_out(&Answerer::plugin(&entry.name), timeout, max, accepted, not_after),
                e => instance::call_error(&entry.name, timeout, e),
            },
        )
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

    /// A plugin's heavy checks take turns among themselves: its second waits for its first, while
    /// another plugin's goes ahead; a lane leaves the table with its last check, also when that
    /// one gave up waiting; and a check that cannot get a turn before its deadline is answered
    /// with the caller's error, the plugin never called.
    #[tokio::test]
    async fn heavy_checks_take_turns_per_plugin_and_give_up_at_the_deadline() {
        let turns: &'static CheckTurns = Box::leak(Box::new(CheckTurns::new(2)));
        let soon = || tokio::time::sleep(Duration::from_millis(50));
        let first = turns.take(Some("hog")).await;
        let mut second = Box::pin(turns.take(Some("hog")));
        tokio::select! {
            biased;
            _ = &mut second => panic!("a plugin's second check ran beside its first"),
            () = soon() => {}
        }
        let other =
            tokio::time::timeout(Duration::from_secs(5), turns.take(Some("other"))).await.expect("its own turn");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.expect("its turn after the first");
        drop((second, other));
        assert!(turns.per_plugin.lock().expect("UNWRAP: not poisoned").is_empty(), "idle lanes are dropped");

        // Both CPUs' turns taken: a check with a deadline gives up with the caller's error.
        let busy = (turns.take(None).await, turns.take(None).await);
        let m = plugind_protocol::manifest::Manifest::from_value(&serde_json::json!({
            "name": "p", "version": "1.0.0", "main": "m.py", "methods": {"m": {"params": {"type": "array"}}}
        }))
        .unwrap();
        let log = crate::logs::PluginLog::new("p", 10, tokio::sync::broadcast::channel(1).0);
        let catalog = Arc::new(crate::catalog::Catalog::build(&m, None, &log));
        let params = RawValue::from_string("[1]".into()).unwrap();
        let call = Call {
            method: "m",
            params: Some(&params),
            timeout_ms: None,
            service: None,
            caller: Some("hog"),
            not_after: None,
            trace: TraceIn::default(),
            params_line: None,
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        let waiting = check_off_loop(turns, catalog.clone(), &call, "p", deadline, || RpcError::internal("too late"));
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("it gave up at its deadline");
        assert!(r.unwrap_err().message.ends_with("too late"));
        assert!(
            turns.per_plugin.lock().expect("UNWRAP: not poisoned").is_empty(),
            "a lane whose check gave up is dropped"
        );
        drop(busy);
        let r = check_off_loop(turns, catalog, &call, "p", Instant::now() + Duration::from_secs(5), || {
            RpcError::internal("too late")
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
    }

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
