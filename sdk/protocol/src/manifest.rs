//! `plugin.json` (manifests/README.md): parsed, validated, defaults applied.
//!
//! [`Manifest::parse`] reads the JSON into a `serde_json::Value` and walks it field by field, so
//! that every problem is reported at once, each as a [`FieldError`] with the JSON pointer of the
//! field, what was expected and what was found. Unknown fields are kept in
//! [`Manifest::extra`] and otherwise ignored. Checks that need the file system (does `main`
//! exist?) are the supervisor's; this module does no I/O.

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Default per-call deadline.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default ceiling for a call extended by `$/progress`.
pub const DEFAULT_MAX_TIMEOUT_MS: u64 = 60_000;
/// Default budget from spawn until `register` is answered (`startup_timeout_ms`).
pub const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 30_000;
/// Default `limits.memory_mb`.
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// Default `limits.open_files`.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// The keys of `limits` and of `restart`: any other is a misspelling worth a warning (a
/// `memroy_mb` silently left the default in force).
const LIMITS_KEYS: &[&str] = &["memory_mb", "cpu_seconds", "open_files", "processes", "max_inflight", "max_queue"];
const RESTART_KEYS: &[&str] = &["policy", "max_restarts", "window_s", "cooldown_s"];
/// The keys of a `hooks` object value and of `dependencies`, warned about the same way.
const HOOK_KEYS: &[&str] = &["priority", "timeout_ms", "failure", "mode"];
const DEPENDENCIES_KEYS: &[&str] = &["required", "optional"];

/// Warns about each key of `obj` (at `pointer`) that is not one of `known`.
fn unknown_keys(obj: &Map<String, Value>, pointer: &str, known: &[&str], warnings: &mut Vec<String>) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        warnings.push(format!(
            "{pointer}/{}: unknown field ignored (known: {})",
            escape_pointer(key),
            known.join(", ")
        ));
    }
}

/// Whether `typed` is a misspelling of `known` (not `known` itself): at most two single-letter
/// edits (insert, delete, replace) from it, one for names of five letters or fewer (so that
/// `tags` is not taken for `args`).
fn close(known: &str, typed: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (known.chars().collect(), typed.to_lowercase().chars().collect());
    if a == b {
        return typed != known; // only the case differs
    }
    if a.len().abs_diff(b.len()) > 2 || a.len() < 4 {
        return false;
    }
    // Levenshtein distance, one row at a time.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()] <= if a.len() <= 5 { 1 } else { 2 }
}

/// Most `limits.processes` may be: the kernel's own ceiling on pids (`PID_MAX_LIMIT` on 64-bit
/// Linux), past which a cgroup's `pids.max` refuses the number.
pub const MAX_PROCESSES: u64 = 4_194_304;
/// Default `limits.max_inflight`.
pub const DEFAULT_MAX_INFLIGHT: u32 = 64;
/// Default `limits.max_queue` (an extension: calls waiting beyond `max_inflight`).
pub const DEFAULT_MAX_QUEUE: u32 = 1024;
/// Most `instances` a manifest may ask for: each is a process plugind spawns, watches and holds
/// buffers for, so the number is bounded like everything else a plugin declares.
pub const MAX_INSTANCES: u64 = 64;

/// The priority of a hook given as an object without one.
pub const DEFAULT_HOOK_PRIORITY: i64 = 100;

/// How a plugin takes part in one hook chain (manifest `hooks` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Lower runs first; ties by plugin name.
    pub priority: i64,
    /// This plugin's deadline for this hook (else its `timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What its error or timeout does to the chain.
    pub failure: HookFailure,
    /// Whether its answer counts.
    pub mode: HookMode,
}

impl Default for HookSpec {
    fn default() -> Self {
        HookSpec {
            priority: DEFAULT_HOOK_PRIORITY,
            timeout_ms: None,
            failure: HookFailure::Open,
            mode: HookMode::Enforce,
        }
    }
}

/// `failure` of a hook: what an error or timeout of this plugin does to the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFailure {
    /// Skipped; the chain goes on (the default).
    Open,
    /// The chain ends and `hooks.run` answers `-32008` hook rejected.
    Closed,
}

/// `mode` of a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// Its answer is the chain's payload (the default).
    Enforce,
    /// It sees a copy of the payload; whatever it answers or does never changes the chain.
    Shadow,
}

/// `protocol`: what the plugin speaks on its stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// plugind's own JSON-RPC protocol (`docs/protocol.md`): the default.
    #[default]
    Plugind,
    /// The plugin is an MCP server over stdio.
    Mcp,
}

impl Protocol {
    /// Its name in manifests and in the status object.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plugind => "plugind",
            Protocol::Mcp => "mcp",
        }
    }
}

/// Longest method name of the catalog, in bytes (manifest and `register` alike).
pub const MAX_METHOD_NAME_BYTES: usize = 128;

