// Tests of plugind-sdk.mjs: each spawns a real plugin process built on the SDK and plays plugind.
// Run: node --test sdk/node/test/

import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

const SDK_URL = new URL("../plugind-sdk.mjs", import.meta.url).href;
const TIMEOUT = 5000; // ms to wait for anything that should happen

const FIXTURE = `
import { setTimeout as sleep } from "node:timers/promises";
import { serve, PluginError, StopChain } from ${JSON.stringify(SDK_URL)};

class Fixture {
  methods = {
    echo: (params) => params,
    greet: {
      description: "Greets someone",
      params: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
      result: { type: "object", properties: { greeting: { type: "string" } } },
      timeoutMs: 250,
      idempotent: true,
      handler: ({ name }) => ({ greeting: "Hello, " + name + "!" }),
    },
    trace: (params, ctx) => ({ traceparent: ctx.traceparent ?? null, tracestate: ctx.tracestate ?? null, params }),
    atrace: async (params, ctx) => ({ traceparent: ctx.traceparent ?? null, params }),
    whoami: (params, ctx) => ({ service: ctx.service, caller: ctx.caller, name: this.name, config: this.config }),
    sleep: async ({ ms }, ctx) => {
      try {
        await sleep(ms, undefined, { signal: ctx.signal });
      } catch {
        console.error("sleep cancelled");
        return { cancelled: true }; // the SDK must not send this, but -32800
      }
      return { slept: ms };
    },
    progress: ({ steps }, ctx) => {
      for (let i = 1; i <= steps; i++) ctx.progress({ message: "step " + i, progress: i, total: steps });
      ctx.progress("positional", 0, steps);
      return { steps };
    },
    call: async ({ service, method, params }, ctx) => {
      try {
        return await ctx.callService(service, method, params, { version: "^1" });
      } catch (err) {
        if (ctx.cancelled) console.error("call cancelled");
        throw err;
      }
    },
    kv: async ({ value }, ctx) => {
      await ctx.kvSet("k", value);
      return { value: await ctx.kvGet("k") };
    },
    fail: ({ code, message, data }) => { throw new PluginError(code, message, data); },
    boom: () => { throw new TypeError("kaboom"); },
    print: () => {
      console.log("hello from console.log");
      process.stdout.write("raw stdout write\\n");
      return { printed: true };
    },
    log: (params, ctx) => {
      ctx.log("warn", "careful", { answer: 42 });
      ctx.metric("hits", 1, "counter");
    },
  };
  hooks = {
    onRequest: (payload) => ({ ...payload, seen: true }),
    onStop: (payload) => new StopChain(payload),
  };
  init(config, host, params) {
    console.log("init with", JSON.stringify(config)); // must land on stderr
    this.name = params.name;
    this.config = config;
  }
  async register(registry) {
    await registry.listServices(); // a request to the host while register is in flight
    registry.registerService("greeter", "1.0.0", { methods: ["hello"], capabilities: ["demo"] });
    registry.declareMethod("whoami", { description: "Who called" });
  }
  onError(error) { console.error("on_error: " + error.message); }
  servicesChanged(change) { console.error("services_changed: " + change.service + " " + change.event); }
  teardown() { console.error("teardown called"); }
}

serve(new Fixture());
`;

