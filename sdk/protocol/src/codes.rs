//! Error codes (docs/protocol.md). Every error's `data` carries `plugin` where one is involved.

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// The request was cancelled (LSP's RequestCancelled); what a nested call gets when the call it
/// was made for ends first.
pub const REQUEST_CANCELLED: i64 = -32800;
/// The call's deadline passed (`data.timeout_ms`).
pub const DEADLINE_EXCEEDED: i64 = -32001;
/// The plugin is not running (`data.state`).
pub const PLUGIN_UNAVAILABLE: i64 = -32002;
/// The plugin crashed while the call was in flight.
pub const PLUGIN_CRASHED: i64 = -32003;
/// No such service (or plugin), or no provider matches the version range.
pub const SERVICE_NOT_FOUND: i64 = -32004;
/// Permission denied (`data.permission` or `data.dependency`).
pub const PERMISSION_DENIED: i64 = -32005;
/// The plugin's `max_inflight` and queue are full.
pub const OVERLOADED: i64 = -32006;
/// Invalid manifest or configuration.
pub const INVALID_MANIFEST: i64 = -32007;
/// A hook chain was rejected: a `failure: "closed"` plugin failed, timed out or was not running,
/// or a plugin rejected the payload on purpose (`data: { plugin, hook, error, receipt }`).
pub const HOOK_REJECTED: i64 = -32008;
/// What a hook plugin answers to reject a payload on purpose, whatever its `failure` mode.
pub const REJECTED: i64 = -32009;
/// An MCP plugin's tool answered a `CallToolResult` with `isError: true`
/// (`data: { plugin, result }`, the result unchanged).
pub const TOOL_ERROR: i64 = -32010;
