// Types of plugind-host.mjs, the host library for Node.js: an application talking to plugind.
// Guide: docs/hosts.md.

/** The code of ConnectionLost: made by host libraries, never sent by plugind. */
export declare const CONNECTION_LOST: -32011;
/** What plugind answers a cancelled call with. */
export declare const REQUEST_CANCELLED: -32800;

/** A JSON-RPC error from plugind or a plugin; a provided-service handler may throw one. */
export declare class PluginError extends Error {
  constructor(code: number, message: string, data?: unknown);
  code: number;
  data?: unknown;
}

/** The connection to plugind broke while the call was in flight, or was down when it was made. */
export declare class ConnectionLost extends PluginError {
  constructor(message?: string, data?: unknown);
  code: -32011;
}

export interface ConnectOptions {
  /** Control socket path; default: defaultSocket(). */
  socket?: string;
  /** plugind's --listen address (`http://HOST:PORT`), spoken as WebSocket; needs the `ws` package. */
  url?: string;
  /** Bearer token for `url`. */
  token?: string;
  /** File whose first line is the token. */
  tokenFile?: string;
}

/** What a plugin reports with `$/progress`. */
export interface Progress {
  message?: string;
  progress?: number;
  total?: number;
}

export interface CallOptions {
  /** The call's deadline; past it the call rejects with code -32001. */
  timeoutMs?: number;
  /** Aborting sends `$/cancel`; the call rejects with an error named `AbortError`. */
  signal?: AbortSignal;
  /** Called for every `$/progress` the plugin sends for this call. */
  onProgress?: (progress: Progress) => void;
  /** Sent as `_meta` (e.g. `{ traceparent }`). */
  meta?: Record<string, unknown>;
}

export interface ServiceCallOptions extends CallOptions {
  /** A semver range the provider must match. */
  version?: string;
}

export interface HookOptions {
  /** The whole chain's budget. */
  timeoutMs?: number;
  meta?: Record<string, unknown>;
  signal?: AbortSignal;
}

export interface HookResult {
  payload: unknown;
  handled_by: string[];
  stopped_by?: string;
  receipt?: Array<{ plugin: string; outcome: string; ms: number; error?: unknown }>;
}

/** What a provided-service handler gets besides its params. */
export interface HandlerContext {
  /** The plugin that called (absent for a host's call). */
  caller?: string;
  /** Aborted when plugind sends `$/cancel` for this call, or the connection breaks. */
  signal: AbortSignal;
}

export type Handler = (params: any, ctx: HandlerContext) => unknown | Promise<unknown>;

/** A plugind lifecycle event. */
export interface PluginEvent {
  ts: string;
  plugin: string;
  kind: string;
  state?: string;
  detail?: unknown;
  [key: string]: unknown;
}

export declare class Host {
  execute(plugin: string, method: string, params?: unknown, options?: CallOptions): Promise<any>;
  callService(service: string, method: string, params?: unknown, options?: ServiceCallOptions): Promise<any>;
  runHook(hook: string, payload: unknown, options?: HookOptions): Promise<HookResult>;
  /** Any control method (`plugins.list`, `supervisor.status`...). */
  request(method: string, params?: unknown): Promise<any>;
  /** Serves a host service; registered again after every reconnect. */
  provide(name: string, version: string, handlers: Record<string, Handler>): Promise<void>;
  /** plugind's events; resumes after a reconnect; ends at close(). */
  events(): AsyncGenerator<PluginEvent, void, undefined>;
  close(): Promise<void>;
}

/** The control socket by plugind's rules. */
export declare function defaultSocket(env?: Record<string, string | undefined>): string;
/** Connects, retrying for up to 10 s (then rejects with ConnectionLost). */
export declare function connect(options?: ConnectOptions): Promise<Host>;
