"""spiralfast: a high-throughput mesh node, drop-in for the ``spiralcodex.mesh`` API."""

from ._version import __version__
from .errors import (
    AuthError,
    ConfigError,
    FrameError,
    HandshakeError,
    LinkError,
    ProtocolError,
    SpiralError,
)
from .mesh import (
    EventBus,
    EventType,
    MeshConfig,
    MeshCore,
    MeshNode,
    MeshRegistry,
    NodeCapability,
    NodeStatus,
    RitualEvent,
    StateSnapshot,
    StateSynchronizer,
    SyncState,
)

__all__ = [
    "__version__",
    "AuthError",
    "ConfigError",
    "EventBus",
    "EventType",
    "FrameError",
    "HandshakeError",
    "LinkError",
    "MeshConfig",
    "MeshCore",
    "MeshNode",
    "MeshRegistry",
    "NodeCapability",
    "NodeStatus",
    "ProtocolError",
    "RitualEvent",
    "SpiralError",
    "StateSnapshot",
    "StateSynchronizer",
    "SyncState",
]
