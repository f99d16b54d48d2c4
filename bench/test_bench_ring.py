"""Ring buffer vs asyncio.Queue and collections.deque: push+pop of 1000 items."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from spiralfast.wire import _ring_py

try:
    from spiralfast.wire import _ring as _ring_c
except ImportError:  # pragma: no cover
    _ring_c = None  # type: ignore[assignment]

N = 1000
IMPLS = [pytest.param(_ring_py, id="pure")]
if _ring_c is not None:
    IMPLS.insert(0, pytest.param(_ring_c, id="compiled"))


@pytest.mark.benchmark(group="ring-1000")
@pytest.mark.parametrize("impl", IMPLS)
def test_ring_push_pop(benchmark: Any, impl: Any) -> None:
    r = impl.Ring(2048)
    push, pop = r.push, r.pop

    def run() -> None:
        for i in range(N):
            push(i)
            pop()

    benchmark(run)
    assert r.empty()


@pytest.mark.benchmark(group="ring-1000")
def test_asyncio_queue(benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    q: asyncio.Queue[int] = asyncio.Queue(2048)
    put, get = q.put_nowait, q.get_nowait

    def run() -> None:
        for i in range(N):
            put(i)
            get()

    benchmark(run)
    assert q.empty()
    got = []  # the baseline does the same work, in order (checked outside the timed loop)
    for i in range(N):
        put(i)
        got.append(get())
    assert got == list(range(N))
    loop.close()


@pytest.mark.benchmark(group="ring-1000")
def test_deque(benchmark: Any) -> None:
    d: collections.deque[int] = collections.deque(maxlen=2048)
    put, get = d.append, d.popleft

    def run() -> None:
        for i in range(N):
            put(i)
            get()

    benchmark(run)
    assert not d
    got = []  # the baseline does the same work, in order (checked outside the timed loop)
    for i in range(N):
        put(i)
        got.append(get())
    assert got == list(range(N))
