// plugind SDK for Node.js (>= 18): plain ESM, no dependencies, one file (`pluginctl new` copies
// it next to a plugin). Types: plugind-sdk.d.ts. Protocol: docs/protocol.md.
//
// A plugin is a child process speaking JSON-RPC 2.0 with plugind, one JSON object per line on
// stdin/stdout. serve() does the wire work: it answers the lifecycle requests, runs calls
// concurrently, lets handlers call back into plugind while other calls are in flight, aborts
// `ctx.signal` on `$/cancel` (and sends no answer for that call), and sends console.log and
// every other stdout write to stderr, so they cannot corrupt the wire.
//
//   import { serve } from "./plugind-sdk.mjs";
//   serve({
//     methods: {
//       hello: ({ name = "world" } = {}) => ({ greeting: `Hello, ${name}!` }),
//     },
//   });

import process from "node:process";

export const PROTOCOL_VERSION = 1;
/** Longest line either side may send; longer input lines are discarded. */
export const MAX_FRAME = 16 * 1024 * 1024;

/** Error codes (docs/protocol.md "Error codes"). */
export const ErrorCode = Object.freeze({
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  DEADLINE_EXCEEDED: -32001,
  PLUGIN_UNAVAILABLE: -32002,
  PLUGIN_CRASHED: -32003,
  SERVICE_NOT_FOUND: -32004,
  PERMISSION_DENIED: -32005,
  OVERLOADED: -32006,
  INVALID_MANIFEST: -32007,
  HOOK_REJECTED: -32008,
  REJECTED: -32009,
});

/**
 * A JSON-RPC error. Throw it from a handler to answer with exactly this error; calls into
 * plugind reject with it when plugind, or the service called, answers with an error.
 */
export class PluginError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = "PluginError";
    this.code = code;
    this.data = data;
  }

  toJSON() {
    const error = { code: this.code, message: this.message };
    if (this.data !== undefined && this.data !== null) error.data = this.data;
    return error;
  }

  static fromJSON(error) {
    if (error === null || typeof error !== "object") {
      return new PluginError(ErrorCode.INTERNAL_ERROR, `malformed error: ${JSON.stringify(error)}`);
    }
    return new PluginError(error.code ?? ErrorCode.INTERNAL_ERROR, String(error.message ?? ""), error.data);
  }
}

/**
 * The error a hook handler throws to reject a payload on purpose: `throw reject("no token")`.
 * The chain ends whatever the plugin's `failure` mode, and `hooks.run` answers -32008 hook
 * rejected, carrying this error (code -32009).
 */
export function reject(message, data) {
  return new PluginError(ErrorCode.REJECTED, message, data);
}

/** Return `new StopChain(payload)` from a hook handler to end the hook chain with `payload`. */
export class StopChain {
  constructor(payload) {
    this.payload = payload;
  }
}

const warn = (message) => process.stderr.write(`plugind-sdk: ${message}\n`);

/** Both directions of the wire: writes lines, matches responses to our requests by id. */
class Connection {
  #write;
  #nextId = 1;
  #pending = new Map(); // id -> { resolve, reject }
  #closed = false;

  constructor(write) {
    this.#write = write;
  }

  send(message) {
    // JSON.stringify escapes control characters, so a frame never holds a raw newline.
    this.#write(JSON.stringify(message) + "\n");
  }

  notify(method, params) {
    this.send({ jsonrpc: "2.0", method, params });
  }

  /** Sends a request; the promise settles with its result, or rejects (also when `signal` aborts). */
  request(method, params = {}, signal) {
    if (this.#closed) {
      return Promise.reject(new PluginError(ErrorCode.INTERNAL_ERROR, "the connection to plugind is closed"));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#pending.delete(id); // a late answer is then ignored
        reject(signal.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = (settle) => (value) => {
        signal?.removeEventListener("abort", onAbort);
        settle(value);
      };
      this.#pending.set(id, { resolve: done(resolve), reject: done(reject) });
      this.send({ jsonrpc: "2.0", id, method, params });
    });
  }

  /** Hands a response to its waiting request; false if none waits for that id. */
  resolve(message) {
    const waiter = this.#pending.get(message.id);
    if (!waiter) return false;
    this.#pending.delete(message.id);
    if ("error" in message) waiter.reject(PluginError.fromJSON(message.error));
    else waiter.resolve(message.result ?? null);
    return true;
  }

  close() {
    this.#closed = true;
    for (const { reject } of this.#pending.values()) {
      reject(new PluginError(ErrorCode.INTERNAL_ERROR, "the connection to plugind closed"));
    }
    this.#pending.clear();
  }
}

const withOptional = (params, optional) => {
  for (const [key, value] of Object.entries(optional)) if (value !== undefined && value !== null) params[key] = value;
  return params;
};

/**
 * plugind as the plugin sees it: logs, metrics, the service registry, service calls, kv.
 * `init` gets one as its second argument, and every call's `ctx` is one too.
 * Requests reject with a PluginError when plugind answers with an error.
 */
export class Host {
  #conn;

