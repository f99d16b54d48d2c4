"""The ports of the node's own parts: what the link host (``spiralfast.node.host``),
catch-up (``spiralfast.node.catchup``) and the link assembly
(``spiralfast.node.assembly``) need from the node, as small typed Protocols.

``MeshCore`` implements them; none of those modules imports ``MeshCore`` (only entry
points do, see docs/architecture.md).  A unit test can build a ``NodeHost`` over a
fake that has just these attributes.

Links are typed ``Any`` here: this layer sits below ``spiralfast.links`` and cannot
name its ``Link`` protocol (the host, above it, does).  No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..protocol.membership import Membership
from ..protocol.reliability import DedupeWindows, RetransmitBuffer
from ..records import MeshNode
from ..wire import schema
from ..wire.signing import NodeKey
from .ops import HttpSource, QueryHost

__all__ = [
    "AssemblyNode", "CatchUpNode", "CatchUpPort", "DispatcherPort", "GatePort", "HostConfig", "HostNode",
    "KeyPinsPort", "OutboxPort", "SenderPort", "SinkPort", "StateSyncPort", "TaskNotices",
]

#: A message to send: ``(kind, struct)``.
Message = tuple[int, Any]


class HostConfig(Protocol):
    """The settings the host reads (``MeshConfig`` has them)."""

    mesh_name: str
    auth_token: str | None
    handshake_timeout: float
    heartbeat_interval: float
    retransmit_window: float
    retransmit_buffer_bytes: int
    enable_redis: bool


class OutboxPort(Protocol):
    """The node's send side (``node.outbox.Outbox``)."""

    links: dict[str, Any]  # peer id -> authenticated member link
    bus_links: list[Any]  # bus links (Redis, NATS)

    def add_link(self, peer_id: str, link: Any) -> Any: ...

    def remove_link(self, peer_id: str, link: Any) -> None: ...

    def link_paused(self, link: Any) -> None: ...

    def link_resumed(self, link: Any) -> None: ...

    def broadcast(self, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> None: ...

    def send(self, target: str, kind: int, etype: int, msg_id: bytes | str, obj: Any) -> bool: ...

    def forward(self, target: str, came_from: Any, kind: int, etype: int, target_b: bytes, msg_id: bytes,
                payload: Any) -> bool: ...


class SinkPort(Protocol):
    """The compiled receive sink's ownership of origins (``fastpath.EventSink``)."""

    reserved_refused: int

    def claim(self, origin: str, node: str) -> None: ...

    def release(self, node: str) -> None: ...

    def on_event(self, ev: Any) -> None: ...


class GatePort(Protocol):
    """The receive side (``node.gate.Gate``)."""

    @property
    def sink(self) -> SinkPort: ...

    @property
    def dedupe(self) -> DedupeWindows: ...

    def on_frame(self, link: Any, data: Any, sender: str | None = None) -> None: ...

    def messages(self, link: Any, sender: str, msgs: list[tuple[int, Any]]) -> None: ...

    def bus_payload(self, link: Any, channel: str, data: bytes, control: bool = False) -> None: ...

    def bus_replayed(self, link: Any, channel: str, data: bytes, opener: Any,
                     check: Callable[[str, memoryview], bool]) -> None: ...

    def new_bucket(self) -> Any: ...


class DispatcherPort(Protocol):
    """Local delivery (``node.dispatch.Dispatcher``)."""

    reading_paused: bool
    handlers: dict[str, list[Any]]  # event type -> handlers

    def deliver(self, env: dict[str, Any]) -> None: ...

    def handler_failed(self, h: Any, env: dict[str, Any]) -> None: ...

    def announce(self, env: dict[str, Any]) -> None: ...

    def queue(self, env: dict[str, Any]) -> None: ...


class StateSyncPort(Protocol):
    """State sync as the host drives it (``node.sync.StateSynchronizer``)."""

    def before_rejoin(self) -> None: ...

    def digest_message(self, reply: bool = True) -> Message: ...

    def touch(self) -> None: ...

    def apply_entries(self, entries: list[Any]) -> int: ...

    def on_digest(self, peer_id: str | None, d: schema.StateDigest) -> list[Message]: ...

    def on_request(self, req: schema.StateRequest, peer_id: str | None = None) -> list[Message]: ...

    def on_clock_skew(self, peer_id: str | None, m: schema.ClockSkew) -> None: ...


class SenderPort(RetransmitBuffer, Protocol):
    """This node's broadcast sequence and retransmit buffer (``fastpath.EventSender``)."""

    seq: int
    prefix: str


class CatchUpPort(Protocol):
    """Catch-up across restarts as the host sees it (``node.catchup.CatchUp``)."""

    busy: set[str]

    def on_request(self, link: Any, sender: str | None, m: schema.CatchUpRequest) -> None: ...

    def on_batch(self, sender: str | None, m: schema.CatchUpBatch) -> None: ...


class TaskNotices(Protocol):
    """Membership news for the task subsystem (``tasks.TaskManager``)."""

    def node_joined(self, nid: str) -> None: ...

    def node_removed(self, nid: str, reason: str) -> None: ...


class KeyPinsPort(Protocol):
    """Bus senders' pinned keys (``busauth.KeyPins``)."""

    def get(self, node_id: str) -> bytes | None: ...

    def release(self, node_id: str) -> Any: ...


class HostNode(Protocol):
    """What ``NodeHost`` (the node's ``LinkHost``) needs from the node."""

    node_id: str
    running: bool
    id_taken: str | None
    counts: dict[str, int]
    local_node: MeshNode
    links: set[Any]  # every open link, any state
    observers: set[Any]  # observer links
    link_listeners: list[Callable[[str, bool], None]]
    ws: Any  # the WebSocket transport (dial, forget), or None
    redis: Any  # the Redis transport (heartbeat), or None

    @property
    def config(self) -> HostConfig: ...

    @property
    def key(self) -> NodeKey: ...

    @property
    def key_pins(self) -> KeyPinsPort: ...

    @property
    def membership(self) -> Membership: ...

    @property
    def nodes(self) -> dict[str, MeshNode]: ...

    @property
    def event_handlers(self) -> Mapping[str, Any]: ...

    @property
    def outbox(self) -> OutboxPort: ...

    @property
    def dispatcher(self) -> DispatcherPort: ...

    @property
    def state(self) -> StateSyncPort: ...

    @property
    def event_bus(self) -> Any: ...  # accept_remote(RitualEvent)

    @property
    def gate(self) -> GatePort: ...

    @property
    def sender(self) -> SenderPort: ...

    @property
    def catchup(self) -> CatchUpPort: ...

    @property
    def tasks(self) -> TaskNotices: ...

    @property
    def ops(self) -> QueryHost: ...  # what an observer's query may read or change


class CatchUpNode(Protocol):
    """What catch-up (``node.catchup.CatchUp``) needs from the node."""

    node_id: str
    running: bool
    eventlog: Any  # the event log (``store.eventlog.EventLog``), or None
    nats: Any  # the NATS transport (JetStream catch-up), or None

    @property
    def config(self) -> Any: ...

    @property
    def nodes(self) -> dict[str, MeshNode]: ...

    @property
    def outbox(self) -> OutboxPort: ...

    @property
    def gate(self) -> GatePort: ...

    @property
    def dispatcher(self) -> DispatcherPort: ...


class AssemblyNode(Protocol):
    """What the link assembly (``node.assembly``) needs from the node: its config, its
    ``LinkHost``, and the slots the transports it builds are kept in."""

    node_id: str
    ws: Any
    redis: Any
    nats: Any
    observer_ws: Any
    loopback: Any

    @property
    def config(self) -> Any: ...

    @property
    def host(self) -> Any: ...  # the node's LinkHost

    @property
    def local_node(self) -> MeshNode: ...

    @property
    def sender(self) -> Any: ...  # legacy: the Redis transport's old-format route

    @property
    def ops(self) -> HttpSource: ...  # what the HTTP endpoints served on the WebSocket port see
