"""Observer client: how the CLI (and tests) inspect a running node over its own port.

An observer completes the node's handshake with role ``"observer"`` (adopting the
node's mesh name, proving the token when one is set) and is never a mesh member.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import picows

from .errors import AuthError, FrameError, HandshakeError, LinkError, ProtocolError
from .links.ws import WS_FRAME_LIMIT, send_frame
from .node.outbox import single_frame
from .ops.queries import FOLLOW_QID
from .protocol.handshake import Handshake
from .wire import schema
from .wire.codec import decode_frame, decode_payload
from .wire.limits import MAX_FRAME_SIZE


class _ClientListener(picows.WSListener):  # type: ignore[misc]
    def __init__(self, inbox: asyncio.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    parts: bytearray | None = None  # a fragmented message (frames over 64 KiB)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        t = frame.msg_type
        if t in (picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION):
            if t == picows.WSMsgType.BINARY:
                self.parts = bytearray()
            if self.parts is None:
                return
            self.parts += frame.get_payload_as_bytes()
            if len(self.parts) > MAX_FRAME_SIZE:
                self.parts = None
                self.inbox.put_nowait(("error", FrameError("reply over the frame size limit")))
                return
            if not frame.fin:
                return
            data, self.parts = bytes(self.parts), None
            try:
                for m in decode_frame(data):
                    self.inbox.put_nowait((m.kind, decode_payload(m.kind, m.payload)))
            except ProtocolError as exc:
                self.inbox.put_nowait(("error", exc))
        elif t == picows.WSMsgType.CLOSE:
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
        #: seconds ``query`` waits for a reply unless told otherwise.
        self.default_timeout = 10.0
        self.url = ""

    @classmethod
    async def connect(
        cls, url: str, token: str | None = None, timeout: float = 5.0, cafile: str | None = None
    ) -> ObserverClient:
        """Raises ``LinkError`` (unreachable), ``AuthError``/``HandshakeError`` (refused).

        ``cafile``: CA bundle to check a ``wss://`` node's certificate against.
        """
        self = cls()
        self.url = url
        try:
            ctx = ssl.create_default_context(cafile=cafile) if url.startswith("wss://") else None
        except FileNotFoundError:
            raise LinkError(f"cannot read CA file {cafile}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"CA file {cafile} unusable: {_reason(exc)}") from None
        try:
            self.transport, _ = await asyncio.wait_for(
                picows.ws_connect(
                    lambda: _ClientListener(self.inbox), url, websocket_handshake_timeout=timeout, ssl_context=ctx,
                    max_frame_size=WS_FRAME_LIMIT
                ),
                timeout,
            )
        except TimeoutError as exc:
            raise LinkError(f"cannot reach node at {url}: no answer within {timeout:g}s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise LinkError(f"TLS: certificate of {url} not trusted: {exc.verify_message or _reason(exc)}"
                            + ("" if cafile else " (give the CA with --cafile or SPIRALFAST_CAFILE)")) from exc
        except ssl.SSLError as exc:
            hint = " (is the node serving plain ws:// rather than wss://?)" if "WRONG_VERSION" in str(exc) or \
                "record layer" in str(exc) else ""
            raise LinkError(f"TLS handshake with {url} failed: {_reason(exc)}{hint}") from exc
        except (OSError, picows.WSError) as exc:
            hint = ""
            if url.startswith("ws://") and isinstance(exc, picows.WSError):
                hint = " (is the node serving wss://?)"
            elif url.startswith("wss://") and isinstance(exc, (ConnectionResetError, EOFError, picows.WSError)):
                hint = " during the TLS handshake (is the node serving plain ws://?)"
            raise LinkError(f"cannot reach node at {url}: {_reason(exc)}{hint}") from exc
        except ValueError as exc:
            raise LinkError(f"bad node URL {url!r}: {_reason(exc)}") from exc
        try:
            await asyncio.wait_for(self._handshake(token), timeout)
        except TimeoutError as exc:
            self.close()
            if self.node_id is None:  # not even greeted: not a spiralfast node, or TLS mismatch
                hint = "is it serving wss://?" if url.startswith("ws://") else "is it a spiralfast node?"
                raise HandshakeError(f"node at {url} did not greet us within {timeout:g}s ({hint})") from exc
            why = "wrong --token?" if token else "it needs a token? give --token"
            raise HandshakeError(f"node at {url} did not accept us within {timeout:g}s ({why})") from exc
        except Exception:
            self.close()
            raise
        self._reader = asyncio.ensure_future(self._read())
        return self

    def _send(self, kind: int, obj: Any) -> None:
        send_frame(self.transport, single_frame(kind, obj))

    async def _next(self) -> tuple[Any, Any]:
        kind, obj = await self.inbox.get()
        if kind == "closed":
            raise LinkError(f"node at {self.url or '?'} closed the connection")
        if kind == "error":
            raise obj
        if kind == schema.KIND_REJECT:
            why = obj.reason or "no reason given"
            auth = "token" in why or "auth" in why
            raise (AuthError if auth else HandshakeError)(f"node refused us: {why}")
        return kind, obj

    async def _handshake(self, token: str | None) -> None:
        """The node's handshake (``spiralfast.protocol.handshake``) with role "observer"."""
        me = "observer-" + uuid.uuid4().hex[:12]
        hs: Handshake | None = None
        while True:
            kind, obj = await self._next()
            if hs is None:
                if kind != schema.KIND_HELLO:
                    raise HandshakeError("node did not greet us")
                self.node_id, self.mesh_name = obj.node_id, obj.mesh_name
                hs = Handshake(me, obj.mesh_name, token, outbound=True, role="observer")
                for k, o in hs.start():
                    self._send(k, o)
            if kind == schema.KIND_AUTH and token is None and obj.proof:
                raise AuthError("the node requires a token; give it with --token (or SPIRALFAST_AUTH_TOKEN)")
            for k, o in hs.receive(kind, obj):
                if k != schema.KIND_REJECT:
                    self._send(k, o)
            if hs.state == "failed":
                err = hs.error
                if isinstance(err, AuthError):
                    raise AuthError("wrong token: the node's token is not the one given (check --token)")
                raise err if err is not None else HandshakeError("handshake failed")
            if hs.state == "ready":
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
                    fut.set_exception(exc if isinstance(exc, (LinkError, ProtocolError)) else LinkError(_reason(exc)))
            self._events.put_nowait(exc)

    async def query(self, what: str, timeout: float | None = None, **args: Any) -> Any:
        """Ask the node; returns the reply data.

        Raises ``ProtocolError`` with the node's message when it refuses the query,
        ``TimeoutError`` (naming the query and the wait) when it does not answer, and
        ``LinkError`` when the connection is lost.
        """
        timeout = self.default_timeout if timeout is None else timeout
        qid = next(self._qids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[qid] = fut
        self._send(schema.KIND_QUERY, schema.Query(qid, what, args))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(qid, None)
            raise TimeoutError(f"node at {self.url or '?'} did not answer the {what!r} query "
                               f"within {timeout:g}s") from None
        if not reply.ok:
            raise ProtocolError(f"node refused the {what!r} query: {reply.data or 'no reason given'}")
        return reply.data

    async def subscribe(self, types: list[str] | None = None) -> None:
        """Ask the node to stream every new event (of ``types``); see :meth:`next_event`."""
        await self.query("follow", types=list(types or []))

    async def next_event(self) -> dict[str, Any]:
        """The next streamed event envelope (after :meth:`subscribe`)."""
        item = await self._events.get()
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    async def follow(self, types: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield every new event envelope as the node sees it."""
        await self.subscribe(types)
        while True:
            yield await self.next_event()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.transport is not None:
            self.transport.disconnect()


def _reason(exc: BaseException) -> str:
    """A non-empty one-line reason: the message, else the exception's type."""
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(exc.reason)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
