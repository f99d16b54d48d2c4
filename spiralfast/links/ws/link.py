"""One WebSocket connection as a ``Link``: frames between a picows transport and the
node (its ``LinkHost``), with backpressure.

While picows says ``pause_writing``, frames wait in the link's bounded outbox; a peer
that stays paused longer than ``SLOW_PEER_TIMEOUT`` or lets the outbox exceed
``MAX_OUTBOX_BYTES`` is dropped (counted), so a slow peer can neither grow our memory
without bound nor stall the other peers.  Mesh frames larger than ``WS_FRAME_LIMIT``
travel as a fragmented message, which only an authenticated member's link reassembles.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import Protocol

import picows

from ..._log import RateLimitedLog
from ...wire._native import load
from ...wire.limits import MAX_PREAUTH_FRAME_SIZE, MAX_PREAUTH_FRAMES
from ..base import FrameData, LinkHost, LinkInfo, LinkSession
from . import _wslistener_py
from .settings import WSSettings

log = logging.getLogger("spiralfast.ws")

_listener = load("links.ws._wslistener", "links.ws._wslistener_py")
MeshListener: type[_wslistener_py.MeshListener] = _listener.MeshListener  # either twin (same interface)
LISTENER_COMPILED: bool = _listener.COMPILED

#: Bytes a link may queue while the peer is not reading; beyond it the link drops.
MAX_OUTBOX_BYTES = 32 * 1024 * 1024
#: Seconds a peer may keep us paused before the link is dropped as too slow.
SLOW_PEER_TIMEOUT = 10.0
#: Seconds a closed link may take to drain before its socket is aborted.
ABORT_AFTER = 2.0
#: WebSocket frames we send and accept are at most this big; larger mesh frames are
#: sent as a fragmented message (see the module docstring).
WS_FRAME_LIMIT = MAX_PREAUTH_FRAME_SIZE
_PING = struct.Struct("<d")


class LinkOwner(Protocol):
    """What a link needs of its transport (``WebSocketTransport``)."""

    host: LinkHost
    settings: WSSettings
    links: set[WSLink]
    errlog: RateLimitedLog
    frame_errors: int
    slow_drops: int

    def link_connected(self, link: WSLink) -> None: ...

    def close_door(self, tr: asyncio.Transport) -> None: ...

    def watch_slow(self, link: WSLink) -> None: ...


class WSLink:
    """One WebSocket connection, either side."""

    transport = "websocket"
    shared_bus = False

    def __init__(self, owner: LinkOwner, outbound: bool, url: str | None = None) -> None:
        self.owner = owner
        self.host = owner.host
        self.session: LinkSession | None = None
        self.outbound = outbound
        self.url = url
        self.peer_id: str | None = None
        self.errors = 0
        self.closed = False
        self.closed_by_peer = False  # set when the link goes down: True if not by our close()
        self.ws: picows.WSTransport | None = None
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

    def connected(self, transport: picows.WSTransport) -> None:
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

    def received(self, data: FrameData) -> None:
        if self.closed:
            return  # what picows had buffered after we closed: nobody is listening
        self.frames_in += 1
        self.bytes_in += len(data)
        self.host.frame_received(self, data)

    def fragment(self, msg_type: picows.WSMsgType, data: bytes, fin: bool) -> None:
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

    def bad_frame(self, msg_type: picows.WSMsgType) -> None:
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
        while ws is not None and self.outbox and not self.paused and not self.closed:
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

    def info(self) -> LinkInfo:
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



def send_frame(ws: picows.WSTransport, frame: bytes) -> None:
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

