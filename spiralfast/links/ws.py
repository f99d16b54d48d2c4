"""WebSocket transport (picows): the node's server, its outbound dialers, and
links that move frames between a picows transport and the node (its ``LinkHost``).

Backpressure: while picows says ``pause_writing``, frames wait in the link's
bounded outbox; a peer that stays paused longer than ``SLOW_PEER_TIMEOUT`` or
lets the outbox exceed ``MAX_OUTBOX_BYTES`` is dropped (counted), so a slow peer
can neither grow our memory without bound nor stall the other peers.

Limits before authentication: picows refuses any WebSocket frame over
``MAX_PREAUTH_FRAME_SIZE`` (64 KiB) while parsing its header, before buffering it,
so an outsider can make us hold at most that per connection.  Mesh frames larger
than that travel as a fragmented message, which only an authenticated member's link
reassembles (up to ``max_frame_size``).

Side doors: every accepted connection is a :class:`Door` until it is settled (an
authenticated link, an admitted dashboard, or closed): its TLS handshake (bounded by
``handshake_timeout``, never asyncio's 60 s), its HTTP upgrade and its mesh handshake.
At most ``MAX_PREAUTH_CONNECTIONS`` doors may be open at once; when a new one finds them
full, the oldest door of the source address holding the most is closed, so a flood from
one address evicts only its own sockets, never a lone peer from another address.  New
connections are refused while fewer than ``FD_HEADROOM`` file descriptors are left
(open doors counted).  Upgrades and HTTP requests must name an allowed ``Host`` and,
when a browser sends one, a same-origin ``Origin`` (:class:`Origins`).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import random
import resource
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import picows

from .._aio import cancel_all
from .._log import RateLimitedLog
from .._native import load
from ..limits import (
    FD_HEADROOM,
    MAX_PREAUTH_CONNECTIONS,
    MAX_PREAUTH_FRAME_SIZE,
    MAX_PREAUTH_FRAMES,
    PREAUTH_SOURCE_PREFIX_V6,
)

log = logging.getLogger("spiralfast.ws")

_listener = load("links._wslistener", "links._wslistener_py")
MeshListener = _listener.MeshListener
LISTENER_COMPILED: bool = _listener.COMPILED

#: Bytes a link may queue while the peer is not reading; beyond it the link drops.
MAX_OUTBOX_BYTES = 32 * 1024 * 1024
#: Seconds a peer may keep us paused before the link is dropped as too slow.
SLOW_PEER_TIMEOUT = 10.0
#: Seconds a closed link may take to drain before its socket is aborted.
ABORT_AFTER = 2.0
#: Reconnect backoff: first delay, cap, and jitter fraction.
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.5
#: A peer that refused our handshake is retried with this backoff (it will most
#: likely refuse again until an operator fixes the token or mesh name).
REFUSED_BACKOFF_INITIAL = 0.5
REFUSED_BACKOFF_MAX = 60.0
#: Gossiped endpoints (not configured peers) being connected to at once; beyond, dials
#: wait their turn, and at most GOSSIP_DIAL_QUEUE more are kept (others are refused and
#: counted): a member gossiping thousands of endpoints opens a handful of connections.
GOSSIP_DIAL_CONCURRENCY = 8
GOSSIP_DIAL_QUEUE = 56
#: Paths the mesh protocol answers on (anything else is HTTP or 404).
MESH_PATHS = (b"/", b"/mesh")
#: WebSocket frames we send and accept are at most this big; larger mesh frames are
#: sent as a fragmented message (see the module docstring).
WS_FRAME_LIMIT = MAX_PREAUTH_FRAME_SIZE
_PING = struct.Struct("<d")


@dataclass
class WSSettings:
    """What the WebSocket transport needs to know (from ``MeshConfig``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_frame_size: int = 16 * 1024 * 1024  # largest reassembled mesh frame
    handshake_timeout: float = 5.0
    heartbeat_interval: float = 30.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cafile: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # added to the defaults (see Origins)
    allowed_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> WSSettings:
        return cls(cfg.websocket_host, cfg.websocket_port, cfg.max_frame_size, cfg.handshake_timeout,
                   cfg.heartbeat_interval, cfg.ssl_certfile, cfg.ssl_keyfile, cfg.ssl_cafile,
                   tuple(getattr(cfg, "allowed_hosts", None) or ()),
                   tuple(getattr(cfg, "allowed_origins", None) or ()))


#: Host names every node answers to (besides IP literals, its own host and allowed_hosts).
LOCAL_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1", "ip6-localhost"})


def _split_host(value: str) -> str:
    """The host part of a ``Host`` header or an origin's netloc, lower case, no brackets."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Origins:
    """Which ``Host`` and ``Origin`` headers the port answers (DNS rebinding and
    cross-site pages).

    A ``Host`` is allowed when it is an IP literal (a rebinding attack always carries the
    attacker's DNS name), a localhost name, the node's own listen host or machine name,
    or listed in ``allowed_hosts`` (``"*"``: any).  An ``Origin`` (browsers send one on
    every WebSocket upgrade; the CLI and peers send none and are not asked for one) is
    allowed when it is the page's own origin (its host and port are the request's
    ``Host``), or listed in ``allowed_origins`` (``"*"``: any).
    """

    def __init__(self, settings: WSSettings) -> None:
        names = set(LOCAL_NAMES)
        names.add(_split_host(settings.host))
        try:
            names.add(socket.gethostname().lower())
        except OSError:
            pass
        extra = [h.strip().lower() for h in settings.allowed_hosts if h.strip()]
        self.any_host = "*" in extra
        names.update(_split_host(h) for h in extra if h != "*")
        self.hosts = frozenset(names)
        origins = [o.strip().lower().rstrip("/") for o in settings.allowed_origins if o.strip()]
        self.any_origin = "*" in origins
        self.origins = frozenset(o for o in origins if o != "*")

    def host_ok(self, host: str | None) -> bool:
        if self.any_host or host is None:  # HTTP/1.0 without Host: no browser sends that
            return True
        name = _split_host(host)
        return name in self.hosts or _ip_literal(name)

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any_origin:
            return True
        o = origin.strip().lower().rstrip("/")
        if o in self.origins:
            return True
        try:
            parts = urlsplit(o)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
            return False  # "null" (a sandboxed frame, a file) included
        return parts.netloc == host.strip().lower()


def source_key(peer: Any) -> str:
    """The source a connection counts against: its IPv4 address, or its IPv6 /64."""
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return "?"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr), PREAUTH_SOURCE_PREFIX_V6), strict=False))
    return str(addr)


class Door:
    """One accepted connection until it is settled (see the module docstring)."""

    __slots__ = ("tr", "source", "since", "link", "live", "tls", "name")

    def __init__(self, tr: Any, source: str, name: str, tls: bool) -> None:
        self.tr = tr
        self.source = source
        self.name = name
        self.since = time.monotonic()
        self.link: WSLink | None = None
        self.live: Any = None  # a dashboard connection (http.LiveClient)
        self.tls = tls  # its TLS handshake is under way

    def settled(self) -> bool:
        try:
            if self.tr.is_closing():
                return True
        except Exception:
            return True
        link = self.link
        if link is not None:
            return link.closed or link._state() in ("member", "observer")
        live = self.live
        return live is not None and (live.admitted or live.closed)

    def evict(self, reason: str) -> None:
        if self.link is not None and not self.link.closed:
            self.link.close(reason)
        elif self.live is not None:
            self.live.close(reason)
        else:
            try:
                self.tr.abort()
            except Exception:
                pass


class WSLink:
    """One WebSocket connection, either side."""

    transport = "websocket"
    shared_bus = False

    def __init__(self, owner: WebSocketTransport, outbound: bool, url: str | None = None) -> None:
        self.owner = owner
        self.host = owner.host
        self.session: Any = None
        self.outbound = outbound
        self.url = url
        self.peer_id: str | None = None
        self.errors = 0
        self.closed = False
        self.closed_by_peer = False  # set when the link goes down: True if not by our close()
        self.ws: Any = None
        self.frames_in = 0
        self.bytes_in = 0
        self._parts: bytearray | None = None  # a fragmented message being reassembled
        self.opened_at = time.monotonic()
        self.rtt: float | None = None  # seconds, from the last ping
        self.guest_pings = 0
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
        self.observers_only = False  # on an observer port: the handshake refuses nodes

    # -- called by the listener ---------------------------------------------------

    def connected(self, transport: Any) -> None:
        self.ws = transport
        try:
            peer = transport.underlying_transport.get_extra_info("peername")
            if not self.url and peer:
                self.name = f"{peer[0]}:{peer[1]}"
        except Exception:
            pass
        self.owner.link_connected(self)
        self.host.link_opened(self, self.outbound)

    def disconnected(self) -> None:
        self.closed_by_peer = not self.closed  # not our close(): the peer's process closed it, or died
        self.closed = True
        self.host.writable_changed(self, True)
        self.outbox.clear()
        self.outbox_bytes = 0
        self._parts = None
        self.owner.links.discard(self)
        if not self.outbound and self.ws is not None:
            try:
                self.owner.close_door(self.ws.underlying_transport)
            except Exception:
                pass
        self.host.link_closed(self)
        self.disconnected_event.set()

    def received(self, data: Any) -> None:
        if self.closed:
            return  # what picows had buffered after we closed: nobody is listening
        self.frames_in += 1
        self.bytes_in += len(data)
        self.host.frame_received(self, data)

    def fragment(self, msg_type: Any, data: Any, fin: bool) -> None:
        """A piece of a fragmented message: only members send those (frames over 64 KiB)."""
        authenticated = self.session is not None and self.session.state in ("member", "observer")
        if not authenticated:
            return self.bad_frame(msg_type)
        if msg_type == picows.WSMsgType.BINARY:
            self._parts = bytearray(data)
        elif self._parts is None:
            return self.bad_frame(msg_type)
        else:
            self._parts += data
        if len(self._parts) > self.owner.settings.max_frame_size:
            self._parts = None
            self.close("message over the frame size limit")
            return
        if fin:
            whole, self._parts = bytes(self._parts), None
            self.received(whole)

    def ping(self) -> None:
        """Measure the round trip: a WebSocket ping carrying our monotonic clock."""
        if self.ws is not None and not self.closed:
            self.ws.send_ping(_PING.pack(time.monotonic()))

    def pong(self, payload: bytes) -> None:
        if len(payload) == _PING.size:
            self.rtt = time.monotonic() - _PING.unpack(payload)[0]

    def bad_frame(self, msg_type: Any) -> None:
        self.owner.errlog(("ws-frame", str(msg_type)), logging.WARNING, "unexpected %s frame from %s", msg_type, self.name)
        self.owner.frame_errors += 1
        self.errors += 1
        if self.errors >= 3:
            self.close("unexpected frames")

    def _state(self) -> str:
        return self.session.state if self.session is not None else "handshake"

    def ping_received(self, payload: bytes) -> None:
        """Pings are answered by us, not picows: a guest's count against its pre-auth
        frame budget (unread pongs once let one outsider stall a node)."""
        if self._state() not in ("member", "observer"):
            self.guest_pings += 1
            if self.guest_pings > MAX_PREAUTH_FRAMES:
                self.owner.frame_errors += 1
                self.close("too many pings before the handshake completed")
                return
        if self.ws is not None and not self.closed:
            self.ws.send_pong(payload)

    def pause(self) -> None:
        """picows: the peer is not reading what we send."""
        state = self._state()
        if state not in ("member", "observer"):
            self.close("not reading during the handshake")  # an outsider never holds our buffers
            return
        self.paused = True
        self.paused_since = time.monotonic()
        if state == "member":  # only members pace the mesh's senders; observers just fall behind
            self.host.writable_changed(self, False)
        self.owner.watch_slow(self)

    def resume(self) -> None:
        self.paused = False
        ws = self.ws
        while self.outbox and not self.paused and not self.closed:
            frame = self.outbox.popleft()
            self.outbox_bytes -= len(frame)
            send_frame(ws, frame)
        if not self.paused:
            self.host.writable_changed(self, True)

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
        send_frame(self.ws, frame)
        return True

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self.ws is not None:
            try:  # stop reading at once: a hostile peer's buffered frames are not parsed
                self.ws.underlying_transport.pause_reading()
            except Exception:
                pass
        if reason:
            log.info("closing link %s (%s): %s", self.peer_id or self.name, self.name, reason)
        if self.ws is not None:
            guest = self._state() not in ("member", "observer")
            if self.paused or guest and self.outbox_bytes:
                self.ws.disconnect(graceful=False)  # nothing will drain: drop the buffers now
                return
            try:
                self.ws.send_close(picows.WSCloseCode.GOING_AWAY, reason.encode()[:120])
            except Exception:
                pass
            self.ws.disconnect()
            # A peer that stops reading must not keep the socket (and its buffers) alive.
            asyncio.get_running_loop().call_later(ABORT_AFTER, self._abort)
        else:
            self.disconnected()

    def _abort(self) -> None:
        if not self.disconnected_event.is_set() and self.ws is not None:
            self.ws.disconnect(graceful=False)

    def info(self) -> dict[str, Any]:
        return {
            "state": "paused" if self.paused else ("closed" if self.closed else "open"),
            "direction": "out" if self.outbound else "in",
            "endpoint": self.url or self.name,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "rtt_ms": round(self.rtt * 1000, 3) if self.rtt is not None else None,
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "outbox_bytes": self.outbox_bytes,
            "dropped_frames": self.dropped_frames,
        }


class WebSocketTransport:
    """Server plus dialers of one node.

    :param host: the node (``LinkHost``).
    :param http: makes the responder for plain HTTP requests on the port (or None).
    :param observers_only: a port for observers (CLI, dashboard) and HTTP alone, for a
        node without WebSocket links (``MeshConfig.observer_port``): a peer joining as a
        node is refused, and nothing is dialled.
    """

    def __init__(self, host: Any, settings: WSSettings, http: Callable[[], Any] | None = None,
                 observers_only: bool = False) -> None:
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
        self.doors: dict[Any, Door] = {}  # transport -> its door, while not settled
        self.by_source: dict[str, dict[Any, Door]] = {}  # the same doors by source address
        self._swept = 0.0
        self.origins = Origins(settings)
        self.ssl_ctx: ssl.SSLContext | None = None
        self.errlog = RateLimitedLog(log)
        self._slow_task: asyncio.Task[None] | None = None
        self.http: Any = None
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
        from ..http import ws_create_server  # picows' server that also answers HEAD

        self.ssl_ctx = ssl_ctx
        self.origins = Origins(st)
        self.server = await ws_create_server(
            self._factory,
            sock=_listening_socket(st.host, st.port, loop),
            max_frame_size=WS_FRAME_LIMIT,
            websocket_handshake_timeout=st.handshake_timeout,
            logger_name="spiralfast.ws.server",
            doors=self,  # TLS (if any) and the door of each connection: see open_door
        )
        self.running = True
        self.port = self.server.sockets[0].getsockname()[1]
        host = st.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.endpoint = f"{'wss' if ssl_ctx else 'ws'}://{host}:{self.port}"

    # -- doors ------------------------------------------------------------------------

    def _in_use(self) -> int:
        """Descriptors this transport holds, at most: its links and its doors (a door that
        became a link counts twice, which errs on the side of the reserve)."""
        return len(self.links) + len(self.doors)

    def _drop(self, door: Door) -> None:
        self.doors.pop(door.tr, None)
        group = self.by_source.get(door.source)
        if group is not None:
            group.pop(door.tr, None)
            if not group:
                del self.by_source[door.source]

    def _sweep(self) -> None:
        """Forget settled doors (at most twice a second: an O(doors) pass)."""
        now = time.monotonic()
        if now - self._swept < 0.5:
            return
        self._swept = now
        for d in [d for d in self.doors.values() if d.settled()]:
            self._drop(d)

    def open_door(self, tr: Any, tls: bool) -> Door | None:
        """A connection was accepted (``tr``: its transport, before TLS if any): count it
        as a door, closing one of the source holding the most if they are full; None (and
        the connection aborted) when too few file descriptors are left."""
        try:
            peer = tr.get_extra_info("peername")
        except Exception:
            peer = None
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.doors) >= MAX_PREAUTH_CONNECTIONS:
            self._sweep()
        if self._fd_base + self._in_use() + FD_HEADROOM >= self.fd_limit:
            self._sweep()
            if self._fd_base + self._in_use() + FD_HEADROOM >= self.fd_limit:
                self.refused_connections += 1
                self.refusals["fd_reserve"] += 1
                self.errlog("fds", logging.WARNING, "refusing connections: near the file descriptor limit (%d)",
                            self.fd_limit)
                tr.abort()
                return None
        door = Door(tr, source_key(peer) if peer else "?", name, tls)
        while len(self.doors) >= MAX_PREAUTH_CONNECTIONS and self._evict_for(door):
            pass
        self.doors[tr] = door
        self.by_source.setdefault(door.source, {})[tr] = door
        return door

    def _evict_for(self, new: Door) -> bool:
        """The doors are full: free one, the oldest of the source holding the most (the
        newcomer counting for its own source).  False when there is nothing to free."""
        top_source: str | None = None
        top = 0
        for source, group in self.by_source.items():
            n = len(group) + (source == new.source)
            if n > top:
                top_source, top = source, n
        if top_source is None:
            return False
        group = self.by_source[top_source]
        victim = min(group.values(), key=lambda d: d.since)
        self._drop(victim)
        if victim.settled():
            return True  # it had already gone: a slot freed, nobody evicted
        self.refused_connections += 1
        self.refusals["handshake_evicted"] += 1
        self.errlog(("doors", top_source), logging.WARNING,
                    "too many connections mid-handshake; closing the oldest of %s (the source holding the "
                    "most: %d)", top_source, top)
        victim.evict("too many unauthenticated connections from its address")
        return True

    def rekey_door(self, old: Any, new: Any) -> None:
        """A door's TLS handshake completed: its connection now speaks through ``new``."""
        door = self.doors.get(old)
        if door is not None:
            self._drop(door)
            door.tr = new
            door.tls = False
            self.doors[new] = door
            self.by_source.setdefault(door.source, {})[new] = door

    def close_door(self, tr: Any) -> None:
        door = self.doors.get(tr)
        if door is not None:
            self._drop(door)

    def tls_failed(self, door: Door, exc: BaseException | None) -> None:
        """A TLS handshake from a connection failed or timed out: counted, one line at most
        now and then (never a traceback)."""
        self._drop(door)
        timed_out = isinstance(exc, (TimeoutError, ConnectionAbortedError)) and "longer than" in str(exc)
        self.refusals["tls_timeout" if timed_out else "tls_failed"] += 1
        if timed_out:
            self.errlog("tls-slow", logging.INFO, "TLS handshake from %s not completed within %.1f s (counted as "
                        "tls_timeout)", door.name, self.settings.handshake_timeout)
            return
        why = exc.__name__ if isinstance(exc, type) else tls_reason(exc) if exc is not None else "closed"
        self.errlog("tls-in", logging.WARNING, "TLS handshake from %s failed (%s): a peer that refuses our "
                    "certificate ends it so; its ssl_cafile (--cafile) must name the CA that signed ours",
                    door.name, why)

    def attach_live(self, tr: Any, client: Any) -> None:
        """A dashboard connection upgraded on ``tr``: its door settles once it is admitted."""
        door = self.doors.get(tr)
        if door is not None:
            door.live = client

    def _refuse(self, reason: str, status: int, text: str) -> Any:
        self.refusals[reason] += 1
        self.errlog(("side-door", reason), logging.INFO, "refused a request: %s", text)
        body = b'{"error": "' + text.encode() + b'"}'
        resp = picows.WSUpgradeResponse.create_error_response(status, body, {"Content-Type": "application/json"})
        return picows.WSUpgradeResponseWithListener(resp, None)

    def _factory(self, request: Any) -> Any:
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
        return self.http.respond(request)

    def link_connected(self, link: WSLink) -> None:
        """A connection is up: an inbound one stays its door's until it authenticates."""
        self.links.add(link)
        if link.outbound:
            return
        try:
            door = self.doors.get(link.ws.underlying_transport)
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

    # -- dialling ------------------------------------------------------------------

    def dial(self, url: str, permanent: bool = False, expected_id: str | None = None) -> None:
        """Keep a link to ``url``: permanent peers forever, gossiped ones while known."""
        if url == self.endpoint or self.observers_only:
            return
        if expected_id is not None:
            self.expected[url] = expected_id
            self.learned_at[url] = time.monotonic()
        task = self.dialers.get(url)
        if task is not None and not task.done():
            return
        if not permanent:
            if len(self.gossip_dials) >= GOSSIP_DIAL_CONCURRENCY + GOSSIP_DIAL_QUEUE:
                self.gossip_dials_refused += 1
                self.errlog(("dial-cap",), logging.WARNING, "gossip named more endpoints than %d dials at once "
                            "and %d waiting: %s not dialled (%d so far)", GOSSIP_DIAL_CONCURRENCY,
                            GOSSIP_DIAL_QUEUE, url[:200], self.gossip_dials_refused)
                return
            self.gossip_dials.add(url)
        task = self.dialers[url] = asyncio.ensure_future(self._dial_loop(url, permanent))
        if not permanent:
            task.add_done_callback(lambda _t: self._gossip_dial_done(url))

    def _gossip_dial_done(self, url: str) -> None:
        self.gossip_dials.discard(url)

    def forget(self, node_id: str) -> None:
        """Stop redialling a gossiped endpoint of a node that is gone."""
        for url, nid in list(self.expected.items()):
            if nid == node_id:
                del self.expected[url]
                self.learned_at.pop(url, None)

    def _wanted(self, url: str, permanent: bool) -> bool:
        if not self.running:
            return False
        if permanent:
            return True
        nid = self.expected.get(url)
        if nid is None:
            return False
        # Wanted while the node is known, or was named by gossip recently enough
        # that it may still be alive (failure detection has not ruled it out).
        window = 3 * self.settings.heartbeat_interval
        return self.host.knows(nid) or time.monotonic() - self.learned_at.get(url, 0.0) < window

    async def _dial_loop(self, url: str, permanent: bool) -> None:
        delay = BACKOFF_INITIAL
        st = self.settings
        while self._wanted(url, permanent):
            nid = self.expected.get(url)
            if nid is not None and self.host.linked(nid):
                if not permanent:
                    return
                await asyncio.sleep(st.heartbeat_interval / 2)
                continue
            link = WSLink(self, outbound=True, url=url)
            slots = None
            if not permanent:  # a gossiped endpoint: one of GOSSIP_DIAL_CONCURRENCY connect attempts
                if self._dial_slots is None:
                    self._dial_slots = asyncio.Semaphore(GOSSIP_DIAL_CONCURRENCY)
                slots = self._dial_slots
                await slots.acquire()
            try:
                ssl_ctx = None
                if url.startswith("wss://"):
                    ssl_ctx = ssl.create_default_context(cafile=st.ssl_cafile)
                await picows.ws_connect(
                    lambda link=link: MeshListener(link, WSLink.received),  # type: ignore[misc]
                    url,
                    max_frame_size=WS_FRAME_LIMIT,
                    websocket_handshake_timeout=st.handshake_timeout,
                    enable_auto_pong=False,  # the link answers pings itself
                    ssl_context=ssl_ctx,
                    logger_name="spiralfast.ws.client",
                )
            except asyncio.CancelledError:
                if slots is not None:
                    slots.release()
                raise
            except Exception as exc:
                if slots is not None:
                    slots.release()
                if isinstance(exc, ssl.SSLError):
                    # Its certificate refused (or no TLS there): an operator must act, and
                    # retrying quickly changes nothing.
                    self.tls_failures += 1
                    self.errlog(("tls", url), logging.WARNING, "cannot reach %s: %s", url, tls_reason(exc))
                    delay = min(max(delay, REFUSED_BACKOFF_INITIAL) * 2, REFUSED_BACKOFF_MAX)
                else:
                    self.errlog(("dial", url), logging.INFO, "cannot reach %s: %s", url, exc)
                    delay = min(delay * 2, BACKOFF_MAX)
                await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
                continue
            if slots is not None:
                slots.release()
            await link.disconnected_event.wait()
            peer = link.peer_id
            if peer is not None:
                delay = BACKOFF_INITIAL
                # Who answers at this URL: while we are linked to it some other way (its own
                # dial won the duplicate-link rule) we wait instead of dialling again and again.
                self.expected[url] = peer
                self.learned_at[url] = time.monotonic()
            else:  # refused (token, mesh name) or timed out: back off, up to REFUSED_BACKOFF_MAX
                delay = min(max(delay, REFUSED_BACKOFF_INITIAL) * 2, REFUSED_BACKOFF_MAX)
            await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))

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


