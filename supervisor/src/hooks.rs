//! Host hook chains: a payload passed through every plugin that handles a hook, in priority order
//! (ties by name), with a receipt of what each one did.
//!
//! Each plugin takes part as its manifest says (`hooks.NAME`: a priority, or `{ priority,
//! timeout_ms, failure, mode }`):
//! - `mode: "enforce"` (default): its answer's `payload` is the next plugin's; `stop: true` ends
//!   the chain with that payload;
//! - `mode: "shadow"`: it sees a copy of the payload at its place in the chain and runs beside
//!   the chain, within its own timeout (its time never spends the chain's budget); its answer and
//!   failures never change the chain (a guardrail tried before it is trusted);
//! - `failure: "open"` (default): an error or timeout skips it (it is told with `onError`) and
//!   the chain goes on;
//! - `failure: "closed"`: an error or timeout ends the chain and `hooks.run` answers `-32008`
//!   hook rejected; so does such a plugin that is enabled but not running, or that the chain's
//!   budget cut off (an auth hook must not be skipped silently);
//! - any plugin may reject a payload on purpose by answering error `-32009`: the chain ends with
//!   `-32008`, whatever its `failure` mode.
//!
//! `hooks.run`'s `timeout_ms` is the whole chain's budget: the plugin still running when it runs
//! out is `timed_out`, the later ones `skipped`, and the payload so far is the answer (unless a
//! closed plugin was cut off). The receipt has one entry per plugin in chain order.
//!
//! The payload passes through the chain as the JSON text each plugin answered, never as a tree:
//! a plugin answering a 16 MiB array of zeros made plugind parse it into a 550 MB tree, and copy
//! the tree for each shadow step (six of them took plugind to the OOM killer, audit 18). Shadow
//! steps share the text; `passed` and `modified` compare texts, and parse them only when they
//! differ and are small ([`same_payload`]).

use crate::router::{call_plugin, unavailable};
use crate::trace::{Hop, TraceIn};
use crate::{Daemon, PluginEntry};
use futures::stream::{FuturesUnordered, StreamExt};
use plugind_protocol::codes;
use plugind_protocol::control::{HookOutcome, ReceiptEntry};
use plugind_protocol::manifest::{HookFailure, HookMode, HookSpec};
use plugind_protocol::methods;
use plugind_protocol::RpcError;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What `hooks.run` answers: `HooksRunResult` of the wire types, its payload kept as text.
#[derive(serde::Serialize)]
pub struct ChainResult {
    /// Final payload.
    #[serde(serialize_with = "raw_text")]
    pub payload: Arc<RawValue>,
    /// Plugins that handled it, in order.
    pub handled_by: Vec<String>,
    /// The plugin that ended the chain with `stop: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// One entry per plugin of the chain, in chain order.
    pub receipt: Vec<ReceiptEntry>,
}

fn raw_text<S: serde::Serializer>(v: &Arc<RawValue>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&**v, s)
}

/// A plugin's answer to `hook`: `HookResult` of the wire types, its payload kept as text.
#[derive(serde::Deserialize)]
struct HookAnswer {
    payload: Box<RawValue>,
    #[serde(default)]
    stop: bool,
}

/// Whether a plugin's answered payload `b` is the payload `a` it was given (`passed`): the same
/// text but for whitespace outside strings (`{"a": 1}` is `{"a":1}`). Anything else is
/// `modified`, keys reordered included: parsed and compared as values, `{"cmd":"rm -rf /",
/// "cmd":"ls"}` was `passed` for `{"cmd":"ls"}` (the last duplicate wins in a tree), while a
/// host that keeps the first saw another command (audit 18).
fn same_payload(a: &RawValue, b: &RawValue) -> bool {
    let (a, b) = (a.get(), b.get());
    a == b || without_whitespace(a).eq(without_whitespace(b))
}

