// plugind-host: talk to plugind from a Node application (a *host*). Node >= 18.
//
//   import { connect } from './plugind-host.mjs';
//   const host = await connect();                       // the control socket, found as pluginctl finds it
//   console.log(await host.execute('echo-node', 'hello', { name: 'you' }));
//   await host.provide('ui', '1.0.0', { notify: (params, { caller }) => ({ shown: true }) });
//   for await (const ev of host.events()) console.log(ev.plugin, ev.kind);
//
// Socket mode uses the standard library only; `url` (plugind's --listen, spoken as WebSocket)
// loads the `ws` package, only then.
//
// Wire rules (docs/hosts.md has them all):
// - Aborting a call's `signal` sends `$/cancel {id}`; plugind cancels the call down the chain and
//   answers -32800. The call rejects with an error whose name is `AbortError`.
// - `$/progress {id, ...}` for a call goes to that call's `onProgress`.
// - The connection is kept: when it breaks (plugind restarts), calls in flight reject at once with
//   `ConnectionLost` (-32011, made here, never sent by plugind), calls made meanwhile too, and the
//   library reconnects with backoff (100 ms doubling to 2 s), registers its provided services
//   again and resumes its event subscription.

import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';

/** The code of ConnectionLost: made by host libraries, never sent by plugind. */
export const CONNECTION_LOST = -32011;
/** What plugind answers a cancelled call with. */
export const REQUEST_CANCELLED = -32800;
const INTERNAL_ERROR = -32603;
const INVALID_PARAMS = -32602;
const METHOD_NOT_FOUND = -32601;
const PERMISSION_DENIED = -32005;

const CONNECT_PATIENCE_MS = 10_000;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 2_000;

/** A JSON-RPC error: from plugind, a plugin, or (ConnectionLost) this library. A provided-service
 * handler may throw one to answer with its own code and data. */
export class PluginError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = 'PluginError';
    this.code = code;
    this.data = data;
  }
}

/** The connection to plugind broke while the call was in flight, or was down when it was made. */
export class ConnectionLost extends PluginError {
  constructor(message = 'connection to plugind lost', data) {
    super(CONNECTION_LOST, message, data);
    this.name = 'ConnectionLost';
  }
}

function abortError(signal) {
  const e = new Error(signal?.reason?.message ?? 'the call was aborted');
  e.name = 'AbortError';
  e.cause = signal?.reason;
  return e;
}

/** The control socket by plugind's rules: $PLUGIND_SOCKET, $RUNTIME_DIRECTORY/plugind.sock,
 * $XDG_RUNTIME_DIR/plugind.sock, else /tmp/plugind-$UID.sock. */
export function defaultSocket(env = process.env) {
  if (env.PLUGIND_SOCKET) return env.PLUGIND_SOCKET;
  for (const v of ['RUNTIME_DIRECTORY', 'XDG_RUNTIME_DIR']) if (env[v]) return path.join(env[v], 'plugind.sock');
  return `/tmp/plugind-${os.userInfo().uid}.sock`;
}

/** Connects to plugind, retrying for up to 10 s (then rejects with ConnectionLost).
 * `socket`: the control socket path (default: defaultSocket()). `url`: plugind's --listen
 * address (`http://HOST:PORT`) with `token` (or `tokenFile`) instead. */
export async function connect({ socket, url, token, tokenFile } = {}) {
  if (url && token == null && tokenFile) token = fs.readFileSync(tokenFile, 'utf8').split('\n')[0].trim();
  const host = new Host(url ? null : socket ?? defaultSocket(), url, token);
  await host._connectFirst();
  return host;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Refuses a socket bound by neither our uid nor root in a directory others may write (`/tmp`),
 * as plugind refuses such a peer: any local user can bind a path there first, and would read
 * every call. (Node has no SO_PEERCRED; a socket file belongs to whoever bound it. A dedicated
 * user's plugind in its own directory is fine.)
 */
function boundByUsOrRoot(file) {
  let owner;
  let shared;
  try {
    owner = fs.statSync(file).uid;
    // The socket's own directory: one the socket's owner (or root, or we) owns and nobody
    // else may write, as a dedicated user's is.
    const dir = fs.statSync(path.dirname(path.resolve(file)));
    shared = (dir.mode & 0o022) !== 0 || ![owner, process.getuid(), 0].includes(dir.uid);
  } catch {
    return null; // connecting says why (ENOENT…)
  }
  const me = process.getuid();
  if (owner === me || owner === 0 || !shared) return null;
  const e = new Error(
    `it was bound by uid ${owner}, neither yours (${me}) nor root, in a directory others may write: ` +
      'not your plugind (another user bound this path first); nothing was sent',
  );
  e.code = 'EACCES';
  return e;
}

/** One connection over the Unix socket: NDJSON lines. */
function openSocket(file) {
  return new Promise((resolve, reject) => {
    const refused = boundByUsOrRoot(file);
    if (refused) {
      reject(refused);
      return;
    }
    const s = net.createConnection(file);
    s.once('error', reject);
    s.once('connect', () => {
      s.off('error', reject);
      let buf = '';
      const link = {
        onMessage: null,
        onClose: null,
        send: (text) => s.write(text + '\n'),
        close: () => s.destroy(),
      };
      s.setEncoding('utf8');
      s.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim()) link.onMessage?.(line);
        }
      });
      s.on('error', () => {});
      s.on('close', () => link.onClose?.());
      resolve(link);
    });
  });
}

