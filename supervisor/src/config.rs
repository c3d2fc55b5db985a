//! The daemon's settings: flags, the TOML config file (`plugind.toml`, `--config FILE`) and
//! defaults, merged in that order of precedence (flags > file > defaults; `docs/configuration.md`).
//!
//! The file has the flags' keys at the top level plus one `[plugins.NAME]` table per plugin the
//! operator wants to adjust (`enabled`, `config`, `limits`, `env`), merged over that plugin's
//! manifest: the operator wins. Unknown keys and bad values are errors naming the key and the file.

use plugind_protocol::manifest::{self, Manifest};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How plugind's own log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected \"text\" or \"json\", found {other:?}")),
        }
    }
}

/// Default graceful stop budget (SIGTERM → every plugin torn down).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a `--listen` connection may go without a sign of its peer before TCP keepalive
/// probes start; a peer that answers none of them is dropped after as long again.
pub const DEFAULT_LISTEN_KEEPALIVE: Duration = Duration::from_secs(30);
/// Default `ready_timeout_s`: under systemd's default start timeout (90 s), so that a plugin
/// hanging in `init` through its restarts (minutes) cannot get plugind killed as failing to start.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default health ping period: 10 s.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default log lines kept per plugin.
pub const DEFAULT_LOG_LINES: usize = 1000;

/// Threads for plugind's tasks when `worker_threads` is not set: half the CPUs this process may
/// run on, at least one.
///
/// plugind's share of a call is small (a few microseconds) and its plugins run on the same CPUs.
/// A worker per CPU (tokio's default) made plugind's tasks wake each other across CPUs and
/// contend with the plugins: on 2 vCPUs with 256 calls in flight, plugind spent 6.9 µs of CPU
/// per call with two workers and 3.7 µs with one (docs/benchmarks.md, "Worker threads").
/// Blocking work (spawning a plugin, the kv store) runs off the workers, so one is enough to
/// keep serving while a plugin starts.
pub fn default_worker_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cpus / 2).max(1)
}

