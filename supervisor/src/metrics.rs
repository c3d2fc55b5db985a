//! Metrics in Prometheus text exposition (`metrics.get`, `pluginctl metrics`, `--metrics ADDR`).
//!
//! plugind's own figures per plugin (calls, errors, timeouts, restarts, state, memory) are read
//! from the plugin table at scrape time; call latency is a histogram observed on the call path
//! through a handle cached per plugin (no lookup per call). Figures plugins send with
//! `metrics.emit` become metric families created on first use, labelled `plugin`, at most
//! [`caps::METRIC_SERIES`] series per plugin.

use crate::caps::{self, Cap};
use crate::Daemon;
use plugind_protocol::methods::{MetricKind, MetricsEmitParams};
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{LazyLock, Mutex};

/// Call latency by plugin, observed on the call path.
pub static CALL_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new("plugind_call_duration_seconds", "Time from accepting a call to its answer, by plugin.")
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        &["plugin"],
    )
    .expect("UNWRAP: static metric definition is valid")
});

/// A family a plugin created with `metrics.emit`, with the label names it was first seen with.
enum Emitted {
    Counter(CounterVec, Vec<String>),
    Gauge(GaugeVec, Vec<String>),
    Histogram(HistogramVec, Vec<String>),
}

impl Emitted {
    fn kind(&self) -> MetricKind {
        match self {
            Emitted::Counter(..) => MetricKind::Counter,
            Emitted::Gauge(..) => MetricKind::Gauge,
            Emitted::Histogram(..) => MetricKind::Histogram,
        }
    }

    fn label_names(&self) -> &[String] {
        match self {
            Emitted::Counter(_, n) | Emitted::Gauge(_, n) | Emitted::Histogram(_, n) => n,
        }
    }
}

/// Why a `metrics.emit` sample was dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmitError {
    /// The plugin already has [`caps::METRIC_SERIES`] series and this would be a new one.
    #[error("a new series of {name:?} dropped: the plugin already has {} metric series", caps::METRIC_SERIES)]
    TooManySeries {
        /// The metric.
        name: String,
    },
    /// The plugin's series already take [`caps::METRIC_PLUGIN_TEXT_BYTES`] of text, and this new
    /// one would take more.
    #[error(
        "a new series of {name:?} dropped: the plugin's metrics would take over {} bytes of text (fewer or shorter labels, fewer histograms)",
        caps::METRIC_PLUGIN_TEXT_BYTES
    )]
    TooMuchText {
        /// The metric.
        name: String,
    },
    /// Over [`caps::METRIC_LABELS`] labels, or a name or value over [`caps::METRIC_TEXT_BYTES`].
    #[error(
        "a sample of {name:?} dropped: over {} labels, or a name or label over {} bytes",
        caps::METRIC_LABELS,
        caps::METRIC_TEXT_BYTES
    )]
    TooLarge {
        /// The metric (cut to the cap).
        name: String,
    },
    /// The name was first registered (by this plugin or another) with another kind.
    #[error("samples of {name:?} as a {kind:?} dropped: the name was first registered as a {first:?}")]
    KindTaken {
        /// The metric.
        name: String,
        /// The kind this sample has.
        kind: MetricKind,
        /// The kind that won.
        first: MetricKind,
    },
    /// Anything else wrong with the sample.
    #[error("{0}")]
    Invalid(String),
}

impl EmitError {
    /// The cap whose one warning this error counts under.
    pub fn cap(&self) -> Cap {
        match self {
            EmitError::TooManySeries { .. } | EmitError::TooMuchText { .. } => Cap::MetricSeries,
            EmitError::TooLarge { .. } => Cap::MetricLabels,
            EmitError::KindTaken { .. } => Cap::MetricKind,
            EmitError::Invalid(_) => Cap::MetricInvalid,
        }
    }
}

/// What `metrics.emit` created, under one lock.
#[derive(Default)]
struct EmittedState {
    /// Families by metric name; the first sample of a name fixes its kind and label names.
    families: HashMap<String, Emitted>,
    /// Per plugin, the series it created.
    series: HashMap<String, PluginSeries>,
}