def send_frame(ws: Any, frame: bytes) -> None:
    """One mesh frame: a single WebSocket frame, or fragments of WS_FRAME_LIMIT."""
    n = len(frame)
    if n <= WS_FRAME_LIMIT:
        ws.send(picows.WSMsgType.BINARY, frame)
        return
    view = memoryview(frame)
    ws.send(picows.WSMsgType.BINARY, view[:WS_FRAME_LIMIT], False)
    pos = WS_FRAME_LIMIT
    while pos < n:
        end = pos + WS_FRAME_LIMIT
        ws.send(picows.WSMsgType.CONTINUATION, view[pos:end], end >= n)
        pos = end


class _ListeningSocket(socket.socket):
    """The server's socket.  When accept() runs out of file descriptors, the server
    (aiofastnet) stops reading the socket for a second by calling
    ``sock.remove_reader``, which plain sockets lack: without this it would spin on the
    error and flood the log."""

    loop: asyncio.AbstractEventLoop

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)


def _listening_socket(host: str, port: int, loop: asyncio.AbstractEventLoop) -> socket.socket:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = _ListeningSocket(family, socket.SOCK_STREAM)
    sock.loop = loop
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    _quiet_accept_errors(loop)
    return sock


_ACCEPT_LOG = RateLimitedLog(log)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors, the server reports every retry (each second) to the
    loop's exception handler with a traceback; report it with back-off instead.  A TLS
    handshake that fails is reported there too (by aiofastnet, once with an exception
    class instead of an instance, which made the default handler write a ``--- Logging
    error ---`` traceback of its own): it is counted and logged where it happens (the
    server's door, the dialler), so the report is dropped.  An application's handler set
    before the node started still gets every other report."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_spiralfast_quiet", False):
        return

    def handler(lp: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        message = str(ctx.get("message", ""))
        if "out of system resource" in message:
            _ACCEPT_LOG("emfile", logging.ERROR, "out of file descriptors: not accepting connections for now (%s)",
                        ctx.get("exception"))
            return
        if message.startswith("SSL handshake failed"):
            return
        exc = ctx.get("exception")
        if isinstance(exc, type):  # a class where an instance belongs: no traceback to print
            ctx = {**ctx, "exception": exc()}
        if previous is not None:
            previous(lp, ctx)
        else:
            lp.default_exception_handler(ctx)

    handler._spiralfast_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def tls_reason(exc: BaseException) -> str:
    """A TLS failure in one line, with what to do about a refused certificate."""
    text = str(exc)
    verify = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS certificate refused ({verify or getattr(exc, 'reason', None) or 'not verified'}; {text}): "
                "set ssl_cafile (--cafile) to the CA that signed the peer's certificate")
    return f"TLS failed ({text or type(exc).__name__})"


def _raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64