/** One connection to --listen over WebSocket: one JSON message per frame. */
async function openWs(url, token) {
  let WebSocket;
  try {
    ({ default: WebSocket } = await import('ws'));
  } catch {
    throw new Error("plugind-host: `url` needs the 'ws' package (npm install ws); `socket` needs nothing");
  }
  const ws = new WebSocket(url.replace(/^http/, 'ws'), { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  ws.on('error', () => {}); // each failure is reported once, below or by 'close'
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', (e) => reject(Object.assign(e, { code: e.code ?? 'ECONNREFUSED' })));
    ws.once('unexpected-response', (req, res) => {
      req.destroy();
      if (res.statusCode === 401 || res.statusCode === 403) {
        // plugind was reached and said no: an answer, not "cannot reach" (no retry).
        const why = `plugind at ${url} refused the bearer token (HTTP ${res.statusCode}): check the token`;
        reject(new PluginError(PERMISSION_DENIED, why, { http_status: res.statusCode }));
      } else {
        // Not plugind's WebSocket (another server, a proxy's error page): retried as unreachable.
        const e = new Error(`no plugind WebSocket there (HTTP ${res.statusCode})`);
        reject(Object.assign(e, { code: 'ECONNREFUSED' }));
      }
    });
  });
  const link = { onMessage: null, onClose: null, send: (t) => ws.send(t), close: () => ws.close() };
  ws.on('message', (data) => link.onMessage?.(data.toString()));
  ws.on('close', () => link.onClose?.());
  return link;
}

/** A connection to plugind that stays up: made by `connect`. */
export class Host {
  constructor(socket, url, token) {
    this._socket = socket;
    this._url = url;
    this._token = token;
    this._link = null;
    this._up = false;
    this._closed = false;
    this._refused = null; // why plugind refused the last reconnection, if it did
    this._nextId = 0;
    this._pending = new Map(); // our request id -> { resolve, reject, onProgress }
    this._serving = new Map(); // plugind's request id -> AbortController
    this._services = new Map(); // name -> { version, handlers }
    this._eventQueues = new Set();
    this._subscribed = false; // events.subscribe sent on the current connection
  }

  // ---- calls ----------------------------------------------------------------------------------

  /** Calls `method` of `plugin`: its result, or a PluginError (-32001 past `timeoutMs`). */
  execute(plugin, method, params = null, { timeoutMs, signal, onProgress, meta } = {}) {
    return this._call('execute', withOpts({ plugin, method, params }, timeoutMs, meta), { signal, onProgress });
  }

  /** Calls `method` of whoever provides `service` (`version`: a semver range). */
  callService(service, method, params = null, { version, timeoutMs, signal, onProgress, meta } = {}) {
    const p = { service, method, params };
    if (version != null) p.version = version;
    return this._call('services.call', withOpts(p, timeoutMs, meta), { signal, onProgress });
  }

  /** Runs hook chain `hook` over `payload`: `{ payload, handled_by, stopped_by?, receipt }`. */
  runHook(hook, payload, { timeoutMs, meta, signal } = {}) {
    return this._call('hooks.run', withOpts({ hook, payload }, timeoutMs, meta), { signal });
  }

  /** Any control method (`plugins.list`, `supervisor.status`...). */
  request(method, params = {}) {
    return this._call(method, params, {});
  }

