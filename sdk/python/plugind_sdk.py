"""plugind SDK for Python: a plugind plugin in a few lines.

A plugin is a child process speaking JSON-RPC 2.0 with plugind, one JSON object per line on
stdin/stdout (docs/protocol.md). This module does the wire work: it answers the lifecycle
requests, runs handlers (plain functions on the reading thread, coroutines on one shared asyncio
loop), lets handlers call back into plugind while other calls are in flight, honours ``$/cancel``,
passes the call's trace context on, and keeps stray ``print()`` output off the wire.

Subclass style::

    from plugind_sdk import Plugin, run

    class Greeter(Plugin):
        def execute(self, method, params, ctx):
            if method == "hello":
                return {"greeting": f"Hello, {params.get('name', 'world')}!"}
            return super().execute(method, params, ctx)    # -32601 method not found

    run(Greeter())

Decorator style, with an optional declaration for plugind's method catalog::

    plugin = Plugin()

    @plugin.method("hello", description="Greets someone",
                   params={"type": "object", "properties": {"name": {"type": "string"}}})
    def hello(params, ctx):
        return {"greeting": f"Hello, {params.get('name', 'world')}!"}

    run(plugin)

Handlers may be plain functions or ``async def``. A plain function runs at once on the thread that
reads stdin, with no thread hop: a fast handler costs a function call. When it waits through the
SDK (a request to plugind such as ``ctx.call_service``, or ``ctx.cancelled.wait()``) another thread
takes over reading first, so other calls and ``$/cancel`` still get through; one that blocks some
other way (``time.sleep``, a socket) for more than ``HANDOFF_AFTER`` seconds is handed off the
same way by a watchdog (and later calls of that method hand it off before they run). ``async
def`` handlers run concurrently on one asyncio loop and are cancelled like any asyncio task.

Standard library only, Python >= 3.9, one file: ``pluginctl new`` copies it next to a plugin.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import json
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    "Plugin", "PluginError", "Cancelled", "StopChain", "reject", "Host", "Context", "Registry", "run",
    "PROTOCOL_VERSION", "MAX_FRAME", "THREAD_STACK_SIZE", "HANDOFF_AFTER",
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "DEADLINE_EXCEEDED", "PLUGIN_UNAVAILABLE", "PLUGIN_CRASHED", "SERVICE_NOT_FOUND",
    "PERMISSION_DENIED", "OVERLOADED", "INVALID_MANIFEST",
]

PROTOCOL_VERSION = 1
#: Longest line either side may send; longer input lines are discarded.
MAX_FRAME = 16 * 1024 * 1024
#: Stack size of the SDK's threads (at most one per plain handler that waits). plugind's memory
#: limit is an RLIMIT_DATA, which counts thread stacks whole: at the 8 MiB default, the 64 calls in
#: flight plugind allows would use up the default 512 MiB. run() applies it unless one was set.
THREAD_STACK_SIZE = 2 * 1024 * 1024
#: A plain handler still running after this many seconds (it blocks outside the SDK, e.g. in
#: ``time.sleep``) gets the reading of stdin taken from its thread, so other calls go on.
HANDOFF_AFTER = 0.02

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


# One encoder for every message: json.dumps with options builds a new encoder per call. It escapes
# control characters, so a frame never holds a raw newline.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_loads = json.loads
try:  # the C parts of the json module, called directly: a plugin's answers are its hot path
    from json.decoder import JSONDecoder as _JSONDecoder
    from json.encoder import c_make_encoder as _c_make_encoder, encode_basestring as _encode_str

    def _not_json(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    _c_encode = _c_make_encoder(None, _not_json, _encode_str, None, ":", ",", False, False, False)
    _scan = _JSONDecoder().scan_once

    def _encode(o: Any) -> str:  # noqa: F811 - the same function, faster
        if type(o) is str:
            return _encode_str(o)
        try:
            return "".join(_c_encode(o, 0))
        except RecursionError:
            raise ValueError("Circular reference detected") from None

    def _loads(line: str) -> Any:  # noqa: F811
        try:
            value, end = _scan(line, 0)
        except StopIteration:
            return json.loads(line)  # leading whitespace, or not JSON: json.loads says which
        if end != len(line) and not line[end:].isspace():
            return json.loads(line)
        return value
except (ImportError, TypeError):  # another implementation of json: the plain functions
    pass

# Types a handler's value may have that are surely not awaitable (checked before hasattr).
_PLAIN = frozenset((dict, list, str, int, float, bool, type(None), tuple))


def _id_json(rid: Any) -> str:
    return str(rid) if type(rid) is int else _encode(rid)


# Per thread: the reader role this thread holds (a _Turn), if any.
_local = threading.local()


class _Turn:
    """One thread's turn at reading stdin. ``handed`` once another thread has taken over reading;
    ``calls`` and ``busy`` let the watchdog see a plain handler that has run too long."""

    __slots__ = ("handed", "calls", "busy", "params")

    def __init__(self) -> None:
        self.handed = False
        self.calls = 0
        self.busy = False
        self.params: Any = None  # of the call being handled: its `execute` method names it


class _Connection:
    """Both directions of the wire.

    Outgoing lines queue in ``_out``; a thread that reads stdin leaves its lines there and writes
    them all in one ``write`` before it blocks on the next read (so answers to one read leave
    together), every other thread writes at once under ``_write_lock``, along with whatever is
    queued, which keeps each call's lines in the order they were sent.
    """

    def __init__(self, fd: int):
        self._fd = fd
        self._out: "collections.deque[str]" = collections.deque()
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: Dict[int, concurrent.futures.Future] = {}
        self._closed = False
        self._broken = False  # plugind stopped reading: drop what is written
        self.server: Optional["_Server"] = None

    def send_line(self, line: str) -> None:
        self._out.append(line)
        turn = getattr(_local, "turn", None)
        if turn is None or turn.handed:
            self.flush()

    def send(self, msg: dict) -> None:
        self.send_line(_encode(msg))

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        with self._write_lock:
            parts = []
            try:
                while True:
                    parts.append(out.popleft())
            except IndexError:
                pass
            if not parts or self._broken:
                return
            parts.append("")
            data = "\n".join(parts).encode("utf-8", "surrogatepass")
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError:
                self._broken = True  # plugind is gone; the reader sees EOF and run() returns

    def notify(self, method: str, params: Any) -> None:
        self.send_line('{"jsonrpc":"2.0","method":' + _encode(method) + ',"params":' + _encode(params) + "}")

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
            line = _encode({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except (TypeError, ValueError):  # params are not JSON: nothing was sent
            self.forget(fut, Cancelled())
            raise
        self.send_line(line)
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

    def wait(self, fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
        """``fut.result(timeout)``; on the reading thread, another thread takes over reading first."""
        if getattr(_local, "turn", None) is not None and self.server is not None:
            self.server.hand_off()
        return fut.result(timeout)


def _opt(target: dict, **optional: Any) -> dict:
    target.update((k, v) for k, v in optional.items() if v is not None)
    return target


class Host:
    """plugind as the plugin sees it: logs, metrics, the service registry, service calls, kv.

    ``plugin.host`` is one (set before ``init``), and so is every call's ``ctx``. Every method is
    thread-safe. Requests block the calling thread (another thread takes over reading stdin
    meanwhile); in ``async`` handlers use the ``a``-prefixed twins, since all coroutines share one
    event loop. Requests raise ``PluginError`` when plugind answers with an error.
    """

    #: The W3C trace context of the call being served (``ctx.traceparent``); None outside a call
    #: or when plugind sent none.
    traceparent: Optional[str] = None
    tracestate: Optional[str] = None

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
            return self._conn.wait(fut, timeout)
        except concurrent.futures.TimeoutError:
            self._conn.forget(fut, Cancelled())
            raise PluginError(DEADLINE_EXCEEDED, f"{method}: no answer within {timeout} s") from None

    async def arequest(self, method: str, params: Any = None) -> Any:
        return await asyncio.wrap_future(self._start(method, {} if params is None else params))

    def _meta(self) -> Optional[dict]:
        if self.traceparent is None:
            return None
        return _opt({"traceparent": self.traceparent}, tracestate=self.tracestate)

    def call_service(self, service: str, method: str, params: Any = None,
                     version: Optional[str] = None, timeout_ms: Optional[int] = None) -> Any:
        """``service.call``: runs ``method`` on the provider of ``service`` and returns its result.

        Inside a call, the request carries the call's trace context (``_meta.traceparent``)."""
        return self.request("service.call", _service_call(service, method, params, version, timeout_ms, self._meta()))

    async def acall_service(self, service: str, method: str, params: Any = None,
                            version: Optional[str] = None, timeout_ms: Optional[int] = None) -> Any:
        call = _service_call(service, method, params, version, timeout_ms, self._meta())
        return await self.arequest("service.call", call)

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


