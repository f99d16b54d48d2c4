"""``spiralfast.mesh``: the same names as ``spiralcodex.mesh`` (and ``spiralfast``)."""

from .bus import EventBus
from .config import MeshConfig
from .core import MeshCore
from .errors import NoNodeForTask, TaskError, TaskTimeout
from .registry import MeshRegistry
from .sync import StateSynchronizer
from .types import (
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