  constructor(conn, registry) {
    this.#conn = conn;
    this.registry = registry ?? new Registry(this);
  }

  /** The signal that aborts this host's requests (a call's ctx aborts on `$/cancel`). */
  get signal() {
    return undefined;
  }

  /** Sends any request to plugind and resolves with its result. */
  request(method, params = {}) {
    return this.#conn.request(method, params, this.signal);
  }

  /** Sends a notification to plugind. */
  notify(method, params) {
    this.#conn.notify(method, params);
  }

  /** A `log` line; level is trace, debug, info, warn or error. */
  log(level, message, fields) {
    this.notify("log", withOptional({ level, message: String(message) }, { fields }));
  }

  /** A `metrics.emit` sample; kind is counter, gauge or histogram. */
  metric(name, value, kind = "gauge", labels) {
    this.notify("metrics.emit", withOptional({ name, value, kind }, { labels }));
  }

  /** `service.call`: runs `method` on the provider of `service` and resolves with its result. */
  callService(service, method, params, { version, timeoutMs } = {}) {
    params ??= {};
    return this.request("service.call", withOptional({ service, method, params }, { version, timeout_ms: timeoutMs }));
  }

  // kv.* needs the "storage" permission (-32005 otherwise).
  async kvGet(key) {
    return (await this.request("kv.get", { key }))?.value ?? null;
  }

  async kvSet(key, value) {
    await this.request("kv.set", { key, value });
  }

  async kvDelete(key) {
    return Boolean((await this.request("kv.delete", { key }))?.deleted);
  }

  async kvList(prefix) {
    return (await this.request("kv.list", withOptional({}, { prefix })))?.keys ?? [];
  }
}

/** The service registry. `registerService` works only while the plugin's `register` runs. */
export class Registry {
  #host;
  /** @type {object[] | null} a list while `register` runs */
  declared = null;

  constructor(host) {
    this.#host = host;
  }

  /** Declares a service this plugin provides (besides the one named after the plugin). */
  registerService(name, version, { methods, capabilities } = {}) {
    if (!this.declared) throw new Error("registerService() is allowed only inside the plugin's register()");
    this.declared.push(withOptional({ name, version }, { methods, capabilities }));
  }

  /** The provider of `name` (`version` is a semver range), or null. */
  getService(name, version) {
    return this.#host.request("registry.getService", withOptional({ name }, { version }));
  }

  /** Like getService, but rejects with PluginError(-32004) when there is none. */
  requireService(name, version) {
    return this.#host.request("registry.requireService", withOptional({ name }, { version }));
  }

  listServices(capability) {
    return this.#host.request("registry.listServices", withOptional({}, { capability }));
  }
}

/**
 * One request from plugind: a Host plus what belongs to the call. `signal` aborts on
 * `$/cancel`, which also rejects the call's pending requests to plugind.
 */
export class Context extends Host {
  #controller = new AbortController();

  constructor(conn, registry, id, { service, caller } = {}) {
    super(conn, registry);
    this.id = id;
    this.service = service;
    this.caller = caller;
  }

  get signal() {
    return this.#controller.signal;
  }

  get cancelled() {
    return this.signal.aborted;
  }

  /**
   * `$/progress`: the call is still being worked on, which restarts its deadline.
   * Either `progress({ message, progress, total })` or `progress(message, progress, total)`.
   */
  progress(message, progress, total) {
    const update = message !== null && typeof message === "object" ? message : { message, progress, total };
    this.notify("$/progress", withOptional({ id: this.id }, update));
  }

  /** @internal */
  cancel() {
    const reason = new Error("the call was cancelled");
    reason.name = "AbortError";
    this.#controller.abort(reason);
  }
}

/**
 * Fills in the defaults of a plugin: `execute` dispatches to `methods[method]`, `hook` to
 * `hooks[hook]` (else returns the payload unchanged), the rest do nothing.
 */
export function definePlugin(definition) {
  const { methods = {}, hooks = {} } = definition;
  return {
    init() {},
    register() {},
    execute(method, params, ctx) {
      const handler = Object.hasOwn(methods, method) ? methods[method] : undefined;
      if (!handler) throw new PluginError(ErrorCode.METHOD_NOT_FOUND, `method not found: ${method}`);
      return handler.call(definition, params, ctx);
    },
    hook(hook, payload, ctx) {
      const handler = Object.hasOwn(hooks, hook) ? hooks[hook] : undefined;
      return handler ? handler.call(definition, payload, ctx) : payload;
    },
    teardown() {},
    onError() {},
    servicesChanged() {},
    ...bindAll(definition),
  };
}

// The definition's own functions, bound to it so that `this` still works when plugins are
// classes (methods live on the prototype) or object literals.
function bindAll(definition) {
  const bound = {};
  for (const key of ["init", "register", "execute", "hook", "teardown", "onError", "servicesChanged"]) {
    if (typeof definition[key] === "function") bound[key] = definition[key].bind(definition);
  }
  return bound;
}

/** Routes incoming messages: requests to the plugin, responses to waiting requests. */
class Server {
  #plugin;
  #conn;
  #host;
  #inflight = new Map(); // id -> Context

