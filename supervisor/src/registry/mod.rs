//! The service registry: which services exist, who provides them, which one a call goes to.
//!
//! Every plugin provides a service named after itself at its own version and the services of its
//! manifest's `provides`; its `register` answer may add methods and capabilities to those, but
//! never a service its manifest does not declare ([`rules`]). Hosts provide services too
//! (`services.register` on a control connection, for as long as the connection stays open).
//! Only running plugins' services are offered to callers.
//!
//! A caller's `version` only narrows: a plugin's call resolves against its manifest's declared
//! range and the range it gives, both ([`Dependency::narrowed`]).
//!
//! A plugin's own name is its service alone: another plugin's `provides` (or `register` answer)
//! naming a plugin in the table is not routed, whatever its version. Both lists are written by
//! the same author, so a check against the manifest alone let a plugin declare
//! `{"name": "victim", "version": "1.9.0"}` and take every call for `victim` at `^1`.

pub mod rules;

use crate::plugin::instance::call_error;
use crate::plugin::PluginEntry;
use crate::router::{self, Call};
use crate::transport::peer::{Deadline, Peer, Reply};
use crate::Daemon;
use plugind_protocol::control::ServiceRef;
use plugind_protocol::jsonrpc::RpcError;
use plugind_protocol::manifest::{Dependency, DEFAULT_MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS};
use plugind_protocol::methods::{self, ServiceInfo};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every provider by service name, rebuilt only when the registry changed: `resolve` runs on
/// every `service.call`, and walking every plugin's status there cost O(plugins) locks and
/// allocations per call.
///
/// Invariant: whoever changes what [`Daemon::providers`] would return (a state, a plugin's
/// registered services or manifest, the host services, the plugin table) calls
/// [`Daemon::registry_changed`] *after* the change. A reader that saw the old generation then
/// rebuilds; one that saw the new generation reads the new data.
#[derive(Default)]
pub struct ServiceIndex {
    generation: AtomicU64,
    cached: Mutex<Option<(u64, Arc<ProvidersByName>)>>,
    /// (plugin, service) pairs whose service, named after another plugin, was not routed and
    /// was warned about in the plugin's log: once each, not at every rebuild.
    shadowing_warned: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Providers grouped by service name; shared, so resolving one copies nothing.
type ProvidersByName = HashMap<String, Vec<Arc<Provider>>>;

impl ServiceIndex {
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A service offered by a host over its control connection.
pub struct HostService {
    /// Which control connection offers it.
    pub conn: u64,
    /// What callers see (`plugin` is `host:<conn>`).
    pub info: ServiceInfo,
    /// Its version, parsed.
    pub version: semver::Version,
    /// Who provides it, in messages ("the host on control connection 3 (pid 812)").
    pub host: String,
    /// The host's connection.
    pub peer: Arc<Peer>,
    /// Calls in flight, for "least loaded".
    load: AtomicUsize,
}

impl HostService {
    /// A host service on connection `conn`.
    pub fn new(conn: u64, host: String, info: ServiceInfo, version: semver::Version, peer: Arc<Peer>) -> Self {
        HostService { conn, info, version, host, peer, load: AtomicUsize::new(0) }
    }

