//! Write plugind plugins in Rust.
//!
//! A plugin is a process that plugind spawns and talks to over stdin/stdout (JSON-RPC 2.0, one
//! message per line, docs/protocol.md).
//! This crate does the protocol: implement [`Plugin`] and hand it to [`run`].
//!
//! # Example
//!
//! ```no_run
//! use plugind_sdk::{json, Context, Plugin, Registry, RpcError, Value};
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     // Optional: declare services beyond the implicit one named after the plugin.
//!     async fn register(&self, registry: &mut Registry) -> Result<(), RpcError> {
//!         registry.register_service("greeter", "1.0.0").method("hello").capability("demo");
//!         Ok(())
//!     }
//!
//!     async fn execute(&self, ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
//!         match method {
//!             "hello" => {
//!                 let name = params.get("name").and_then(Value::as_str).unwrap_or("world");
//!                 ctx.log(plugind_sdk::LogLevel::Debug, format!("greeting {name}"));
//!                 Ok(json!({ "greeting": format!("Hello, {name}!") }))
//!             }
//!             "remember" => {
//!                 // Calls to plugind can be made from inside a handler.
//!                 ctx.kv_set("last", params.clone()).await?;
//!                 Ok(json!({ "stored": true }))
//!             }
//!             _ => Err(RpcError::method_not_found(method)),
//!         }
//!     }
//! }
//!
//! fn main() {
//!     plugind_sdk::run(Greeter)
//! }
//! ```
//!
//! Unit tests need no plugind: [`testing::TestHost`] runs a plugin over an in-memory pipe.
//!
//! # Theory of Operation
//!
//! [`run`] builds a tokio runtime and calls [`serve`].
//! [`serve`] takes the process's stdio for the protocol and calls [`serve_on`], which does the work
//! over any `AsyncRead`/`AsyncWrite` pair (tests use `tokio::io::duplex`).
//!
//! Stray output protection: [`serve`] first duplicates the real stdout for the protocol, then
//! points fd 1 at stderr and fd 0 at `/dev/null`.
//! So `println!` (yours, or a library's) lands in the plugin's log instead of corrupting the wire,
//! and nothing else in the process, nor a child process, can read the protocol's input.
//! The protocol descriptors are close-on-exec.
//!
//! One reader loop reads lines (at most [`MAX_FRAME_BYTES`] each; longer ones are skipped and
//! reported on stderr) and routes them:
//! - A request from plugind (`init`, `register`, `execute`, `hook`, `teardown`) calls the [`Plugin`]
//!   and polls the handler's future once, right there: a handler that does not wait is answered
//!   at once, without a task. One that is still pending becomes its own tokio task, so any number of
//!   calls are in flight at once and a slow one never holds up the others. `ping` is answered inline.
//!   (A handler that computes for long before its first `.await` does hold the reader up meanwhile:
//!   such work belongs in `tokio::task::spawn_blocking`, as in any tokio program.)
//! - A response is matched by id to a request the plugin made through a [`Context`]
//!   (`registry.*`, `service.call`, `kv.*`); the ids of both directions are independent.
//! - A notification (`$/cancel`, `services.changed`, `onError`) is handled at once.
//!
//! Every outgoing line goes through one writer task, which writes whatever is queued and flushes
//! when the queue runs dry: one `write` per burst, no latency when idle. The answers the reader
//! makes itself (handlers that did not wait, `ping`, refusals) are held until it has handled
//! everything one read of stdin brought, and queued together.
//!
//! The hot path allocates little: an `execute` (or `hook`) line in the shape plugind writes is
//! parsed in one pass, envelope and params together, its method name borrowed from the line and
//! its `_meta` traceparent kept inline in the [`TraceContext`]; any other shape takes the general
//! path (the envelope, then the params), with the same outcome.
//!
//! Cancellation is cooperative: `$/cancel {id}` trips the [`Context::cancelled`] token of that
//! call; when the handler ends, the SDK answers the call `-32800` whatever the handler returned
//! (plugind has answered the caller; the answer tells it the work is over).
//! Requests the handler is still waiting on (e.g. [`Context::call_service`]) return at once with
//! [`REQUEST_CANCELLED`].
//! The handler's future is not dropped: it runs until it notices, so it can clean up.
//!
//! The handshake comes first: `register`, `execute` and `hook` before `init` are refused with
//! `-32002` (`data.state` = `starting`); `ping` and `teardown` always work.
//! `init` params are read leniently (only what is present is used) and answered with
//! `{"protocol_version": 1}`; whether the versions fit is plugind's decision.
//!
//! Errors: an `RpcError` from the plugin reaches the caller unchanged; an unknown JSON-RPC method is
//! `-32601`; params that do not fit the method are `-32602`; a panic in a handler is `-32603`
//! carrying the panic message (also in `data.panic`), and the plugin keeps serving.
//!
//! When stdin closes, outstanding requests to plugind fail (no answer can come), calls in flight
//! get [`EOF_GRACE`] to finish and answer, the rest are cancelled, the writer flushes, and
//! [`serve`] returns.
//!
//! This crate depends on `plugind-protocol` (wire types, no I/O) and never on the supervisor.

