//! The control API (docs/control-api.md): what hosts and `pluginctl` send plugind over its socket.
//!
//! Daemon and client share these types (as pueue's daemon and client share `pueue_lib`), so a
//! field renamed here is renamed on both sides at once.

use crate::manifest::MethodSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `supervisor.status`.
pub const SUPERVISOR_STATUS: &str = "supervisor.status";
/// `supervisor.shutdown`.
pub const SUPERVISOR_SHUTDOWN: &str = "supervisor.shutdown";
/// `plugins.list`.
pub const PLUGINS_LIST: &str = "plugins.list";
/// `plugins.get`.
pub const PLUGINS_GET: &str = "plugins.get";
/// `plugins.start`.
pub const PLUGINS_START: &str = "plugins.start";
/// `plugins.stop`.
pub const PLUGINS_STOP: &str = "plugins.stop";
/// `plugins.restart`.
pub const PLUGINS_RESTART: &str = "plugins.restart";
/// `plugins.reload`.
pub const PLUGINS_RELOAD: &str = "plugins.reload";
/// `plugins.trace`.
pub const PLUGINS_TRACE: &str = "plugins.trace";
/// `execute`.
pub const EXECUTE: &str = "execute";
/// `services.list`.
pub const SERVICES_LIST: &str = "services.list";
/// `services.call`.
pub const SERVICES_CALL: &str = "services.call";
/// `services.register`.
pub const SERVICES_REGISTER: &str = "services.register";
/// `hooks.run`.
pub const HOOKS_RUN: &str = "hooks.run";
/// `logs.tail`.
pub const LOGS_TAIL: &str = "logs.tail";
/// `events.subscribe`.
pub const EVENTS_SUBSCRIBE: &str = "events.subscribe";
/// `metrics.get`.
pub const METRICS_GET: &str = "metrics.get";
/// Notification carrying one event after `events.subscribe`.
pub const EVENT_NOTIFICATION: &str = "event";
/// Notification carrying one wire message after `plugins.trace`.
pub const TRACE_NOTIFICATION: &str = "trace";
/// Notification carrying one log line after `logs.tail` with `follow`.
pub const LOG_NOTIFICATION: &str = "log";

/// Params naming one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameParams {
    /// Plugin name.
    pub name: String,
}

/// `plugins.restart` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartParams {
    /// Plugin name.
    pub name: String,
    /// Stop, then start, instead of starting new instances beside the old ones.
    #[serde(default)]
    pub hard: bool,
}

/// Control `execute` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteParams {
    /// Target plugin.
    pub plugin: String,
    /// Method passed to the plugin's `execute`.
    pub method: String,
    /// Params passed verbatim.
    #[serde(default)]
    pub params: Value,
    /// Deadline; default the plugin's `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `hooks.run` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HooksRunParams {
    /// Hook name.
    pub hook: String,
    /// Initial payload.
    #[serde(default)]
    pub payload: Value,
    /// The whole chain's budget; none: the chain has no budget of its own (each plugin still has
    /// its own timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Trace context: the chain continues this trace.
    #[serde(default, rename = "_meta", skip_serializing_if = "Option::is_none")]
    pub meta: Option<TraceMeta>,
}

/// `_meta` of a request: W3C trace context (docs/tracing.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceMeta {
    /// `00-TRACEID-PARENTID-FLAGS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Vendor data, forwarded as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// What one plugin did in a hook chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookOutcome {
    /// Answered the payload unchanged.
    Passed,
    /// Answered another payload.
    Modified,
    /// Answered `stop: true`: the chain ended with its payload.
    Stopped,
    /// Answered an error, crashed or was not running.
    Failed,
    /// Its own timeout or the chain's budget ran out while it ran.
    TimedOut,
    /// Not asked: the chain had already stopped, or its budget was spent.
    Skipped,
    /// A shadow plugin: it ran, its answer was discarded.
    Shadow,
}

/// One entry of a hook chain's receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptEntry {
    /// The plugin.
    pub plugin: String,
    /// What it did.
    pub outcome: HookOutcome,
    /// How long its step took, in milliseconds.
    pub ms: f64,
    /// Its error (a JSON-RPC error object), when it failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// `hooks.run` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HooksRunResult {
    /// Final payload.
    pub payload: Value,
    /// Plugins that handled it, in order.
    pub handled_by: Vec<String>,
    /// The plugin that ended the chain with `stop: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// One entry per plugin of the chain, in chain order.
    #[serde(default)]
    pub receipt: Vec<ReceiptEntry>,
}

/// `logs.tail` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsTailParams {
    /// Only this plugin's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// How many recent lines (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// Extension: keep streaming new lines as `log` notifications.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 time.
    pub ts: String,
    /// The plugin.
    pub plugin: String,
    /// `stderr`, `log` (notification) or `plugind` (supervisor's own event).
    pub stream: String,
    /// Severity.
    pub level: String,
    /// The text.
    pub message: String,
    /// Structured fields of a `log` notification (an object, capped in size: see docs/protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Value>,
    /// The trace of the call the line was logged for (32 hex digits), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// `logs.tail` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsTailResult {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

/// `plugins.reload` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// Plugins found for the first time.
    pub added: Vec<String>,
    /// Plugins whose directory went away.
    pub removed: Vec<String>,
    /// Plugins whose manifest changed.
    pub changed: Vec<String>,
    /// Load errors, one string each naming file and field.
    pub errors: Vec<String>,
}

