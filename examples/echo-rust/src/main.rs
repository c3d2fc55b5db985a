//! echo-rust: the example plugin on the Rust SDK.
//!
//! It answers the example contract shared with the Python and Node examples (the integration
//! and cross-SDK conformance tests rely on it exactly), through `execute`:
//!
//! | method | params | result |
//! |---|---|---|
//! | `echo` | anything | the params, unchanged |
//! | `hello` | `{ name? }` | `{ "greeting": "Hello, NAME!" }` (`world` by default) |
//! | `sleep` | `{ ms }` | `{ "slept": ms }` after `ms` milliseconds; no response if cancelled |
//! | `progress` | `{ steps, interval_ms }` | `$/progress` after each step (`progress` 1..=steps, `total` steps), then `{ "steps": steps }` |
//! | `call` | `{ service, method, params, version?, timeout_ms? }` | the result of `service.call`; errors unchanged |
//! | `env` | `{ name }` | `{ "value": the variable or null }` |
//! | `fail` | `{ code, message, data? }` | that JSON-RPC error |
//! | `exit` | `{ code }` | exits the process at once with that status |
//! | `print` | — | `println!`s a line (the SDK routes it to stderr), then `{ "printed": true }` |
//!
//! Anything else is `-32601`. This plugin is what the benchmarks measure, so `echo` hands the
//! parsed params straight back.

use std::time::Duration;

use plugind_sdk::{cancelled_error, json, Context, Plugin, RpcError, ServiceCallParams, Value};

struct Echo;

impl Plugin for Echo {
    async fn execute(&self, ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params),
            "hello" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("world");
                Ok(json!({ "greeting": format!("Hello, {name}!") }))
            }
            "sleep" => {
                let ms = field(&params, "ms")?;
                wait(&ctx, millis(&ms)?).await?;
                Ok(json!({ "slept": ms }))
            }
            "progress" => {
                let steps = field(&params, "steps")?;
                let count = steps.as_u64().ok_or_else(|| RpcError::invalid_params("steps: expected a count"))?;
                let interval = params.get("interval_ms").map_or(Ok(Duration::ZERO), millis)?;
                for i in 1..=count {
                    wait(&ctx, interval).await?;
                    #[allow(clippy::cast_precision_loss)] // step counts are far below 2^53
                    ctx.progress(None, Some(i as f64), Some(count as f64));
                }
                Ok(json!({ "steps": steps }))
            }
            "call" => {
                let call: ServiceCallParams = serde_json::from_value(params).map_err(RpcError::invalid_params)?;
                ctx.call_service_with(&call).await
            }
            "env" => {
                let name = field(&params, "name")?;
                let name = name.as_str().ok_or_else(|| RpcError::invalid_params("name: expected a string"))?;
                let value = std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
                Ok(json!({ "value": value }))
            }
            "fail" => {
                let code = field(&params, "code")?
                    .as_i64()
                    .ok_or_else(|| RpcError::invalid_params("code: expected an integer"))?;
                let message = params.get("message").and_then(Value::as_str).unwrap_or("failed").to_owned();
                Err(RpcError { code, message, data: params.get("data").cloned() })
            }
            "exit" => {
                let code = params.get("code").and_then(Value::as_i64).unwrap_or(0);
                std::process::exit(i32::try_from(code).unwrap_or(1))
            }
            "print" => {
                println!("echo-rust: this line was printed to stdout and must land on stderr");
                Ok(json!({ "printed": true }))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

fn field(params: &Value, name: &str) -> Result<Value, RpcError> {
    params.get(name).cloned().ok_or_else(|| RpcError::invalid_params(format!("missing field `{name}`")))
}

/// A non-negative number of milliseconds (integer or not) as a duration.
fn millis(v: &Value) -> Result<Duration, RpcError> {
    v.as_f64()
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .ok_or_else(|| RpcError::invalid_params("expected a non-negative number of milliseconds"))
}

/// Sleeps, or stops early with an error (which the SDK does not send) when the call is cancelled.
async fn wait(ctx: &Context, d: Duration) -> Result<(), RpcError> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = ctx.cancelled() => Err(cancelled_error()),
    }
}

fn main() {
    plugind_sdk::run(Echo)
}
