"""A stdio MCP server with the Python standard library only, run by plugind as a
`"protocol": "mcp"` plugin (docs/mcp.md). Any MCP client could run it as well.

Tools:
  word_count {text}        -> {"words", "characters"}   (structured result)
  slugify    {text}        -> "a-slug"                  (text result)
  count_to   {n, delay_ms} -> counts, sending notifications/progress, honouring cancellation
  divide     {a, b}        -> a / b; dividing by zero is a tool error (isError)

It speaks MCP's stdio transport: one JSON-RPC message per line, logs on stderr only.
"""

import json
import re
import sys
import threading
import time

TOOLS = [
    {"name": "word_count", "description": "Counts the words and characters of a text.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
     "outputSchema": {"type": "object", "properties": {"words": {"type": "integer"}, "characters": {"type": "integer"}},
                      "required": ["words", "characters"]},
     "annotations": {"readOnlyHint": True, "idempotentHint": True}},
    {"name": "slugify", "description": "Turns a title into a URL slug.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
     "annotations": {"idempotentHint": True}},
    {"name": "count_to", "description": "Counts to n, one step every delay_ms, reporting progress.",
     "inputSchema": {"type": "object", "required": ["n"],
                     "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 1000},
                                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": 10000}}}},
    {"name": "divide", "description": "Divides a by b.",
     "inputSchema": {"type": "object", "required": ["a", "b"],
                     "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}},
]

out_lock = threading.Lock()
cancelled = {}  # request id -> threading.Event


def send(message):
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def result(rid, text, structured=None, is_error=False):
    r = {"content": [{"type": "text", "text": text}]}
    if structured is not None:
        r["structuredContent"] = structured
    if is_error:
        r["isError"] = True
    send({"jsonrpc": "2.0", "id": rid, "result": r})


def count_to(rid, args, token):
    stop = cancelled.setdefault(rid, threading.Event())
    n, delay = args["n"], args.get("delay_ms", 100) / 1000
    print(f"count_to {rid} started: n={n}", file=sys.stderr, flush=True)
    for i in range(1, n + 1):
        if stop.wait(delay):
            print(f"count_to {rid} cancelled at {i}", file=sys.stderr, flush=True)
            return  # a cancelled request gets no answer
        if token is not None:
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": i, "total": n, "message": f"{i} of {n}"}})
    cancelled.pop(rid, None)
    result(rid, f"counted to {n}")


def call(rid, name, args, meta):
    if name == "word_count":
        text = args["text"]
        counts = {"words": len(text.split()), "characters": len(text)}
        result(rid, json.dumps(counts), counts)
    elif name == "slugify":
        result(rid, re.sub(r"[^a-z0-9]+", "-", args["text"].lower()).strip("-"))
    elif name == "count_to":
        threading.Thread(target=count_to, args=(rid, args, meta.get("progressToken")), daemon=True).start()
    elif name == "divide":
        if args["b"] == 0:
            result(rid, "cannot divide by zero", is_error=True)
        else:
            result(rid, str(args["a"] / args["b"]), {"quotient": args["a"] / args["b"]})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"unknown tool: {name}"}})


for line in sys.stdin:
    msg = json.loads(line)
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "mcp-python-example", "version": "1.0.0"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        call(rid, params["name"], params.get("arguments") or {}, params.get("_meta") or {})
    elif method == "notifications/cancelled":
        cancelled.setdefault(params.get("requestId"), threading.Event()).set()
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
    elif rid is not None and method is not None:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}})
