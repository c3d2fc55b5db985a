//! Services a host provides: the handlers plugind's `execute` requests are routed to.

use crate::ClientError;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// Who called a provided service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling plugin's name; `None` when a host called through `services.call`.
    pub plugin: Option<String>,
    /// The service name the call was routed by.
    pub service: Option<String>,
}

/// One method's handler, type-erased.
type Handler = Arc<dyn Fn(Value, Caller) -> BoxFuture<'static, Result<Value, ClientError>> + Send + Sync>;

/// The methods of one provided service, each an async function of `(params, caller)`.
///
/// A handler's `Err` is answered as a JSON-RPC error: a [`ClientError::Rpc`] keeps its code
/// (return `RpcError::new(code, message)` for your own), anything else becomes `-32603` with its
/// message. When plugind sends `$/cancel` for the call (the plugin's caller gave up), the
/// handler's future is dropped.
#[derive(Clone, Default)]
pub struct Handlers {
    methods: BTreeMap<String, Handler>,
}

impl Handlers {
    /// No methods yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `method`, served by `f`.
    pub fn on<F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(Value, Caller) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ClientError>> + Send + 'static,
    {
        self.methods.insert(method.to_owned(), Arc::new(move |params, caller| Box::pin(f(params, caller))));
        self
    }

    /// The method names, for `services.register`'s `methods`.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.methods.keys().map(String::as_str).collect()
    }

    /// The future answering one call, or `-32601` at once for an unknown method.
    pub(crate) fn serve(
        &self,
        method: &str,
        params: Value,
        caller: Caller,
    ) -> BoxFuture<'static, Result<Value, ClientError>> {
        match self.methods.get(method) {
            Some(h) => h(params, caller),
            None => {
                let e = plugind_protocol::jsonrpc::RpcError::method_not_found(method);
                Box::pin(async move { Err(ClientError::Rpc(e)) })
            }
        }
    }
}

/// A service this client registered: kept so it is registered again after a reconnect.
pub(crate) struct Provided {
    /// `services.register` params.
    pub(crate) register: Value,
    pub(crate) name: String,
    pub(crate) handlers: Handlers,
}
