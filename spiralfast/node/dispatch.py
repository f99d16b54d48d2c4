"""The dispatcher: delivers event envelopes to this node's handlers.

One object holds what delivery needs: the handler table, the handler queue (a ring,
with a spill list for what arrives after reading was paused), the recent-events log,
the observers following events, event listeners, and error accounting.  The compiled
receive and send paths (``_fastpath``) are given this object, never the node.

Ordering rule: envelopes are handled in arrival order, one at a time.  When nothing
is queued ahead, plain handlers run inline, and a coroutine handler runs *eagerly*: its
coroutine is started in place and, if it finishes without suspending, costs no task
and no queue hop.  If it suspends, a task finishes it, and every later envelope queues
behind it (the handler task waits for it first), so arrival order holds exactly as if
each handler were awaited in turn.  A backlog is worked off by the handler task.

The eager step runs in the receive path's context, as plain handlers do (a task
finishing a suspended one gets a copy of it).  It runs outside any task, so ``asyncio.current_task()`` is None there: a handler that needs a
task in its first step (``asyncio.timeout``, ``TaskGroup``) raises RuntimeError; it is
then run again in the handler task, and always there from then on.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._log import RateLimitedLog
from ..errors import RingFull
from ..ops.status import envelope
from ..wire.limits import DEFAULT_RING_CAPACITY
from ..wire.ring import Ring

log = logging.getLogger("spiralfast.node.dispatch")

#: Events kept for ``mesh events`` (CLI, dashboard).
RECENT_EVENTS = 1000
#: Handler-queue fill at which the node stops reading from its links (TCP then
#: pushes back on the senders) and the fill at which it reads again.  The gap is
#: larger than one frame's messages, so a frame in flight always fits.
INBOX_HIGH_WATER = DEFAULT_RING_CAPACITY // 2
INBOX_LOW_WATER = DEFAULT_RING_CAPACITY // 8
#: Seconds of handler work after which the loop gets a turn (timers: heartbeats, the
#: failure detector; other links): the receive path then queues what follows instead
#: of running it inline (``defer``), and the handler task yields between chunks of
#: ``RUN_CHUNK`` envelopes (or every 8 when over the budget).  A backlog makes the
#: node slow, never deaf.
TURN_BUDGET = 0.05
RUN_CHUNK = 512
#: How the handler task yields over budget: a short sleep, not ``sleep(0)``, so a timer's
#: callback *and* the task it wakes (a heartbeat loop) both run before the next chunk.
YIELD_PAUSE = 0.001

EnvelopeHandler = Callable[[dict[str, Any]], Any]


class Dispatcher:
    """Delivery to local handlers (see the module docstring for the ordering rule).

    :param set_reading: ``set_reading(on)`` stops or restarts reading from every link
        (flow control when the handler queue fills).
    """

    def __init__(self, set_reading: Callable[[bool], None] = lambda on: None) -> None:
        self.handlers: dict[str, list[EnvelopeHandler]] = {}
        self.inbox = Ring(DEFAULT_RING_CAPACITY, overflow="reject")
        self.spill: deque[Any] = deque()
        self.recent: deque[Any] = deque(maxlen=RECENT_EVENTS)  # Event structs or envelopes
        self.observers: set[Any] = set()  # observer links; LISTENERS while listeners exist
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.event_sink: Callable[[Any], None] | None = None  # the event log, when persisting
        self.push_follow: Callable[[Any, dict[str, Any]], None] | None = None  # set by the node
        #: ``sample_latency(seconds)``: the receive path reports one event in 64 (metrics).
        self.sample_latency: Callable[[float], None] | None = None
        self.set_reading = set_reading
        self.reading_paused = False
        self.handler_errors = 0
        self.spilled = 0
        self.pending: set[asyncio.Task[Any]] = set()
        self.current: asyncio.Task[Any] | None = None  # an eager handler that suspended
        self.needs_task: set[Any] = set()  # handlers whose first step needs a running task
        self._errlog = RateLimitedLog(log)
        #: ``(env, handlers)``: inline or queued (the node sets the receive path's).
        self.deliver_to: Callable[[dict[str, Any], list[Any]], None] = lambda env, handlers: self.queue(env)

    # -- delivery -------------------------------------------------------------------

    def deliver(self, env: dict[str, Any]) -> None:
        """Deliver an envelope to the handlers of its type (inline, or queued)."""
        handlers = self.handlers.get(env["type"])
        if handlers:
            self.deliver_to(env, handlers)

    def queue(self, env: dict[str, Any]) -> None:
        """Queue an envelope for the handler task (async handlers, or a backlog)."""
        inbox = self.inbox
        if self.spill:
            self.spill.append(env)
            return
        try:
            inbox.push(env)
        except RingFull:
            # Reading is already paused (see below); what the transports had buffered
            # before the pause still arrives.  Bounded by their read buffers: keep it.
            self.spill.append(env)
            self.spilled += 1
        if not self.reading_paused and inbox.qsize() > INBOX_HIGH_WATER:
            self.reading_paused = True
            self.set_reading(False)

    def defer(self) -> None:
        """Handlers have held the loop for ``TURN_BUDGET``: what arrives next waits in the
        queue behind a marker (order kept), and the handler task works it off, yielding."""
        if not self.spill and self.inbox.empty():
            self.inbox.push(_WAKE)

    def run_eager(self, env: dict[str, Any], handlers: list[Any]) -> None:
        """Nothing is queued: run ``handlers`` now, coroutines eagerly (module docstring).
        (The compiled receive path has this loop in C; this is the pure twin's.)"""
        for i, h in enumerate(handlers):
            if self.needs_task and h in self.needs_task:
                return self.queue_rest(env, handlers, i)
            try:
                r = h(env)
            except Exception:
                self.handler_failed(h, env)
                continue
            if r is None:
                continue
            if not inspect.iscoroutine(r):
                if inspect.isawaitable(r):
                    self.spawn(r)
                continue
            try:
                fut = r.send(None)
            except StopIteration:
                continue
            except RuntimeError as exc:
                if self.first_step_failed(h, env, handlers, i, exc):
                    return None
                continue
            except Exception:
                self.handler_failed(h, env)
                continue
            return self.suspended(r, fut, h, env, handlers, i)
        return None

    def queue_rest(self, env: dict[str, Any], handlers: list[Any], i: int) -> None:
        """Queue ``env`` for the handler task, to run ``handlers[i:]``."""
        self.queue({**env, _REST: handlers[i:]})

    def first_step_failed(self, h: Any, env: dict[str, Any], handlers: list[Any], i: int,
                          exc: RuntimeError) -> bool:
        """The eager step raised RuntimeError.  If it wanted a running task, run the
        handler again in the handler task (and always there from now on): True."""
        if "task" not in str(exc).lower():
            self.handler_failed(h, env)
            return False
        self.needs_task.add(h)
        self.queue_rest(env, handlers, i)
        return True

    def suspended(self, coro: Any, fut: Any, h: Any, env: dict[str, Any], handlers: list[Any], i: int) -> None:
        """An eager handler suspended: a task finishes it; later envelopes wait behind it."""
        task = asyncio.get_running_loop().create_task(_resume(coro, fut), context=contextvars.copy_context())
        self.current = task
        task.add_done_callback(lambda t: self._current_done(t, h, env))
        self.inbox.push(_WAKE)  # the handler task waits for it before anything queued after
        if i + 1 < len(handlers):
            self.queue_rest(env, handlers, i + 1)

    def _current_done(self, t: asyncio.Task[Any], h: Any, env: dict[str, Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            self.handler_errors += 1
            self._errlog(("handler", getattr(h, "__qualname__", repr(h))), logging.ERROR,
                         "event handler %r failed on %s", h, env.get("event_id"), exc_info=t.exception())

    async def run(self) -> None:
        """The handler task: runs queued envelopes in order."""
        ring = self.inbox
        clock = time.monotonic
        t0 = clock()
        while True:
            if ring.empty():
                await ring.wait_nonempty()
                t0 = clock()
            elif clock() - t0 > TURN_BUDGET:
                await asyncio.sleep(YIELD_PAUSE)  # the ring is not empty: arrivals queue behind it
                t0 = clock()
            spill = self.spill
            while spill and not ring.full():
                ring.push(spill.popleft())
            if self.reading_paused and not spill and ring.qsize() < INBOX_LOW_WATER:
                self.reading_paused = False
                self.set_reading(True)
            n = 0
            for env in ring.pop_many(RUN_CHUNK):
                n += 1
                if not n & 7 and clock() - t0 > TURN_BUDGET:
                    if ring.empty():  # arrivals while we yield must queue behind the rest
                        ring.push(_WAKE)
                    await asyncio.sleep(YIELD_PAUSE)
                    t0 = clock()
                cur = self.current
                if cur is not None:  # an eager handler that suspended goes first
                    if not cur.done():
                        await asyncio.wait((cur,))
                    self.current = None
                if env is _WAKE:
                    continue
                rest = env.pop(_REST, None) if _REST in env else None
                for h in rest if rest is not None else self.handlers.get(env["type"], ()):
                    try:
                        r = h(env)
                        if r is not None and inspect.isawaitable(r):
                            if ring.empty():  # arrivals while it runs must queue behind the rest
                                ring.push(_WAKE)
                            await r
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self.handler_failed(h, env)

    def spawn(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self.pending.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, t: asyncio.Task[Any]) -> None:
        self.pending.discard(t)
        if not t.cancelled() and t.exception() is not None:
            self.handler_errors += 1
            log.error("event handler coroutine failed", exc_info=t.exception())

    def handler_failed(self, h: Any, env: dict[str, Any]) -> None:
        self.handler_errors += 1
        self._errlog(
            ("handler", getattr(h, "__qualname__", repr(h))), logging.ERROR,
            "event handler %r failed on %s", h, env.get("event_id"), exc_info=True,
        )

    def cancel(self) -> None:
        for t in list(self.pending):
            t.cancel()
        if self.current is not None:
            self.current.cancel()
            self.current = None

    # -- observers and listeners ------------------------------------------------------

    def push_observers(self, ev: Any) -> None:
        """An event was sent or received: the event log (the event as it is), then
        listeners and following observers (an envelope)."""
        if self.event_sink is not None:
            self.event_sink(ev)
        env = None
        if self.listeners:
            env = envelope(ev)
            self._tell_listeners(env)
        obs = self.observers
        push = self.push_follow
        # Only the event log or listeners (LISTENERS alone): no observer to push to, no copy.
        if push is not None and (len(obs) > 1 or LISTENERS not in obs):
            for link in list(obs):
                if link is not LISTENERS:
                    if env is None:
                        env = envelope(ev)
                    push(link, env)

    def _tell_listeners(self, env: dict[str, Any]) -> None:
        for fn in list(self.listeners):
            try:
                fn(env)
            except Exception:
                self._errlog(("listener", repr(fn)), logging.ERROR, "event listener %r failed", fn, exc_info=True)

    def set_event_sink(self, fn: Callable[[Any], None] | None) -> None:
        """``fn(event)`` gets every event sent or received as it is (a wire struct or an
        envelope): the event log's cheap path (no envelope built for it)."""
        self.event_sink = fn
        if fn is not None:
            self.observers.add(LISTENERS)
        elif not self.listeners:
            self.observers.discard(LISTENERS)

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.listeners.append(fn)
        self.observers.add(LISTENERS)

    def remove_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)
        if not self.listeners and self.event_sink is None:
            self.observers.discard(LISTENERS)

    def announce(self, env: dict[str, Any]) -> None:
        """An envelope this node made itself (a membership change): tell the event
        log and the listeners, deliver it to the handlers."""
        if self.event_sink is not None:
            self.event_sink(env)
        if self.listeners:
            self._tell_listeners(env)
        self.deliver(env)


#: Queued when an eager handler suspended: the handler task waits for it there.
_WAKE: dict[str, Any] = {"type": ""}
#: Envelope key: the handlers still to run for it (the rest after one that suspended).
_REST = "_sf_rest"


async def _resume(coro: Any, fut: Any) -> Any:
    """Finish a coroutine whose first step ran eagerly and yielded ``fut``."""
    while True:
        try:
            if fut is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
                fut = coro.send(None)
            else:
                try:
                    await _Yield(fut)
                except BaseException as exc:  # noqa: BLE001 - cancellation goes into the coroutine
                    fut = coro.throw(exc)
                    continue
                fut = coro.send(None)
        except StopIteration as stop:
            return stop.value


class _Yield:
    """Yields to the running task the future a coroutine gave up control on."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any) -> None:
        self.fut = fut

    def __await__(self) -> Any:
        return (yield self.fut)


#: Stands in ``observers`` while event listeners exist (so the hot paths call
#: ``push_observers``).
LISTENERS = object()
