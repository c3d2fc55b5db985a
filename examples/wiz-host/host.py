"""The Project Wiz host: a Python application that offers its `ui` service to plugins.

    python3 host.py [--socket PATH] [--once]

It provides `ui` 1.0.0 with `registerTheme {name, colors}` → `{registered: NAME}` and prints
`theme registered: NAME` for each theme. With `--once` it exits 0 after the first theme (what
`make wiz` runs); otherwise it serves until interrupted, re-registering `ui` whenever plugind
restarts.
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))

import plugind_host  # noqa: E402

THEME_WAIT_S = 30


async def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--socket", help="plugind's control socket (default: plugind's socket rules)")
    args.add_argument("--once", action="store_true", help="exit after the first theme is registered")
    opts = args.parse_args()

    host = await plugind_host.connect(socket=opts.socket)
    themes = {}
    registered = asyncio.Event()

    def register_theme(params, caller):
        name = params["name"]
        themes[name] = params.get("colors", {})
        print(f"theme registered: {name}", flush=True)
        registered.set()
        return {"registered": name}

    await host.provide("ui", "1.0.0", {"registerTheme": register_theme})
    try:
        if opts.once:
            await asyncio.wait_for(registered.wait(), THEME_WAIT_S)
        else:
            await asyncio.Event().wait()
    finally:
        await host.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        sys.exit("wiz-host: no theme was registered within %d s" % THEME_WAIT_S)
    except KeyboardInterrupt:
        pass
