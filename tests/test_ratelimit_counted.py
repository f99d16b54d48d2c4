"""Every rate-limit refusal is counted (issue 24, item 7): in
``get_mesh_status()["counters"]`` (``rate_limited``, and by who went over) and in
``spiralfast_rate_limited_total``: an observer over its burst (a real node process,
reached the way the CLI reaches it), a member link, and a member on a bus (Redis,
NATS), where the sender is slowed through the bus's acks and nothing is dropped."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.client import ObserverClient

from . import services
from .conftest import require, wait_for
from .procs import NodeProc


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _cli_status(url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "spiralfast", "mesh", "status", "--node", url, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


async def test_an_observer_over_its_burst_is_counted_in_the_metric_and_the_status() -> None:
    # A burst of 5 at 0.2/s: the 12 writes below would need 35 s to stay under it.
    node = NodeProc("rlc-obs", "--rate-limit", "0.2", "--rate-burst", "5")
    loop = asyncio.get_running_loop()
    try:
        port = node.port
        assert await loop.run_in_executor(None, _metric, port, "spiralfast_rate_limited_total") == 0
        c = await ObserverClient.connect(node.url)  # what `spiralfast mesh publish` uses
        try:
            results = []
            for i in range(12):
                try:
                    await c.query("publish", type="x", data={"i": i})
                    results.append("ok")
                except Exception as exc:
                    results.append(str(exc))
        finally:
            c.close()
        assert results[:5] == ["ok"] * 5  # the positive path: within the burst, accepted
        refused = sum("rate limit" in r for r in results)
        assert refused >= 1
        total = await loop.run_in_executor(None, _metric, port, "spiralfast_rate_limited_total")
        assert total == refused
        st = await loop.run_in_executor(None, _cli_status, node.url)
        assert st["counters"]["rate_limited"] == refused
        assert st["router"]["rate_limited_observers"] == refused
        assert st["router"]["rate_limited_members"] == 0
    finally:
        node.stop()


async def test_a_member_link_over_its_rate_is_counted_and_loses_nothing() -> None:
    base: dict[str, Any] = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5)
    b = MeshCore(MeshConfig(node_id="rlc-b", rate_limit=2000, rate_burst=200, **base))
    await b.start()
    a = MeshCore(MeshConfig(node_id="rlc-a", peers=[b.local_node.websocket_endpoint or ""], **base))
    await a.start()
    got: list[int] = []
    b.register_event_handler("r", lambda env: got.append(env["data"]["i"]))
    try:
        await wait_for(lambda: "rlc-a" in b.nodes and "rlc-b" in a.nodes)
        for i in range(2000):
            await a.broadcast_event("r", {"i": i})
        await wait_for(lambda: len(got) == 2000, timeout=30)
        assert got == list(range(2000))
        st = b.get_mesh_status()
        assert st["counters"]["rate_limited"] > 0
        assert st["router"]["rate_limited_members"] == st["counters"]["rate_limited"]
    finally:
        await a.stop()
        await b.stop()


def _bus_ok(kind: str) -> str:
    """The suite's Redis or NATS (tests/services.py)."""
    svc = services.nats() if kind == "nats" else services.redis()
    require(svc.available, svc.missing)
    return svc.url


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_a_bus_sender_over_its_rate_is_counted_slowed_and_loses_nothing(kind: str) -> None:
    url = _bus_ok(kind)
    mesh = "rlc_" + uuid.uuid4().hex[:8]

    def cfg(nid: str, **kw: Any) -> MeshConfig:
        bus: dict[str, Any] = (dict(enable_redis=False, nats_url=url) if kind == "nats"
                               else dict(redis_url=url, ritual_channel=mesh))
        return MeshConfig(node_id=nid, mesh_name=mesh, enable_websocket=False, heartbeat_interval=0.5, **bus, **kw)

    # Sent in well under (n - burst) / rate = 5.8 s: over the rate.  On a bus the sender is
    # slowed once it is a lag window ahead of b's held-back acks (it sends that much at once).
    rate, burst, n = 1000, 200, 6000
    b = MeshCore(cfg("rlc-bus-b", rate_limit=rate, rate_burst=burst))
    a = MeshCore(cfg("rlc-bus-a"))
    got: list[int] = []
    b.register_event_handler("r", lambda env: got.append(env["data"]["i"]))
    await b.start()
    await a.start()
    try:
        await wait_for(lambda: "rlc-bus-a" in b.nodes and "rlc-bus-b" in a.nodes, timeout=15)
        for i in range(n):  # 9 MB, more than the bus's lag window (2 MiB Redis, 4 MiB NATS)
            await a.broadcast_event("r", {"i": i, "pad": "x" * 1500})
            if i % 50 == 0:  # a sender that lets its loop run (b shares it here) hears b's acks
                await asyncio.sleep(0.005)
        await wait_for(lambda: len(got) == n, timeout=60)
        assert sorted(got) == list(range(n))  # slowed, never dropped (Redis does not promise order)
        st = b.get_mesh_status()
        assert st["counters"]["rate_limited"] > 0
        assert st["router"]["rate_limited_bus"] == st["counters"]["rate_limited"]
        assert "rlc-bus-a" in b.nodes
        bus = a.nats if kind == "nats" else a.redis
        assert bus is not None and bus.stats["paced"] >= 1  # the sender waited for b's held-back acks
    finally:
        await a.stop()
        await b.stop()