/// One method of the catalog: a `methods` value of the manifest or of a `register` answer.
///
/// Only the shape is checked here; whether `params` and `result` are valid JSON Schemas is the
/// supervisor's to decide (it compiles them), since that needs a schema engine this crate does
/// not carry. Serialized back, it is the manifest's shape (`plugins.get` answers it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// Free text for humans (and MCP clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the params: plugind validates calls against it before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// JSON Schema of the result (informational: results are not validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// This method's deadline, overriding the plugin's `timeout_ms` (a call's own wins over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether calling it twice does no more than calling it once (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Unknown keys, kept and ignored like the manifest's own.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MethodSpec {
    /// Checks the shape of one `methods` value at `pointer` (`/methods/NAME`); `max_timeout_ms`
    /// bounds its `timeout_ms`. Every problem is returned, each with its pointer.
    pub fn from_value(v: &Value, pointer: &str, max_timeout_ms: u64) -> Result<MethodSpec, Vec<FieldError>> {
        let mut w = Walker { errors: Vec::new() };
        let spec = w.method(v, pointer, max_timeout_ms);
        match spec {
            Some(spec) if w.errors.is_empty() => Ok(spec),
            _ => Err(w.errors),
        }
    }
}

/// A permission of §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// May open AF_INET/AF_INET6 sockets.
    Networking,
    /// `kv.*` and a writable data dir.
    Storage,
    /// May write outside its data dir and private temp dir.
    Filesystem,
    /// May spawn child processes.
    Process,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 4] =
        [Permission::Networking, Permission::Storage, Permission::Filesystem, Permission::Process];

    /// Its name in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Networking => "networking",
            Permission::Storage => "storage",
            Permission::Filesystem => "filesystem",
            Permission::Process => "process",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A dependency: `name` or `name@range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Service (or plugin) name.
    pub name: String,
    /// Acceptable versions; `None` accepts any.
    pub range: Option<VersionReq>,
}

impl Dependency {
    /// Parses `name` or `name@range`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, range) = match s.split_once('@') {
            Some((n, r)) => (n.trim(), Some(r.trim())),
            None => (s.trim(), None),
        };
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err("a service name without spaces".into());
        }
        let range = match range {
            None => None,
            Some(r) => Some(VersionReq::parse(r).map_err(|e| format!("a semver range after '@' ({e})"))?),
        };
        Ok(Dependency { name: name.to_owned(), range })
    }

    /// Whether `version` satisfies the range.
    pub fn matches(&self, version: &Version) -> bool {
        self.range.as_ref().is_none_or(|r| r.matches(version))
    }

    /// This dependency narrowed by a caller's own `range`: a provider must match both, so a
    /// `version` given with a call can only narrow what the manifest declared, never widen it.
    pub fn narrowed(&self, range: Option<&VersionReq>) -> Dependency {
        let range = match (&self.range, range) {
            (Some(a), Some(b)) => {
                // A `VersionReq` matches when all its comparators do: concatenating intersects.
                let comparators = a.comparators.iter().chain(&b.comparators).cloned().collect();
                Some(VersionReq { comparators })
            }
            (a, b) => a.clone().or_else(|| b.cloned()),
        };
        Dependency { name: self.name.clone(), range }
    }

    /// The range as text, `*` when any version will do.
    pub fn range_text(&self) -> String {
        self.range.as_ref().map_or_else(|| "*".to_owned(), ToString::to_string)
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.range {
            Some(r) => write!(f, "{}@{}", self.name, r),
            None => f.write_str(&self.name),
        }
    }
}

/// A service declared in `provides`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedService {
    /// Service name.
    pub name: String,
    /// Its version.
    pub version: Version,
}

/// `limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory cap in MiB (RLIMIT_DATA and cgroup memory).
    pub memory_mb: u64,
    /// CPU time in seconds (RLIMIT_CPU).
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// Process/thread cap (cgroup pids.max, RLIMIT_NPROC).
    pub processes: Option<u64>,
    /// Calls in flight per instance before queueing.
    pub max_inflight: u32,
    /// Calls waiting beyond `max_inflight` before `-32006` (extension).
    pub max_queue: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: DEFAULT_MEMORY_MB,
            cpu_seconds: None,
            open_files: DEFAULT_OPEN_FILES,
            processes: None,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queue: DEFAULT_MAX_QUEUE,
        }
    }
}

/// `restart.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartMode {
    /// Restart after a crash or a non-zero exit.
    #[default]
    OnFailure,
    /// Restart after any exit.
    Always,
    /// Never restart.
    Never,
}

/// `restart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When to restart.
    pub policy: RestartMode,
    /// Restarts allowed within `window_s` before `failed`.
    pub max_restarts: u32,
    /// The window for counting restarts.
    pub window_s: u64,
    /// When set, a failed plugin gets one new start per cool-down period.
    pub cooldown_s: Option<u64>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { policy: RestartMode::OnFailure, max_restarts: 5, window_s: 60, cooldown_s: None }
    }
}