/// Settings of one plugind.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories scanned for plugins (`--plugins`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Control socket path.
    pub socket: PathBuf,
    /// Where state lives (kv store, data dirs, temp dirs).
    pub state_dir: PathBuf,
    /// Hot reload on file changes.
    pub watch: bool,
    /// Health ping period (default 10 s).
    pub ping_interval: Duration,
    /// Log lines kept per plugin.
    pub log_lines: usize,
    /// Format of plugind's own log lines.
    pub log_format: LogFormat,
    /// `--listen ADDR`: the control API over HTTP and WebSocket (needs `token_file`).
    pub listen: Option<String>,
    /// The bearer token for `listen`, one line in a file.
    pub token_file: Option<PathBuf>,
    /// How long a `listen` connection's peer may give no sign of life before it is probed;
    /// unanswered, it is dropped after as long again ([`DEFAULT_LISTEN_KEEPALIVE`]).
    pub listen_keepalive: Duration,
    /// `--metrics ADDR`: `GET /metrics` over HTTP.
    pub metrics: Option<String>,
    /// `--otlp-endpoint URL`: where spans go (OTLP/HTTP, `URL/v1/traces`); none: no span is built.
    pub otlp_endpoint: Option<String>,
    /// How long a graceful stop may take before plugind exits anyway.
    pub stop_timeout: Duration,
    /// The longest plugind waits for its plugins to settle before it is ready (`READY=1`), at
    /// start and after a SIGHUP reload; they go on starting after it.
    pub ready_timeout: Duration,
    /// Threads running plugind's tasks (`None`: [`default_worker_threads`]).
    pub worker_threads: Option<usize>,
    /// Per-plugin operator settings (`[plugins.NAME]`).
    pub plugins: BTreeMap<String, PluginSettings>,
    /// The config file these settings came from, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Defaults around the given plugin dirs and socket.
    pub fn new(plugin_dirs: Vec<PathBuf>, socket: PathBuf, state_dir: PathBuf) -> Self {
        Config {
            plugin_dirs,
            socket,
            state_dir,
            watch: true,
            ping_interval: DEFAULT_PING_INTERVAL,
            log_lines: DEFAULT_LOG_LINES,
            log_format: LogFormat::Text,
            listen: None,
            token_file: None,
            listen_keepalive: DEFAULT_LISTEN_KEEPALIVE,
            metrics: None,
            otlp_endpoint: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            worker_threads: None,
            plugins: BTreeMap::new(),
            file: None,
        }
    }

    /// Merges the flags over the config file (if any) over the defaults, and checks the result.
    /// Relative paths in the file are relative to the file's directory; relative flags to the
    /// working directory.
    pub fn resolve(flags: Settings, file: Option<(PathBuf, Settings)>) -> Result<Config, ConfigError> {
        let (path, mut from_file) = match file {
            Some((p, s)) => (Some(p), s),
            None => (None, Settings::default()),
        };
        if let Some(p) = &path {
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            let rel = |x: PathBuf| if x.is_absolute() { x } else { base.join(x) };
            from_file.plugin_dirs = from_file.plugin_dirs.map(|v| v.into_iter().map(rel).collect());
            from_file.socket = from_file.socket.map(rel);
            from_file.state_dir = from_file.state_dir.map(rel);
            from_file.token_file = from_file.token_file.map(rel);
        }
        let err = |key: &str, message: String| ConfigError { file: path.clone(), key: Some(key.to_owned()), message };
        // A key set by a flag is reported as the flag; otherwise as the file's key.
        let origin =
            |key: &str, by_flag: bool| if by_flag { format!("--{}", key.replace('_', "-")) } else { key.to_owned() };

        // Relative paths are resolved against plugind's working directory once, here: a plugin
        // runs in its own directory, so a relative TMPDIR or data dir would not exist from there.
        let mut c = Config::new(
            flags.plugin_dirs.or(from_file.plugin_dirs).unwrap_or_default().into_iter().map(real_dir).collect(),
            absolute(flags.socket.or(from_file.socket).unwrap_or_else(plugind_client::default_socket)),
            absolute(flags.state_dir.or(from_file.state_dir).unwrap_or_else(default_state_dir)),
        );
        c.watch = flags.watch.or(from_file.watch).unwrap_or(true);
        c.log_format = flags.log_format.or(from_file.log_format).unwrap_or_default();
        c.file = path.clone();

        let by_flag = flags.ping_interval_ms.is_some();
        if let Some(ms) = flags.ping_interval_ms.or(from_file.ping_interval_ms) {
            if ms < 10 {
                return Err(err(&origin("ping_interval_ms", by_flag), format!("expected at least 10, found {ms}")));
            }
            c.ping_interval = Duration::from_millis(ms);
        }
        let by_flag = flags.stop_timeout_s.is_some();
        if let Some(s) = flags.stop_timeout_s.or(from_file.stop_timeout_s) {
            if s < 1 {
                return Err(err(&origin("stop_timeout_s", by_flag), format!("expected at least 1, found {s}")));
            }
            c.stop_timeout = Duration::from_secs(s);
        }
        let by_flag = flags.listen_keepalive_s.is_some();
        if let Some(s) = flags.listen_keepalive_s.or(from_file.listen_keepalive_s) {
            if !(1..=3600).contains(&s) {
                return Err(err(&origin("listen_keepalive_s", by_flag), format!("expected 1 to 3600, found {s}")));
            }
            c.listen_keepalive = Duration::from_secs(s);
        }
        let by_flag = flags.ready_timeout_s.is_some();
        if let Some(s) = flags.ready_timeout_s.or(from_file.ready_timeout_s) {
            if !(1..=86_400).contains(&s) {
                return Err(err(&origin("ready_timeout_s", by_flag), format!("expected 1 to 86400, found {s}")));
            }
            c.ready_timeout = Duration::from_secs(s);
        }
        let by_flag = flags.log_lines.is_some();
        if let Some(n) = flags.log_lines.or(from_file.log_lines) {
            if n < 1 {
                return Err(err(&origin("log_lines", by_flag), format!("expected at least 1, found {n}")));
            }
            c.log_lines = n;
        }
        let by_flag = flags.worker_threads.is_some();
        if let Some(n) = flags.worker_threads.or(from_file.worker_threads) {
            if n < 1 {
                return Err(err(&origin("worker_threads", by_flag), format!("expected at least 1, found {n}")));
            }
            c.worker_threads = Some(n);
        }
        let listen_by_flag = flags.listen.is_some();
        for (key, by_flag, addr) in [
            ("listen", flags.listen.is_some(), flags.listen.or(from_file.listen)),
            ("metrics", flags.metrics.is_some(), flags.metrics.or(from_file.metrics)),
        ] {
            if let Some(a) = &addr {
                check_addr(a).map_err(|m| err(&origin(key, by_flag), m))?;
            }
            match key {
                "listen" => c.listen = addr,
                _ => c.metrics = addr,
            }
        }
        let by_flag = flags.otlp_endpoint.is_some();
        if let Some(url) = flags.otlp_endpoint.or(from_file.otlp_endpoint) {
            otlp_endpoint_problem(&url).map_or(Ok(()), |why| Err(err(&origin("otlp_endpoint", by_flag), why)))?;
            c.otlp_endpoint = Some(url);
        }
        c.token_file = flags.token_file.or(from_file.token_file).map(absolute);
        if c.listen.is_some() && c.token_file.is_none() {
            return Err(ConfigError {
                file: if listen_by_flag { None } else { path.clone() },
                key: Some(origin("listen", listen_by_flag)),
                message: "serving the API over HTTP needs a bearer token: set --token-file (or token_file)".into(),
            });
        }
        for (name, p) in &from_file.plugins {
            if !manifest::is_valid_name(name) {
                return Err(err(&format!("plugins.{name}"), "not a valid plugin name".into()));
            }
            if let Some(l) = &p.limits {
                l.check().map_err(|(k, m)| err(&format!("plugins.{name}.limits.{k}"), m))?;
            }
        }
        c.plugins = from_file.plugins;
        Ok(c)
    }

    /// The operator's settings for one plugin, if the config file has a table for it.
    pub fn plugin(&self, name: &str) -> Option<&PluginSettings> {
        self.plugins.get(name)
    }

    /// Whether the config file lets this plugin start at boot (`enabled`, default true).
    pub fn enabled(&self, name: &str) -> bool {
        self.plugin(name).and_then(|p| p.enabled).unwrap_or(true)
    }
}