  _call(method, params, { signal, onProgress }) {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this._closed) {
      return Promise.reject(new ConnectionLost('the host was closed (close() was called): make a new one with connect()'));
    }
    if (!this._up) {
      // Why the last attempt failed, when it says more than "not there" (a refused token).
      const why = this._refused ? `: ${this._refused}` : '';
      return Promise.reject(new ConnectionLost(`not connected to plugind (reconnecting${why})`));
    }
    const id = ++this._nextId;
    let line;
    try {
      line = encode({ jsonrpc: '2.0', id, method, params });
    } catch (e) {
      // Audit 21: JSON.stringify's own RangeError (params nested too deep) reached the caller.
      return Promise.reject(new PluginError(INVALID_PARAMS, `the params cannot be sent as JSON: ${unencodable(e)}`));
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (this._pending.delete(id) && this._up) this._send({ jsonrpc: '2.0', method: '$/cancel', params: { id } });
        reject(abortError(signal));
      };
      const done = () => signal?.removeEventListener('abort', onAbort);
      this._pending.set(id, {
        resolve: (v) => (done(), resolve(v)),
        reject: (e) => (done(), reject(e)),
        onProgress,
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      this._link?.send(line);
    });
  }

  // ---- provided services ----------------------------------------------------------------------

  /** Serves host service `name` at `version`: `handlers` maps method names to
   * `(params, { caller, signal }) => result | Promise`. Registered again after every reconnect. */
  async provide(name, version, handlers) {
    this._services.set(name, { version, handlers: { ...handlers } });
    await this._register(name);
  }

  _register(name) {
    const { version, handlers } = this._services.get(name);
    return this._call('services.register', { name, version, methods: Object.keys(handlers).sort() }, {});
  }

  async _serve(id, params) {
    const service = this._services.get(params.service) ?? (this._services.size === 1 ? [...this._services.values()][0] : undefined);
    const abort = new AbortController();
    this._serving.set(id, abort);
    let answer;
    try {
      const handler = service?.handlers[params.method];
      if (typeof handler !== 'function') {
        throw new PluginError(METHOD_NOT_FOUND, `no method ${JSON.stringify(params.method)} in host service ${JSON.stringify(params.service)}`);
      }
      const result = await handler(params.params, { caller: params.caller, signal: abort.signal });
      answer = { result: result === undefined ? null : result };
    } catch (e) {
      // A handler's bug answers -32603 (a PluginError keeps its code); the host keeps serving.
      answer = e instanceof PluginError
        ? { error: errorObject(e.code, e.message, e.data) }
        : { error: { code: INTERNAL_ERROR, message: String(e?.message ?? e) } };
    } finally {
      this._serving.delete(id);
    }
    // plugind sent $/cancel (or the connection broke): it wants no answer.
    if (abort.signal.aborted) return;
    let line;
    try {
      line = encode({ jsonrpc: '2.0', id, ...answer });
    } catch (e) {
      // The caller gets an answer anyway (a throw here was an unhandled rejection).
      const message = `the handler's result cannot be sent as JSON: ${unencodable(e)}`;
      line = encode({ jsonrpc: '2.0', id, error: { code: INTERNAL_ERROR, message } });
    }
    this._link?.send(line);
  }

  // ---- events ---------------------------------------------------------------------------------

  /** Async iterator of plugind's `event` notifications (state changes, restarts, reloads). Keeps
   * going across reconnects (events in between may be missed); ends at `close()`. */
  async *events() {
    const queue = { items: [], wake: null };
    this._eventQueues.add(queue);
    try {
      await this._subscribe();
      for (;;) {
        while (queue.items.length === 0) await new Promise((r) => (queue.wake = r));
        const ev = queue.items.shift();
        if (ev === null) return;
        yield ev;
      }
    } finally {
      this._eventQueues.delete(queue);
    }
  }

  /** Subscribes the connection to events once; after a reconnect, again. */
  async _subscribe() {
    if (this._subscribed || !this._up) return;
    this._subscribed = true;
    try {
      await this._call('events.subscribe', {}, {});
    } catch (e) {
      if (!(e instanceof ConnectionLost)) throw e; // the reconnect subscribes again
    }
  }

  // ---- connection -----------------------------------------------------------------------------

  /** Closes the connection: provided services go away, calls in flight fail, events end. */
  async close() {
    this._closed = true;
    this._up = false;
    this._link?.close();
    this._broken('host closed');
    for (const q of this._eventQueues) {
      q.items.push(null);
      q.wake?.();
    }
  }

  _open() {
    return this._url ? openWs(this._url, this._token) : openSocket(this._socket);
  }

  async _connectFirst() {
    const giveUp = Date.now() + CONNECT_PATIENCE_MS;
    let delay = BACKOFF_FIRST_MS;
    for (;;) {
      try {
        this._attach(await this._open());
        return;
      } catch (e) {
        if (e.code === undefined || e instanceof PluginError) throw e; // not a connection error (`ws` missing, token refused)
        if (Date.now() + delay > giveUp) {
          throw new ConnectionLost(`cannot reach plugind at ${this._url ?? this._socket}: ${e.message}`);
        }
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  _attach(link) {
    this._link = link;
    this._up = true;
    link.onMessage = (line) => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg === null || typeof msg !== 'object') return;
      try {
        this._dispatch(msg);
      } catch (e) {
        // A bug here must not leave calls waiting, nor throw out of the socket's event handler
        // (an uncaught exception): the connection ends, as a break does, and comes back.
        if (this._link !== link) return;
        this._link = null;
        link.close();
        this._up = false;
        this._broken(`connection to plugind dropped: handling a message failed: ${e?.message ?? e}`);
        if (!this._closed) this._reconnect();
      }
    };
    link.onClose = () => {
      if (this._link !== link) return;
      this._up = false;
      this._broken('connection to plugind lost');
      if (!this._closed) this._reconnect();
    };
  }

  async _reconnect() {
    let delay = BACKOFF_FIRST_MS;
    while (!this._closed) {
      await sleep(delay);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      if (this._closed) return;
      let link;
      try {
        link = await this._open();
      } catch (e) {
        // plugind back but refusing (a rotated token) is said, then retried; "not there" is not.
        if (e instanceof PluginError) this._refused = e.message;
        continue;
      }
      this._refused = null;
      this._attach(link);
      try {
        for (const name of this._services.keys()) await this._register(name);
        if (this._eventQueues.size > 0) await this._subscribe();
      } catch {
        // broke again: the next reconnect tries again
      }
      return;
    }
  }

  _broken(why) {
    this._subscribed = false;
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) p.reject(new ConnectionLost(why));
    for (const abort of this._serving.values()) abort.abort(new ConnectionLost(why));
    this._serving.clear();
  }

  _dispatch(msg) {
    const { method } = msg;
    if (method === undefined) {
      const p = this._pending.get(msg.id);
      if (!p) return;
      this._pending.delete(msg.id);
      if (msg.error) p.reject(new PluginError(msg.error.code, msg.error.message, msg.error.data));
      else p.resolve(msg.result);
    } else if (msg.id !== undefined) {
      if (method === 'execute') this._serve(msg.id, msg.params ?? {});
      else this._send({ jsonrpc: '2.0', id: msg.id, error: { code: METHOD_NOT_FOUND, message: `host does not serve ${method}` } });
    } else if (method === '$/progress') {
      const p = msg.params ?? {};
      const entry = this._pending.get(p.id);
      if (entry?.onProgress) {
        const update = {};
        for (const k of ['message', 'progress', 'total']) if (k in p) update[k] = p[k];
        try {
          entry.onProgress(update);
        } catch (e) {
          // The callback's failure is its call's: that call rejects with it and is cancelled.
          this._pending.delete(p.id);
          entry.reject(e);
          this._send({ jsonrpc: '2.0', method: '$/cancel', params: { id: p.id } });
        }
      }
    } else if (method === '$/cancel') {
      this._serving.get(msg.params?.id)?.abort(new Error('cancelled by plugind'));
    } else if (method === 'event') {
      for (const q of this._eventQueues) {
        q.items.push(msg.params);
        q.wake?.();
      }
    }
  }

  _send(msg) {
    this._link?.send(encode(msg));
  }
}

function encode(msg) {
  return JSON.stringify(msg);
}

/** Why JSON.stringify failed, said plainly. */
function unencodable(e) {
  // V8's stringify recurses: a value nested too deep runs out of stack.
  if (e instanceof RangeError) return `nested too deep to encode (${e.message})`;
  return e?.message ?? String(e);
}

function withOpts(params, timeoutMs, meta) {
  if (timeoutMs != null) params.timeout_ms = timeoutMs;
  if (meta != null) params._meta = meta;
  return params;
}

function errorObject(code, message, data) {
  return data === undefined ? { code, message } : { code, message, data };
}