#![warn(missing_docs)]

mod conn;
mod context;
mod plugin;
mod registry;
mod serve;
mod stdio;
pub mod testing;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use context::{CancelToken, Context, TraceContext};
pub use plugin::Plugin;
pub use registry::{MethodBuilder, Registry, ServiceBuilder};
pub use serve::{serve_on, MAX_FRAME_BYTES};

pub use plugind_protocol as protocol;
pub use plugind_protocol::codes;
pub use plugind_protocol::methods::{
    HookResult, InitParams, LogLevel, MetricKind, ServiceCallParams, ServiceDecl, ServiceEvent, ServiceInfo,
    ServicesChangedParams,
};
pub use plugind_protocol::RpcError;
pub use serde_json::{self, json, Value};
pub use tokio;

/// The code of the error that requests made on behalf of a cancelled call return
/// (LSP's `RequestCancelled`), and the answer of a cancelled call.
pub const REQUEST_CANCELLED: i64 = -32800;

/// How long calls in flight may still finish and answer after plugind closed stdin.
/// plugind sends `SIGTERM` two seconds after closing stdin, so this stays below that.
pub const EOF_GRACE: Duration = Duration::from_secs(1);

/// The error a hook handler returns to reject a payload on purpose (code `-32009`): the chain
/// ends whatever the plugin's `failure` mode, and `hooks.run` answers `-32008` hook rejected
/// carrying this error.
///
/// ```
/// # use plugind_sdk::{reject, RpcError, Value};
/// fn on_request(payload: &Value) -> Result<Value, RpcError> {
///     if payload["headers"]["authorization"].is_null() {
///         return Err(reject("missing Authorization header"));
///     }
///     Ok(payload.clone())
/// }
/// # assert_eq!(on_request(&Value::Null).unwrap_err().code, -32009);
/// ```
pub fn reject(message: impl Into<String>) -> RpcError {
    RpcError::new(plugind_protocol::codes::REJECTED, message)
}

/// The error a call cancelled by plugind ends with (see [`REQUEST_CANCELLED`]).
pub fn cancelled_error() -> RpcError {
    RpcError::new(REQUEST_CANCELLED, "request cancelled")
}

/// Serves `plugin` on this process's stdin/stdout until stdin closes: the whole `main` of a plugin.
///
/// Builds a multi-threaded tokio runtime and runs [`serve`] on it.
/// On an I/O error it prints the error to stderr and exits with status 1.
///
/// The runtime has half as many worker threads as the CPUs the plugin may run on, at least one,
/// unless `TOKIO_WORKER_THREADS` says otherwise. The plugin shares the CPUs with plugind and the
/// other plugins, and a call's work is usually short: a worker per CPU made the tasks of each
/// call wake each other across CPUs (on 2 vCPUs, 6.3 µs of CPU per echo call with two workers,
/// 4.1 µs with one). As in any tokio program, a handler that blocks its thread
/// (`std::thread::sleep`, blocking I/O, a long computation), before or after an `.await`, holds
/// up everything on the runtime, the reading of plugind's messages included: every other call,
/// `ping` and `$/cancel` waits behind it (more workers would not help: the worker that blocks is
/// the one that was polling stdin). Such work belongs in `tokio::task::spawn_blocking`, or the
/// process can build its own runtime and call [`serve`].
pub fn run<P: Plugin>(plugin: P) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads((cpus / 2).max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fatal(&e),
    };
    // The serving loop runs as a task on a worker, not on this thread: a request read there is
    // spawned onto the same worker's queue and handled without waking another thread (on
    // `block_on`'s thread every request woke a worker, and the reactor woke this thread).
    let result =
        runtime.block_on(async { tokio::spawn(serve(plugin)).await }).unwrap_or_else(|e| Err(std::io::Error::other(e)));
    // Handlers that ignored cancellation, or blocking reads of the fallback stdio, must not keep the
    // process alive after plugind is gone.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        fatal(&e)
    }
}

fn fatal(e: &std::io::Error) -> ! {
    eprintln!("plugind-sdk: {e}");
    std::process::exit(1)
}

/// Serves `plugin` on this process's stdin/stdout until stdin closes.
///
/// Must be called inside a tokio runtime with I/O and time enabled, at most once per process:
/// it takes stdio over (see the crate doc's Theory of Operation), and `println!` goes to stderr
/// from then on.
pub async fn serve<P: Plugin>(plugin: P) -> std::io::Result<()> {
    let (reader, writer) = stdio::take()?;
    serve_on(plugin, reader, writer).await
}
