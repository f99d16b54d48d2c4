"""Nodes on a bus alone (issue 24, item 8), as real ``spiralfast mesh start`` processes:

- two NATS-only (or Redis-only) nodes started at the same moment, and a third started
  later, know each other at once: each announces itself and says ``join`` once
  subscribed, and every member answers a join directly with its record, instead of
  waiting for the next heartbeat;
- such a node (``--no-websocket``) can be inspected: ``--observer-port`` keeps a port for
  the CLI, the dashboard and the HTTP API, with the token as on the mesh port; a peer
  joining there as a node is refused.

The bound on meeting is derived from the heartbeat: the nodes run with the default
``heartbeat_interval`` (30 s), and must list each other within JOIN_BOUND = 6 s of the
last one's start-up banner (a fifth of the interval: a round trip plus the polling, with a
wide margin for a loaded machine; without the join a node started later waited for the
members' next heartbeat, up to 30 s).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.client import ObserverClient
from spiralfast.errors import AuthError, HandshakeError

from . import services
from .conftest import free_port, require, wait_for
from .procs import NodeProc
from .waiting import wait_until_async

TOKEN = "bus-join-token-0123456789abcdef"
HEARTBEAT = 30.0  # the default
JOIN_BOUND = HEARTBEAT / 5


class BusNode(NodeProc):
    """``spiralfast mesh start --no-websocket`` on a bus, with an observer port (``url``)."""

    def __init__(self, node_id: str, mesh: str, bus: list[str]) -> None:
        port = free_port()
        super().__init__(node_id, "--no-websocket", "--observer-port", str(port), "--name", mesh, "--token", TOKEN,
                         "--no-db", *bus, port=port, hb=HEARTBEAT)

    def start(self) -> None:
        if "--redis" in self.args:
            self.args.remove("--no-redis")
        super().start()


def _bus(kind: str) -> list[str]:
    svc = services.nats() if kind == "nats" else services.redis()
    require(svc.available, svc.missing)
    return ["--nats", svc.url] if kind == "nats" else ["--redis", svc.url]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spiralfast", "mesh", *args], capture_output=True, text=True,
                          timeout=60)


async def _nodes(node: NodeProc) -> set[str]:
    return {n["node_id"] for n in await node.query("nodes", TOKEN)}


async def _meet(nodes: list[NodeProc], since: float) -> None:
    """Every node lists every other within JOIN_BOUND of ``since``."""
    want = {n.node_id for n in nodes}
    seen: dict[str, set[str]] = {}

    async def met() -> bool:
        for n in nodes:
            seen[n.node_id] = await _nodes(n)
        return all(want <= s for s in seen.values())

    await wait_until_async(met, lambda: f"every node listed every other within {JOIN_BOUND:g} s: {seen}",
                           timeout=JOIN_BOUND - (time.monotonic() - since), interval=0.05)


@pytest.mark.parametrize("kind", ["nats", "redis"])
async def test_bus_only_nodes_know_each_other_at_once_started_together_or_later(kind: str) -> None:
    bus = _bus(kind)
    mesh = "join_" + uuid.uuid4().hex[:8]
    loop = asyncio.get_running_loop()
    a, b = await asyncio.gather(loop.run_in_executor(None, BusNode, "join-a", mesh, bus),
                                loop.run_in_executor(None, BusNode, "join-b", mesh, bus))
    nodes: list[NodeProc] = [a, b]
    try:
        await _meet(nodes, time.monotonic())
        # A node started later hears nobody's announcement (they were made before it
        # subscribed): it learns the members from their answers to its join.
        c = await loop.run_in_executor(None, BusNode, "join-c", mesh, bus)
        nodes.append(c)
        await _meet(nodes, time.monotonic())
        st = await c.query("status", TOKEN)
        link = next(lk for lk in st["links"] if lk["transport"] == kind)
        assert link["joins_sent"] >= 1
        assert st["websocket_endpoint"] is None  # no WebSocket links: nobody dials it
        answered = 0
        for node in (a, b):
            st = await node.query("status", TOKEN)
            answered += sum(int(lk.get("joins_answered") or 0) for lk in st["links"] if lk["transport"] == kind)
        assert answered >= 2  # both members answered join-c
    finally:
        for n in nodes:
            n.stop()


async def test_a_node_without_websocket_is_inspected_through_its_observer_port() -> None:
    bus = _bus("nats")
    mesh = "obs_" + uuid.uuid4().hex[:8]
    node = BusNode("obs-a", mesh, bus)
    loop = asyncio.get_running_loop()
    try:
        banner = node.read_banner()
        assert banner["websocket"].startswith("off; observers") and node.url in banner["websocket"]
        # The CLI, as a user runs it, with the token: status and nodes.
        out = await loop.run_in_executor(None, _cli, "status", "--json", "--node", node.url, "--token", TOKEN)
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["node_id"] == "obs-a" and st["nats"] is True and st["mesh_name"] == mesh
        out = await loop.run_in_executor(None, _cli, "nodes", "--json", "--node", node.url, "--token", TOKEN)
        assert out.returncode == 0, out.stderr
        assert [n["node_id"] for n in json.loads(out.stdout)] == ["obs-a"]
        # HTTP on the same port, with the token as on the mesh port.
        req = urllib.request.Request(f"http://127.0.0.1:{node.port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(req, timeout=10).read())
        assert b"spiralfast_rate_limited_total" in body
        # Without the token: refused, like the mesh port.
        out = await loop.run_in_executor(None, _cli, "status", "--json", "--node", node.url, "--token", "wrong" * 4)
        assert out.returncode != 0 and "token" in out.stderr.lower()
        with pytest.raises(urllib.error.HTTPError) as err:
            await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{node.port}/metrics", timeout=10))
        assert err.value.code == 401
        with pytest.raises((AuthError, HandshakeError)):
            await ObserverClient.connect(node.url, None)
        # A peer joining there as a node (token right) is refused: observers only.
        peer = MeshCore(MeshConfig(node_id="obs-peer", mesh_name=mesh, auth_token=TOKEN, enable_redis=False,
                                   websocket_port=0, peers=[node.url], heartbeat_interval=0.5))
        await peer.start()
        try:
            await wait_for(lambda: peer.counters["rejected_by_peer"] >= 1, timeout=15)
            assert "obs-a" not in peer.nodes
            st = await node.query("status", TOKEN)
            assert st["counters"]["handshake_failures"] >= 1
            assert [n["node_id"] for n in st["nodes"]] == ["obs-a"]
        finally:
            await peer.stop()
    finally:
        node.stop()


def test_observer_port_setting() -> None:
    assert MeshConfig().observer_port is None  # off unless asked for
    assert MeshConfig(observer_port=0).observer_port == 0
    for bad in (-1, 65536, "8765", True):
        with pytest.raises(ValueError, match="observer_port"):
            MeshConfig(observer_port=bad)  # type: ignore[arg-type]
