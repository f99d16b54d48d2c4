"""Members limited to their own affairs (issue 23, attacks 3-6): a member holding the
token cannot forge another worker's task results, announce another node's departure,
freeze a node with huge task-type lists, or grow a worker without bound.

Real processes: workers and attackers are ``tests/trust_node.py`` processes (real nodes,
token-authenticated members; the attacker acts through the node's own API, as a
member's modified program would); the submitter is a node in the test process over
real WebSockets (so the test can read the ids of its tasks in flight and hand them to
the attacker: the worst case, an attacker that knows them).  Each test shows the attack
refused and counted, and the legitimate path served in the same test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from spiralfast import EventType, MeshConfig, MeshCore
from spiralfast.client import ObserverClient
from spiralfast.node.registry import MAX_CAPABILITIES
from spiralfast.protocol.membership import SILENCE_FACTOR
from spiralfast.tasks import BUSY, ID_BYTES, MAX_TASK_TYPES, QUEUE_FLOOR

from .conftest import free_port
from .test_metrics import get
from .waiting import wait_until, wait_until_async, wait_until_sync

pytestmark = pytest.mark.timeout(180)

NODE = str(Path(__file__).with_name("trust_node.py"))
TOKEN = "trust-s3cret-token-0123"
HB = 0.3


class Member:
    """``tests/trust_node.py`` as a subprocess, driven by JSON commands on its stdin."""

    def __init__(self, node_id: str, *, serve: tuple[str, ...] = (), peers: tuple[str, ...] = (),
                 hb: float = HB) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        args = [sys.executable, NODE, "--port", str(self.port), "--node-id", node_id, "--token", TOKEN,
                "--hb", str(hb)]
        for s in serve:
            args += ["--serve", s]
        for p in peers:
            args += ["--peer", p]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert self.proc.stdout is not None
        wait_until_sync(self._websocket_line, f"{node_id} printed its websocket line", timeout=30, interval=0)

    def _websocket_line(self) -> bool:
        """Read one line of the node's; true once it is the websocket line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.node_id} exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return line.startswith("websocket")

    def _command(self, cmd: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.node_id} exited")
            if line.startswith("ok "):
                return json.loads(line[3:])
            if line.startswith("error "):
                raise RuntimeError(json.loads(line[6:]))

    async def command(self, **cmd: Any) -> Any:
        return await asyncio.to_thread(self._command, cmd)

    async def query(self, what: str, **args: Any) -> Any:
        c = await ObserverClient.connect(self.url, TOKEN)
        try:
            return await c.query(what, **args)
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def submitter(members: list[Member], serving: dict[str, str], hb: float = HB) -> MeshCore:
    """A node in this process joined to ``members``; returns once it knows each
    ``serving`` node's advertised offer of the task type."""
    mesh = MeshCore(MeshConfig(node_id="submitter", websocket_port=free_port(), enable_redis=False,
                               heartbeat_interval=hb, auth_token=TOKEN, peers=[m.url for m in members]))
    await mesh.start()
    ids = {m.node_id for m in members}

    def ready() -> bool:
        nodes = mesh.get_mesh_status()["tasks"]["nodes"]
        return ids <= set(mesh.nodes) and all(
            nodes.get(nid, {}).get(t, {}).get("advertised") for nid, t in serving.items())

    await wait_until(ready, "the submitter knows every member and the workers' offers", timeout=30)
    return mesh


@pytest.fixture
async def worker_and_attacker() -> AsyncIterator[tuple[MeshCore, Member, Member]]:
    w = Member("W", serve=("work:4",))
    m = Member("M", peers=(w.url,))
    s = None
    try:
        s = await submitter([w, m], {"W": "work"})
        yield s, w, m
    finally:
        if s is not None:
            await s.stop()
        m.stop()
        w.stop()


def in_flight_at(s: MeshCore, node: str) -> list[bytes]:
    """Ids of the submitter's tasks now at ``node``."""
    return [tid for tid, p in s.tasks._pending.items() if p.target is not None and p.target.node == node]


