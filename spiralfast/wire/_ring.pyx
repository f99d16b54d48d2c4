# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled bounded ring buffer of object references.  Twin: ``_ring_py``.

Single-producer/single-consumer across threads without locks: each method below
runs as one C call under the GIL, so the producer's slot store and tail update are
published together, and the consumer only ever touches ``_head``.  The loop is
woken only when the consumer has announced it is about to sleep (the ring was seen
empty), which is exactly the empty -> non-empty transition.
"""

from spiralfast.errors import RingFull
from spiralfast.wire import limits as _limits

COMPILED = True

cdef int POLICY_REJECT = 0
cdef int POLICY_DROP_OLDEST = 1
cdef int POLICY_WAIT = 2

POLICIES = ("reject", "drop_oldest", "wait")


cdef class Ring:
    """Bounded FIFO of object references with power-of-two capacity.

    :param capacity: slots; rounded up to the next power of two (minimum 2).
    :param overflow: what ``push`` does when full: ``"reject"`` raises ``RingFull``,
        ``"drop_oldest"`` evicts the oldest item, ``"wait"`` raises ``RingFull`` from
        ``push`` but makes ``await put()`` wait for space.  Every drop and rejection
        is counted.
    """


    def __init__(self, Py_ssize_t capacity=_limits.DEFAULT_RING_CAPACITY, str overflow="reject"):
        cdef Py_ssize_t cap = 2
        if capacity < 1:
            raise ValueError("ring capacity must be positive")
        while cap < capacity:
            cap <<= 1
        if overflow not in POLICIES:
            raise ValueError(f"overflow must be one of {POLICIES}, not {overflow!r}")
        self.capacity = cap
        self._mask = cap - 1
        self._slots = [None] * cap
        self._head = 0
        self._tail = 0
        self.overflow = overflow
        self._policy = POLICIES.index(overflow)
        self.pushed = self.popped = self.dropped = self.rejected = 0
        self._waiter = None
        self._space_waiter = None
        self._loop = None
        self._waiting = False

    def __len__(self):
        return self._tail - self._head

    cpdef Py_ssize_t qsize(self):
        return self._tail - self._head

    cpdef bint empty(self):
        return self._tail == self._head

    cpdef bint full(self):
        return self._tail - self._head >= self.capacity

    cpdef bint push(self, object item) except -1:
        """Append ``item``.  Returns True; on a full ring applies the overflow policy."""
        cdef Py_ssize_t tail = self._tail
        if tail - self._head >= self.capacity:
            if self._policy == POLICY_DROP_OLDEST:
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

    cpdef object pop(self):
        """Remove and return the oldest item; ``IndexError`` when empty."""
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t i
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

    cpdef list pop_many(self, Py_ssize_t limit=-1):
        """Remove and return up to ``limit`` (all when negative) oldest items."""
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t n = self._tail - head
        cdef Py_ssize_t k, i
        cdef list out
        if limit >= 0 and limit < n:
            n = limit
        out = [None] * n
        for k in range(n):
            i = (head + k) & self._mask
            out[k] = self._slots[i]
            self._slots[i] = None
        self._head = head + n
        self.popped += n
        if n and self._space_waiter is not None:
            self._wake_space()
        return out

    cpdef object peek(self):
        if self._head == self._tail:
            raise IndexError("peek at an empty ring")
        return self._slots[self._head & self._mask]

    def clear(self):
        self.pop_many()

    # -- cross-thread producer ---------------------------------------------------

    cpdef bint push_threadsafe(self, object item) except -1:
        """Append from a thread other than the loop's (single producer).

        Never evicts (that would race with the consumer): a full ring raises
        ``RingFull`` whatever the policy.  Wakes the loop only if the consumer
        is asleep on an empty ring.
        """
        cdef Py_ssize_t tail = self._tail
        if tail - self._head >= self.capacity:
            self.rejected += 1
            raise RingFull(f"ring of {self.capacity} slots is full")
        self._slots[tail & self._mask] = item
        self._tail = tail + 1
        self.pushed += 1
        if self._waiting:
            self._waiting = False
            self._loop.call_soon_threadsafe(self._wake)
        return True

    # -- asyncio integration -----------------------------------------------------

    def _wake(self):
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _wake_space(self):
        w = self._space_waiter
        self._space_waiter = None
        if not w.done():
            w.set_result(None)

    async def wait_nonempty(self):
        """Return once the ring holds at least one item."""
        import asyncio
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

    async def get(self):
        """Wait for an item and return it."""
        if self._head == self._tail:
            await self.wait_nonempty()
        return self.pop()

    async def put(self, item):
        """Append ``item``; with the ``wait`` policy, wait while the ring is full."""
        import asyncio
        if self._policy == POLICY_WAIT:
            while self._tail - self._head >= self.capacity:
                if self._space_waiter is None or self._space_waiter.done():
                    self._space_waiter = asyncio.get_running_loop().create_future()
                await self._space_waiter
        self.push(item)

    def bind_loop(self, loop):
        """Name the loop that ``push_threadsafe`` wakes (else the consumer's loop)."""
        self._loop = loop

    def stats(self):
        return {
            "capacity": self.capacity,
            "size": self._tail - self._head,
            "overflow": self.overflow,
            "pushed": self.pushed,
            "popped": self.popped,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }
