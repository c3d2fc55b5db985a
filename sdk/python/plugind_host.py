"""plugind_host: talk to plugind from a Python application (a *host*), with asyncio.

    import asyncio, plugind_host

    async def main():
        host = await plugind_host.connect()              # the control socket, found as pluginctl finds it
        print(await host.execute("echo-python", "hello", {"name": "you"}))
        await host.provide("ui", "1.0.0", {"notify": lambda params, caller: {"shown": True}})
        async for ev in host.events():
            print(ev["plugin"], ev["kind"])

    asyncio.run(main())

Socket mode uses the standard library only. ``url=`` (plugind's ``--listen``, spoken as
WebSocket) needs the ``websockets`` package, imported only then.

Wire rules this library follows (docs/hosts.md has them all):
- Cancelling the task awaiting a call sends ``$/cancel {id}``; plugind cancels the call down the
  chain and answers -32800. The task sees ``asyncio.CancelledError``.
- ``$/progress {id, ...}`` from plugind for a call goes to that call's ``on_progress``.
- The connection is kept: when it breaks (plugind restarts), calls in flight fail at once with
  ``ConnectionLost`` (-32011, made here, never sent by plugind), calls made meanwhile too, and the
  library reconnects with backoff (100 ms doubling to 2 s), registers its provided services again
  and resumes its event subscription.
"""

import asyncio
import inspect
import json
import os
import re
import sys

__all__ = ["connect", "Host", "PluginError", "ConnectionLost", "default_socket", "CONNECTION_LOST"]

#: The code of ConnectionLost: made by host libraries, never sent by plugind.
CONNECTION_LOST = -32011
#: What plugind answers a cancelled call with.
REQUEST_CANCELLED = -32800
PERMISSION_DENIED = -32005
INTERNAL_ERROR = -32603
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601

CONNECT_PATIENCE_S = 10.0
CLOSE_PATIENCE_S = 2.0  # how long close() waits for the connection to be closed
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


class PluginError(Exception):
    """A JSON-RPC error: from plugind, a plugin, or (ConnectionLost) this library.

    A provided-service handler may raise it to answer with its own code and data.
    """

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def __repr__(self):
        return "PluginError(%r, %r, %r)" % (self.code, self.message, self.data)


class ConnectionLost(PluginError):
    """The connection to plugind broke while the call was in flight, or was down when it was made."""

    def __init__(self, message="connection to plugind lost", data=None):
        super().__init__(CONNECTION_LOST, message, data)


def default_socket():
    """The control socket by plugind's rules: ``$PLUGIND_SOCKET``, ``$RUNTIME_DIRECTORY/plugind.sock``,
    ``$XDG_RUNTIME_DIR/plugind.sock``, else ``/tmp/plugind-$UID.sock``."""
    if os.environ.get("PLUGIND_SOCKET"):
        return os.environ["PLUGIND_SOCKET"]
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        if os.environ.get(var):
            return os.path.join(os.environ[var], "plugind.sock")
    return "/tmp/plugind-%d.sock" % os.getuid()


async def connect(socket=None, url=None, token=None, token_file=None):
    """Connects to plugind, retrying for up to 10 s (then raises ConnectionLost).

    ``socket``: the control socket path (default: ``default_socket()``). ``url``: plugind's
    ``--listen`` address (``http://HOST:PORT``) with ``token`` (or ``token_file``) instead.
    """
    if url is not None and token is None and token_file is not None:
        with open(token_file) as f:
            token = f.readline().strip()
    host = Host(socket or (None if url else default_socket()), url, token)
    await host._connect_first()
    return host


