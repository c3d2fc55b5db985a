//! What the plugin room needs from the rest of plugind, and nothing more.
//!
//! The daemon is layered so that its arrows run one way (ARCHITECTURE.md, "Layers"):
//! control → daemon services (router, registry, hooks, kv, metrics) → plugin actors and instances
//! → transport and sandbox. The plugin room sits below the services, so it must not name them:
//! an actor is handed an [`ActorHost`], an instance an [`InstanceHost`], and those two traits are
//! the whole of what a plugin's lifecycle may ask of the outside. The daemon implements them
//! (`lib.rs`, `host.rs`); `check` reuses the daemon's. A test (`layers` in `lib.rs`) keeps
//! `Daemon`, `host`, `router`, `hooks`, `control` and `kv` out of this module's imports.

use crate::config::StatePaths;
use crate::plugin::machine::Unmet;
use crate::plugin::spawner::Spawner;
use crate::plugin::PluginEntry;
use crate::transport::peer::Peer;
use plugind_protocol::manifest::Manifest;
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed future that may move between threads.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The plugin making a request to plugind.
#[derive(Clone)]
pub struct Caller {
    /// Its name.
    pub plugin: Arc<str>,
    /// Its manifest (for permissions and dependencies).
    pub manifest: Arc<Manifest>,
    /// The connection to its instance: to find the call a request is made on behalf of.
    pub peer: Arc<Peer>,
}

/// What a running instance needs: processes forked, and its plugin's requests answered.
pub trait InstanceHost: Send + Sync + 'static {
    /// The threads that fork plugins (started on first use).
    fn spawner(&self) -> Result<&Spawner, String>;

    /// Answers one request the plugin sent plugind (`registry.*`, `service.call`, `kv.*`…).
    fn answer(
        self: Arc<Self>,
        caller: Caller,
        method: String,
        params: Option<Box<RawValue>>,
    ) -> BoxFuture<crate::transport::peer::Reply>;

    /// A `metrics.emit` notification of plugin `plugin` (its raw params).
    fn metrics_emit(&self, plugin: &str, params: &str);
}

/// What the daemon decides for an instance about to start (besides its manifest).
#[derive(Clone, Debug)]
pub struct InstanceSettings {
    /// Where data and temp dirs live.
    pub paths: StatePaths,
    /// The operator's extra environment (config file `[plugins.NAME] env`).
    pub operator_env: Vec<(String, String)>,
    /// The config `init` gets: the manifest's, with the operator's overrides merged in.
    pub config: serde_json::Value,
    /// Health ping period.
    pub ping_every: Duration,
}

/// What a plugin actor needs: what its instances need, plus the few things a lifecycle tells the
/// daemon (state changes, swaps, registry changes) or asks it (unmet dependencies, settings).
pub trait ActorHost: InstanceHost {
    /// A fresh instance id, unique in this plugind.
    fn next_instance_id(&self) -> u64;

    /// What an instance of `m` starts with.
    fn instance_settings(&self, m: &Manifest) -> InstanceSettings;

    /// Applies the operator's overrides (config file `[plugins.NAME] limits`) to a manifest read
    /// from disk.
    fn apply_overrides(&self, m: &mut Manifest);

    /// Required dependencies of `m` that nothing running provides (None if all are met).
    fn unmet_dependencies(&self, m: &Manifest) -> Unmet;

    /// The cycle of required dependencies `m` (a new manifest of plugin `name`) would close with
    /// the other plugins' manifests, as text (`a → b → a`).
    fn dependency_cycle(&self, name: &str, m: &Manifest) -> Option<String>;

    /// The plugin's directory now holds another plugin: rescan the plugin directories.
    fn rescan(self: Arc<Self>);

    /// The plugin entered `state` (from a running or a non-running state).
    fn state_changed(&self, entry: &PluginEntry, state: &str, was_running: bool);

    /// The plugin's routes, services or manifest changed.
    fn registry_changed(&self);

    /// A lifecycle event for `events.subscribe`.
    fn publish_event(&self, plugin: &str, kind: &str, detail: String);

    /// A new generation replaced the old one (hot reload or graceful restart).
    fn swapped(&self, entry: &PluginEntry);
}
