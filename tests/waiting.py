"""Wait for conditions, not clocks.

Every test that waits on state another task, thread or process produces waits
here: a condition, a deadline, and a message naming what never happened.  A
plain ``sleep`` stays in the suite only where the test means time itself (a
slow handler, a pause), with a comment saying so.

- ``wait_until(cond, what)``: in a coroutine, polls a plain ``cond()``.
- ``wait_until_async(cond, what)``: in a coroutine, polls ``await cond()``
  (a Redis query, an HTTP request, a database count).
- ``wait_until_sync(cond, what)``: in a thread or a test that drives
  processes, polls ``cond()`` with ``time.sleep``.

Each returns the first truthy value of the condition, so a test can use what
it waited for (``msg = await wait_until(lambda: inbox and inbox[0], ...)``).
``what`` may also be a callable, called only when the deadline passes, so the
message can name the last state a condition observed (``lambda: f"... {seen}"``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Generous on purpose: the deadline only bounds a failing test; a passing one
#: returns as soon as the condition holds, however loaded the machine is.
DEFAULT_TIMEOUT = 20.0


#: What never happened: a message, or a callable giving one when the deadline passes.
What = str | Callable[[], str]


def _never(what: What, timeout: float, last: object) -> AssertionError:
    if callable(what):
        what = what()
    detail = f" (last value: {last!r})" if last is not None and last is not False else ""
    return AssertionError(f"never happened within {timeout}s: {what}{detail}")


async def wait_until(
    cond: Callable[[], T], what: What, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01
) -> T:
    """Poll ``cond()`` on the running loop until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _never(what, timeout, value)
        await asyncio.sleep(interval)


async def wait_until_async(
    cond: Callable[[], Awaitable[T]],
    what: What,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
) -> T:
    """Poll ``await cond()`` until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _never(what, timeout, value)
        await asyncio.sleep(interval)


def wait_until_sync(
    cond: Callable[[], T], what: What, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02
) -> T:
    """Poll ``cond()`` from a thread (no event loop) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _never(what, timeout, value)
        time.sleep(interval)

