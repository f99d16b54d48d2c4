"""The dispatcher: delivers event envelopes to this node's handlers.

One object holds what delivery needs: the handler table, the handler queue (a ring,
with a spill list for what arrives after reading was paused), the recent-events log,
the observers following events, event listeners, and error accounting.  The compiled
receive and send paths (``_fastpath``) are given this object, never the node.

Ordering rule: envelopes are handled in arrival order.  Plain handlers run inline
when nothing is queued ahead of them; otherwise (a coroutine handler, or a backlog)
the envelope queues for the handler task, which awaits each handler in turn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ._log import RateLimitedLog
from .errors import RingFull
from .limits import DEFAULT_RING_CAPACITY
from .ring import Ring

log = logging.getLogger("spiralfast.dispatch")

#: Events kept for ``mesh events`` (CLI, dashboard).
RECENT_EVENTS = 1000
#: Handler-queue fill at which the node stops reading from its links (TCP then
#: pushes back on the senders) and the fill at which it reads again.  The gap is
#: larger than one frame's messages, so a frame in flight always fits.
INBOX_HIGH_WATER = DEFAULT_RING_CAPACITY // 2
INBOX_LOW_WATER = DEFAULT_RING_CAPACITY // 8

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
        self.push_follow: Callable[[Any, dict[str, Any]], None] | None = None  # set by the node
        #: ``sample_latency(seconds)``: the receive path reports one event in 64 (metrics).
        self.sample_latency: Callable[[float], None] | None = None
        self.set_reading = set_reading
        self.reading_paused = False
        self.handler_errors = 0
        self.spilled = 0
        self.pending: set[asyncio.Task[Any]] = set()
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

    async def run(self) -> None:
        """The handler task: runs queued envelopes in order."""
        ring = self.inbox
        while True:
            if ring.empty():
                await ring.wait_nonempty()
            spill = self.spill
            while spill and not ring.full():
                ring.push(spill.popleft())
            if self.reading_paused and not spill and ring.qsize() < INBOX_LOW_WATER:
                self.reading_paused = False
                self.set_reading(True)
            for env in ring.pop_many(INBOX_LOW_WATER):
                for h in self.handlers.get(env["type"], ()):
                    try:
                        r = h(env)
                        if r is not None and inspect.isawaitable(r):
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

    # -- observers and listeners ------------------------------------------------------

    def push_observers(self, ev: Any) -> None:
        """An event was sent or received: tell listeners and following observers."""
        from .observe import envelope

        env = None
        if self.listeners:
            env = envelope(ev)
            for fn in list(self.listeners):
                try:
                    fn(env)
                except Exception:
                    self._errlog(("listener", repr(fn)), logging.ERROR, "event listener %r failed", fn, exc_info=True)
        push = self.push_follow
        if push is not None:
            for link in list(self.observers):
                if link is not LISTENERS:
                    if env is None:
                        env = envelope(ev)
                    push(link, env)

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.listeners.append(fn)
        self.observers.add(LISTENERS)

    def remove_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)
        if not self.listeners:
            self.observers.discard(LISTENERS)

    def announce(self, env: dict[str, Any]) -> None:
        """An envelope this node made itself (a membership change): tell the
        listeners, deliver it to the handlers."""
        if self.listeners:
            for fn in list(self.listeners):
                try:
                    fn(env)
                except Exception:
                    self._errlog(("listener", repr(fn)), logging.ERROR, "event listener %r failed", fn, exc_info=True)
        self.deliver(env)

    def received(self, env: dict[str, Any]) -> None:
        """An event that arrived as an envelope (old JSON format): log, tell, deliver."""
        self.recent.append(env)
        if self.observers:
            self.push_observers(env)
        self.deliver(env)


#: Stands in ``observers`` while event listeners exist (so the hot paths call
#: ``push_observers``).
LISTENERS = object()
