//! W3C trace context across plugin boundaries, and span export over OTLP (docs/tracing.md).
//!
//! A request may carry `_meta: { traceparent, tracestate? }` in its params (`execute`,
//! `services.call`, `hooks.run` from hosts; `service.call` from plugins). Each hop plugind makes —
//! one `execute` sent to a plugin, one hook step — is a span: it keeps the trace id it came with
//! (or starts a trace when none came), gets a new span id, and the plugin receives that span as
//! the parent in its own `_meta.traceparent`. A plugin's `service.call` continues the trace of the
//! call it is made for: the `_meta` it sends, else the call plugind knows it is working on.
//!
//! Without `--otlp-endpoint` nothing but ids is made: a traceparent costs one random number and
//! 55 bytes per hop. With it, every finished hop becomes a span (plugin, method, outcome, its
//! parent) that a batching task POSTs to `URL/v1/traces` as OTLP/HTTP JSON.

use crate::time::Throttle;
use opentelemetry::trace::{SpanContext as OtelSpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use plugind_protocol::jsonrpc::RpcError;
use plugind_protocol::scan;
use serde::Deserialize;
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// `_meta` of a request, as it came (only the trace fields are read).
#[derive(Debug, Default, Deserialize)]
pub struct MetaIn<'a> {
    /// `00-TRACEID-PARENTID-FLAGS`.
    #[serde(default, borrow)]
    pub traceparent: Option<Cow<'a, str>>,
    /// Vendor data, forwarded as is.
    #[serde(default, borrow)]
    pub tracestate: Option<Cow<'a, str>>,
}

impl<'a> MetaIn<'a> {
    /// The `_meta` member where the scanner stands (`null` reads as absent), its strings
    /// borrowed: serde's `borrow` does not reach into an `Option<Cow<str>>`, so it allocated
    /// both for every hop that carried them.
    pub fn scan(value: scan::Value<'a, '_>) -> Result<Option<Self>, scan::NotTaken> {
        if value.is_null() {
            value.text()?;
            return Ok(None);
        }
        let mut meta = MetaIn::default();
        value.fields(["traceparent", "tracestate"], |n, value| {
            let text = value.plain_str()?.map(Cow::Borrowed);
            *(if n == 0 { &mut meta.traceparent } else { &mut meta.tracestate }) = text;
            Ok(())
        })?;
        Ok(Some(meta))
    }
}

/// A span's place in a trace: what a traceparent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    /// The trace, never all zeros.
    pub trace_id: [u8; 16],
    /// The span, never all zeros.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl SpanRef {
    /// Parses a W3C `traceparent` (version 00, or a later version read as 00); None when invalid.
    pub fn parse(text: &str) -> Option<SpanRef> {
        let b = text.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let version = hex::<1>(&b[0..2])?[0];
        if version == 0xff || (version == 0 && b.len() != 55) {
            return None;
        }
        let trace_id = hex::<16>(&b[3..35])?;
        let span_id = hex::<8>(&b[36..52])?;
        let flags = hex::<1>(&b[53..55])?[0];
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(SpanRef { trace_id, span_id, flags })
    }

    /// Appends `00-TRACEID-SPANID-FLAGS` (built on the stack, appended in one copy: this runs
    /// for every hop).
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut text[3..35], &self.trace_id);
        hex_into(&mut text[36..52], &self.span_id);
        hex_into(&mut text[53..55], &[self.flags]);
        out.extend_from_slice(&text);
    }

    /// The traceparent text.
    pub fn to_traceparent(&self) -> String {
        let mut out = Vec::with_capacity(55);
        self.write(&mut out);
        String::from_utf8(out).expect("UNWRAP: hex digits and dashes")
    }

    /// The trace id in lowercase hex, as logs and events show it.
    pub fn trace_id_hex(&self) -> String {
        let mut text = [0u8; 32];
        hex_into(&mut text, &self.trace_id);
        String::from_utf8(text.to_vec()).expect("UNWRAP: hex digits")
    }
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Two lowercase hex digits per byte of `bytes` into `out` (exactly twice as long): one table
/// load per byte (every hop writes 25 bytes of traceparent).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
            b += 1;
        }
        pairs
    };
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

