// Tests of {{name}}: spawn the plugin and speak the plugind protocol to it. Run: node --test
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

function startPlugin(t) {
  const dir = fileURLToPath(new URL(".", import.meta.url));
  const proc = spawn(process.execPath, ["main.mjs"], { cwd: dir, stdio: ["pipe", "pipe", "inherit"] });
  t.after(() => proc.kill());
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  let nextId = 0;
  // Sends a request and resolves with its response (anything else the plugin sends is skipped).
  const call = async (method, params = {}) => {
    const id = ++nextId;
    proc.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
    for (;;) {
      const { value, done } = await lines.next();
      assert.ok(!done, "the plugin closed stdout");
      const msg = JSON.parse(value); // every stdout line must be JSON
      if (msg.id === id && !("method" in msg)) return msg;
    }
  };
  return { proc, call };
}

test("lifecycle", async (t) => {
  const { proc, call } = startPlugin(t);
  const init = await call("init", {
    protocol_version: 1, name: "{{name}}", version: "0.1.0", config: {}, data_dir: null,
    supervisor: { name: "plugind", version: "0.1.0" },
  });
  assert.deepEqual(init.result, { protocol_version: 1 });
  assert.ok("result" in (await call("register")));
  assert.equal((await call("teardown")).result, null);
  const exited = once(proc, "exit");
  proc.stdin.end();
  assert.deepEqual(await exited, [0, null]);
});

test("hello", async (t) => {
  const { call } = startPlugin(t);
  assert.deepEqual((await call("execute", { method: "hello", params: {} })).result, { greeting: "Hello, world!" });
  const named = await call("execute", { method: "hello", params: { name: "{{name}}" } });
  assert.deepEqual(named.result, { greeting: "Hello, {{name}}!" });
});

test("unknown method", async (t) => {
  const { call } = startPlugin(t);
  assert.equal((await call("execute", { method: "nope", params: {} })).error.code, -32601);
});
