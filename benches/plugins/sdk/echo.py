"""The echo plugin on the Python SDK, as `pluginctl new --lang python` writes one (plugind-bench's
SDK overhead lines; raw/echo.py is the same plugin without the SDK)."""

from plugind_sdk import Plugin, run

plugin = Plugin()


@plugin.method
def echo(params, ctx):
    return params


run(plugin)
