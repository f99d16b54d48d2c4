"""The drop-in API: enums, MeshConfig, MeshNode, RitualEvent, StateSnapshot, NodeCapability, imports."""

from __future__ import annotations

import importlib
import sys
import uuid
from datetime import datetime

import pytest

import spiralfast
import spiralfast.mesh
from spiralfast import (
    ConfigError,
    EventType,
    MeshConfig,
    MeshNode,
    NodeCapability,
    NodeStatus,
    RitualEvent,
    StateSnapshot,
    SyncState,
)

NAMES = [
    "MeshCore", "EventBus", "StateSynchronizer", "MeshRegistry", "MeshConfig", "MeshNode",
    "RitualEvent", "StateSnapshot", "NodeCapability", "NodeStatus", "EventType", "SyncState",
]


def test_both_import_paths_export_every_name() -> None:
    for name in NAMES:
        assert getattr(spiralfast, name) is getattr(spiralfast.mesh, name)


def test_compat_install_aliases_spiralcodex() -> None:
    from spiralfast import compat

    assert "spiralcodex" not in sys.modules  # opt-in, never automatic
    compat.install()
    try:
        mod = importlib.import_module("spiralcodex.mesh")
        assert mod.MeshCore is spiralfast.MeshCore
        from spiralcodex.mesh import EventBus  # type: ignore[import-not-found]

        assert EventBus is spiralfast.EventBus
    finally:
        compat.uninstall()
    assert "spiralcodex" not in sys.modules


def test_enum_values() -> None:
    assert [s.value for s in NodeStatus] == ["initializing", "active", "dormant", "disconnected", "ritual_mode"]
    assert EventType.NODE_HEARTBEAT.value == "heartbeat"
    assert [e.value for e in EventType] == [
        "node_register", "node_unregister", "heartbeat", "node_status_change", "agent_spawn",
        "agent_terminate", "agent_message", "agent_state_change", "ritual_start", "ritual_end",
        "ritual_cycle", "ritual_recursion", "system_alert", "system_metric", "system_error", "custom",
    ]
    assert [s.value for s in SyncState] == ["synced", "syncing", "out_of_sync", "conflict", "error"]


def test_config_defaults() -> None:
    c = MeshConfig()
    assert (c.node_id, c.mesh_name, c.websocket_port, c.redis_url) == (
        None, "spiral_codex_mesh", 8765, "redis://localhost:6379",
    )
    assert (c.heartbeat_interval, c.sync_interval, c.max_recursion_depth) == (30.0, 10.0, 42)
    assert (c.enable_redis, c.enable_websocket, c.ritual_channel) == (True, True, "spiral_ritual_events")
    assert (c.websocket_host, c.peers, c.auth_token, c.shared_categories) == ("127.0.0.1", [], None, None)
    c.websocket_port = 9000  # assignable
    assert c.websocket_port == 9000
    assert MeshConfig().peers is not MeshConfig().peers


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"websocket_port": 70000}, "websocket_port"),
        ({"websocket_port": -1}, "websocket_port"),
        ({"heartbeat_interval": -1.0}, "heartbeat_interval"),
        ({"sync_interval": 0}, "sync_interval"),
        ({"redis_url": "http://x"}, "redis_url"),
        ({"peers": ["http://host:1"]}, "peers"),
        ({"peers": "ws://a:1"}, "peers"),
        ({"peers": ["ws://host:99999"]}, "peers"),
        ({"mesh_name": ""}, "mesh_name"),
        ({"auth_token": ""}, "auth_token"),
        ({"shared_categories": "agents"}, "shared_categories"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as ei:
        MeshConfig(**kwargs)
    assert isinstance(ei.value, ValueError)


def test_invalid_value_assigned_later_fails_at_start() -> None:
    import asyncio

    from spiralfast import MeshCore

    c = MeshConfig(enable_redis=False, enable_websocket=False)
    c.heartbeat_interval = -5
    core = MeshCore(c)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        asyncio.run(core.start())
    assert core.running is False


def test_shared_categories_any_iterable() -> None:
    assert MeshConfig(shared_categories=("a", "b")).shared_categories == ["a", "b"]
    assert MeshConfig(shared_categories={"x"}).shared_categories == ["x"]


def _node(**kw: object) -> MeshNode:
    base = dict(
        node_id="n1", name="codex_node_n1", status=NodeStatus.ACTIVE, capabilities=["a"], recursion_depth=2,
        entropy_level=0.5, last_heartbeat=datetime(2026, 1, 2, 3, 4, 5), metadata={"m": 1},
    )
    base.update(kw)
    return MeshNode(**base)  # type: ignore[arg-type]


def test_mesh_node_dict_round_trip_and_equality() -> None:
    n = _node()
    d = n.to_dict()
    assert d["status"] == "active" and d["last_heartbeat"] == "2026-01-02T03:04:05"
    assert d["websocket_endpoint"] is None
    import json

    json.dumps(d)  # plain JSON types only
    assert MeshNode.from_dict(d) == n
    assert _node() == _node() and _node(name="other") != n


def test_ritual_event_dict_round_trip() -> None:
    ev = RitualEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.RITUAL_START, source_node="s", target_node=None,
        timestamp=datetime(2026, 5, 6, 7, 8, 9, 123456), data={"x": 1}, metadata={"y": 2},
    )
    assert ev.priority == 5 and ev.ttl is None
    d = ev.to_dict()
    assert d["event_type"] == "ritual_start" and d["timestamp"] == "2026-05-06T07:08:09.123456"
    back = RitualEvent.from_dict(d)
    assert back == ev and back.timestamp == ev.timestamp


def test_snapshot_and_capability_records() -> None:
    s = StateSnapshot("n", datetime(2026, 1, 1), 3, "h", {"categories": {}, "version": 3}, {"k": 1})
    assert StateSnapshot.from_dict(s.to_dict()) == s
    cap = NodeCapability(name="ritual", version="1", description="d", parameters={"p": 1})
    assert (cap.name, cap.version, cap.description, cap.parameters) == ("ritual", "1", "d", {"p": 1})
