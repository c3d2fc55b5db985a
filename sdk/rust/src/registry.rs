//! The registry handle `Plugin::register` gets.

use plugind_protocol::methods::{ServiceDecl, ServiceInfo};
use plugind_protocol::RpcError;
use serde_json::{Map, Value};

use crate::context::Context;

/// Collects the services a plugin declares in `register`, and looks up others through plugind.
#[derive(Debug)]
pub struct Registry {
    ctx: Context,
    services: Vec<ServiceDecl>,
    /// Methods declared for plugind's catalog, in the manifest's `methods` shape.
    methods: Map<String, Value>,
}

impl Registry {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx, services: Vec::new(), methods: Map::new() }
    }

    pub(crate) fn into_parts(self) -> (Vec<ServiceDecl>, Map<String, Value>) {
        (self.services, self.methods)
    }

    /// Declares `execute` method `name` for plugind's catalog (sent in the `register` answer's
    /// `methods`); chain a description, JSON Schemas, a timeout onto the returned builder.
    /// plugind checks a call's params against the `params` schema before the call reaches the
    /// plugin. Declaring is optional: `execute` serves any method either way.
    ///
    /// ```
    /// # use plugind_sdk::json;
    /// # fn f(registry: &mut plugind_sdk::Registry) {
    /// registry
    ///     .declare_method("hello")
    ///     .description("Greets someone")
    ///     .params(json!({ "type": "object", "properties": { "name": { "type": "string" } } }))
    ///     .result(json!({ "type": "object", "required": ["greeting"] }))
    ///     .timeout_ms(1000)
    ///     .idempotent(true);
    /// # }
    /// ```
    pub fn declare_method(&mut self, name: impl Into<String>) -> MethodBuilder<'_> {
        let entry = self.methods.entry(name.into()).or_insert_with(|| Value::Object(Map::new()));
        MethodBuilder(entry)
    }

    /// The methods declared so far, keyed by name.
    pub fn declared_methods(&self) -> &Map<String, Value> {
        &self.methods
    }

    /// Declares a service this plugin provides at `version` (semver); chain methods and
    /// capabilities onto the returned builder.
    ///
    /// ```
    /// # fn f(registry: &mut plugind_sdk::Registry) {
    /// registry.register_service("llm", "2.1.0").methods(["complete", "embed"]).capability("llm");
    /// # }
    /// ```
    pub fn register_service(&mut self, name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder<'_> {
        self.services.push(ServiceDecl {
            name: name.into(),
            version: version.into(),
            methods: Vec::new(),
            capabilities: Vec::new(),
        });
        let last = self.services.len() - 1;
        ServiceBuilder(&mut self.services[last])
    }

    /// The services declared so far.
    pub fn services(&self) -> &[ServiceDecl] {
        &self.services
    }

    /// The `register` call's context, e.g. for `init_params` or `log`.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Looks a service up: `None` if no provider matches (`registry.getService`).
    pub async fn get_service(&self, name: &str, version: Option<&str>) -> Result<Option<ServiceInfo>, RpcError> {
        self.ctx.get_service(name, version).await
    }

    /// Looks a service up; `-32004` if no provider matches (`registry.requireService`).
    pub async fn require_service(&self, name: &str, version: Option<&str>) -> Result<ServiceInfo, RpcError> {
        self.ctx.require_service(name, version).await
    }

    /// Lists services, optionally only those with `capability` (`registry.listServices`).
    pub async fn list_services(&self, capability: Option<&str>) -> Result<Vec<ServiceInfo>, RpcError> {
        self.ctx.list_services(capability).await
    }
}

/// Adds methods and capabilities to a service just declared with [`Registry::register_service`].
///
/// The service is declared already; the builder only adds detail.
#[derive(Debug)]
pub struct ServiceBuilder<'a>(&'a mut ServiceDecl);

impl ServiceBuilder<'_> {
    /// Adds one method name (informational: plugind routes any method to `execute`).
    pub fn method(self, method: impl Into<String>) -> Self {
        self.0.methods.push(method.into());
        self
    }

    /// Adds method names.
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(self, methods: I) -> Self {
        self.0.methods.extend(methods.into_iter().map(Into::into));
        self
    }

    /// Adds one capability tag (`services.list` filters by them).
    pub fn capability(self, capability: impl Into<String>) -> Self {
        self.0.capabilities.push(capability.into());
        self
    }

    /// Adds capability tags.
    pub fn capabilities<I: IntoIterator<Item = S>, S: Into<String>>(self, capabilities: I) -> Self {
        self.0.capabilities.extend(capabilities.into_iter().map(Into::into));
        self
    }
}

/// Adds detail to a method declared with [`Registry::declare_method`].
#[derive(Debug)]
pub struct MethodBuilder<'a>(&'a mut Value);

impl MethodBuilder<'_> {
    fn set(self, key: &str, value: Value) -> Self {
        if let Value::Object(map) = &mut *self.0 {
            map.insert(key.to_owned(), value);
        }
        self
    }

    /// What the method does (shown by `pluginctl methods`, and to MCP clients).
    pub fn description(self, description: impl Into<String>) -> Self {
        self.set("description", Value::String(description.into()))
    }

    /// The JSON Schema its params must match; plugind answers `-32602` to params that do not.
    pub fn params(self, schema: Value) -> Self {
        self.set("params", schema)
    }

    /// The JSON Schema of its result.
    pub fn result(self, schema: Value) -> Self {
        self.set("result", schema)
    }

    /// Its deadline, instead of the plugin's `timeout_ms`.
    pub fn timeout_ms(self, timeout_ms: u64) -> Self {
        self.set("timeout_ms", Value::from(timeout_ms))
    }

    /// Whether calling it twice has the effect of calling it once (informational).
    pub fn idempotent(self, idempotent: bool) -> Self {
        self.set("idempotent", Value::Bool(idempotent))
    }
}
