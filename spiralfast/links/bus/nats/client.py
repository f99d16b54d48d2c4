"""nats-py through one adapter: the only module that touches nats-py's private API.

Two measured wins need nats-py internals, so they are used only with a nats-py version in
``TESTED_VERSIONS`` (``tests/test_nats_contract.py`` fails loudly when the installed one
changes what we rely on):

- inline delivery: nats-py hands each message to a per-subscription task through a queue
  (a ``Msg`` object and a task switch per message); for our subscriptions its reader calls
  us directly instead (``_process_msg`` overridden), which keeps order and lets TCP push
  back on a slow node;
- direct writes: a publish written straight onto the connection's socket (the private
  transport writer) in this loop iteration, instead of a task switch to nats-py's flusher
  (at 10k events/s those hops were most of the latency).

It also holds nats-py to a ``tls://`` URL: nats-py upgrades to TLS only when the server's
INFO demands it, so a plain server (or a man in the middle) would get our credentials in
clear text.  With the private path, ``_process_info`` forces the upgrade and refuses a
server that offers no TLS before anything is sent; with the public one, the TLS handshake
comes first (``tls_handshake_first``), before the server says anything.

Every other version (or ``SPIRALFAST_NATS_PUBLIC=1``, or ``FORCE_PUBLIC``) takes the public
API only: ``subscribe`` callbacks and ``publish``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

#: nats-py versions (prefixes) whose private API the fast path was tested against.
TESTED_VERSIONS = ("2.16.",)
#: Use the public API whatever the version (tests; also ``SPIRALFAST_NATS_PUBLIC=1``).
FORCE_PUBLIC = os.environ.get("SPIRALFAST_NATS_PUBLIC", "").strip() not in ("", "0", "false", "no")

#: A handler of our subscriptions' messages: (subject, payload).
Handler = Callable[[str, bytes], None]
Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


class Writer(Protocol):
    """The private transport writer (an ``asyncio.StreamWriter``)."""

    transport: asyncio.WriteTransport

    def writelines(self, data: tuple[bytes, bytes, bytes]) -> None: ...

    async def drain(self) -> None: ...


def nats_version() -> str:
    try:
        return version("nats-py")
    except PackageNotFoundError:
        return "0"


def private_path() -> bool:
    """Use nats-py internals? Only for a tested version, and not when forced off."""
    return not FORCE_PUBLIC and nats_version().startswith(TESTED_VERSIONS)


_INLINE: type[Client] | None = None


def _inline_class() -> type[Client]:
    """nats-py's client with inline delivery and TLS held to ``tls://`` (the private path)."""
    global _INLINE
    if _INLINE is None:
        from nats.aio.client import Client
        from nats.errors import Error as NatsError

        class InlineClient(Client):
            def __init__(self) -> None:
                super().__init__()
                self.sf_inline: dict[int, tuple[str, Handler]] = {}

            async def _process_info(self, info: dict[str, object], initial_connection: bool = False) -> None:
                srv = getattr(self, "_current_server", None)
                if initial_connection and srv is not None and srv.uri.scheme == "tls":
                    if not (info.get("tls_required") or info.get("tls_available")):
                        raise NatsError(f"nats: tls:// URL, but the server at {srv.uri.hostname}:{srv.uri.port} "
                                        "offers no TLS; refusing to connect in plain text")
                    info["tls_required"] = True  # nats-py upgrades only when told to
                await super()._process_info(info, initial_connection)

            async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                                   headers: bytes) -> None:
                h = self.sf_inline.get(sid)
                if h is None or headers:
                    return await super()._process_msg(sid, subject, reply, data, headers)
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                h[1](h[0], data)

        _INLINE = InlineClient
    return _INLINE


class NatsClient:
    """One connection to NATS, as the transport uses it (see the module docstring)."""

    def __init__(self, private: bool | None = None) -> None:
        self.private = private_path() if private is None else private
        if self.private:
            self.nc: Client = _inline_class()()
        else:
            from nats.aio.client import Client

            self.nc = Client()

    async def connect(self, servers: list[str], *, tls: ssl.SSLContext | None, wants_tls: bool,
                      name: str, connect_timeout: int, reconnect_time_wait: float, pending_size: int,
                      error_cb: ErrorCallback, disconnected_cb: Callback, reconnected_cb: Callback) -> None:
        extra: dict[str, object] = {}
        if tls is not None:
            extra["tls"] = tls
        if wants_tls and not self.private:
            extra["tls_handshake_first"] = True  # never a word in clear text to a tls:// server
        await self.nc.connect(
            servers, name=name, connect_timeout=connect_timeout, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=reconnect_time_wait,  # type: ignore[arg-type]
            dont_randomize=True, ping_interval=5, max_outstanding_pings=2, no_echo=True,
            pending_size=pending_size, error_cb=error_cb, disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb, **extra,  # type: ignore[arg-type]
        )

    async def subscribe(self, subject: str, handler: Handler) -> Subscription:
        """Our messages on ``subject`` to ``handler``: inline (private path) or by callback."""

        async def cb(msg: Msg) -> None:
            handler(msg.subject, msg.data)

        sub = await self.nc.subscribe(subject, cb=cb, pending_msgs_limit=1_000_000,
                                      pending_bytes_limit=512 * 1024 * 1024)
        if self.private:
            self.nc.sf_inline[sub._id] = (subject, handler)  # type: ignore[attr-defined]
        return sub

    def writer(self) -> Writer | None:
        """The socket writer, when a publish may be written straight onto it now: the
        private path, connected, and nats-py holding nothing unwritten (order is kept)."""
        if not self.private:
            return None
        nc = self.nc
        w: Writer | None = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        if w is None or nc._pending or not nc.is_connected:
            return None
        return w

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    def server(self) -> str | None:
        """host:port of the server we are connected to."""
        u = self.nc.connected_url
        return f"{u.hostname}:{u.port}" if u is not None else None

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.nc.publish(subject, payload)

    async def flush(self, timeout: int) -> None:
        await self.nc.flush(timeout)

    async def close(self) -> None:
        await self.nc.close()

    def jetstream(self) -> JetStreamContext:
        return self.nc.jetstream()


def mask_url(text: str) -> str:
    """``text`` with the secrets of every URL in it masked (``safetext.mask_secrets``)."""
    from ....safetext import mask_secrets

    return mask_secrets(text)


def write_line(writer: Writer, subject: str, payload: bytes) -> int:
    """One PUB written onto the socket; returns the bytes the socket holds unsent."""
    writer.writelines((b"PUB %s %d\r\n" % (subject.encode(), len(payload)), payload, b"\r\n"))
    return writer.transport.get_write_buffer_size()