/// `ADDR` of `--listen`/`--metrics`: something `HOST:PORT` resolves to.
fn check_addr(a: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    match a.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("{a:?} resolves to no address")),
        Err(e) => Err(format!("expected HOST:PORT (like 127.0.0.1:7070), found {a:?}: {e}")),
    }
}

/// One layer of settings: what the flags say, or what the config file says. Every key is
/// optional; [`Config::resolve`] merges the layers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `--plugins DIR`… (replaces the file's list when given).
    pub plugin_dirs: Option<Vec<PathBuf>>,
    /// `--socket PATH`.
    pub socket: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--no-watch` sets false.
    pub watch: Option<bool>,
    /// `--log-format text|json`.
    pub log_format: Option<LogFormat>,
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--token-file FILE`.
    pub token_file: Option<PathBuf>,
    /// `--listen-keepalive-s S`.
    pub listen_keepalive_s: Option<u64>,
    /// `--metrics ADDR`.
    pub metrics: Option<String>,
    /// `--otlp-endpoint URL`.
    pub otlp_endpoint: Option<String>,
    /// `--ping-interval-ms MS`.
    pub ping_interval_ms: Option<u64>,
    /// `--stop-timeout-s S`.
    pub stop_timeout_s: Option<u64>,
    /// `--ready-timeout-s S`.
    pub ready_timeout_s: Option<u64>,
    /// `--log-lines N`.
    pub log_lines: Option<usize>,
    /// `--worker-threads N`.
    pub worker_threads: Option<usize>,
    /// `[plugins.NAME]` tables (config file only).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSettings>,
}

