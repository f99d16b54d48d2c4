"""Rate limits (``MeshConfig.rate_limit`` / ``rate_burst``): a member over its rate is
slowed by backpressure and loses nothing; an observer over it gets a clear refusal."""

from __future__ import annotations

from typing import Any

from spiralfast import MeshConfig, MeshCore
from spiralfast.client import ObserverClient

from .waiting import wait_until


async def test_member_over_its_rate_is_slowed_not_dropped() -> None:
    base: dict[str, Any] = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5)
    b = MeshCore(MeshConfig(node_id="rl-b", rate_limit=2000, rate_burst=200, **base))
    await b.start()
    a = MeshCore(MeshConfig(node_id="rl-a", peers=[b.local_node.websocket_endpoint or ""], **base))
    await a.start()
    got: list[int] = []
    b.register_event_handler("r", lambda env: got.append(env["data"]["i"]))
    try:
        await wait_until(lambda: "rl-a" in b.nodes and "rl-b" in a.nodes, '"rl-a" in b.nodes and "rl-b" in a.nodes')
        for i in range(4000):
            await a.broadcast_event("r", {"i": i})
        await wait_until(lambda: len(got) == 4000, 'len(got) == 4000', timeout=30)
        assert got == list(range(4000))
        assert b.get_mesh_status()["counters"]["rate_limited"] > 0
        assert "rl-a" in b.nodes and a.outbox.links  # slowed, never dropped
    finally:
        await a.stop()
        await b.stop()


async def test_observer_over_its_rate_is_refused_clearly() -> None:
    n = MeshCore(MeshConfig(node_id="rl-n", enable_redis=False, websocket_port=0, rate_limit=5, rate_burst=5))
    await n.start()
    try:
        c = await ObserverClient.connect(n.local_node.websocket_endpoint or "")
        results = []
        for i in range(20):
            try:
                await c.query("publish", type="x", data={"i": i})
                results.append("ok")
            except Exception as exc:
                results.append(str(exc))
        c.close()
        assert results[:5] == ["ok"] * 5
        assert any("rate limit" in r for r in results[5:])
        c = await ObserverClient.connect(n.local_node.websocket_endpoint or "")
        writes = []
        for i in range(20):  # state writes count against the same limit as publishes
            try:
                await c.query("state_set", category="agents", key=f"k{i}", value=i)
                writes.append("ok")
            except Exception as exc:
                writes.append(str(exc))
        c.close()
        assert any("rate limit" in r for r in writes)
    finally:
        await n.stop()
