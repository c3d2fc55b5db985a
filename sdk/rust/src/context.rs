//! What a handler gets: the call it is serving, and the way back to plugind.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use plugind_protocol::methods::{
    self, InitParams, KvKey, KvListParams, ListServicesParams, LogLevel, MetricKind, ServiceCallParams, ServiceInfo,
    ServiceQuery,
};
use plugind_protocol::RpcError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::Notify;

use crate::conn::Conn;

/// Completes when a call is cancelled.
///
/// Cheap to clone; every clone observes the same cancellation.
/// Move one into `spawn_blocking` work and poll [`CancelToken::is_cancelled`] there.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    // Wakes every `cancelled()` waiter; it stores no permit, so the flag is the source of truth.
    notify: Notify,
}

impl CancelToken {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Completes once the call is cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Register before looking at the flag, so a `cancel` in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_waiters();
        }
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

/// The call being served, shared by every clone of its [`Context`].
pub(crate) struct Request {
    /// The id plugind gave the call, echoed in the response and in `$/progress`.
    pub(crate) id: Box<RawValue>,
    /// Made on first use: most calls answer without anybody asking for it. It exists before
    /// anything can cancel the call, because a call is registered for `$/cancel` (with its token)
    /// only once its handler waits.
    cancel: OnceLock<CancelToken>,
    pub(crate) caller: Option<String>,
    pub(crate) service: Option<String>,
    /// The W3C trace context plugind passed with the call (`_meta`), passed on by `call_service`.
    pub(crate) trace: Option<TraceContext>,
}

impl Request {
    pub(crate) fn new(
        id: Box<RawValue>,
        caller: Option<String>,
        service: Option<String>,
        trace: Option<TraceContext>,
    ) -> Self {
        Self { id, cancel: OnceLock::new(), caller, service, trace }
    }

    /// The call's cancel token, made now if nobody asked for it before.
    pub(crate) fn token(&self) -> &CancelToken {
        self.cancel.get_or_init(CancelToken::new)
    }

    /// Whether the call was cancelled (a token nobody made cannot have been).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.get().is_some_and(CancelToken::is_cancelled)
    }
}

/// A W3C trace context as plugind passes it in `_meta` of `execute` and `hook` params, and as the
/// SDK passes it on in `_meta` of `service.call`.
///
/// Read it with [`TraceContext::traceparent`] and [`TraceContext::tracestate`]; build one with
/// [`TraceContext::new`] and the `with_*` methods. A version-00 `traceparent` (55 characters) is
/// held inline, so reading a call's trace context allocates nothing; any other string is kept
/// (and passed on) as it came. On the wire it is `{"traceparent": …, "tracestate": …}`, either
/// member left out when absent.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Option<Traceparent>,
    tracestate: Option<Box<str>>,
}

/// The length of a version-00 `traceparent`: `00-` 32 hex digits `-` 16 hex digits `-` 2 hex digits.
const TRACEPARENT_LEN: usize = 55;

/// A `traceparent` as it came: inline when it has a version-00 traceparent's length (every valid
/// one has), else on the heap.
#[derive(Clone, PartialEq, Eq)]
enum Traceparent {
    Inline([u8; TRACEPARENT_LEN]),
    Heap(Box<str>),
}

impl Traceparent {
    fn new(s: &str) -> Self {
        match <[u8; TRACEPARENT_LEN]>::try_from(s.as_bytes()) {
            Ok(bytes) => Traceparent::Inline(bytes),
            _ => Traceparent::Heap(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // The bytes of a whole `str` (see `new`), so this never fails.
            Traceparent::Inline(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Traceparent::Heap(s) => s,
        }
    }
}

impl TraceContext {
    /// A trace context with this `traceparent` (`version-traceid-parentid-flags`, e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`) and no `tracestate`.
    pub fn new(traceparent: &str) -> Self {
        Self { traceparent: Some(Traceparent::new(traceparent)), tracestate: None }
    }

    /// The same context with this `traceparent`.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: &str) -> Self {
        self.traceparent = Some(Traceparent::new(traceparent));
        self
    }

    /// The same context with this `tracestate`.
    #[must_use]
    pub fn with_tracestate(mut self, tracestate: &str) -> Self {
        self.tracestate = Some(tracestate.into());
        self
    }

    /// `version-traceid-parentid-flags`, as plugind sent it, if it sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_ref().map(Traceparent::as_str)
    }

    /// Vendor-specific trace state, as it came, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.tracestate())
            .finish()
    }
}

/// `_meta` on the wire; its strings are borrowed from the line unless they have escapes.
#[derive(Serialize, Deserialize)]
struct TraceWire<'a> {
    #[serde(
        default,
        borrow,
        deserialize_with = "plugind_protocol::jsonrpc::borrowed_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    traceparent: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "plugind_protocol::jsonrpc::borrowed_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    tracestate: Option<Cow<'a, str>>,
}

impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TraceWire {
            traceparent: self.traceparent().map(Cow::Borrowed),
            tracestate: self.tracestate().map(Cow::Borrowed),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = TraceWire::deserialize(d)?;
        Ok(Self {
            traceparent: wire.traceparent.as_deref().map(Traceparent::new),
            tracestate: wire.tracestate.as_deref().map(Box::from),
        })
    }
}

