"""Public records of the drop-in API (the drop-in API: MeshNode, RitualEvent, StateSnapshot...).

The enums live in ``enums``; ``RitualEvent`` in ``event`` (compiled, or its twin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._time import parse_dt as _parse_dt
from .enums import EventType, NodeStatus, SyncState
from .wire.event import RitualEvent


def _iso(dt: datetime) -> str:
    return dt.isoformat()


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


__all__ = [
    "EventType", "MeshNode", "NodeCapability", "NodeStatus", "RitualEvent", "StateSnapshot", "SyncState",
]