/** Spawns a plugin and speaks the protocol to it, as plugind would. */
class FakePlugind {
  constructor(source, env = process.env) {
    this.dir = mkdtempSync(join(tmpdir(), "plugind-sdk-test-"));
    const path = join(this.dir, "plugin.mjs");
    writeFileSync(path, source);
    this.proc = spawn(process.execPath, [path], { cwd: this.dir, env, stdio: ["pipe", "pipe", "pipe"] });
    this.exited = new Promise((resolve) => this.proc.on("exit", (code) => resolve(code)));
    this.backlog = []; // messages received but not yet claimed
    this.waiters = [];
    this.junk = []; // stdout lines that were not JSON
    this.stderr = "";
    this.nextId = 0;
    createInterface({ input: this.proc.stdout }).on("line", (line) => this.#onLine(line));
    this.proc.stderr.on("data", (chunk) => (this.stderr += chunk));
  }

  #onLine(line) {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      this.junk.push(line);
      return;
    }
    const i = this.waiters.findIndex((w) => w.pred(message));
    if (i === -1) return this.backlog.push(message);
    this.waiters.splice(i, 1)[0].resolve(message);
  }

  send(message) {
    this.proc.stdin.write(JSON.stringify(message) + "\n");
  }

  request(method, params = {}) {
    const id = ++this.nextId;
    this.send({ jsonrpc: "2.0", id, method, params });
    return id;
  }

  notify(method, params) {
    this.send({ jsonrpc: "2.0", method, params });
  }

  /** Resolves with (and consumes) the first message matching pred. */
  waitFor(pred, timeout = TIMEOUT) {
    const i = this.backlog.findIndex(pred);
    if (i !== -1) return Promise.resolve(this.backlog.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = {
        pred,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out; stderr: ${this.stderr}`));
      }, timeout);
      this.waiters.push(waiter);
    });
  }

  response(id, timeout) {
    return this.waitFor((m) => m.id === id && !("method" in m), timeout);
  }

  incomingRequest(method) {
    return this.waitFor((m) => m.method === method && "id" in m);
  }

  call(method, params) {
    return this.response(this.request(method, params));
  }

  execute(method, params) {
    return this.call("execute", { method, params });
  }

  async waitStderr(text) {
    const deadline = Date.now() + TIMEOUT;
    while (!this.stderr.includes(text)) {
      if (Date.now() > deadline) throw new Error(`${JSON.stringify(text)} not in stderr: ${this.stderr}`);
      await sleep(10);
    }
  }

  close() {
    this.proc.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let host;
beforeEach(() => {
  host = new FakePlugind(FIXTURE);
});
afterEach(() => host.close());

test("init and register, with a request to the host during register", async () => {
  const init = await host.call("init", {
    protocol_version: 1, name: "fixture", version: "0.1.0", config: { greeting: "hi" }, data_dir: null,
    supervisor: { name: "plugind", version: "0.1.0" },
  });
  assert.deepEqual(init.result, { protocol_version: 1 });
  const id = host.request("register");
  const asked = await host.incomingRequest("registry.listServices");
  host.send({ jsonrpc: "2.0", id: asked.id, result: [{ name: "x" }] });
  assert.deepEqual((await host.response(id)).result, {
    services: [{ name: "greeter", version: "1.0.0", methods: ["hello"], capabilities: ["demo"] }],
    methods: {
      greet: {
        description: "Greets someone",
        params: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
        result: { type: "object", properties: { greeting: { type: "string" } } },
        timeout_ms: 250,
        idempotent: true,
      },
      whoami: { description: "Who called" },
    },
  });
  assert.deepEqual((await host.execute("greet", { name: "you" })).result, { greeting: "Hello, you!" });
  const who = await host.call("execute", { method: "whoami", params: {}, service: "greeter", caller: "other" });
  assert.deepEqual(who.result, { service: "greeter", caller: "other", name: "fixture", config: { greeting: "hi" } });
  await host.waitStderr('init with {"greeting":"hi"}');
  assert.deepEqual(host.junk, []);
});

test("under plugind, a console.log at the top of the plugin's module reaches stderr", async () => {
  const src = FIXTURE.replace("serve(new Fixture());", 'console.log("top of the module"); serve(new Fixture());');
  const host = new FakePlugind(src, { ...process.env, PLUGIND_PLUGIN: "fixture" });
  try {
    await host.waitStderr("top of the module");
    const init = await host.call("init", { protocol_version: 1, name: "fixture", version: "0.1.0", config: {} });
    assert.deepEqual(init.result, { protocol_version: 1 });
    assert.deepEqual(host.junk, []);
  } finally {
    await host.close();
  }
});

test("execute results and errors", async () => {
  assert.deepEqual((await host.execute("echo", { a: [1, "ü"] })).result, { a: [1, "ü"] });
  assert.equal((await host.execute("echo")).result, null);
  assert.equal((await host.execute("nope")).error.code, -32601);
  assert.equal((await host.execute("toString")).error.code, -32601);
  assert.equal((await host.call("no.such.method")).error.code, -32601);
  const fail = await host.execute("fail", { code: -32042, message: "custom", data: { why: 1 } });
  assert.deepEqual(fail.error, { code: -32042, message: "custom", data: { why: 1 } });
  assert.deepEqual((await host.execute("boom")).error, { code: -32603, message: "TypeError: kaboom" });
  assert.deepEqual((await host.call("ping")).result, {});
});

test("calls run concurrently", async () => {
  const slow = host.request("execute", { method: "sleep", params: { ms: 700 } });
  const started = Date.now();
  assert.equal((await host.execute("echo", 1)).result, 1);
  assert.ok(Date.now() - started < 500);
  assert.deepEqual((await host.response(slow)).result, { slept: 700 });
});

test("trace context reaches the handler and its service calls", async () => {
  const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const _meta = { traceparent: tp, tracestate: "vendor=1" };
  let got = await host.call("execute", { method: "trace", params: { x: 1 }, _meta });
  assert.deepEqual(got.result, { traceparent: tp, tracestate: "vendor=1", params: { x: 1 } });
  got = await host.call("execute", { method: "atrace", params: { y: 2 }, _meta: { traceparent: tp } });
  assert.deepEqual(got.result, { traceparent: tp, params: { y: 2 } });
  got = await host.call("execute", { method: "trace", params: {} });
  assert.deepEqual(got.result, { traceparent: null, tracestate: null, params: {} });

  const id = host.request("execute", { method: "call", params: { service: "svc", method: "m", params: { x: 1 } }, _meta });
  const asked = await host.incomingRequest("service.call");
  assert.deepEqual(asked.params, { service: "svc", method: "m", params: { x: 1 }, version: "^1", _meta });
  host.send({ jsonrpc: "2.0", id: asked.id, result: { from: "svc" } });
  assert.deepEqual((await host.response(id)).result, { from: "svc" });
  const hook = await host.call("hook", { hook: "onRequest", payload: { a: 1 }, _meta });
  assert.deepEqual(hook.result, { payload: { a: 1, seen: true } });
});

test("a pipelined batch of calls gets every answer", async () => {
  const ids = [];
  let batch = "";
  for (let i = 0; i < 50; i++) {
    const id = ++host.nextId;
    ids.push(id);
    batch += JSON.stringify({ jsonrpc: "2.0", id, method: "execute", params: { method: "echo", params: i } }) + "\n";
  }
  host.proc.stdin.write(batch);
  for (const [i, id] of ids.entries()) assert.equal((await host.response(id)).result, i);
});

// Whatever the handler returns: -32800 says the work is over (plugind frees the call's
// max_inflight slot then), never the handler's result.
test("a cancelled call is answered -32800 when its handler ends", async () => {
  const id = host.request("execute", { method: "sleep", params: { ms: 10000 } });
  await sleep(100);
  host.notify("$/cancel", { id });
  await host.waitStderr("sleep cancelled");
  assert.deepEqual((await host.response(id)).error, { code: -32800, message: "cancelled" });
});

test("cancel aborts the call's pending requests to plugind", async () => {
  const id = host.request("execute", { method: "call", params: { service: "s", method: "m" } });
  const asked = await host.incomingRequest("service.call");
  host.notify("$/cancel", { id });
  await host.waitStderr("call cancelled");
  assert.equal((await host.response(id)).error.code, -32800);
  host.send({ jsonrpc: "2.0", id: asked.id, result: 1 }); // a late answer is ignored
  assert.deepEqual((await host.call("ping")).result, {});
});

test("progress", async () => {
  const id = host.request("execute", { method: "progress", params: { steps: 3 } });
  for (const i of [1, 2, 3]) {
    const note = await host.waitFor((m) => m.method === "$/progress");
    assert.deepEqual(note.params, { id, message: `step ${i}`, progress: i, total: 3 });
  }
  const positional = await host.waitFor((m) => m.method === "$/progress");
  assert.deepEqual(positional.params, { id, message: "positional", progress: 0, total: 3 });
  assert.deepEqual((await host.response(id)).result, { steps: 3 });
});

test("requests to plugind: results and errors", async () => {
  let id = host.request("execute", { method: "call", params: { service: "svc", method: "m", params: { x: 1 } } });
  let asked = await host.incomingRequest("service.call");
  assert.deepEqual(asked.params, { service: "svc", method: "m", params: { x: 1 }, version: "^1" });
  host.send({ jsonrpc: "2.0", id: asked.id, result: { from: "svc" } });
  assert.deepEqual((await host.response(id)).result, { from: "svc" });

  id = host.request("execute", { method: "call", params: { service: "gone", method: "m" } });
  asked = await host.incomingRequest("service.call");
  const error = { code: -32004, message: "service not found: gone", data: { service: "gone" } };
  host.send({ jsonrpc: "2.0", id: asked.id, error });
  assert.deepEqual((await host.response(id)).error, error);
});

test("kv requests get distinct ids", async () => {
  const id = host.request("execute", { method: "kv", params: { value: 7 } });
  const put = await host.incomingRequest("kv.set");
  assert.deepEqual(put.params, { key: "k", value: 7 });
  host.send({ jsonrpc: "2.0", id: put.id, result: null });
  const get = await host.incomingRequest("kv.get");
  assert.notEqual(get.id, put.id);
  host.send({ jsonrpc: "2.0", id: get.id, result: { value: 7 } });
  assert.deepEqual((await host.response(id)).result, { value: 7 });
});

test("log and metrics", async () => {
  assert.equal((await host.execute("log")).result, null);
  const log = await host.waitFor((m) => m.method === "log");
  assert.deepEqual(log.params, { level: "warn", message: "careful", fields: { answer: 42 } });
  const metric = await host.waitFor((m) => m.method === "metrics.emit");
  assert.deepEqual(metric.params, { name: "hits", value: 1, kind: "counter" });
});

test("console.log goes to stderr", async () => {
  assert.deepEqual((await host.execute("print")).result, { printed: true });
  await host.waitStderr("hello from console.log");
  await host.waitStderr("raw stdout write");
  assert.deepEqual(host.junk, []);
});

test("hooks", async () => {
  const hook = async (name, payload) => (await host.call("hook", { hook: name, payload })).result;
  assert.deepEqual(await hook("onRequest", { a: 1 }), { payload: { a: 1, seen: true } });
  assert.deepEqual(await hook("onStop", { a: 1 }), { payload: { a: 1 }, stop: true });
  assert.deepEqual(await hook("unhandled", [1]), { payload: [1] });
});

test("notifications and bad input", async () => {
  host.notify("onError", { code: -32001, message: "late answer" });
  host.notify("services.changed", { service: "llm", version: "1.0.0", plugin: "p", event: "down" });
  host.notify("some.future.notification", {});
  host.proc.stdin.write("this is not json\n[1, 2]\n\n");
  host.send({ jsonrpc: "2.0", id: 999, result: "nobody asked" });
  assert.deepEqual((await host.call("ping")).result, {});
  await host.waitStderr("on_error: late answer");
  await host.waitStderr("services_changed: llm down");
});

test("a line over the frame limit is skipped", async () => {
  host.proc.stdin.write("x".repeat(16 * 1024 * 1024 + 10) + "\n");
  const big = "y".repeat(1024 * 1024);
  assert.equal((await host.execute("echo", big)).result, big);
  await host.waitStderr("discarded an input line longer than");
});

test("teardown, then exit when stdin closes", async () => {
  assert.equal((await host.call("teardown")).result, null);
  host.proc.stdin.end();
  assert.equal(await host.exited, 0);
  await host.waitStderr("teardown called");
});
