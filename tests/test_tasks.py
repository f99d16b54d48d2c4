"""Work distribution (issue 17): task handlers, submit, map, balancing, failover.

Process tests run worker nodes as real processes (``tests/task_worker.py``) and
submit from a node in the test process over real WebSockets; the rest use an
in-process ``LocalMesh``.  No timed assertions: waits are bounded by ``wait_for``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore, NoNodeForTask, TaskError, TaskTimeout
from spiralfast.client import ObserverClient
from spiralfast.testing import LocalMesh

from .conftest import free_port
from .waiting import wait_until, wait_until_sync

WORKER = str(Path(__file__).with_name("task_worker.py"))
HB = 0.3


class WorkerProc:
    """``tests/task_worker.py`` as a subprocess."""

    def __init__(self, node_id: str, serve: list[str], peers: list[str] = ()) -> None:  # type: ignore[assignment]
        self.node_id = node_id
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        args = [sys.executable, WORKER, "--port", str(self.port), "--node-id", node_id, "--hb", str(HB)]
        for s in serve:
            args += ["--serve", s]
        for p in peers:
            args += ["--peer", p]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def ready(self) -> None:
        assert self.proc.stdout is not None
        wait_until_sync(self._websocket_line, f"worker {self.node_id} printed its websocket line", timeout=30,
                        interval=0)

    def _websocket_line(self) -> bool:
        """Read one line of the worker's; true once it is the websocket line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"worker {self.node_id} exited: {err}")
        return line.startswith("websocket")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_workers(specs: dict[str, list[str]]) -> list[WorkerProc]:
    procs = [WorkerProc(nid, serve) for nid, serve in specs.items()]
    try:
        for p in procs:
            p.ready()
    except Exception:
        for p in procs:
            p.stop()
        raise
    return procs


async def submitter(workers: list[WorkerProc], types: dict[str, int]) -> MeshCore:
    """A node in this process joined to ``workers``; returns once it knows, for each
    task type, the given number of advertised serving nodes."""
    mesh = MeshCore(MeshConfig(node_id="submitter", websocket_port=free_port(), enable_redis=False,
                               heartbeat_interval=HB, peers=[w.url for w in workers]))
    await mesh.start()

    def ready() -> bool:
        nodes = mesh.get_mesh_status()["tasks"]["nodes"]
        return all(
            sum(1 for offers in nodes.values() if t in offers and offers[t]["advertised"]) >= n
            for t, n in types.items()
        )

    await wait_until(ready, 'ready', timeout=20)
    return mesh


CAPS = {"w1": 4, "w2": 8, "w3": 12, "w4": 16}


@pytest.fixture
async def four_workers() -> AsyncIterator[tuple[MeshCore, list[WorkerProc]]]:
    procs = start_workers({nid: [f"work:{cap}", "echo:64", "boom:4", "hang:4"] for nid, cap in CAPS.items()})
    mesh = None
    try:
        mesh = await submitter(procs, {"work": 4, "echo": 4, "boom": 4})
        yield mesh, procs
    finally:
        if mesh is not None:
            await mesh.stop()
        for p in procs:
            p.stop()


async def test_ten_thousand_tasks_exactly_once_spread_by_capacity(
    four_workers: tuple[MeshCore, list[WorkerProc]],
) -> None:
    mesh, procs = four_workers
    n = 10_000
    results = [r async for r in mesh.map_tasks("work", ({"i": i, "s": 0.01} for i in range(n)), concurrency=256)]
    assert [r[0] for r in results] == list(range(n))  # every result, once, in submission order
    shares = Counter(r[1] for r in results)
    total_cap = sum(CAPS.values())
    for nid, cap in CAPS.items():
        expected = cap / total_cap
        assert abs(shares[nid] / n - expected) <= 0.2 * expected, (nid, shares, expected)
    # each worker ran exactly what it returned: nothing ran twice without a fault
    for p in procs:
        c = await query(p, "status")
        assert c["tasks"]["offered"]["work"]["done"] == shares[p.node_id]
    st = mesh.get_mesh_status()["tasks"]["submitted"]["work"]
    assert st["done"] == n and st["failed"] == 0 and st["in_flight"] == 0 and st["retried"] == 0
    # what each worker ran reaches the submitter's view of the nodes (load adverts)
    await wait_until(lambda: all(mesh.get_mesh_status()["tasks"]["nodes"][nid]["work"].get("done") == shares[nid]
                               for nid in CAPS), 'all(mesh.get_mesh_status()["tasks"]["nodes"][nid]["work"].get("done") == shares[nid] for nid in CAPS)', timeout=10)


