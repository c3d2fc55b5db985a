// Types of plugind-sdk.mjs, the plugind SDK for Node.js. Protocol: docs/protocol.md.

export declare const PROTOCOL_VERSION: 1;
/** Longest line either side may send (16 MiB); longer input lines are discarded. */
export declare const MAX_FRAME: number;

/** Error codes of the protocol. */
export declare const ErrorCode: Readonly<{
  PARSE_ERROR: -32700;
  INVALID_REQUEST: -32600;
  METHOD_NOT_FOUND: -32601;
  INVALID_PARAMS: -32602;
  INTERNAL_ERROR: -32603;
  DEADLINE_EXCEEDED: -32001;
  PLUGIN_UNAVAILABLE: -32002;
  PLUGIN_CRASHED: -32003;
  SERVICE_NOT_FOUND: -32004;
  PERMISSION_DENIED: -32005;
  OVERLOADED: -32006;
  INVALID_MANIFEST: -32007;
  HOOK_REJECTED: -32008;
  REJECTED: -32009;
  REQUEST_CANCELLED: -32800;
}>;

type Awaitable<T> = T | Promise<T>;

/** A JSON-RPC error object as it travels on the wire. */
export interface RpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/**
 * A JSON-RPC error. Throw it from a handler to answer with exactly this error; requests to
 * plugind reject with it when plugind, or the service called, answers with an error.
 */
export declare class PluginError extends Error {
  constructor(code: number, message: string, data?: unknown);
  code: number;
  data?: unknown;
  toJSON(): RpcErrorObject;
  static fromJSON(error: unknown): PluginError;
}

/**
 * The error a hook handler throws to reject a payload on purpose: `throw reject("no token")`.
 * The chain ends whatever the plugin's `failure` mode; `hooks.run` answers -32008 carrying it.
 */
export declare function reject(message: string, data?: unknown): PluginError;

/** Return `new StopChain(payload)` from a hook handler to end the hook chain with `payload`. */
export declare class StopChain<P = unknown> {
  constructor(payload: P);
  payload: P;
}

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";
export type MetricKind = "counter" | "gauge" | "histogram";

/** A service as the registry reports it. */
export interface ServiceInfo {
  name: string;
  version: string;
  plugin: string;
  methods: string[];
  capabilities: string[];
}

/** `init` params: what plugind tells the plugin about itself. */
export interface InitParams {
  protocol_version: number;
  name: string;
  version: string;
  config: unknown;
  /** null without the `storage` permission. */
  data_dir: string | null;
  supervisor: { name: "plugind"; version: string };
}

/** `services.changed` params. */
export interface ServiceChange {
  service: string;
  version: string;
  plugin: string;
  event: "up" | "down" | "replaced";
}

export interface ProgressUpdate {
  message?: string;
  progress?: number;
  total?: number;
}

/** plugind as the plugin sees it. Requests reject with a PluginError on an error answer. */
export declare class Host {
  readonly registry: Registry;
  /** Aborts this host's pending requests (only a call's Context has one). */
  readonly signal: AbortSignal | undefined;
  /** Any request to plugind. */
  request<T = unknown>(method: string, params?: unknown): Promise<T>;
  /** Any notification to plugind. */
  notify(method: string, params: unknown): void;
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void;
  metric(name: string, value: number, kind?: MetricKind, labels?: Record<string, string>): void;
  /** The W3C trace context of the call being served (a Context's); undefined elsewhere. */
  readonly traceparent: string | undefined;
  readonly tracestate: string | undefined;
  /**
   * `service.call` through plugind's registry: resolves with the provider's result. Inside a call,
   * the request carries the call's trace context (`_meta.traceparent`, `_meta.tracestate`).
   */
  callService<T = unknown>(
    service: string,
    method: string,
    params?: unknown,
    options?: { version?: string; timeoutMs?: number },
  ): Promise<T>;
  /** kv.* need the `storage` permission. */
  kvGet<T = unknown>(key: string): Promise<T | null>;
  kvSet(key: string, value: unknown): Promise<void>;
  kvDelete(key: string): Promise<boolean>;
  kvList(prefix?: string): Promise<string[]>;
}