/// A random non-zero u64: wyrand on a per-thread state seeded by the standard library's
/// randomly keyed hasher. Ids need to be unique, not secret.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
        });
    }
    STATE.with(|s| loop {
        let next = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(next);
        let t = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        let r = (t >> 64) as u64 ^ t as u64;
        if r != 0 {
            break r;
        }
    })
}

/// Where a hop's trace comes from: the parent span (if one came or is known) and `tracestate`.
#[derive(Debug, Clone, Default)]
pub struct TraceIn {
    /// The span that caused this hop; None starts a trace.
    pub parent: Option<SpanRef>,
    /// Forwarded as it came.
    pub tracestate: Option<Arc<str>>,
}

impl TraceIn {
    /// From a parsed `_meta` of the wire types.
    pub fn from_wire(meta: Option<&plugind_protocol::control::TraceMeta>) -> TraceIn {
        let meta = meta.map(|m| MetaIn {
            traceparent: m.traceparent.as_deref().map(Cow::Borrowed),
            tracestate: m.tracestate.as_deref().map(Cow::Borrowed),
        });
        TraceIn::from_meta(meta.as_ref())
    }

    /// From a request's `_meta` (an invalid traceparent is ignored: a new trace starts).
    pub fn from_meta(meta: Option<&MetaIn<'_>>) -> TraceIn {
        let Some(m) = meta else { return TraceIn::default() };
        let parent = m.traceparent.as_deref().and_then(SpanRef::parse);
        // tracestate without a valid traceparent means nothing (W3C: discard it).
        let tracestate = parent.and(m.tracestate.as_deref()).filter(|s| s.len() <= 512).map(Arc::from);
        TraceIn { parent, tracestate }
    }
}

/// One hop in flight: the span plugind made for it, and what it needs to export it when done.
/// A hop dropped before [`Hop::finish`] (its call was cancelled: `$/cancel`, a caller gone, a
/// stop) is exported as cancelled, so the calls an operator most wants to trace are not lost.
#[derive(Debug)]
pub struct Hop {
    /// This hop's span (the plugin sees it as its parent).
    pub span: SpanRef,
    /// The span that caused it.
    pub parent: Option<SpanRef>,
    /// Forwarded `tracestate`.
    pub tracestate: Option<Arc<str>>,
    /// What its span is made of, only when spans are exported.
    pending: Option<Box<PendingSpan>>,
}

/// A hop's span until it ends.
#[derive(Debug)]
struct PendingSpan {
    started: SystemTime,
    name: &'static str,
    /// `plugind.plugin`: none for a whole hook chain.
    plugin: Option<String>,
    method: String,
}

/// How a hop ended.
enum Outcome<'a> {
    Answered(Result<(), &'a RpcError>),
    Cancelled,
}

