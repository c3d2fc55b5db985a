"""auth: the gateway's onRequest guard on the Python SDK.

The payload is ``{ headers: { authorization }, body }``. Without ``Authorization: Bearer <token>``
(the token is this plugin's config, ``demo-key`` by default) the hook rejects the request on
purpose (-32009), which the gateway turns into HTTP 401.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "sdk", "python"))

from plugind_sdk import Plugin, reject, run  # noqa: E402

plugin = Plugin()


@plugin.on_hook("onRequest")
def on_request(payload, ctx):
    token = (plugin.config or {}).get("token", "demo-key")
    given = ((payload or {}).get("headers") or {}).get("authorization") or ""
    if given != f"Bearer {token}":
        raise reject("missing or wrong bearer token", {"status": 401})
    return payload


run(plugin)
