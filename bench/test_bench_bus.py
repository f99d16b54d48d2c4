"""EventBus publish -> handler throughput vs the reference semantics, on uvloop.

Each round publishes N events with ``await bus.publish(...)`` and waits until a
plain handler has seen all of them.  events/s = N / mean.
The baseline is the obvious implementation of the old semantics: asyncio.Queue,
uuid4 ids, datetime.now() stamps, one await per event.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import uvloop

from spiralfast import EventBus, EventType

N = 100_000


@dataclass
class _RefEvent:
    event_id: str
    event_type: EventType
    source_node: str
    target_node: str | None
    timestamp: datetime
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    ttl: int | None = None


class BaselineBus:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.subscribers: dict[EventType, list[Any]] = {}
        self.queue: asyncio.Queue[_RefEvent] = asyncio.Queue()
        self.history: list[_RefEvent] = []

    def subscribe(self, et: EventType, h: Any) -> None:
        self.subscribers.setdefault(et, []).append(h)

    async def publish(self, et: EventType, data: dict[str, Any]) -> str:
        ev = _RefEvent(str(uuid.uuid4()), et, self.node_id, None, datetime.now(), data)
        await self.queue.put(ev)
        return ev.event_id

    async def run(self) -> None:
        while True:
            ev = await self.queue.get()
            if ev.ttl is not None and (datetime.now() - ev.timestamp).total_seconds() > ev.ttl:
                continue
            for h in self.subscribers.get(ev.event_type, []):
                if asyncio.iscoroutinefunction(h):
                    await h(ev)
                else:
                    h(ev)
            self.history.append(ev)
            if len(self.history) > 1000:
                self.history = self.history[-1000:]


async def _round(make_bus: Any) -> int:
    """Publish N events through ``make_bus()`` and wait until a plain handler saw all;
    returns how many it saw."""
    done = asyncio.get_running_loop().create_future()
    count = 0

    def handler(ev: Any) -> None:
        nonlocal count
        count += 1
        if count == N:
            done.set_result(None)

    bus = make_bus()
    bus.subscribe(EventType.CUSTOM, handler)
    if isinstance(bus, EventBus):
        await bus.start()
        runner = None
    else:
        runner = asyncio.ensure_future(bus.run())
    publish = bus.publish
    data = {"k": 1}
    for _ in range(N):
        await publish(EventType.CUSTOM, data)
    await done
    if runner is None:
        await bus.stop()
    else:
        runner.cancel()
    return count


async def _spiralfast_round() -> int:
    return await _round(lambda: EventBus("bench"))


async def _baseline_round() -> int:
    return await _round(lambda: BaselineBus("bench"))


@pytest.mark.benchmark(group=f"bus-{N}-events")
@pytest.mark.parametrize("impl", ["spiralfast", "baseline"])
def test_bus_throughput(benchmark: Any, impl: str) -> None:
    fn = _spiralfast_round if impl == "spiralfast" else _baseline_round
    seen = benchmark.pedantic(lambda: uvloop.run(fn()), rounds=5, iterations=1, warmup_rounds=1)
    assert seen == N  # every event published reached the handler, once
    benchmark.extra_info["events_per_s"] = N / benchmark.stats.stats.mean
