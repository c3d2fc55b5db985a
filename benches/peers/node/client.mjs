// plugind-bench peer: the MCP TypeScript SDK's client calling the `echo` tool of server.mjs over
// stdio, with the measurements of plugind's (a) and (b):
//   (i)  sequential `callTool`, one in flight: p50/p99 latency in µs (after a 0.2 s warm-up);
//   (ii) 64 and 256 calls in flight, the window kept full (a new call starts as each one
//        resolves): completed calls per second (counted after a 0.2 s warm-up).
// Usage: node client.mjs [--seconds S]   (S: measuring time of each measurement, default 1)
// Prints one JSON line on stdout: {"p50_us","p99_us","tput64","tput256","calls"}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

const WARMUP_S = 0.2;
const ARGS = { msg: "hello", n: 42 };
const CALL = { name: "echo", arguments: ARGS };

const i = process.argv.indexOf("--seconds");
const seconds = i > 0 ? Number(process.argv[i + 1]) : 1;
if (!(seconds > 0)) throw new Error(`bad --seconds: ${process.argv[i + 1]}`);

const now = () => Number(process.hrtime.bigint()) / 1e9; // seconds, monotonic

const transport = new StdioClientTransport({
  command: process.execPath,
  args: [fileURLToPath(new URL("server.mjs", import.meta.url))],
  stderr: "inherit",
});
const client = new Client({ name: "plugind-bench", version: "1.0.0" });
await client.connect(transport);
let calls = 0;

async function call() {
  const r = await client.callTool(CALL);
  calls++;
  if (r.isError) throw new Error(`echo failed: ${JSON.stringify(r)}`);
  return r;
}

// The first answer is checked in full; later ones only for not being errors.
const first = await call();
const text = first.content?.length === 1 && first.content[0].type === "text" ? first.content[0].text : undefined;
if (text === undefined || !isDeepStrictEqual(JSON.parse(text), ARGS)) {
  throw new Error(`echo returned ${JSON.stringify(first)}`);
}

// (i) Sequential latencies.
const samples = [];
const start = now();
for (;;) {
  const t0 = now();
  await call();
  const t1 = now();
  if (t0 - start >= WARMUP_S) samples.push((t1 - t0) * 1e6);
  if (t1 - start >= WARMUP_S + seconds) break;
}
samples.sort((a, b) => a - b);
const pct = (p) => samples[Math.min(samples.length, Math.max(1, Math.ceil((p / 100) * samples.length))) - 1];

// (ii) Throughput with `depth` calls in flight: each of `depth` loops starts its next call as soon
// as its previous one resolves, so the window stays full until the measuring time is over.
async function throughput(depth) {
  let done = 0;
  let window; // [time, done] when the warm-up ended
  let rate;
  const begin = now();
  const loop = async () => {
    while (rate === undefined) {
      await call();
      done++;
      const t = now();
      if (window === undefined) {
        if (t - begin >= WARMUP_S) window = [t, done];
      } else if (t - window[0] >= seconds) {
        rate ??= (done - window[1]) / (t - window[0]);
      }
    }
  };
  await Promise.all(Array.from({ length: depth }, loop));
  return rate;
}
const tput64 = await throughput(64);
const tput256 = await throughput(256);

await client.close();
console.log(JSON.stringify({ p50_us: pct(50), p99_us: pct(99), tput64, tput256, calls }));
