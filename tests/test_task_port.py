"""The task manager against a fake port: no ``MeshCore``, no links, no sockets.

``FakePort`` implements :class:`spiralfast.ports.tasks.TaskPort` over an in-memory hub
(events are copied, as the wire would, and delivered on the next loop iteration); the
tests drive two or three managers through it: a submitted task and its result, a
handler's error, a retry after a lost task batch, a lost worker (removed, or its link
dropped), and a forged result refused.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import pytest

from spiralfast.errors import TaskError
from spiralfast.ports.tasks import EnvelopeHandler, TaskPort
from spiralfast.tasks import RESULT_EVENT, TASK_EVENT, TaskManager

from .waiting import wait_until

HB = 0.1  # heartbeat of the fake nodes (housekeeping ticks every 12.5 ms)


class Hub:
    """The fake mesh: node id -> port."""

    def __init__(self) -> None:
        self.ports: dict[str, FakePort] = {}

    def join(self, *ids: str) -> None:
        """Every node in ``ids`` sees and links to every other."""
        for a in ids:
            for b in ids:
                self.ports[a].members.add(b)
                if a != b:
                    self.ports[a].links.add(b)


class FakePort:
    """A :class:`TaskPort` for one fake node."""

    def __init__(self, hub: Hub, node_id: str) -> None:
        self.hub = hub
        self._id = node_id
        hub.ports[node_id] = self
        self.handlers: dict[str, list[EnvelopeHandler]] = {}
        self.metadata: dict[str, Any] = {"implementation": "spiralfast"}
        self.capabilities: list[str] = []
        self.members: set[str] = {node_id}
        self.links: set[str] = set()
        self.sent: list[tuple[str, str, Any]] = []
        self.drop_tasks = 0  # task batches this node loses on the way in (a lost frame)

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def heartbeat_interval(self) -> float:
        return HB

    @property
    def local_metadata(self) -> MutableMapping[str, Any]:
        return self.metadata

    def subscribe(self, event_type: str, handler: EnvelopeHandler) -> None:
        hs = self.handlers.setdefault(event_type, [])
        if handler not in hs:
            hs.append(handler)

    async def send(self, node_id: str, event_type: str, data: Any) -> bool:
        if node_id not in self.members:
            return False
        self.sent.append((node_id, event_type, data))
        peer = self.hub.ports.get(node_id)
        if peer is not None:
            env = {"type": event_type, "source_node": self._id, "data": copy.deepcopy(data)}
            asyncio.get_running_loop().call_soon(peer.deliver, env)
        return True

    async def broadcast(self, event_type: str, data: Any) -> None:
        for nid in sorted(self.members - {self._id}):
            await self.send(nid, event_type, data)

    def deliver(self, env: dict[str, Any]) -> None:
        if env["type"] == TASK_EVENT and self.drop_tasks > 0:
            self.drop_tasks -= 1
            return
        for h in self.handlers.get(env["type"], ()):
            h(env)

    def is_member(self, node_id: str) -> bool:
        return node_id in self.members

    def member_metadata(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [(nid, self.hub.ports[nid].metadata) for nid in sorted(self.members)]

    def metadata_of(self, node_id: str) -> Mapping[str, Any] | None:
        return self.hub.ports[node_id].metadata if node_id in self.members else None

    def members_with_capability(self, capability: str) -> Iterable[str]:
        return [nid for nid in sorted(self.members) if capability in self.hub.ports[nid].capabilities]

    def add_capabilities(self, node_id: str, names: Sequence[str]) -> None:
        caps = self.hub.ports[node_id].capabilities
        caps.extend(k for k in names if k not in caps)

    def linked_peers(self) -> set[str] | None:
        return set(self.links)


def _typed(port: FakePort) -> TaskPort:
    return port  # mypy checks FakePort against the Protocol here


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Hub, dict[str, TaskManager]]]:
    hub = Hub()
    managers = {nid: TaskManager(_typed(FakePort(hub, nid))) for nid in ("A", "B", "C")}
    yield hub, managers
    for m in managers.values():
        await m.stop()


async def _start(hub: Hub, managers: dict[str, TaskManager], *ids: str) -> None:
    hub.join(*ids)
    for nid in ids:
        await managers[nid].start()


async def test_submit_to_the_other_node(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh
    m["B"].register("dbl", lambda x: x * 2, capacity=4)
    await _start(hub, m, "A", "B")
    assert await m["A"].submit("dbl", 21, timeout=5) == 42
    assert [e for _, e, _ in hub.ports["A"].sent].count(TASK_EVENT) == 1
    assert [e for _, e, _ in hub.ports["B"].sent].count(RESULT_EVENT) == 1
    st = m["A"].status()
    assert st["submitted"]["dbl"]["done"] == 1 and st["submitted"]["dbl"]["retried"] == 0
    assert m["B"].status()["offered"]["dbl"]["done"] == 1
    assert "dbl" in hub.ports["B"].capabilities and hub.ports["B"].metadata["tasks"] == {"dbl": [4, 0]}
    assert [r async for r in m["A"].map("dbl", range(5), concurrency=2, timeout=5)] == [0, 2, 4, 6, 8]


async def test_handler_error_reaches_the_submitter(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh

    def boom(x: Any) -> Any:
        raise ValueError(f"boom {x}")

    m["B"].register("boom", boom)
    await _start(hub, m, "A", "B")
    with pytest.raises(TaskError) as ei:
        await m["A"].submit("boom", 1, timeout=5, retries=0)
    assert (ei.value.type_name, ei.value.message, ei.value.node_id) == ("ValueError", "boom 1", "B")


async def test_retry_after_a_lost_batch(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh
    m["B"].register("dbl", lambda x: x * 2)
    await _start(hub, m, "A", "B")
    hub.ports["B"].drop_tasks = 1  # the first attempt never arrives: it times out, the retry runs
    assert await m["A"].submit("dbl", 5, timeout=0.3, retries=1) == 10
    st = m["A"].status()["submitted"]["dbl"]
    assert (st["retried"], st["done"], st["timeouts"]) == (1, 1, 0)


async def test_worker_lost_when_removed(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh

    async def hang(x: Any) -> Any:
        await asyncio.Event().wait()

    m["B"].register("hang", hang)
    await _start(hub, m, "A", "B")
    fut = asyncio.ensure_future(m["A"].submit("hang", 1, timeout=30, retries=0))
    await wait_until(lambda: m["B"].status()["offered"]["hang"]["running"] == 1, "B runs the task")
    hub.ports["A"].members.discard("B")
    m["A"].node_removed("B", "failure detection")
    with pytest.raises(TaskError) as ei:
        await fut
    assert ei.value.type_name == "WorkerLost" and ei.value.node_id == "B"


async def test_link_drop_sends_the_task_elsewhere(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh

    async def hang(x: Any) -> Any:
        await asyncio.Event().wait()

    m["B"].register("job", hang)
    await _start(hub, m, "A", "B")
    fut = asyncio.ensure_future(m["A"].submit("job", 3, timeout=30, retries=1))
    await wait_until(lambda: m["B"].status()["offered"]["job"]["running"] == 1, "B runs the task")
    m["C"].register("job", lambda x: ["C", x])
    await _start(hub, m, "A", "B", "C")
    await wait_until(lambda: "C" in m["A"].status()["nodes"], "A learns C's offer")
    hub.ports["A"].links.discard("B")  # B's link drops: noticed by housekeeping
    assert await fut == ["C", 3]
    assert m["A"].status()["submitted"]["job"]["retried"] == 1


async def test_forged_result_refused(mesh: tuple[Hub, dict[str, TaskManager]]) -> None:
    hub, m = mesh

    async def slow(x: Any) -> Any:
        await asyncio.sleep(0.2)  # time itself: the task is still at B when C forges its result
        return x

    m["B"].register("slow", slow)
    await _start(hub, m, "A", "B", "C")
    fut = asyncio.ensure_future(m["A"].submit("slow", "real", timeout=5))
    await wait_until(lambda: m["A"]._pending, "the task is pending")
    tid = next(iter(m["A"]._pending))
    await hub.ports["C"].send("A", RESULT_EVENT, {"i": [tid], "v": ["forged"]})
    assert await fut == "real"
    assert m["A"].status()["results_refused"] == 1
