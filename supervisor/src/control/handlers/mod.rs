//! One function per control method; [`dispatch`] is the one exhaustive match.

mod calls;

pub use calls::ExecuteRequest;
mod observe;
mod plugins;
mod supervisor;

use crate::control::connection::Conn;
use crate::transport::peer::{RawJson, Reply};
use crate::Daemon;
use plugind_protocol::control as c;
use plugind_protocol::jsonrpc::RpcError;
use serde_json::value::RawValue;

use plugind_protocol::jsonrpc::parse_params as params;

/// Runs the client's request `id`: the calls that reach plugins (`execute`, `services.call`,
/// `hooks.run`) as host calls (cancellable with `$/cancel`, `$/progress` relayed), the rest as is.
pub async fn dispatch_request(
    daemon: &std::sync::Arc<Daemon>,
    conn: &Conn,
    id: &RawValue,
    method: &str,
    raw: Option<&RawValue>,
) -> Reply {
    match method {
        c::EXECUTE | c::SERVICES_CALL | c::HOOKS_RUN => {
            Box::pin(crate::control::cancel::host_call(conn, id, dispatch(daemon, conn, method, raw))).await
        }
        _ => dispatch(daemon, conn, method, raw).await,
    }
}

/// Runs one control request.
pub async fn dispatch(daemon: &std::sync::Arc<Daemon>, conn: &Conn, method: &str, raw: Option<&RawValue>) -> Reply {
    match method {
        // The calls that reach plugins give the plugin's answer as it came (a large one is
        // passed on without a copy); the rest make their own.
        c::EXECUTE => calls::execute(daemon, raw).await,
        c::SERVICES_CALL => Box::pin(calls::services_call(daemon, raw)).await,
        _ => dispatch_local(daemon, conn, method, raw).await.map(RawJson::from),
    }
}

/// [`dispatch`] for the methods plugind answers itself.
async fn dispatch_local(
    daemon: &std::sync::Arc<Daemon>,
    conn: &Conn,
    method: &str,
    raw: Option<&RawValue>,
) -> Result<Box<RawValue>, RpcError> {
    match method {
        c::SUPERVISOR_STATUS => supervisor::status(daemon),
        c::SUPERVISOR_SHUTDOWN => supervisor::shutdown(daemon),
        c::PLUGINS_LIST => plugins::list(daemon),
        c::PLUGINS_GET => plugins::get(daemon, params(raw)?),
        // Rare and large futures are boxed: this function's future is as large as its largest
        // inline arm, and every request (every `execute`) pays for its size.
        c::PLUGINS_START => Box::pin(plugins::start(daemon, params(raw)?)).await,
        c::PLUGINS_STOP => Box::pin(plugins::stop(daemon, params(raw)?)).await,
        c::PLUGINS_RESTART => Box::pin(plugins::restart(daemon, params(raw)?)).await,
        c::PLUGINS_RELOAD => Ok(plugind_protocol::jsonrpc::to_raw(&Box::pin(daemon.reload()).await)),
        c::SERVICES_LIST => calls::services_list(daemon, params(raw)?),
        c::SERVICES_REGISTER => calls::services_register(daemon, conn, params(raw)?),
        c::LOGS_TAIL => observe::logs_tail(daemon, conn, params(raw)?),
        c::EVENTS_SUBSCRIBE => observe::events_subscribe(daemon, conn),
        c::PLUGINS_TRACE => observe::plugins_trace(daemon, conn, params(raw)?),
        c::HOOKS_RUN => {
            let p: HooksRunIn = params(raw)?;
            let budget = p.timeout_ms.map(std::time::Duration::from_millis);
            let payload = p.payload.unwrap_or_else(|| plugind_protocol::jsonrpc::to_raw(&serde_json::Value::Null));
            Ok(plugind_protocol::jsonrpc::to_raw(
                &Box::pin(daemon.run_hook(
                    &p.hook,
                    payload,
                    budget,
                    &crate::trace::TraceIn::from_wire(p.meta.as_ref()),
                ))
                .await?,
            ))
        }
        c::METRICS_GET => Ok(plugind_protocol::jsonrpc::to_raw(&c::MetricsResult { text: daemon.metrics_text() })),
        other => Err(RpcError::method_not_found(other)),
    }
}

/// `hooks.run` params as plugind reads them: [`c::HooksRunParams`] with the payload kept as
/// text (it passes through the chain unparsed: see [`crate::hooks`]).
#[derive(serde::Deserialize)]
struct HooksRunIn {
    hook: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default, rename = "_meta")]
    meta: Option<plugind_protocol::control::TraceMeta>,
}