impl Settings {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Settings::parse(&text, path)
    }

    /// Parses config file text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError {
            file: Some(path.to_path_buf()),
            key: None,
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

/// `[plugins.NAME]`: what the operator changes about one plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// `false`: listed `stopped` and not started at boot (`pluginctl start` still works).
    pub enabled: Option<bool>,
    /// Merged over the manifest's `config` (tables key by key, anything else replaced); the
    /// result is what `init` receives.
    pub config: Option<toml::Table>,
    /// Replaces the manifest's limits one by one.
    pub limits: Option<LimitOverrides>,
    /// Extra environment variables, over the manifest's `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The priority of each hook the manifest takes part in, replacing the manifest's: the
    /// author chooses where a plugin runs in a chain, and one placed first could `stop` the
    /// chain before the operator's auth hook (audit 16). A hook the manifest does not declare is
    /// ignored.
    #[serde(default)]
    pub hooks: BTreeMap<String, i64>,
}

impl PluginSettings {
    /// The operator's `config` as JSON.
    pub fn config_json(&self) -> Option<Value> {
        self.config.as_ref().map(|t| toml_to_json(&toml::Value::Table(t.clone())))
    }
}

/// `[plugins.NAME.limits]`: the manifest's `limits` keys, each optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// MiB.
    pub memory_mb: Option<u64>,
    /// Seconds of CPU time.
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors.
    pub open_files: Option<u64>,
    /// Processes/threads.
    pub processes: Option<u64>,
    /// Calls in flight per instance.
    pub max_inflight: Option<u32>,
    /// Calls queued beyond `max_inflight`.
    pub max_queue: Option<u32>,
}

impl LimitOverrides {
    /// The same minimums as the manifest's: `(key, message)` for the first value below one.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let min = |key: &'static str, v: Option<u64>, min: u64| match v {
            Some(v) if v < min => Err((key, format!("expected at least {min}, found {v}"))),
            _ => Ok(()),
        };
        min("memory_mb", self.memory_mb, 1)?;
        min("cpu_seconds", self.cpu_seconds, 1)?;
        min("open_files", self.open_files, 8)?;
        min("processes", self.processes, 1)?;
        min("max_inflight", self.max_inflight.map(u64::from), 1)?;
        Ok(())
    }

    /// Writes these limits over a manifest's.
    pub fn apply(&self, m: &mut Manifest) {
        let l = &mut m.limits;
        if let Some(v) = self.memory_mb {
            l.memory_mb = v;
        }
        if let Some(v) = self.cpu_seconds {
            l.cpu_seconds = Some(v);
        }
        if let Some(v) = self.open_files {
            l.open_files = v;
        }
        if let Some(v) = self.processes {
            l.processes = Some(v);
        }
        if let Some(v) = self.max_inflight {
            l.max_inflight = v;
        }
        if let Some(v) = self.max_queue {
            l.max_queue = v;
        }
    }
}

/// TOML to JSON; dates and times become their RFC 3339 text.
pub fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

/// `over` merged into `base`: objects key by key (recursively), anything else replaced.
pub fn merge_json(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => merge_json(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, o) => o,
    }
}

/// A bad setting: the file (if it came from one), the key, and what is wrong. plugind prints it
/// and exits 1.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The config file, or None for a flag.
    pub file: Option<PathBuf>,
    /// The key (`plugins.echo.limits.memory_mb`) or flag (`--listen`), when known apart from
    /// the message.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Paths under the state dir.
#[derive(Debug, Clone)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    /// Paths under `root`.
    pub fn new(root: &Path) -> Self {
        StatePaths { root: root.to_path_buf() }
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which directory held each plugin name when plugind last scanned (`discovery::NameHolders`).
    pub fn names_file(&self) -> PathBuf {
        self.root.join("names.json")
    }

    /// A plugin's data dir (with `storage`).
    pub fn data_dir(&self, plugin: &str) -> PathBuf {
        self.root.join("data").join(plugin)
    }

    /// An instance's private temp dir.
    pub fn tmp_dir(&self, plugin: &str, instance: u64) -> PathBuf {
        self.root.join("tmp").join(format!("{plugin}-{instance}"))
    }
}

