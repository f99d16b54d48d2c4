"""The drop-in API: MeshRegistry: membership, heartbeats, scoring, topology, health, callbacks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from spiralfast import MeshNode, MeshRegistry, NodeStatus


def node(nid: str, caps: list[str], depth: int = 0, entropy: float = 0.0,
         status: NodeStatus = NodeStatus.ACTIVE, age: float = 0.0) -> MeshNode:
    return MeshNode(nid, f"codex_node_{nid}", status, caps, depth, entropy,
                    datetime.now() - timedelta(seconds=age), {})


def test_defaults() -> None:
    r = MeshRegistry("local")
    assert (r.local_node_id, r.nodes, r.node_metrics, r.discovery_callbacks, r.heartbeat_timeout) == (
        "local", {}, {}, [], 90.0,
    )
    assert r.node_capabilities == {}


def test_register_unregister_and_callbacks() -> None:
    r = MeshRegistry("local")
    seen: list[tuple[str, str]] = []
    r.register_discovery_callback(lambda ev, n: seen.append((ev, n.node_id)))
    r.register_discovery_callback(lambda ev, n: 1 / 0)  # a failing callback never breaks the registry
    assert r.register_node(node("a", ["x", "y"])) is True
    assert r.get_node("a") is not None and r.get_node("zz") is None
    assert r.node_capabilities == {"x": {"a"}, "y": {"a"}}
    assert r.get_node_metrics("a") is not None and r.get_node_metrics("zz") is None
    assert r.unregister_node("a") is True
    assert r.unregister_node("a") is False
    assert seen == [("node_discovered", "a"), ("node_lost", "a")]
    assert r.node_capabilities == {}


def test_heartbeat_update() -> None:
    r = MeshRegistry("l")
    r.register_node(node("a", ["x"], age=500))
    assert r.get_active_nodes() == []
    assert r.update_node_heartbeat("a", {"status": "ritual_mode", "recursion_depth": 4, "entropy_level": 0.3})
    a = r.get_node("a")
    assert a is not None and (a.status, a.recursion_depth, a.entropy_level) == (NodeStatus.RITUAL_MODE, 4, 0.3)
    assert [n.node_id for n in r.get_active_nodes()] == ["a"]
    assert r.update_node_heartbeat("nope", {}) is False
    assert r.get_node_metrics("a")["heartbeat_count"] == 1  # type: ignore[index]


def test_queries_by_capability_and_status() -> None:
    r = MeshRegistry("l")
    r.register_node(node("a", ["x"]))
    r.register_node(node("b", ["x", "y"], status=NodeStatus.DORMANT))
    assert sorted(n.node_id for n in r.get_nodes_by_capability("x")) == ["a", "b"]
    assert [n.node_id for n in r.get_nodes_by_capability("y")] == ["b"]
    assert [n.node_id for n in r.get_nodes_by_status(NodeStatus.DORMANT)] == ["b"]
    assert len(r.get_all_nodes()) == 2


def test_find_best_node_scoring() -> None:
    r = MeshRegistry("l")
    r.register_node(node("deep", ["t"], depth=10))  # 80
    r.register_node(node("noisy", ["t"], entropy=1.5))  # 85
    r.register_node(node("ritual", ["t"], depth=15, status=NodeStatus.RITUAL_MODE))  # 100-30+20 = 90
    r.register_node(node("stale", ["t"], age=1000))  # inactive, ignored
    r.register_node(node("other", ["u"]))
    best = r.find_best_node_for_task("t")
    assert best is not None and best.node_id == "ritual"
    assert r.find_best_node_for_task("none") is None
    best2 = r.find_best_node_for_task("t", {"max_recursion_depth": 12})
    assert best2 is not None and best2.node_id == "noisy"


def test_cleanup_stale_nodes_never_removes_local() -> None:
    r = MeshRegistry("l")
    r.register_node(node("l", ["x"], age=1000))
    r.register_node(node("old", ["x"], age=1000))
    r.register_node(node("new", ["x"]))
    assert r.cleanup_stale_nodes() == ["old"]
    assert sorted(r.nodes) == ["l", "new"]


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # (built when the test runs: heartbeats made at collection time age out in a long run)
        (lambda: [], 0.0),
        # 2/2 active -> 70, capabilities {a,b,c} -> 15, no ritual -> 0
        (lambda: [node("1", ["a", "b"]), node("2", ["c"])], 85.0),
        # 1/2 active -> 35, 5 caps -> 20 (capped), 1 ritual -> 2
        (lambda: [node("1", ["a", "b", "c", "d", "e"], status=NodeStatus.RITUAL_MODE), node("2", [], age=1000)], 57.0),
        # 6 ritual nodes -> 10 (capped), 1 cap -> 5, all active -> 70
        (lambda: [node(str(i), ["a"], status=NodeStatus.RITUAL_MODE) for i in range(6)], 85.0),
    ],
)
def test_network_health_formula(nodes: Callable[[], list[MeshNode]], expected: float) -> None:
    r = MeshRegistry("l")
    nodes = nodes()  # type: ignore[assignment]
    for n in nodes:
        r.register_node(n)
    assert r._calculate_network_health() == pytest.approx(expected)
    topo = r.get_mesh_topology()
    assert topo["network_health"] == pytest.approx(expected)
    assert topo["total_nodes"] == len(nodes)


def test_topology_shape_and_status() -> None:
    r = MeshRegistry("l")
    r.register_node(node("a", ["x"]))
    r.register_node(node("b", ["x", "y"], status=NodeStatus.RITUAL_MODE, age=1000))
    t: dict[str, Any] = r.get_mesh_topology()
    assert t["active_nodes"] == 1 and t["node_statuses"] == {"active": 1, "ritual_mode": 1}
    assert t["capabilities"] == {"x": 2, "y": 1}
    s = r.get_registry_status()
    assert s["total_nodes"] == 2 and s["local_node_id"] == "l"