  constructor(plugin, conn) {
    this.#plugin = plugin;
    this.#conn = conn;
    this.#host = new Host(conn);
  }

  onLine(line) {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      warn(`ignored a line that is not JSON: ${line.slice(0, 200)}`);
      return;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      warn(`ignored a JSON value that is not a message: ${line.slice(0, 200)}`);
    } else if (typeof message.method === "string") {
      if ("id" in message) this.#answer(message);
      else this.#onNotification(message.method, message.params ?? {});
    } else if (!this.#conn.resolve(message)) {
      warn(`ignored a response to an unknown id: ${line.slice(0, 200)}`);
    }
  }

  close() {
    this.#conn.close();
  }

  #onNotification(method, params) {
    const call = (fn) =>
      Promise.resolve()
        .then(() => fn(params))
        .catch((err) => console.error(err));
    if (method === "$/cancel") this.#inflight.get(params.id)?.cancel();
    else if (method === "onError") call((p) => this.#plugin.onError(p));
    else if (method === "services.changed") call((p) => this.#plugin.servicesChanged(p));
    // Any other notification is ignored, as the protocol asks.
  }

  async #answer({ id, method, params }) {
    params ??= {};
    const ctx = new Context(this.#conn, this.#host.registry, id, params);
    this.#inflight.set(id, ctx);
    let reply;
    try {
      reply = { jsonrpc: "2.0", id, result: (await this.#dispatch(method, params, ctx)) ?? null };
    } catch (err) {
      if (!(err instanceof PluginError) && !ctx.cancelled) console.error(err); // a bug: show the stack
      reply = { jsonrpc: "2.0", id, error: toRpcError(err) };
    }
    this.#inflight.delete(id);
    if (ctx.cancelled) return; // plugind has already answered the caller: send nothing
    try {
      this.#conn.send(reply);
    } catch (err) {
      // The result is not JSON (a BigInt, a cycle, ...).
      const message = `result is not JSON-serializable: ${err.message}`;
      this.#conn.send({ jsonrpc: "2.0", id, error: { code: ErrorCode.INTERNAL_ERROR, message } });
    }
  }

  async #dispatch(method, params, ctx) {
    const plugin = this.#plugin;
    switch (method) {
      case "execute":
        return plugin.execute(params.method, params.params, ctx);
      case "hook": {
        const result = await plugin.hook(params.hook, params.payload, ctx);
        return result instanceof StopChain ? { payload: result.payload, stop: true } : { payload: result ?? null };
      }
      case "ping":
        return {};
      case "init":
        await plugin.init(params.config, this.#host, params);
        return { protocol_version: PROTOCOL_VERSION };
      case "register": {
        const registry = this.#host.registry;
        registry.declared = [];
        try {
          await plugin.register(registry);
          return { services: registry.declared };
        } finally {
          registry.declared = null;
        }
      }
      case "teardown":
        await plugin.teardown();
        return null;
      default:
        throw new PluginError(ErrorCode.METHOD_NOT_FOUND, `method not found: ${method}`);
    }
  }
}

function toRpcError(err) {
  if (err instanceof PluginError) return err.toJSON();
  const message = (err instanceof Error ? err.message : String(err)) || "internal error";
  return { code: ErrorCode.INTERNAL_ERROR, message };
}

/** Calls onLine with every line of `stream`; a line over MAX_FRAME is skipped without being held whole. */
function readFrames(stream, onLine, onEnd) {
  let parts = [];
  let size = 0;
  let skipping = false; // inside a line that is already too long
  stream.on("data", (chunk) => {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!skipping) {
        size += end - start;
        if (size > MAX_FRAME) {
          skipping = true;
          parts = [];
          warn(`discarded an input line longer than ${MAX_FRAME} bytes`);
        } else {
          parts.push(chunk.subarray(start, end));
        }
      }
      if (nl === -1) break;
      if (!skipping) {
        const line = Buffer.concat(parts).toString("utf8");
        if (line.trim()) onLine(line);
      }
      parts = [];
      size = 0;
      skipping = false;
      start = nl + 1;
    }
  });
  stream.on("end", onEnd);
}

/**
 * Takes stdout for the protocol: returns a private writer for it, and sends console.log and
 * every other process.stdout write to stderr, the plugin's log.
 */
function takeStdout() {
  const stdout = process.stdout;
  const write = stdout.write.bind(stdout);
  // console.log writes through process.stdout.write, so this catches it as well.
  stdout.write = process.stderr.write.bind(process.stderr);
  return write;
}

/**
 * Serves `plugin` over stdin/stdout until plugind closes stdin (after `teardown`), then exits.
 * `plugin` is an object with any of init/register/execute/hook/teardown/onError/servicesChanged,
 * and/or `methods` and `hooks` maps of handlers (see definePlugin).
 */
export function serve(plugin) {
  const conn = new Connection(takeStdout());
  const server = new Server(definePlugin(plugin), conn);
  readFrames(
    process.stdin,
    (line) => server.onLine(line),
    () => {
      server.close();
      process.exit(0);
    },
  );
}
