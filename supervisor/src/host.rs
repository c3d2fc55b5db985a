//! What a plugin may ask plugind (docs/protocol.md): `registry.*`, `service.call`, `kv.*`.

use crate::plugin::context::{BoxFuture, Caller, InstanceHost};
use crate::plugin::spawner::Spawner;
use crate::registry::ServiceCallIn;
use crate::router::Call;
use crate::trace::TraceIn;
use crate::transport::peer::{RawJson, Reply};
use crate::Daemon;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::parse_params as params;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use plugind_protocol::manifest::{Dependency, Permission};
use plugind_protocol::methods::{self, ListServicesParams, ServiceQuery};
use serde_json::value::RawValue;
use std::sync::Arc;

/// The daemon as a plugin's instances see it (`plugin/context.rs`).
impl InstanceHost for Daemon {
    fn spawner(&self) -> Result<&Spawner, String> {
        Daemon::spawner(self)
    }

    fn answer(self: Arc<Self>, caller: Caller, method: String, params: Option<Box<RawValue>>) -> BoxFuture<Reply> {
        Box::pin(async move { handle_request(&self, &caller, &method, params.as_deref()).await })
    }

    fn metrics_emit(&self, plugin: &str, params: &str) {
        Daemon::metrics_emit(self, plugin, params);
    }
}

/// The dependency a plugin's `registry.getService`/`requireService` resolves: the range it asks
/// for, narrowed by the range its manifest declares for that name, if it declares one (a caller's
/// `version` never widens what its manifest declared).
fn query_dep(caller: &Caller, q: &ServiceQuery) -> Result<Dependency, RpcError> {
    let asked = crate::registry::dependency(&q.name, q.version.as_deref())?;
    Ok(match declared(caller, &q.name) {
        Some(d) => d.narrowed(asked.range.as_ref()),
        None => asked,
    })
}

/// The caller's manifest dependency on service `name`, if it declares one.
fn declared<'a>(caller: &'a Caller, name: &str) -> Option<&'a Dependency> {
    caller.manifest.dependencies().find(|(d, _)| d.name == name).map(|(d, _)| d)
}

/// Answers one request of a plugin: a `service.call` with the provider's answer as it came (a
/// large one passes on without a copy), the rest with what plugind makes.
pub async fn handle_request(daemon: &Daemon, caller: &Caller, method: &str, raw: Option<&RawValue>) -> Reply {
    match method {
        methods::SERVICE_CALL => service_call(daemon, caller, raw).await,
        _ => handle_local(daemon, caller, method, raw).await.map(RawJson::from).map_err(|e| naming(e, caller)),
    }
}

/// An error plugind answers a plugin's request with, naming that plugin in `data.plugin` (where
/// `data` is absent or an object without it): every error's data names the plugin involved.
fn naming(mut e: RpcError, caller: &Caller) -> RpcError {
    match e.data.as_mut() {
        None => e.data = Some(serde_json::json!({ "plugin": &*caller.plugin })),
        Some(serde_json::Value::Object(data)) => {
            data.entry("plugin").or_insert_with(|| serde_json::Value::from(&*caller.plugin));
        }
        Some(_) => {}
    }
    e
}

/// A plugin's `service.call`: allowed only for a declared dependency, bounded by the call it is
/// made for. Errors before routing are plugind's and name the caller ([`naming`]); the
/// provider's answer, error or not, passes on as it came.
async fn service_call(daemon: &Daemon, caller: &Caller, raw: Option<&RawValue>) -> Reply {
    let p = ServiceCallIn::parse(raw).map_err(|e| naming(e, caller))?;
    let Some(declared) = declared(caller, &p.service) else {
        return Err(RpcError::with_data(
            codes::PERMISSION_DENIED,
            format!(
                "plugin {} may not call service {:?}: it is not in its manifest's dependencies",
                caller.plugin, p.service
            ),
            serde_json::json!({ "plugin": &*caller.plugin, "dependency": p.service }),
        ));
    };
    // The provider must match the declared range and the one asked for, both. Without a range
    // asked, that is the declared dependency as it stands (no parse, no copy per call).
    let dep = match p.version.as_deref() {
        None => std::borrow::Cow::Borrowed(declared),
        Some(range) => {
            let asked = crate::registry::dependency(&p.service, Some(range)).map_err(|e| naming(e, caller))?;
            std::borrow::Cow::Owned(declared.narrowed(asked.range.as_ref()))
        }
    };
    let provider = daemon.resolve(&dep).ok_or_else(|| naming(daemon.not_found(&dep), caller))?;
    // The call this one is made for bounds its deadline, and cancels it when it ends.
    let parent = caller.peer.parent_of(p.parent);
    let call = Call {
        method: &p.method,
        params: p.params,
        timeout_ms: p.timeout_ms,
        service: Some(&p.service),
        caller: Some(&caller.plugin),
        not_after: parent.as_ref().map(|pc| pc.hard),
        // The trace the plugin names, else the one of the call it is made for.
        // (A malformed traceparent counts as none.)
        trace: match TraceIn::from_meta(p.meta.as_ref()) {
            named if named.parent.is_some() => named,
            _ => parent.as_ref().and_then(|pc| pc.trace.clone()).unwrap_or_default(),
        },
        params_line: None,
    };
    let routed = provider.call(call);
    match parent {
        None => routed.await,
        Some(pc) => tokio::select! {
            r = routed => r,
            _ = pc.done.cancelled() => Err(RpcError::with_data(
                codes::REQUEST_CANCELLED,
                format!("cancelled: the call it was made for (id {}) ended", pc.id),
                serde_json::json!({ "plugin": &*caller.plugin }),
            )),
        },
    }
}

