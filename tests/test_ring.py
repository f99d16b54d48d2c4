"""Ring buffer: both implementations, same behaviour, real cross-thread producer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralfast.errors import RingFull

from .conftest import run_on
from .twins import Twins, ring_impl_fixture, twins_fixture  # noqa: F401 - the fixtures ``ring_impl``, ``twins``


def test_capacity_rounds_up_to_power_of_two(ring_impl: Any) -> None:
    assert ring_impl.Ring(5).capacity == 8
    assert ring_impl.Ring(8).capacity == 8
    assert ring_impl.Ring(1).capacity == 2
    with pytest.raises(ValueError):
        ring_impl.Ring(0)
    with pytest.raises(ValueError):
        ring_impl.Ring(4, overflow="explode")


def test_fifo_push_pop_and_pop_many(ring_impl: Any) -> None:
    r = ring_impl.Ring(8)
    for i in range(5):
        r.push(i)
    assert r.qsize() == len(r) == 5
    assert r.peek() == 0
    assert r.pop() == 0
    assert r.pop_many(2) == [1, 2]
    assert r.pop_many() == [3, 4]
    assert r.empty() and r.pop_many() == []
    with pytest.raises(IndexError):
        r.pop()
    assert (r.pushed, r.popped) == (5, 5)


def test_wraps_around_many_times(ring_impl: Any) -> None:
    r = ring_impl.Ring(4)
    out = []
    for i in range(1000):
        r.push(i)
        if i % 3 == 2:
            out.extend(r.pop_many())
    out.extend(r.pop_many())
    assert out == list(range(1000))


def test_reject_policy_counts_and_keeps_contents(ring_impl: Any) -> None:
    r = ring_impl.Ring(2, overflow="reject")
    r.push("a")
    r.push("b")
    assert r.full()
    with pytest.raises(RingFull):
        r.push("c")
    assert r.rejected == 1 and r.pop_many() == ["a", "b"]


def test_drop_oldest_policy_counts(ring_impl: Any) -> None:
    r = ring_impl.Ring(2, overflow="drop_oldest")
    for x in "abcd":
        r.push(x)
    assert r.dropped == 2 and r.pop_many() == ["c", "d"]
    assert r.stats()["dropped"] == 2


def test_popped_slots_release_references(ring_impl: Any) -> None:
    import gc
    import weakref

    class Obj:
        pass

    r = ring_impl.Ring(4)
    o = Obj()
    ref = weakref.ref(o)
    r.push(o)
    del o
    r.pop()
    gc.collect()
    assert ref() is None


@given(st.lists(st.one_of(st.tuples(st.just("push"), st.integers()), st.tuples(st.just("pop"), st.integers(0, 5)))))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the twins hold no state
@pytest.mark.parametrize("twins", ["ring"], indirect=True)
def test_twins_behave_identically(twins: Twins, ops: list[tuple[str, int]]) -> None:
    results = []
    for impl in twins.both:
        r = impl.Ring(4, overflow="drop_oldest")
        log = []
        for op, arg in ops:
            if op == "push":
                r.push(arg)
            else:
                log.append(r.pop_many(arg))
        log.append((r.pushed, r.popped, r.dropped, r.qsize()))
        results.append(log)
    assert all(x == results[0] for x in results)


def test_wait_policy_put_waits_for_space(ring_impl: Any, loop_kind: str) -> None:
    async def main() -> list[int]:
        r = ring_impl.Ring(2, overflow="wait")
        await r.put(1)
        await r.put(2)
        with pytest.raises(RingFull):
            r.push(3)
        task = asyncio.ensure_future(r.put(3))
        await asyncio.sleep(0)  # one loop turn: the put has run up to its wait
        assert not task.done()
        got = [r.pop()]
        await asyncio.wait_for(task, 2)
        got.extend(r.pop_many())
        return got

    assert run_on(loop_kind, main) == [1, 2, 3]


def test_get_waits_for_same_thread_push(ring_impl: Any, loop_kind: str) -> None:
    async def main() -> Any:
        r = ring_impl.Ring(4)
        asyncio.get_running_loop().call_later(0.01, r.push, "x")
        return await asyncio.wait_for(r.get(), 2)

    assert run_on(loop_kind, main) == "x"


def test_second_thread_produces_while_loop_consumes(ring_impl: Any, loop_kind: str) -> None:
    n = 200_000

    async def main() -> tuple[list[int], int]:
        r = ring_impl.Ring(1024)
        r.bind_loop(asyncio.get_running_loop())
        wakeups = 0

        def producer() -> None:
            i = 0
            while i < n:
                try:
                    r.push_threadsafe(i)
                    i += 1
                except RingFull:
                    threading.Event().wait(0.0001)

        t = threading.Thread(target=producer)
        t.start()
        got: list[int] = []
        while len(got) < n:
            if r.empty():
                wakeups += 1
                await asyncio.wait_for(r.wait_nonempty(), 10)
            got.extend(r.pop_many())
        t.join()
        return got, wakeups

    got, wakeups = run_on(loop_kind, main)
    assert got == list(range(n))
    # The loop sleeps only when empty, so wakeups are far fewer than items.
    assert wakeups < n // 10