async def query(p: WorkerProc, what: str) -> Any:
    c = await ObserverClient.connect(p.url, None)
    try:
        return await c.query(what)
    finally:
        c.close()


async def test_kill9_worker_mid_run_every_task_completes_exactly_once(
    four_workers: tuple[MeshCore, list[WorkerProc]],
) -> None:
    mesh, procs = four_workers
    n = 4000
    victim = procs[3]  # the largest: w4
    got: list[Any] = []

    async def consume() -> None:
        async for r in mesh.map_tasks("work", ({"i": i, "s": 0.01} for i in range(n)), concurrency=256):
            got.append(r)

    task = asyncio.ensure_future(consume())
    await wait_until(lambda: len(got) >= n // 4 or task.done(), 'len(got) >= n // 4 or task.done()', timeout=30)
    victim.kill9()
    await asyncio.wait_for(task, 60)
    assert [r[0] for r in got] == list(range(n))
    by_node = Counter(r[1] for r in got)
    assert by_node[victim.node_id] > 0 and all(by_node[p.node_id] > 0 for p in procs)
    st = mesh.get_mesh_status()["tasks"]["submitted"]["work"]
    assert st["done"] == n and st["failed"] == 0 and st["retried"] > 0
    assert victim.node_id not in mesh.nodes


async def test_frozen_worker_failure_detection_moves_its_tasks(
    four_workers: tuple[MeshCore, list[WorkerProc]],
) -> None:
    """SIGSTOP: the worker's sockets stay open, only failure detection notices."""
    import signal

    mesh, procs = four_workers
    n = 2000
    victim = procs[2]
    got: list[Any] = []

    async def consume() -> None:
        async for r in mesh.map_tasks("work", ({"i": i, "s": 0.01} for i in range(n)), concurrency=256):
            got.append(r)

    task = asyncio.ensure_future(consume())
    await wait_until(lambda: len(got) >= n // 10 or task.done(), 'len(got) >= n // 10 or task.done()', timeout=30)
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.wait_for(task, 60)
    finally:
        victim.kill9()
    assert [r[0] for r in got] == list(range(n))
    st = mesh.get_mesh_status()["tasks"]["submitted"]["work"]
    assert st["done"] == n and st["failed"] == 0 and st["retried"] > 0
    assert victim.node_id not in mesh.nodes


async def test_handler_error_timeout_and_no_node(four_workers: tuple[MeshCore, list[WorkerProc]]) -> None:
    mesh, _ = four_workers
    with pytest.raises(TaskError) as ei:
        await mesh.submit_task("boom", "x1")
    assert ei.value.type_name == "ValueError" and ei.value.message == "boom: x1"
    assert ei.value.node_id in CAPS
    with pytest.raises(NoNodeForTask):
        await mesh.submit_task("nobody-serves-this", 1)
    with pytest.raises(TaskTimeout):
        await mesh.submit_task("hang", 1, timeout=0.3, retries=1)
    assert await mesh.submit_task("echo", {"a": [1, 2]}) == {"a": [1, 2]}
    st = mesh.get_mesh_status()["tasks"]["submitted"]
    assert st["hang"]["retried"] == 1 and st["hang"]["timeouts"] == 1 and st["hang"]["failed"] == 0
    assert st["boom"]["failed"] == 1


# -- in one process ----------------------------------------------------------------


async def test_local_node_serves_and_target_node() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes
        a.register_task_handler("sq", lambda x: x * x)
        assert await a.submit_task("sq", 9) == 81  # no other node: runs here
        assert "sq" in a.local_node.capabilities
        await m.wait_for(lambda: "sq" in b.nodes[a.node_id].capabilities)
        best = b.registry.find_best_node_for_task("sq")
        assert best is not None and best.node_id == a.node_id
        assert await b.submit_task("sq", 3, target_node=a.node_id) == 9
        with pytest.raises(NoNodeForTask):
            await a.submit_task("sq", 3, target_node=b.node_id)


async def test_backpressure_waits_and_never_exceeds_capacity() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes
        running = 0
        peak = 0
        gate = asyncio.Event()

        async def slow(x: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return x

        b.register_task_handler("slow", slow, capacity=3)
        await m.wait_for(lambda: "slow" in a.get_mesh_status()["tasks"]["nodes"].get(b.node_id, {}))
        futs = [asyncio.ensure_future(a.submit_task("slow", i)) for i in range(10)]
        await m.wait_for(lambda: a.get_mesh_status()["tasks"]["submitted"].get("slow", {}).get("waiting") == 7)
        assert a.get_mesh_status()["tasks"]["submitted"]["slow"]["in_flight"] == 3
        assert b.get_mesh_status()["tasks"]["offered"]["slow"]["queued"] == 0
        gate.set()
        assert await asyncio.gather(*futs) == list(range(10))
        assert peak <= 3


async def test_retry_racing_late_reply_gives_one_result() -> None:
    async with LocalMesh(3, heartbeat_interval=HB) as m:
        a, b, c = m.nodes
        calls: list[str] = []

        def make(name: str, delay: float) -> Any:
            async def h(x: int) -> list[Any]:
                calls.append(name)
                await asyncio.sleep(delay)  # time itself: a slow handler
                return [x, name]

            return h

        b.register_task_handler("t", make("b", 0.4), capacity=1)
        c.register_task_handler("t", make("c", 0.4), capacity=1)
        await m.wait_for(lambda: len(a.get_mesh_status()["tasks"]["nodes"]) == 2)
        # each attempt times out before its worker answers; the answers arrive late
        r = await a.submit_task("t", 5, timeout=0.25, retries=3)
        assert r[0] == 5
        await m.wait_for(lambda: a.get_mesh_status()["tasks"]["late_replies"] >= 1)
        st = a.get_mesh_status()["tasks"]["submitted"]["t"]
        assert st["done"] == 1 and st["retried"] >= 1 and st["in_flight"] == 0
        assert len(calls) >= 2


async def test_node_loss_fails_over() -> None:
    async with LocalMesh(3, heartbeat_interval=HB) as m:
        a, b, c = m.nodes
        gate = asyncio.Event()

        async def stuck(x: int) -> str:
            await gate.wait()
            return "b"

        async def fine(x: int) -> str:
            return "c"

        b.register_task_handler("t", stuck, capacity=4)
        await m.wait_for(lambda: "t" in a.get_mesh_status()["tasks"]["nodes"].get(b.node_id, {}))
        fut = asyncio.ensure_future(a.submit_task("t", 1, retries=1))
        no_retry = asyncio.ensure_future(a.submit_task("t", 2, retries=0))
        await m.wait_for(lambda: b.get_mesh_status()["tasks"]["offered"]["t"]["running"] == 2)
        c.register_task_handler("t", fine, capacity=4)
        await m.wait_for(lambda: "t" in a.get_mesh_status()["tasks"]["nodes"].get(c.node_id, {}))
        await b.stop()  # leaves: its task goes to c
        assert await fut == "c"
        with pytest.raises(TaskError) as ei:
            await no_retry
        assert ei.value.type_name == "WorkerLost" and ei.value.node_id == b.node_id


async def test_unserved_capability_is_no_node() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes
        # every node lists the old default capabilities but serves no such task
        assert "state_sync" in b.nodes[a.node_id].capabilities
        with pytest.raises(NoNodeForTask):
            await a.submit_task("state_sync", {})


async def test_map_raises_the_first_error_in_order() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes

        def h(x: int) -> int:
            if x == 5:
                raise KeyError("five")
            return x

        b.register_task_handler("h", h)
        await m.wait_for(lambda: "h" in a.get_mesh_status()["tasks"]["nodes"].get(b.node_id, {}))
        got = []
        with pytest.raises(TaskError) as ei:
            async for r in a.map_tasks("h", range(20), concurrency=4):
                got.append(r)
        assert got == [0, 1, 2, 3, 4] and ei.value.type_name == "KeyError"
        assert a.get_mesh_status()["tasks"]["submitted"]["h"]["in_flight"] == 0


async def test_unsendable_result_and_payload() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes
        b.register_task_handler("obj", lambda x: object() if x else x)
        await m.wait_for(lambda: "obj" in a.get_mesh_status()["tasks"]["nodes"].get(b.node_id, {}))
        with pytest.raises(TaskError) as ei:
            await a.submit_task("obj", 1)
        assert "not sendable" in ei.value.message
        with pytest.raises(TaskError):
            await a.submit_task("obj", object())
        assert await a.submit_task("obj", 0) == 0


def test_cli_tasks_and_submit() -> None:
    import json

    (w,) = start_workers({"cli-w": ["echo:4", "boom:2"]})
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "spiralfast", "mesh", *args, "--node", w.url],
                                  capture_output=True, text=True, timeout=60)

        r = cli("submit", "echo", '{"a": [1, 2]}')
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"a": [1, 2]}
        r = cli("submit", "boom", '"x"', "--timeout", "5")
        assert r.returncode != 0 and "ValueError: boom: x" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = cli("submit", "nobody-serves-this", "1")
        assert r.returncode != 0 and "NoNodeForTask" in r.stderr
        r = cli("tasks", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["offered"]["echo"]["done"] == 1 and st["offered"]["boom"]["failed"] == 1
        assert st["nodes"]["cli-w"]["echo"]["capacity"] == 4
    finally:
        w.stop()
    # the tables `mesh tasks` prints without --json
    from rich.console import Console

    from spiralfast.cli.tasks import tasks_tables

    console = Console(record=True, width=200)
    for t in tasks_tables(st):
        console.print(t)
    text = console.export_text()
    assert "cli-w" in text and "echo" in text and "submitted by this node" in text


async def test_local_async_handler_capacity_and_pinned_wait() -> None:
    async with LocalMesh(2, heartbeat_interval=HB) as m:
        a, b = m.nodes
        running = 0
        peak = 0

        async def slow(x: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.005)  # time itself: a handler that takes a while
            running -= 1
            return x * 2

        a.register_task_handler("s", slow, capacity=2)  # this node only
        assert [r async for r in a.map_tasks("s", range(20))] == [x * 2 for x in range(20)]
        assert peak <= 2
        # a task pinned to a full node waits without holding back tasks that can go elsewhere
        gate = asyncio.Event()

        async def held(x: int) -> str:
            await gate.wait()
            return "b"

        b.register_task_handler("h", held, capacity=1)
        a.register_task_handler("h", lambda x: "a")
        await m.wait_for(lambda: "h" in a.get_mesh_status()["tasks"]["nodes"].get(b.node_id, {}))
        first = asyncio.ensure_future(a.submit_task("h", 0, target_node=b.node_id))
        await m.wait_for(lambda: b.get_mesh_status()["tasks"]["offered"]["h"]["running"] == 1)
        pinned = asyncio.ensure_future(a.submit_task("h", 1, target_node=b.node_id))
        await m.wait_for(lambda: a.get_mesh_status()["tasks"]["submitted"]["h"]["waiting"] == 1)
        assert await a.submit_task("h", 2) == "a"
        gate.set()
        assert await first == "b" and await pinned == "b"


async def test_offers_travel_in_node_metadata() -> None:
    from spiralfast.testing import LoopbackHub

    hub = LoopbackHub()

    def node(nid: str) -> MeshCore:
        return MeshCore(MeshConfig(node_id=nid, enable_redis=False, enable_websocket=False, heartbeat_interval=HB),
                        loopback=hub)

    a, b = node("meta-a"), node("meta-b")
    a.register_task_handler("x", lambda p: p, capacity=7)  # before start: in the handshake record
    assert a.local_node.metadata["tasks"] == {"x": [7, 0]} and "x" in a.local_node.capabilities
    await a.start()
    await b.start()
    try:
        await wait_until(lambda: "meta-a" in b.nodes, '"meta-a" in b.nodes')
        assert b.nodes["meta-a"].metadata["tasks"]["x"][0] == 7
        assert "x" in b.nodes["meta-a"].capabilities
        assert await b.submit_task("x", [1]) == [1]
        assert b.get_mesh_status()["tasks"]["nodes"]["meta-a"]["x"]["capacity"] == 7
    finally:
        await b.stop()
        await a.stop()