def _service_call(service, method, params, version, timeout_ms, meta=None) -> dict:
    params = {"service": service, "method": method, "params": {} if params is None else params}
    return _opt(params, version=version, timeout_ms=timeout_ms, _meta=meta)


def _declaration(description=None, params=None, result=None, timeout_ms=None, idempotent=None) -> dict:
    """A method's entry in the ``register`` answer's ``methods`` (the manifest's shape)."""
    return _opt({}, description=description, params=params, result=result, timeout_ms=timeout_ms,
                idempotent=idempotent)


class Registry:
    """The service registry. ``register_service`` and ``declare_method`` work only while
    ``Plugin.register`` runs."""

    def __init__(self, host: Host):
        self._host = host
        self._declared: Optional[List[dict]] = None  # a list while register runs
        self._methods: Optional[Dict[str, dict]] = None  # declared in register()

    def register_service(self, name: str, version: str, methods: Optional[List[str]] = None,
                         capabilities: Optional[List[str]] = None) -> None:
        """Declares a service this plugin provides (besides the one named after the plugin)."""
        if self._declared is None:
            raise RuntimeError("register_service() is allowed only inside Plugin.register()")
        self._declared.append(_opt({"name": name, "version": version},
                                   methods=list(methods) if methods else None,
                                   capabilities=list(capabilities) if capabilities else None))

    def declare_method(self, name: str, *, description: Optional[str] = None, params: Optional[dict] = None,
                       result: Optional[dict] = None, timeout_ms: Optional[int] = None,
                       idempotent: Optional[bool] = None) -> None:
        """Declares a method for plugind's catalog (``params``/``result`` are JSON Schemas); the
        subclass-style twin of ``@plugin.method(name, description=..., params=...)``."""
        if self._methods is None:
            raise RuntimeError("declare_method() is allowed only inside Plugin.register()")
        self._methods[name] = _declaration(description, params, result, timeout_ms, idempotent)

    def get_service(self, name: str, version: Optional[str] = None) -> Optional[dict]:
        """The provider of ``name`` (``version`` is a semver range), or None."""
        return self._host.request("registry.getService", _opt({"name": name}, version=version))

    def require_service(self, name: str, version: Optional[str] = None) -> dict:
        """Like get_service, but raises PluginError(-32004) when there is none."""
        return self._host.request("registry.requireService", _opt({"name": name}, version=version))

    def list_services(self, capability: Optional[str] = None) -> List[dict]:
        return self._host.request("registry.listServices", _opt({}, capability=capability))