/// A validated `plugin.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Unique plugin name.
    pub name: String,
    /// Plugin version.
    pub version: Version,
    /// Free text.
    pub description: Option<String>,
    /// Entry point relative to the plugin dir.
    pub main: Option<String>,
    /// Explicit argv, overriding the `main` rule.
    pub command: Option<Vec<String>>,
    /// Extra argv.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Services that must be up before this plugin starts.
    pub required: Vec<Dependency>,
    /// Services it may use if present.
    pub optional: Vec<Dependency>,
    /// Services known before start.
    pub provides: Vec<ProvidedService>,
    /// Granted permissions.
    pub permissions: Vec<Permission>,
    /// Free-form tags.
    pub capabilities: Vec<String>,
    /// Hook name → how this plugin takes part in that chain (priority: lower first).
    pub hooks: BTreeMap<String, HookSpec>,
    /// Per-call deadline.
    pub timeout_ms: u64,
    /// Ceiling for calls extended by `$/progress`.
    pub max_timeout_ms: u64,
    /// Budget from spawn until `register` is answered: start-up (a JVM, a large interpreter) is
    /// not held to the per-call deadline.
    pub startup_timeout_ms: u64,
    /// Resource limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Globs whose change hot-restarts the plugin (empty: `plugin.json` and `main`).
    pub watch: Vec<String>,
    /// Default config passed to `init`.
    pub config: Value,
    /// plugind versions this plugin works with.
    pub engines_plugind: Option<VersionReq>,
    /// Number of processes.
    pub instances: u32,
    /// What the plugin speaks on stdio.
    pub protocol: Protocol,
    /// The method catalog: method name → description, schemas, deadline.
    pub methods: BTreeMap<String, MethodSpec>,
    /// Unknown top-level fields, kept.
    pub extra: Map<String, Value>,
    /// Things that load but deserve a word (unknown permission names…).
    pub warnings: Vec<String>,
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer of the field (`/limits/memory_mb`); empty for the whole document.
    pub pointer: String,
    /// What was expected.
    pub expected: String,
    /// What was found (JSON text, shortened).
    pub found: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() { "(document)" } else { &self.pointer };
        write!(f, "{at}: expected {}, found {}", self.expected, self.found)
    }
}

/// Every problem found in one manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The problems, in document order.
    pub errors: Vec<FieldError>,
    /// What would have been warnings ([`Manifest::warnings`]: a misspelled field) had it loaded:
    /// told with the errors, so that one round of fixes is enough.
    pub warnings: Vec<String>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if !self.warnings.is_empty() {
            write!(f, " (and: {})", self.warnings.join("; "))?;
        }
        Ok(())
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Collects errors while walking the document.
struct Walker {
    errors: Vec<FieldError>,
}

impl Walker {
    fn err(&mut self, pointer: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) {
        self.errors.push(FieldError { pointer: pointer.into(), expected: expected.into(), found: found.into() });
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, required: bool) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) if !required => None,
            None => {
                self.err(format!("/{key}"), "a string (required)", "nothing");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.err(format!("/{key}"), "a string", describe(v));
                None
            }
        }
    }

    fn uint(&mut self, obj: &Map<String, Value>, base: &str, key: &str, min: u64) -> Option<u64> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= min => Some(n),
                _ => {
                    self.err(format!("{base}/{key}"), format!("an integer >= {min}"), describe(v));
                    None
                }
            },
        }
    }

    fn string_array(&mut self, v: Option<&Value>, pointer: &str) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.err(format!("{pointer}/{i}"), "a string", describe(other)),
                    }
                }
                out
            }
            Some(other) => {
                self.err(pointer, "an array of strings", describe(other));
                Vec::new()
            }
        }
    }

    fn object<'v>(&mut self, v: Option<&'v Value>, pointer: &str) -> Option<&'v Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                self.err(pointer, "an object", describe(other));
                None
            }
        }
    }

    /// A `hooks` value: an integer priority, or `{ priority?, timeout_ms?, failure?, mode? }`.
    fn hook(&mut self, v: &Value, pointer: &str, warnings: &mut Vec<String>) -> Option<HookSpec> {
        if let Some(priority) = v.as_i64() {
            return Some(HookSpec { priority, ..HookSpec::default() });
        }
        let Value::Object(o) = v else {
            self.err(pointer, "an integer priority or { priority, timeout_ms, failure, mode }", describe(v));
            return None;
        };
        unknown_keys(o, pointer, HOOK_KEYS, warnings);
        let errors = self.errors.len();
        let priority = match o.get("priority") {
            None | Some(Value::Null) => DEFAULT_HOOK_PRIORITY,
            Some(p) => p.as_i64().unwrap_or_else(|| {
                self.err(format!("{pointer}/priority"), "an integer", describe(p));
                0
            }),
        };
        let timeout_ms = self.uint(o, pointer, "timeout_ms", 1);
        let mut word = |key: &str, words: [&str; 2]| match o.get(key) {
            None | Some(Value::Null) => Some(false),
            Some(Value::String(s)) if s == words[0] => Some(false),
            Some(Value::String(s)) if s == words[1] => Some(true),
            Some(other) => {
                self.err(format!("{pointer}/{key}"), format!("{:?} or {:?}", words[0], words[1]), describe(other));
                None
            }
        };
        let closed = word("failure", ["open", "closed"]);
        let shadow = word("mode", ["enforce", "shadow"]);
        if self.errors.len() > errors {
            return None;
        }
        Some(HookSpec {
            priority,
            timeout_ms,
            failure: if closed == Some(true) { HookFailure::Closed } else { HookFailure::Open },
            mode: if shadow == Some(true) { HookMode::Shadow } else { HookMode::Enforce },
        })
    }

    fn dependencies(&mut self, v: Option<&Value>, pointer: &str) -> Vec<Dependency> {
        let names = self.string_array(v, pointer);
        let mut out = Vec::new();
        for (i, s) in names.iter().enumerate() {
            match Dependency::parse(s) {
                Ok(d) => out.push(d),
                Err(expected) => self.err(format!("{pointer}/{i}"), expected, describe(&Value::String(s.clone()))),
            }
        }
        out
    }
}

