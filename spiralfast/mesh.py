"""``spiralfast.mesh``: the same names as ``spiralcodex.mesh`` (and ``spiralfast``)."""

from .errors import NoNodeForTask, TaskError, TaskTimeout
from .node.bus import EventBus
from .node.config import MeshConfig
from .node.core import MeshCore
from .node.registry import MeshRegistry
from .node.sync import StateSynchronizer
from .records import (
    EventType,
    MeshNode,
    NodeCapability,
    NodeStatus,
    RitualEvent,
    StateSnapshot,
    SyncState,
)

__all__ = [
    "EventBus",
    "EventType",
    "MeshConfig",
    "MeshCore",
    "MeshNode",
    "MeshRegistry",
    "NoNodeForTask",
    "NodeCapability",
    "NodeStatus",
    "RitualEvent",
    "StateSnapshot",
    "StateSynchronizer",
    "SyncState",
    "TaskError",
    "TaskTimeout",
]
