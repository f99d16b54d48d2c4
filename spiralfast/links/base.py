"""The seam between the node and its transports.

A transport implements ``Link`` for each connection (or, for a shared bus such as
Redis, one ``Link`` for the bus) and is given a ``LinkHost`` (the node), which is all
it may call.  It never sees the node's configuration object, registry or internals:
its settings come as a small settings object of its own.
"""

from __future__ import annotations

from typing import Any, Protocol


class Link(Protocol):
    """One connection (or one bus) as the node sees it."""

    transport: str  # "websocket", "redis", "loopback", "nats"
    name: str  # a human-readable endpoint, for logs
    outbound: bool  # this side dialled
    shared_bus: bool  # many peers behind one link; frames carry their authenticated sender
    peer_id: str | None  # set by the node once the peer is authenticated
    session: Any  # the node's per-link session (``gate.Session``); opaque to the transport

    def send_frame(self, frame: bytes) -> bool: ...

    def close(self, reason: str = "") -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class LinkHost(Protocol):
    """What a transport may call: the node's side of the seam."""

    def link_opened(self, link: Link, outbound: bool) -> None: ...

    def link_closed(self, link: Link) -> None: ...

    def frame_received(self, link: Link, data: Any, sender: str | None = None) -> None: ...

    def messages_received(self, link: Link, sender: str, msgs: list[tuple[int, Any]]) -> None: ...

    def writable_changed(self, link: Link, writable: bool) -> None: ...

    def bus_up(self, link: Link) -> None: ...

    def bus_down(self, link: Link) -> None: ...

    def knows(self, node_id: str) -> bool: ...

    def linked(self, node_id: str) -> bool: ...