async def test_forged_results_are_refused_and_the_real_ones_delivered(
        worker_and_attacker: tuple[MeshCore, Member, Member]) -> None:
    s, w, m = worker_and_attacker
    # the legitimate path first: a task on W comes back from W
    assert await s.submit_task("work", {"i": -1, "s": 0.01}, target_node="W") == [-1, "W"]
    # three tasks that take 1.5 s on W (long enough to be forged while in flight)
    tasks = [asyncio.ensure_future(s.submit_task("work", {"i": k, "s": 1.5}, target_node="W", timeout=60))
             for k in range(3)]
    await wait_until(lambda: len(in_flight_at(s, "W")) == 3, "three tasks in flight at W")
    ids = in_flight_at(s, "W")
    # ids are random: ID_BYTES each, all different, nothing like a counter
    assert all(type(t) is bytes and len(t) == ID_BYTES for t in ids) and len(set(ids)) == 3
    # M forges results for them, knowing the real ids (the worst case) ...
    assert await m.command(op="send", to="submitter", type="_sf.result", hex_ids=[t.hex() for t in ids],
                           data={"v": ["forged"] * 3})
    # ... and for the sequential ids that used to be guessable (1..100)
    assert await m.command(op="send", to="submitter", type="_sf.result",
                           data={"i": list(range(1, 101)), "v": ["forged"] * 100})
    # ... and as failures (the "x" part of a result message)
    assert await m.command(op="send", to="submitter", type="_sf.result", hex_x=[t.hex() for t in ids],
                           data={"i": [], "v": []})
    await wait_until(lambda: s.tasks.status()["results_refused"] >= 3 + 100 + 3, "the forged results refused")
    # an observer on W (W is the worker those tasks went to) cannot publish _sf.* at all
    reply = await _observer_publish(w, "_sf.result", {"i": [], "v": []}, target="submitter")
    assert reply is not None and "reserved" in reply
    st = await w.query("status")
    assert st["counters"]["reserved_refused"] >= 1
    # the real results reach the submitter
    assert sorted(await asyncio.gather(*tasks)) == [[k, "W"] for k in range(3)]
    assert s.tasks.status()["submitted"]["work"]["done"] == 4


async def _observer_publish(node: Member, etype: str, data: Any, target: str | None = None) -> str | None:
    """Publish through an observer of ``node``: None when accepted, else the refusal."""
    c = await ObserverClient.connect(node.url, TOKEN)
    try:
        await c.query("publish", type=etype, data=data, target=target)
    except Exception as exc:
        return str(exc)
    finally:
        c.close()
    return None


async def test_forged_departure_is_refused_and_pinned_tasks_keep_running(
        worker_and_attacker: tuple[MeshCore, Member, Member]) -> None:
    s, w, m = worker_and_attacker
    heard: list[dict[str, Any]] = []
    s.register_event_handler("node_unregister", heard.append)
    bus_heard: list[Any] = []
    s.event_bus.subscribe(EventType.NODE_UNREGISTER, bus_heard.append)
    tasks = [asyncio.ensure_future(s.submit_task("work", {"i": k, "s": 1.5}, target_node="W", timeout=60))
             for k in range(3)]
    await wait_until(lambda: len(in_flight_at(s, "W")) == 3, "three tasks pinned to W in flight")
    # M announces W's departure with an ordinary broadcast_event
    assert await m.command(op="broadcast", type="node_unregister", data={"node_id": "W"})
    # ... and through the mesh's EventBus (SPEC publish)
    assert await m.command(op="bus_publish", type="node_unregister", data={"node_id": "W"})
    await wait_until(lambda: s.get_mesh_status()["counters"]["reserved_refused"] >= 2, "the forged departures refused")
    # an observer cannot announce one either
    reply = await _observer_publish(m, "node_unregister", {"node_id": "W"})
    assert reply is not None and "reserved" in reply
    # W is still a member, its tasks are still there, and the real results arrive (no WorkerLost)
    assert "W" in s.nodes and len(in_flight_at(s, "W")) == 3
    assert sorted(await asyncio.gather(*tasks)) == [[k, "W"] for k in range(3)]
    assert not any(e["data"].get("node_id") == "W" for e in heard) and bus_heard == []
    assert not any(getattr(e, "event_type", None) == "node_unregister" and e.data.get("node_id") == "W"
                   for e in s.recent_events)
    # SPEC behaviour kept for a node speaking about itself: M's own announcement is delivered
    assert await m.command(op="broadcast", type="node_unregister", data={"node_id": "M"})
    await wait_until(lambda: any(e["source_node"] == "M" and e["data"]["node_id"] == "M" for e in heard),
                     "M's announcement about itself delivered")
    assert await m.command(op="bus_publish", type="node_unregister", data={"node_id": "M"})
    await wait_until(lambda: any(e.source_node == "M" for e in bus_heard), "M's bus announcement about itself delivered")
    # ... and, being only an event, it takes nothing from the task manager: W still serves
    assert await s.submit_task("work", {"i": 9, "s": 0.01}, target_node="W") == [9, "W"]