/// The bytes of JSON text `s` without whitespace outside strings.
fn without_whitespace(s: &str) -> impl Iterator<Item = u8> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    s.bytes().filter(move |&b| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            true
        } else {
            in_string = b == b'"';
            !matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        }
    })
}

/// One member of a chain: the plugin and how it takes part.
struct Member {
    entry: Arc<PluginEntry>,
    spec: HookSpec,
    /// Its deadline for this hook: the hook's `timeout_ms`, else the plugin's.
    timeout_ms: u64,
}

impl Daemon {
    /// Runs hook `hook` over `payload`, within `budget` when given. `Err` is `-32008` hook
    /// rejected, with the receipt so far in its data.
    pub async fn run_hook(
        &self,
        hook: &str,
        payload: Box<RawValue>,
        budget: Option<Duration>,
        trace: &TraceIn,
    ) -> Result<ChainResult, RpcError> {
        let chain_hop = Hop::start(trace, "hooks.run", None, hook);
        let result = self.run_chain(hook, payload, budget, &chain_hop).await;
        chain_hop.finish(&result);
        result
    }

    /// [`Daemon::run_hook`] under the chain's span `chain_hop`.
    async fn run_chain(
        &self,
        hook: &str,
        payload: Box<RawValue>,
        budget: Option<Duration>,
        chain_hop: &Hop,
    ) -> Result<ChainResult, RpcError> {
        let end = budget.map(|b| Instant::now() + b);
        let mut result =
            ChainResult { payload: Arc::from(payload), handled_by: Vec::new(), stopped_by: None, receipt: Vec::new() };
        let chain = self.hook_chain(hook);
        // Shadow steps run beside the chain, each on a copy of the payload as it was at its place:
        // the chain never waits for one, so its time cannot eat the chain's budget. Their receipt
        // entries (placeholders until then) are filled in as they end.
        let mut shadows: FuturesUnordered<ShadowStep<'_>> = FuturesUnordered::new();
        // The shadow steps not ended yet: place and start.
        let mut running: Vec<(usize, Instant)> = Vec::new();
        let mut ended: Result<(), (usize, String, RpcError)> = Ok(());
        for (at, m) in chain.iter().enumerate() {
            let name = m.entry.name.to_string();
            let started = Instant::now();
            let shadow = m.spec.mode == HookMode::Shadow;
            let closed = m.spec.failure == HookFailure::Closed && !shadow;
            let spent = end.is_some_and(|e| started >= e);
            if result.stopped_by.is_some() || spent {
                result.receipt.push(entry(&name, HookOutcome::Skipped, started, None));
                if spent && closed {
                    let e = RpcError::with_data(
                        codes::DEADLINE_EXCEEDED,
                        format!(
                            "the chain's budget of {} ms ran out before {name}",
                            budget.unwrap_or_default().as_millis()
                        ),
                        json!({ "plugin": &name, "timeout_ms": budget.unwrap_or_default().as_millis() as u64 }),
                    );
                    ended = Err((at, name, e));
                    break;
                }
                continue;
            }
            if shadow {
                result.receipt.push(entry(&name, HookOutcome::Shadow, started, None));
                running.push((at, started));
                let copy = result.payload.clone();
                // Within its own timeout_ms, `$/progress` or not (and the chain's budget), and
                // heard of by no one: a shadow never changes the chain, nor its duration.
                let own = started + Duration::from_millis(m.timeout_ms);
                let shadow_end = Some(end.map_or(own, |e| e.min(own)));
                shadows.push(Box::pin(crate::transport::peer::unrelayed(async move {
                    let answer = if m.entry.status().state.is_running() {
                        self.hook_step(m, hook, &copy, shadow_end, chain_hop).await
                    } else {
                        Err(unavailable(&m.entry))
                    };
                    (at, started, answer.err())
                })));
                continue;
            }
            // Shadow steps make progress (and are recorded) while this one runs.
            let answer = {
                let step = async {
                    if m.entry.status().state.is_running() {
                        self.hook_step(m, hook, &result.payload, end, chain_hop).await
                    } else {
                        Err(unavailable(&m.entry))
                    }
                };
                tokio::pin!(step);
                loop {
                    tokio::select! {
                        answer = &mut step => break answer,
                        Some(done) = shadows.next(), if !shadows.is_empty() => {
                            record_shadow(&chain, hook, &mut result.receipt, &mut running, done);
                        }
                    }
                }
            };
            match answer {
                Ok(r) => {
                    let outcome = if r.stop {
                        result.stopped_by = Some(name.clone());
                        HookOutcome::Stopped
                    } else if same_payload(&result.payload, &r.payload) {
                        HookOutcome::Passed
                    } else {
                        HookOutcome::Modified
                    };
                    result.payload = Arc::from(r.payload);
                    result.handled_by.push(name.clone());
                    result.receipt.push(entry(&name, outcome, started, None));
                }
                Err(e) => {
                    let outcome =
                        if e.code == codes::DEADLINE_EXCEEDED { HookOutcome::TimedOut } else { HookOutcome::Failed };
                    result.receipt.push(entry(&name, outcome, started, Some(&e)));
                    if e.code == codes::REJECTED {
                        m.entry.log.plugind(format!("hook {hook}: rejected the payload: {}", e.message));
                        ended = Err((at, name, e));
                        break;
                    }
                    tell_plugin(&m.entry, hook, &e);
                    if closed {
                        ended = Err((at, name, e));
                        break;
                    }
                }
            }
        }
        // The shadow steps still running: waited for, within their own timeouts and the chain's
        // budget (the answer comes no later than the budget allows); one still running then is
        // cut off (its call cancelled) and says so in the receipt.
        loop {
            let next = match end {
                Some(end) => tokio::time::timeout_at(end, shadows.next()).await.ok(),
                None => Some(shadows.next().await),
            };
            match next {
                Some(Some(done)) => record_shadow(&chain, hook, &mut result.receipt, &mut running, done),
                Some(None) => break,
                None => {
                    let ms = budget.unwrap_or_default().as_millis() as u64;
                    for (at, started) in running.drain(..) {
                        let name = &*chain[at].entry.name;
                        let e = RpcError::with_data(
                            codes::DEADLINE_EXCEEDED,
                            format!(
                                "still running when the chain's budget of {ms} ms ran out (its call was cancelled)"
                            ),
                            json!({ "plugin": name, "timeout_ms": ms, "limit": "caller" }),
                        );
                        chain[at].entry.log.plugind(format!("hook {hook} (shadow): {}", e.message));
                        result.receipt[at] = entry(name, HookOutcome::Shadow, started, Some(&e));
                    }
                    break;
                }
            }
        }
        // Dropping a step still running cancels its call.
        drop(shadows);
        match ended {
            Ok(()) => Ok(result),
            Err((at, plugin, e)) => {
                // A rejection's receipt still has one entry per plugin: the ones after it `skipped`.
                let now = Instant::now();
                result
                    .receipt
                    .extend(chain[at + 1..].iter().map(|m| entry(&m.entry.name, HookOutcome::Skipped, now, None)));
                Err(rejection(hook, &plugin, &e, result.receipt))
            }
        }
    }