/// `supervisor.status` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// plugind's version.
    pub version: String,
    /// plugind's pid.
    pub pid: u32,
    /// Time since start.
    pub uptime_ms: u64,
    /// Counts by state.
    pub plugins: PluginCounts,
}

/// Plugin counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginCounts {
    /// All known plugins.
    pub total: usize,
    /// In state `running`.
    pub running: usize,
    /// In state `failed`.
    pub failed: usize,
    /// In state `blocked`.
    pub blocked: usize,
}

/// Per permission: granted by the manifest, and whether the kernel enforces the denial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionStatus {
    /// Listed in the manifest's `permissions`.
    pub granted: bool,
    /// When not granted: whether this host's kernel enforces the denial (else it is advisory).
    pub enforced: bool,
    /// The mechanism (`seccomp`, `landlock`, `plugind`, or `none`).
    pub mechanism: String,
}

/// One containment guarantee and whether this host's kernel makes it hold for the plugin
/// (`sandbox` rows of the status object; `pluginctl check` prints the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxGuarantee {
    /// What is guaranteed (`control-api`, `signals-and-ptrace`, `private-state`, …).
    pub guarantee: String,
    /// Whether it holds on this host.
    pub held: bool,
    /// The mechanisms that enforce it (`mount namespace`, `landlock scopes`, …).
    pub mechanism: String,
    /// When it does not hold: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How an instance last ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    /// Exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal name (`SIGKILL`), if killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The limit that fired: `memory_mb`, `cpu_seconds`, `open_files`, `processes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// Call counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallCounts {
    /// Calls routed to the plugin.
    pub total: u64,
    /// Calls that ended with an error.
    pub failed: u64,
    /// Calls that hit their deadline.
    pub timed_out: u64,
}

/// One entry of a plugin's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339 time.
    pub ts: String,
    /// `start`, `running`, `exit`, `restart`, `failed`, `stop`, `reload`…
    pub event: String,
    /// Detail (exit code, delay…).
    pub detail: String,
}

/// The status object of docs/control-api.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Plugin name.
    pub name: String,
    /// Plugin version (as written, for invalid manifests).
    pub version: String,
    /// `starting`, `running`, `restarting`, `stopping`, `stopped`, `failed`, `blocked`, `invalid`.
    pub state: String,
    /// Pid of the (first) running instance.
    pub pid: Option<u32>,
    /// Running instances.
    pub instances: usize,
    /// Restarts so far.
    pub restarts: u64,
    /// Time since the current instance reached `running`.
    pub uptime_ms: u64,
    /// Services provided.
    pub services: Vec<ServiceRef>,
    /// Declared dependencies with whether each is met.
    pub dependencies: Vec<DependencyStatus>,
    /// Per permission.
    pub permissions: BTreeMap<String, PermissionStatus>,
    /// Last error, human-readable.
    pub last_error: Option<String>,
    /// Call counters.
    pub calls: CallCounts,
    /// Resident memory of the instances' processes.
    pub memory_kb: Option<u64>,
    /// How the last instance ended.
    pub last_exit: Option<LastExit>,
    /// The last stderr lines.
    pub stderr_tail: Vec<String>,
    /// Recent lifecycle events.
    pub history: Vec<HistoryEntry>,
    /// Services the plugin's `register` answer named but may not provide (never routed).
    #[serde(default)]
    pub refused_services: Vec<RefusedService>,
    /// The plugin directory.
    #[serde(default)]
    pub dir: String,
    /// The containment guarantees and whether each holds here (`plugins.get` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox: Vec<SandboxGuarantee>,
    /// What the plugin speaks on stdio, `plugind` or `mcp` (absent when the manifest does not
    /// load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The method catalog: the manifest's `methods` merged with those of the serving instance's
    /// `register` answer, the manifest's winning (`plugins.get` only; absent when the manifest
    /// does not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<BTreeMap<String, MethodSpec>>,
}

/// A service name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A service a plugin's `register` answer named and plugind refused to route to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedService {
    /// The name it registered.
    pub name: String,
    /// The version it registered.
    pub version: String,
    /// Why it was refused, for a human.
    pub reason: String,
}

/// A dependency as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyStatus {
    /// Service name.
    pub name: String,
    /// Range (`*` when none).
    pub range: String,
    /// Required (else optional).
    pub required: bool,
    /// A matching provider is up.
    pub met: bool,
}

/// `services.register` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesRegisterParams {
    /// Service name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// Methods (informational).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Capability tags.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// An `event` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 time.
    pub ts: String,
    /// The plugin concerned.
    pub plugin: String,
    /// `state`, `restart`, `reload`, `limit`, `exit`…
    pub kind: String,
    /// The new state, for state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Detail.
    pub detail: String,
    /// The trace of the call the event is about (`call_failed`), 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A `trace` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceMessage {
    /// RFC 3339 time.
    pub ts: String,
    /// The plugin.
    pub plugin: String,
    /// `in` (plugin → plugind) or `out` (plugind → plugin).
    pub dir: String,
    /// The wire message.
    pub message: Value,
}

/// `metrics.get` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResult {
    /// Prometheus text exposition.
    pub text: String,
}