    async fn call(&self, call: Call<'_>) -> Reply {
        let timeout = Duration::from_millis(call.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let mut deadline = Deadline::new(timeout, Duration::from_millis(DEFAULT_MAX_TIMEOUT_MS));
        if let Some(t) = call.not_after {
            deadline = deadline.within(t);
        }
        let hop = crate::trace::Hop::start(&call.trace, "execute", Some(&self.info.plugin), call.method);
        let params = call.execute_out(&hop);
        self.load.fetch_add(1, Ordering::Relaxed);
        let r = self.peer.call_with(methods::EXECUTE, |out| params.write_json(out), deadline).await;
        self.load.fetch_sub(1, Ordering::Relaxed);
        let answer = r.map_err(|e| match e {
            // A host's own error goes back as it came: no plugin is involved.
            crate::transport::peer::CallError::Rpc(e) => e,
            // Which deadline ran out, named as for a plugin.
            crate::transport::peer::CallError::Timeout(_) => {
                let who = crate::router::Answerer {
                    described: format!("service {} of {}", self.info.name, self.host),
                    plugin: &self.info.plugin,
                };
                let max = Duration::from_millis(DEFAULT_MAX_TIMEOUT_MS);
                crate::router::timed_out(&who, timeout, max, deadline.start, call.not_after)
            }
            // The host half-closed or went away: it can no longer answer (not a crash).
            crate::transport::peer::CallError::Closed => RpcError::with_data(
                plugind_protocol::codes::PLUGIN_UNAVAILABLE,
                format!("service {} is unavailable: the connection of {} closed", self.info.name, self.host),
                serde_json::json!({ "plugin": &self.info.plugin, "state": "stopped" }),
            ),
            e => call_error(&self.info.plugin, timeout, e),
        });
        hop.finish(&answer);
        answer
    }
}

/// Who answers calls for a service.
#[derive(Clone)]
pub enum Target {
    /// A plugin.
    Plugin(Arc<PluginEntry>),
    /// A host on a control connection.
    Host(Arc<HostService>),
}

/// A service and who is behind it.
#[derive(Clone)]
pub struct Provider {
    /// What callers see.
    pub info: ServiceInfo,
    /// Its version, parsed.
    pub version: semver::Version,
    /// Who answers.
    pub target: Target,
}

impl Provider {
    /// Calls the provider's `execute`.
    pub async fn call(&self, call: Call<'_>) -> Reply {
        match &self.target {
            Target::Plugin(entry) => router::execute_on(entry, call).await,
            Target::Host(h) => h.call(call).await,
        }
    }

    /// Calls in flight and queued.
    pub fn load(&self) -> usize {
        match &self.target {
            Target::Plugin(entry) => entry.routes().iter().map(|i| i.load()).sum(),
            Target::Host(h) => h.load.load(Ordering::Relaxed),
        }
    }
}

impl Daemon {
    /// Every service of every running plugin and of every connected host.
    pub fn providers(&self) -> Vec<Provider> {
        let mut out: Vec<Provider> = Vec::new();
        let plugins = self.plugins();
        for entry in &plugins {
            let st = entry.status();
            let Some(m) = st.manifest.clone() else { continue };
            if !st.state.is_running() {
                continue;
            }
            let mut push = |name: &str, version: &str, methods: Vec<String>, caps: Vec<String>| {
                if self.is_shadowing(entry, name) {
                    self.warn_shadowing(entry, name);
                    return;
                }
                let Ok(v) = semver::Version::parse(version) else { return };
                if out.iter().any(|p| p.info.name == name && p.info.plugin == *entry.name && p.version == v) {
                    return;
                }
                out.push(Provider {
                    info: ServiceInfo {
                        name: name.to_owned(),
                        version: v.to_string(),
                        plugin: entry.name.to_string(),
                        methods,
                        capabilities: caps,
                    },
                    version: v,
                    target: Target::Plugin(entry.clone()),
                });
            };
            // Refused services (see `rules`) are never routed; the status lists them.
            for s in st.registered.iter().filter(|s| rules::check(&m, s).is_ok()) {
                let caps = if s.capabilities.is_empty() { m.capabilities.clone() } else { s.capabilities.clone() };
                push(&s.name, &s.version, s.methods.clone(), caps);
            }
            push(&m.name, &m.version.to_string(), Vec::new(), m.capabilities.clone());
            for p in &m.provides {
                push(&p.name, &p.version.to_string(), Vec::new(), m.capabilities.clone());
            }
        }
        for h in self.host_services() {
            out.push(Provider { info: h.info.clone(), version: h.version.clone(), target: Target::Host(h) });
        }
        out
    }