/// The requests of a plugin that plugind answers itself.
async fn handle_local(
    daemon: &Daemon,
    caller: &Caller,
    method: &str,
    raw: Option<&RawValue>,
) -> Result<Box<RawValue>, RpcError> {
    match method {
        methods::REGISTRY_GET_SERVICE => {
            let dep = query_dep(caller, &params(raw)?)?;
            Ok(to_raw(&daemon.resolve(&dep).as_deref().map(|p| &p.info)))
        }
        methods::REGISTRY_REQUIRE_SERVICE => {
            let dep = query_dep(caller, &params(raw)?)?;
            match daemon.resolve(&dep) {
                Some(p) => Ok(to_raw(&p.info)),
                None => Err(daemon.not_found(&dep)),
            }
        }
        methods::REGISTRY_LIST_SERVICES => {
            let p: ListServicesParams = params(raw)?;
            Ok(to_raw(&daemon.list_services(p.capability.as_deref())))
        }
        methods::KV_GET | methods::KV_SET | methods::KV_DELETE | methods::KV_LIST => {
            if !caller.manifest.grants(Permission::Storage) {
                return Err(RpcError::with_data(
                    codes::PERMISSION_DENIED,
                    format!("plugin {} lacks the storage permission needed for {method}", caller.plugin),
                    serde_json::json!({ "plugin": &*caller.plugin, "permission": "storage" }),
                ));
            }
            kv_request(daemon, caller, method, raw).await
        }
        other => Err(RpcError::method_not_found(other)),
    }
}

/// `kv.get` / `kv.set` / `kv.delete` / `kv.list` on the caller's namespace.
async fn kv_request(
    daemon: &Daemon,
    caller: &Caller,
    method: &str,
    raw: Option<&RawValue>,
) -> Result<Box<RawValue>, RpcError> {
    use plugind_protocol::methods::{KvKey, KvListParams};
    /// `kv.set` params with the value borrowed from the request as it came: checked JSON, never
    /// a tree (a 1 MiB array of small numbers is 36 MB as one; 58 such sets queued held 500 MB).
    #[derive(serde::Deserialize)]
    struct KvSetIn<'a> {
        key: String,
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let store = daemon.open_kv().map_err(RpcError::internal)?;
    let plugin = &*caller.plugin;
    let kv_err = |e: crate::kv::KvError| match e {
        crate::kv::KvError::BadKey(_) => RpcError::invalid_params(e),
        crate::kv::KvError::Quota(_) => RpcError::with_data(
            codes::OVERLOADED,
            e.to_string(),
            serde_json::json!({ "plugin": plugin, "limit": "kv" }),
        ),
        other => RpcError::internal(other),
    };
    match method {
        methods::KV_GET => {
            let p: KvKey = params(raw)?;
            let value = store.get(plugin, &p.key).await.map_err(kv_err)?;
            // Written around the stored text, not through a `Value` (which would parse it).
            #[derive(serde::Serialize)]
            struct KvGetOut<'a> {
                value: Option<&'a RawValue>,
            }
            Ok(to_raw(&KvGetOut { value: value.as_deref() }))
        }
        methods::KV_SET => {
            let p: KvSetIn = params(raw)?;
            store.set(plugin, &p.key, p.value).await.map_err(kv_err)?;
            Ok(to_raw(&()))
        }
        methods::KV_DELETE => {
            let p: KvKey = params(raw)?;
            let deleted = store.delete(plugin, &p.key).await.map_err(kv_err)?;
            Ok(to_raw(&serde_json::json!({ "deleted": deleted })))
        }
        _ => {
            let p: KvListParams = params(raw)?;
            store.list(plugin, p.prefix.as_deref()).await.map_err(kv_err)
        }
    }
}