impl Walker {
    /// A `methods` value: `{ description?, params?, result?, timeout_ms?, idempotent? }`.
    fn method(&mut self, v: &Value, pointer: &str, max_timeout_ms: u64) -> Option<MethodSpec> {
        let Value::Object(o) = v else {
            self.err(pointer, "an object { description, params, result, timeout_ms, idempotent }", describe(v));
            return None;
        };
        let errors = self.errors.len();
        let description = match o.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(format!("{pointer}/description"), "a string", describe(other));
                None
            }
        };
        let mut schema = |key: &str| match o.get(key) {
            None | Some(Value::Null) => None,
            Some(s @ (Value::Object(_) | Value::Bool(_))) => Some(s.clone()),
            Some(other) => {
                self.err(format!("{pointer}/{key}"), "a JSON Schema (an object or a boolean)", describe(other));
                None
            }
        };
        let (params, result) = (schema("params"), schema("result"));
        let timeout_ms = match self.uint(o, pointer, "timeout_ms", 1) {
            Some(n) if n > max_timeout_ms => {
                self.err(
                    format!("{pointer}/timeout_ms"),
                    format!("an integer from 1 to {max_timeout_ms} (the plugin's max_timeout_ms)"),
                    n.to_string(),
                );
                None
            }
            n => n,
        };
        let idempotent = match o.get("idempotent") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.err(format!("{pointer}/idempotent"), "true or false", describe(other));
                None
            }
        };
        let extra = o
            .iter()
            .filter(|(k, _)| !METHOD_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (self.errors.len() == errors).then_some(MethodSpec {
            description,
            params,
            result,
            timeout_ms,
            idempotent,
            extra,
        })
    }

    /// The manifest's `methods` object.
    fn methods(&mut self, v: Option<&Value>, max_timeout_ms: u64) -> BTreeMap<String, MethodSpec> {
        let mut out = BTreeMap::new();
        let Some(m) = self.object(v, "/methods") else { return out };
        for (name, spec) in m {
            let pointer = format!("/methods/{}", escape_pointer(name));
            if name.is_empty() || name.len() > MAX_METHOD_NAME_BYTES {
                self.err(
                    pointer,
                    format!("a method name of 1 to {MAX_METHOD_NAME_BYTES} bytes"),
                    describe(&Value::String(name.clone())),
                );
                continue;
            }
            if let Some(spec) = self.method(spec, &pointer, max_timeout_ms) {
                out.insert(name.clone(), spec);
            }
        }
        out
    }
}

/// The keys of a `methods` value that plugind reads; others are kept in [`MethodSpec::extra`].
const METHOD_FIELDS: &[&str] = &["description", "params", "result", "timeout_ms", "idempotent"];

/// Escapes a key for a JSON pointer (`~` → `~0`, `/` → `~1`).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Whether `name` matches `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

const KNOWN_FIELDS: &[&str] = &[
    "$schema",
    "name",
    "version",
    "description",
    "main",
    "command",
    "args",
    "env",
    "dependencies",
    "provides",
    "permissions",
    "capabilities",
    "hooks",
    "timeout_ms",
    "max_timeout_ms",
    "startup_timeout_ms",
    "limits",
    "restart",
    "watch",
    "config",
    "engines",
    "instances",
    "protocol",
    "methods",
];