    /// Whether `entry`'s service `name` is named after another plugin in the table (or one whose
    /// directory is gone, its name reserved), and so never routed to `entry` (a plugin's name is
    /// its service alone).
    pub fn is_shadowing(&self, entry: &PluginEntry, name: &str) -> bool {
        name != &*entry.name
            && (self.plugin(name).is_some()
                || self.reserved_names.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(name))
    }

    /// The services `entry` declares that are routed to it: its status's `services` without
    /// those [`Daemon::is_shadowing`] another plugin's name. These are what its dependents are
    /// told about in `services.changed`.
    pub fn routed_services(&self, entry: &PluginEntry) -> Vec<ServiceRef> {
        let mut services = entry.snapshot().services;
        services.retain(|s| !self.is_shadowing(entry, &s.name));
        services
    }

    /// Says once in `entry`'s log that its service `name`, named after another plugin, is not
    /// routed.
    fn warn_shadowing(&self, entry: &PluginEntry, name: &str) {
        let key = (entry.name.to_string(), name.to_owned());
        let mut warned = self.services.shadowing_warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.insert(key) {
            entry.log.warn(format!(
                "service {name:?} not routed to this plugin: it is the name of plugin {name:?}, whose own service it is \
                 (a plugin's name is its service alone)"
            ));
        }
    }

    /// Services, optionally only those with `capability`.
    pub fn list_services(&self, capability: Option<&str>) -> Vec<ServiceInfo> {
        self.providers()
            .into_iter()
            .filter(|p| capability.is_none_or(|c| p.info.capabilities.iter().any(|x| x == c)))
            .map(|p| p.info)
            .collect()
    }

    /// Something [`Daemon::providers`] depends on changed (see [`ServiceIndex`]).
    pub fn registry_changed(&self) {
        self.services.invalidate();
    }

    /// The providers by service name, from the cache while the registry has not changed.
    fn service_index(&self) -> Arc<ProvidersByName> {
        let generation = self.services.generation.load(Ordering::Acquire);
        let mut cached = self.services.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((g, index)) = &*cached {
            if *g == generation {
                return index.clone();
            }
        }
        let mut index = ProvidersByName::new();
        for p in self.providers() {
            index.entry(p.info.name.clone()).or_default().push(Arc::new(p));
        }
        let index = Arc::new(index);
        *cached = Some((generation, index.clone()));
        index
    }

    /// The provider a call for `dep` goes to: the highest matching version, ties to the least loaded.
    pub fn resolve(&self, dep: &Dependency) -> Option<Arc<Provider>> {
        self.service_index()
            .get(&dep.name)?
            .iter()
            .filter(|p| dep.matches(&p.version))
            .max_by(|a, b| a.version.cmp(&b.version).then_with(|| b.load().cmp(&a.load())))
            .cloned()
    }

    /// `-32004` for a dependency no running provider matches. When the service runs at versions
    /// outside the range, the error names them (`data.running`), so "not there" and "there, but
    /// not at that version" read differently. When it does not run at all but a plugin in the
    /// table declares it in the range, the error names that plugin and its state
    /// (`data.not_running`: `[{plugin, version, state}]`), so the caller learns which plugin to
    /// start rather than only that the service is missing.
    pub fn not_found(&self, dep: &Dependency) -> RpcError {
        let index = self.service_index();
        let running: Vec<String> = index
            .get(&dep.name)
            .into_iter()
            .flatten()
            .map(|p| format!("{} (plugin {})", p.version, p.info.plugin))
            .collect();
        let mut e = not_found(dep);
        let data = e.data.as_mut().and_then(serde_json::Value::as_object_mut);
        if !running.is_empty() {
            e.message = format!("{}: it runs only at {}", e.message, running.join(", "));
            if let Some(data) = data {
                data.insert("running".into(), running.into());
            }
            return e;
        }
        let declared = self.declared_not_running(dep);
        if !declared.is_empty() {
            let said: Vec<String> = declared
                .iter()
                .map(|(plugin, version, state)| format!("plugin {plugin} ({version}) is {state}"))
                .collect();
            e.message = format!("{}: {}", e.message, said.join(", "));
            if let Some(data) = data {
                let list: Vec<serde_json::Value> = declared
                    .into_iter()
                    .map(|(plugin, version, state)| serde_json::json!({ "plugin": plugin, "version": version, "state": state }))
                    .collect();
                data.insert("not_running".into(), list.into());
            }
        }
        e
    }

