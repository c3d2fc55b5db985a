//! The service registry: which services exist, who provides them, which one a call goes to.
//!
//! Every plugin provides a service named after itself at its own version, the services of its
//! manifest's `provides`, and those it returns from `register`. Only running plugins' services
//! are offered to callers.

use crate::plugin::PluginEntry;
use crate::Daemon;
use plugind_protocol::manifest::Dependency;
use plugind_protocol::methods::ServiceInfo;
use std::sync::Arc;

/// A service and the plugin behind it.
#[derive(Clone)]
pub struct Provider {
    /// What callers see.
    pub info: ServiceInfo,
    /// Its version, parsed.
    pub version: semver::Version,
    /// The providing plugin.
    pub entry: Arc<PluginEntry>,
}

impl Daemon {
    /// Every service of every running plugin.
    pub fn providers(&self) -> Vec<Provider> {
        let mut out = Vec::new();
        for entry in self.plugins() {
            let st = entry.status();
            let Some(m) = st.manifest.clone() else { continue };
            if !st.state.is_running() {
                continue;
            }
            let mut push = |name: &str, version: &str, methods: Vec<String>, caps: Vec<String>| {
                let Ok(v) = semver::Version::parse(version) else { return };
                if out.iter().any(|p: &Provider| p.info.name == name && p.info.plugin == *entry.name && p.version == v)
                {
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
                    entry: entry.clone(),
                });
            };
            for s in &st.registered {
                let caps = if s.capabilities.is_empty() { m.capabilities.clone() } else { s.capabilities.clone() };
                push(&s.name, &s.version, s.methods.clone(), caps);
            }
            push(&m.name, &m.version.to_string(), Vec::new(), m.capabilities.clone());
            for p in &m.provides {
                push(&p.name, &p.version.to_string(), Vec::new(), m.capabilities.clone());
            }
        }
        out
    }

    /// Services, optionally only those with `capability`.
    pub fn list_services(&self, capability: Option<&str>) -> Vec<ServiceInfo> {
        self.providers()
            .into_iter()
            .filter(|p| capability.is_none_or(|c| p.info.capabilities.iter().any(|x| x == c)))
            .map(|p| p.info)
            .collect()
    }

    /// The provider a call for `dep` goes to: the highest matching version, ties to the least loaded.
    pub fn resolve(&self, dep: &Dependency) -> Option<Provider> {
        self.providers().into_iter().filter(|p| p.info.name == dep.name && dep.matches(&p.version)).max_by(|a, b| {
            a.version.cmp(&b.version).then_with(|| {
                let load = |p: &Provider| p.entry.routes().iter().map(|i| i.load()).sum::<usize>();
                load(b).cmp(&load(a))
            })
        })
    }
}
