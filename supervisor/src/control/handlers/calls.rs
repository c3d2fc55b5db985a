//! `execute`, `services.list`, `services.call`.

use crate::control::connection::Conn;
use crate::registry::{HostService, ServiceCallIn};
use crate::router::Call;
use crate::Daemon;
use plugind_protocol::control::ServicesRegisterParams;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use plugind_protocol::methods::ListServicesParams;
use plugind_protocol::methods::ServiceInfo;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// Control `execute` params: names borrowed from the request line (unless escaped), `params`
/// kept raw.
#[derive(Deserialize)]
struct ExecuteIn<'a> {
    #[serde(borrow)]
    plugin: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Calls a plugin's `execute`.
pub async fn execute(daemon: &Daemon, raw: Option<&RawValue>) -> Result<Box<RawValue>, RpcError> {
    let p: ExecuteIn<'_> = serde_json::from_str(raw.map_or("{}", RawValue::get)).map_err(RpcError::invalid_params)?;
    daemon
        .execute(
            &p.plugin,
            Call {
                method: &p.method,
                params: p.params,
                timeout_ms: p.timeout_ms,
                service: None,
                caller: None,
                not_after: None,
            },
        )
        .await
}

/// Services of running plugins.
pub fn services_list(daemon: &Daemon, p: ListServicesParams) -> Result<Box<RawValue>, RpcError> {
    Ok(to_raw(&daemon.list_services(p.capability.as_deref())))
}

/// Calls a service through the registry.
pub async fn services_call(daemon: &Daemon, raw: Option<&RawValue>) -> Result<Box<RawValue>, RpcError> {
    let p = ServiceCallIn::parse(raw)?;
    let dep = crate::registry::dependency(&p.service, p.version.as_deref())?;
    daemon
        .call_service(
            &dep,
            Call {
                method: &p.method,
                params: p.params,
                timeout_ms: p.timeout_ms,
                service: Some(&p.service),
                caller: None,
                not_after: None,
            },
        )
        .await
}

/// A host offers a service for as long as this connection stays open.
pub fn services_register(daemon: &Daemon, conn: &Conn, p: ServicesRegisterParams) -> Result<Box<RawValue>, RpcError> {
    let version = semver::Version::parse(&p.version)
        .map_err(|e| RpcError::invalid_params(format!("version {:?}: {e}", p.version)))?;
    if p.name.is_empty() || p.name.contains(char::is_whitespace) || p.name.contains('@') {
        return Err(RpcError::invalid_params(format!(
            "service name {:?}: expected a name without spaces or '@'",
            p.name
        )));
    }
    let info = ServiceInfo {
        name: p.name,
        version: version.to_string(),
        plugin: format!("host:{}", conn.id),
        methods: p.methods,
        capabilities: p.capabilities,
    };
    daemon.add_host_service(Arc::new(HostService::new(conn.id, info, version, conn.peer.clone())));
    Ok(to_raw(&()))
}