/// The state dir when none is given: `$STATE_DIRECTORY`, else `./state`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d.to_string_lossy().split(':').next().unwrap_or_default()),
        None => PathBuf::from("state"),
    }
}

/// What the operator changes about plugins (`[plugins.NAME]` of the config file).
impl Config {
    /// Writes the operator's `limits` for `m.name` over the manifest's. Applied wherever a
    /// manifest is loaded from disk (a rescan, a hot reload).
    pub fn apply_overrides(&self, m: &mut Manifest) {
        let Some(settings) = self.plugin(&m.name) else { return };
        if let Some(l) = settings.limits.as_ref() {
            l.apply(m);
        }
        for (hook, priority) in &settings.hooks {
            if let Some(spec) = m.hooks.get_mut(hook) {
                spec.priority = *priority;
            }
        }
    }

    /// The operator's extra environment for a plugin (`[plugins.NAME] env`).
    pub fn operator_env(&self, plugin: &str) -> Vec<(String, String)> {
        self.plugin(plugin).map(|p| p.env.clone().into_iter().collect()).unwrap_or_default()
    }

    /// The config passed to `init`: the manifest's `config` with the operator's merged over it.
    pub fn plugin_config(&self, m: &Manifest) -> serde_json::Value {
        match self.plugin(&m.name).and_then(PluginSettings::config_json) {
            Some(over) => merge_json(m.config.clone(), over),
            None => m.config.clone(),
        }
    }
}

/// `p` against the working directory if it is relative (lexically: no symlink is resolved and
/// the path need not exist yet). Left as it is if the working directory cannot be read.
/// A plugins directory as the kernel names it: symlinks and `..` resolved. The sandbox covers
/// and binds plugin directories by path, and a path through a symlink (`/etc/plugind/plugins ->
/// /opt/…`) or with a `..` named a different place inside a plugin's mount namespace: no plugin
/// could start. A directory that does not exist yet stays as given (made absolute).
fn real_dir(p: PathBuf) -> PathBuf {
    std::fs::canonicalize(&p).unwrap_or_else(|_| absolute(p))
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::path::absolute(&p).unwrap_or(p)
}