def _served_by_us_or_root(sock, path):
    """Refuses a socket whose server runs as neither our uid nor root in a directory others may
    write (``/tmp``), as plugind refuses such a peer: any local user can bind a path there first,
    and would read every call. (A dedicated user's plugind in its own directory is fine.)"""
    import socket as _socket
    import stat
    import struct

    _pid, server, _gid = struct.unpack("3i", sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")))
    me = os.getuid()
    if server in (me, 0):
        return
    # The socket's own directory: one the server's user (or root, or we) owns and nobody else may
    # write, as a dedicated user's is.
    try:
        st = os.stat(os.path.dirname(os.path.abspath(path)))
        shared = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or st.st_uid not in (server, me, 0)
    except OSError:
        shared = True
    if shared:
        raise PermissionError(
            "it is served by uid %d, neither yours (%d) nor root, in a directory others may write: "
            "not your plugind (another user bound this path first); nothing was sent" % (server, me)
        )


class _SocketLink:
    """One connection over the Unix socket: NDJSON lines."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path):
        # Lines may be large (a result of many MiB): the default 64 KiB limit would break them.
        reader, writer = await asyncio.open_unix_connection(path, limit=64 * 1024 * 1024)
        try:
            _served_by_us_or_root(writer.get_extra_info("socket"), path)
        except OSError:
            writer.close()
            raise
        return cls(reader, writer)

    async def recv(self):
        line = await self.reader.readline()
        return line or None

    def send(self, text):
        self.writer.write(text.encode() + b"\n")

    def close(self):
        self.writer.close()

    async def closed(self):
        await self.writer.wait_closed()


class _WsLink:
    """One connection to ``--listen`` over WebSocket: one JSON message per frame."""

    def __init__(self, ws):
        self.ws = ws
        self._closing = None

    @classmethod
    async def open(cls, url, token):
        try:
            import websockets
        except ImportError:
            raise RuntimeError(
                "plugind_host: url= needs the 'websockets' package (pip install websockets); "
                "socket= needs nothing"
            ) from None
        ws_url = "ws" + url[len("http"):] if url.startswith("http") else url
        headers = {"Authorization": "Bearer %s" % token} if token else {}
        try:
            try:
                ws = await websockets.connect(ws_url, additional_headers=headers, max_size=None)
            except TypeError:  # websockets < 14
                ws = await websockets.connect(ws_url, extra_headers=headers, max_size=None)
        except websockets.exceptions.InvalidHandshake as e:
            response = getattr(e, "response", None)  # websockets >= 14
            status = getattr(response, "status_code", None) or getattr(e, "status_code", None)
            if status in (401, 403):
                # plugind was reached and said no: an answer, not "cannot reach" (no retry).
                raise PluginError(
                    PERMISSION_DENIED,
                    "plugind at %s refused the bearer token (HTTP %d): check the token" % (url, status),
                    {"http_status": status},
                ) from None
            # Not plugind's WebSocket (another server, a proxy's error page): retried as unreachable.
            raise ConnectionRefusedError("no plugind WebSocket there: %s" % e) from None
        return cls(ws)

    async def recv(self):
        try:
            return await self.ws.recv()
        except Exception:
            return None

    def send(self, text):
        _spawn(self.ws.send(text))

    def close(self):
        self._closing = _spawn(self.ws.close())

    async def closed(self):
        if self._closing:
            await self._closing


class _Service:
    def __init__(self, name, version, handlers):
        self.name, self.version, self.handlers = name, version, dict(handlers)


class Host:
    """A connection to plugind that stays up: made by ``connect``."""

    def __init__(self, socket, url, token):
        self._socket, self._url, self._token = socket, url, token
        self._link = None
        self._next_id = 0
        self._pending = {}  # our request id -> (future, on_progress)
        self._serving = {}  # plugind's request id -> handler task
        self._services = {}  # name -> _Service
        self._event_queues = set()
        self._subscribed = False  # events.subscribe sent on the current connection
        self._closed = False
        self._refused = None  # why plugind refused the last reconnection, if it did
        self._reader = None
        self._resuming = None
        self._up = asyncio.Event()

    # ---- calls --------------------------------------------------------------------------------

    async def execute(self, plugin, method, params=None, *, timeout_ms=None, on_progress=None, meta=None):
        """Calls ``method`` of ``plugin``; its result, or PluginError (-32001 past ``timeout_ms``)."""
        p = {"plugin": plugin, "method": method, "params": params}
        return await self._call("execute", _with(p, timeout_ms, meta), on_progress)

    async def call_service(self, service, method, params=None, *, version=None, timeout_ms=None, on_progress=None, meta=None):
        """Calls ``method`` of whoever provides ``service`` (``version``: a semver range)."""
        p = {"service": service, "method": method, "params": params}
        if version is not None:
            p["version"] = version
        return await self._call("services.call", _with(p, timeout_ms, meta), on_progress)

    async def run_hook(self, hook, payload, *, timeout_ms=None, meta=None):
        """Runs hook chain ``hook`` over ``payload``: ``{payload, handled_by, stopped_by?, receipt}``."""
        return await self._call("hooks.run", _with({"hook": hook, "payload": payload}, timeout_ms, meta), None)

    async def request(self, method, params=None):
        """Any control method (``plugins.list``, ``supervisor.status``...)."""
        return await self._call(method, params if params is not None else {}, None)

    async def _call(self, method, params, on_progress):
        if self._closed:
            raise ConnectionLost("the host was closed (close() was called): make a new one with connect()")
        if not self._up.is_set():
            # Why the last attempt failed, when it says more than "not there" (a refused token).
            why = ": %s" % self._refused if self._refused else ""
            raise ConnectionLost("not connected to plugind (reconnecting%s)" % why)
        self._next_id += 1
        rid = self._next_id
        try:
            line = _encode({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except (ValueError, TypeError, RecursionError) as e:
            raise PluginError(INVALID_PARAMS, "the params cannot be sent as JSON: %s" % _unencodable(e)) from e
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, on_progress)
        self._link.send(line)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._pending.pop(rid, None) is not None and self._up.is_set():
                self._send({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": rid}})
            raise

    # ---- provided services --------------------------------------------------------------------

    async def provide(self, name, version, handlers):
        """Serves host service ``name`` at ``version``: ``handlers`` maps method names to
        ``handler(params, caller)`` (sync or async). Registered again after every reconnect."""
        service = _Service(name, version, handlers)
        self._services[name] = service
        await self._register(service)

    async def _register(self, service):
        await self._call(
            "services.register", {"name": service.name, "version": service.version, "methods": sorted(service.handlers)}, None
        )

    async def _serve(self, rid, params):
        service = self._services.get(params.get("service")) or (
            next(iter(self._services.values())) if len(self._services) == 1 else None
        )
        method = params.get("method")
        try:
            handler = service.handlers.get(method) if service else None
            if handler is None:
                raise PluginError(METHOD_NOT_FOUND, "no method %r in host service %r" % (method, params.get("service")))
            result = handler(params.get("params"), params.get("caller"))
            if inspect.isawaitable(result):
                result = await result
            answer = {"result": result}
        except asyncio.CancelledError:
            return  # plugind sent $/cancel: it wants no answer
        except PluginError as e:
            answer = {"error": _error_object(e.code, e.message, e.data)}
        except Exception as e:  # a handler's bug answers -32603, the host keeps serving
            answer = {"error": {"code": INTERNAL_ERROR, "message": str(e) or type(e).__name__}}
        finally:
            self._serving.pop(rid, None)
        answer.update({"jsonrpc": "2.0", "id": rid})
        try:
            line = _encode(answer)
        except (ValueError, TypeError, RecursionError) as e:  # the caller gets an answer anyway
            why = "the handler's result cannot be sent as JSON: %s" % _unencodable(e)
            line = _encode({"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": why}})
        self._link.send(line)

    # ---- events -------------------------------------------------------------------------------

    async def events(self):
        """Async iterator of plugind's ``event`` notifications (state changes, restarts, reloads).
        Keeps going across reconnects (events in between may be missed); ends at ``close()``."""
        queue = asyncio.Queue()
        self._event_queues.add(queue)
        try:
            await self._subscribe()
            while True:
                ev = await queue.get()
                if ev is None:
                    return
                yield ev
        finally:
            self._event_queues.discard(queue)

    async def _subscribe(self):
        """Subscribes the connection to events once; after a reconnect, again."""
        if self._subscribed or not self._up.is_set():
            return
        self._subscribed = True
        try:
            await self._call("events.subscribe", {}, None)
        except ConnectionLost:
            pass  # the reconnect subscribes again

    # ---- connection ---------------------------------------------------------------------------

    async def close(self):
        """Closes the connection: provided services go away, calls in flight fail, events end."""
        self._closed = True
        self._up.clear()
        link = self._link
        if link:
            link.close()
        if self._resuming:
            self._resuming.cancel()
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._broken("host closed")
        for q in list(self._event_queues):
            q.put_nowait(None)
        if link:
            # Closed for good before returning (a WebSocket's closing handshake included), so
            # nothing of the connection outlives its event loop.
            try:
                await asyncio.wait_for(link.closed(), CLOSE_PATIENCE_S)
            except Exception:  # a timeout, or a connection that had failed already
                pass

    async def _open(self):
        if self._url is not None:
            return await _WsLink.open(self._url, self._token)
        return await _SocketLink.open(self._socket)

    async def _connect_first(self):
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONNECT_PATIENCE_S
        delay = BACKOFF_FIRST_S
        while True:
            try:
                self._link = await self._open()
                break
            except OSError as e:
                if loop.time() + delay > give_up:
                    where = self._url or self._socket
                    raise ConnectionLost("cannot reach plugind at %s: %s" % (where, e)) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self._up.set()
        self._reader = asyncio.ensure_future(self._run())

    async def _run(self):
        """Reads messages; on a break, fails what was in flight and reconnects until closed."""
        while not self._closed:
            link = self._link
            why = "connection to plugind lost"
            try:
                await self._read(link)
            except Exception as e:  # noqa: BLE001 - a reader that died would leave every call hanging (audit 21)
                why = "connection to plugind dropped: reading it failed: %s" % (str(e) or type(e).__name__)
            link.close()
            self._up.clear()
            self._broken(why)
            if self._closed:
                return
            await self._reconnect()

    async def _read(self, link):
        """Dispatches the link's messages until it closes."""
        while True:
            raw = await link.recv()
            if raw is None:
                return
            try:
                msg = json.loads(raw)
            except RecursionError:
                # Valid JSON nested deeper than Python's recursion limit lets json decode (audit
                # 21: it escaped the reader, and every call hung): only its call fails.
                self._too_deep(raw)
                continue
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._dispatch(msg)

    def _too_deep(self, raw):
        """Fails the call a line too deep to decode answers, or refuses the request it is, found
        by its head: plugind writes every answer and request id first."""
        head = _HEAD.match(raw if isinstance(raw, bytes) else raw.encode())
        if head is None:
            return  # a notification: dropped, as a line that is not JSON is
        rid, kind = json.loads(head.group(1)), head.group(2)
        why = "nested too deep to decode (over Python's recursion limit, %d)" % sys.getrecursionlimit()
        if kind == b"method":
            self._send({"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": "the request is " + why}})
            return
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(PluginError(INTERNAL_ERROR, "the answer is " + why))

    async def _reconnect(self):
        delay = BACKOFF_FIRST_S
        while not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            try:
                self._link = await self._open()
            except PluginError as e:  # plugind is back but refuses (a rotated token): said, then retried
                self._refused = str(e)
                continue
            except Exception:  # noqa: BLE001 - plugind not back yet: try again later
                continue
            self._refused = None
            self._up.set()
            # Re-register beside the reader: the answers come through _dispatch.
            self._resuming = asyncio.ensure_future(self._resume())
            return

    async def _resume(self):
        try:
            for service in list(self._services.values()):
                await self._register(service)
            if self._event_queues:
                await self._subscribe()
        except PluginError:
            pass  # broke again: the next reconnect tries again

    def _broken(self, why):
        self._subscribed = False
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(why))
        self._pending.clear()
        for task in list(self._serving.values()):
            task.cancel()
        self._serving.clear()

    def _dispatch(self, msg):
        method = msg.get("method")
        if method is None:
            entry = self._pending.pop(msg.get("id"), None)
            if entry is None or entry[0].done():
                return
            err = msg.get("error")
            if err is not None:
                entry[0].set_exception(PluginError(err.get("code"), err.get("message"), err.get("data")))
            else:
                entry[0].set_result(msg.get("result"))
        elif "id" in msg:
            if method == "execute":
                rid = msg["id"]
                self._serving[rid] = asyncio.ensure_future(self._serve(rid, msg.get("params") or {}))
            else:
                self._send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": METHOD_NOT_FOUND, "message": "host does not serve %s" % method}})
        elif method == "$/progress":
            p = msg.get("params") or {}
            entry = self._pending.get(p.get("id"))
            if entry and entry[1]:
                update = {k: p[k] for k in ("message", "progress", "total") if k in p}
                try:
                    result = entry[1](update)
                    if inspect.isawaitable(result):
                        _spawn(result)
                except Exception as e:  # noqa: BLE001 - the callback's failure is its call's, not the reader's
                    self._abandon(p.get("id"), e)
        elif method == "$/cancel":
            task = self._serving.get((msg.get("params") or {}).get("id"))
            if task:
                task.cancel()
        elif method == "event":
            for q in self._event_queues:
                q.put_nowait(msg.get("params"))

    def _abandon(self, rid, error):
        """Fails call ``rid`` with ``error`` and cancels it in plugind."""
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(error)
        self._send({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": rid}})

    def _send(self, msg):
        self._link.send(_encode(msg))


# The head of an answer or a request: plugind writes the id before anything else
# (`{"jsonrpc":"2.0","id":7,"result":...`), so a line too deep to decode still tells whose it is.
_HEAD = re.compile(rb'\{"jsonrpc":"2\.0","id":(-?[0-9]+|"(?:[^"\\]|\\.)*"),"(result|error|method)":')

_background = set()


def _spawn(awaitable):
    """Runs ``awaitable`` in the background, keeping a reference until it is done. Its failure
    (a send on a connection that just closed) is the reader's to notice: it is not reported
    again as a task exception never retrieved."""
    task = asyncio.ensure_future(awaitable)
    _background.add(task)
    task.add_done_callback(_settled)
    return task


def _settled(task):
    _background.discard(task)
    if not task.cancelled():
        task.exception()


def _encode(msg):
    return json.dumps(msg, separators=(",", ":"))


def _unencodable(e):
    """Why json.dumps failed, said plainly."""
    if isinstance(e, RecursionError):
        return "nested too deep to encode (over Python's recursion limit, %d)" % sys.getrecursionlimit()
    return str(e)


def _with(params, timeout_ms, meta):
    if timeout_ms is not None:
        params["timeout_ms"] = timeout_ms
    if meta is not None:
        params["_meta"] = meta
    return params


def _error_object(code, message, data):
    e = {"code": code, "message": message}
    if data is not None:
        e["data"] = data
    return e
