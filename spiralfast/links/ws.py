"""WebSocket transport (picows): the node's server, its outbound dialers, and
links that move frames between a picows transport and the router.

Backpressure: while picows says ``pause_writing``, frames wait in the link's
bounded outbox; a peer that stays paused longer than ``SLOW_PEER_TIMEOUT`` or
lets the outbox exceed ``MAX_OUTBOX_BYTES`` is dropped (counted), so a slow peer
can neither grow our memory without bound nor stall the other peers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any

import picows

from .._aio import cancel_all
from .._log import RateLimitedLog
from .._native import load

if TYPE_CHECKING:
    from ..core import MeshCore

log = logging.getLogger("spiralfast.ws")

_listener = load("links._wslistener", "links._wslistener_py")
MeshListener = _listener.MeshListener
LISTENER_COMPILED: bool = _listener.COMPILED

#: Bytes a link may queue while the peer is not reading; beyond it the link drops.
MAX_OUTBOX_BYTES = 32 * 1024 * 1024
#: Seconds a peer may keep us paused before the link is dropped as too slow.
SLOW_PEER_TIMEOUT = 10.0
#: Reconnect backoff: first delay, cap, and jitter fraction.
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.5
#: Paths the mesh protocol answers on (anything else is HTTP or 404).
MESH_PATHS = (b"/", b"/mesh")


class WSLink:
    """One WebSocket connection, either side."""

    transport = "websocket"

    def __init__(self, owner: WebSocketTransport, outbound: bool, url: str | None = None) -> None:
        self.owner = owner
        self.core = owner.core
        self.outbound = outbound
        self.url = url
        self.peer_id: str | None = None
        self.member = False  # set once the handshake admits a mesh member
        self.errors = 0
        self.closed = False
        self.ws: Any = None
        self.paused = False
        self.paused_since = 0.0
        self.outbox: collections.deque[bytes] = collections.deque()
        self.outbox_bytes = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.dropped_frames = 0
        self.name = url or "inbound"
        self.disconnected_event = asyncio.Event()
        self.following = False
        self.follow_types: set[str] = set()

    # -- called by the listener ---------------------------------------------------

    def connected(self, transport: Any) -> None:
        self.ws = transport
        try:
            peer = transport.underlying_transport.get_extra_info("peername")
            if not self.url and peer:
                self.name = f"{peer[0]}:{peer[1]}"
        except Exception:
            pass
        self.owner.links.add(self)
        self.core.link_up(self, outbound=self.outbound)

    def disconnected(self) -> None:
        self.closed = True
        self.core.router.link_resumed(self)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.owner.links.discard(self)
        self.core.link_down(self)
        self.disconnected_event.set()

    def bad_frame(self, msg_type: Any) -> None:
        self.owner.errlog(("ws-frame", self.name), logging.WARNING, "unexpected %s frame from %s", msg_type, self.name)
        self.core.router.stats["frame_errors"] += 1
        self.errors += 1
        if self.errors >= 3:
            self.close("unexpected frames")

    def pause(self) -> None:
        self.paused = True
        self.paused_since = time.monotonic()
        self.core.router.link_paused(self)
        self.owner.watch_slow(self)

    def resume(self) -> None:
        self.paused = False
        ws = self.ws
        while self.outbox and not self.paused and not self.closed:
            frame = self.outbox.popleft()
            self.outbox_bytes -= len(frame)
            ws.send(picows.WSMsgType.BINARY, frame)
        if not self.paused:
            self.core.router.link_resumed(self)

    def pause_reading(self) -> None:
        if self.ws is not None and not self.closed:
            self.ws.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        if self.ws is not None and not self.closed:
            self.ws.underlying_transport.resume_reading()

    # -- called by the router -----------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        if self.closed or self.ws is None:
            return False
        self.frames_out += 1
        self.bytes_out += len(frame)
        if self.paused or self.outbox:
            if self.outbox_bytes + len(frame) > MAX_OUTBOX_BYTES:
                self.dropped_frames += 1
                self.owner.slow_drops += 1
                self.close("peer too slow: outbox full")
                return False
            self.outbox.append(frame)
            self.outbox_bytes += len(frame)
            return True
        self.ws.send(picows.WSMsgType.BINARY, frame)
        return True

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if reason:
            log.info("closing link %s (%s): %s", self.peer_id or self.name, self.name, reason)
        if self.ws is not None:
            try:
                self.ws.send_close(picows.WSCloseCode.GOING_AWAY, reason.encode()[:120])
            except Exception:
                pass
            self.ws.disconnect()
        else:
            self.disconnected()

    def info(self) -> dict[str, Any]:
        return {
            "state": "paused" if self.paused else ("closed" if self.closed else "open"),
            "direction": "out" if self.outbound else "in",
            "endpoint": self.url or self.name,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "outbox_bytes": self.outbox_bytes,
            "dropped_frames": self.dropped_frames,
        }


class WebSocketTransport:
    """Server plus dialers of one node."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        self.server: asyncio.base_events.Server | None = None
        self.endpoint: str | None = None
        self.links: set[WSLink] = set()
        self.dialers: dict[str, asyncio.Task[None]] = {}
        self.expected: dict[str, str] = {}  # url -> node id learnt by gossip
        self.learned_at: dict[str, float] = {}  # url -> when gossip last named it
        self.slow_drops = 0
        self.errlog = RateLimitedLog(log)
        self._slow_task: asyncio.Task[None] | None = None
        self.http: Any = None

    async def start(self) -> None:
        cfg = self.core.config
        ssl_ctx = None
        if cfg.ssl_certfile:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
        self.server = await picows.ws_create_server(
            self._factory,
            cfg.websocket_host,
            cfg.websocket_port,
            max_frame_size=cfg.max_frame_size,
            websocket_handshake_timeout=cfg.handshake_timeout,
            ssl=ssl_ctx,
            logger_name="spiralfast.ws.server",
        )
        port = self.server.sockets[0].getsockname()[1]
        host = cfg.websocket_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.endpoint = f"{'wss' if ssl_ctx else 'ws'}://{host}:{port}"
        cfg.websocket_port = port

    def _factory(self, request: Any) -> Any:
        path = request.path.split(b"?", 1)[0]
        upgrade = (request.headers.get("Upgrade") or "").lower() == "websocket"
        if upgrade and path in MESH_PATHS:
            link = WSLink(self, outbound=False)
            return MeshListener(link, self.core.router.on_frame)
        if self.http is None:
            from ..http import HttpEndpoints

            self.http = HttpEndpoints(self.core)
        return self.http.respond(request)

    async def stop(self) -> None:
        await cancel_all(self.dialers.values())
        self.dialers.clear()
        if self._slow_task is not None:
            self._slow_task.cancel()
        links = list(self.links)
        for link in links:
            link.close("node stopping")
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except (TimeoutError, Exception):
                pass
            self.server = None
        for link in links:
            if not link.disconnected_event.is_set():
                try:
                    await asyncio.wait_for(link.disconnected_event.wait(), 1)
                except TimeoutError:
                    link.disconnected()

    # -- dialling ------------------------------------------------------------------

    def dial(self, url: str, permanent: bool = False, expected_id: str | None = None) -> None:
        """Keep a link to ``url``: permanent peers forever, gossiped ones while known."""
        if url == self.endpoint:
            return
        if expected_id is not None:
            self.expected[url] = expected_id
            self.learned_at[url] = time.monotonic()
        task = self.dialers.get(url)
        if task is not None and not task.done():
            return
        self.dialers[url] = asyncio.ensure_future(self._dial_loop(url, permanent))

    def forget(self, node_id: str) -> None:
        """Stop redialling a gossiped endpoint of a node that is gone."""
        for url, nid in list(self.expected.items()):
            if nid == node_id:
                del self.expected[url]
                self.learned_at.pop(url, None)

    def _wanted(self, url: str, permanent: bool) -> bool:
        if not self.core.running:
            return False
        if permanent:
            return True
        nid = self.expected.get(url)
        if nid is None:
            return False
        # Wanted while the node is known, or was named by gossip recently enough
        # that it may still be alive (failure detection has not ruled it out).
        window = 3 * self.core.config.heartbeat_interval
        return nid in self.core.nodes or time.monotonic() - self.learned_at.get(url, 0.0) < window

    async def _dial_loop(self, url: str, permanent: bool) -> None:
        delay = BACKOFF_INITIAL
        cfg = self.core.config
        while self._wanted(url, permanent):
            nid = self.expected.get(url)
            if nid is not None and nid in self.core.router.links:
                if not permanent:
                    return
                await asyncio.sleep(cfg.heartbeat_interval / 2)
                continue
            link = WSLink(self, outbound=True, url=url)
            try:
                ssl_ctx = None
                if url.startswith("wss://"):
                    ssl_ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
                await picows.ws_connect(
                    lambda link=link: MeshListener(link, self.core.router.on_frame),  # type: ignore[misc]
                    url,
                    max_frame_size=cfg.max_frame_size,
                    websocket_handshake_timeout=cfg.handshake_timeout,
                    ssl_context=ssl_ctx,
                    logger_name="spiralfast.ws.client",
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errlog(("dial", url), logging.INFO, "cannot reach %s: %s", url, exc)
                await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            await link.disconnected_event.wait()
            session_ok = link.peer_id is not None
            if session_ok:
                delay = BACKOFF_INITIAL
            await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
            if not session_ok:
                delay = min(delay * 2, BACKOFF_MAX)

    # -- slow peers ----------------------------------------------------------------

    def watch_slow(self, link: WSLink) -> None:
        if self._slow_task is None or self._slow_task.done():
            self._slow_task = asyncio.ensure_future(self._slow_loop())

    async def _slow_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            paused = [lk for lk in self.links if lk.paused]
            for lk in paused:
                if now - lk.paused_since > SLOW_PEER_TIMEOUT:
                    self.slow_drops += 1
                    lk.dropped_frames += len(lk.outbox)
                    lk.close("peer too slow: paused too long")
            if not paused:
                return
