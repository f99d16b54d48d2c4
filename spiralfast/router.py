"""The node's router: one per node.  Transports hand it frames; it decides where
each message goes (dedupe, local dispatch, forwarding) and batches outgoing
messages per event-loop iteration.

Outgoing broadcasts are encoded once into a shared frame writer and the same
frame bytes go to every link; direct messages go to the target's own writer, or
are relayed through the neighbours when there is no direct link.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ._log import RateLimitedLog
from .codec import Decoder, FrameWriter, decode_payload
from .errors import FrameError
from .fastpath import Dedupe, EventSink
from .limits import FLUSH_THRESHOLD_BYTES

log = logging.getLogger("spiralfast.router")

#: A tight send loop yields to the event loop after this many messages, so reads,
#: heartbeats and flushes keep happening during a burst.
YIELD_EVERY = 1024

#: Frame errors tolerated from one link before it is closed as hostile or broken.
MAX_LINK_ERRORS = 3


class Link(Protocol):
    """What the router needs from a transport link."""

    peer_id: str | None
    errors: int

    def send_frame(self, frame: bytes) -> bool: ...

    def close(self, reason: str = "") -> None: ...


class Router:
    """Routes messages between the local node and its links.

    :param node_id: the local node id (messages targeted elsewhere are forwarded).
    :param deliver: ``deliver(link, kind, message, struct)`` for messages that are ours.
    """

    def __init__(
        self,
        node_id: str,
        deliver: Callable[[Any, int, Any, Any], None],
        event_core: Any = None,
    ) -> None:
        self.node_id = node_id
        self._node_id_b = node_id.encode()
        self.deliver = deliver
        self.links: dict[str, Any] = {}  # peer id -> ready link (direct route)
        self.extra_links: list[Any] = []  # links without a single peer (Redis bus)
        self._bcast = FrameWriter()
        self._direct: dict[str, Any] = {}  # peer id -> FrameWriter
        self._flush_handle: asyncio.Handle | None = None
        self.paused: set[Any] = set()  # links whose peer is not reading
        self._writable: asyncio.Event | None = None
        self._since_yield = 0
        self.decoder = Decoder()
        self.dedupe = Dedupe()
        # Events from member links are delivered by the (compiled) sink directly.
        self.sink = EventSink(event_core, node_id.encode(), self.dedupe) if event_core is not None else None
        self._errlog = RateLimitedLog(log)
        self.stats = {
            "frames_in": 0, "frames_out": 0, "messages_in": 0, "messages_out": 0,
            "duplicates": 0, "forwarded": 0, "frame_errors": 0, "unroutable": 0, "bytes_out": 0,
            "bytes_in": 0,
        }

    # -- links ---------------------------------------------------------------------

    def add_link(self, peer_id: str, link: Any) -> None:
        old = self.links.get(peer_id)
        self.links[peer_id] = link
        if old is not None and old is not link:
            old.close("replaced by a newer link")

    def remove_link(self, peer_id: str, link: Any) -> None:
        if self.links.get(peer_id) is link:
            del self.links[peer_id]
            w = self._direct.pop(peer_id, None)
            if w is not None:
                w.clear()

    # -- backpressure --------------------------------------------------------------

    def link_paused(self, link: Any) -> None:
        self.paused.add(link)
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def link_resumed(self, link: Any) -> None:
        self.paused.discard(link)
        if not self.paused and self._writable is not None:
            self._writable.set()

    async def backpressure(self) -> None:
        """Called by senders after queuing: waits while a peer is not reading (the
        link itself drops a peer that stays paused too long) and lets the loop run
        once every ``YIELD_EVERY`` messages so a tight send loop cannot starve it."""
        self._since_yield += 1
        if self.paused or self._since_yield >= YIELD_EVERY:
            await self.wait_writable()

    async def wait_writable(self) -> None:
        """The slow half of ``backpressure`` (senders inline the cheap test)."""
        if self.paused:
            self.flush()
            w = self._writable
            assert w is not None
            await w.wait()
        else:
            await asyncio.sleep(0)
        self._since_yield = 0

    # -- sending -------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def broadcast(self, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> None:
        """Queue ``obj`` for every link; sent at the end of this loop iteration."""
        w = self._bcast
        if w.full:
            self.flush()
        w.add(kind, etype, b"", msg_id, obj)
        self.stats["messages_out"] += 1
        if w.nbytes >= FLUSH_THRESHOLD_BYTES:
            self.flush()
        else:
            self._schedule()

    def send(self, target: str, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> bool:
        """Queue ``obj`` for ``target``: its direct link, else a transport that reaches
        it directly (Redis' per-node channel), else relayed by the neighbours."""
        if target in self.links:
            w = self._direct.get(target)
            if w is None:
                w = self._direct[target] = FrameWriter()
            if w.full:
                self.flush()
            w.add(kind, etype, target, msg_id, obj)
            self.stats["messages_out"] += 1
            if w.nbytes >= FLUSH_THRESHOLD_BYTES:
                self.flush()
            else:
                self._schedule()
            return True
        for x in self.extra_links:  # e.g. Redis: its own channel for that node
            if x.can_reach(target):
                x.send_direct(target, kind, etype, msg_id, obj)
                self.stats["messages_out"] += 1
                return True
        if not self.links and not self.extra_links:
            self.stats["unroutable"] += 1
            return False
        w = self._bcast
        if w.full:
            self.flush()
        w.add(kind, etype, target, msg_id, obj)
        self.stats["messages_out"] += 1
        self._schedule()
        return True

    def send_link(self, link: Any, kind: int, obj: Any) -> None:
        """Send one message to one link now, outside batching (handshake, replies)."""
        w = FrameWriter()
        w.add(kind, 0, b"", b"", obj)
        link.send_frame(w.finish())

    def flush(self) -> None:
        """Send everything queued: one frame per link for broadcasts, one per direct peer."""
        self._flush_handle = None
        st = self.stats
        w = self._bcast
        if w.count:
            frame = w.finish()
            for link in list(self.links.values()):
                link.send_frame(frame)
                st["frames_out"] += 1
                st["bytes_out"] += len(frame)
            for link in self.extra_links:
                link.send_frame(frame)
        for peer, dw in self._direct.items():
            if dw.count:
                frame = dw.finish()
                link = self.links.get(peer)
                if link is not None:
                    link.send_frame(frame)
                    st["frames_out"] += 1
                    st["bytes_out"] += len(frame)

    # -- receiving -----------------------------------------------------------------

    def on_frame(self, link: Any, data: Any) -> None:
        """Handle one frame from a link.  Bad frames are counted; repeat offenders closed."""
        st = self.stats
        sink = self.sink
        try:
            if sink is not None:
                rest = sink.receive(data, getattr(link, "member", False))
                n = sink.last_messages
            else:
                rest = self.decoder.feed(data)
                n = len(rest)
        except FrameError as exc:
            self._link_error(link, exc)
            return
        st["frames_in"] += 1
        st["messages_in"] += n
        if sink is not None:
            st["duplicates"] += sink.duplicates
            sink.duplicates = 0
            if sink.bad_events:
                bad, sink.bad_events = sink.bad_events, 0
                self._link_error(link, FrameError(f"{bad} malformed event payload(s)"))
        me = self._node_id_b
        first_time = self.dedupe.first_time
        for m in rest:
            target = m.target
            if target and target != me:
                self._forward(link, m)
                continue
            if sink is None and m.msg_id and not first_time(m.msg_id):
                st["duplicates"] += 1
                continue
            try:
                obj = decode_payload(m.kind, m.payload)
            except FrameError as exc:
                self._link_error(link, exc)
                continue
            self.deliver(link, m.kind, m, obj)

    def _forward(self, came_from: Any, m: Any) -> None:
        if m.msg_id and not self.dedupe.first_time(m.msg_id):
            self.stats["duplicates"] += 1
            return
        target = m.target.decode(errors="replace")
        link = self.links.get(target)
        if link is None or link is came_from:
            self.stats["unroutable"] += 1
            return
        w = self._direct.get(target)
        if w is None:
            w = self._direct[target] = FrameWriter()
        if w.full:
            self.flush()
        w.add_raw(m.kind, m.etype, m.target, m.msg_id, m.payload)
        self.stats["forwarded"] += 1
        self._schedule()

    def _link_error(self, link: Any, exc: Exception) -> None:
        self.stats["frame_errors"] += 1
        link.errors = getattr(link, "errors", 0) + 1
        peer = getattr(link, "peer_id", None) or getattr(link, "name", "?")
        self._errlog(("frame", peer), logging.WARNING, "bad frame from %s: %s", peer, exc)
        if link.errors >= MAX_LINK_ERRORS:
            link.close(f"too many protocol errors ({exc})")
