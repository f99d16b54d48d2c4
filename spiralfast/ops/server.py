"""The server on the node's port: picows' WebSocket protocol behind a thin first reader.

:func:`ws_create_server` takes ``picows.ws_create_server``'s arguments and listener
factory.  Each connection is counted from accept as a *door* of the node's WebSocket
transport (``doors``: see :class:`Doors`), served TLS with the node's handshake timeout
(:class:`TlsDoor`), and may be a ``HEAD`` request, which :class:`HeadShim` answers
itself with the headers of the same GET; anything else reaches picows' protocol.

picows has no public way to put a reader in front of its protocol: the private path
lives in :mod:`spiralfast.links.ws.picows_adapter`, which also holds the public fallback
used when the installed picows is not a tested one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from ..links.ws import picows_adapter

#: The listener factory picows calls with each parsed request.
ListenerFactory = Callable[[WSUpgradeRequest], Any]


class Doors(Protocol):
    """The node's WebSocket transport as the server sees it (``links.ws.WebSocketTransport``)."""

    ssl_ctx: ssl.SSLContext | None

    def open_door(self, tr: Any, tls: bool) -> Any:
        """Count an accepted connection; None when it was refused (and aborted)."""
        ...

    def close_door(self, tr: Any) -> None: ...

    def rekey_door(self, old: Any, new: Any) -> None: ...

    def tls_failed(self, door: Any, exc: BaseException | None) -> None: ...


#: Largest HEAD request head accepted (bytes).
HEAD_MAX = 8192


class HeadShim(asyncio.BufferedProtocol):
    """The first reader of each connection.

    picows refuses any method but GET with a 400 before the listener factory runs, so
    ``HEAD /health`` (load balancers, uptime checks) cannot reach :meth:`HttpEndpoints.respond`.
    This reads the first bytes of a connection: a ``HEAD`` request it answers with the
    headers the factory gives the same GET; anything else it hands to picows' protocol
    (``transport.set_protocol``) together with the bytes read so far, and steps aside,
    so a mesh link pays for it once, at connect.
    """

    def __init__(self, inner: asyncio.BufferedProtocol, factory: ListenerFactory, doors: Doors | None = None) -> None:
        self.inner = inner
        self.factory = factory
        self.doors = doors  # counts the connection as a door (links.ws.WebSocketTransport.open_door)
        self.tr: Any = None
        self.buf = bytearray()
        self.mem = bytearray(HEAD_MAX)
        self.head = False
        self.refused = True  # until connection_made: nothing reaches picows' protocol before it

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        if self.doors is not None and self.doors.open_door(transport, False) is None:
            return  # aborted: near the descriptor limit
        self.refused = False
        self.inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.mem)

    def buffer_updated(self, nbytes: int) -> None:
        if self.refused:
            return
        self.buf += self.mem[:nbytes]
        if not self.head:
            if len(self.buf) < 5 and b"HEAD ".startswith(bytes(self.buf)):
                return  # not enough to tell yet
            if not self.buf.startswith(b"HEAD "):
                self._hand_over()
                return
            self.head = True
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self._answer(bytes(self.buf[:end]))
        elif len(self.buf) >= HEAD_MAX:
            self.tr.close()

    def _hand_over(self) -> None:
        data, self.buf = bytes(self.buf), bytearray()
        self.tr.set_protocol(self.inner)
        inner = self.inner
        while data:
            mv = memoryview(inner.get_buffer(len(data)))
            k = min(len(mv), len(data))
            mv[:k] = data[:k]
            data = data[k:]
            inner.buffer_updated(k)

    def _answer(self, raw: bytes) -> None:
        try:
            req = picows_adapter.parse_request(b"GET" + raw[4:])
            req.method = b"HEAD"
            out = self.factory(req)
        except Exception:
            out = None
        if isinstance(out, WSUpgradeResponseWithListener) and out.listener is None:
            resp = out.response
        else:
            resp = WSUpgradeResponse.create_error_response(405, None, {"Allow": "GET"})
        if resp.body or "Content-Length" not in resp.headers:
            resp.headers["Content-Length"] = str(len(resp.body or b""))
        resp.body = None
        resp.headers["Connection"] = "close"
        self.tr.write(bytes(resp.to_bytes()))
        self.tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.doors is not None:
            self.doors.close_door(self.tr)
        if not self.refused:
            self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class TlsDoor(asyncio.Protocol):
    """The first protocol of a ``wss://`` connection: counts it as a door from accept
    (so sockets that never finish TLS count against the handshake cap and the descriptor
    reserve), then runs the TLS handshake with ``handshake_timeout`` (not asyncio's 60 s)
    and hands the decrypted stream to its :class:`HeadShim`.  A failed or timed-out
    handshake is counted and logged in one rate-limited line, never a traceback."""

    def __init__(self, shim: HeadShim, doors: Doors, ssl_ctx: ssl.SSLContext, timeout: float) -> None:
        self.shim = shim
        self.doors = doors
        self.ssl_ctx = ssl_ctx
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None
        self.tr: Any = None

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        door = self.doors.open_door(transport, True)
        if door is None:
            return
        transport.pause_reading()  # the ClientHello waits for the TLS layer
        self.task = asyncio.ensure_future(self._handshake(transport, door))

    async def _handshake(self, transport: Any, door: Any) -> None:
        import aiofastnet

        doors = self.doors
        try:
            tls = await aiofastnet.start_tls(asyncio.get_running_loop(), transport, self.shim, self.ssl_ctx,
                                             server_side=True, ssl_handshake_timeout=self.timeout)
        except asyncio.CancelledError:
            doors.close_door(transport)
            transport.abort()
            raise
        except Exception as exc:  # ssl.SSLError, ConnectionError, the timeout: all the peer's doing
            doors.tls_failed(door, exc)
            transport.abort()
            return
        if tls.is_closing() or tls.get_extra_info("socket") is None:
            doors.close_door(transport)  # gone while its handshake completed (closed or evicted)
            tls.abort()
            return
        doors.rekey_door(transport, tls)
        self.shim.connection_made(tls)

    def data_received(self, data: bytes) -> None:
        pass  # nothing arrives before start_tls takes the transport (reading is paused)

    def connection_lost(self, exc: Exception | None) -> None:
        self.doors.close_door(self.tr)


