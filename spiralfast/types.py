"""Public records and enums of the drop-in API (SPEC.md: Enums, MeshNode, RitualEvent...)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


class NodeStatus(Enum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    DORMANT = "dormant"
    DISCONNECTED = "disconnected"
    RITUAL_MODE = "ritual_mode"


class EventType(Enum):
    NODE_REGISTER = "node_register"
    NODE_UNREGISTER = "node_unregister"
    NODE_HEARTBEAT = "heartbeat"
    NODE_STATUS_CHANGE = "node_status_change"
    AGENT_SPAWN = "agent_spawn"
    AGENT_TERMINATE = "agent_terminate"
    AGENT_MESSAGE = "agent_message"
    AGENT_STATE_CHANGE = "agent_state_change"
    RITUAL_START = "ritual_start"
    RITUAL_END = "ritual_end"
    RITUAL_CYCLE = "ritual_cycle"
    RITUAL_RECURSION = "ritual_recursion"
    SYSTEM_ALERT = "system_alert"
    SYSTEM_METRIC = "system_metric"
    SYSTEM_ERROR = "system_error"
    CUSTOM = "custom"


class SyncState(Enum):
    SYNCED = "synced"
    SYNCING = "syncing"
    OUT_OF_SYNC = "out_of_sync"
    CONFLICT = "conflict"
    ERROR = "error"


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def _parse_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value)
    return datetime.fromisoformat(str(value))


@dataclass(eq=True)
class MeshNode:
    """A node of the mesh as the registry and ``MeshCore.nodes`` see it."""

    node_id: str
    name: str
    status: NodeStatus
    capabilities: list[str]
    recursion_depth: int
    entropy_level: float
    last_heartbeat: datetime
    metadata: dict[str, Any]
    websocket_endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: status as its value, last_heartbeat as ISO 8601."""
        return {
            "node_id": self.node_id,
            "name": self.name,
            "status": self.status.value,
            "capabilities": list(self.capabilities),
            "recursion_depth": self.recursion_depth,
            "entropy_level": self.entropy_level,
            "last_heartbeat": _iso(self.last_heartbeat),
            "metadata": dict(self.metadata),
            "websocket_endpoint": self.websocket_endpoint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeshNode:
        """Inverse of ``to_dict``; raises ``KeyError``/``ValueError`` on a bad dict."""
        return cls(
            node_id=str(d["node_id"]),
            name=str(d.get("name", "")),
            status=NodeStatus(d.get("status", "active")),
            capabilities=list(d.get("capabilities") or []),
            recursion_depth=int(d.get("recursion_depth", 0)),
            entropy_level=float(d.get("entropy_level", 0.0)),
            last_heartbeat=_parse_dt(d.get("last_heartbeat") or datetime.now()),
            metadata=dict(d.get("metadata") or {}),
            websocket_endpoint=d.get("websocket_endpoint"),
        )


class RitualEvent:
    """An event on the bus.

    ``timestamp`` is a ``datetime``; internally the event keeps the epoch float it
    was created with and builds the ``datetime`` on first access, which keeps
    ``publish`` cheap.
    """

    __slots__ = (
        "event_id", "event_type", "source_node", "target_node", "_ts", "_dt",
        "data", "metadata", "priority", "ttl",
    )

    def __init__(
        self,
        event_id: str,
        event_type: EventType,
        source_node: str,
        target_node: str | None,
        timestamp: datetime | float,
        data: dict[str, Any],
        metadata: dict[str, Any],
        priority: int = 5,
        ttl: int | float | None = None,
    ) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.source_node = source_node
        self.target_node = target_node
        if isinstance(timestamp, datetime):
            self._dt: datetime | None = timestamp
            self._ts = timestamp.timestamp()
        else:
            self._dt = None
            self._ts = float(timestamp)
        self.data = data
        self.metadata = metadata
        self.priority = priority
        self.ttl = ttl

    @property
    def timestamp(self) -> datetime:
        dt = self._dt
        if dt is None:
            dt = self._dt = datetime.fromtimestamp(self._ts)
        return dt

    @timestamp.setter
    def timestamp(self, value: datetime) -> None:
        self._dt = value
        self._ts = value.timestamp()

    @property
    def epoch(self) -> float:
        """The timestamp as seconds since the epoch."""
        return self._ts

    def _key(self) -> tuple[Any, ...]:
        return (
            self.event_id, self.event_type, self.source_node, self.target_node, self.timestamp,
            self.data, self.metadata, self.priority, self.ttl,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RitualEvent):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"RitualEvent(event_id={self.event_id!r}, event_type={self.event_type}, "
            f"source_node={self.source_node!r}, target_node={self.target_node!r}, "
            f"timestamp={self.timestamp!r}, data={self.data!r}, metadata={self.metadata!r}, "
            f"priority={self.priority!r}, ttl={self.ttl!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        et = self.event_type
        return {
            "event_id": self.event_id,
            "event_type": et.value if isinstance(et, EventType) else et,
            "source_node": self.source_node,
            "target_node": self.target_node,
            "timestamp": _iso(self.timestamp),
            "data": self.data,
            "metadata": self.metadata,
            "priority": self.priority,
            "ttl": self.ttl,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RitualEvent:
        return cls(
            event_id=d["event_id"],
            event_type=EventType(d["event_type"]),
            source_node=d["source_node"],
            target_node=d.get("target_node"),
            timestamp=_parse_dt(d["timestamp"]),
            data=d.get("data") or {},
            metadata=d.get("metadata") or {},
            priority=int(d.get("priority", 5)),
            ttl=d.get("ttl"),
        )


@dataclass
class StateSnapshot:
    """A point-in-time copy of a node's synchronised state."""

    node_id: str
    timestamp: datetime
    version: int
    state_hash: str
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "timestamp": _iso(self.timestamp),
            "version": self.version,
            "state_hash": self.state_hash,
            "data": self.data,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateSnapshot:
        return cls(
            node_id=d["node_id"],
            timestamp=_parse_dt(d["timestamp"]),
            version=int(d["version"]),
            state_hash=d["state_hash"],
            data=d["data"],
            metadata=d.get("metadata") or {},
        )


@dataclass
class NodeCapability:
    name: str
    version: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


def now_epoch() -> float:
    return time.time()
