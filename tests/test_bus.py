"""The drop-in API: EventBus: publish/subscribe, helpers, priority, TTL, isolation, stats."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from spiralfast import EventBus, EventType, RitualEvent

from .conftest import run_on
from .waiting import wait_until


def test_attributes_and_defaults() -> None:
    bus = EventBus("n1")
    assert bus.node_id == "n1" and bus.subscribers == {} and bus.running is False
    assert bus.processor_task is None and bus.event_history == [] and bus.max_history == 1000
    assert bus.event_queue.qsize() == 0


def test_publish_delivers_async_with_sync_and_async_handlers(loop_kind: str) -> None:
    async def main() -> None:
        bus = EventBus("n1")
        await bus.start()
        await bus.start()  # idempotent
        got: list[tuple[str, RitualEvent]] = []

        async def ah(ev: RitualEvent) -> None:
            await asyncio.sleep(0)  # an async handler that suspends (what is under test)
            got.append(("async", ev))

        bus.subscribe(EventType.AGENT_SPAWN, lambda ev: got.append(("sync", ev)))
        bus.subscribe(EventType.AGENT_SPAWN, ah)
        eid = await bus.publish(EventType.AGENT_SPAWN, {"a": 1}, metadata={"m": 2})
        assert isinstance(eid, str) and got == []  # delivery happens after publish returns
        await wait_until(lambda: len(got) == 2, 'len(got) == 2')
        assert [k for k, _ in got] == ["sync", "async"]
        ev = got[0][1]
        assert (ev.event_id, ev.event_type, ev.source_node, ev.data, ev.metadata) == (
            eid, EventType.AGENT_SPAWN, "n1", {"a": 1}, {"m": 2},
        )
        assert bus.event_history[-1] is ev
        await bus.stop()
        await bus.stop()
        assert bus.running is False

    run_on(loop_kind, main)


def test_unsubscribe_and_unknown_handler_noop() -> None:
    async def main() -> None:
        bus = EventBus("n")
        await bus.start()
        got: list[Any] = []
        h = got.append
        bus.subscribe(EventType.CUSTOM, h)
        bus.unsubscribe(EventType.CUSTOM, h)
        bus.unsubscribe(EventType.CUSTOM, print)  # unknown: no-op
        bus.unsubscribe(EventType.RITUAL_END, print)
        await bus.publish(EventType.CUSTOM, {})
        await wait_until(lambda: bus.delivered == 1, 'bus.delivered == 1')
        assert got == []
        await bus.stop()

    asyncio.run(main())


def test_helper_publishers() -> None:
    async def main() -> list[RitualEvent]:
        bus = EventBus("n")
        got: list[RitualEvent] = []
        for et in (EventType.AGENT_MESSAGE, EventType.RITUAL_CYCLE, EventType.SYSTEM_ALERT):
            bus.subscribe(et, got.append)
        await bus.start()
        await bus.publish_agent_message("ag", "hi", target_agent="t2", target_node=None)
        await bus.publish_ritual_event("spiral", {"extra": 1}, recursion_depth=3)
        await bus.publish_system_alert("high", "boom", {"d": 1})
        await wait_until(lambda: len(got) == 3, 'len(got) == 3')
        await bus.stop()
        return got

    sa, rc, am = asyncio.run(main())  # one backlog: highest priority first
    assert (am.data, am.priority) == ({"agent_id": "ag", "message": "hi", "target_agent": "t2"}, 7)
    assert (rc.data, rc.priority) == ({"ritual_type": "spiral", "recursion_depth": 3, "extra": 1}, 8)
    assert (sa.data, sa.priority) == ({"alert_level": "high", "message": "boom", "details": {"d": 1}}, 9)


def test_backlog_priority_order_and_fifo_within_priority() -> None:
    async def main() -> list[tuple[int, int]]:
        bus = EventBus("n")
        got: list[tuple[int, int]] = []
        bus.subscribe(EventType.CUSTOM, lambda ev: got.append((ev.priority, ev.data["i"])))
        for i, p in enumerate([1, 5, 9, 5, 1, 9, 5]):
            await bus.publish(EventType.CUSTOM, {"i": i}, priority=p)
        await bus.start()  # the backlog exists before the processor runs
        await wait_until(lambda: len(got) == 7, 'len(got) == 7')
        await bus.stop()
        return got

    assert asyncio.run(main()) == [(9, 2), (9, 5), (5, 1), (5, 3), (5, 6), (1, 0), (1, 4)]


def test_ttl_expiry_and_ttl_zero() -> None:
    async def main() -> tuple[list[int], EventBus]:
        bus = EventBus("n")
        got: list[int] = []
        bus.subscribe(EventType.CUSTOM, lambda ev: got.append(ev.data["i"]))
        await bus.publish(EventType.CUSTOM, {"i": 0}, ttl=0)  # expires at once
        await bus.publish(EventType.CUSTOM, {"i": 1}, ttl=0.05)
        await bus.publish(EventType.CUSTOM, {"i": 2}, ttl=60)
        await bus.publish(EventType.CUSTOM, {"i": 3})
        await asyncio.sleep(0.1)  # let ttl=0.05 lapse while undelivered
        await bus.start()
        await wait_until(lambda: bus.expired + bus.delivered == 4, 'bus.expired + bus.delivered == 4')
        await bus.stop()
        return got, bus

    got, bus = asyncio.run(main())
    assert got == [2, 3]
    assert bus.expired == 2 and [e.data["i"] for e in bus.event_history] == [2, 3]


def test_ttl_zero_expires_even_when_processor_is_idle() -> None:
    async def main() -> EventBus:
        bus = EventBus("n")
        got: list[Any] = []
        bus.subscribe(EventType.CUSTOM, got.append)
        await bus.start()
        await bus.publish(EventType.CUSTOM, {}, ttl=0)
        await wait_until(lambda: bus.expired == 1, 'bus.expired == 1')
        assert got == []
        await bus.stop()
        return bus

    assert asyncio.run(main()).get_event_stats()["expired"] == 1


def test_raising_handler_is_isolated_and_counted(caplog: Any) -> None:
    async def main() -> tuple[list[int], EventBus]:
        bus = EventBus("n")
        got: list[int] = []

        def bad(ev: RitualEvent) -> None:
            raise RuntimeError("boom")

        async def bad_async(ev: RitualEvent) -> None:
            raise ValueError("boom2")

        bus.subscribe(EventType.CUSTOM, bad)
        bus.subscribe(EventType.CUSTOM, bad_async)
        bus.subscribe(EventType.CUSTOM, lambda ev: got.append(ev.data["i"]))
        await bus.start()
        for i in range(3):
            await bus.publish(EventType.CUSTOM, {"i": i})
        await wait_until(lambda: len(got) == 3, 'len(got) == 3')
        await bus.stop()
        return got, bus

    got, bus = asyncio.run(main())
    assert got == [0, 1, 2]
    assert bus.handler_errors == 6
    assert "boom" in caplog.text


def test_history_bounded_and_stats_shape() -> None:
    async def main() -> EventBus:
        bus = EventBus("n")
        bus.max_history = 10
        bus.subscribe(EventType.CUSTOM, lambda ev: None)
        await bus.start()
        for i in range(25):
            await bus.publish(EventType.CUSTOM, {"i": i})
        await bus.publish(EventType.RITUAL_END, {"i": 99})
        await wait_until(lambda: bus.delivered == 26, 'bus.delivered == 26')
        await bus.stop()
        return bus

    bus = asyncio.run(main())
    assert len(bus.event_history) == 10 and bus.event_history[-1].data["i"] == 99
    st = bus.get_event_stats()
    assert st["total_events"] == 10 and st["queue_size"] == 0 and st["running"] is False
    assert st["subscribers"] == {"custom": 1}
    assert st["recent_event_counts"] == {"custom": 9, "ritual_end": 1}
    assert (st["published"], st["delivered"], st["expired"], st["dropped"], st["handler_errors"]) == (26, 26, 0, 0, 0)
    recent = bus.get_recent_events(3)
    assert [r["data"]["i"] for r in recent] == [23, 24, 99] and recent[-1]["event_type"] == "ritual_end"
    assert len(bus.get_recent_events()) == 10


def test_queue_size_visible_before_start() -> None:
    async def main() -> dict[str, Any]:
        bus = EventBus("n")
        await bus.publish(EventType.CUSTOM, {})
        await bus.publish(EventType.CUSTOM, {})
        return bus.get_event_stats()

    assert asyncio.run(main())["queue_size"] == 2


def test_publish_from_threads(loop_kind: str) -> None:
    async def main() -> list[int]:
        bus = EventBus("n")
        got: list[int] = []
        bus.subscribe(EventType.CUSTOM, lambda ev: got.append(ev.data["i"]))
        await bus.start()

        def worker(base: int) -> None:
            for i in range(2000):
                bus.publish_threadsafe(EventType.CUSTOM, {"i": base + i})

        threads = [threading.Thread(target=worker, args=(k * 10000,)) for k in range(2)]
        for t in threads:
            t.start()
        await wait_until(lambda: len(got) == 4000, 'len(got) == 4000')
        for t in threads:
            t.join()
        await bus.stop()
        return got

    got = run_on(loop_kind, main)
    for base in (0, 10000):
        assert [x for x in got if base <= x < base + 10000] == list(range(base, base + 2000))


def test_ritual_event_twins_behave_identically() -> None:
    from datetime import datetime

    from spiralfast.wire import _event_py
    from spiralfast.wire._native import PUREPYTHON_REQUESTED

    impls = [_event_py]
    if not PUREPYTHON_REQUESTED:
        from spiralfast.wire import _event

        impls.append(_event)
    seen = []
    for impl in impls:
        E = impl.RitualEvent
        a = E("id", EventType.CUSTOM, "n", None, 1700000000.5, {"d": 1}, None, 3, 0.5)
        b = E("id", EventType.CUSTOM, "n", None, datetime.fromtimestamp(1700000000.5), {"d": 1}, {}, 3, 0.5)
        assert a == b and a.metadata == {}
        assert (a != b) is False  # noqa: SIM202 - __ne__ is under test
        a.metadata["x"] = 1
        assert a != b
        a.timestamp = datetime(2026, 1, 1)
        assert a.epoch == datetime(2026, 1, 1).timestamp()
        try:
            hash(a)
            hashable = True
        except TypeError:
            hashable = False
        d = b.to_dict()
        seen.append((repr(b), d, E.from_dict(d) == b, hashable, b.priority, b.ttl))
    assert all(s == seen[0] for s in seen) and seen[0][2] is True and seen[0][3] is False


def test_foreign_item_on_the_queue_is_dropped_and_the_bus_keeps_running() -> None:
    async def main() -> None:
        bus = EventBus("n")
        got: list[Any] = []
        bus.subscribe(EventType.CUSTOM, got.append)
        await bus.start()
        bus.event_queue.push("not an event")
        await bus.publish(EventType.CUSTOM, {"x": 1})
        await wait_until(lambda: bool(got), 'bool(got)')  # the good event after the bad one is delivered
        assert len(got) == 1 and bus.running and bus.dropped == 1
        assert bus.processor_task is not None and not bus.processor_task.done()
        await bus.stop()

    asyncio.run(main())