    /// The plugins that take part in `hook`, in chain order: every plugin whose manifest lists
    /// it and that is running or meant to run (not disabled in the config file).
    fn hook_chain(&self, hook: &str) -> Vec<Member> {
        let mut chain: Vec<Member> = self
            .plugins()
            .into_iter()
            .filter_map(|entry| {
                let status = entry.status();
                let m = status.manifest.as_ref()?;
                let spec = *m.hooks.get(hook)?;
                let timeout_ms = spec.timeout_ms.unwrap_or(m.timeout_ms);
                let member = status.state.is_running() || self.config().enabled(&entry.name);
                drop(status);
                member.then_some(Member { entry, spec, timeout_ms })
            })
            .collect();
        chain.sort_by(|a, b| a.spec.priority.cmp(&b.spec.priority).then_with(|| a.entry.name.cmp(&b.entry.name)));
        chain
    }

    /// One plugin's step: `hook { hook, payload }` within its timeout and the chain's end.
    async fn hook_step(
        &self,
        m: &Member,
        hook: &str,
        payload: &RawValue,
        end: Option<Instant>,
        chain_hop: &Hop,
    ) -> Result<HookAnswer, RpcError> {
        let hop = Hop::start(&chain_hop.as_parent(), "hook", Some(&m.entry.name), hook);
        let write = |out: &mut Vec<u8>| {
            out.extend_from_slice(br#"{"hook":"#);
            plugind_protocol::jsonrpc::write_json(out, hook);
            out.extend_from_slice(br#","payload":"#);
            out.extend_from_slice(payload.get().as_bytes());
            hop.write_meta(out);
            out.push(b'}');
            None
        };
        let result = call_plugin(&m.entry, methods::HOOK, write, Some(m.timeout_ms), end, &hop).await.and_then(|raw| {
            serde_json::from_str::<HookAnswer>(raw.get()).map_err(|e| {
                RpcError::with_data(
                    codes::INVALID_PARAMS,
                    format!("invalid params: hook result is not {{ payload, stop? }}: {e}"),
                    json!({ "plugin": &*m.entry.name, "hook": hook }),
                )
            })
        });
        if let Err(e) = &result {
            crate::router::call_failed(&m.entry, hook, e, &hop);
        }
        hop.finish(&result);
        result
    }
}

/// A shadow step as it runs beside the chain: its place, when it began, and its error, if any.
type ShadowStep<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (usize, Instant, Option<RpcError>)> + Send + 'a>>;

/// Fills in the receipt entry of a shadow step that ended (`shadow`, with `error` if it failed),
/// takes it off `running`, and logs its failure in its plugin's log.
fn record_shadow(
    chain: &[Member],
    hook: &str,
    receipt: &mut [ReceiptEntry],
    running: &mut Vec<(usize, Instant)>,
    (at, started, error): (usize, Instant, Option<RpcError>),
) {
    running.retain(|(i, _)| *i != at);
    if let Some(e) = &error {
        chain[at].entry.log.plugind(format!("hook {hook} (shadow): {}", e.message));
    }
    receipt[at] = entry(&chain[at].entry.name, HookOutcome::Shadow, started, error.as_ref());
}

/// A receipt entry for a step that began at `started`.
fn entry(plugin: &str, outcome: HookOutcome, started: Instant, error: Option<&RpcError>) -> ReceiptEntry {
    let ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    ReceiptEntry { plugin: plugin.to_owned(), outcome, ms, error: error.map(error_object) }
}

/// A step's error as its receipt keeps it: code, message, and its `data` unless that is over
/// [`RECEIPT_DATA_MAX`] as JSON. A receipt lives as long as its chain; kept whole, 64 KiB of
/// `data` (a tree 16 times that size) per chain, behind a later member that takes its time,
/// took plugind to 2 GB with 2000 chains at once (audit 21).
fn error_object(e: &RpcError) -> Value {
    let mut kept = json!({ "code": e.code, "message": e.message });
    if let Some(data) = &e.data {
        let bytes = serde_json::to_vec(data).map_or(usize::MAX, |v| v.len());
        kept["data"] = if bytes <= RECEIPT_DATA_MAX {
            data.clone()
        } else {
            json!({ "data_bytes": bytes, "data_dropped": "over 1 KiB in a hook receipt" })
        };
    }
    kept
}

/// The most of an error's `data` a hook receipt keeps, as JSON.
const RECEIPT_DATA_MAX: usize = 1024;

/// `-32008` hook rejected: `plugin` ended the chain with `error`.
fn rejection(hook: &str, plugin: &str, error: &RpcError, receipt: Vec<ReceiptEntry>) -> RpcError {
    RpcError::with_data(
        codes::HOOK_REJECTED,
        format!("hook {hook} rejected by {plugin}: {}", error.message),
        json!({ "plugin": plugin, "hook": hook, "error": error_object(error), "receipt": receipt }),
    )
}

/// Logs a failed step in the plugin's log and tells it with `onError`.
fn tell_plugin(entry: &PluginEntry, hook: &str, e: &RpcError) {
    entry.log.warn(format!("hook {hook} failed: {}", e.message));
    let mut data = e.data.clone().unwrap_or_else(|| json!({}));
    if let Some(obj) = data.as_object_mut() {
        obj.insert("hook".into(), json!(hook));
        obj.insert("plugin".into(), json!(&*entry.name));
    }
    if let Some(i) = entry.routes().first() {
        i.peer.notify(methods::ON_ERROR, &json!({ "code": e.code, "message": e.message, "data": data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt lives as long as its chain: a step's error keeps its `data` only when small
    /// (audit 21: 64 KiB of `data` per chain, 2000 chains behind a slow member, 2 GB).
    #[test]
    fn a_receipt_keeps_an_errors_data_only_when_small() {
        let small = RpcError::with_data(-1, "no", json!({ "why": "x" }));
        assert_eq!(error_object(&small), json!({ "code": -1, "message": "no", "data": { "why": "x" } }));
        let big = RpcError::with_data(-2, "big", json!(vec![0; 32_000]));
        assert_eq!(
            error_object(&big),
            json!({ "code": -2, "message": "big",
                "data": { "data_bytes": 64_001, "data_dropped": "over 1 KiB in a hook receipt" } })
        );
        assert_eq!(error_object(&RpcError::new(-3, "bare")), json!({ "code": -3, "message": "bare" }));
    }

    #[test]
    fn a_payload_rewritten_with_other_whitespace_is_the_same_payload() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert!(same_payload(&raw(r#"{"a":1,"b":[1,2]}"#), &raw(r#"{ "a": 1, "b": [1, 2] }"#)));
        assert!(!same_payload(&raw(r#"{"a":1}"#), &raw(r#"{"a":2}"#)));
        // A duplicate key is a change, whatever a tree of it would keep.
        assert!(!same_payload(&raw(r#"{"cmd":"ls"}"#), &raw(r#"{"cmd":"rm -rf /","cmd":"ls"}"#)));
        // Whitespace outside strings is left out, inside kept.
        let big = "x".repeat(1 << 20);
        let (a, b) = (format!(r#"{{"s":"{big} y","n":1}}"#), format!(r#"{{ "s" : "{big} y", "n": 1 }}"#));
        assert!(same_payload(&raw(&a), &raw(&b)));
        let c = format!(r#"{{"s":"{big}y","n":1}}"#);
        assert!(!same_payload(&raw(&a), &raw(&c)));
        let (e1, e2) = (format!(r#"["{big}\" ,1"]"#), format!(r#"["{big}\",1"]"#));
        assert!(!same_payload(&raw(&e1), &raw(&e2)), "an escaped quote does not end the string");
    }

    #[test]
    fn rejection_carries_plugin_hook_error_and_receipt() {
        let e = RpcError::new(codes::REJECTED, "no token");
        let receipt = vec![ReceiptEntry { plugin: "auth".into(), outcome: HookOutcome::Failed, ms: 1.5, error: None }];
        let r = rejection("onRequest", "auth", &e, receipt);
        assert_eq!(r.code, codes::HOOK_REJECTED);
        let data = r.data.unwrap();
        assert_eq!(data["plugin"], "auth");
        assert_eq!(data["hook"], "onRequest");
        assert_eq!(data["error"]["code"], codes::REJECTED);
        assert_eq!(data["receipt"][0]["outcome"], "failed");
    }
}
