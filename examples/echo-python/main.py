"""echo-python: the example contract (docs/protocol.md, "The example plugins") on the Python SDK."""

import os
import sys

# The SDK is used straight from the repository, no install step.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))

from plugind_sdk import Plugin, PluginError, run  # noqa: E402

plugin = Plugin()


@plugin.method
def echo(params, ctx):
    return params


@plugin.method
def hello(params, ctx):
    name = (params or {}).get("name")
    return {"greeting": f"Hello, {'world' if name is None else name}!"}


@plugin.method
def sleep(params, ctx):
    if ctx.cancelled.wait(params["ms"] / 1000):
        return None  # cancelled: the SDK answers -32800 instead
    return {"slept": params["ms"]}


@plugin.method
def progress(params, ctx):
    steps = params["steps"]
    for i in range(1, steps + 1):
        if ctx.cancelled.wait(params.get("interval_ms", 0) / 1000):
            return None
        ctx.progress(progress=i, total=steps)
    return {"steps": steps}


@plugin.method
def call(params, ctx):
    # A PluginError from plugind propagates unchanged to our caller.
    return ctx.call_service(params["service"], params["method"], params.get("params"))


@plugin.method
def env(params, ctx):
    return {"value": os.environ.get(params["name"])}


@plugin.method
def fail(params, ctx):
    raise PluginError(params["code"], params["message"], params.get("data"))


@plugin.method("exit")
def exit_(params, ctx):
    sys.stderr.flush()
    os._exit((params or {}).get("code", 0))


@plugin.method("print")
def print_(params, ctx):
    print("echo-python: this print() lands on stderr")
    return {"printed": True}


run(plugin)