class _CancelEvent(threading.Event):
    """``ctx.cancelled``: a threading.Event whose ``wait`` first hands the reading of stdin to
    another thread when called on the reading thread, so the ``$/cancel`` it waits for can come."""

    def __init__(self, conn: _Connection):
        super().__init__()
        self._conn = conn

    def wait(self, timeout: Optional[float] = None) -> bool:
        if not self.is_set() and getattr(_local, "turn", None) is not None and self._conn.server is not None:
            self._conn.server.hand_off()
        return super().wait(timeout)


_event_lock = threading.Lock()


class Context(Host):
    """One request from plugind (``execute``, ``hook``, ...): a Host plus what belongs to the call.

    Attributes: ``id`` (the JSON-RPC id), ``service`` and ``caller`` (set when the call came through
    the registry / from another plugin), ``traceparent`` and ``tracestate`` (the W3C trace context
    plugind passed in ``_meta``, or None; ``call_service`` passes them on), ``cancelled`` (a
    threading.Event set on ``$/cancel``). Once cancelled, the call's pending requests to plugind
    raise ``Cancelled``.
    """

    def __init__(self, conn: _Connection, registry: Registry, rid: Any):
        # Kept light: most calls never touch ``cancelled`` or make a request, so the event, the
        # lock and the set of outgoing requests are made on first use.
        self._conn = conn
        self.registry = registry
        self.id = rid

    # Class-level defaults, overridden per call only when set.
    service: Optional[str] = None
    caller: Optional[str] = None
    _is_cancelled = False
    _event: Optional[_CancelEvent] = None
    _outgoing: Optional[set] = None  # our requests to plugind still unanswered
    _task: Optional[concurrent.futures.Future] = None  # an async handler's task

    @property
    def cancelled(self) -> threading.Event:
        event = self._event
        if event is None:
            with _event_lock:
                event = self._event
                if event is None:
                    event = self._event = _CancelEvent(self._conn)
            if self._is_cancelled:  # after publishing: _cancel sets the flag, then reads _event
                event.set()
        return event

    def progress(self, message: Optional[str] = None, progress: Optional[float] = None,
                 total: Optional[float] = None) -> None:
        """``$/progress``: says the call is still being worked on, which restarts its deadline."""
        self._conn.notify("$/progress", _opt({"id": self.id}, message=message, progress=progress, total=total))

    def _start(self, method: str, params: Any) -> concurrent.futures.Future:
        fut = super()._start(method, params)
        with _event_lock:
            if self._outgoing is None:
                self._outgoing = set()
            self._outgoing.add(fut)
        fut.add_done_callback(self._done)
        if self._is_cancelled:
            self._conn.forget(fut, Cancelled())
        return fut

    def _done(self, fut: concurrent.futures.Future) -> None:
        with _event_lock:
            self._outgoing.discard(fut)  # type: ignore[union-attr]

    def _cancel(self) -> None:
        """``$/cancel``: set ``cancelled``, stop waiting on plugind, cancel an async handler."""
        self._is_cancelled = True
        event = self._event
        if event is not None:
            event.set()
        with _event_lock:
            outgoing = list(self._outgoing or ())
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

    def method(self, name: Any = None, *, description: Optional[str] = None, params: Optional[dict] = None,
               result: Optional[dict] = None, timeout_ms: Optional[int] = None,
               idempotent: Optional[bool] = None) -> Any:
        """Decorator: ``@plugin.method("hello")`` (or bare ``@plugin.method``) makes
        ``func(params, ctx)`` the handler of ``execute`` method ``hello``.

        The keywords declare the method for plugind's catalog, sent in the ``register`` answer's
        ``methods``: ``description``, ``params`` and ``result`` (JSON Schemas; plugind checks the
        params before the call reaches the plugin), ``timeout_ms`` (this method's deadline) and
        ``idempotent``. Without any, the method is served but not declared."""
        declaration = _declaration(description, params, result, timeout_ms, idempotent)

        def add(func: Handler) -> Handler:
            method = name or func.__name__
            self.__dict__.setdefault("_methods", {})[method] = func
            if declaration:
                self.__dict__.setdefault("_declarations", {})[method] = declaration
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
        """Declare services with ``registry.register_service`` (and methods with
        ``registry.declare_method``); the registry may be queried too."""

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


