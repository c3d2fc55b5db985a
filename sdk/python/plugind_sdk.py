"""plugind SDK for Python: a plugind plugin in a few lines.

A plugin is a child process speaking JSON-RPC 2.0 with plugind, one JSON object per line on
stdin/stdout (docs/protocol.md). This module does the wire work: it answers the lifecycle
requests, runs every call from plugind in its own thread (coroutines on one shared asyncio loop),
lets handlers call back into plugind while other calls are in flight, honours ``$/cancel``, and
keeps stray ``print()`` output off the wire.

Subclass style::

    from plugind_sdk import Plugin, run

    class Greeter(Plugin):
        def execute(self, method, params, ctx):
            if method == "hello":
                return {"greeting": f"Hello, {params.get('name', 'world')}!"}
            return super().execute(method, params, ctx)    # -32601 method not found

    run(Greeter())

Decorator style::

    plugin = Plugin()

    @plugin.method("hello")
    def hello(params, ctx):
        return {"greeting": f"Hello, {params.get('name', 'world')}!"}

    run(plugin)

Handlers may be plain functions or ``async def``. A sync handler that waits should wait on
``ctx.cancelled`` (a ``threading.Event``); an async one is cancelled like any asyncio task.

Standard library only, Python >= 3.9, one file: ``pluginctl new`` copies it next to a plugin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import json
import os
import queue
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    "Plugin", "PluginError", "Cancelled", "StopChain", "reject", "Host", "Context", "Registry", "run",
    "PROTOCOL_VERSION", "MAX_FRAME", "THREAD_STACK_SIZE",
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "DEADLINE_EXCEEDED", "PLUGIN_UNAVAILABLE", "PLUGIN_CRASHED", "SERVICE_NOT_FOUND",
    "PERMISSION_DENIED", "OVERLOADED", "INVALID_MANIFEST",
]

PROTOCOL_VERSION = 1
#: Longest line either side may send; longer input lines are discarded.
MAX_FRAME = 16 * 1024 * 1024
#: Stack size of the SDK's threads (one per call in flight). plugind's memory limit is an
#: RLIMIT_DATA, which counts thread stacks whole: at the 8 MiB default, the 64 calls in flight
#: plugind allows would use up the default 512 MiB. run() applies it unless one was set already.
THREAD_STACK_SIZE = 2 * 1024 * 1024

# Error codes (docs/protocol.md "Error codes").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
DEADLINE_EXCEEDED = -32001
PLUGIN_UNAVAILABLE = -32002
PLUGIN_CRASHED = -32003
SERVICE_NOT_FOUND = -32004
PERMISSION_DENIED = -32005
OVERLOADED = -32006
INVALID_MANIFEST = -32007
HOOK_REJECTED = -32008
REJECTED = -32009


class PluginError(Exception):
    """A JSON-RPC error.

    Raise it from a handler to answer with exactly this error. Calls into plugind raise it when
    plugind, or the service called, answers with an error, so re-raising passes it on unchanged.
    """

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_json(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    @classmethod
    def from_json(cls, err: Any) -> "PluginError":
        if not isinstance(err, dict):
            return cls(INTERNAL_ERROR, f"malformed error: {err!r}")
        return cls(err.get("code", INTERNAL_ERROR), str(err.get("message", "")), err.get("data"))

    def __repr__(self) -> str:
        return f"PluginError({self.code}, {self.message!r}, {self.data!r})"


class Cancelled(Exception):
    """Raised by a call into plugind once the call it was made for has been cancelled."""


def reject(message: str, data: Any = None) -> PluginError:
    """The error a hook handler raises to reject a payload on purpose: ``raise reject("no token")``.

    The chain ends whatever the plugin's ``failure`` mode, and ``hooks.run`` answers -32008 hook
    rejected, carrying this error (code -32009).
    """
    return PluginError(REJECTED, message, data)


class StopChain:
    """Return ``StopChain(payload)`` from a hook handler to end the hook chain with ``payload``."""

    def __init__(self, payload: Any):
        self.payload = payload


def _warn(message: str) -> None:
    # One write per line, so lines from different threads do not interleave.
    sys.stderr.write(f"plugind_sdk: {message}\n")
    sys.stderr.flush()


def _fail(fut: concurrent.futures.Future, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass  # answered or failed already


class _Connection:
    """Both directions of the wire. Writes are serialized by a lock; the reader resolves responses."""

    def __init__(self, writer):
        self._writer = writer
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: Dict[int, concurrent.futures.Future] = {}
        self._closed = False

    def send(self, msg: dict) -> None:
        # json.dumps escapes control characters, so a frame never holds a raw newline.
        line = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        with self._write_lock:
            try:
                self._writer.write(line.encode("utf-8") + b"\n")
                self._writer.flush()
            except OSError:
                pass  # plugind is gone; the reader sees EOF and run() returns

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                _fail(fut, PluginError(INTERNAL_ERROR, "the connection to plugind is closed"))
                return fut
            rid = next(self._ids)
            self._pending[rid] = fut
        fut.rpc_id = rid  # type: ignore[attr-defined]
        try:
            self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except (TypeError, ValueError):  # params are not JSON: nothing was sent
            self.forget(fut, Cancelled())
            raise
        return fut

    def forget(self, fut: concurrent.futures.Future, exc: BaseException) -> None:
        """Stops waiting for the answer to ``fut``'s request; a late answer is then ignored."""
        with self._lock:
            self._pending.pop(getattr(fut, "rpc_id", None), None)
        _fail(fut, exc)

    def resolve(self, msg: dict) -> bool:
        """Hands a response to its waiting request; False if none waits for that id."""
        rid = msg.get("id")
        with self._lock:
            fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None:
            return False
        try:
            if "error" in msg:
                fut.set_exception(PluginError.from_json(msg["error"]))
            else:
                fut.set_result(msg.get("result"))
        except concurrent.futures.InvalidStateError:
            pass
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = list(self._pending.values()), {}
        for fut in pending:
            _fail(fut, PluginError(INTERNAL_ERROR, "the connection to plugind closed"))


