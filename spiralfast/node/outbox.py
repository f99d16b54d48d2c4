"""The outbox: every message this node sends leaves through here.

Broadcasts are encoded once into a shared frame writer and the same frame bytes go
to every member link; direct messages go to the target's own writer, else to a bus
link that reaches the target (Redis' per-node channel), else are relayed by the
neighbours.  Writers are flushed once per event-loop iteration, or as soon as one
holds ``FLUSH_THRESHOLD_BYTES``.

Backpressure: a link whose peer is not reading is ``paused``; senders then wait in
``wait_writable`` (the link drops a peer that stays paused too long).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..wire.codec import FrameWriter
from ..wire.limits import FLUSH_THRESHOLD_BYTES

#: A tight send loop yields to the event loop after this many messages, so reads,
#: heartbeats and flushes keep happening during a burst.
YIELD_EVERY = 1024


class Outbox:
    """Per-destination frame writers of one node, flushed per loop iteration."""

    def __init__(self) -> None:
        self.links: dict[str, Any] = {}  # peer id -> authenticated member link (direct route)
        self.bus_links: list[Any] = []  # links without a single peer (Redis, NATS)
        self.bcast = FrameWriter()
        self._direct: dict[str, Any] = {}  # peer id -> FrameWriter
        self.flush_handle: asyncio.Handle | None = None
        self.paused: set[Any] = set()  # links whose peer is not reading
        self._writable: asyncio.Event | None = None
        self._since_yield = 0
        self.stats = {"frames_out": 0, "messages_out": 0, "bytes_out": 0, "forwarded": 0, "unroutable": 0}

    # -- links ----------------------------------------------------------------------

    def add_link(self, peer_id: str, link: Any) -> Any:
        """Make ``link`` the route to ``peer_id``; returns the link it replaced, if any."""
        old = self.links.get(peer_id)
        self.links[peer_id] = link
        return old if old is not link else None

    def remove_link(self, peer_id: str, link: Any) -> None:
        self.link_resumed(link)
        if self.links.get(peer_id) is link:
            del self.links[peer_id]
            w = self._direct.pop(peer_id, None)
            if w is not None:
                w.clear()

    def clear(self) -> None:
        self.links.clear()
        self.bus_links.clear()
        self._direct.clear()
        self.bcast.clear()
        self.paused.clear()
        if self._writable is not None:
            self._writable.set()

    # -- backpressure ---------------------------------------------------------------

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
        """Called by senders after queuing: waits while a peer is not reading and
        lets the loop run once every ``YIELD_EVERY`` messages."""
        self._since_yield += 1
        if self.paused or self._since_yield >= YIELD_EVERY:
            await self.wait_writable()

    async def wait_writable(self) -> None:
        """The slow half of ``backpressure`` (the send hot path inlines the cheap test)."""
        if self.paused:
            self.flush()
            w = self._writable
            assert w is not None
            await w.wait()
        else:
            await asyncio.sleep(0)
        self._since_yield = 0

    # -- sending --------------------------------------------------------------------

    def schedule(self) -> None:
        if self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def _queue(self, w: Any, kind: int, etype: int, target: Any, msg_id: Any, obj: Any) -> None:
        if w.full:
            self.flush()
        w.add(kind, etype, target, msg_id, obj)
        self.stats["messages_out"] += 1
        if w.nbytes >= FLUSH_THRESHOLD_BYTES:
            self.flush()
        else:
            self.schedule()

    def broadcast(self, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> None:
        """Queue ``obj`` for every member link and bus; sent at the end of this iteration."""
        self._queue(self.bcast, kind, etype, b"", msg_id, obj)

    def send(self, target: str, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> bool:
        """Queue ``obj`` for ``target``; False when nothing could carry it."""
        if target in self.links:
            w = self._direct.get(target)
            if w is None:
                w = self._direct[target] = FrameWriter()
            self._queue(w, kind, etype, target, msg_id, obj)
            return True
        for x in self.bus_links:  # e.g. Redis: its own channel for that node
            if x.can_reach(target):
                x.send_direct(target, kind, etype, msg_id, obj)
                self.stats["messages_out"] += 1
                return True
        if not self.links and not self.bus_links:
            self.stats["unroutable"] += 1
            return False
        self._queue(self.bcast, kind, etype, target, msg_id, obj)  # relayed by the neighbours
        return True

    def forward(self, target: str, came_from: Any, kind: int, etype: int, target_b: bytes, msg_id: bytes,
                payload: bytes) -> bool:
        """Relay an already-encoded message to ``target``'s direct link."""
        link = self.links.get(target)
        if link is None or link is came_from:
            self.stats["unroutable"] += 1
            return False
        w = self._direct.get(target)
        if w is None:
            w = self._direct[target] = FrameWriter()
        if w.full:
            self.flush()
        w.add_raw(kind, etype, target_b, msg_id, payload)
        self.stats["forwarded"] += 1
        self.schedule()
        return True

    def flush(self) -> None:
        """Send everything queued: one frame per link for broadcasts, one per direct peer."""
        self.flush_handle = None
        st = self.stats
        w = self.bcast
        if w.count:
            frame = w.finish()
            for link in list(self.links.values()):
                link.send_frame(frame)
                st["frames_out"] += 1
                st["bytes_out"] += len(frame)
            for link in self.bus_links:
                link.send_frame(frame)
        for peer, dw in self._direct.items():
            if dw.count:
                frame = dw.finish()
                link = self.links.get(peer)
                if link is not None:
                    link.send_frame(frame)
                    st["frames_out"] += 1
                    st["bytes_out"] += len(frame)


def single_frame(kind: int, obj: Any) -> bytes:
    """One message in a frame of its own (handshake, replies: sent at once, unbatched)."""
    w = FrameWriter()
    w.add(kind, 0, b"", b"", obj)
    return bytes(w.finish())