impl Hop {
    /// Starts hop `name` (`execute`, `hook`, `hooks.run`) of `plugin`'s `method` under `from`.
    pub fn start(from: &TraceIn, name: &'static str, plugin: Option<&str>, method: &str) -> Hop {
        let trace_id = match from.parent {
            Some(p) => p.trace_id,
            None => {
                let (a, b) = (random_u64(), random_u64());
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&a.to_be_bytes());
                id[8..].copy_from_slice(&b.to_be_bytes());
                id
            }
        };
        let flags = from.parent.map_or(1, |p| p.flags);
        Hop {
            span: SpanRef { trace_id, span_id: random_u64().to_be_bytes(), flags },
            parent: from.parent,
            tracestate: from.tracestate.clone(),
            pending: exporting().then(|| {
                Box::new(PendingSpan {
                    started: SystemTime::now(),
                    name,
                    plugin: plugin.map(str::to_owned),
                    method: method.to_owned(),
                })
            }),
        }
    }

    /// What a call made on this hop's behalf continues from.
    pub fn as_parent(&self) -> TraceIn {
        TraceIn { parent: Some(self.span), tracestate: self.tracestate.clone() }
    }

    /// Appends `,"_meta":{"traceparent":"…"[,"tracestate":"…"]}` (nothing when trace context
    /// is switched off: [`propagating`]).
    pub fn write_meta(&self, out: &mut Vec<u8>) {
        if !propagating() {
            return;
        }
        out.push(b',');
        out.extend_from_slice(br#""_meta":{"traceparent":""#);
        self.span.write(out);
        out.push(b'"');
        if let Some(state) = &self.tracestate {
            out.extend_from_slice(br#","tracestate":"#);
            plugind_protocol::jsonrpc::write_str(out, state);
        }
        out.push(b'}');
    }

    /// Ends the hop with the answer it got: exports its span when an exporter is configured
    /// (an error answer becomes the span's error status, with its code as an attribute).
    pub fn finish<T>(mut self, answer: &Result<T, RpcError>) {
        if let Some(pending) = self.pending.take() {
            self.export(*pending, Outcome::Answered(answer.as_ref().map(|_| ())));
        }
    }

    fn export(&self, pending: PendingSpan, outcome: Outcome<'_>) {
        let Some(exporter) = EXPORTER.get() else { return };
        let PendingSpan { started, name, plugin, method } = pending;
        let mut attributes = Vec::with_capacity(5);
        let label = match &plugin {
            Some(p) => format!("{name} {p}/{method}"),
            None => format!("{name} {method}"),
        };
        if let Some(p) = plugin {
            attributes.push(KeyValue::new("plugind.plugin", p));
        }
        attributes.push(KeyValue::new("rpc.method", method));
        attributes.push(KeyValue::new("rpc.system", "jsonrpc"));
        // Success leaves the status unset, as OpenTelemetry asks of instrumentation.
        let status = match outcome {
            Outcome::Answered(Ok(())) => {
                attributes.push(KeyValue::new("plugind.outcome", "ok"));
                Status::Unset
            }
            Outcome::Answered(Err(e)) => {
                attributes.push(KeyValue::new("plugind.outcome", "error"));
                attributes.push(KeyValue::new("rpc.jsonrpc.error_code", e.code));
                let mut message = e.message.clone();
                crate::caps::truncate(&mut message, 256);
                Status::error(message)
            }
            Outcome::Cancelled => {
                attributes.push(KeyValue::new("plugind.outcome", "cancelled"));
                Status::error("cancelled before it was answered")
            }
        };
        let tracestate = self.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        let span_context = OtelSpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(self.span.trace_id),
            opentelemetry::trace::SpanId::from_bytes(self.span.span_id),
            TraceFlags::new(self.span.flags),
            false,
            tracestate,
        );
        let data = SpanData {
            span_context,
            parent_span_id: self
                .parent
                .map_or(opentelemetry::trace::SpanId::INVALID, |p| opentelemetry::trace::SpanId::from_bytes(p.span_id)),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Client,
            name: Cow::Owned(label),
            start_time: started,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: exporter.scope.clone(),
        };
        // Full queue: the span is dropped (export must never slow calls down).
        let _ = exporter.spans.try_send(data);
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.export(*pending, Outcome::Cancelled);
        }
    }
}

/// Whether plugind passes trace context on at all: always, except when the environment variable
/// `PLUGIND_TRACE_CONTEXT=off` is set — a diagnostic switch, there so `make bench` can measure
/// what propagation costs (`j.execute_traced.p50`), not something to run with.
pub fn propagating() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PLUGIND_TRACE_CONTEXT").is_none_or(|v| v != "off"))
}

