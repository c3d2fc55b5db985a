"""Tests of plugind_sdk: each spawns a real plugin process built on the SDK and plays plugind.

Run: python3 -m unittest discover -s sdk/python -p 'test_*.py'
"""

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SDK_DIR = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 5.0  # seconds to wait for anything that should happen

FIXTURE = r'''
import asyncio, os, sys, time
from plugind_sdk import Cancelled, Plugin, PluginError, StopChain, run

class Fixture(Plugin):
    def init(self, config):
        print(f"init with {config}")  # must land on stderr, not on the wire

    def register(self, registry):
        others = registry.list_services()  # a request to the host while register is in flight
        registry.register_service("greeter", "1.0.0", methods=["hello"], capabilities=["demo"])
        registry.declare_method("whoami", description="Who called")
        self.host.log("info", "registered", others=len(others))

    def on_error(self, error):
        print(f"on_error: {error['message']}")

    def services_changed(self, change):
        print(f"services_changed: {change['service']} {change['event']}")

    def teardown(self):
        print("teardown called")

plugin = Fixture()

@plugin.method
def echo(params, ctx):
    return params

@plugin.method("whoami")
def whoami(params, ctx):
    return {"service": ctx.service, "caller": ctx.caller, "name": plugin.name, "config": plugin.config}

@plugin.method("sleep")
def sleep(params, ctx):
    if ctx.cancelled.wait(params["ms"] / 1000):
        print("sleep cancelled")
        return {"cancelled": True}  # the SDK must not send this, but -32800
    return {"slept": params["ms"]}

@plugin.method("block")
def block(params, ctx):
    time.sleep(params["ms"] / 1000)  # blocks outside the SDK: the watchdog hands reading on
    return {"blocked": params["ms"]}

@plugin.method("greet", description="Greets someone", idempotent=True, timeout_ms=250,
               params={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
               result={"type": "object", "properties": {"greeting": {"type": "string"}}})
def greet(params, ctx):
    return {"greeting": "Hello, " + params["name"] + "!"}

@plugin.method("trace")
def trace(params, ctx):
    return {"traceparent": ctx.traceparent, "tracestate": ctx.tracestate, "params": params}

@plugin.method("atrace")
async def atrace(params, ctx):
    return {"traceparent": ctx.traceparent, "params": params}

@plugin.method("asleep")
async def asleep(params, ctx):
    try:
        await asyncio.sleep(params["ms"] / 1000)
    except asyncio.CancelledError:
        print("asleep cancelled")
        raise
    return {"slept": params["ms"]}

@plugin.method("progress")
def progress(params, ctx):
    for i in range(1, params["steps"] + 1):
        ctx.progress(message=f"step {i}", progress=i, total=params["steps"])
    return {"steps": params["steps"]}

@plugin.method("call")
def call(params, ctx):
    try:
        return ctx.call_service(params["service"], params["method"], params.get("params"))
    except Cancelled:
        print("call cancelled")
        raise

@plugin.method("acall")
async def acall(params, ctx):
    return await ctx.acall_service(params["service"], params["method"], params.get("params"), version="^1")

@plugin.method("kv")
def kv(params, ctx):
    ctx.kv_set("k", params["value"])
    return {"value": ctx.kv_get("k")}

@plugin.method("fail")
def fail(params, ctx):
    raise PluginError(params["code"], params["message"], params.get("data"))

@plugin.method("boom")
def boom(params, ctx):
    raise ValueError("kaboom")

@plugin.method("print")
def do_print(params, ctx):
    print("hello from print")
    os.write(1, b"raw write to fd 1\n")
    return {"printed": True}

@plugin.method("log")
def do_log(params, ctx):
    ctx.log("warn", "careful", answer=42)
    ctx.metric("hits", 1, "counter")

@plugin.on_hook("onRequest")
def on_request(payload, ctx):
    return dict(payload, seen=True)

@plugin.on_hook("onStop")
def on_stop(payload, ctx):
    return StopChain(payload)

run(plugin)
'''