async def test_sixty_thousand_task_types_are_refused_and_health_stays_responsive() -> None:
    """Two task-load messages of 60,000 task types each, and a member record listing
    60,000 capabilities.  Bound: /health answers within SILENCE_FACTOR heartbeat
    intervals (hb = 1 s: 3 s), the time after which the node's peers would declare it
    dead; before the fix two such messages stalled it 37 s."""
    hb = 1.0
    v = Member("V", serve=("echo:8",), hb=hb)
    m = Member("M", peers=(v.url,), hb=hb)
    s = None
    try:
        s = await submitter([v, m], {"V": "echo"}, hb=hb)
        assert await s.submit_task("echo", {"x": 1}, target_node="V") == {"x": 1}  # served before
        assert await m.command(op="caps", n=60_000) > 60_000
        await wait_until(lambda: s.registry.capabilities_refused >= 60_000 - MAX_CAPABILITIES,
                         "M's gossiped record of 60,000 capabilities bounded")
        for _ in range(2):
            assert await m.command(op="load", to="V", n=60_000)
        t0 = time.monotonic()
        status, _, _ = await get(f"{v.url.replace('ws://', 'http://')}/health")
        took = time.monotonic() - t0
        assert status == 200 and took < SILENCE_FACTOR * hb, f"/health took {took:.2f} s"

        async def refused() -> bool:
            st = await v.query("status")
            return st["tasks"]["types_refused"] >= 2  # type: ignore[no-any-return]

        await wait_until_async(refused, "both task-load messages refused")
        st = await v.query("status")
        assert not any(k.startswith("type") for k in st["tasks"]["nodes"].get("M", {}))
        # M's own record: at most MAX_CAPABILITIES of its capabilities kept, on V and here
        rec = next(n for n in await v.query("nodes") if n["node_id"] == "M")
        assert len(rec["capabilities"]) <= MAX_CAPABILITIES
        assert st["counters"]["capabilities_refused"] >= 60_000 - MAX_CAPABILITIES
        assert len(s.registry.nodes["M"].capabilities) <= MAX_CAPABILITIES
        # the legitimate path: V still serves, and no node was declared dead
        assert await s.submit_task("echo", {"x": 2}, target_node="V") == {"x": 2}
        assert {"V", "M"} <= set(s.nodes)
        assert MAX_TASK_TYPES == MAX_CAPABILITIES
    finally:
        if s is not None:
            await s.stop()
        m.stop()
        v.stop()


#: RSS growth the worker may show after the flood.  What it keeps is bounded by the
#: per-submitter queue (QUEUE_FLOOR tasks of ~100 bytes) and the refusals buffered for
#: one submitter (MAX_BUSY_REPLIES); the rest is the allocator's high-water mark of
#: decoding 512-task frames.  Before the bound the same flood took it from 37 to 268 MiB.
RSS_GROWTH_MIB = 64


async def test_a_flood_of_tasks_is_refused_beyond_the_bound_and_the_worker_stays_small() -> None:
    w = Member("W", serve=("work:4",))
    m = Member("M", peers=(w.url,))
    s = None
    try:
        s = await submitter([w, m], {"W": "work"})
        assert await s.submit_task("work", {"i": -1, "s": 0.01}, target_node="W") == [-1, "W"]
        proc = psutil.Process(w.proc.pid)
        rss0 = proc.memory_info().rss
        # 200,000 tasks of 0.3 s each, ignoring W's advertised capacity of 4
        assert await m.command(op="flood", to="W", type="work", n=200_000, s=0.3) == 200_000

        async def accounted() -> Any:
            st = await w.query("status")
            o = st["tasks"]["offered"]["work"]
            # every task is refused, or done / running / queued (the 1 before is S's)
            return st if st["tasks"]["busy_refused"] + o["done"] + o["running"] + o["queued"] >= 200_001 else None

        st = await wait_until_async(accounted, "every flooded task refused or taken", timeout=60)
        offer = st["tasks"]["offered"]["work"]
        assert offer["running"] + offer["queued"] <= QUEUE_FLOOR
        # taken: at most the bound plus what finished meanwhile (0.3 s each, 4 at once)
        assert st["tasks"]["busy_refused"] >= 200_000 - QUEUE_FLOOR - offer["done"]
        grown = (proc.memory_info().rss - rss0) / 2**20
        assert grown < RSS_GROWTH_MIB, f"W grew {grown:.1f} MiB"
        # the flooder is told: WorkerBusy failures come back to it
        await wait_until(lambda: _busy_seen(m) > 0, "M received WorkerBusy refusals")
        # the legitimate submitter is still served, in turn with M's backlog (not behind it)
        results = await asyncio.gather(*[s.submit_task("work", {"i": k, "s": 0.01}, target_node="W", timeout=60)
                                         for k in range(5)])
        assert sorted(results) == [[k, "W"] for k in range(5)]
        assert BUSY == "WorkerBusy"
    finally:
        if s is not None:
            await s.stop()
        m.stop()
        w.stop()


def _busy_seen(m: Member) -> int:
    return int(m._command({"op": "stats"})["busy"])