/// One plugin's series: hashes of name and label values, what [`caps::METRIC_SERIES`] counts
/// (a hash, so 1000 series cost 8 KB here), and the text they take, what
/// [`caps::METRIC_PLUGIN_TEXT_BYTES`] bounds.
#[derive(Default)]
struct PluginSeries {
    keys: HashSet<u64>,
    text_bytes: usize,
}

/// About how many bytes of exposition text a series takes: one line per value (a histogram's
/// buckets, `+Inf`, `_sum` and `_count`), each the name, its suffix, the labels and the value.
fn series_text_bytes(name: &str, kind: MetricKind, names: &[String], values: &[&str]) -> usize {
    let labels: usize = names.iter().zip(values).map(|(k, v)| k.len() + v.len() + 4).sum();
    let lines = match kind {
        MetricKind::Histogram => prometheus::DEFAULT_BUCKETS.len() + 3,
        _ => 1,
    };
    lines * (name.len() + labels + 40)
}

/// The daemon's metrics state.
pub struct Metrics {
    registry: Registry,
    emitted: Mutex<EmittedState>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        // Registering a fresh static can only fail if it were registered twice in this registry.
        let _ = registry.register(Box::new(CALL_LATENCY.clone()));
        Metrics { registry, emitted: Mutex::new(EmittedState::default()) }
    }
}

/// Whether `name` is a valid Prometheus metric name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The identity of one series: its metric name and label values in label-name order.
fn series_key(name: &str, values: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    values.hash(&mut h);
    h.finish()
}

