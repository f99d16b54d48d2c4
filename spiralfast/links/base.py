"""The seam between the node and its transports.

A transport implements ``Link`` for each connection (or, for a shared bus such as
Redis, one ``Link`` for the bus) and is given a ``LinkHost`` (the node), which is all
it may call.  It never sees the node's configuration object, registry or internals:
its settings come as a small settings object of its own.

Whatever else the node asks of a transport is a declared protocol here, checked with
``isinstance`` (all are ``runtime_checkable``): ``Pinger`` (a link measuring its round
trip), ``Dialer`` (keeping links to endpoints, and forgetting a node's), ``LegacyRouter``
(the old JSON format on Redis), ``BusLink`` (a shared bus: direct channels, pacing, and
the sealed payloads the gate opens for it) and ``StreamCatchUp`` (a bus keeping
broadcasts, read again after a restart).

Trust lives in the node's gate: a bus link never opens a sealed payload itself.  It
hands each one to ``LinkHost.bus_payload`` with its channel; the gate opens it with the
link's ``sealer`` (or ``control_sealer``), counts what it refuses, rate-limits per
sender, and calls the link back: ``bus_frame``/``bus_delivered`` around a data frame's
delivery, ``on_control`` for a control message (acks, joins, leave notices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..wire.schema import Event

#: What ``Link.info`` returns: figures and states for status pages (JSON values).
LinkInfo = dict[str, Any]
#: A node's own record (gossip), as the node's membership writes it.
Record = dict[str, Any]
#: A mesh frame as it is received: bytes, or a view into the transport's read buffer.
FrameData = bytes | bytearray | memoryview
#: A bus control message, decoded by the gate (a msgpack map).
ControlMessage = dict[object, object]
#: Messages of the old JSON format, already decoded: (kind, schema object).
DecodedMessages = list[tuple[int, object]]


class LinkSession(Protocol):
    """The node's per-link session (``node.gate.Session``): a transport reads its state."""

    state: str


class Link(Protocol):
    """One connection (or one bus) as the node sees it."""

    transport: str  # "websocket", "redis", "loopback", "nats"
    name: str  # a human-readable endpoint, for logs
    outbound: bool  # this side dialled
    shared_bus: bool  # many peers behind one link; frames carry their authenticated sender
    peer_id: str | None  # set by the node once the peer is authenticated
    session: LinkSession | None  # set by the node (``gate.Session``)

    def send_frame(self, frame: bytes) -> bool: ...

    def close(self, reason: str = "") -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def info(self) -> LinkInfo: ...


class Opener(Protocol):
    """Opens a sealed bus payload (``busauth.BusSealer``): (sender, counter, body), or raises
    ``AuthError``/``FrameError``."""

    def open(self, channel: bytes, data: bytes) -> tuple[str, int, memoryview]: ...


@runtime_checkable
class Pinger(Protocol):
    """A link that measures its round trip (WebSocket pings)."""

    def ping(self) -> None: ...


@runtime_checkable
class Dialer(Protocol):
    """A transport that keeps links to endpoints (WebSocket)."""

    def dial(self, url: str, permanent: bool = False, expected_id: str | None = None) -> None: ...

    def forget(self, node_id: str) -> None: ...


@runtime_checkable
class LegacyRouter(Protocol):
    """A bus that also speaks the old JSON format (Redis, for ``spiralcodex.mesh`` nodes)."""

    def is_legacy(self, node_id: str) -> bool: ...

    def send_legacy(self, node_id: str, env: Record) -> None: ...

    def legacy_broadcast(self, ev: Event) -> None: ...

    def heartbeat(self) -> None: ...


@runtime_checkable
class BusLink(Link, Protocol):
    """A shared bus (Redis, NATS): one link, many senders, each payload sealed."""

    node_id: str
    stats: dict[str, int]

    @property
    def sealer(self) -> Opener:
        """Opens the data channels' payloads."""
        ...

    @property
    def control_sealer(self) -> Opener:
        """Opens the control channel's (acks, joins, leave notices)."""
        ...

    def can_reach(self, node_id: str) -> bool: ...

    def send_direct(self, target: str, kind: int, etype: int, msg_id: bytes | str, obj: object) -> None: ...

    def hold_acks(self, sender: str, seconds: float) -> None: ...

    def bus_frame(self, channel: str, sender: str, offset: int, frame: memoryview) -> bool:
        """An opened data frame: the link's own bookkeeping (its echo, frames held during
        a catch-up); True when the gate should deliver it now."""
        ...

    def bus_delivered(self, sender: str, offset: int) -> None:
        """A frame of ``sender``'s up to ``offset`` was delivered: ack it in time."""
        ...

    def on_control(self, sender: str, message: ControlMessage) -> None:
        """An opened, decoded control message from ``sender`` (never this node)."""
        ...


@runtime_checkable
class StreamCatchUp(Protocol):
    """A bus that keeps broadcasts (NATS JetStream) and can deliver them again."""

    stream_on: bool
    connected: bool

    async def stream_catch_up(self, since: float) -> None: ...


#: A catch-up's check of one opened replayed frame: (sender, frame) -> False when refused.
ReplayCheck = Callable[[str, memoryview], bool]


class LinkHost(Protocol):
    """What a transport may call: the node's side of the seam."""

    def link_opened(self, link: Link, outbound: bool) -> None: ...

    def link_closed(self, link: Link) -> None: ...

    def frame_received(self, link: Link, data: FrameData, sender: str | None = None) -> None: ...

    def messages_received(self, link: Link, sender: str, msgs: DecodedMessages) -> None: ...

    def writable_changed(self, link: Link, writable: bool) -> None: ...

    def bus_up(self, link: Link) -> None: ...

    def bus_down(self, link: Link) -> None: ...

    def bus_payload(self, link: BusLink, channel: str, data: bytes, control: bool = False) -> None:
        """A sealed payload as it came off the bus, for the gate to open and route."""
        ...

    def bus_replayed(self, link: BusLink, channel: str, data: bytes, opener: Opener, check: ReplayCheck) -> None:
        """A sealed payload kept by the bus (a catch-up), opened by the gate with ``opener``."""
        ...

    def knows(self, node_id: str) -> bool: ...

    def linked(self, node_id: str) -> bool: ...

    def local_record(self) -> Record: ...