/// What is wrong with an OTLP endpoint, if anything: plugind speaks plain OTLP/HTTP to
/// `http://HOST[:PORT][/PATH]`, and anything else would only fail at every export, with a
/// vaguer message (or, for a password in the URL, end up in the log).
fn otlp_endpoint_problem(url: &str) -> Option<String> {
    let expected = "expected http://HOST[:PORT][/PATH] (OTLP/HTTP; for https run a local collector)";
    let Some(rest) = url.strip_prefix("http://") else { return Some(format!("{expected}, found {url:?}")) };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Some(format!("no host in {url:?}"));
    }
    if authority.contains('@') {
        return Some(format!("{expected}, without credentials (they would be logged), found a user in the URL"));
    }
    if url.contains(['?', '#']) {
        return Some(format!("{expected}, without a query or fragment (spans go to PATH/v1/traces), found {url:?}"));
    }
    // The port: after the last ':' unless that is inside an IPv6 literal's brackets.
    if let Some((_, port)) = authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Some(format!("{expected}, with a port from 1 to 65535, found {url:?}"));
        }
    }
    if url.parse::<http::Uri>().is_err() {
        return Some(format!("{expected}, found {url:?}"));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn otlp_endpoints_that_could_never_work_are_refused_at_start() {
        for good in ["http://127.0.0.1:4318", "http://collector", "http://h:4318/otlp/", "http://[::1]:4318"] {
            assert_eq!(otlp_endpoint_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("https://collector:4318", "for https run a local collector"),
            ("collector:4318", "expected http://"),
            ("http://", "no host"),
            ("http://127.0.0.1:99999", "port from 1 to 65535"),
            ("http://h:0", "port from 1 to 65535"),
            ("http://h:4318?x=1", "without a query"),
            ("http://u:secret@h:4318", "without credentials"),
        ] {
            let problem = otlp_endpoint_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(why) && !problem.contains("secret"), "{bad}: {problem}");
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let s = Settings::parse(text, Path::new("/etc/plugind/plugind.toml"))?;
        Config::resolve(Settings::default(), Some((PathBuf::from("/etc/plugind/plugind.toml"), s)))
    }

    #[test]
    fn keys_merge_with_flags_winning() {
        let text = r#"
plugin_dirs = ["plugins", "/opt/plugins"]
socket = "/run/x.sock"
watch = false
log_format = "json"
stop_timeout_s = 5
ping_interval_ms = 500
worker_threads = 3
[plugins.echo]
enabled = false
env = { A = "1" }
config = { greeting = "hi", nested = { x = 1 } }
limits = { memory_mb = 64 }
"#;
        let s = Settings::parse(text, Path::new("/etc/plugind/plugind.toml")).unwrap();
        let flags = Settings { socket: Some("/tmp/flag.sock".into()), ..Default::default() };
        let c = Config::resolve(flags, Some(("/etc/plugind/plugind.toml".into(), s))).unwrap();
        assert_eq!(c.plugin_dirs, vec![PathBuf::from("/etc/plugind/plugins"), PathBuf::from("/opt/plugins")]);
        assert_eq!(c.socket, PathBuf::from("/tmp/flag.sock"));
        assert!(!c.watch);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.stop_timeout, Duration::from_secs(5));
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.worker_threads, Some(3));
        assert!(!c.enabled("echo"));
        assert!(c.enabled("other"));
        let p = c.plugin("echo").unwrap();
        assert_eq!(p.env["A"], "1");
        assert_eq!(p.limits.as_ref().unwrap().memory_mb, Some(64));
        let merged = merge_json(serde_json::json!({"greeting": "hello", "nested": {"y": 2}}), p.config_json().unwrap());
        assert_eq!(merged, serde_json::json!({"greeting": "hi", "nested": {"x": 1, "y": 2}}));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = parse("bogus = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/plugind/plugind.toml: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[plugins.echo]\nenable = false\n").unwrap_err().to_string();
        assert!(e.contains("enable"), "{e}");
        let e = parse("stop_timeout_s = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("stop_timeout_s"), "{e}");
        let e = parse("log_format = \"xml\"\n").unwrap_err().to_string();
        assert!(e.contains("xml"), "{e}");
        let e = parse("[plugins.echo.limits]\nmemory_mb = 0\n").unwrap_err().to_string();
        assert!(e.contains("plugins.echo.limits.memory_mb: expected at least 1, found 0"), "{e}");
        let e = parse("worker_threads = 0\n").unwrap_err().to_string();
        assert!(e.contains("worker_threads: expected at least 1, found 0"), "{e}");
        let e = parse("listen_keepalive_s = 0\n").unwrap_err().to_string();
        assert!(e.contains("listen_keepalive_s: expected 1 to 3600, found 0"), "{e}");
        let e = parse("listen = \"127.0.0.1:7070\"\n").unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        let e = parse("listen = \"nowhere\"\ntoken_file = \"t\"\n").unwrap_err().to_string();
        assert!(e.contains("listen: expected HOST:PORT"), "{e}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_working_directory() {
        let flags = Settings {
            plugin_dirs: Some(vec!["plugins".into()]),
            state_dir: Some("state".into()),
            socket: Some("plugind.sock".into()),
            ..Default::default()
        };
        let c = Config::resolve(flags, None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.plugin_dirs, [cwd.join("plugins")]);
        assert_eq!(c.state_dir, cwd.join("state"));
        assert_eq!(c.socket, cwd.join("plugind.sock"));
    }

    #[test]
    fn flags_alone_give_the_defaults() {
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert!(c.watch);
        assert_eq!(c.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(c.log_lines, DEFAULT_LOG_LINES);
        assert_eq!(c.worker_threads, None);
        assert!(default_worker_threads() >= 1);
        let e =
            Config::resolve(Settings { listen: Some("127.0.0.1:1".into()), ..Default::default() }, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("--listen"));
        assert!(e.file.is_none());
    }
}