def _opt(params: dict, **optional: Any) -> dict:
    params.update((k, v) for k, v in optional.items() if v is not None)
    return params


class Host:
    """plugind as the plugin sees it: logs, metrics, the service registry, service calls, kv.

    ``plugin.host`` is one (set before ``init``), and so is every call's ``ctx``. Every method is
    thread-safe. Requests block the calling thread; in ``async`` handlers use the ``a``-prefixed
    twins, since all coroutines share one event loop. Requests raise ``PluginError`` when plugind
    answers with an error.
    """

    def __init__(self, conn: _Connection, registry: Optional["Registry"] = None):
        self._conn = conn
        self.registry = registry or Registry(self)

    # -- notifications ---------------------------------------------------------------------------

    def log(self, level: str, message: str, **fields: Any) -> None:
        """Sends a ``log`` line: level is trace, debug, info, warn or error."""
        self._conn.notify("log", _opt({"level": level, "message": str(message)}, fields=fields or None))

    def metric(self, name: str, value: float, kind: str = "gauge", labels: Optional[dict] = None) -> None:
        """Sends a ``metrics.emit`` sample; kind is counter, gauge or histogram."""
        self._conn.notify("metrics.emit", _opt({"name": name, "value": value, "kind": kind}, labels=labels))

    # -- requests --------------------------------------------------------------------------------

    def _start(self, method: str, params: Any) -> concurrent.futures.Future:
        return self._conn.request(method, params)

    def request(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Sends any request to plugind and waits (at most ``timeout`` seconds) for its result."""
        fut = self._start(method, {} if params is None else params)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            self._conn.forget(fut, Cancelled())
            raise PluginError(DEADLINE_EXCEEDED, f"{method}: no answer within {timeout} s") from None

    async def arequest(self, method: str, params: Any = None) -> Any:
        return await asyncio.wrap_future(self._start(method, {} if params is None else params))

    def call_service(self, service: str, method: str, params: Any = None,
                     version: Optional[str] = None, timeout_ms: Optional[int] = None) -> Any:
        """``service.call``: runs ``method`` on the provider of ``service`` and returns its result."""
        return self.request("service.call", _service_call(service, method, params, version, timeout_ms))

    async def acall_service(self, service: str, method: str, params: Any = None,
                            version: Optional[str] = None, timeout_ms: Optional[int] = None) -> Any:
        return await self.arequest("service.call", _service_call(service, method, params, version, timeout_ms))

    # kv.* needs the "storage" permission (-32005 otherwise).
    def kv_get(self, key: str) -> Any:
        return (self.request("kv.get", {"key": key}) or {}).get("value")

    def kv_set(self, key: str, value: Any) -> None:
        self.request("kv.set", {"key": key, "value": value})

    def kv_delete(self, key: str) -> bool:
        return bool((self.request("kv.delete", {"key": key}) or {}).get("deleted"))

    def kv_list(self, prefix: Optional[str] = None) -> List[str]:
        return (self.request("kv.list", _opt({}, prefix=prefix)) or {}).get("keys", [])

    async def akv_get(self, key: str) -> Any:
        return (await self.arequest("kv.get", {"key": key}) or {}).get("value")

    async def akv_set(self, key: str, value: Any) -> None:
        await self.arequest("kv.set", {"key": key, "value": value})

    async def akv_delete(self, key: str) -> bool:
        return bool((await self.arequest("kv.delete", {"key": key}) or {}).get("deleted"))

    async def akv_list(self, prefix: Optional[str] = None) -> List[str]:
        return (await self.arequest("kv.list", _opt({}, prefix=prefix)) or {}).get("keys", [])


def _service_call(service, method, params, version, timeout_ms) -> dict:
    params = {"service": service, "method": method, "params": {} if params is None else params}
    return _opt(params, version=version, timeout_ms=timeout_ms)


class Registry:
    """The service registry. ``register_service`` works only while ``Plugin.register`` runs."""

    def __init__(self, host: Host):
        self._host = host
        self._declared: Optional[List[dict]] = None  # a list while register runs

    def register_service(self, name: str, version: str, methods: Optional[List[str]] = None,
                         capabilities: Optional[List[str]] = None) -> None:
        """Declares a service this plugin provides (besides the one named after the plugin)."""
        if self._declared is None:
            raise RuntimeError("register_service() is allowed only inside Plugin.register()")
        self._declared.append(_opt({"name": name, "version": version},
                                   methods=list(methods) if methods else None,
                                   capabilities=list(capabilities) if capabilities else None))

    def get_service(self, name: str, version: Optional[str] = None) -> Optional[dict]:
        """The provider of ``name`` (``version`` is a semver range), or None."""
        return self._host.request("registry.getService", _opt({"name": name}, version=version))

    def require_service(self, name: str, version: Optional[str] = None) -> dict:
        """Like get_service, but raises PluginError(-32004) when there is none."""
        return self._host.request("registry.requireService", _opt({"name": name}, version=version))

    def list_services(self, capability: Optional[str] = None) -> List[dict]:
        return self._host.request("registry.listServices", _opt({}, capability=capability))


class Context(Host):
    """One request from plugind (``execute``, ``hook``, ...): a Host plus what belongs to the call.

    Attributes: ``id`` (the JSON-RPC id), ``service`` and ``caller`` (set when the call came through
    the registry / from another plugin), ``cancelled`` (a threading.Event set on ``$/cancel``).
    Once cancelled, the call's pending requests to plugind raise ``Cancelled``.
    """

    def __init__(self, conn: _Connection, registry: Registry, rid: Any):
        super().__init__(conn, registry)
        self.id = rid
        self.service: Optional[str] = None
        self.caller: Optional[str] = None
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._outgoing: set = set()  # our requests to plugind still unanswered
        self._task: Optional[concurrent.futures.Future] = None  # an async handler's task

    def progress(self, message: Optional[str] = None, progress: Optional[float] = None,
                 total: Optional[float] = None) -> None:
        """``$/progress``: says the call is still being worked on, which restarts its deadline."""
        self._conn.notify("$/progress", _opt({"id": self.id}, message=message, progress=progress, total=total))

    def _start(self, method: str, params: Any) -> concurrent.futures.Future:
        fut = super()._start(method, params)
        with self._lock:
            self._outgoing.add(fut)
        fut.add_done_callback(self._done)
        if self.cancelled.is_set():
            self._conn.forget(fut, Cancelled())
        return fut

    def _done(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._outgoing.discard(fut)

    def _cancel(self) -> None:
        """Called after ``cancelled`` is set: stop waiting on plugind, cancel an async handler."""
        with self._lock:
            outgoing = list(self._outgoing)
        for fut in outgoing:
            self._conn.forget(fut, Cancelled())
        if self._task is not None:
            self._task.cancel()


Handler = Callable[[Any, Context], Any]


class Plugin:
    """Base class of a plugin: override what you need, or use the decorators on an instance.

    Before ``init`` the SDK sets ``name``, ``version``, ``config``, ``data_dir`` (None without the
    storage permission), ``init_params`` (everything plugind sent) and ``host``.
    Every overridable method may also be ``async def``.
    """

    name: Optional[str] = None
    version: Optional[str] = None
    config: Any = None
    data_dir: Optional[str] = None
    init_params: Optional[dict] = None
    host: Optional[Host] = None

    # -- decorator style -------------------------------------------------------------------------

    def method(self, name: Any = None) -> Any:
        """Decorator: ``@plugin.method("hello")`` (or bare ``@plugin.method``) makes
        ``func(params, ctx)`` the handler of ``execute`` method ``hello``."""
        def add(func: Handler) -> Handler:
            self.__dict__.setdefault("_methods", {})[name or func.__name__] = func
            return func
        if callable(name):
            func, name = name, None
            return add(func)
        return add

    def on_hook(self, hook: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@plugin.on_hook("onRequest")`` makes ``func(payload, ctx)`` handle that hook."""
        def add(func: Handler) -> Handler:
            self.__dict__.setdefault("_hooks", {})[hook] = func
            return func
        return add

    # -- overridables ----------------------------------------------------------------------------

    def init(self, config: Any) -> None:
        """Handshake: ``config`` is the manifest's config merged with the operator's."""

    def register(self, registry: Registry) -> None:
        """Declare services with ``registry.register_service``; the registry may be queried too."""

    def execute(self, method: str, params: Any, ctx: Context) -> Any:
        """A call. Returns the result (any JSON value) or raises PluginError."""
        handler = self.__dict__.get("_methods", {}).get(method)
        if handler is None:
            raise PluginError(METHOD_NOT_FOUND, f"method not found: {method}")
        return handler(params, ctx)

    def hook(self, hook: str, payload: Any, ctx: Context) -> Any:
        """One step of a hook chain: returns the new payload, or StopChain(payload)."""
        handler = self.__dict__.get("_hooks", {}).get(hook)
        return payload if handler is None else handler(payload, ctx)

    def teardown(self) -> None:
        """Last request before stdin closes: release resources here."""

    def on_error(self, error: dict) -> None:
        """plugind saw an error caused by or aimed at this plugin: ``{code, message, data?}``."""

    def services_changed(self, change: dict) -> None:
        """A dependency came, went or was replaced: ``{service, version, plugin, event}``."""


async def _awaited(aw: Any) -> Any:
    return await aw


class _Server:
    """Routes incoming messages: requests to worker threads, responses to waiting calls."""

    def __init__(self, plugin: Plugin, conn: _Connection):
        self.plugin, self.conn = plugin, conn
        self.host = Host(conn)
        self.inflight: Dict[Any, Context] = {}
        self.lock = threading.Lock()  # guards inflight and lazy loop creation
        self.notes: "queue.Queue[dict]" = queue.Queue()
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def serve(self, frames) -> None:
        # Plugin callbacks for notifications run in order on one thread of their own, so they may
        # call into plugind (the reader thread must never wait on its own answers).
        threading.Thread(target=self._notifications, name="plugind-notify", daemon=True).start()
        for line in frames:
            self._on_line(line)
        self.conn.close()

    def _on_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            _warn(f"ignored a line that is not JSON: {line[:200]!r}")
            return
        if not isinstance(msg, dict):
            _warn(f"ignored a JSON value that is not a message: {line[:200]!r}")
            return
        method = msg.get("method")
        if isinstance(method, str):
            if "id" in msg:
                self._start_answer(msg)
            elif method == "$/cancel":
                self._cancel(msg.get("params"))
            else:
                self.notes.put(msg)
        elif not self.conn.resolve(msg):
            _warn(f"ignored a response to an unknown id: {line[:200]!r}")

    def _start_answer(self, msg: dict) -> None:
        # Registered here, on the reader thread, so that a $/cancel on the next line finds it.
        rid = msg["id"]
        ctx = Context(self.conn, self.host.registry, rid)
        key = rid if isinstance(rid, (int, str)) else None
        with self.lock:
            self.inflight[key] = ctx
        try:
            threading.Thread(target=self._answer, args=(msg, ctx, key), daemon=True).start()
        except RuntimeError as e:  # out of threads or memory: fail this call, not the plugin
            with self.lock:
                self.inflight.pop(key, None)
            self.conn.send({"jsonrpc": "2.0", "id": rid, "error": {
                "code": INTERNAL_ERROR, "message": f"cannot start a thread for this call: {e}"}})

    def _cancel(self, params: Any) -> None:
        rid = params.get("id") if isinstance(params, dict) else None
        with self.lock:
            ctx = self.inflight.get(rid) if isinstance(rid, (int, str)) else None
            if ctx is None:
                return  # answered already, or never seen
            ctx.cancelled.set()  # under the lock: _answer checks it under the same lock
        ctx._cancel()

    def _answer(self, msg: dict, ctx: Context, key: Any) -> None:
        rid, method, params = msg["id"], msg["method"], msg.get("params")
        try:
            reply = {"jsonrpc": "2.0", "id": rid, "result": self._dispatch(method, params or {}, ctx)}
        except PluginError as e:
            reply = {"jsonrpc": "2.0", "id": rid, "error": e.to_json()}
        except (Cancelled, concurrent.futures.CancelledError, asyncio.CancelledError):
            reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": "cancelled"}}
        except Exception as e:  # a bug in the handler: answer, and show the traceback in the log
            traceback.print_exc(file=sys.stderr)
            reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": str(e) or type(e).__name__}}
        with self.lock:
            self.inflight.pop(key, None)
            if ctx.cancelled.is_set():
                return  # plugind has already answered the caller: send nothing
        try:
            self.conn.send(reply)
        except (TypeError, ValueError) as e:  # the result is not JSON (an object, NaN, ...)
            self.conn.send({"jsonrpc": "2.0", "id": rid, "error": {
                "code": INTERNAL_ERROR, "message": f"result is not JSON-serializable: {e}"}})

    def _dispatch(self, method: str, params: Any, ctx: Context) -> Any:
        p = self.plugin
        if method == "execute":
            ctx.service, ctx.caller = params.get("service"), params.get("caller")
            return self._run(p.execute(params.get("method"), params.get("params"), ctx), ctx)
        if method == "hook":
            result = self._run(p.hook(params.get("hook"), params.get("payload"), ctx), ctx)
            if isinstance(result, StopChain):
                return {"payload": result.payload, "stop": True}
            return {"payload": result}
        if method == "ping":
            return {}
        if method == "init":
            p.init_params, p.host = params, self.host
            p.name, p.version = params.get("name"), params.get("version")
            p.config, p.data_dir = params.get("config"), params.get("data_dir")
            self._run(p.init(p.config), ctx)
            return {"protocol_version": PROTOCOL_VERSION}
        if method == "register":
            registry = self.host.registry
            registry._declared = []
            try:
                self._run(p.register(registry), ctx)
                return {"services": registry._declared}
            finally:
                registry._declared = None
        if method == "teardown":
            self._run(p.teardown(), ctx)
            return None
        raise PluginError(METHOD_NOT_FOUND, f"method not found: {method}")

    def _run(self, value: Any, ctx: Optional[Context] = None) -> Any:
        """Returns ``value``, or its result if it is awaitable (run on the shared event loop)."""
        if not inspect.isawaitable(value):
            return value
        with self.lock:
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="plugind-asyncio", daemon=True).start()
        task = asyncio.run_coroutine_threadsafe(_awaited(value), self.loop)
        if ctx is not None:
            ctx._task = task
            if ctx.cancelled.is_set():
                task.cancel()
        return task.result()

    def _notifications(self) -> None:
        while True:
            msg = self.notes.get()
            params = msg.get("params") or {}
            try:
                if msg["method"] == "onError":
                    self._run(self.plugin.on_error(params))
                elif msg["method"] == "services.changed":
                    self._run(self.plugin.services_changed(params))
                # Any other notification is ignored, as the protocol asks.
            except Exception:
                traceback.print_exc(file=sys.stderr)


def _frames(stream):
    """Yields the lines of ``stream``; a line over MAX_FRAME is skipped without being held whole."""
    while True:
        line = stream.readline(MAX_FRAME + 1)
        if not line:
            return
        if len(line) > MAX_FRAME and not line.endswith(b"\n"):
            while True:
                rest = stream.readline(MAX_FRAME)
                if not rest or rest.endswith(b"\n"):
                    break
            _warn(f"discarded an input line longer than {MAX_FRAME} bytes")
            continue
        if line.strip():
            yield line


def _take_stdio():
    """Takes fds 0 and 1 for the protocol and points the public ones elsewhere.

    Afterwards print(), sys.stdout, C extensions and child processes writing to fd 1 all land on
    stderr (the plugin's log), and reading stdin yields nothing instead of protocol lines.
    """
    sys.stdout.flush()
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def run(plugin: Plugin) -> None:
    """Serves ``plugin`` over stdin/stdout until plugind closes stdin (after ``teardown``)."""
    if threading.stack_size() == 0:
        threading.stack_size(THREAD_STACK_SIZE)
    proto_in, proto_out = _take_stdio()
    _Server(plugin, _Connection(proto_out)).serve(_frames(proto_in))