/// The configured exporter: the queue into the batching task.
struct Exporter {
    spans: mpsc::Sender<SpanData>,
    /// Asks the batching task to export what is queued and say when it is done.
    flush: mpsc::Sender<oneshot::Sender<()>>,
    scope: InstrumentationScope,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Whether spans are exported (`--otlp-endpoint` given and the exporter started).
pub fn exporting() -> bool {
    EXPORTER.get().is_some()
}

/// Spans kept waiting for export at most; beyond, new ones are dropped.
const QUEUE: usize = 4096;
/// Spans per POST at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter rejected the endpoint.
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Build {
        /// The endpoint as given.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
}

/// Starts exporting spans to `endpoint` (its `/v1/traces` path is added unless present); runs
/// until plugind exits; [`flush`] exports what is queued at once.
pub fn start_export(endpoint: &str) -> Result<(), ExportError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ExportError::Build { endpoint: endpoint.to_owned(), reason: e.to_string() })?;
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("plugind")
            .with_attribute(KeyValue::new("service.version", crate::VERSION))
            .build(),
    );
    let (tx, mut rx) = mpsc::channel::<SpanData>(QUEUE);
    let (flush_tx, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(1);
    let scope = InstrumentationScope::builder("plugind").with_version(crate::VERSION).build();
    if EXPORTER.set(Exporter { spans: tx, flush: flush_tx, scope }).is_err() {
        return Ok(());
    }
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut failures = Throttle::new(WARN_EVERY);
        loop {
            let first = tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => span,
                    None => break,
                },
                Some(done) = flush_rx.recv() => {
                    // Everything queued goes now, in batches.
                    while let Ok(span) = rx.try_recv() {
                        batch.push(span);
                        if batch.len() == BATCH {
                            export(&exporter, &mut batch, &mut failures).await;
                        }
                    }
                    export(&exporter, &mut batch, &mut failures).await;
                    let _ = done.send(());
                    continue;
                }
            };
            batch.push(first);
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            export(&exporter, &mut batch, &mut failures).await;
        }
    });
    Ok(())
}

/// At most one export warning this often: a collector that is down or answers 500 fails every
/// batch, five a second.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// POSTs `batch` (emptying it); a failure is a warning, at most one per [`WARN_EVERY`]
/// (`failures`, reset by a success).
async fn export(exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>, failures: &mut Throttle) {
    if batch.is_empty() {
        return;
    }
    let spans = batch.len();
    match exporter.export(std::mem::take(batch)).await {
        Ok(()) => {
            if failures.reported() {
                tracing::info!("OTLP export works again");
            }
            *failures = Throttle::new(WARN_EVERY);
        }
        Err(e) => {
            failures.hold();
            let more = match failures.due(std::time::Instant::now()) {
                0 => return,
                1 => String::new(),
                n => format!(" ({n} batches failed since the last warning)"),
            };
            tracing::warn!("OTLP export of {spans} spans failed: {e}{more}");
        }
    }
}

/// Exports every span queued so far, waiting at most `bound` (plugind calls it last, after the
/// plugins stopped, so the spans of `onShutdown` hooks and of the last calls are not lost).
pub async fn flush(bound: Duration) {
    let Some(exporter) = EXPORTER.get() else { return };
    let (done, wait) = oneshot::channel();
    if exporter.flush.send(done).await.is_ok() {
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = SpanRef::parse(text).unwrap();
        assert_eq!(r.to_traceparent(), text);
        assert_eq!(r.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(SpanRef::parse(bad), None, "{bad}");
        }
        // A later version may append fields.
        assert!(SpanRef::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    }

    #[test]
    fn a_hop_keeps_the_trace_and_gets_a_new_span() {
        let parent = SpanRef::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let hop =
            Hop::start(&TraceIn { parent: Some(parent), tracestate: Some("a=b".into()) }, "execute", Some("p"), "m");
        assert_eq!(hop.span.trace_id, parent.trace_id);
        assert_ne!(hop.span.span_id, parent.span_id);
        let mut out = Vec::new();
        hop.write_meta(&mut out);
        let meta: serde_json::Value = serde_json::from_slice(&[&b"{\"a\":1"[..], &out[..], b"}"].concat()).unwrap();
        assert_eq!(meta["_meta"]["traceparent"], hop.span.to_traceparent());
        assert_eq!(meta["_meta"]["tracestate"], "a=b");
        let fresh = Hop::start(&TraceIn::default(), "execute", Some("p"), "m");
        assert_ne!(fresh.span.trace_id, [0; 16]);
        assert_ne!(fresh.span.trace_id, Hop::start(&TraceIn::default(), "execute", Some("p"), "m").span.trace_id);
    }
}
