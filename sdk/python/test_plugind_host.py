"""Tests of plugind_host against a real plugind (target/debug/plugind, built by
`cargo build --workspace`) and a real plugin (tests/fixtures/plugins/py-host-peer).

Run: python3 -m unittest discover -s sdk/python -p 'test_*.py'
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import datetime

SDK_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(SDK_DIR))
sys.path.insert(0, SDK_DIR)
# Where .ci/run installs `websockets` for the url= tests (pip install --target).
HOST_PEERS = os.path.join(REPO, "target", "host-peers", "python")
if os.path.isdir(HOST_PEERS):
    sys.path.append(HOST_PEERS)
import plugind_host  # noqa: E402
from plugind_host import ConnectionLost, PluginError  # noqa: E402

PLUGIND = os.environ.get("PLUGIND_BIN") or os.path.join(REPO, "target", "debug", "plugind")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "plugins", "py-host-peer")
DEADLINE = 20.0  # seconds: the upper bound for anything a test waits for


def need_plugind():
    if not os.access(PLUGIND, os.X_OK):
        print("\nskipped: %s is missing: run `cargo build --workspace` first" % PLUGIND, file=sys.stderr)
        raise unittest.SkipTest("plugind binary missing (%s)" % PLUGIND)


def need_websockets():
    """url= speaks WebSocket with the `websockets` package: skipped loudly without it, except
    under CI, which installs it (.ci/run) and so must run these tests."""
    try:
        import websockets  # noqa: F401
    except ImportError:
        why = "the websockets package is missing (pip install websockets, or run .ci/run)"
        if os.environ.get("CI") == "true":
            raise AssertionError("under CI the url= tests must run: " + why)
        print("\nskipped: url= tests: %s" % why, file=sys.stderr)
        raise unittest.SkipTest(why)


async def wait_for(what, probe, deadline=DEADLINE):
    """Polls ``probe`` (async, returns a truthy value when done) until ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        try:
            found = await probe()
        except PluginError:
            found = None
        if found:
            return found
        if loop.time() > give_up:
            raise AssertionError("timed out waiting for %s" % what)
        await asyncio.sleep(0.02)


