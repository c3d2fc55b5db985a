"""{{name}}: a plugind plugin. plugind starts it as `python3 main.py` in this directory."""

from plugind_sdk import Plugin, run  # the SDK is the file next to this one

plugin = Plugin()


@plugin.method
def hello(params, ctx):
    """execute "hello" {name?} -> {"greeting": "Hello, NAME!"}"""
    name = (params or {}).get("name")
    return {"greeting": f"Hello, {'world' if name is None else name}!"}


if __name__ == "__main__":
    run(plugin)
