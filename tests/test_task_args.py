"""The task API's arguments, and event listeners' removal.

Each bad argument is refused at once with a ValueError (or NoNodeForTask) naming it,
before anything is counted or sent; the same node then still serves the good call.
Each test shows the good path first, under the same conditions.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.errors import NoNodeForTask

from .waiting import wait_until

BAD_CAPACITY: list[Any] = [0, -1, 1.5, "4", True, None]
BAD_TIMEOUT: list[Any] = [0, -1, -0.5, math.nan, "5", None, True]
BAD_RETRIES: list[Any] = [-1, 1.5, "2", None, True]
BAD_CONCURRENCY: list[Any] = [0, -1, "3", 2.0, True, None]


def lone(**kw: Any) -> MeshCore:
    return MeshCore(MeshConfig(enable_redis=False, enable_websocket=False, **kw))


@pytest.fixture
async def node() -> AsyncIterator[MeshCore]:
    m = lone()
    m.register_task_handler("dbl", lambda x: x * 2, capacity=2)
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


def submitted(m: MeshCore, ttype: str = "dbl") -> int:
    return int(m.tasks.status()["submitted"].get(ttype, {}).get("submitted", 0))


async def collect(it: Any) -> list[Any]:
    return [x async for x in it]


# -- register: capacity, type, handler -------------------------------------------------


async def test_register_refuses_a_bad_capacity_and_changes_nothing(node: MeshCore) -> None:
    assert node.tasks.offered() == {"dbl": 2} and await node.submit_task("dbl", 21) == 42
    caps = list(node.local_node.capabilities)
    for cap in BAD_CAPACITY:
        with pytest.raises(ValueError, match="capacity must be a positive integer"):
            node.register_task_handler("new", lambda x: x, capacity=cap)
        with pytest.raises(ValueError, match="capacity must be a positive integer"):
            node.register_task_handler("dbl", lambda x: -x, capacity=cap)  # an existing type: kept as it was
    assert node.tasks.offered() == {"dbl": 2}
    assert node.local_node.capabilities == caps  # "new" never advertised
    with pytest.raises(NoNodeForTask):
        await node.submit_task("new", 1)
    assert await node.submit_task("dbl", 4) == 8  # the old handler still serves
    node.register_task_handler("dbl", lambda x: -x, capacity=5)  # a good change is taken
    assert node.tasks.offered() == {"dbl": 5} and await node.submit_task("dbl", 4) == -4


async def test_register_refuses_a_bad_type_or_handler(node: MeshCore) -> None:
    for ttype in ("", 3, None, b"dbl"):
        with pytest.raises(ValueError, match="task_type must be a non-empty string"):
            node.register_task_handler(ttype, lambda x: x)  # type: ignore[arg-type]
    for handler in (None, 3, "print"):
        with pytest.raises(ValueError, match="is not callable"):
            node.register_task_handler("h", handler)  # type: ignore[arg-type]
    assert node.tasks.offered() == {"dbl": 2}
    assert "h" not in node.local_node.capabilities


async def test_capacity_bounds_what_runs_at_once(node: MeshCore) -> None:
    release = asyncio.Event()
    running = 0
    most = 0

    async def slow(x: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return x

    node.register_task_handler("slow", slow, capacity=2)
    tasks = [asyncio.ensure_future(node.submit_task("slow", i)) for i in range(6)]
    await wait_until(lambda: running == 2, "two slow tasks running")
    offered = node.tasks.status()["offered"]["slow"]
    assert offered["capacity"] == 2 and offered["running"] == 2
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == list(range(6))
    assert most == 2  # never more than the capacity at once


# -- submit: timeout, retries, type, target, a stopped node ---------------------------


async def test_submit_refuses_a_bad_timeout_or_retries_before_counting_it(node: MeshCore) -> None:
    assert await node.submit_task("dbl", 1, timeout=5, retries=0) == 2
    assert await node.submit_task("dbl", 1, timeout=math.inf, retries=3) == 2  # no limit: allowed
    before = submitted(node)
    for t in BAD_TIMEOUT:
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            await node.submit_task("dbl", 1, timeout=t)
    for r in BAD_RETRIES:
        with pytest.raises(ValueError, match="retries must be an integer >= 0"):
            await node.submit_task("dbl", 1, retries=r)
    assert submitted(node) == before  # refused before being counted or sent
    st = node.tasks.status()["submitted"]["dbl"]
    assert st["in_flight"] == 0 and st["waiting"] == 0 and st["failed"] == 0
    assert await node.submit_task("dbl", 3) == 6


async def test_submit_names_what_no_node_serves(node: MeshCore) -> None:
    assert await node.submit_task("dbl", 2, target_node=node.node_id) == 4
    with pytest.raises(NoNodeForTask, match="no node of the mesh serves task type 'nope'"):
        await node.submit_task("nope", 1)
    with pytest.raises(NoNodeForTask, match="node ghost does not serve task type 'dbl'"):
        await node.submit_task("dbl", 1, target_node="ghost")
    assert "nope" not in node.tasks.status()["submitted"]


async def test_submitting_to_a_node_that_is_not_running() -> None:
    m = lone()
    m.register_task_handler("dbl", lambda x: x * 2)
    with pytest.raises(NoNodeForTask, match="not running"):  # not started yet
        await m.submit_task("dbl", 1)
    await m.start()
    try:
        assert await m.submit_task("dbl", 1) == 2
        assert await collect(m.map_tasks("dbl", range(3))) == [0, 2, 4]
    finally:
        await m.stop()
    with pytest.raises(NoNodeForTask, match="not running"):  # stopped
        await m.submit_task("dbl", 1)
    with pytest.raises(NoNodeForTask, match="not running"):
        await collect(m.map_tasks("dbl", range(3)))


# -- map: concurrency, timeout, retries --------------------------------------------------


async def test_map_refuses_a_bad_concurrency_or_limits_at_the_call(node: MeshCore) -> None:
    assert await collect(node.tasks.map("dbl", range(5), concurrency=2, timeout=5, retries=0)) == [0, 2, 4, 6, 8]
    before = submitted(node)
    for c in BAD_CONCURRENCY:
        with pytest.raises(ValueError, match="concurrency must be a positive integer"):
            node.tasks.map("dbl", range(5), concurrency=c)  # raised at the call, not at the first result
        with pytest.raises(ValueError, match="concurrency must be a positive integer"):
            node.map_tasks("dbl", range(5), concurrency=c)
    for t in BAD_TIMEOUT:
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            node.tasks.map("dbl", range(5), timeout=t)
    for r in BAD_RETRIES:
        with pytest.raises(ValueError, match="retries must be an integer >= 0"):
            node.tasks.map("dbl", range(5), retries=r)
    assert submitted(node) == before
    assert await collect(node.map_tasks("dbl", [7], concurrency=1)) == [14]


# -- remove_event_listener ------------------------------------------------------------


async def test_remove_event_listener_stops_only_that_listener() -> None:
    m = lone()
    await m.start()
    try:
        kept: list[str] = []
        removed: list[str] = []

        def keep(env: dict[str, Any]) -> None:
            if env["type"] == "probe":
                kept.append(env["data"]["n"])

        def drop(env: dict[str, Any]) -> None:
            if env["type"] == "probe":
                removed.append(env["data"]["n"])

        m.add_event_listener(keep)
        m.add_event_listener(drop)
        await m.broadcast_event("probe", {"n": "1"})
        await wait_until(lambda: kept == ["1"] and removed == ["1"], "both listeners heard the first event")
        m.remove_event_listener(drop)
        m.remove_event_listener(drop)  # twice: a no-op, no error
        m.remove_event_listener(lambda env: None)  # never added: a no-op
        await m.broadcast_event("probe", {"n": "2"})
        await wait_until(lambda: kept == ["1", "2"], "the kept listener heard the second event")
        assert removed == ["1"]  # the removed one did not, though the event went by
        m.remove_event_listener(keep)
        await m.broadcast_event("probe", {"n": "3"})
        m.add_event_listener(drop)  # added again: hears what comes next
        await m.broadcast_event("probe", {"n": "4"})
        await wait_until(lambda: removed == ["1", "4"], "the listener added again heard the fourth event")
        assert kept == ["1", "2"]
    finally:
        await m.stop()


async def test_a_listener_may_remove_itself_while_called() -> None:
    m = lone()
    await m.start()
    try:
        once: list[str] = []
        other: list[str] = []

        def one_shot(env: dict[str, Any]) -> None:
            if env["type"] == "probe":
                once.append(env["data"]["n"])
                m.remove_event_listener(one_shot)

        def steady(env: dict[str, Any]) -> None:
            if env["type"] == "probe":
                other.append(env["data"]["n"])

        m.add_event_listener(one_shot)
        m.add_event_listener(steady)  # after it in the list: still called for the same event
        for n in ("1", "2", "3"):
            await m.broadcast_event("probe", {"n": n})
        await wait_until(lambda: other == ["1", "2", "3"], "the steady listener heard all three")
        assert once == ["1"]
    finally:
        await m.stop()