impl Manifest {
    /// Parses and validates a manifest from JSON text.
    pub fn parse(text: &[u8]) -> Result<Manifest, ManifestError> {
        let doc: Value = serde_json::from_slice(text).map_err(|e| ManifestError {
            errors: vec![FieldError {
                pointer: String::new(),
                expected: "a JSON object".into(),
                found: format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()),
            }],
            warnings: Vec::new(),
        })?;
        Self::from_value(&doc)
    }

    /// Validates an already parsed document.
    pub fn from_value(doc: &Value) -> Result<Manifest, ManifestError> {
        let Some(obj) = doc.as_object() else {
            return Err(ManifestError {
                errors: vec![FieldError {
                    pointer: String::new(),
                    expected: "a JSON object".into(),
                    found: describe(doc),
                }],
                warnings: Vec::new(),
            });
        };
        let mut w = Walker { errors: Vec::new() };
        let mut warnings = Vec::new();

        let name = w.string(obj, "name", true).unwrap_or_default();
        if obj.get("name").is_some_and(Value::is_string) && !is_valid_name(&name) {
            w.err("/name", "a name matching ^[a-z0-9][a-z0-9._-]{0,63}$", describe(&Value::String(name.clone())));
        }
        let version = match w.string(obj, "version", true) {
            Some(s) => match Version::parse(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    w.err("/version", format!("a semver version like 1.2.3 ({e})"), describe(&Value::String(s)));
                    None
                }
            },
            None => None,
        };
        let description = w.string(obj, "description", false);
        let main = w.string(obj, "main", false);
        let command = match obj.get("command") {
            None | Some(Value::Null) => None,
            v => {
                let argv = w.string_array(v, "/command");
                if argv.is_empty() && matches!(v, Some(Value::Array(_))) {
                    w.err("/command", "a non-empty array of strings", "[]");
                }
                // The program: "" would only fail at every start, with "cannot start \"\"".
                if argv.first().is_some_and(String::is_empty) {
                    w.err("/command/0", "the program to run (a non-empty string)", "\"\"");
                }
                Some(argv)
            }
        };
        if main.is_none()
            && command.is_none()
            && !w.errors.iter().any(|e| e.pointer == "/main" || e.pointer == "/command")
        {
            w.err("/main", "a path to the entry point (required unless \"command\" is given)", "nothing");
        }
        if let Some(m) = &main {
            if m.is_empty() {
                w.err("/main", "a non-empty relative path", "\"\"");
            } else if m.starts_with('/') {
                w.err("/main", "a path relative to the plugin directory", describe(&Value::String(m.clone())));
            } else if m.split('/').any(|part| part == "..") {
                // Outside the plugin's own directory the sandbox hides it (other plugins'
                // directories are covered): it would fail at every start, as a missing file.
                w.err(
                    "/main",
                    "a path inside the plugin directory (no \"..\"; a program elsewhere goes in \"command\")",
                    describe(&Value::String(m.clone())),
                );
            }
        }
        let args = w.string_array(obj.get("args"), "/args");
        let mut env = BTreeMap::new();
        if let Some(m) = w.object(obj.get("env"), "/env") {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        env.insert(k.clone(), s.clone());
                    }
                    Value::Number(_) | Value::Bool(_) => {
                        env.insert(k.clone(), v.to_string());
                    }
                    other => w.err(format!("/env/{}", escape_pointer(k)), "a string", describe(other)),
                }
            }
        }

        let (mut required, mut optional) = (Vec::new(), Vec::new());
        if let Some(d) = w.object(obj.get("dependencies"), "/dependencies") {
            unknown_keys(d, "/dependencies", DEPENDENCIES_KEYS, &mut warnings);
            required = w.dependencies(d.get("required"), "/dependencies/required");
            optional = w.dependencies(d.get("optional"), "/dependencies/optional");
        }

        let mut provides = Vec::new();
        match obj.get("provides") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("/provides/{i}");
                    let Some(o) = item.as_object() else {
                        w.err(p, "an object { \"name\", \"version\" }", describe(item));
                        continue;
                    };
                    let n = match o.get("name") {
                        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                        other => {
                            w.err(format!("{p}/name"), "a service name", other.map_or("nothing".into(), describe));
                            None
                        }
                    };
                    let v = match o.get("version").and_then(Value::as_str).map(Version::parse) {
                        Some(Ok(v)) => Some(v),
                        _ => {
                            w.err(
                                format!("{p}/version"),
                                "a semver version",
                                o.get("version").map_or("nothing".into(), describe),
                            );
                            None
                        }
                    };
                    if let (Some(name), Some(version)) = (n, v) {
                        provides.push(ProvidedService { name, version });
                    }
                }
            }
            Some(other) => w.err("/provides", "an array of { \"name\", \"version\" }", describe(other)),
        }

        let mut permissions = Vec::new();
        for (i, p) in w.string_array(obj.get("permissions"), "/permissions").iter().enumerate() {
            match Permission::from_name(p) {
                Some(perm) if !permissions.contains(&perm) => permissions.push(perm),
                Some(_) => {}
                None => warnings.push(format!(
                    "/permissions/{i}: unknown permission {p:?} ignored (known: networking, storage, filesystem, process)"
                )),
            }
        }
        let capabilities = w.string_array(obj.get("capabilities"), "/capabilities");

        let mut hooks = BTreeMap::new();
        if let Some(m) = w.object(obj.get("hooks"), "/hooks") {
            for (k, v) in m {
                let pointer = format!("/hooks/{}", escape_pointer(k));
                if k.is_empty() {
                    w.err(pointer, "a non-empty hook name", "\"\"");
                    continue;
                }
                if let Some(spec) = w.hook(v, &pointer, &mut warnings) {
                    hooks.insert(k.clone(), spec);
                }
            }
        }

        let timeout_ms = w.uint(obj, "", "timeout_ms", 1).unwrap_or(DEFAULT_TIMEOUT_MS);
        let max_timeout_ms = w.uint(obj, "", "max_timeout_ms", 1).unwrap_or(DEFAULT_MAX_TIMEOUT_MS.max(timeout_ms));
        // Both given and contradicting: the same error as a method's `timeout_ms` past the ceiling
        // (left alone, every call would silently get the smaller one).
        if timeout_ms > max_timeout_ms && obj.get("timeout_ms").is_some_and(Value::is_u64) {
            w.err(
                "/timeout_ms",
                format!("an integer from 1 to {max_timeout_ms} (the plugin's max_timeout_ms)"),
                timeout_ms.to_string(),
            );
        }
        let startup_timeout_ms = w.uint(obj, "", "startup_timeout_ms", 1).unwrap_or(DEFAULT_STARTUP_TIMEOUT_MS);

        let mut limits = Limits::default();
        if let Some(l) = w.object(obj.get("limits"), "/limits") {
            unknown_keys(l, "/limits", LIMITS_KEYS, &mut warnings);
            limits.memory_mb = w.uint(l, "/limits", "memory_mb", 1).unwrap_or(limits.memory_mb);
            limits.cpu_seconds = w.uint(l, "/limits", "cpu_seconds", 1);
            limits.open_files = w.uint(l, "/limits", "open_files", 8).unwrap_or(limits.open_files);
            limits.processes = match w.uint(l, "/limits", "processes", 1) {
                Some(n) if n > MAX_PROCESSES => {
                    w.err("/limits/processes", format!("an integer from 1 to {MAX_PROCESSES}"), n.to_string());
                    None
                }
                n => n,
            };
            limits.max_inflight = w.uint(l, "/limits", "max_inflight", 1).map_or(limits.max_inflight, clamp_u32);
            limits.max_queue = w.uint(l, "/limits", "max_queue", 0).map_or(limits.max_queue, clamp_u32);
        }

        let mut restart = RestartPolicy::default();
        if let Some(r) = w.object(obj.get("restart"), "/restart") {
            unknown_keys(r, "/restart", RESTART_KEYS, &mut warnings);
            match r.get("policy") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == "on-failure" => restart.policy = RestartMode::OnFailure,
                Some(Value::String(s)) if s == "always" => restart.policy = RestartMode::Always,
                Some(Value::String(s)) if s == "never" => restart.policy = RestartMode::Never,
                Some(other) => {
                    w.err("/restart/policy", "one of \"on-failure\", \"always\", \"never\"", describe(other))
                }
            }
            restart.max_restarts = w.uint(r, "/restart", "max_restarts", 0).map_or(restart.max_restarts, clamp_u32);
            restart.window_s = w.uint(r, "/restart", "window_s", 1).unwrap_or(restart.window_s);
            restart.cooldown_s = w.uint(r, "/restart", "cooldown_s", 1);
        }

        let watch = w.string_array(obj.get("watch"), "/watch");
        for (i, glob) in watch.iter().enumerate() {
            // Globs are matched against paths inside the plugin dir: one that leaves it would
            // never match, and the plugin would silently never reload.
            let leaves = glob.starts_with('/') || glob.split('/').any(|part| part == "..");
            if glob.is_empty() || leaves {
                w.err(
                    format!("/watch/{i}"),
                    "a glob relative to the plugin directory (not absolute, no \"..\")",
                    describe(&Value::String(glob.clone())),
                );
            }
        }
        // `init` always receives an object: none given is `{}`.
        let config = match obj.get("config") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => {
                w.err("/config", "an object", describe(other));
                Value::Null
            }
        };

        let mut engines_plugind = None;
        if let Some(e) = w.object(obj.get("engines"), "/engines") {
            match e.get("plugind") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => match VersionReq::parse(s) {
                    Ok(r) => engines_plugind = Some(r),
                    Err(err) => w.err(
                        "/engines/plugind",
                        format!("a semver range ({err})"),
                        describe(&Value::String(s.clone())),
                    ),
                },
                Some(other) => w.err("/engines/plugind", "a semver range", describe(other)),
            }
        }
        let instances = match w.uint(obj, "", "instances", 1) {
            Some(n) if n > MAX_INSTANCES => {
                w.err("/instances", format!("an integer from 1 to {MAX_INSTANCES}"), n.to_string());
                1
            }
            n => n.map_or(1, clamp_u32),
        };

        let protocol = match obj.get("protocol") {
            None | Some(Value::Null) => Protocol::Plugind,
            Some(Value::String(s)) if s == "plugind" => Protocol::Plugind,
            Some(Value::String(s)) if s == "mcp" => Protocol::Mcp,
            Some(other) => {
                w.err("/protocol", "\"plugind\" or \"mcp\"", describe(other));
                Protocol::Plugind
            }
        };
        let methods = w.methods(obj.get("methods"), max_timeout_ms);

        let extra: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Unknown fields are kept and ignored (`author`, `license`…), but one a letter or two
        // from a known field is a misspelling that silently leaves the default in force.
        for key in extra.keys() {
            if let Some(near) = KNOWN_FIELDS.iter().find(|known| close(known, key)) {
                warnings.push(format!("/{}: unknown field ignored (did you mean {near:?}?)", escape_pointer(key)));
            }
        }

        match version {
            Some(version) if w.errors.is_empty() => Ok(Manifest {
                name,
                version,
                description,
                main,
                command,
                args,
                env,
                required,
                optional,
                provides,
                permissions,
                capabilities,
                hooks,
                timeout_ms,
                max_timeout_ms,
                startup_timeout_ms,
                limits,
                restart,
                watch,
                config,
                engines_plugind,
                instances,
                protocol,
                methods,
                extra,
                warnings,
            }),
            _ => Err(ManifestError { errors: w.errors, warnings }),
        }
    }

    /// Whether the plugin declares service `name`: its own name, or one in `provides`.
    pub fn declares_service(&self, name: &str) -> bool {
        name == self.name || self.provides.iter().any(|p| p.name == name)
    }

    /// Whether the manifest grants `p`.
    pub fn grants(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// Every dependency, required first.
    pub fn dependencies(&self) -> impl Iterator<Item = (&Dependency, bool)> {
        self.required.iter().map(|d| (d, true)).chain(self.optional.iter().map(|d| (d, false)))
    }
}

