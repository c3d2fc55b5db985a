//! The `Plugin` trait: what a plugin implements.

use std::future::Future;
use std::sync::Arc;

use plugind_protocol::methods::{HookResult, InitParams, ServicesChangedParams};
use plugind_protocol::RpcError;
use serde_json::Value;

use crate::context::Context;
use crate::registry::Registry;

/// A plugin: everything but [`Plugin::execute`] has a default.
///
/// Implement the methods with `async fn`; the futures must be `Send` because every call runs as
/// its own tokio task, concurrently with the others (`&self` is shared: keep mutable state behind
/// a `Mutex` or atomics).
/// The SDK serves the plugin through an `Arc`; `Arc<P>` is itself a `Plugin`, so a test can keep
/// a handle on a plugin it serves.
pub trait Plugin: Send + Sync + 'static {
    /// `init`: the handshake, with the plugin's name, version, merged `config` and data dir.
    /// An error fails the start. The SDK answers `{"protocol_version": 1}`.
    fn init(&self, ctx: Context, params: InitParams) -> impl Future<Output = Result<(), RpcError>> + Send {
        let _ = (ctx, params);
        async { Ok(()) }
    }

    /// `register`: declares services beyond the implicit one named after the plugin.
    /// The registry can also look other services up while this runs.
    fn register(&self, registry: &mut Registry) -> impl Future<Output = Result<(), RpcError>> + Send {
        let _ = registry;
        async { Ok(()) }
    }

    /// `execute`: one call of `method` with the caller's `params`.
    /// The result, or the error, goes to the caller unchanged.
    /// Unknown methods should return [`RpcError::method_not_found`].
    fn execute(
        &self,
        ctx: Context,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;

    /// `hook`: one step of a hook chain listed in the manifest's `hooks`.
    /// The default passes `payload` on unchanged.
    fn hook(
        &self,
        ctx: Context,
        hook: &str,
        payload: Value,
    ) -> impl Future<Output = Result<HookResult, RpcError>> + Send {
        let _ = (ctx, hook);
        async move { Ok(HookResult { payload, stop: false }) }
    }

    /// `teardown`: the last request before plugind closes stdin; release resources here.
    fn teardown(&self, ctx: Context) -> impl Future<Output = Result<(), RpcError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// `onError`: plugind saw an error caused by or aimed at this plugin.
    /// The default prints it to stderr, i.e. to the plugin's log.
    fn on_error(&self, ctx: Context, error: RpcError) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async move { eprintln!("plugind reported an error: {error}") }
    }

    /// `services.changed`: a service this plugin depends on came, went, or was replaced.
    fn services_changed(&self, ctx: Context, change: ServicesChangedParams) -> impl Future<Output = ()> + Send {
        let _ = (ctx, change);
        async {}
    }
}

impl<P: Plugin> Plugin for Arc<P> {
    fn init(&self, ctx: Context, params: InitParams) -> impl Future<Output = Result<(), RpcError>> + Send {
        (**self).init(ctx, params)
    }

    fn register(&self, registry: &mut Registry) -> impl Future<Output = Result<(), RpcError>> + Send {
        (**self).register(registry)
    }

    fn execute(
        &self,
        ctx: Context,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send {
        (**self).execute(ctx, method, params)
    }

    fn hook(
        &self,
        ctx: Context,
        hook: &str,
        payload: Value,
    ) -> impl Future<Output = Result<HookResult, RpcError>> + Send {
        (**self).hook(ctx, hook, payload)
    }

    fn teardown(&self, ctx: Context) -> impl Future<Output = Result<(), RpcError>> + Send {
        (**self).teardown(ctx)
    }

    fn on_error(&self, ctx: Context, error: RpcError) -> impl Future<Output = ()> + Send {
        (**self).on_error(ctx, error)
    }

    fn services_changed(&self, ctx: Context, change: ServicesChangedParams) -> impl Future<Output = ()> + Send {
        (**self).services_changed(ctx, change)
    }
}
