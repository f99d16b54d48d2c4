"""Pure-Python twin of ``spiralfast.wire._event``: ``RitualEvent`` and the EventBus hot
path (publish into the ring, and the dispatch loop)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from datetime import datetime
from typing import Any

from .._time import parse_dt as _parse_dt
from ..enums import EventType
from ..errors import RingFull

_log = logging.getLogger("spiralfast.node.bus")

COMPILED = False
log = logging.getLogger("spiralfast.node.bus")


class RitualEvent:
    """An event on the bus.

    ``timestamp`` is a ``datetime``; internally the event keeps the epoch float it
    was created with and builds the ``datetime`` on first access, which keeps
    ``publish`` cheap.  Likewise an absent ``metadata`` dict is made on first access.
    """

    __slots__ = (
        "event_id", "event_type", "source_node", "target_node", "_ts", "_dt",
        "data", "_metadata", "priority", "ttl",
    )

    def __init__(
        self,
        event_id: str,
        event_type: EventType,
        source_node: str,
        target_node: str | None,
        timestamp: datetime | float,
        data: dict[str, Any],
        metadata: dict[str, Any],
        priority: int = 5,
        ttl: int | float | None = None,
    ) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.source_node = source_node
        self.target_node = target_node
        if isinstance(timestamp, datetime):
            self._dt: datetime | None = timestamp
            self._ts = timestamp.timestamp()
        else:
            self._dt = None
            self._ts = float(timestamp)
        self.data = data
        self._metadata = metadata
        self.priority = priority
        self.ttl = ttl

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = value

    @property
    def timestamp(self) -> datetime:
        dt = self._dt
        if dt is None:
            dt = self._dt = datetime.fromtimestamp(self._ts)
        return dt

    @timestamp.setter
    def timestamp(self, value: datetime) -> None:
        self._dt = value
        self._ts = value.timestamp()

    @property
    def epoch(self) -> float:
        """The timestamp as seconds since the epoch."""
        return self._ts

    def _key(self) -> tuple[Any, ...]:
        return (
            self.event_id, self.event_type, self.source_node, self.target_node, self.timestamp,
            self.data, self.metadata, self.priority, self.ttl,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RitualEvent):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"RitualEvent(event_id={self.event_id!r}, event_type={self.event_type}, "
            f"source_node={self.source_node!r}, target_node={self.target_node!r}, "
            f"timestamp={self.timestamp!r}, data={self.data!r}, metadata={self.metadata!r}, "
            f"priority={self.priority!r}, ttl={self.ttl!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        et = self.event_type
        return {
            "event_id": self.event_id,
            "event_type": et.value if isinstance(et, EventType) else et,
            "source_node": self.source_node,
            "target_node": self.target_node,
            "timestamp": self.timestamp.isoformat(),
            "data": self.data,
            "metadata": self.metadata,
            "priority": self.priority,
            "ttl": self.ttl,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RitualEvent:
        return cls(
            d["event_id"],
            EventType(d["event_type"]),
            d["source_node"],
            d.get("target_node"),
            _parse_dt(d["timestamp"]),
            d.get("data") or {},
            d.get("metadata") or {},
            int(d.get("priority", 5)),
            d.get("ttl"),
        )


def publish_nowait(
    bus: Any, event_type: Any, data: Any, target_node: Any, priority: Any, ttl: Any, metadata: Any
) -> str | None:
    """Queue an event on a local (not mesh-bound) bus; None when the caller must take
    the general path (mesh-bound bus, or a full queue)."""
    if bus._mesh_send is not None:
        return None
    if event_type.__class__ is not EventType:
        event_type = EventType(event_type)
    eid: str = bus._prefix + str(next(bus._seq))
    ev = RitualEvent(eid, event_type, bus.node_id, target_node, time.time(), data, metadata, priority, ttl)
    try:
        bus.event_queue.push(ev)
    except RingFull:
        return None
    bus.published += 1
    return eid


def _neg_priority(ev: RitualEvent) -> Any:
    return -ev.priority


async def dispatch_loop(bus: Any) -> None:
    """The bus processor: drain the ring in batches; priority order within a backlog
    (FIFO within a priority); TTL checked here; handlers isolated; history bounded."""
    ring = bus.event_queue
    subs = bus.subscribers
    history = bus.event_history
    while bus.running:
        if ring.empty():
            await ring.wait_nonempty()
        batch = ring.pop_many()
        if not all(isinstance(e, RitualEvent) for e in batch):
            # Something else was pushed on event_queue: drop and count it (the
            # dispatcher must not die while ``running`` stays True).
            keep = [e for e in batch if isinstance(e, RitualEvent)]
            bus.dropped += len(batch) - len(keep)
            _log.warning("event_queue: dropped %d item(s) that are not RitualEvents", len(batch) - len(keep))
            batch = keep
        if len(batch) > 1:
            p0 = batch[0].priority
            for ev in batch:
                if ev.priority != p0:
                    batch.sort(key=_neg_priority)  # stable: FIFO within a priority
                    break
        now = time.time()
        delivered = 0
        # Enum hashing runs in Python; look handlers up by member identity instead
        # (rebuilt per batch, so direct edits of ``subscribers`` are honoured).
        by_id = {id(k): v for k, v in subs.items()}
        for ev in batch:
            ttl = ev.ttl
            if ttl is not None and (ttl <= 0 or now - ev._ts >= ttl):
                bus.expired += 1
                continue
            handlers = by_id.get(id(ev.event_type))
            if handlers:
                for h in list(handlers):
                    try:
                        r = h(ev)
                        if r is not None and inspect.isawaitable(r):
                            await r
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        bus._handler_failed(h, ev)
            history.append(ev)
            delivered += 1
        bus.delivered += delivered
        extra = len(history) - bus.max_history
        if extra > 0:
            del history[:extra]