/// A handler's view of its call and of plugind.
///
/// Cheap to clone; clones may be moved into other tasks.
/// A `Context` outside a request (the one `services_changed` and `on_error` get) can still make
/// requests and send logs; its `cancelled()` completes when the connection to plugind closes.
#[derive(Clone)]
pub struct Context {
    conn: Arc<Conn>,
    req: Option<Arc<Request>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.request_id().map(RawValue::get))
            .field("caller", &self.caller())
            .field("service", &self.service())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Context {
    pub(crate) fn new(conn: Arc<Conn>, req: Option<Arc<Request>>) -> Self {
        Self { conn, req }
    }

    fn token(&self) -> &CancelToken {
        match &self.req {
            Some(r) => r.token(),
            None => &self.conn.closed,
        }
    }

    // ---- the call ------------------------------------------------------------------------------

    /// The JSON-RPC id of the request being served, as plugind wrote it (`None` outside a request).
    pub fn request_id(&self) -> Option<&RawValue> {
        self.req.as_deref().map(|r| &*r.id)
    }

    /// The calling plugin's name, when another plugin called through `service.call`.
    pub fn caller(&self) -> Option<&str> {
        self.req.as_deref().and_then(|r| r.caller.as_deref())
    }

    /// The service the caller asked for, when the call came through the service registry.
    pub fn service(&self) -> Option<&str> {
        self.req.as_deref().and_then(|r| r.service.as_deref())
    }

    /// The W3C `traceparent` plugind passed with this call (`_meta.traceparent`), if any.
    ///
    /// [`Context::call_service`] passes it on by itself; read it to tag your own logs or spans.
    pub fn traceparent(&self) -> Option<&str> {
        self.trace().and_then(TraceContext::traceparent)
    }

    /// The W3C `tracestate` plugind passed with this call, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.trace().and_then(TraceContext::tracestate)
    }

    /// This call's trace context (`_meta`), if plugind sent one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.req.as_deref().and_then(|r| r.trace.as_ref())
    }

    /// The `init` params (name, version, config, data dir), once plugind sent `init`.
    pub fn init_params(&self) -> Option<&InitParams> {
        self.conn.init.get()
    }

    /// Completes when plugind cancels this call (`$/cancel`) or the connection closes.
    ///
    /// Once cancelled, the SDK answers the call `-32800` when the handler ends, whatever it returns.
    pub async fn cancelled(&self) {
        self.token().cancelled().await
    }

    /// Whether this call was cancelled; for loops that do not await.
    pub fn is_cancelled(&self) -> bool {
        match &self.req {
            Some(r) => r.is_cancelled(),
            None => self.conn.closed.is_cancelled(),
        }
    }

    /// `Err(cancelled_error())` once cancelled, for `ctx.check_cancelled()?` in loops.
    pub fn check_cancelled(&self) -> Result<(), RpcError> {
        if self.is_cancelled() {
            Err(crate::cancelled_error())
        } else {
            Ok(())
        }
    }

    /// A token for this call's cancellation that can outlive the `Context`.
    pub fn cancel_token(&self) -> CancelToken {
        self.token().clone()
    }

    // ---- notifications to plugind --------------------------------------------------------------

    /// Sends `$/progress` for this call: the work goes on, so plugind restarts its deadline
    /// (never past the manifest's `max_timeout_ms`). Does nothing outside a request.
    pub fn progress(&self, message: Option<&str>, progress: Option<f64>, total: Option<f64>) {
        let Some(req) = &self.req else { return };
        #[derive(Serialize)]
        struct Progress<'a> {
            id: &'a RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            message: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            progress: Option<Num>,
            #[serde(skip_serializing_if = "Option::is_none")]
            total: Option<Num>,
        }
        let params = Progress { id: &req.id, message, progress: progress.map(Num), total: total.map(Num) };
        self.conn.notify(methods::PROGRESS, &params);
    }

    /// Sends a `log` line to plugind, which files it under this plugin.
    pub fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        #[derive(Serialize)]
        struct Log<'a> {
            level: LogLevel,
            message: &'a str,
        }
        self.conn.notify(methods::LOG, &Log { level, message: message.as_ref() });
    }

    /// Sends a `log` line with structured `fields` (a JSON object).
    pub fn log_with(&self, level: LogLevel, message: impl AsRef<str>, fields: Value) {
        #[derive(Serialize)]
        struct Log<'a> {
            level: LogLevel,
            message: &'a str,
            fields: Value,
        }
        self.conn.notify(methods::LOG, &Log { level, message: message.as_ref(), fields });
    }

    /// Sends a `metrics.emit` sample; plugind exports it labelled with this plugin.
    pub fn metric(&self, name: &str, value: f64, kind: MetricKind) {
        #[derive(Serialize)]
        struct Metric<'a> {
            name: &'a str,
            value: Num,
            kind: MetricKind,
        }
        self.conn.notify(methods::METRICS_EMIT, &Metric { name, value: Num(value), kind });
    }

    // ---- requests to plugind -------------------------------------------------------------------

    /// Sends any request to plugind and waits for its result.
    ///
    /// If this call is cancelled meanwhile, returns [`crate::cancelled_error`] at once.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.request_as(method, &params).await
    }

    pub(crate) async fn request_as<P, T>(&self, method: &str, params: &P) -> Result<T, RpcError>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let raw = self.conn.request(method, params, self.token()).await?;
        serde_json::from_str(raw.get())
            .map_err(|e| RpcError::internal(format!("unexpected result of {method} from plugind: {e}")))
    }

    /// Calls `method` of `service` through plugind (`service.call`) and returns the provider's result.
    ///
    /// The service must be among the plugin's `dependencies`, else plugind answers `-32005`.
    /// Errors of the provider come back unchanged.
    /// The request carries this call's trace context (`_meta`), so the trace goes on down the chain.
    pub async fn call_service(&self, service: &str, method: &str, params: Value) -> Result<Value, RpcError> {
        #[derive(Serialize)]
        struct Call<'a> {
            service: &'a str,
            method: &'a str,
            params: Value,
            #[serde(rename = "_meta", skip_serializing_if = "Option::is_none")]
            meta: Option<&'a TraceContext>,
        }
        self.request_as(methods::SERVICE_CALL, &Call { service, method, params, meta: self.trace() }).await
    }

    /// [`Context::call_service`] with every option (version range, timeout); it carries this
    /// call's trace context too.
    pub async fn call_service_with(&self, call: &ServiceCallParams) -> Result<Value, RpcError> {
        #[derive(Serialize)]
        struct WithMeta<'a> {
            #[serde(flatten)]
            call: &'a ServiceCallParams,
            #[serde(rename = "_meta", skip_serializing_if = "Option::is_none")]
            meta: Option<&'a TraceContext>,
        }
        self.request_as(methods::SERVICE_CALL, &WithMeta { call, meta: self.trace() }).await
    }

    /// Looks a service up: `None` if no provider matches (`registry.getService`).
    pub async fn get_service(&self, name: &str, version: Option<&str>) -> Result<Option<ServiceInfo>, RpcError> {
        let query = ServiceQuery { name: name.to_owned(), version: version.map(str::to_owned) };
        self.request_as(methods::REGISTRY_GET_SERVICE, &query).await
    }

    /// Looks a service up; `-32004` if no provider matches (`registry.requireService`).
    pub async fn require_service(&self, name: &str, version: Option<&str>) -> Result<ServiceInfo, RpcError> {
        let query = ServiceQuery { name: name.to_owned(), version: version.map(str::to_owned) };
        self.request_as(methods::REGISTRY_REQUIRE_SERVICE, &query).await
    }

    /// Lists services, optionally only those with `capability` (`registry.listServices`).
    pub async fn list_services(&self, capability: Option<&str>) -> Result<Vec<ServiceInfo>, RpcError> {
        let params = ListServicesParams { capability: capability.map(str::to_owned) };
        self.request_as(methods::REGISTRY_LIST_SERVICES, &params).await
    }

    /// Reads `key` from the plugin's store; `None` if absent (needs the `storage` permission).
    pub async fn kv_get(&self, key: &str) -> Result<Option<Value>, RpcError> {
        #[derive(Deserialize)]
        struct Got {
            #[serde(default)]
            value: Value,
        }
        let got: Got = self.request_as(methods::KV_GET, &KvKey { key: key.to_owned() }).await?;
        Ok(match got.value {
            Value::Null => None,
            v => Some(v),
        })
    }

    /// Writes `key` in the plugin's store.
    pub async fn kv_set(&self, key: &str, value: Value) -> Result<(), RpcError> {
        #[derive(Serialize)]
        struct Set<'a> {
            key: &'a str,
            value: Value,
        }
        let _: Value = self.request_as(methods::KV_SET, &Set { key, value }).await?;
        Ok(())
    }

    /// Deletes `key`; `true` if it existed.
    pub async fn kv_delete(&self, key: &str) -> Result<bool, RpcError> {
        #[derive(Deserialize)]
        struct Deleted {
            #[serde(default)]
            deleted: bool,
        }
        let d: Deleted = self.request_as(methods::KV_DELETE, &KvKey { key: key.to_owned() }).await?;
        Ok(d.deleted)
    }

    /// Lists the plugin's keys, optionally only those starting with `prefix`.
    pub async fn kv_list(&self, prefix: Option<&str>) -> Result<Vec<String>, RpcError> {
        #[derive(Deserialize)]
        struct Keys {
            #[serde(default)]
            keys: Vec<String>,
        }
        let params = KvListParams { prefix: prefix.map(str::to_owned) };
        let k: Keys = self.request_as(methods::KV_LIST, &params).await?;
        Ok(k.keys)
    }
}

/// A number on the wire: integral values are written as integers (`3`, not `3.0`), so that
/// hosts comparing JSON values see what the plugin meant.
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact.
        if self.0.fract() == 0.0 && self.0.abs() < EXACT {
            #[allow(clippy::cast_possible_truncation)] // integral and below 2^53, checked above
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}