class _Server:
    """Reads stdin, routes messages, answers calls.

    One thread at a time holds the *turn* to read stdin (``_read_turn``): it reads what is there
    (up to 64 KiB), handles every complete line, and writes the answers of that read together.
    A plain handler runs right there. A coroutine goes to the asyncio loop thread, which answers it
    when it ends. When a plain handler waits (``hand_off``: a request to plugind, ``cancelled.wait``)
    or runs past ``HANDOFF_AFTER`` (the watchdog), the turn passes to another thread, a parked one
    if there is one; the old thread finishes its handler, answers, handles lines already read and
    then parks. So fast handlers cost no thread switch, and a slow one never holds up the others.
    """

    def __init__(self, plugin: Plugin, conn: _Connection, fd: int):
        self.plugin, self.conn, self.fd = plugin, conn, fd
        conn.server = self
        self.host = Host(conn)
        self.inflight: Dict[Any, Context] = {}
        self.lock = threading.Lock()  # guards inflight, the turn, the parked threads and the loop
        self.notes: "queue.Queue[dict]" = queue.Queue()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.lines: "collections.deque[str]" = collections.deque()  # read, not yet handled
        self.read_lock = threading.Lock()  # held while reading stdin and splitting lines
        self.partial: List[bytes] = []  # the start of a line not complete yet
        self.partial_size = 0
        self.skipping = False  # inside a line over MAX_FRAME
        self.eof = threading.Event()
        self.turn: Optional[_Turn] = None  # the turn of the thread that reads now
        self.parked: List[list] = []  # [event, turn] of threads waiting for a turn
        self.watching = threading.Event()  # wakes the idle watchdog when a read returns
        self.watchdog_idle = False
        self.reading = False  # a thread waits in os.read for input
        # `execute` methods whose handler the watchdog found blocking: their next calls hand
        # the turn on before they run, so N calls at once do not start HANDOFF_AFTER apart.
        # A call of one that then finishes within HANDOFF_AFTER takes it off the set.
        self.blocking: set = set()

    # -- the turn to read ------------------------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self._notifications, name="plugind-notify", daemon=True).start()
        threading.Thread(target=self._watchdog, name="plugind-watchdog", daemon=True).start()
        turn = _Turn()
        self.turn = turn
        self._read_turn(turn)
        # The turn may have passed to another thread: run() returns only at end of input.
        self.eof.wait()

    def hand_off(self) -> None:
        """Gives this thread's turn to read to another thread (called before it blocks)."""
        turn = getattr(_local, "turn", None)
        if turn is None or turn.handed:
            return
        self._pass_turn(turn)
        self.conn.flush()

    def _pass_turn(self, turn: _Turn) -> None:
        with self.lock:
            if turn.handed or self.turn is not turn:
                return
            new = _Turn()
            # Given up before the new reader runs: it may read a line at once and hand its own
            # turn on, which it can do only once the turn is its own (else it would keep it
            # until the watchdog noticed, and calls would start in 20 ms waves).
            turn.handed = True
            self.turn = new
            parked = self.parked.pop() if self.parked else None
            if parked is not None:
                parked[1] = new
                parked[0].set()
                return
        try:
            threading.Thread(target=self._read_turn, args=(new,), name="plugind-reader", daemon=True).start()
        except RuntimeError as e:  # out of threads: keep reading here, after the handler
            _warn(f"cannot start a thread to read stdin: {e}")
            with self.lock:
                if self.turn is new:  # nobody took it: nobody is left without a reader
                    self.turn = turn
                    turn.handed = False

    def _read_turn(self, turn: _Turn) -> None:
        """Handles lines while this thread has the turn, then parks for a new one (or exits)."""
        _local.turn = turn
        try:
            while True:
                if self._handle_lines(turn):
                    return  # end of input
                if not self._park():
                    return
                turn = _local.turn
        finally:
            _local.turn = None

    def _park(self) -> bool:
        """Waits for a new turn; False after a minute without one (the thread then ends)."""
        if threading.current_thread() is threading.main_thread():
            return False  # serve() waits for the end of input instead
        slot: list = [threading.Event(), None]
        with self.lock:
            if len(self.parked) >= 4 or self.eof.is_set():
                return False
            self.parked.append(slot)
        if not slot[0].wait(60):
            with self.lock:
                if slot in self.parked:
                    self.parked.remove(slot)
                    return False
        if slot[1] is None:  # woken at the end of input: no turn, the thread ends
            return False
        _local.turn = slot[1]
        return True

    def _handle_lines(self, turn: _Turn) -> bool:
        """Handles lines until the turn passes (False) or the input ends (True)."""
        lines = self.lines
        on_line = self._on_line
        while True:
            try:
                line = lines.popleft()
            except IndexError:
                if turn.handed:
                    self.conn.flush()
                    return False
                if not self.read_lock.acquire(blocking=False):
                    return False  # the thread with the turn is reading
                try:
                    if turn.handed:
                        self.conn.flush()
                        return False
                    if not self._read():
                        self._end()
                        return True
                finally:
                    self.read_lock.release()
                continue
            turn.calls += 1
            turn.busy = True
            on_line(line)
            turn.busy = False

    def _read(self) -> bool:
        """Flushes, waits for input, queues its complete lines; False at end of input."""
        self.conn.flush()
        self.reading = True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as e:
            _warn(f"cannot read stdin: {e}")
            chunk = b""
        # Wakes an idle watchdog now that there is work: the handler this chunk starts may block
        # (the watchdog sleeps only while this thread waits in os.read; see _watchdog).
        self.reading = False
        if self.watchdog_idle:
            self.watching.set()
        if not chunk:
            return False
        end = chunk.rfind(b"\n")
        if end == -1:
            self._keep(chunk)
            return True
        first = chunk.find(b"\n")
        if self.partial or self.skipping:
            head, chunk, end = chunk[:first], chunk[first + 1:], end - first - 1
            line = self._complete(head)
            if line is not None:
                self._queue(line)
            if end < 0:  # that newline was the only one
                self._keep(chunk)
                return True
        self._queue(chunk[:end])
        if end + 1 < len(chunk):
            self._keep(chunk[end + 1:])
        return True

    def _queue(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # decode line by line: only the bad ones are lost
            for raw in data.split(b"\n"):
                try:
                    self.lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    _warn(f"ignored a line that is not UTF-8: {raw[:200]!r}")
            return
        self.lines.extend(text.split("\n"))

    def _keep(self, data: bytes) -> None:
        """The start (or more) of a line whose end has not come yet."""
        if self.skipping:
            return
        self.partial_size += len(data)
        if self.partial_size > MAX_FRAME:
            self.partial, self.partial_size, self.skipping = [], 0, True
            _warn(f"discarded an input line longer than {MAX_FRAME} bytes")
            return
        self.partial.append(data)

    def _complete(self, tail: bytes) -> Optional[bytes]:
        """The line that ``tail`` ends, or None if it was over the limit."""
        if self.skipping:
            self.skipping = False
            return None
        if self.partial_size + len(tail) > MAX_FRAME:
            self.partial, self.partial_size = [], 0
            _warn(f"discarded an input line longer than {MAX_FRAME} bytes")
            return None
        self.partial.append(tail)
        line = b"".join(self.partial)
        self.partial, self.partial_size = [], 0
        return line

    def _end(self) -> None:
        if self.partial and not self.skipping:
            line, self.partial = b"".join(self.partial), []
            self._queue(line)
            while self.lines:
                self._on_line(self.lines.popleft())
        self.conn.flush()
        self.conn.close()
        self.eof.set()
        with self.lock:
            for slot in self.parked:
                slot[0].set()  # wakes them with no turn: they end
            self.parked.clear()
        self.watching.set()

    def _watchdog(self) -> None:
        """Passes the turn on when a plain handler has run for HANDOFF_AFTER (it blocks outside
        the SDK); sleeps while stdin is idle."""
        seen = (None, -1)
        quiet = 0
        while not self.eof.is_set():
            time.sleep(HANDOFF_AFTER / 2)
            turn = self.turn
            if turn is None:
                continue
            if turn.busy:
                quiet = 0
                if seen == (turn, turn.calls):
                    params = turn.params
                    # (Bounded: an `execute` override may serve any name a host sends.)
                    if type(params) is dict and type(params.get("method")) is str and len(self.blocking) < 256:
                        self.blocking.add(params["method"])
                    self._pass_turn(turn)
                seen = (turn, turn.calls)
            else:
                seen = (None, -1)
                quiet += 1
                if quiet >= 4:  # idle: sleep until the next read returns
                    # Clear, publish, then look: a read that returns after the look sees
                    # watchdog_idle and wakes us; one that returned before it left `reading`
                    # False, and we stay awake.
                    self.watching.clear()
                    self.watchdog_idle = True
                    if not (self.reading and turn is self.turn and not turn.busy):
                        self.watching.set()
                    self.watching.wait()
                    self.watchdog_idle = False
                    quiet = 0

    # -- messages --------------------------------------------------------------------------------

    def _on_line(self, line: str) -> None:
        try:
            msg = _loads(line)
        except ValueError:
            if line and not line.isspace():
                _warn(f"ignored a line that is not JSON: {line[:200]!r}")
            return
        if type(msg) is not dict:
            _warn(f"ignored a JSON value that is not a message: {line[:200]!r}")
            return
        method = msg.get("method")
        if type(method) is str:
            if "id" in msg:
                self._request(msg["id"], method, msg.get("params") or {})
            elif method == "$/cancel":
                self._cancel(msg.get("params"))
            else:
                self.notes.put(msg)
        elif not self.conn.resolve(msg):
            _warn(f"ignored a response to an unknown id: {line[:200]!r}")

    def _cancel(self, params: Any) -> None:
        rid = params.get("id") if isinstance(params, dict) else None
        with self.lock:
            ctx = self.inflight.get(rid) if isinstance(rid, (int, str)) else None
            if ctx is None:
                return  # answered already, or never seen
            ctx._is_cancelled = True  # under the lock: _finish checks it under the same lock
        ctx._cancel()

    def _request(self, rid: Any, method: str, params: Any) -> None:
        turn = _local.turn
        turn.params = params
        ctx = Context(self.conn, self.host.registry, rid)
        key = rid if type(rid) in (int, str) else None
        inflight = self.inflight
        inflight[key] = ctx  # registered before the handler runs, so a $/cancel can find it
        started = 0.0
        blocks = bool(self.blocking) and method == "execute" and type(params) is dict and params.get("method") in self.blocking
        if blocks:
            self._pass_turn(turn)
            started = time.monotonic()
        try:
            value = self._dispatch(method, params, ctx)
        except BaseException as e:  # noqa: B036 - every failure becomes the call's error answer
            self._finish(ctx, key, None, e)
            return
        finally:
            if blocks and time.monotonic() - started < HANDOFF_AFTER:
                self.blocking.discard(params.get("method"))
        if type(value) not in _PLAIN and hasattr(value, "__await__"):
            self._schedule(ctx, key, value)
        elif not (turn.handed or ctx._is_cancelled):
            # Answered on the reading thread before any other thread could read a $/cancel for
            # it: no lock needed.
            del inflight[key]
            try:
                line = '{"jsonrpc":"2.0","id":' + _id_json(rid) + ',"result":' + _encode(value) + "}"
            except (TypeError, ValueError):
                self._finish(ctx, key, value, None)  # the slow path words the error
                return
            self.conn.send_line(line)
        else:
            self._finish(ctx, key, value, None)

    def _dispatch(self, method: str, params: Any, ctx: Context) -> Any:
        """Starts a call: its result, or an awaitable that gives it."""
        p = self.plugin
        if method == "execute":
            if "service" in params or "caller" in params:
                ctx.service, ctx.caller = params.get("service"), params.get("caller")
            meta = params.get("_meta")
            if meta is not None:
                self._trace(ctx, meta)
            return p.execute(params.get("method"), params.get("params"), ctx)
        if method == "hook":
            meta = params.get("_meta")
            if meta is not None:
                self._trace(ctx, meta)
            result = p.hook(params.get("hook"), params.get("payload"), ctx)
            if hasattr(result, "__await__"):
                return _hook_answer(result)
            return _hook_result(result)
        if method == "ping":
            return {}
        if method == "init":
            p.init_params, p.host = params, self.host
            p.name, p.version = params.get("name"), params.get("version")
            p.config, p.data_dir = params.get("config"), params.get("data_dir")
            result = p.init(p.config)
            answer = {"protocol_version": PROTOCOL_VERSION}
            return _then(result, answer) if hasattr(result, "__await__") else answer
        if method == "register":
            registry = self.host.registry
            registry._declared, registry._methods = [], dict(p.__dict__.get("_declarations", {}))
            try:
                result = p.register(registry)
            except BaseException:
                registry._declared = registry._methods = None
                raise
            if hasattr(result, "__await__"):
                return _register_answer(registry, result)
            return _registered(registry)
        if method == "teardown":
            result = p.teardown()
            return _then(result, None) if hasattr(result, "__await__") else None
        raise PluginError(METHOD_NOT_FOUND, f"method not found: {method}")

    @staticmethod
    def _trace(ctx: Context, meta: Any) -> None:
        if isinstance(meta, dict):
            tp, ts = meta.get("traceparent"), meta.get("tracestate")
            ctx.traceparent = tp if isinstance(tp, str) else None
            ctx.tracestate = ts if isinstance(ts, str) else None

    def _finish(self, ctx: Context, key: Any, result: Any, error: Optional[BaseException]) -> None:
        """Answers a call (from any thread); a cancelled one with -32800, whatever it returned."""
        rid = ctx.id
        if error is None:
            try:
                line = '{"jsonrpc":"2.0","id":' + _id_json(rid) + ',"result":' + _encode(result) + "}"
            except (TypeError, ValueError) as e:  # the result is not JSON (an object, NaN, ...)
                error = PluginError(INTERNAL_ERROR, f"result is not JSON-serializable: {e}")
        if error is not None:
            if isinstance(error, PluginError):
                err = error.to_json()
            elif isinstance(error, (Cancelled, concurrent.futures.CancelledError, asyncio.CancelledError)):
                err = {"code": INTERNAL_ERROR, "message": "cancelled"}
            elif isinstance(error, Exception):  # a bug in the handler: answer, show the traceback
                traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
                # Its class names what went wrong ("KeyError: 'name'"); the traceback is on
                # the plugin's stderr (`pluginctl logs NAME`).
                name = type(error).__name__
                err = {"code": INTERNAL_ERROR, "message": f"{name}: {error}" if str(error) else name}
            else:  # KeyboardInterrupt, SystemExit: not the call's business
                raise error
            try:
                line = '{"jsonrpc":"2.0","id":' + _id_json(rid) + ',"error":' + _encode(err) + "}"
            except (TypeError, ValueError) as e:  # error data that is not JSON
                line = _encode({"jsonrpc": "2.0", "id": rid, "error": {
                    "code": err.get("code", INTERNAL_ERROR), "message": f"error is not JSON-serializable: {e}"}})
        with self.lock:
            if self.inflight.get(key) is ctx:
                del self.inflight[key]
            if ctx._is_cancelled:
                # plugind has answered the caller; this says the work is over, which frees the
                # max_inflight slot plugind keeps for a cancelled call until then.
                line = '{"jsonrpc":"2.0","id":' + _id_json(rid) + ',"error":{"code":-32800,"message":"cancelled"}}'
        self.conn.send_line(line)

    def _schedule(self, ctx: Context, key: Any, awaitable: Any) -> None:
        """Runs a coroutine on the shared asyncio loop; its end answers the call."""
        with self.lock:
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="plugind-asyncio", daemon=True).start()
        task = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)
        ctx._task = task
        if ctx._is_cancelled:
            task.cancel()

        def done(fut: concurrent.futures.Future) -> None:
            try:
                result = fut.result()
            except BaseException as e:  # noqa: B036 - the call's error answer
                self._finish(ctx, key, None, e)
            else:
                self._finish(ctx, key, result, None)
        task.add_done_callback(done)

    def _run(self, value: Any) -> Any:
        """``value``, or its result if it is awaitable (run on the shared event loop)."""
        if not hasattr(value, "__await__"):
            return value
        with self.lock:
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="plugind-asyncio", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(_awaited(value), self.loop).result()

    def _notifications(self) -> None:
        # Plugin callbacks for notifications run in order on this thread of their own, so they may
        # call into plugind while the reading goes on.
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