impl Metrics {
    /// Records one `metrics.emit` sample of `plugin`; returns why it was dropped, if it was.
    ///
    /// Every series carries the `plugin` label, so two plugins' figures under one name are
    /// two series, never one. A name's first sample fixes its kind and label names for every
    /// plugin: Prometheus has one type per name, so a later sample of another kind is dropped
    /// (the first kind registered wins) rather than breaking the whole exposition.
    pub fn emit(&self, plugin: &str, p: &MetricsEmitParams) -> Result<(), EmitError> {
        let labels = p.labels.clone().unwrap_or_default();
        let too_long = |t: &str| t.len() > caps::METRIC_TEXT_BYTES;
        if labels.len() > caps::METRIC_LABELS
            || too_long(&p.name)
            || labels.iter().any(|(k, v)| too_long(k) || too_long(v))
        {
            let mut name = p.name.clone();
            caps::truncate(&mut name, caps::METRIC_TEXT_BYTES);
            return Err(EmitError::TooLarge { name });
        }
        if !valid_name(&p.name) || p.name.starts_with("plugind_") {
            return Err(EmitError::Invalid(format!(
                "metric name {:?} is not a valid Prometheus name outside plugind_*",
                p.name
            )));
        }
        // `__`-names are Prometheus's own (`__name__`): one would spoil the whole scrape. `le`
        // is a histogram's bucket label (the prometheus crate panics on it there).
        let reserved = |k: &str| k == "plugin" || k.starts_with("__") || (p.kind == MetricKind::Histogram && k == "le");
        if let Some(bad) = labels.keys().find(|k| !valid_name(k) || reserved(k)) {
            return Err(EmitError::Invalid(format!("label name {bad:?} is not allowed")));
        }
        let mut names: Vec<String> = std::iter::once("plugin".to_owned()).chain(labels.keys().cloned()).collect();
        names[1..].sort();
        let values: Vec<&str> = std::iter::once(plugin).chain(names[1..].iter().map(|k| labels[k].as_str())).collect();
        let mut state = self.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let EmittedState { families, series } = &mut *state;
        if !families.contains_key(&p.name) {
            if let Some(taken) = histogram_clash(families, &p.name, p.kind) {
                return Err(EmitError::Invalid(format!(
                    "metric name {:?} clashes with the lines of histogram {taken:?} (NAME_bucket, NAME_sum, NAME_count)",
                    p.name
                )));
            }
        }
        if let Some(family) = families.get(&p.name) {
            if family.kind() != p.kind {
                return Err(EmitError::KindTaken { name: p.name.clone(), kind: p.kind, first: family.kind() });
            }
            if family.label_names() != names.as_slice() {
                return Err(EmitError::Invalid(format!(
                    "metric {:?} was first emitted with labels {:?}",
                    p.name,
                    family.label_names()
                )));
            }
        }
        if p.kind == MetricKind::Counter && p.value < 0.0 {
            return Err(EmitError::Invalid("a counter cannot go down".into()));
        }
        let mine = series.entry(plugin.to_owned()).or_default();
        let key = series_key(&p.name, &values);
        let new_text = if mine.keys.contains(&key) {
            0
        } else if mine.keys.len() >= caps::METRIC_SERIES {
            return Err(EmitError::TooManySeries { name: p.name.clone() });
        } else {
            let bytes = series_text_bytes(&p.name, p.kind, &names, &values);
            if mine.text_bytes + bytes > caps::METRIC_PLUGIN_TEXT_BYTES {
                return Err(EmitError::TooMuchText { name: p.name.clone() });
            }
            bytes
        };
        if !families.contains_key(&p.name) {
            let family = new_family(&p.name, p.kind, names).map_err(|e| EmitError::Invalid(e.to_string()))?;
            let collector: Box<dyn prometheus::core::Collector> = match &family {
                Emitted::Counter(v, _) => Box::new(v.clone()),
                Emitted::Gauge(v, _) => Box::new(v.clone()),
                Emitted::Histogram(v, _) => Box::new(v.clone()),
            };
            self.registry.register(collector).map_err(|e| EmitError::Invalid(e.to_string()))?;
            families.insert(p.name.clone(), family);
        }
        // The fallible lookups (`with_label_values` panics where the crate refuses a series):
        // what a plugin sends must never panic plugind. A series refused is not counted.
        let invalid = |e: prometheus::Error| EmitError::Invalid(e.to_string());
        match &families[&p.name] {
            Emitted::Counter(v, _) => v.get_metric_with_label_values(&values).map_err(invalid)?.inc_by(p.value),
            Emitted::Gauge(v, _) => v.get_metric_with_label_values(&values).map_err(invalid)?.set(p.value),
            Emitted::Histogram(v, _) => v.get_metric_with_label_values(&values).map_err(invalid)?.observe(p.value),
        }
        if mine.keys.insert(key) {
            mine.text_bytes += new_text;
        }
        Ok(())
    }
}

/// The histogram whose exposition lines `name` of `kind` would collide with, if any: a
/// histogram `h` writes `h_bucket`, `h_sum` and `h_count`, so neither may another family take
/// those names, nor may a new histogram write lines under a name already taken.
fn histogram_clash(families: &HashMap<String, Emitted>, name: &str, kind: MetricKind) -> Option<String> {
    const SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];
    let as_line_of_histogram = SUFFIXES.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        families.get(base).is_some_and(|f| f.kind() == MetricKind::Histogram).then(|| base.to_owned())
    });
    let lines_taken = kind == MetricKind::Histogram
        && SUFFIXES.iter().any(|suffix| families.contains_key(&format!("{name}{suffix}")));
    as_line_of_histogram.or_else(|| lines_taken.then(|| name.to_owned()))
}

/// A new family for `name` of `kind` with label `names` (`plugin` first).
fn new_family(name: &str, kind: MetricKind, names: Vec<String>) -> prometheus::Result<Emitted> {
    let help = format!("Emitted by plugins with metrics.emit ({kind:?}).");
    let label_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(match kind {
        MetricKind::Counter => Emitted::Counter(CounterVec::new(Opts::new(name, help), &label_refs)?, names),
        MetricKind::Gauge => Emitted::Gauge(GaugeVec::new(Opts::new(name, help), &label_refs)?, names),
        MetricKind::Histogram => {
            Emitted::Histogram(HistogramVec::new(HistogramOpts::new(name, help), &label_refs)?, names)
        }
    })
}