class FakePlugind:
    """Spawns a plugin and speaks the protocol to it, as plugind would."""

    def __init__(self, source, **extra_env):
        self._dir = tempfile.TemporaryDirectory()
        path = os.path.join(self._dir.name, "plugin.py")
        with open(path, "w") as f:
            f.write(source)
        env = dict(os.environ, PYTHONPATH=SDK_DIR, PYTHONUNBUFFERED="1", **extra_env)
        self.proc = subprocess.Popen([sys.executable, path], cwd=self._dir.name, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._inbox = queue.Queue()
        self._backlog = []  # messages received but not yet claimed
        self.junk = []  # stdout lines that were not JSON
        self.stderr = []
        self._next_id = 0
        self._readers = [threading.Thread(target=self._read_stdout), threading.Thread(target=self._read_stderr)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            try:
                self._inbox.put(json.loads(line))
            except ValueError:
                self.junk.append(line)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode())

    def send(self, msg):
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method, params=None):
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params or {}})
        return self._next_id

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait_for(self, pred, timeout=TIMEOUT):
        """Returns (and consumes) the first message matching pred, keeping the others."""
        for msg in self._backlog:
            if pred(msg):
                self._backlog.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; stderr: {''.join(self.stderr)}") from None
            if pred(msg):
                return msg
            self._backlog.append(msg)

    def response(self, rid, timeout=TIMEOUT):
        return self.wait_for(lambda m: m.get("id") == rid and "method" not in m, timeout)

    def incoming_request(self, method):
        return self.wait_for(lambda m: m.get("method") == method and "id" in m)

    def call(self, method, params=None):
        return self.response(self.request(method, params))

    def execute(self, method, params=None):
        return self.call("execute", {"method": method, "params": params})

    def wait_stderr(self, text):
        deadline = time.monotonic() + TIMEOUT
        while not any(text in line for line in self.stderr):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in stderr: {''.join(self.stderr)}")
            time.sleep(0.01)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join()  # they see EOF now
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()
        self._dir.cleanup()