    /// The plugins in the table, not running, whose manifest declares `dep`'s service (as their
    /// name or in `provides`) at a version in its range: `(plugin, version, state)`. Read only on
    /// the way to an error.
    fn declared_not_running(&self, dep: &Dependency) -> Vec<(String, String, &'static str)> {
        let mut out = Vec::new();
        for entry in self.plugins() {
            let st = entry.status();
            let Some(m) = st.manifest.as_ref() else { continue };
            if st.state.is_running() || self.is_shadowing(&entry, &dep.name) {
                continue;
            }
            let own = (m.name == dep.name).then_some(&m.version);
            let provided = m.provides.iter().filter(|p| p.name == dep.name).map(|p| &p.version);
            if let Some(v) = own.into_iter().chain(provided).find(|v| dep.matches(v)) {
                out.push((entry.name.to_string(), v.to_string(), st.state.as_str()));
            }
        }
        out
    }

    /// Calls a service through the registry (control `services.call`, plugin `service.call`).
    pub async fn call_service(&self, dep: &Dependency, call: Call<'_>) -> Reply {
        let provider = self.resolve(dep).ok_or_else(|| self.not_found(dep))?;
        provider.call(call).await
    }
}

/// `service.call` params (control `services.call` and a plugin's `service.call`) as plugind reads
/// them: strings borrowed from the request line where they have no escapes, and `params` kept
/// as raw JSON, forwarded verbatim and never parsed (the wire type,
/// [`plugind_protocol::methods::ServiceCallParams`], holds them as a `Value`).
#[derive(serde::Deserialize)]
pub struct ServiceCallIn<'a> {
    /// Service name.
    #[serde(borrow)]
    pub service: std::borrow::Cow<'a, str>,
    /// A semver range.
    #[serde(default, borrow, deserialize_with = "plugind_protocol::jsonrpc::borrowed_opt_str")]
    pub version: Option<std::borrow::Cow<'a, str>>,
    /// Method passed to the provider's `execute`.
    #[serde(borrow)]
    pub method: std::borrow::Cow<'a, str>,
    /// Params, raw.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
    /// Deadline of this call.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Extension: the id of the request this call is made on behalf of.
    #[serde(default)]
    pub parent: Option<u64>,
    /// Trace context (`traceparent`, `tracestate`).
    #[serde(default, borrow, rename = "_meta")]
    pub meta: Option<crate::trace::MetaIn<'a>>,
}

impl<'a> ServiceCallIn<'a> {
    /// Parses `raw` (`-32602` when malformed): by the scanner, with serde_json for whatever it
    /// does not take (and for the error).
    pub fn parse(raw: Option<&'a RawValue>) -> Result<Self, RpcError> {
        let text = raw.map_or("{}", RawValue::get);
        Self::scan(text).or_else(|_| serde_json::from_str(text).map_err(|e| RpcError::params_not_fitting(&e)))
    }

