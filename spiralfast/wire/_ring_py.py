"""Pure-Python twin of ``spiralfast.wire._ring``: same behaviour, same counters.

Cross-thread use relies on single-producer/single-consumer discipline: the
producer stores the slot before publishing ``_tail`` and only the consumer moves
``_head``; attribute stores are atomic under the GIL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import RingFull
from . import limits as _limits

COMPILED = False

POLICIES = ("reject", "drop_oldest", "wait")
_POLICY_REJECT, _POLICY_DROP_OLDEST, _POLICY_WAIT = 0, 1, 2


class Ring:
    """Bounded FIFO of object references with power-of-two capacity.

    :param capacity: slots; rounded up to the next power of two (minimum 2).
    :param overflow: what ``push`` does when full: ``"reject"`` raises ``RingFull``,
        ``"drop_oldest"`` evicts the oldest item, ``"wait"`` raises ``RingFull`` from
        ``push`` but makes ``await put()`` wait for space.  Every drop and rejection
        is counted.
    """

    __slots__ = (
        "_slots", "_head", "_tail", "_mask", "capacity", "_policy", "overflow",
        "pushed", "popped", "dropped", "rejected", "_waiter", "_space_waiter",
        "_loop", "_waiting",
    )

    def __init__(self, capacity: int = _limits.DEFAULT_RING_CAPACITY, overflow: str = "reject") -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be positive")
        cap = 2
        while cap < capacity:
            cap <<= 1
        if overflow not in POLICIES:
            raise ValueError(f"overflow must be one of {POLICIES}, not {overflow!r}")
        self.capacity = cap
        self._mask = cap - 1
        self._slots: list[Any] = [None] * cap
        self._head = 0
        self._tail = 0
        self.overflow = overflow
        self._policy = POLICIES.index(overflow)
        self.pushed = self.popped = self.dropped = self.rejected = 0
        self._waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = False

    def __len__(self) -> int:
        return self._tail - self._head

    def qsize(self) -> int:
        return self._tail - self._head

    def empty(self) -> bool:
        return self._tail == self._head

    def full(self) -> bool:
        return self._tail - self._head >= self.capacity

    def push(self, item: Any) -> bool:
        """Append ``item``.  Returns True; on a full ring applies the overflow policy."""
        tail = self._tail
        if tail - self._head >= self.capacity:
            if self._policy == _POLICY_DROP_OLDEST:
                self._slots[self._head & self._mask] = None
                self._head += 1
                self.dropped += 1
            else:
                self.rejected += 1
                raise RingFull(f"ring of {self.capacity} slots is full")
        self._slots[tail & self._mask] = item
        self._tail = tail + 1
        self.pushed += 1
        if self._waiter is not None:
            self._wake()
        return True

    def pop(self) -> Any:
        """Remove and return the oldest item; ``IndexError`` when empty."""
        head = self._head
        if head == self._tail:
            raise IndexError("pop from an empty ring")
        i = head & self._mask
        item = self._slots[i]
        self._slots[i] = None
        self._head = head + 1
        self.popped += 1
        if self._space_waiter is not None:
            self._wake_space()
        return item

    def pop_many(self, limit: int = -1) -> list[Any]:
        """Remove and return up to ``limit`` (all when negative) oldest items."""
        head = self._head
        n = self._tail - head
        if 0 <= limit < n:
            n = limit
        mask = self._mask
        slots = self._slots
        out = [None] * n
        for k in range(n):
            i = (head + k) & mask
            out[k] = slots[i]
            slots[i] = None
        self._head = head + n
        self.popped += n
        if n and self._space_waiter is not None:
            self._wake_space()
        return out

    def peek(self) -> Any:
        if self._head == self._tail:
            raise IndexError("peek at an empty ring")
        return self._slots[self._head & self._mask]

    def clear(self) -> None:
        self.pop_many()

    def push_threadsafe(self, item: Any) -> bool:
        """Append from a thread other than the loop's (single producer).

        Never evicts (that would race with the consumer): a full ring raises
        ``RingFull`` whatever the policy.  Wakes the loop only if the consumer
        is asleep on an empty ring.
        """
        tail = self._tail
        if tail - self._head >= self.capacity:
            self.rejected += 1
            raise RingFull(f"ring of {self.capacity} slots is full")
        self._slots[tail & self._mask] = item
        self._tail = tail + 1
        self.pushed += 1
        if self._waiting:
            self._waiting = False
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake)
        return True

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _wake_space(self) -> None:
        w = self._space_waiter
        self._space_waiter = None
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_nonempty(self) -> None:
        """Return once the ring holds at least one item."""
        while self._head == self._tail:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            if self._waiter is None or self._waiter.done():
                self._waiter = self._loop.create_future()
            waiter = self._waiter
            self._waiting = True
            if self._head != self._tail:
                self._waiting = False
                break
            try:
                await waiter
            finally:
                self._waiting = False

    async def get(self) -> Any:
        """Wait for an item and return it."""
        if self._head == self._tail:
            await self.wait_nonempty()
        return self.pop()

    async def put(self, item: Any) -> None:
        """Append ``item``; with the ``wait`` policy, wait while the ring is full."""
        if self._policy == _POLICY_WAIT:
            while self._tail - self._head >= self.capacity:
                if self._space_waiter is None or self._space_waiter.done():
                    self._space_waiter = asyncio.get_running_loop().create_future()
                await self._space_waiter
        self.push(item)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Name the loop that ``push_threadsafe`` wakes (else the consumer's loop)."""
        self._loop = loop

    def stats(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "size": self._tail - self._head,
            "overflow": self.overflow,
            "pushed": self.pushed,
            "popped": self.popped,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }
