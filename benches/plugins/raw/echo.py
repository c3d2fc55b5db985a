"""The echo plugin written raw: one loop, the standard library only, no SDK.

The floor of the SDK overhead lines of plugind-bench (docs/benchmarks.md, "SDK overhead"): it
reads what stdin has (up to 64 KiB at once), answers every complete line, and writes all the
answers of that read in one write. It knows just enough of the protocol to be a plugin: `init`,
`register`, `execute` method `echo` (the params back), and an empty result for anything else.
"""

import json
import os

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
loads = json.loads
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    lines = (pending + chunk).split(b"\n")
    pending = lines.pop()
    out = []
    for line in lines:
        msg = loads(line)
        if "id" not in msg or "method" not in msg:
            continue  # a notification or a response: nothing to answer
        method = msg["method"]
        if method == "execute":
            result = msg["params"].get("params")
        elif method == "init":
            result = {"protocol_version": 1}
        else:
            result = {}
        out.append(dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}))
    if out:
        out.append("")
        data = "\n".join(out).encode()
        while data:
            data = data[os.write(1, data):]
