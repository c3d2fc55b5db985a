//! Methods between plugind and a plugin (docs/protocol.md): names and typed params/results.
//!
//! Payloads that plugind only relays (`execute` params and results, hook payloads, kv values)
//! are `serde_json::Value` here for the SDKs' convenience; the supervisor's hot path does not use
//! these structs, it forwards raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---- plugind → plugin -------------------------------------------------------------------------

/// Request: the handshake, first message of every instance.
pub const INIT: &str = "init";
/// Request: asks the plugin which services it provides.
pub const REGISTER: &str = "register";
/// Request: a call routed to the plugin.
pub const EXECUTE: &str = "execute";
/// Request: one step of a hook chain.
pub const HOOK: &str = "hook";
/// Request: liveness probe; any answer counts.
pub const PING: &str = "ping";
/// Request: last message before stdin is closed.
pub const TEARDOWN: &str = "teardown";
/// Notification: the caller of request `id` gave up.
pub const CANCEL: &str = "$/cancel";
/// Notification: a dependency came, went or was replaced.
pub const SERVICES_CHANGED: &str = "services.changed";
/// Notification: plugind saw an error caused by or aimed at this plugin.
pub const ON_ERROR: &str = "onError";

// ---- plugin → plugind -------------------------------------------------------------------------

/// Notification: a log line.
pub const LOG: &str = "log";
/// Notification: request `id` is still being worked on; its deadline starts again.
pub const PROGRESS: &str = "$/progress";
/// Notification: a metric sample.
pub const METRICS_EMIT: &str = "metrics.emit";
/// Request: look a service up (`null` if absent).
pub const REGISTRY_GET_SERVICE: &str = "registry.getService";
/// Request: look a service up (`-32004` if absent).
pub const REGISTRY_REQUIRE_SERVICE: &str = "registry.requireService";
/// Request: list services, optionally by capability.
pub const REGISTRY_LIST_SERVICES: &str = "registry.listServices";
/// Request: call another service through plugind.
pub const SERVICE_CALL: &str = "service.call";
/// Request: read one key of the plugin's store.
pub const KV_GET: &str = "kv.get";
/// Request: write one key.
pub const KV_SET: &str = "kv.set";
/// Request: delete one key.
pub const KV_DELETE: &str = "kv.delete";
/// Request: list keys by prefix.
pub const KV_LIST: &str = "kv.list";

/// Every request a plugin may make of plugind; any other is answered `-32601`.
pub const PLUGIN_REQUESTS: &[&str] = &[
    REGISTRY_GET_SERVICE,
    REGISTRY_REQUIRE_SERVICE,
    REGISTRY_LIST_SERVICES,
    SERVICE_CALL,
    KV_GET,
    KV_SET,
    KV_DELETE,
    KV_LIST,
];

/// Identifies the supervisor in `init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    /// Always `"plugind"`.
    pub name: String,
    /// plugind's version.
    pub version: String,
}

/// `init` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitParams {
    /// See [`crate::version`].
    pub protocol_version: u32,
    /// The plugin's name from its manifest.
    pub name: String,
    /// The plugin's version from its manifest.
    pub version: String,
    /// The manifest's `config` with the operator's config merged over it.
    #[serde(default)]
    pub config: Value,
    /// A directory the plugin may keep files in (null without the `storage` permission).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Who is driving the plugin.
    pub supervisor: SupervisorInfo,
}

/// `init` result: `{}` or `{ "protocol_version": 1 }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitResult {
    /// The version the plugin speaks, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u64>,
}

/// One service a plugin or host provides, as plugins declare it in `register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDecl {
    /// Service name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// Methods offered (informational).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Capability tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// `register` result: `{ "services": [...] }`, or `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterResult {
    /// Services this plugin provides beyond the implicit one named after itself.
    #[serde(default)]
    pub services: Vec<ServiceDecl>,
}

/// `execute` params as the plugin receives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteParams {
    /// The method the caller asked for.
    pub method: String,
    /// The caller's params, verbatim.
    #[serde(default)]
    pub params: Value,
    /// Set when the call came through the service registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The calling plugin's name, when a plugin called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// `hook` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookParams {
    /// Hook name, e.g. `onRequest`.
    pub hook: String,
    /// The payload as the previous plugin in the chain left it.
    #[serde(default)]
    pub payload: Value,
}

/// `hook` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookResult {
    /// The payload for the next plugin. Required (`null` is a payload): an answer without it is
    /// malformed, not a payload wiped.
    pub payload: Value,
    /// `true` ends the chain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
}

/// `$/cancel` and `$/progress` refer to a request by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelParams {
    /// Id of the request being cancelled.
    pub id: Value,
}

/// `$/progress` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressParams {
    /// Id of the request (one plugind sent) still being worked on.
    pub id: Value,
    /// Optional human text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Work done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Work in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
}

/// `services.changed` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesChangedParams {
    /// The service.
    pub service: String,
    /// Its version.
    pub version: String,
    /// The providing plugin (or `host:<id>`).
    pub plugin: String,
    /// What happened.
    pub event: ServiceEvent,
}

/// What happened to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceEvent {
    /// It became available.
    Up,
    /// It went away.
    Down,
    /// It was swapped by a restart or reload.
    Replaced,
}

/// Log levels of the `log` notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Finest.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// `log` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogParams {
    /// Severity; unknown levels are read as `info`.
    #[serde(default = "default_level", deserialize_with = "lenient_level")]
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Value>,
    /// The trace of the call this line is about (32 hex digits), when the plugin knows it; else
    /// plugind uses the call the plugin is working on, if there is only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

fn default_level() -> LogLevel {
    LogLevel::Info
}

fn lenient_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogLevel, D::Error> {
    let s = String::deserialize(d)?;
    Ok(match s.to_ascii_lowercase().as_str() {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "warn" | "warning" => LogLevel::Warn,
        "error" | "fatal" | "critical" => LogLevel::Error,
        _ => LogLevel::Info,
    })
}

/// Kinds of `metrics.emit` samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Monotonic; `value` is added.
    Counter,
    /// Last value wins.
    Gauge,
    /// `value` is one observation.
    Histogram,
}

/// `metrics.emit` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsEmitParams {
    /// Metric name (Prometheus rules).
    pub name: String,
    /// The sample.
    pub value: f64,
    /// How to aggregate.
    pub kind: MetricKind,
    /// Extra labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `registry.getService` / `registry.requireService` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceQuery {
    /// Service name.
    pub name: String,
    /// A semver range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `registry.listServices` and control `services.list` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListServicesParams {
    /// Only services with this capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
}

/// A service as the registry reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The plugin providing it (`host:<n>` for host-provided services).
    pub plugin: String,
    /// Methods it declared.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Capability tags.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// `service.call` params (plugin → plugind) and control `services.call` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCallParams {
    /// Service name.
    pub service: String,
    /// A semver range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Method passed to the provider's `execute`.
    pub method: String,
    /// Params passed verbatim.
    #[serde(default)]
    pub params: Value,
    /// Deadline of this call; capped by what is left of the calling call's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Extension: the id of the plugind request this call is made on behalf of. Without it,
    /// plugind assumes the only request the plugin is working on, if there is exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
}

/// `kv.get` / `kv.delete` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvKey {
    /// The key.
    pub key: String,
}

/// `kv.set` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvSetParams {
    /// The key.
    pub key: String,
    /// Any JSON.
    pub value: Value,
}

/// `kv.list` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvListParams {
    /// Only keys starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `onError` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnErrorParams {
    /// An error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// Detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}
