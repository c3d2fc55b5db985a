"""request-logger: the gateway's onResponse hook on the Python SDK, with kv storage.

Every request that reaches onResponse is counted in the kv store (so the count survives restarts
of the plugin and of plugind) and logged; ``execute stats`` answers ``{ requests }``.
"""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "sdk", "python"))

from plugind_sdk import Plugin, run  # noqa: E402

plugin = Plugin()
# Hooks may run on several worker threads at once: one increment at a time.
count_lock = threading.Lock()


@plugin.on_hook("onResponse")
def on_response(payload, ctx):
    with count_lock:
        n = (ctx.kv_get("requests") or 0) + 1
        ctx.kv_set("requests", n)
    model = ((payload or {}).get("response") or {}).get("model")
    ctx.log("info", f"request {n} answered", model=model)
    return payload


@plugin.method
def stats(params, ctx):
    return {"requests": ctx.kv_get("requests") or 0}


run(plugin)
