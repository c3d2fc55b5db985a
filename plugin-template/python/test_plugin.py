"""Tests of {{name}}: spawn the plugin and speak the plugind protocol to it. Run: python3 -m unittest"""

import json
import os
import queue
import subprocess
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


class PluginTest(unittest.TestCase):
    def setUp(self):
        self.proc = subprocess.Popen([sys.executable, "main.py"], cwd=HERE, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(self.stop)
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout])
        self.reader.start()
        self.next_id = 0

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.reader.join()  # sees EOF now
        self.proc.stdin.close()
        self.proc.stdout.close()

    def call(self, method, params=None):
        """Sends a request and returns its response (anything else the plugin sends is skipped)."""
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                          "params": params or {}}) + "\n")
        self.proc.stdin.flush()
        while True:
            msg = json.loads(self.lines.get(timeout=5))  # every stdout line must be JSON
            if msg.get("id") == self.next_id and "method" not in msg:
                return msg

    def test_lifecycle(self):
        init = self.call("init", {"protocol_version": 1, "name": "{{name}}", "version": "0.1.0", "config": {},
                                  "data_dir": None, "supervisor": {"name": "plugind", "version": "0.1.0"}})
        self.assertEqual(init["result"], {"protocol_version": 1})
        self.assertIn("result", self.call("register"))
        self.assertIsNone(self.call("teardown")["result"])
        self.proc.stdin.close()
        self.assertEqual(self.proc.wait(timeout=5), 0)

    def test_hello(self):
        hello = self.call("execute", {"method": "hello", "params": {}})
        self.assertEqual(hello["result"], {"greeting": "Hello, world!"})
        hello = self.call("execute", {"method": "hello", "params": {"name": "{{name}}"}})
        self.assertEqual(hello["result"], {"greeting": "Hello, {{name}}!"})

    def test_unknown_method(self):
        self.assertEqual(self.call("execute", {"method": "nope", "params": {}})["error"]["code"], -32601)


if __name__ == "__main__":
    unittest.main()