impl Daemon {
    /// Records a `metrics.emit` notification of a plugin (raw params).
    ///
    /// A dropped sample is warned about once per kind of reason and plugin: a plugin emitting
    /// thousands of bad samples a second must not turn each into a log line.
    pub fn metrics_emit(&self, plugin: &str, params: &str) {
        let result = serde_json::from_str::<MetricsEmitParams>(params)
            .map_err(|e| EmitError::Invalid(format!("bad metrics.emit params: {e}")))
            .and_then(|p| self.metrics.emit(plugin, &p));
        if let Err(e) = result {
            if let Some(entry) = self.plugin(plugin) {
                entry.log.over_cap(e.cap(), format!("metrics.emit: {e}"));
            }
        }
    }

    /// The Prometheus text of plugind's own figures and every emitted metric.
    pub fn metrics_text(&self) -> String {
        let scrape = Registry::new();
        let calls = IntCounterVec::new(Opts::new("plugind_calls_total", "Calls routed to the plugin."), &["plugin"]);
        let errors =
            IntCounterVec::new(Opts::new("plugind_call_errors_total", "Calls that ended with an error."), &["plugin"]);
        let timeouts =
            IntCounterVec::new(Opts::new("plugind_call_timeouts_total", "Calls that hit their deadline."), &["plugin"]);
        let restarts = IntCounterVec::new(Opts::new("plugind_restarts_total", "Restarts after crashes."), &["plugin"]);
        let state = IntGaugeVec::new(
            Opts::new("plugind_plugin_state", "1 for the plugin's current state."),
            &["plugin", "state"],
        );
        let memory = IntGaugeVec::new(
            Opts::new("plugind_plugin_memory_bytes", "Resident memory of the plugin's processes."),
            &["plugin"],
        );
        let instances =
            IntGaugeVec::new(Opts::new("plugind_plugin_instances", "Instances serving calls."), &["plugin"]);
        let (Ok(calls), Ok(errors), Ok(timeouts), Ok(restarts), Ok(state), Ok(memory), Ok(instances)) =
            (calls, errors, timeouts, restarts, state, memory, instances)
        else {
            return String::new();
        };
        for p in self.plugins() {
            let s = p.snapshot();
            let name = s.name.as_str();
            calls.with_label_values(&[name]).inc_by(s.calls.total);
            errors.with_label_values(&[name]).inc_by(s.calls.failed);
            timeouts.with_label_values(&[name]).inc_by(s.calls.timed_out);
            restarts.with_label_values(&[name]).inc_by(s.restarts);
            state.with_label_values(&[name, s.state.as_str()]).set(1);
            memory.with_label_values(&[name]).set(s.memory_kb.unwrap_or(0) as i64 * 1024);
            instances.with_label_values(&[name]).set(s.instances as i64);
        }
        for c in [calls, errors, timeouts, restarts] {
            let _ = scrape.register(Box::new(c));
        }
        for g in [state, memory, instances] {
            let _ = scrape.register(Box::new(g));
        }
        let mut families = scrape.gather();
        families.extend(self.metrics.registry.gather());
        let mut out = Vec::new();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` (the text of `metrics.get`) on `listener` until the task is aborted.
/// HTTP is hyper's, with the cap on connections and the timeout on silent ones of `--listen`
/// ([`crate::transport::http`]): the port is on loopback, where a `networking` plugin can reach
/// it too, and must not be a way to take plugind's descriptors.
pub async fn serve(daemon: std::sync::Arc<Daemon>, listener: tokio::net::TcpListener) {
    use crate::transport::http::{serve_connection, Slots};
    use jsonrpsee::server::HttpBody;
    let slots = Slots::new("--metrics");
    loop {
        let (sock, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin on the error.
                tracing::warn!("--metrics accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(&sock, remote) else { continue };
        let daemon = daemon.clone();
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            // GET, and HEAD as GET without the body (hyper leaves it out); another method on
            // the path is 405, anything else 404.
            let (status, body) = match (req.uri().path(), req.method()) {
                ("/metrics", &http::Method::GET | &http::Method::HEAD) => (http::StatusCode::OK, daemon.metrics_text()),
                ("/metrics", _) => (http::StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".to_owned()),
                _ => (http::StatusCode::NOT_FOUND, "try GET /metrics\n".to_owned()),
            };
            async move {
                let mut r = http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
                if status == http::StatusCode::METHOD_NOT_ALLOWED {
                    r = r.header(http::header::ALLOW, "GET, HEAD");
                }
                r.body(HttpBody::from(body)).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
            }
        });
        tokio::spawn(serve_connection(sock, svc, std::future::pending(), slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(m: &Metrics, name: &str, kind: MetricKind, value: f64, labels: &[(&str, &str)]) -> Result<(), EmitError> {
        emit_as(m, "p", name, kind, value, labels)
    }

    fn emit_as(
        m: &Metrics,
        plugin: &str,
        name: &str,
        kind: MetricKind,
        value: f64,
        labels: &[(&str, &str)],
    ) -> Result<(), EmitError> {
        let labels = (!labels.is_empty()).then(|| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m.emit(plugin, &MetricsEmitParams { name: name.into(), value, kind, labels })
    }

    fn text(m: &Metrics) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&m.registry.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_plugin_keeps_at_most_its_cap_of_series() {
        let m = Metrics::default();
        for i in 0..caps::METRIC_SERIES {
            emit(&m, "jobs", MetricKind::Gauge, 1.0, &[("n", &i.to_string())]).unwrap();
        }
        let over = emit(&m, "jobs", MetricKind::Gauge, 1.0, &[("n", "new")]);
        assert!(matches!(over, Err(EmitError::TooManySeries { .. })), "{over:?}");
        assert_eq!(over.unwrap_err().cap(), Cap::MetricSeries);
        emit(&m, "jobs", MetricKind::Gauge, 2.0, &[("n", "7")]).expect("an existing series still moves");
        emit_as(&m, "q", "jobs", MetricKind::Gauge, 1.0, &[("n", "new")]).expect("another plugin has its own cap");
        let labels = [("a", "1"); 1];
        let many: Vec<(String, String)> = (0..=caps::METRIC_LABELS).map(|i| (format!("l{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(matches!(emit_as(&m, "r", "wide", MetricKind::Gauge, 1.0, &many), Err(EmitError::TooLarge { .. })));
        let long = "v".repeat(caps::METRIC_TEXT_BYTES + 1);
        assert!(matches!(
            emit_as(&m, "r", "wide", MetricKind::Gauge, 1.0, &[("a", &long)]),
            Err(EmitError::TooLarge { .. })
        ));
        emit_as(&m, "r", "narrow", MetricKind::Gauge, 1.0, &labels).unwrap();
    }

    #[test]
    fn the_first_kind_of_a_name_wins_and_plugins_stay_apart() {
        let m = Metrics::default();
        emit_as(&m, "a", "shared", MetricKind::Counter, 2.0, &[]).unwrap();
        let r = emit_as(&m, "b", "shared", MetricKind::Gauge, 5.0, &[]);
        assert_eq!(
            r,
            Err(EmitError::KindTaken { name: "shared".into(), kind: MetricKind::Gauge, first: MetricKind::Counter })
        );
        emit_as(&m, "b", "shared", MetricKind::Counter, 3.0, &[]).unwrap();
        let t = text(&m);
        assert!(t.contains(r#"shared{plugin="a"} 2"#) && t.contains(r#"shared{plugin="b"} 3"#), "{t}");
        assert!(t.contains("# TYPE shared counter"), "{t}");
    }

    #[test]
    fn emitted_metrics_are_labelled_and_checked() {
        let m = Metrics::default();
        emit(&m, "jobs_done", MetricKind::Counter, 2.0, &[("queue", "a")]).unwrap();
        emit(&m, "jobs_done", MetricKind::Counter, 3.0, &[("queue", "a")]).unwrap();
        assert!(emit(&m, "jobs_done", MetricKind::Gauge, 1.0, &[("queue", "a")]).is_err());
        assert!(emit(&m, "jobs_done", MetricKind::Counter, 1.0, &[("other", "x")]).is_err());
        assert!(emit(&m, "jobs_done", MetricKind::Counter, -1.0, &[("queue", "a")]).is_err());
        assert!(emit(&m, "bad name", MetricKind::Gauge, 1.0, &[]).is_err());
        assert!(emit(&m, "plugind_calls_total", MetricKind::Gauge, 1.0, &[]).is_err());
        let text = text(&m);
        assert!(text.contains(r#"jobs_done{plugin="p",queue="a"} 5"#), "{text}");
    }

    /// What would spoil the whole exposition for a strict scraper is refused: a `__` label
    /// (`__name__`), and a name among a histogram's lines (either order).
    #[test]
    fn reserved_labels_and_histogram_line_names_are_refused() {
        let m = Metrics::default();
        assert!(emit(&m, "x", MetricKind::Gauge, 1.0, &[("__name__", "plugind_calls_total")]).is_err());
        assert!(emit(&m, "x", MetricKind::Gauge, 1.0, &[("__meta_x", "1")]).is_err());
        emit(&m, "h", MetricKind::Histogram, 1.0, &[]).unwrap();
        for taken in ["h_bucket", "h_sum", "h_count"] {
            let e = emit_as(&m, "other", taken, MetricKind::Counter, 1.0, &[]).unwrap_err();
            assert!(e.to_string().contains("clashes with the lines of histogram \"h\""), "{e}");
        }
        emit(&m, "q_count", MetricKind::Counter, 1.0, &[]).unwrap();
        assert!(emit(&m, "q", MetricKind::Histogram, 1.0, &[]).is_err());
        emit(&m, "h_total", MetricKind::Counter, 1.0, &[]).unwrap();
        // A histogram's bucket label: refused, not a panic (audit 17).
        let e = emit(&m, "hh", MetricKind::Histogram, 1.0, &[("le", "5")]).unwrap_err();
        assert!(e.to_string().contains("\"le\""), "{e}");
        emit(&m, "gg", MetricKind::Gauge, 1.0, &[("le", "5")]).unwrap();
    }

    /// Within every other cap a plugin could make tens of megabytes of text (1000 histograms
    /// of 16 long labels): its series are bounded by the text they take, and another plugin
    /// is not affected.
    #[test]
    fn a_plugins_metrics_text_is_bounded() {
        let m = Metrics::default();
        let long = "v".repeat(250);
        let names: Vec<String> = (0..15).map(|j| format!("l{j}")).collect();
        let mut dropped = None;
        for i in 0..1000 {
            let n = i.to_string();
            let mut labels: Vec<(&str, &str)> = names.iter().map(|k| (k.as_str(), long.as_str())).collect();
            labels.push(("i", &n));
            if let Err(e) = emit(&m, "h", MetricKind::Histogram, 1.0, &labels) {
                dropped = Some((i, e));
                break;
            }
        }
        let (i, e) = dropped.expect("some series are dropped");
        assert!(matches!(e, EmitError::TooMuchText { .. }) && i > 10, "{i}: {e}");
        let size = text(&m).len();
        assert!(size <= 2 * caps::METRIC_PLUGIN_TEXT_BYTES, "{size} bytes");
        emit_as(
            &m,
            "other",
            "h",
            MetricKind::Histogram,
            1.0,
            &[
                ("i", "1"),
                ("l0", "x"),
                ("l1", "x"),
                ("l10", "x"),
                ("l11", "x"),
                ("l12", "x"),
                ("l13", "x"),
                ("l14", "x"),
                ("l2", "x"),
                ("l3", "x"),
                ("l4", "x"),
                ("l5", "x"),
                ("l6", "x"),
                ("l7", "x"),
                ("l8", "x"),
                ("l9", "x"),
            ],
        )
        .unwrap();
    }
}