async def _awaited(aw: Any) -> Any:
    return await aw


async def _then(aw: Any, value: Any) -> Any:
    await aw
    return value


def _hook_result(result: Any) -> dict:
    if isinstance(result, StopChain):
        return {"payload": result.payload, "stop": True}
    return {"payload": result}


async def _hook_answer(aw: Any) -> dict:
    return _hook_result(await aw)


def _registered(registry: Registry) -> dict:
    answer: Dict[str, Any] = {"services": registry._declared}
    if registry._methods:
        answer["methods"] = registry._methods
    registry._declared = registry._methods = None
    return answer


async def _register_answer(registry: Registry, aw: Any) -> dict:
    try:
        await aw
    except BaseException:
        registry._declared = registry._methods = None
        raise
    return _registered(registry)


def _take_stdio():
    """Takes fds 0 and 1 for the protocol and points the public ones elsewhere.

    Afterwards print(), sys.stdout, C extensions and child processes writing to fd 1 all land on
    stderr (the plugin's log), and reading stdin yields nothing instead of protocol lines.
    Returns the protocol's (input fd, output fd), both close-on-exec.
    """
    sys.stdout.flush()
    proto_in, proto_out = os.dup(0), os.dup(1)
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
    global _early_stdio
    proto_in, proto_out = _early_stdio or _take_stdio()
    _early_stdio = None
    _Server(plugin, _Connection(proto_out), proto_in).serve()


# Under plugind (which sets PLUGIND_PLUGIN), stdio is taken as soon as the SDK is imported: a
# print() between the import and run() then reaches the plugin's log, not the protocol channel.
_early_stdio = _take_stdio() if os.environ.get("PLUGIND_PLUGIN") else None
