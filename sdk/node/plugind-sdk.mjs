// plugind SDK for Node.js (>= 18): plain ESM, no dependencies, one file (`pluginctl new` copies
// it next to a plugin). Types: plugind-sdk.d.ts. Protocol: docs/protocol.md.
//
// A plugin is a child process speaking JSON-RPC 2.0 with plugind, one JSON object per line on
// stdin/stdout. serve() does the wire work: it answers the lifecycle requests, runs calls
// concurrently, lets handlers call back into plugind while other calls are in flight, aborts
// `ctx.signal` on `$/cancel` (and sends no answer for that call), passes the call's trace context
// on (`ctx.traceparent`), and sends console.log and every other stdout write to stderr, so they
// cannot corrupt the wire.
//
//   import { serve } from "./plugind-sdk.mjs";
//   serve({
//     methods: {
//       hello: ({ name = "world" } = {}) => ({ greeting: `Hello, ${name}!` }),
//       // Declared for plugind's catalog: plugind checks params against the schema.
//       add: {
//         description: "Adds two numbers",
//         params: { type: "object", properties: { a: { type: "number" }, b: { type: "number" } } },
//         handler: ({ a, b }) => ({ sum: a + b }),
//       },
//     },
//   });
//
// Cost: a handler that returns a value (not a promise) is answered in the same turn of the event
// loop that read its request, with no promise in between; the answers to everything one read of
// stdin brought are written together, in one write.

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
  REQUEST_CANCELLED: -32800,
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
  // Lines not written yet: what one read of stdin answers goes out in one write (flush() at the
  // end of the read); anything sent later (a promise settling) at the end of that microtask run.
  #out = "";
  #batching = false;
  #scheduled = false;

  constructor(write) {
    this.#write = write;
  }

  send(message) {
    // JSON.stringify escapes control characters, so a frame never holds a raw newline.
    this.sendLine(JSON.stringify(message));
  }

  sendLine(line) {
    this.#out += line + "\n";
    if (!this.#batching && !this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Lines sent until end() go out together. */
  begin() {
    this.#batching = true;
  }

  end() {
    this.#batching = false;
    this.flush();
  }

  flush() {
    this.#scheduled = false;
    if (this.#out === "") return;
    const out = this.#out;
    this.#out = "";
    this.#write(out);
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

  /** The trace context of the call being served (a Context's), or undefined. */
  get traceparent() {
    return undefined;
  }

  get tracestate() {
    return undefined;
  }

  /**
   * `service.call`: runs `method` on the provider of `service` and resolves with its result.
   * Inside a call the request carries the call's trace context (`_meta.traceparent`).
   */
  callService(service, method, params, { version, timeoutMs } = {}) {
    params ??= {};
    const traceparent = this.traceparent;
    const _meta = traceparent === undefined ? undefined : withOptional({ traceparent }, { tracestate: this.tracestate });
    return this.request(
      "service.call",
      withOptional({ service, method, params }, { version, timeout_ms: timeoutMs, _meta }),
    );
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

/** A method's entry in the `register` answer's `methods` (the manifest's shape). */
function declaration({ description, params, result, timeoutMs, timeout_ms, idempotent } = {}) {
  return withOptional({}, { description, params, result, timeout_ms: timeout_ms ?? timeoutMs, idempotent });
}

/** The service registry. `registerService` works only while the plugin's `register` runs. */
export class Registry {
  #host;
  /** @type {object[] | null} a list while `register` runs */
  declared = null;
  /** @type {Record<string, object> | null} methods declared for the catalog, while `register` runs */
  methods = null;

  constructor(host) {
    this.#host = host;
  }

  /** Declares a service this plugin provides (besides the one named after the plugin). */
  registerService(name, version, { methods, capabilities } = {}) {
    if (!this.declared) throw new Error("registerService() is allowed only inside the plugin's register()");
    this.declared.push(withOptional({ name, version }, { methods, capabilities }));
  }

  /**
   * Declares a method for plugind's catalog: `{ description, params, result, timeoutMs, idempotent }`
   * (`params` and `result` are JSON Schemas). A `methods` entry written as `{ handler, ... }` is
   * declared the same way.
   */
  declareMethod(name, options) {
    if (!this.methods) throw new Error("declareMethod() is allowed only inside the plugin's register()");
    this.methods[name] = declaration(options);
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
  // Made on first use: most calls never look at their signal, and an AbortController is costly.
  #controller = null;
  #cancelled = false;
  #traceparent;
  #tracestate;

  constructor(conn, registry, id, { service, caller, _meta } = {}) {
    super(conn, registry);
    this.id = id;
    this.service = service;
    this.caller = caller;
    if (_meta !== null && typeof _meta === "object") {
      if (typeof _meta.traceparent === "string") this.#traceparent = _meta.traceparent;
      if (typeof _meta.tracestate === "string") this.#tracestate = _meta.tracestate;
    }
  }

  get signal() {
    if (this.#controller === null) {
      this.#controller = new AbortController();
      if (this.#cancelled) this.#controller.abort(cancelReason());
    }
    return this.#controller.signal;
  }

  get cancelled() {
    return this.#cancelled;
  }

  /** The W3C traceparent plugind passed with this call (`_meta.traceparent`), or undefined. */
  get traceparent() {
    return this.#traceparent;
  }

  /** The W3C tracestate plugind passed with this call, or undefined. */
  get tracestate() {
    return this.#tracestate;
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
    this.#cancelled = true;
    this.#controller?.abort(cancelReason());
  }
}

function cancelReason() {
  const reason = new Error("the call was cancelled");
  reason.name = "AbortError";
  return reason;
}

/**
 * Fills in the defaults of a plugin: `execute` dispatches to `methods[method]`, `hook` to
 * `hooks[hook]` (else returns the payload unchanged), the rest do nothing.
 */
export function definePlugin(definition) {
  const { methods = {}, hooks = {} } = definition;
  // `methods` entries are handlers, or `{ handler, description?, params?, result?, timeoutMs?,
  // idempotent? }`, which are also declared in the register answer.
  const handlers = new Map();
  const declarations = {};
  for (const [name, entry] of Object.entries(methods)) {
    if (typeof entry === "function") handlers.set(name, entry);
    else if (entry !== null && typeof entry === "object" && typeof entry.handler === "function") {
      handlers.set(name, entry.handler);
      declarations[name] = declaration(entry);
    }
  }
  return {
    init() {},
    register() {},
    execute(method, params, ctx) {
      const handler = handlers.get(method);
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
    [DECLARED]: declarations,
  };
}

const DECLARED = Symbol("declared methods");

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
      if ("id" in message) this.#request(message.id, message.method, message.params ?? {});
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

  // A handler that returns a value is answered at once, with no promise; one that returns a
  // promise is answered when it settles, and is in #inflight meanwhile so $/cancel can reach it.
  #request(id, method, params) {
    const ctx = new Context(this.#conn, this.#host.registry, id, params);
    let value;
    try {
      value = this.#dispatch(method, params, ctx);
    } catch (err) {
      this.#fail(id, ctx, err);
      return;
    }
    if (value !== null && typeof value === "object" && typeof value.then === "function") {
      this.#inflight.set(id, ctx);
      value.then(
        (result) => {
          this.#inflight.delete(id);
          if (ctx.cancelled) this.#cancelled(id);
          else this.#reply(id, result);
        },
        (err) => {
          this.#inflight.delete(id);
          this.#fail(id, ctx, err);
        },
      );
    } else {
      this.#reply(id, value);
    }
  }

  #reply(id, result) {
    let line;
    try {
      line = `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${JSON.stringify(result) ?? "null"}}`;
    } catch (err) {
      // The result is not JSON (a BigInt, a cycle, ...).
      const message = `result is not JSON-serializable: ${err.message}`;
      line = JSON.stringify({ jsonrpc: "2.0", id, error: { code: ErrorCode.INTERNAL_ERROR, message } });
    }
    this.#conn.sendLine(line);
  }

  /**
   * Answers a cancelled call: plugind has answered its caller; this says the work is over, which
   * frees the max_inflight slot plugind keeps for a cancelled call until then.
   */
  #cancelled(id) {
    this.#conn.send({ jsonrpc: "2.0", id, error: { code: ErrorCode.REQUEST_CANCELLED, message: "cancelled" } });
  }

  #fail(id, ctx, err) {
    if (ctx.cancelled) return this.#cancelled(id);
    if (!(err instanceof PluginError)) console.error(err); // a bug: show the stack
    this.#conn.send({ jsonrpc: "2.0", id, error: toRpcError(err) });
  }

  /** Starts a call: its result, or a promise of it. */
  #dispatch(method, params, ctx) {
    const plugin = this.#plugin;
    switch (method) {
      case "execute":
        return plugin.execute(params.method, params.params, ctx);
      case "hook": {
        const result = plugin.hook(params.hook, params.payload, ctx);
        return isThenable(result) ? result.then(hookAnswer) : hookAnswer(result);
      }
      case "ping":
        return {};
      case "init":
        return then(plugin.init(params.config, this.#host, params), () => ({ protocol_version: PROTOCOL_VERSION }));
      case "register": {
        const registry = this.#host.registry;
        registry.declared = [];
        registry.methods = { ...(plugin[DECLARED] ?? {}) };
        const answer = () => {
          const result = { services: registry.declared };
          if (Object.keys(registry.methods).length > 0) result.methods = registry.methods;
          return result;
        };
        const reset = () => {
          registry.declared = null;
          registry.methods = null;
        };
        let value;
        try {
          value = plugin.register(registry);
        } catch (err) {
          reset();
          throw err;
        }
        if (!isThenable(value)) {
          const result = answer();
          reset();
          return result;
        }
        return Promise.resolve(value).then(answer).finally(reset);
      }
      case "teardown":
        return then(plugin.teardown(), () => null);
      default:
        throw new PluginError(ErrorCode.METHOD_NOT_FOUND, `method not found: ${method}`);
    }
  }
}

const isThenable = (v) => v !== null && typeof v === "object" && typeof v.then === "function";
const then = (value, next) => (isThenable(value) ? Promise.resolve(value).then(next) : next(value));
const hookAnswer = (result) =>
  result instanceof StopChain ? { payload: result.payload, stop: true } : { payload: result ?? null };

function toRpcError(err) {
  if (err instanceof PluginError) return err.toJSON();
  // A bug in the handler: its class names what went wrong ("TypeError: x is not a function");
  // the stack is on the plugin's stderr (`pluginctl logs NAME`).
  const message =
    err instanceof Error ? (err.message ? `${err.name}: ${err.message}` : err.name) : String(err) || "internal error";
  return { code: ErrorCode.INTERNAL_ERROR, message };
}

/**
 * Calls onLine with every line of `stream`; a line over MAX_FRAME is skipped without being held
 * whole. Lines come as strings (the stream decodes UTF-8, keeping characters split across chunks
 * whole); `conn` batches the answers of each chunk into one write.
 */
function readFrames(stream, conn, onLine, onEnd) {
  let partial = ""; // the start of a line whose end has not come
  let skipping = false; // inside a line that is already too long
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    let start = 0;
    let nl = chunk.indexOf("\n");
    conn.begin();
    try {
      if (nl !== -1 && (partial !== "" || skipping)) {
        if (!skipping && partial.length + nl <= MAX_FRAME) line(partial + chunk.slice(0, nl));
        else if (!skipping) warn(`discarded an input line longer than ${MAX_FRAME} bytes`);
        partial = "";
        skipping = false;
        start = nl + 1;
        nl = chunk.indexOf("\n", start);
      }
      while (nl !== -1) {
        line(chunk.slice(start, nl));
        start = nl + 1;
        nl = chunk.indexOf("\n", start);
      }
    } finally {
      conn.end();
    }
    if (start < chunk.length && !skipping) {
      partial += chunk.slice(start);
      if (partial.length > MAX_FRAME) {
        partial = "";
        skipping = true;
        warn(`discarded an input line longer than ${MAX_FRAME} bytes`);
      }
    }
  });
  stream.on("end", onEnd);

  function line(text) {
    if (text.length > MAX_FRAME) warn(`discarded an input line longer than ${MAX_FRAME} bytes`);
    else if (text.trim()) onLine(text);
  }
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

// Under plugind (which sets PLUGIND_PLUGIN), stdout is taken as soon as this module loads: a
// console.log at the top of the plugin's own module, which runs after its imports, then reaches
// the plugin's log rather than the protocol channel.
let earlyStdout = process.env.PLUGIND_PLUGIN ? takeStdout() : null;

/**
 * Serves `plugin` over stdin/stdout until plugind closes stdin (after `teardown`), then exits.
 * `plugin` is an object with any of init/register/execute/hook/teardown/onError/servicesChanged,
 * and/or `methods` and `hooks` maps of handlers (see definePlugin).
 */
export function serve(plugin) {
  const conn = new Connection(earlyStdout ?? takeStdout());
  earlyStdout = null;
  const server = new Server(definePlugin(plugin), conn);
  readFrames(
    process.stdin,
    conn,
    (line) => server.onLine(line),
    () => {
      server.close();
      process.exit(0);
    },
  );
}
