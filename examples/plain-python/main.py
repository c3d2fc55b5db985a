"""plain-python: the example contract with no SDK, speaking the plugind protocol by hand.

A worked example for plugin authors in other languages (docs/protocol.md): one JSON object per
line, stdin for plugind's messages, stdout for ours and nothing else, logs on stderr, and a thread
per request so that a slow call never holds up the others.
"""
import itertools, json, os, sys, threading

out_lock = threading.Lock()  # whole lines only, one writer at a time
inflight = {}  # id of a request from plugind -> Event, set when plugind cancels it
pending = {}  # id of a request we sent -> [Event, response]
ids = itertools.count(1)
# plugind's memory limit (RLIMIT_DATA) counts thread stacks whole: keep them small.
threading.stack_size(2 * 1024 * 1024)


class RpcError(Exception):
    """Carries a JSON-RPC error object {code, message, data?} to send back."""


def send(msg):
    with out_lock:
        sys.stdout.write(json.dumps(dict(msg, jsonrpc="2.0")) + "\n")
        sys.stdout.flush()


def request(method, params):
    """Sends a request to plugind and waits until the reader thread hands us the response."""
    rid, done = next(ids), threading.Event()
    pending[rid] = [done, None]
    send({"id": rid, "method": method, "params": params})
    done.wait()
    response = pending.pop(rid)[1]
    if "error" in response:
        raise RpcError(response["error"])
    return response.get("result")


def execute(method, p, rid):
    cancelled = inflight[rid]
    if method == "echo":
        return p
    if method == "hello":
        name = (p or {}).get("name")
        return {"greeting": "Hello, %s!" % ("world" if name is None else name)}
    if method == "sleep":
        cancelled.wait(p["ms"] / 1000)  # returns early on $/cancel
        return {"slept": p["ms"]}
    if method == "progress":
        for i in range(1, p["steps"] + 1):
            if cancelled.wait(p.get("interval_ms", 0) / 1000):
                break
            send({"method": "$/progress", "params": {"id": rid, "progress": i, "total": p["steps"]}})
        return {"steps": p["steps"]}
    if method == "call":
        args = {} if p.get("params") is None else p["params"]
        return request("service.call", {"service": p["service"], "method": p["method"], "params": args})
    if method == "env":
        return {"value": os.environ.get(p["name"])}
    if method == "fail":
        raise RpcError({k: p[k] for k in ("code", "message", "data") if p.get(k) is not None})
    if method == "exit":
        os._exit((p or {}).get("code", 0))
    if method == "print":
        print("plain-python: logs go to stderr", file=sys.stderr, flush=True)
        return {"printed": True}
    raise RpcError({"code": -32601, "message": "method not found: %s" % method})


def handle(msg):
    rid, method, params = msg["id"], msg["method"], msg.get("params") or {}
    try:
        if method == "execute":
            reply = {"result": execute(params.get("method"), params.get("params"), rid)}
        else:
            results = {"init": {"protocol_version": 1}, "register": {"services": []}, "ping": {}, "teardown": None}
            if method not in results:
                raise RpcError({"code": -32601, "message": "method not found: %s" % method})
            reply = {"result": results[method]}
    except RpcError as e:
        reply = {"error": e.args[0]}
    except Exception as e:  # a bug here: answer with an internal error rather than not at all
        reply = {"error": {"code": -32603, "message": str(e)}}
    if inflight.pop(rid).is_set():  # cancelled: say the work is over (plugind frees its slot)
        reply = {"error": {"code": -32800, "message": "cancelled"}}
    send(dict(reply, id=rid))


for line in sys.stdin.buffer:  # the main thread only reads and routes
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if "method" not in msg:  # a response to one of our requests
        waiter = pending.get(msg.get("id"))
        if waiter:
            waiter[1] = msg
            waiter[0].set()
    elif "id" in msg:  # a request: answer it on a thread of its own
        inflight[msg["id"]] = threading.Event()
        threading.Thread(target=handle, args=(msg,), daemon=True).start()
    elif msg["method"] == "$/cancel":
        cancelled = inflight.get(msg["params"]["id"])
        if cancelled:  # else answered already
            cancelled.set()
    # Other notifications (services.changed, onError, ...) need no answer and are ignored here.