async def ws_create_server(
    factory: ListenerFactory,
    host: Any = None,
    port: Any = None,
    *,
    max_frame_size: int = 10 * 1024 * 1024,
    websocket_handshake_timeout: float | None = 5,
    logger_name: str | None = None,
    read_buffer_init_size: int = 16 * 1024,
    doors: Doors | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """``picows.ws_create_server`` (same arguments and listener factory) whose connections
    also answer ``HEAD`` (see :class:`HeadShim`).  Built from picows' own protocol class,
    so it is tested against the installed picows (tests/test_http.py,
    tests/test_picows_contract.py).

    ``doors`` (the node's ``links.ws.WebSocketTransport``) counts every connection from
    accept (``open_door``) and, when its ``ssl_ctx`` is set, serves TLS through
    :class:`TlsDoor` with ``websocket_handshake_timeout`` as the TLS handshake timeout.

    On a picows version not tested (or with ``SPIRALFAST_PICOWS_PUBLIC`` set) the server is
    picows' public one: see :mod:`spiralfast.links.ws.picows_adapter`."""
    ssl_ctx = doors.ssl_ctx if doors is not None else None
    if not picows_adapter.private_path():
        return await picows_adapter.create_public_server(
            factory, logger_name=logger_name, handshake_timeout=websocket_handshake_timeout,
            max_frame_size=max_frame_size, read_buffer_init_size=read_buffer_init_size, ssl_ctx=ssl_ctx,
            host=host, port=port, **kwargs)
    loop = asyncio.get_running_loop()
    logger = picows_adapter.server_logger(logger_name)

    def protocol() -> asyncio.BaseProtocol:
        inner = picows_adapter.server_protocol(
            factory, logger=logger, handshake_timeout=websocket_handshake_timeout,
            max_frame_size=max_frame_size, read_buffer_init_size=read_buffer_init_size)
        shim = HeadShim(inner, factory, None if ssl_ctx is not None else doors)
        if doors is not None and ssl_ctx is not None:
            return TlsDoor(shim, doors, ssl_ctx, websocket_handshake_timeout or 5.0)
        return shim

    try:  # picows serves through aiofastnet's transports when it is installed (a picows dependency)
        import aiofastnet
    except ImportError:  # pragma: no cover - picows requires it
        return await loop.create_server(protocol, host=host, port=port, **kwargs)
    server: asyncio.Server = await aiofastnet.create_server(loop, protocol, host=host, port=port, **kwargs)
    return server
