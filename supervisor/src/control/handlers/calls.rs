//! `execute`, `services.list`, `services.call`.

use crate::router::{self, Call};
use crate::Daemon;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use plugind_protocol::manifest::Dependency;
use plugind_protocol::methods::{ListServicesParams, ServiceCallParams};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Control `execute` params, with `params` kept raw.
#[derive(Deserialize)]
struct ExecuteIn<'a> {
    plugin: String,
    method: String,
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
pub async fn services_call(daemon: &Daemon, p: ServiceCallParams) -> Result<Box<RawValue>, RpcError> {
    let text = match &p.version {
        Some(r) => format!("{}@{r}", p.service),
        None => p.service.clone(),
    };
    let dep = Dependency::parse(&text).map_err(RpcError::invalid_params)?;
    let provider = daemon.resolve(&dep).ok_or_else(|| {
        RpcError::with_data(
            codes::SERVICE_NOT_FOUND,
            format!("no running provider of service {dep}"),
            serde_json::json!({ "service": dep.name, "version": dep.range_text() }),
        )
    })?;
    let params = to_raw(&p.params);
    router::execute_on(
        &provider.entry,
        Call {
            method: &p.method,
            params: Some(&params),
            timeout_ms: p.timeout_ms,
            service: Some(&p.service),
            caller: None,
            not_after: None,
        },
    )
    .await
}
