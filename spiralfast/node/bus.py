"""EventBus: the node's event queue and dispatcher (the drop-in API: EventBus).

Publishing appends a ``RitualEvent`` to a ring buffer; one processor task drains
the ring in batches, delivers to subscribers and records history.  Within a
drained backlog, higher priority goes first and FIFO holds within a priority.
A bus owned by a ``MeshCore`` also hands its events to the mesh router.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._log import RateLimitedLog
from ..enums import EventType
from ..errors import RingFull
from ..wire.event import RitualEvent, dispatch_loop, publish_nowait
from ..wire.limits import DEFAULT_RING_CAPACITY
from ..wire.ring import Ring

log = logging.getLogger("spiralfast.node.bus")

#: Ring slots of each thread's publish inbox; a thread publishing faster than the
#: loop drains waits briefly instead of growing memory.
THREAD_INBOX_CAPACITY = 1 << 14

Handler = Callable[[RitualEvent], Any]


async def _no_backpressure() -> None:
    return None


def _as_event_type(event_type: EventType | str) -> EventType:
    if isinstance(event_type, EventType):
        return event_type
    return EventType(event_type)


class EventBus:
    """Publish/subscribe of ``RitualEvent`` objects.

    :param node_id: the id stamped as ``source_node`` on published events.
    :param capacity: queue slots; a full queue makes ``publish`` wait (backpressure).
    """

    def __init__(self, node_id: str, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        self.node_id = node_id
        self.subscribers: dict[EventType, list[Handler]] = {}
        self.event_queue = Ring(capacity, overflow="wait")
        self.running = False
        self.processor_task: asyncio.Task[None] | None = None
        self.event_history: list[RitualEvent] = []
        self.max_history = 1000
        self.published = 0
        self.delivered = 0
        self.expired = 0
        self.dropped = 0
        self.handler_errors = 0
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._seq = itertools.count(1)
        self._mesh_send: Callable[[RitualEvent], None] | None = None
        self._backpressure: Callable[[], Any] = _no_backpressure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inboxes: list[Any] = []
        self._inbox_local = threading.local()
        self._inbox_lock = threading.Lock()
        self._errlog = RateLimitedLog(log)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the processor task.  Idempotent."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self.event_queue.bind_loop(self._loop)
        self.running = True
        self.processor_task = asyncio.ensure_future(self._process())

    async def stop(self) -> None:
        """Stop the processor task; queued events stay queued.  Idempotent."""
        if not self.running:
            return
        self.running = False
        task, self.processor_task = self.processor_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- subscriptions -------------------------------------------------------------

    def subscribe(self, event_type: EventType | str, handler: Handler) -> None:
        """Call ``handler(event)`` (plain or coroutine function) for each event of the type."""
        self.subscribers.setdefault(_as_event_type(event_type), []).append(handler)

    def unsubscribe(self, event_type: EventType | str, handler: Handler) -> None:
        """Remove ``handler``; unknown handlers are ignored."""
        handlers = self.subscribers.get(_as_event_type(event_type))
        if handlers and handler in handlers:
            handlers.remove(handler)

    # -- publishing ----------------------------------------------------------------

    async def publish(
        self,
        event_type: EventType | str,
        data: dict[str, Any],
        target_node: str | None = None,
        priority: int = 5,
        ttl: int | float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Queue an event; returns its id.  Delivery happens after this returns.

        On a mesh bus, an event with no ``target_node`` reaches every node's
        subscribers; with a ``target_node``, only that node's.
        """
        eid = publish_nowait(self, event_type, data, target_node, priority, ttl, metadata)
        if eid is not None:  # the common case: a local bus with room in its queue
            return eid
        if event_type.__class__ is not EventType:
            event_type = _as_event_type(event_type)
        eid = self._prefix + str(next(self._seq))
        ev = RitualEvent(
            eid, event_type, self.node_id, target_node, time.time(), data,
            metadata if metadata is not None else {}, priority, ttl,
        )
        self.published += 1
        send = self._mesh_send
        if send is not None and target_node != self.node_id:
            send(ev)
            await self._backpressure()
            if target_node is not None:
                return eid
        try:
            self.event_queue.push(ev)
        except RingFull:
            await self.event_queue.put(ev)
        return eid

    def publish_threadsafe(
        self,
        event_type: EventType | str,
        data: dict[str, Any],
        target_node: str | None = None,
        priority: int = 5,
        ttl: int | float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Publish from any thread without locks (one inbox ring per thread).

        The bus must be started.  Blocks briefly while this thread's inbox is full.
        """
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("publish_threadsafe needs a started EventBus")
        inbox = getattr(self._inbox_local, "ring", None)
        if inbox is None:
            inbox = self._inbox_local.ring = Ring(THREAD_INBOX_CAPACITY)
            with self._inbox_lock:
                self._inboxes.append(inbox)
        eid = self._prefix + "t" + str(next(self._seq))
        ev = RitualEvent(
            eid, _as_event_type(event_type), self.node_id, target_node, time.time(), data,
            metadata if metadata is not None else {}, priority, ttl,
        )
        while True:
            try:
                inbox.push_threadsafe(ev)
                break
            except RingFull:
                time.sleep(0.0005)
        if inbox.qsize() == 1:
            loop.call_soon_threadsafe(self._drain_inbox, inbox)
        return eid

    def _drain_inbox(self, inbox: Any) -> None:
        for ev in inbox.pop_many():
            self.published += 1
            self._enqueue_local(ev, from_mesh=False)
        if not inbox.empty():
            asyncio.get_running_loop().call_soon(self._drain_inbox, inbox)

    def _enqueue_local(self, ev: RitualEvent, from_mesh: bool) -> None:
        if not from_mesh and self._mesh_send is not None and ev.target_node != self.node_id:
            self._mesh_send(ev)
            if ev.target_node is not None:
                return
        try:
            self.event_queue.push(ev)
        except RingFull:
            self.dropped += 1
            self._errlog("full", logging.WARNING, "event queue full: event %s dropped", ev.event_id)

    def accept_remote(self, ev: RitualEvent) -> None:
        """An event that arrived from another node (called by the node it belongs to)."""
        self._enqueue_local(ev, from_mesh=True)

    def bind_mesh(self, send: Callable[[RitualEvent], None] | None,
                  backpressure: Callable[[], Any] = _no_backpressure) -> None:
        """Make this bus part of a mesh (``send`` ships its events), or local again (None)."""
        self._mesh_send = send
        self._backpressure = backpressure

    async def publish_agent_message(
        self, agent_id: str, message: Any, target_agent: str | None = None, target_node: str | None = None
    ) -> str:
        return await self.publish(
            EventType.AGENT_MESSAGE,
            {"agent_id": agent_id, "message": message, "target_agent": target_agent},
            target_node=target_node,
            priority=7,
        )

    async def publish_ritual_event(
        self, ritual_type: str, ritual_data: dict[str, Any], recursion_depth: int = 0
    ) -> str:
        return await self.publish(
            EventType.RITUAL_CYCLE,
            {"ritual_type": ritual_type, "recursion_depth": recursion_depth, **ritual_data},
            priority=8,
        )

    async def publish_system_alert(
        self, alert_level: str, message: str, details: dict[str, Any] | None = None
    ) -> str:
        return await self.publish(
            EventType.SYSTEM_ALERT,
            {"alert_level": alert_level, "message": message, "details": details},
            priority=9,
        )

    # -- dispatch ------------------------------------------------------------------

    async def _process(self) -> None:
        await dispatch_loop(self)

    def _handler_failed(self, h: Any, ev: RitualEvent) -> None:
        self.handler_errors += 1
        self._errlog(
            ("handler", getattr(h, "__qualname__", repr(h))), logging.ERROR,
            "event handler %r failed on %s", h, ev.event_id, exc_info=True,
        )

    # -- introspection -------------------------------------------------------------

    def get_event_stats(self) -> dict[str, Any]:
        recent = Counter(e.event_type.value for e in self.event_history[-100:])
        return {
            "total_events": len(self.event_history),
            "queue_size": self.event_queue.qsize(),
            "subscribers": {et.value: len(hs) for et, hs in self.subscribers.items()},
            "recent_event_counts": dict(recent),
            "running": self.running,
            "published": self.published,
            "delivered": self.delivered,
            "expired": self.expired,
            "dropped": self.dropped,
            "handler_errors": self.handler_errors,
        }

    def get_recent_events(self, limit: int = 50) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        return [e.to_dict() for e in self.event_history[-limit:]]
