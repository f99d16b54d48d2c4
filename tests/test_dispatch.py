"""Coroutine handlers run eagerly, in arrival order (spiralfast/dispatch.py's rule):
one that finishes without suspending costs no task; one that suspends is finished by a
task and later events wait behind it.  Runs on both twins (the CI runs the suite twice)."""

from __future__ import annotations

import asyncio
from typing import Any

from spiralfast.testing import LocalMesh

from .waiting import wait_until


def test_order_holds_when_some_handlers_suspend() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            seen: list[tuple[str, int]] = []

            async def first(env: dict[str, Any]) -> None:
                i = env["data"]["i"]
                seen.append(("first-start", i))
                if i % 3 == 0:
                    await asyncio.sleep(0.002)  # suspends now and then
                seen.append(("first-end", i))

            def second(env: dict[str, Any]) -> None:
                seen.append(("second", env["data"]["i"]))

            b.register_event_handler("o", first)
            b.register_event_handler("o", second)
            for i in range(300):
                await a.broadcast_event("o", {"i": i})
            await wait_until(lambda: len(seen) == 900, 'len(seen) == 900')
            expected = [(k, i) for i in range(300) for k in ("first-start", "first-end", "second")]
            assert seen == expected  # exactly as if each handler were awaited in turn
            assert b.counters["handler_errors"] == 0

    asyncio.run(main())


def test_handlers_that_need_a_task_and_failing_coroutines() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            got: list[int] = []
            tasks: list[Any] = []

            async def with_timeout(env: dict[str, Any]) -> None:
                async with asyncio.timeout(5):  # needs a running task in its first step
                    got.append(env["data"]["i"])
                    await asyncio.sleep(0)  # a handler that suspends (what is under test)
                    tasks.append(asyncio.current_task())

            async def fails_at_once(env: dict[str, Any]) -> None:
                raise ValueError("boom")

            async def fails_later(env: dict[str, Any]) -> None:
                await asyncio.sleep(0)  # fails after suspending once (what is under test)
                raise ValueError("later")

            b.register_event_handler("t", with_timeout)
            b.register_event_handler("f", fails_at_once)
            b.register_event_handler("g", fails_later)
            for i in range(20):
                await a.broadcast_event("t", {"i": i})
            await a.broadcast_event("f", {})
            await a.broadcast_event("g", {})
            await wait_until(lambda: len(got) == 20 and b.counters["handler_errors"] == 2, 'len(got) == 20 and b.counters["handler_errors"] == 2')
            assert got == list(range(20))  # each once, in order (re-run in a task the first time)
            assert len(tasks) == 20 and all(isinstance(t, asyncio.Task) for t in tasks)  # each ran in a task

    asyncio.run(main())


def test_slow_plain_handlers_never_starve_the_loop() -> None:
    """Plain handlers that block (synchronous I/O) get the loop for about TURN_BUDGET at
    a time: then the receive path queues (order kept) and the handler task yields, so
    timers (heartbeats, failure detection) keep running during a backlog."""
    import time

    from spiralfast.node.dispatch import TURN_BUDGET

    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            seen: list[int] = []

            def slow(env: dict[str, Any]) -> None:
                time.sleep(0.002)  # time itself: a handler that holds the loop
                seen.append(env["data"]["i"])

            b.register_event_handler("s", slow)
            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.005)  # time itself: a ticker measuring the loop's gaps
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            t = asyncio.ensure_future(ticker())
            for i in range(400):  # 0.8 s of handler work
                await a.broadcast_event("s", {"i": i})
            await wait_until(lambda: len(seen) == 400, 'len(seen) == 400', timeout=10)
            t.cancel()
            assert seen == list(range(400))  # every event once, in order
            assert max(gaps) < TURN_BUDGET + 0.25, max(gaps)  # 0.8 s (all of it) when the loop starves
            assert b.counters["handler_errors"] == 0

    asyncio.run(main())