/// Best-effort `name` and `version` of a manifest that failed validation, for status listings.
pub fn salvage_identity(text: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(text) else { return (None, None) };
    let get = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    (get("name"), get("version"))
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Manifest, ManifestError> {
        Manifest::from_value(&v)
    }

    #[test]
    fn a_callers_range_only_narrows_the_declared_one() {
        let v = |s: &str| Version::parse(s).unwrap();
        let declared = Dependency::parse("dep@^1").unwrap();
        let asked = VersionReq::parse(">=2").unwrap();
        let both = declared.narrowed(Some(&asked));
        assert!(!both.matches(&v("2.0.0")) && !both.matches(&v("1.5.0")), "{both}");
        let within = declared.narrowed(Some(&VersionReq::parse(">=1.2").unwrap()));
        assert!(within.matches(&v("1.5.0")) && !within.matches(&v("1.1.0")), "{within}");
        assert_eq!(declared.narrowed(None), declared);
        let any = Dependency::parse("dep").unwrap();
        assert_eq!(any.narrowed(Some(&asked)).range, Some(asked));
    }

    #[test]
    fn config_is_an_object_and_instances_are_bounded() {
        let base = json!({"name": "p", "version": "1.0.0", "main": "m.py"});
        assert_eq!(parse(base.clone()).unwrap().config, json!({}));
        let mut m = base.clone();
        m["instances"] = json!(MAX_INSTANCES);
        assert_eq!(parse(m.clone()).unwrap().instances, 64);
        m["instances"] = json!(2_000_000_000u64);
        let e = parse(m).unwrap_err();
        assert_eq!(e.errors[0].pointer, "/instances");
        assert!(e.errors[0].expected.contains("1 to 64"), "{e}");
    }

    #[test]
    fn seed_manifest_loads_unchanged() {
        let m = parse(json!({
            "$schema": "./plugin-schema.json",
            "name": "llama-extension",
            "version": "1.0.0",
            "main": "./dist/index.js",
            "dependencies": { "required": ["llm-service@^2.0.0"], "optional": ["filesystem-access"] },
            "permissions": ["networking", "storage"],
            "capabilities": ["llm", "ui-extension"]
        }))
        .unwrap();
        assert_eq!(m.name, "llama-extension");
        assert_eq!(m.required[0].name, "llm-service");
        assert!(m.required[0].matches(&Version::new(2, 3, 0)));
        assert!(!m.required[0].matches(&Version::new(3, 0, 0)));
        assert_eq!(m.optional[0].range, None);
        assert!(m.grants(Permission::Storage) && !m.grants(Permission::Process));
        assert_eq!(m.timeout_ms, 5000);
        assert_eq!(m.limits, Limits::default());
        assert!(m.extra.is_empty(), "$schema is a known field");
    }

    #[test]
    fn every_error_is_reported_with_its_pointer() {
        let e = parse(json!({
            "name": "Bad Name",
            "version": "one",
            "main": "x.py",
            "limits": { "memory_mb": -1, "open_files": "many" },
            "restart": { "policy": "sometimes" },
            "dependencies": { "required": ["ok@^1", "broken@>>2"] }
        }))
        .unwrap_err();
        let pointers: Vec<_> = e.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/name",
                "/version",
                "/dependencies/required/1",
                "/limits/memory_mb",
                "/limits/open_files",
                "/restart/policy"
            ]
        );
        assert!(e.to_string().contains("/version: expected a semver version"), "{e}");
    }

    #[test]
    fn missing_main_and_command_is_an_error() {
        let e = parse(json!({"name": "a", "version": "1.0.0"})).unwrap_err();
        assert_eq!(e.errors[0].pointer, "/main");
    }

    #[test]
    fn command_replaces_main() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "command": ["perl", "x.pl"]})).unwrap();
        assert_eq!(m.command.unwrap(), ["perl", "x.pl"]);
    }

    #[test]
    fn unknown_fields_are_kept() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh", "author": "me"})).unwrap();
        assert_eq!(m.extra["author"], "me");
    }

    #[test]
    fn not_json_is_reported() {
        let e = Manifest::parse(b"{ \"name\": ").unwrap_err();
        assert!(e.errors[0].found.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(is_valid_name("echo") && is_valid_name("a.b_c-d") && is_valid_name("9x"));
        assert!(
            !is_valid_name("") && !is_valid_name("Echo") && !is_valid_name("-x") && !is_valid_name(&"a".repeat(65))
        );
    }

    #[test]
    fn methods_and_protocol_are_parsed_with_pointers() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh", "max_timeout_ms": 1000,
        "methods": {
            "greet": {"description": "hi", "params": {"type": "object"}, "timeout_ms": 200,
                      "idempotent": true, "x-note": 1},
            "any": {"params": true}
        }}))
        .unwrap();
        assert_eq!(m.protocol, Protocol::Plugind);
        let greet = &m.methods["greet"];
        assert_eq!((greet.timeout_ms, greet.idempotent), (Some(200), Some(true)));
        assert_eq!(greet.extra["x-note"], 1, "unknown keys are kept");
        assert_eq!(m.methods["any"].params, Some(json!(true)));
        assert!(m.extra.is_empty(), "methods and protocol are known fields");
        let mcp = parse(json!({"name": "a", "version": "1.0.0", "main": "a", "protocol": "mcp"})).unwrap();
        assert_eq!(mcp.protocol, Protocol::Mcp);

        let e = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh", "protocol": "grpc",
        "methods": {
            "a": {"params": "object", "timeout_ms": 60001, "idempotent": "yes"},
            "b": [],
            "": {}
        }}))
        .unwrap_err();
        let pointers: Vec<_> = e.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/protocol",
                "/methods/",
                "/methods/a/params",
                "/methods/a/timeout_ms",
                "/methods/a/idempotent",
                "/methods/b"
            ]
        );
        assert!(e.to_string().contains("from 1 to 60000"), "{e}");
    }

    #[test]
    fn values_that_could_only_fail_later_are_load_errors_naming_the_field() {
        let e = parse(json!({"name": "a", "version": "1.0.0", "command": ["", "x"],
            "timeout_ms": 90000, "max_timeout_ms": 60000,
            "hooks": {"": 1, "onRequest": 2},
            "watch": ["src/*.py", "./lib/**", "/etc/*", "../other/*", "a/../b", ""]}))
        .unwrap_err();
        let pointers: Vec<_> = e.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/command/0", "/hooks/", "/timeout_ms", "/watch/2", "/watch/3", "/watch/4", "/watch/5"]);
        assert!(e.to_string().contains("/timeout_ms: expected an integer from 1 to 60000"), "{e}");
        // timeout_ms alone raises the default ceiling, and max_timeout_ms alone may sit under the
        // default timeout_ms (the ceiling caps it), as before; empty arguments after the program are argv.
        let m = parse(json!({"name": "a", "version": "1.0.0", "command": ["x", ""], "timeout_ms": 90000})).unwrap();
        assert_eq!((m.timeout_ms, m.max_timeout_ms), (90000, 90000));
        parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh", "max_timeout_ms": 1000})).unwrap();
    }

    #[test]
    fn misspelled_keys_in_hooks_and_dependencies_warn() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh",
            "hooks": {"onRequest": {"priorty": 3, "failure": "closed"}, "onError": 1},
            "dependencies": {"requird": ["b"], "optional": ["c"]}}))
        .unwrap();
        assert_eq!(
            m.warnings,
            [
                "/dependencies/requird: unknown field ignored (known: required, optional)",
                "/hooks/onRequest/priorty: unknown field ignored (known: priority, timeout_ms, failure, mode)",
            ]
        );
        assert_eq!(m.hooks["onRequest"].failure, HookFailure::Closed);
        assert_eq!(m.optional[0].name, "c");
    }

    #[test]
    fn misspelled_top_level_fields_warn_and_other_unknown_fields_do_not() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh",
            "permisions": ["storage"], "dependecies": {"required": ["b"]}, "Provides": [],
            "author": "me", "license": "MIT", "repository": "x", "homepage": "y", "keywords": [], "tags": []}))
        .unwrap();
        assert_eq!(
            m.warnings,
            [
                "/Provides: unknown field ignored (did you mean \"provides\"?)",
                "/dependecies: unknown field ignored (did you mean \"dependencies\"?)",
                "/permisions: unknown field ignored (did you mean \"permissions\"?)",
            ]
        );
        assert!(m.extra.contains_key("permisions") && m.extra.contains_key("author"));
        assert!(m.permissions.is_empty());
    }

    /// A manifest with errors tells its misspellings too: every problem in one round (audit 20:
    /// the misspellings showed up only once the errors were fixed).
    #[test]
    fn errors_come_with_the_misspellings() {
        let e = Manifest::from_value(&json!({"name": "a", "version": "v1", "main": "a.sh",
            "permisions": ["storage"], "limits": {"memroy_mb": 5}}))
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("/version: expected"), "{text}");
        assert!(text.contains("/permisions: unknown field ignored (did you mean \"permissions\"?)"), "{text}");
        assert!(text.contains("/limits/memroy_mb"), "{text}");
    }

    #[test]
    fn unknown_permission_warns() {
        let m = parse(json!({"name": "a", "version": "1.0.0", "main": "a.sh", "permissions": ["telepathy"]})).unwrap();
        assert!(m.permissions.is_empty());
        assert!(m.warnings[0].contains("telepathy"));
    }
}
