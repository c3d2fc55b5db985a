"""theme: Project Wiz's ThemePlugin on the Python SDK.

It needs the host's `ui` service (its manifest requires `ui@^1`, so plugind starts it only once a
host provides `ui`) and, while plugind registers it, registers its theme through that service.
"""

import os
import sys

# The SDK is used straight from the repository, no install step.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "sdk", "python"))

from plugind_sdk import Plugin, run  # noqa: E402

MIDNIGHT = {
    "name": "midnight",
    "colors": {"background": "#0b1021", "foreground": "#e6e9f2", "accent": "#7aa2f7", "muted": "#3b4261"},
}


class ThemePlugin(Plugin):
    def register(self, registry):
        answer = self.host.call_service("ui", "registerTheme", MIDNIGHT)
        print(f"ui answered {answer}")  # stderr: the SDK keeps stdout for the protocol


run(ThemePlugin())
