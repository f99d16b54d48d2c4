"""In-process link: several MeshCores in one process form a mesh.

Frames still go through the codec (and the handshake), so an in-process mesh
behaves like a networked one; delivery is one ``call_soon`` per frame, which
keeps order.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import Protocol

from .base import LinkHost, LinkInfo, LinkSession


class HubNode(Protocol):
    """A node joined by the hub (``MeshCore``): its ``LinkHost`` and its open links."""

    @property
    def host(self) -> LinkHost: ...

    @property
    def links(self) -> Iterable[object]: ...


_ids = itertools.count(1)


class LoopbackLink:
    transport = "loopback"
    shared_bus = False

    def __init__(self, owner: LinkHost, outbound: bool = False) -> None:
        self.owner = owner
        self.outbound = outbound
        self.session: LinkSession | None = None
        self.peer: LoopbackLink | None = None
        self.peer_id: str | None = None
        self.errors = 0
        self.closed = False
        self.name = f"loopback-{next(_ids)}"
        self.frames_out = 0
        self.bytes_out = 0

    def send_frame(self, frame: bytes) -> bool:
        peer = self.peer
        if self.closed or peer is None or peer.closed:
            return False
        self.frames_out += 1
        self.bytes_out += len(frame)
        asyncio.get_running_loop().call_soon(peer._receive, frame)
        return True

    def _receive(self, frame: bytes) -> None:
        if not self.closed:
            self.owner.frame_received(self, frame)

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.owner.link_closed(self)
        if self.peer is not None:
            self.peer.close(reason)

    def pause_reading(self) -> None:
        """In-process delivery cannot be paused (the sender's loop is ours)."""

    def resume_reading(self) -> None:
        pass

    def info(self) -> LinkInfo:
        return {"state": "closed" if self.closed else "open", "frames_out": self.frames_out, "bytes_out": self.bytes_out}


class LoopbackHub:
    """Joins the MeshCores given to it (``MeshCore(config, loopback=hub)``) into one mesh."""

    def __init__(self) -> None:
        self.cores: list[HubNode] = []

    def attach(self, core: HubNode) -> None:
        for other in self.cores:
            a, b = LoopbackLink(core.host, outbound=True), LoopbackLink(other.host)
            a.peer, b.peer = b, a
            core.host.link_opened(a, True)
            other.host.link_opened(b, False)
        self.cores.append(core)

    def detach(self, core: HubNode) -> None:
        if core in self.cores:
            self.cores.remove(core)
        for link in [lk for lk in list(core.links) if isinstance(lk, LoopbackLink)]:
            # Let the Leave already queued reach the peers before the links close.
            asyncio.get_running_loop().call_soon(link.close, "stopped")

    def partition(self, core: HubNode) -> None:
        """Cut ``core`` off from the others without a leave (a network partition)."""
        if core in self.cores:
            self.cores.remove(core)
        for link in [lk for lk in list(core.links) if isinstance(lk, LoopbackLink)]:
            link.close("partition")

    def heal(self, core: HubNode) -> None:
        """Reconnect a partitioned ``core`` to everyone in the hub."""
        if core not in self.cores:
            self.attach(core)
