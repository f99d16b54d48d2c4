"""Observer client: how the CLI (and tests) inspect a running node over its own port.

An observer completes the node's handshake with role ``"observer"`` (adopting the
node's mesh name, proving the token when one is set) and is never a mesh member.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import picows

from . import schema
from .codec import FrameWriter, decode_frame, decode_payload
from .errors import AuthError, HandshakeError, LinkError, ProtocolError
from .limits import PROTOCOL_VERSION
from .observe import FOLLOW_QID
from .peer import NONCE_SIZE, auth_proof


class _ClientListener(picows.WSListener):  # type: ignore[misc]
    def __init__(self, inbox: asyncio.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.BINARY:
            try:
                for m in decode_frame(frame.get_payload_as_bytes()):
                    self.inbox.put_nowait((m.kind, decode_payload(m.kind, m.payload)))
            except ProtocolError as exc:
                self.inbox.put_nowait(("error", exc))
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.inbox.put_nowait(("closed", None))


class ObserverClient:
    """Connect with ``await ObserverClient.connect(url, token)``; then ``query`` / ``follow``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.transport: Any = None
        self.node_id: str | None = None
        self.mesh_name: str | None = None
        self._qids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, token: str | None = None, timeout: float = 5.0, cafile: str | None = None
    ) -> ObserverClient:
        """Raises ``LinkError`` (unreachable), ``AuthError``/``HandshakeError`` (refused).

        ``cafile``: CA bundle to check a ``wss://`` node's certificate against.
        """
        self = cls()
        ctx = ssl.create_default_context(cafile=cafile) if url.startswith("wss://") else None
        try:
            self.transport, _ = await asyncio.wait_for(
                picows.ws_connect(
                    lambda: _ClientListener(self.inbox), url, websocket_handshake_timeout=timeout, ssl_context=ctx
                ),
                timeout,
            )
        except (TimeoutError, OSError, picows.WSError) as exc:
            raise LinkError(f"cannot reach node at {url}: {exc or type(exc).__name__}") from exc
        except ValueError as exc:
            raise LinkError(f"bad node URL {url!r}: {exc}") from exc
        try:
            await asyncio.wait_for(self._handshake(token), timeout)
        except TimeoutError as exc:
            self.close()
            raise HandshakeError("node did not accept us (wrong or missing --token?)") from exc
        except Exception:
            self.close()
            raise
        self._reader = asyncio.ensure_future(self._read())
        return self

    def _send(self, kind: int, obj: Any) -> None:
        w = FrameWriter()
        w.add(kind, 0, b"", b"", obj)
        self.transport.send(picows.WSMsgType.BINARY, w.finish())

    async def _next(self) -> tuple[Any, Any]:
        kind, obj = await self.inbox.get()
        if kind == "closed":
            raise LinkError("node closed the connection")
        if kind == "error":
            raise obj
        if kind == schema.KIND_REJECT:
            reason = obj.reason
            raise (AuthError if "token" in reason else HandshakeError)(f"node refused us: {reason}")
        return kind, obj

    async def _handshake(self, token: str | None) -> None:
        kind, hello = await self._next()
        if kind != schema.KIND_HELLO:
            raise HandshakeError("node did not greet us")
        self.node_id, self.mesh_name = hello.node_id, hello.mesh_name
        nonce = os.urandom(NONCE_SIZE)
        me = "observer-" + uuid.uuid4().hex[:12]
        self._send(schema.KIND_HELLO, schema.Hello(me, hello.mesh_name, PROTOCOL_VERSION, nonce, "observer", None))
        if token:
            self._send(schema.KIND_AUTH, schema.Auth(auth_proof(token, hello.nonce, nonce, me)))
        # The node answers a query only once we are accepted; a tokenless observer of
        # a token-protected node is refused (REJECT) or times out.
        qid = next(self._qids)
        self._send(schema.KIND_QUERY, schema.Query(qid, "ping", {}))
        while True:
            kind, obj = await self._next()
            if kind == schema.KIND_AUTH:
                if not token:
                    raise AuthError("node requires a token (--token)")
                if obj.proof != auth_proof(token, nonce, hello.nonce, hello.node_id):
                    raise AuthError("node failed to prove the token")
                continue
            if kind == schema.KIND_REPLY and obj.qid == qid:
                return

    async def _read(self) -> None:
        try:
            while True:
                kind, obj = await self._next()
                if kind != schema.KIND_REPLY:
                    continue
                if obj.qid == FOLLOW_QID:
                    self._events.put_nowait(obj.data)
                    continue
                fut = self._pending.pop(obj.qid, None)
                if fut is not None and not fut.done():
                    fut.set_result(obj)
        except Exception as exc:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, LinkError) else LinkError(str(exc)))
            self._events.put_nowait(exc)

    async def query(self, what: str, timeout: float = 10.0, **args: Any) -> Any:
        """Ask the node; returns the reply data or raises ``ProtocolError`` with its message."""
        qid = next(self._qids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[qid] = fut
        self._send(schema.KIND_QUERY, schema.Query(qid, what, args))
        reply = await asyncio.wait_for(fut, timeout)
        if not reply.ok:
            raise ProtocolError(str(reply.data))
        return reply.data

    async def follow(self, types: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield every new event envelope as the node sees it."""
        await self.query("follow", types=list(types or []))
        while True:
            item = await self._events.get()
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.transport is not None:
            self.transport.disconnect()