class Plugind:
    """A real plugind in a temp dir with two copies of the fixture: py-host-peer and helper.
    With ``listen``, it serves ``--listen`` on a loopback port (``url``, the same port again
    after a restart) with the bearer token ``token``."""

    def __init__(self, listen=False):
        self.dir = tempfile.mkdtemp(prefix="plugind-host-py-")
        self.socket = os.path.join(self.dir, "plugind.sock")
        self.listen, self.url, self.token = listen, None, "host-test-token"
        if listen:
            with open(os.path.join(self.dir, "token"), "w") as f:
                f.write(self.token + "\n")
            os.chmod(os.path.join(self.dir, "token"), 0o600)
        plugins = os.path.join(self.dir, "plugins")
        shutil.copytree(FIXTURE, os.path.join(plugins, "py-host-peer"))
        shutil.copytree(FIXTURE, os.path.join(plugins, "helper"))
        manifest = os.path.join(plugins, "helper", "plugin.json")
        with open(manifest) as f:
            m = json.load(f)
        m.update(name="helper", hooks={})
        with open(manifest, "w") as f:
            json.dump(m, f)
        self.proc = None
        self.start()

    def start(self):
        args = [PLUGIND, "--plugins", "plugins", "--socket", self.socket, "--state-dir", "state", "--no-watch"]
        if self.listen:
            port = self.url.rsplit(":", 1)[1] if self.url else "0"
            args += ["--listen", "127.0.0.1:" + port, "--token-file", "token"]
        log_path = os.path.join(self.dir, "plugind.log")
        with open(log_path, "ab") as log:
            seen = log.tell()
            self.proc = subprocess.Popen(
                args, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        if self.listen and not self.url:
            give_up = time.time() + DEADLINE
            while not self.url:
                with open(log_path) as f:
                    f.seek(seen)
                    for line in f:
                        if "control API over HTTP" in line and "addr=" in line:
                            self.url = "http://" + line.split("addr=")[1].split()[0]
                if time.time() > give_up:
                    raise AssertionError("plugind did not say its --listen address")
                time.sleep(0.02)

    async def connect(self):
        """A host on the socket, or on ``url`` with the token when listening."""
        if self.listen:
            return await plugind_host.connect(url=self.url, token=self.token)
        return await plugind_host.connect(socket=self.socket)

    def stop(self):
        """SIGTERM, then waits for a graceful exit."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=DEADLINE)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def settled(self, host):
        async def running():
            plugins = await host.request("plugins.list")
            return len(plugins) == 2 and all(p["state"] == "running" for p in plugins)
        await wait_for("both plugins running", running)


def _epoch(rfc3339):
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def stderr_has(host, plugin, prefix):
    async def probe():
        st = await host.request("plugins.get", {"name": plugin})
        return any(line.startswith(prefix) for line in st["stderr_tail"])
    await wait_for("%s to write %r" % (plugin, prefix), probe)


class HostTest(unittest.IsolatedAsyncioTestCase):
    LISTEN = False  # True: the same tests over url= (plugind's --listen, WebSocket)

    @classmethod
    def setUpClass(cls):
        need_plugind()
        if cls.LISTEN:
            need_websockets()
        cls.plugind = Plugind(listen=cls.LISTEN)

    @classmethod
    def tearDownClass(cls):
        cls.plugind.cleanup()

    async def asyncSetUp(self):
        self.host = await self.plugind.connect()
        await self.plugind.settled(self.host)

    async def asyncTearDown(self):
        await self.host.close()

    async def test_execute_answers_the_plugins_result(self):
        self.assertEqual(await self.host.execute("helper", "echo", {"a": [1, 2]}), {"a": [1, 2]})

    async def test_a_call_after_close_says_the_host_was_closed(self):
        host = await self.plugind.connect()
        self.assertEqual(await host.execute("helper", "echo", {"n": 1}), {"n": 1})
        await host.close()
        with self.assertRaises(ConnectionLost) as e:
            await host.execute("helper", "echo", {"n": 2})
        self.assertEqual(e.exception.code, -32011)
        self.assertIn("host was closed", str(e.exception))
        self.assertNotIn("reconnecting", str(e.exception))

    async def test_timeout_is_error_32001(self):
        with self.assertRaises(PluginError) as e:
            await self.host.execute("helper", "sleep", {"ms": 5000}, timeout_ms=200)
        self.assertEqual(e.exception.code, -32001)
        self.assertEqual(e.exception.data["plugin"], "helper")

    async def test_cancelling_the_task_cancels_the_call_in_the_plugin(self):
        call = asyncio.ensure_future(self.host.execute("helper", "sleep", {"ms": 20000}, timeout_ms=30000))
        await stderr_has(self.host, "helper", "sleeping")
        call.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await call
        await stderr_has(self.host, "helper", "got $/cancel")
        seen = await self.host.execute("helper", "cancels")
        self.assertIn("sleep", [c["method"] for c in seen])

    async def test_progress_reaches_the_callback(self):
        updates = []
        result = await self.host.execute("helper", "progress", {"steps": 3}, on_progress=updates.append)
        self.assertEqual(result, {"done": 3})
        self.assertEqual(updates, [{"message": "step %d" % i, "progress": i, "total": 3} for i in (1, 2, 3)])
        updates.clear()
        await self.host.call_service("helper", "progress", {"steps": 2}, on_progress=updates.append)
        self.assertEqual([u["progress"] for u in updates], [1, 2])

    async def test_provided_service_is_called_by_a_plugin_that_the_handler_sees(self):
        seen = []

        async def register_theme(params, caller):
            seen.append(caller)
            return {"registered": params["name"]}

        def broken(params, caller):
            raise ValueError("no such colour")

        def refuses(params, caller):
            raise PluginError(-32099, "refused", {"why": "test"})

        await self.host.provide("ui", "1.2.0", {"registerTheme": register_theme, "broken": broken, "refuses": refuses})
        call = {"service": "ui", "method": "registerTheme", "params": {"name": "midnight"}}
        out = await self.host.execute("py-host-peer", "call", call)
        self.assertEqual(out["answer"], {"registered": "midnight"})
        self.assertEqual(seen, ["py-host-peer"])
        out = await self.host.execute("py-host-peer", "call", dict(call, method="broken"))
        self.assertEqual(out["answer"]["error"]["code"], -32603)
        self.assertIn("no such colour", out["answer"]["error"]["message"])
        out = await self.host.execute("py-host-peer", "call", dict(call, method="refuses"))
        self.assertEqual(out["answer"]["error"]["code"], -32099)
        self.assertEqual(out["answer"]["error"]["data"], {"why": "test"})
        # The host calls its own service through plugind too.
        self.assertEqual(await self.host.call_service("ui", "registerTheme", {"name": "x"}, version="^1"), {"registered": "x"})

    async def test_a_result_nested_too_deep_to_decode_fails_its_call_and_the_connection_goes_on(self):
        # Audit 21: json.loads' RecursionError killed the reader; this call and every later one hung.
        in_flight = asyncio.ensure_future(self.host.execute("helper", "progress", {"steps": 2, "every_ms": 50}))
        with self.assertRaises(PluginError) as e:
            await asyncio.wait_for(self.host.execute("helper", "nested", {"depth": 2000}), DEADLINE)
        self.assertNotIsInstance(e.exception, ConnectionLost)
        self.assertEqual(e.exception.code, -32603)
        self.assertIn("nested too deep to decode", str(e.exception))
        self.assertEqual(await asyncio.wait_for(in_flight, DEADLINE), {"done": 2})
        self.assertEqual(await asyncio.wait_for(self.host.execute("helper", "echo", {"n": 1}), DEADLINE), {"n": 1})
        value, depth = await self.host.execute("helper", "nested", {"depth": 300}), 0  # under the limit
        while isinstance(value, list):
            value, depth = value[0] if value else None, depth + 1
        self.assertEqual(depth, 300)

    async def test_a_request_nested_too_deep_to_decode_is_answered_with_an_error(self):
        await self.host.provide("ui", "1.2.0", {"registerTheme": lambda params, caller: {"registered": True}})
        call = {"service": "ui", "method": "registerTheme", "depth": 2000}
        out = await asyncio.wait_for(self.host.execute("py-host-peer", "call", call), DEADLINE)
        self.assertEqual(out["answer"]["error"]["code"], -32603, out)
        self.assertIn("the request is nested too deep to decode", out["answer"]["error"]["message"])
        out = await self.host.execute("py-host-peer", "call", dict(call, depth=3))
        self.assertEqual(out["answer"], {"registered": True})

    async def test_params_or_a_handler_result_that_json_cannot_encode_are_plugin_errors(self):
        deep = []
        for _ in range(5000):
            deep = [deep]
        with self.assertRaises(PluginError) as e:
            await self.host.execute("helper", "echo", deep)
        self.assertEqual(e.exception.code, -32602)
        self.assertIn("params cannot be sent as JSON: nested too deep to encode", str(e.exception))
        with self.assertRaises(PluginError) as e:
            await self.host.execute("helper", "echo", {"not json": object()})
        self.assertEqual(e.exception.code, -32602)
        # A provided service's handler whose result cannot be encoded: its caller gets -32603 at
        # once, not silence until its deadline.
        await self.host.provide("ui", "1.2.0", {"registerTheme": lambda params, caller: deep})
        call = {"service": "ui", "method": "registerTheme", "params": {}}
        out = await asyncio.wait_for(self.host.execute("py-host-peer", "call", call), DEADLINE)
        self.assertEqual(out["answer"]["error"]["code"], -32603, out)
        self.assertIn("result cannot be sent as JSON: nested too deep to encode", out["answer"]["error"]["message"])
        self.assertEqual(await self.host.execute("helper", "echo", {"n": 1}), {"n": 1})

    async def test_a_progress_callback_that_raises_fails_its_own_call_only(self):
        def on_progress(update):
            raise ValueError("bad callback")

        with self.assertRaises(ValueError):
            await asyncio.wait_for(self.host.execute("helper", "progress", {"steps": 2}, on_progress=on_progress), DEADLINE)
        self.assertEqual(await asyncio.wait_for(self.host.execute("helper", "echo", {"n": 1}), DEADLINE), {"n": 1})

    async def test_a_reader_that_fails_unexpectedly_fails_calls_with_connection_lost_and_reconnects(self):
        # Any exception in the reader, not only a line too deep, ends the connection cleanly.
        link = self.host._link
        recv = link.recv

        async def failing_recv():
            await recv()
            raise RuntimeError("injected reader failure")

        link.recv = failing_recv
        # The reader waits in the old recv already: the answer after this one meets the failure.
        self.assertEqual(await asyncio.wait_for(self.host.execute("helper", "echo", {"n": 0}), DEADLINE), {"n": 0})
        with self.assertRaises(ConnectionLost) as e:
            await asyncio.wait_for(self.host.execute("helper", "echo", {"n": 1}), DEADLINE)
        self.assertIn("injected reader failure", str(e.exception))

        async def echoed():
            return await self.host.execute("helper", "echo", {"n": 2}) == {"n": 2}

        await wait_for("the host to reconnect", echoed)

    async def test_run_hook_answers_the_chain_result(self):
        result = await self.host.run_hook("onRequest", {"seen": []})
        self.assertEqual(result["payload"], {"seen": ["py-host-peer"]})
        self.assertEqual(result["handled_by"], ["py-host-peer"])

    async def test_events_iterator_sees_a_restart(self):
        events = self.host.events()
        first = asyncio.ensure_future(events.__anext__())
        # The subscription is in place once its request is answered; restart until an event shows.
        async def restarted():
            await self.host.request("plugins.restart", {"name": "helper", "hard": True})
            await asyncio.sleep(0)
            return first.done()
        await wait_for("an event", restarted)
        ev = first.result()
        self.assertEqual(ev["plugin"], "helper")
        self.assertIn("kind", ev)
        await events.aclose()


class HostOverUrlTest(HostTest):
    """Every HostTest again with url= and the token: plugind's --listen WebSocket is a control
    connection like the socket (cancel, progress, provide, events)."""

    LISTEN = True

    async def test_a_refused_token_is_a_plugin_error_at_once(self):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with self.assertRaises(PluginError) as e:
            await plugind_host.connect(url=self.plugind.url, token="not-the-token")
        self.assertEqual(e.exception.code, -32005)
        self.assertIn("refused the bearer token (HTTP 401)", str(e.exception))
        self.assertLess(loop.time() - started, 5.0, "retried as if plugind were not there")


class ReconnectTest(unittest.IsolatedAsyncioTestCase):
    LISTEN = False

    def setUp(self):
        need_plugind()
        if self.LISTEN:
            need_websockets()
        self.plugind = Plugind(listen=self.LISTEN)

    def tearDown(self):
        self.plugind.cleanup()

    async def test_restart_of_plugind_reconnects_and_re_registers_within_10s(self):
        host = await self.plugind.connect()
        try:
            await self.plugind.settled(host)
            await host.provide("ui", "1.0.0", {"registerTheme": lambda p, caller: {"registered": p["name"], "by": caller}})
            call = {"service": "ui", "method": "registerTheme", "params": {"name": "before"}}
            self.assertEqual((await host.execute("py-host-peer", "call", call))["answer"]["registered"], "before")
            seen = []

            async def consume():
                async for ev in host.events():
                    seen.append(ev)

            consumer = asyncio.ensure_future(consume())
            await host.request("supervisor.status")  # the subscription went out before this request
            pending = asyncio.ensure_future(host.execute("helper", "sleep", {"ms": 20000}, timeout_ms=30000))
            await stderr_has(host, "helper", "sleeping")

            await asyncio.get_running_loop().run_in_executor(None, self.plugind.stop)
            stopped_at = time.time()
            # A graceful stop answers the call in flight itself: the plugin is stopping, so the
            # call was cancelled (-32002, state "stopping"), unless the connection went first;
            # calls made while disconnected fail at once.
            with self.assertRaises(PluginError) as e:
                await asyncio.wait_for(pending, DEADLINE)
            self.assertIn(e.exception.code, (-32002, -32011))
            if e.exception.code == -32002:
                self.assertEqual(e.exception.data["state"], "stopping")
            with self.assertRaises(ConnectionLost):
                await host.execute("helper", "echo", {})

            self.plugind.start()
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def ui_again():
                try:
                    out = await host.execute("py-host-peer", "call", dict(call, params={"name": "after"}))
                except PluginError:
                    return None
                return out["answer"] if isinstance(out["answer"], dict) and "registered" in out["answer"] else None

            answer = await wait_for("the plugin to reach ui again", ui_again, deadline=10.0)
            self.assertEqual(answer, {"registered": "after", "by": "py-host-peer"})
            self.assertLess(loop.time() - started, 10.0)

            # The same events iterator goes on with the new plugind's events.
            async def new_event():
                await host.request("plugins.restart", {"name": "helper", "hard": True})
                return any(ev["plugin"] == "helper" and _epoch(ev["ts"]) >= stopped_at for ev in seen)

            await wait_for("an event of the new plugind", new_event)
            await host.close()
            await asyncio.wait_for(consumer, DEADLINE)
        finally:
            await host.close()

    async def test_calls_in_flight_at_a_break_fail_at_once_with_connection_lost(self):
        host = await self.plugind.connect()
        try:
            await self.plugind.settled(host)
            pending = asyncio.ensure_future(host.execute("helper", "sleep", {"ms": 20000}, timeout_ms=30000))
            await stderr_has(host, "helper", "sleeping")
            self.plugind.proc.kill()  # no answer from plugind at all: only the break
            with self.assertRaises(ConnectionLost) as e:
                await asyncio.wait_for(pending, 5.0)
            self.assertEqual(e.exception.code, -32011)
        finally:
            await host.close()


class ReconnectOverUrlTest(ReconnectTest):
    """The reconnection tests again over url= (plugind restarts on the same port)."""

    LISTEN = True

    async def test_a_token_refused_after_a_restart_is_said_while_reconnecting(self):
        host = await self.plugind.connect()
        try:
            await self.plugind.settled(host)
            await asyncio.get_running_loop().run_in_executor(None, self.plugind.stop)
            with open(os.path.join(self.plugind.dir, "token"), "w") as f:
                f.write("a-rotated-token\n")
            self.plugind.start()

            async def refused():
                try:
                    await host.execute("helper", "echo", {})
                except ConnectionLost as e:
                    return "refused the bearer token (HTTP 401)" in str(e)
                return False

            await wait_for("the refusal in the error", refused)
        finally:
            await host.close()


class ConnectTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        need_plugind()
        self.plugind = Plugind()

    def tearDown(self):
        self.plugind.cleanup()

    async def test_connect_gives_up_after_10s_with_connection_lost(self):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with self.assertRaises(ConnectionLost):
            await plugind_host.connect(socket=os.path.join(self.plugind.dir, "nobody.sock"))
        self.assertGreaterEqual(loop.time() - started, 8.0)

    def test_url_mode_without_websockets_says_what_is_missing(self):
        # In a Python that has only the SDK on its path (the tests' own has websockets).
        probe = (
            "import asyncio, plugind_host\n"
            "try:\n"
            "    import websockets\n"
            "    print('installed')\n"
            "except ImportError:\n"
            "    try:\n"
            "        asyncio.run(plugind_host.connect(url='http://127.0.0.1:9', token='t'))\n"
            "    except RuntimeError as e:\n"
            "        print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": SDK_DIR}, capture_output=True, text=True)
        if out.stdout.strip() == "installed":
            self.skipTest("websockets is installed system-wide")
        self.assertIn("needs the 'websockets' package", out.stdout, out)

    async def test_default_socket_follows_plugind_rules(self):
        env = dict(os.environ)
        try:
            for k in ("PLUGIND_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
                os.environ.pop(k, None)
            self.assertEqual(plugind_host.default_socket(), "/tmp/plugind-%d.sock" % os.getuid())
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/7"
            self.assertEqual(plugind_host.default_socket(), "/run/user/7/plugind.sock")
            os.environ["RUNTIME_DIRECTORY"] = "/run/plugind"
            self.assertEqual(plugind_host.default_socket(), "/run/plugind/plugind.sock")
            os.environ["PLUGIND_SOCKET"] = self.plugind.socket
            self.assertEqual(plugind_host.default_socket(), self.plugind.socket)
            host = await plugind_host.connect()
            await host.close()
        finally:
            os.environ.clear()
            os.environ.update(env)


if __name__ == "__main__":
    unittest.main()
