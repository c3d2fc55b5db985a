// The LLM gateway: an OpenAI-style HTTP front for plugind's plugins, on the Node host library.
//
//   POST /v1/chat/completions   { model?, messages: [ { role, content } ] }
//   GET  /healthz
//
// Every request runs onRequest (auth) → onPrompt (pii-redactor) → the `llm` service (mock-llm)
// → onResponse (request-logger), and onError when something fails. The hook chains' receipts
// (which plugin did what, and how long it took) go back in the `x-plugind-receipt` header and
// to stdout, one JSON line per request. Plugin failures become JSON errors in OpenAI's shape,
// never a hang: 401 when auth rejects, 503 when a plugin is unavailable, 504 on a timeout, 502
// for any other plugin failure.
//
// Environment: PLUGIND_SOCKET (plugind's control socket), GATEWAY_PORT (8088), GATEWAY_HOST
// (127.0.0.1).

import http from "node:http";
import { connect, PluginError } from "../../sdk/node/plugind-host.mjs";

const HOST = process.env.GATEWAY_HOST || "127.0.0.1";
const PORT = Number(process.env.GATEWAY_PORT || 8088);
/** The whole chain's budget for each hook, and the model call's deadline. */
const HOOK_BUDGET_MS = 5000;
const LLM_TIMEOUT_MS = 10000;
/** The largest request body read. */
const MAX_BODY = 1 << 20;

const plugind = await connect({ socket: process.env.PLUGIND_SOCKET || undefined });
let served = 0;

/** An HTTP error with OpenAI's body shape. */
class HttpError extends Error {
  constructor(status, type, message, code = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

/** Maps a plugind error (a rejected hook chain, a failed service call) onto an HTTP error. */
function httpError(e, what) {
  if (!(e instanceof PluginError)) return new HttpError(500, "server_error", `${what}: ${e.message}`);
  // A rejected chain carries the error that ended it.
  const cause = e.code === -32008 ? e.data?.error ?? {} : { code: e.code, message: e.message, data: e.data };
  const who = e.data?.plugin ? ` (${e.data.plugin})` : "";
  switch (cause.code) {
    case -32009:
      return new HttpError(cause.data?.status ?? 401, "authentication_error", `${what}: ${cause.message}${who}`, cause.code);
    case -32002:
    case -32004:
    case -32011:
      return new HttpError(503, "service_unavailable", `${what}: ${cause.message}${who}`, cause.code);
    case -32001:
      return new HttpError(504, "timeout", `${what}: ${cause.message}${who}`, cause.code);
    default:
      return new HttpError(502, "bad_gateway", `${what}: ${cause.message}${who}`, cause.code ?? e.code);
  }
}

/** Runs one hook chain; records its receipt (also a rejected chain's). */
async function hook(name, payload, receipts) {
  try {
    const r = await plugind.runHook(name, payload, { timeoutMs: HOOK_BUDGET_MS });
    receipts[name] = r.receipt;
    return r.payload;
  } catch (e) {
    if (e instanceof PluginError && e.data?.receipt) receipts[name] = e.data.receipt;
    throw httpError(e, name);
  }
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, "invalid_request_error", "request body too large");
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new HttpError(400, "invalid_request_error", "the body is not JSON");
  }
}

async function chat(req, receipts) {
  const body = await readJson(req);
  if (!Array.isArray(body?.messages)) {
    throw new HttpError(400, "invalid_request_error", "messages: expected an array of { role, content }");
  }
  const request = await hook("onRequest", { headers: { authorization: req.headers.authorization ?? null }, body }, receipts);
  const prompt = await hook("onPrompt", { messages: request.body?.messages ?? body.messages }, receipts);
  let answer;
  try {
    answer = await plugind.callService("llm", "chat", { model: body.model, messages: prompt.messages }, {
      version: "^1",
      timeoutMs: LLM_TIMEOUT_MS,
    });
  } catch (e) {
    throw httpError(e, "llm");
  }
  served += 1;
  const response = {
    id: `chatcmpl-${process.pid}-${served}`,
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: answer.model ?? body.model ?? "mock-llm",
    choices: [{ index: 0, message: { role: "assistant", content: answer.content }, finish_reason: "stop" }],
    usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
  };
  const out = await hook("onResponse", { request: { model: body.model }, response }, receipts);
  return out.response ?? response;
}

function send(res, status, value, receipts) {
  const text = JSON.stringify(value);
  const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(text) };
  if (receipts && Object.keys(receipts).length) headers["x-plugind-receipt"] = JSON.stringify(receipts);
  res.writeHead(status, headers);
  res.end(text);
}

const server = http.createServer(async (req, res) => {
  const started = Date.now();
  const receipts = {};
  try {
    if (req.method === "GET" && req.url === "/healthz") {
      return send(res, 200, { status: "ok" });
    }
    const routes = { "/healthz": "GET", "/v1/chat/completions": "POST" };
    const allowed = routes[req.url];
    if (allowed && req.method !== allowed) {
      res.setHeader("allow", allowed);
      throw new HttpError(405, "invalid_request_error", `${req.url} takes ${allowed}, not ${req.method}`);
    }
    if (!allowed) {
      throw new HttpError(404, "invalid_request_error", `no route for ${req.method} ${req.url}`);
    }
    send(res, 200, await chat(req, receipts), receipts);
    console.log(JSON.stringify({ status: 200, ms: Date.now() - started, receipt: receipts }));
  } catch (e) {
    const err = e instanceof HttpError ? e : new HttpError(500, "server_error", String(e?.message ?? e));
    if (err.status >= 500) {
      // Best effort: tell the onError hooks, without holding up the answer.
      plugind.runHook("onError", { status: err.status, message: err.message }, { timeoutMs: 1000 }).catch(() => {});
    }
    send(res, err.status, { error: { message: err.message, type: err.type, code: err.code } }, receipts);
    console.log(JSON.stringify({ status: err.status, ms: Date.now() - started, error: err.message, receipt: receipts }));
  }
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  console.log(`gateway listening on http://${HOST}:${port}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    plugind.close();
    process.exit(0);
  });
}