class PythonSdkTest(unittest.TestCase):
    def setUp(self):
        self.host = FakePlugind(FIXTURE)
        self.addCleanup(self.host.close)

    def test_init_and_register(self):
        init = self.host.call("init", {"protocol_version": 1, "name": "fixture", "version": "0.1.0",
                                       "config": {"greeting": "hi"}, "data_dir": None,
                                       "supervisor": {"name": "plugind", "version": "0.1.0"}})
        self.assertEqual(init["result"], {"protocol_version": 1})
        rid = self.host.request("register")
        asked = self.host.incoming_request("registry.listServices")
        self.host.send({"jsonrpc": "2.0", "id": asked["id"], "result": [{"name": "x"}]})
        self.assertEqual(self.host.response(rid)["result"], {"services": [
            {"name": "greeter", "version": "1.0.0", "methods": ["hello"], "capabilities": ["demo"]}],
            "methods": {
                "greet": {"description": "Greets someone", "idempotent": True, "timeout_ms": 250,
                          "params": {"type": "object", "properties": {"name": {"type": "string"}},
                                     "required": ["name"]},
                          "result": {"type": "object", "properties": {"greeting": {"type": "string"}}}},
                "whoami": {"description": "Who called"}}})
        log = self.host.wait_for(lambda m: m.get("method") == "log")
        self.assertEqual(log["params"], {"level": "info", "message": "registered", "fields": {"others": 1}})
        who = self.host.call("execute", {"method": "whoami", "params": {}, "service": "greeter", "caller": "other"})
        self.assertEqual(who["result"], {"service": "greeter", "caller": "other", "name": "fixture",
                                         "config": {"greeting": "hi"}})
        self.host.wait_stderr("init with {'greeting': 'hi'}")
        self.assertEqual(self.host.junk, [])

    def test_under_plugind_a_print_between_import_and_run_reaches_stderr(self):
        source = FIXTURE.replace("\nrun(plugin)\n", '\nprint("before run")\nrun(plugin)\n')
        self.assertIn('print("before run")', source)
        host = FakePlugind(source, PLUGIND_PLUGIN="fixture")
        self.addCleanup(host.close)
        host.wait_stderr("before run")
        init = host.call("init", {"protocol_version": 1, "name": "fixture", "version": "0.1.0", "config": {}})
        self.assertEqual(init["result"], {"protocol_version": 1})
        self.assertEqual(host.junk, [])

    def test_execute_results_and_errors(self):
        self.assertEqual(self.host.execute("echo", {"a": [1, "ü"]})["result"], {"a": [1, "ü"]})
        self.assertEqual(self.host.execute("nope")["error"]["code"], -32601)
        self.assertEqual(self.host.call("no.such.method")["error"]["code"], -32601)
        fail = self.host.execute("fail", {"code": -32042, "message": "custom", "data": {"why": 1}})
        self.assertEqual(fail["error"], {"code": -32042, "message": "custom", "data": {"why": 1}})
        self.assertEqual(self.host.execute("boom")["error"], {"code": -32603, "message": "ValueError: kaboom"})
        self.assertEqual(self.host.call("ping")["result"], {})

    def test_calls_run_concurrently(self):
        slow = self.host.request("execute", {"method": "sleep", "params": {"ms": 700}})
        aslow = self.host.request("execute", {"method": "asleep", "params": {"ms": 700}})
        started = time.monotonic()
        self.assertEqual(self.host.execute("echo", 1)["result"], 1)
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(self.host.response(slow)["result"], {"slept": 700})
        self.assertEqual(self.host.response(aslow)["result"], {"slept": 700})

    def test_a_blocking_plain_handler_is_handed_off(self):
        slow = self.host.request("execute", {"method": "block", "params": {"ms": 1500}})
        started = time.monotonic()
        self.assertEqual(self.host.execute("echo", 2)["result"], 2)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(self.host.response(slow)["result"], {"blocked": 1500})

    def test_a_blocking_handler_after_a_quiet_spell_is_handed_off(self):
        # Quiet for longer than the watchdog's idle rule (four ticks of HANDOFF_AFTER / 2): it must
        # wake when the next read returns, not only before the read after that.
        self.assertEqual(self.host.execute("echo", 1)["result"], 1)
        time.sleep(0.3)
        slow = self.host.request("execute", {"method": "block", "params": {"ms": 1500}})
        time.sleep(0.1)
        started = time.monotonic()
        self.assertEqual(self.host.execute("echo", 2)["result"], 2)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(self.host.response(slow)["result"], {"blocked": 1500})

    def test_many_waiting_handlers_start_together(self):
        # 32 calls of 300 ms sent at once: all run at the same time, not in waves of hand-offs
        # (each wave 20 ms: 32 of them would add 0.3 to 0.6 s). A handler that blocks outside the
        # SDK is learnt after its first call and later ones hand reading on before they run.
        for method in ("sleep", "block", "block"):
            rids = [self.host.request("execute", {"method": method, "params": {"ms": 300}}) for _ in range(32)]
            started = time.monotonic()
            for rid in rids:
                self.assertIn("result", self.host.response(rid))
            self.assertLess(time.monotonic() - started, 0.5, method)

    def test_trace_context_reaches_the_handler_and_its_service_calls(self):
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        meta = {"traceparent": tp, "tracestate": "vendor=1"}
        got = self.host.call("execute", {"method": "trace", "params": {"x": 1}, "_meta": meta})
        self.assertEqual(got["result"], {"traceparent": tp, "tracestate": "vendor=1", "params": {"x": 1}})
        got = self.host.call("execute", {"method": "atrace", "params": {"y": 2}, "_meta": {"traceparent": tp}})
        self.assertEqual(got["result"], {"traceparent": tp, "params": {"y": 2}})
        # Without _meta: no trace context, and service calls carry none.
        got = self.host.call("execute", {"method": "trace", "params": {}})
        self.assertEqual(got["result"], {"traceparent": None, "tracestate": None, "params": {}})
        for method in ("call", "acall"):
            rid = self.host.request("execute", {"method": method, "_meta": meta,
                                                "params": {"service": "svc", "method": "m", "params": {"x": 1}}})
            asked = self.host.incoming_request("service.call")
            self.assertEqual(asked["params"]["_meta"], meta)
            self.assertEqual(asked["params"]["params"], {"x": 1})
            self.host.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"from": "svc"}})
            self.assertEqual(self.host.response(rid)["result"], {"from": "svc"})
        hook = self.host.call("hook", {"hook": "onRequest", "payload": {"a": 1}, "_meta": meta})
        self.assertEqual(hook["result"], {"payload": {"a": 1, "seen": True}})

    def test_cancelled_calls_are_answered_32800(self):
        # Whatever the handler returns: -32800 says the work is over (plugind frees the call's
        # max_inflight slot then), never the handler's result.
        for method in ("sleep", "asleep"):
            rid = self.host.request("execute", {"method": method, "params": {"ms": 10000}})
            time.sleep(0.1)
            self.host.notify("$/cancel", {"id": rid})
            self.host.wait_stderr(f"{method} cancelled")
            self.assertEqual(self.host.response(rid)["error"], {"code": -32800, "message": "cancelled"})

    def test_cancel_aborts_pending_requests_to_plugind(self):
        rid = self.host.request("execute", {"method": "call", "params": {"service": "s", "method": "m"}})
        asked = self.host.incoming_request("service.call")
        self.host.notify("$/cancel", {"id": rid})
        self.host.wait_stderr("call cancelled")
        self.assertEqual(self.host.response(rid)["error"]["code"], -32800)
        # A late answer to the abandoned request is ignored, not fatal.
        self.host.send({"jsonrpc": "2.0", "id": asked["id"], "result": 1})
        self.assertEqual(self.host.call("ping")["result"], {})

    def test_progress(self):
        rid = self.host.request("execute", {"method": "progress", "params": {"steps": 3}})
        for i in (1, 2, 3):
            note = self.host.wait_for(lambda m: m.get("method") == "$/progress")
            self.assertEqual(note["params"], {"id": rid, "message": f"step {i}", "progress": i, "total": 3})
        self.assertEqual(self.host.response(rid)["result"], {"steps": 3})

    def test_requests_to_plugind(self):
        for method in ("call", "acall"):
            rid = self.host.request("execute", {"method": method,
                                                "params": {"service": "svc", "method": "m", "params": {"x": 1}}})
            asked = self.host.incoming_request("service.call")
            expected = {"service": "svc", "method": "m", "params": {"x": 1}}
            if method == "acall":
                expected["version"] = "^1"
            self.assertEqual(asked["params"], expected)
            self.host.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"from": "svc"}})
            self.assertEqual(self.host.response(rid)["result"], {"from": "svc"})
        # An error answer propagates unchanged.
        rid = self.host.request("execute", {"method": "call", "params": {"service": "gone", "method": "m"}})
        asked = self.host.incoming_request("service.call")
        error = {"code": -32004, "message": "service not found: gone", "data": {"service": "gone"}}
        self.host.send({"jsonrpc": "2.0", "id": asked["id"], "error": error})
        self.assertEqual(self.host.response(rid)["error"], error)

    def test_kv_and_interleaved_ids(self):
        rid = self.host.request("execute", {"method": "kv", "params": {"value": 7}})
        put = self.host.incoming_request("kv.set")
        self.assertEqual(put["params"], {"key": "k", "value": 7})
        self.host.send({"jsonrpc": "2.0", "id": put["id"], "result": None})
        get = self.host.incoming_request("kv.get")
        self.assertNotEqual(get["id"], put["id"])
        self.host.send({"jsonrpc": "2.0", "id": get["id"], "result": {"value": 7}})
        self.assertEqual(self.host.response(rid)["result"], {"value": 7})

    def test_log_and_metrics(self):
        self.assertIsNone(self.host.execute("log")["result"])
        log = self.host.wait_for(lambda m: m.get("method") == "log")
        self.assertEqual(log["params"], {"level": "warn", "message": "careful", "fields": {"answer": 42}})
        metric = self.host.wait_for(lambda m: m.get("method") == "metrics.emit")
        self.assertEqual(metric["params"], {"name": "hits", "value": 1, "kind": "counter"})

    def test_print_goes_to_stderr(self):
        self.assertEqual(self.host.execute("print")["result"], {"printed": True})
        self.host.wait_stderr("hello from print")
        self.host.wait_stderr("raw write to fd 1")
        self.assertEqual(self.host.junk, [])

    def test_hooks(self):
        def hook(name, payload):
            return self.host.call("hook", {"hook": name, "payload": payload})["result"]
        self.assertEqual(hook("onRequest", {"a": 1}), {"payload": {"a": 1, "seen": True}})
        self.assertEqual(hook("onStop", {"a": 1}), {"payload": {"a": 1}, "stop": True})
        self.assertEqual(hook("unhandled", [1]), {"payload": [1]})

    def test_notifications_and_bad_input(self):
        self.host.notify("onError", {"code": -32001, "message": "late answer"})
        self.host.notify("services.changed", {"service": "llm", "version": "1.0.0", "plugin": "p", "event": "down"})
        self.host.notify("some.future.notification", {})
        self.host.proc.stdin.write(b"this is not json\n[1, 2]\n\n")
        self.host.send({"jsonrpc": "2.0", "id": 999, "result": "nobody asked"})
        self.assertEqual(self.host.call("ping")["result"], {})
        self.host.wait_stderr("on_error: late answer")
        self.host.wait_stderr("services_changed: llm down")

    def test_line_over_frame_limit_is_skipped(self):
        self.host.proc.stdin.write(b"x" * (16 * 1024 * 1024 + 10) + b"\n")
        big = "y" * (1024 * 1024)
        self.assertEqual(self.host.execute("echo", big)["result"], big)
        self.host.wait_stderr("discarded an input line longer than")

    def test_teardown_then_exit_on_stdin_close(self):
        self.assertIsNone(self.host.call("teardown")["result"])
        self.host.proc.stdin.close()
        self.assertEqual(self.host.proc.wait(TIMEOUT), 0)
        self.host.wait_stderr("teardown called")


if __name__ == "__main__":
    unittest.main()
