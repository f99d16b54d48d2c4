"""The WebSocket transport of one node: its server (with the side doors of
``doors.py``), its dialers (``dial.py``) and the links between (``link.py``).

Limits before authentication: picows refuses any WebSocket frame over
``MAX_PREAUTH_FRAME_SIZE`` (64 KiB) while parsing its header, before buffering it,
so an outsider can make us hold at most that per connection.  Upgrades and HTTP
requests must name an allowed ``Host`` and, when a browser sends one, a same-origin
``Origin`` (``doors.Origins``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

import picows

from ..._aio import cancel_all
from ..._log import RateLimitedLog
from ...wire.limits import FD_HEADROOM
from ..base import LinkHost
from .dial import Dialling
from .doors import Conn, Door, DoorKeeper, Origins
from .link import SLOW_PEER_TIMEOUT, WS_FRAME_LIMIT, MeshListener, WSLink
from .settings import HttpResponder, ServeFn, Upgrade, WSSettings
from .sockets import _listening_socket, _open_fds, _raise_fd_limit

log = logging.getLogger("spiralfast.ws")

#: Paths the mesh protocol answers on (anything else is HTTP or 404).
MESH_PATHS = (b"/", b"/mesh")


class WebSocketTransport(DoorKeeper, Dialling):
    """Server plus dialers of one node.

    :param host: the node (``LinkHost``).
    :param http: makes the responder for plain HTTP requests on the port (or None).
    :param serve: builds the server (picows' ``ws_create_server`` arguments plus ``doors``:
        the node passes the one that keeps the side doors); None: picows' own, without them.
    :param observers_only: a port for observers (CLI, dashboard) and HTTP alone, for a
        node without WebSocket links (``MeshConfig.observer_port``): a peer joining as a
        node is refused, and nothing is dialled.
    """

    def __init__(self, host: LinkHost, settings: WSSettings, http: Callable[[], HttpResponder | None] | None = None,
                 observers_only: bool = False, serve: ServeFn | None = None) -> None:
        self.serve = serve
        self.host = host
        self.observers_only = observers_only
        self.settings = settings
        self.http_factory = http
        self.server: asyncio.base_events.Server | None = None
        self.endpoint: str | None = None
        self.port = settings.port
        self.running = False
        self.links: set[WSLink] = set()
        self.dialers: dict[str, asyncio.Task[None]] = {}
        self.expected: dict[str, str] = {}  # url -> node id learnt by gossip
        self.learned_at: dict[str, float] = {}  # url -> when gossip last named it
        self.slow_drops = 0
        self.frame_errors = 0
        self.refused_connections = 0
        self.tls_failures = 0  # dials whose TLS handshake failed (the peer's certificate refused)
        self.gossip_dials: set[str] = set()  # gossiped endpoints with a dial loop
        self.gossip_dials_refused = 0  # beyond GOSSIP_DIAL_CONCURRENCY + GOSSIP_DIAL_QUEUE
        self._dial_slots: asyncio.Semaphore | None = None
        #: Connections refused or closed at the side doors, by reason (metrics: side_door_refused_total).
        self.refusals: dict[str, int] = {
            "handshake_evicted": 0, "fd_reserve": 0, "tls_failed": 0, "tls_timeout": 0,
            "bad_host": 0, "bad_origin": 0, "live_flood": 0,
        }
        self.doors: dict[Conn, Door] = {}  # transport -> its door, while not settled
        self.by_source: dict[str, dict[Conn, Door]] = {}  # the same doors by source address
        self._swept = 0.0
        self.origins = Origins(settings)
        self.ssl_ctx: ssl.SSLContext | None = None
        self.errlog = RateLimitedLog(log)
        self._slow_task: asyncio.Task[None] | None = None
        self.http: HttpResponder | None = None
        self.fd_limit = _raise_fd_limit()
        self._fd_base = _open_fds()

    async def start(self) -> None:
        st = self.settings
        # picows logs every malformed frame from a client at ERROR: outsiders could flood
        # our log with them.  The gate counts protocol errors; keep picows' own lines for
        # those who ask for them (a level set on this logger is left alone).
        server_log = logging.getLogger("picows.spiralfast.ws.server")
        if server_log.level == logging.NOTSET:
            server_log.setLevel(logging.CRITICAL)
        ssl_ctx = None
        if st.ssl_certfile:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(st.ssl_certfile, st.ssl_keyfile)
        loop = asyncio.get_running_loop()
        self.ssl_ctx = ssl_ctx
        self.origins = Origins(st)
        sock = _listening_socket(st.host, st.port, loop)
        if self.serve is not None:  # the node's: answers HEAD, keeps the side doors
            self.server = await self.serve(
                self._factory, sock=sock, max_frame_size=WS_FRAME_LIMIT,
                websocket_handshake_timeout=st.handshake_timeout, logger_name="spiralfast.ws.server",
                doors=self,  # TLS (if any) and the door of each connection: see open_door
            )
        else:
            self.server = await picows.ws_create_server(
                self._factory, sock=sock, max_frame_size=WS_FRAME_LIMIT, ssl=ssl_ctx,
                websocket_handshake_timeout=st.handshake_timeout, logger_name="spiralfast.ws.server",
            )
        self.running = True
        self.port = self.server.sockets[0].getsockname()[1]
        host = st.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.endpoint = f"{'wss' if ssl_ctx else 'ws'}://{host}:{self.port}"

    def _refuse(self, reason: str, status: int, text: str) -> picows.WSUpgradeResponseWithListener:
        self.refusals[reason] += 1
        self.errlog(("side-door", reason), logging.INFO, "refused a request: %s", text)
        body = b'{"error": "' + text.encode() + b'"}'
        resp = picows.WSUpgradeResponse.create_error_response(status, body, {"Content-Type": "application/json"})
        return picows.WSUpgradeResponseWithListener(resp, None)

    def _factory(self, request: picows.WSUpgradeRequest) -> Upgrade:
        headers = request.headers
        host = headers.get("Host")
        if not self.origins.host_ok(host):
            return self._refuse("bad_host", 421, "Host not allowed (set allowed_hosts to add it)")
        upgrade = (headers.get("Upgrade") or "").lower() == "websocket"
        if upgrade and not self.origins.origin_ok(headers.get("Origin"), host):
            return self._refuse("bad_origin", 403, "Origin not allowed (set allowed_origins to add it)")
        if self._fd_base + self._in_use() + FD_HEADROOM >= self.fd_limit:
            self.refused_connections += 1
            self.refusals["fd_reserve"] += 1
            self.errlog("fds", logging.WARNING, "refusing connections: near the file descriptor limit (%d)",
                        self.fd_limit)
            resp = picows.WSUpgradeResponse.create_error_response(503, b"busy")
            return picows.WSUpgradeResponseWithListener(resp, None)
        path = request.path.split(b"?", 1)[0]
        if upgrade and path in MESH_PATHS:
            link = WSLink(self, outbound=False)
            link.observers_only = self.observers_only
            return MeshListener(link, WSLink.received)
        if self.http is None and self.http_factory is not None:
            self.http = self.http_factory()
            if self.http is not None:
                self.http.doors = self  # the dashboard feed reports its connections and floods
        if self.http is None:
            resp = picows.WSUpgradeResponse.create_error_response(404, b"not found")
            return picows.WSUpgradeResponseWithListener(resp, None)
        answer: Upgrade = self.http.respond(request)
        return answer

    def link_connected(self, link: WSLink) -> None:
        """A connection is up: an inbound one stays its door's until it authenticates."""
        self.links.add(link)
        if link.outbound:
            return
        try:
            door = self.doors.get(link.ws.underlying_transport) if link.ws is not None else None
        except Exception:
            door = None
        if door is not None:
            door.link = link

    async def stop(self) -> None:
        self.running = False
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

    def _outbound_link(self, url: str) -> WSLink:
        return WSLink(self, outbound=True, url=url)