/** A method's entry in plugind's catalog (sent in the `register` answer's `methods`). */
export interface MethodDeclaration {
  description?: string;
  /** JSON Schema of the params; plugind rejects params that do not match (-32602). */
  params?: object;
  /** JSON Schema of the result. */
  result?: object;
  /** This method's deadline (`timeout_ms` is accepted too). */
  timeoutMs?: number;
  timeout_ms?: number;
  /** Informational: calling it twice has the effect of calling it once. */
  idempotent?: boolean;
}

/** The service registry. `registerService` and `declareMethod` work only while `register` runs. */
export declare class Registry {
  registerService(name: string, version: string, options?: { methods?: string[]; capabilities?: string[] }): void;
  /** Declares a method for plugind's catalog (the `methods` map's `{ handler, ... }` form does the same). */
  declareMethod(name: string, declaration: MethodDeclaration): void;
  getService(name: string, version?: string): Promise<ServiceInfo | null>;
  /** Rejects with PluginError(-32004) when no provider matches. */
  requireService(name: string, version?: string): Promise<ServiceInfo>;
  listServices(capability?: string): Promise<ServiceInfo[]>;
}

/** One request from plugind. */
export declare class Context extends Host {
  /** The JSON-RPC id of the request. */
  readonly id: number | string;
  /** Set when the call came through the service registry. */
  readonly service?: string;
  /** The calling plugin's name, when a plugin called. */
  readonly caller?: string;
  /** The W3C traceparent plugind passed with this call (`_meta.traceparent`), or undefined. */
  readonly traceparent: string | undefined;
  /** The W3C tracestate plugind passed with this call, or undefined. */
  readonly tracestate: string | undefined;
  /** Aborted on `$/cancel`; the call's pending requests to plugind then reject. */
  readonly signal: AbortSignal;
  readonly cancelled: boolean;
  /** `$/progress`: the call is still being worked on, which restarts its deadline. */
  progress(update: ProgressUpdate): void;
  progress(message?: string, progress?: number, total?: number): void;
}

/** The plugin interface; every member may return a promise. */
export interface Plugin {
  /** Handshake: `config` is the manifest's config merged with the operator's. */
  init(config: any, host: Host, params: InitParams): Awaitable<void>;
  /** Declare services with `registry.registerService`. */
  register(registry: Registry): Awaitable<void>;
  /** A call: return the result (any JSON value) or throw a PluginError. */
  execute(method: string, params: any, ctx: Context): Awaitable<unknown>;
  /** Last request before stdin closes. */
  teardown(): Awaitable<void>;
  /** plugind saw an error caused by or aimed at this plugin. */
  onError?(error: RpcErrorObject): Awaitable<void>;
  /** One step of a hook chain: the new payload, or a StopChain. Default: payload unchanged. */
  hook?(hook: string, payload: any, ctx: Context): Awaitable<unknown>;
  /** A dependency came, went or was replaced. */
  servicesChanged?(change: ServiceChange): Awaitable<void>;
}

export type MethodHandler = (params: any, ctx: Context) => Awaitable<unknown>;
export type HookHandler = (payload: any, ctx: Context) => Awaitable<unknown>;

/** A handler with its catalog declaration. */
export interface DeclaredMethod extends MethodDeclaration {
  handler: MethodHandler;
}

/** A plugin with any member left out, plus handler maps the default execute/hook dispatch to. */
export interface PluginDefinition extends Partial<Plugin> {
  /** Handlers by method name; a `{ handler, description?, params?, ... }` entry is also declared. */
  methods?: Record<string, MethodHandler | DeclaredMethod>;
  hooks?: Record<string, HookHandler>;
}

/** Fills in the defaults: execute → `methods[method]` (else -32601), hook → `hooks[hook]`. */
export declare function definePlugin(definition: PluginDefinition): Plugin;

/** Serves the plugin over stdin/stdout until plugind closes stdin, then exits the process. */
export declare function serve(plugin: Plugin | PluginDefinition): void;
