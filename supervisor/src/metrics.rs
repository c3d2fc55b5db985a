//! Metrics in Prometheus text exposition (`metrics.get`, `pluginctl metrics`, `--metrics ADDR`).
//!
//! plugind's own figures per plugin (calls, errors, timeouts, restarts, state, memory) are read
//! from the plugin table at scrape time; call latency is a histogram observed on the call path
//! through a handle cached per plugin (no lookup per call). Figures plugins send with
//! `metrics.emit` become metric families created on first use, labelled `plugin`.

use crate::Daemon;
use plugind_protocol::methods::{MetricKind, MetricsEmitParams};
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
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

/// The daemon's metrics state.
pub struct Metrics {
    registry: Registry,
    emitted: Mutex<HashMap<String, Emitted>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        // Registering a fresh static can only fail if it were registered twice in this registry.
        let _ = registry.register(Box::new(CALL_LATENCY.clone()));
        Metrics { registry, emitted: Mutex::new(HashMap::new()) }
    }
}

/// Whether `name` is a valid Prometheus metric name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl Metrics {
    /// Records one `metrics.emit` sample of `plugin`; returns why it was refused, if it was.
    pub fn emit(&self, plugin: &str, p: &MetricsEmitParams) -> Result<(), String> {
        if !valid_name(&p.name) || p.name.starts_with("plugind_") {
            return Err(format!("metric name {:?} is not a valid Prometheus name outside plugind_*", p.name));
        }
        let labels = p.labels.clone().unwrap_or_default();
        if let Some(bad) = labels.keys().find(|k| !valid_name(k) || k.as_str() == "plugin") {
            return Err(format!("label name {bad:?} is not allowed"));
        }
        let mut names: Vec<String> = std::iter::once("plugin".to_owned()).chain(labels.keys().cloned()).collect();
        names[1..].sort();
        let values: Vec<&str> = std::iter::once(plugin).chain(names[1..].iter().map(|k| labels[k].as_str())).collect();
        let mut all = self.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !all.contains_key(&p.name) {
            let help = format!("Emitted by plugins with metrics.emit ({:?}).", p.kind);
            let opts = Opts::new(p.name.clone(), help.clone());
            let label_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let family = match p.kind {
                MetricKind::Counter => CounterVec::new(opts, &label_refs).map(|v| Emitted::Counter(v, names.clone())),
                MetricKind::Gauge => GaugeVec::new(opts, &label_refs).map(|v| Emitted::Gauge(v, names.clone())),
                MetricKind::Histogram => HistogramVec::new(HistogramOpts::new(p.name.clone(), help), &label_refs)
                    .map(|v| Emitted::Histogram(v, names.clone())),
            }
            .map_err(|e| e.to_string())?;
            let collector: Box<dyn prometheus::core::Collector> = match &family {
                Emitted::Counter(v, _) => Box::new(v.clone()),
                Emitted::Gauge(v, _) => Box::new(v.clone()),
                Emitted::Histogram(v, _) => Box::new(v.clone()),
            };
            self.registry.register(collector).map_err(|e| e.to_string())?;
            all.insert(p.name.clone(), family);
        }
        let mismatch = |want: &Vec<String>| format!("metric {:?} was first emitted with labels {want:?}", p.name);
        match (all.get(&p.name), p.kind) {
            (Some(Emitted::Counter(v, n)), MetricKind::Counter) if *n == names => {
                if p.value < 0.0 {
                    return Err("a counter cannot go down".into());
                }
                v.with_label_values(&values).inc_by(p.value);
            }
            (Some(Emitted::Gauge(v, n)), MetricKind::Gauge) if *n == names => v.with_label_values(&values).set(p.value),
            (Some(Emitted::Histogram(v, n)), MetricKind::Histogram) if *n == names => {
                v.with_label_values(&values).observe(p.value)
            }
            (Some(Emitted::Counter(_, n) | Emitted::Gauge(_, n) | Emitted::Histogram(_, n)), _) if *n != names => {
                return Err(mismatch(n))
            }
            _ => return Err(format!("metric {:?} was first emitted as another kind", p.name)),
        }
        Ok(())
    }
}

impl Daemon {
    /// Records a `metrics.emit` notification of a plugin (raw params).
    pub fn metrics_emit(&self, plugin: &str, params: &str) {
        let result = serde_json::from_str::<MetricsEmitParams>(params)
            .map_err(|e| format!("bad metrics.emit params: {e}"))
            .and_then(|p| self.metrics.emit(plugin, &p));
        if let Err(e) = result {
            if let Some(entry) = self.plugin(plugin) {
                entry.log.warn(format!("metrics.emit ignored: {e}"));
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

/// Serves `GET /metrics` on `addr` until the task is aborted (`--metrics ADDR`).
pub async fn serve(daemon: std::sync::Arc<Daemon>, listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            // One small request per connection: read its head, answer, close.
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                ("200 OK", daemon.metrics_text())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(m: &Metrics, name: &str, kind: MetricKind, value: f64, labels: &[(&str, &str)]) -> Result<(), String> {
        let labels = (!labels.is_empty()).then(|| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m.emit("p", &MetricsEmitParams { name: name.into(), value, kind, labels })
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
        let mut out = Vec::new();
        TextEncoder::new().encode(&m.registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"jobs_done{plugin="p",queue="a"} 5"#), "{text}");
    }
}
