// The echo plugin written raw: one loop, Node's standard library only, no SDK.
//
// The floor of the SDK overhead lines of plugind-bench (docs/benchmarks.md, "SDK overhead"): it
// answers every complete line of each chunk stdin delivers and writes all the answers of that
// chunk in one write. It knows just enough of the protocol to be a plugin: `init`, `register`,
// `execute` method `echo` (the params back), and an empty result for anything else.

let pending = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  const lines = (pending + chunk).split("\n");
  pending = lines.pop();
  let out = "";
  for (const line of lines) {
    const msg = JSON.parse(line);
    if (msg.id === undefined || msg.method === undefined) continue; // a notification or a response
    let result = {};
    if (msg.method === "execute") result = msg.params.params ?? null;
    else if (msg.method === "init") result = { protocol_version: 1 };
    out += JSON.stringify({ jsonrpc: "2.0", id: msg.id, result }) + "\n";
  }
  if (out) process.stdout.write(out);
});
process.stdin.on("end", () => process.exit(0));