    /// The same members as the derived `Deserialize`, read by the scanner (strings borrowed,
    /// `params` delimited, not walked twice).
    fn scan(text: &'a str) -> Result<Self, plugind_protocol::scan::NotTaken> {
        use plugind_protocol::scan::{self, NotTaken};
        use std::borrow::Cow;
        let (mut service, mut version, mut method, mut params) = (None, None, None, None);
        let (mut timeout_ms, mut parent, mut meta) = (None, None, None);
        let keys = ["service", "version", "method", "params", "timeout_ms", "parent", "_meta"];
        scan::fields(text.as_bytes(), keys, |n, value| {
            match n {
                0 => service = Some(Cow::Borrowed(value.required_str()?)),
                1 => version = value.plain_str()?.map(Cow::Borrowed),
                2 => method = Some(Cow::Borrowed(value.required_str()?)),
                3 => params = value.raw_opt()?,
                4 => timeout_ms = value.u64_opt()?,
                5 => parent = value.u64_opt()?,
                _ => meta = crate::trace::MetaIn::scan(value)?,
            }
            Ok(())
        })?;
        let (Some(service), Some(method)) = (service, method) else { return Err(NotTaken) };
        Ok(ServiceCallIn { service, version, method, params, timeout_ms, parent, meta })
    }
}

/// The dependency a request names: service `name`, optionally a semver `range`
/// (`-32602` when either is malformed).
pub fn dependency(name: &str, range: Option<&str>) -> Result<Dependency, RpcError> {
    let text = match range {
        Some(r) => format!("{name}@{r}"),
        None => name.to_owned(),
    };
    Dependency::parse(&text).map_err(RpcError::invalid_params)
}

/// `-32004` for a dependency nobody provides.
fn not_found(dep: &Dependency) -> RpcError {
    RpcError::with_data(
        plugind_protocol::codes::SERVICE_NOT_FOUND,
        format!("no running provider of service {dep}"),
        serde_json::json!({ "service": dep.name, "version": dep.range_text() }),
    )
}

#[cfg(test)]
mod tests {
    use super::ServiceCallIn;
    use plugind_protocol::scan;

    /// The members as text, to compare the scanner's reading with serde's.
    fn members(p: &ServiceCallIn<'_>) -> Vec<Option<String>> {
        let meta = p.meta.as_ref();
        vec![
            Some(p.service.to_string()),
            p.version.as_deref().map(str::to_owned),
            Some(p.method.to_string()),
            p.params.map(|v| v.get().to_owned()),
            p.timeout_ms.map(|t| t.to_string()),
            p.parent.map(|t| t.to_string()),
            meta.and_then(|m| m.traceparent.as_deref().map(str::to_owned)),
            meta.and_then(|m| m.tracestate.as_deref().map(str::to_owned)),
        ]
    }

    /// Whatever the scanner reads, serde reads the same, on `service.call` params and on every
    /// one-byte mutation of them; and the usual params take the fast path.
    #[test]
    fn scanned_service_calls_match_serde() {
        let seeds = [
            r#"{"service":"echo","method":"echo","params":{"msg":"hi","n":[1,2.5e3]},"parent":7}"#,
            r#"{"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"a=1"},"timeout_ms":250,"version":"^1.2","method":"m","service":"s","params":null}"#,
        ];
        for seed in seeds {
            assert!(ServiceCallIn::scan(seed).is_ok(), "{seed}");
        }
        let mut taken = 0;
        for seed in seeds {
            for t in scan::one_byte_mutations(seed, b"\"\\{}[],:0-1.nul \x02") {
                if let Ok(ours) = ServiceCallIn::scan(&t) {
                    taken += 1;
                    let theirs: ServiceCallIn<'_> =
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("scanner took {t:?}, serde: {e}"));
                    assert_eq!(members(&ours), members(&theirs), "{t:?}");
                }
            }
        }
        assert!(taken > 100, "{taken}");
        // Left to serde, which reads or rejects them as before: a member twice, a negative
        // parent, an escaped name, a missing method.
        for t in [
            r#"{"service":"a","service":"b","method":"m"}"#,
            r#"{"service":"a","method":"m","parent":-1}"#,
            r#"{"service":"\u0061","method":"m"}"#,
            r#"{"service":"a"}"#,
        ] {
            assert!(ServiceCallIn::scan(t).is_err(), "{t}");
        }
        let escaped = ServiceCallIn::parse(Some(scan::raw(r#"{"service":"\u0061","method":"m"}"#))).unwrap();
        assert_eq!(escaped.service, "a");
        let missing = ServiceCallIn::parse(Some(scan::raw(r#"{"service":"a"}"#))).err().unwrap();
        assert!(missing.message.contains("missing field `method`"), "{}", missing.message);
    }
}
