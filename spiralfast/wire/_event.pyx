# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled ``RitualEvent`` and EventBus hot path.  Twin: ``_event_py`` (same
behaviour; the tests run both)."""

cimport cython

import asyncio
import inspect
import time
from datetime import datetime

from spiralfast._time import parse_dt as _parse_dt
from spiralfast.enums import EventType
from spiralfast.errors import RingFull

COMPILED = True

_log = __import__("logging").getLogger("spiralfast.node.bus")

cdef object _EventType = EventType
cdef object _time = time.time
cdef object _fromtimestamp = datetime.fromtimestamp
cdef object _datetime = datetime
cdef object _isawaitable = inspect.isawaitable
cdef object _CancelledError = asyncio.CancelledError
cdef object _RingFull = RingFull


# Like the gc=False msgspec structs of the wire protocol: events are not tracked by
# the cycle collector.  A backlog of tens of thousands of queued events otherwise
# gets traversed by every collection (measured: a third of the bus's time).  The
# price: a reference cycle running through an event (an event stored inside its own
# data) is never collected.
@cython.no_gc
cdef class RitualEvent:
    """An event on the bus.

    ``timestamp`` is a ``datetime``; internally the event keeps the epoch float it
    was created with and builds the ``datetime`` on first access, which keeps
    ``publish`` cheap.  Likewise an absent ``metadata`` dict is made on first access.
    """

    cdef public object event_id
    cdef public object event_type
    cdef public object source_node
    cdef public object target_node
    cdef public double _ts
    cdef public object _dt
    cdef public object data
    cdef object _metadata
    cdef public object priority
    cdef public object ttl

    def __init__(self, event_id, event_type, source_node, target_node, timestamp, data, metadata,
                 priority=5, ttl=None):
        self.event_id = event_id
        self.event_type = event_type
        self.source_node = source_node
        self.target_node = target_node
        if isinstance(timestamp, _datetime):
            self._dt = timestamp
            self._ts = timestamp.timestamp()
        else:
            self._dt = None
            self._ts = float(timestamp)
        self.data = data
        self._metadata = metadata
        self.priority = priority
        self.ttl = ttl

    @property
    def metadata(self):
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @metadata.setter
    def metadata(self, value):
        self._metadata = value

    @property
    def timestamp(self):
        if self._dt is None:
            self._dt = _fromtimestamp(self._ts)
        return self._dt

    @timestamp.setter
    def timestamp(self, value):
        self._dt = value
        self._ts = value.timestamp()

    @property
    def epoch(self):
        """The timestamp as seconds since the epoch."""
        return self._ts

    def _key(self):
        return (
            self.event_id, self.event_type, self.source_node, self.target_node, self.timestamp,
            self.data, self.metadata, self.priority, self.ttl,
        )

    def __eq__(self, other):
        if not isinstance(other, RitualEvent):
            return NotImplemented
        return self._key() == (<RitualEvent>other)._key()

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __repr__(self):
        return (
            f"RitualEvent(event_id={self.event_id!r}, event_type={self.event_type}, "
            f"source_node={self.source_node!r}, target_node={self.target_node!r}, "
            f"timestamp={self.timestamp!r}, data={self.data!r}, metadata={self.metadata!r}, "
            f"priority={self.priority!r}, ttl={self.ttl!r})"
        )

    def to_dict(self):
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
    def from_dict(cls, d):
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


def publish_nowait(bus, event_type, data, target_node, priority, ttl, metadata):
    """Queue an event on a local (not mesh-bound) bus; None when the caller must take
    the general path (mesh-bound bus, or a full queue)."""
    if bus._mesh_send is not None:
        return None
    if type(event_type) is not _EventType:
        event_type = _EventType(event_type)
    eid = bus._prefix + str(next(bus._seq))
    cdef RitualEvent ev = RitualEvent.__new__(RitualEvent)
    ev.event_id = eid
    ev.event_type = event_type
    ev.source_node = bus.node_id
    ev.target_node = target_node
    ev._ts = _time()
    ev._dt = None
    ev.data = data
    ev._metadata = metadata
    ev.priority = priority
    ev.ttl = ttl
    try:
        bus.event_queue.push(ev)
    except _RingFull:
        return None
    bus.published += 1
    return eid


def _neg_priority(RitualEvent ev):
    return -ev.priority


cdef bint _only_events(list batch):
    for e in batch:
        if not isinstance(e, RitualEvent):
            return False
    return True


def _drop_foreign(bus, list batch):
    """Something other than a RitualEvent was pushed on ``event_queue``: drop and count
    it (the dispatcher must not die while ``running`` stays True)."""
    keep = [e for e in batch if isinstance(e, RitualEvent)]
    bus.dropped += len(batch) - len(keep)
    _log.warning("event_queue: dropped %d item(s) that are not RitualEvents", len(batch) - len(keep))
    return keep


async def dispatch_loop(bus):
    """The bus processor: drain the ring in batches; priority order within a backlog
    (FIFO within a priority); TTL checked here; handlers isolated; history bounded."""
    cdef RitualEvent ev
    cdef double now
    cdef Py_ssize_t delivered, expired, extra
    cdef list batch
    cdef list history = bus.event_history
    cdef dict by_id
    ring = bus.event_queue
    subs = bus.subscribers
    while bus.running:
        if ring.empty():
            await ring.wait_nonempty()
        batch = ring.pop_many()
        if not _only_events(batch):
            batch = _drop_foreign(bus, batch)
        if len(batch) > 1:
            p0 = (<RitualEvent>batch[0]).priority
            for e in batch:
                if (<RitualEvent>e).priority != p0:
                    batch.sort(key=_neg_priority)  # stable: FIFO within a priority
                    break
        now = _time()
        delivered = 0
        expired = 0
        # Enum hashing runs in Python; look handlers up by member identity instead
        # (rebuilt per batch, so direct edits of ``subscribers`` are honoured).
        by_id = {id(k): v for k, v in subs.items()}
        for e in batch:
            ev = <RitualEvent>e
            ttl = ev.ttl
            if ttl is not None and (ttl <= 0 or now - ev._ts >= ttl):
                expired += 1
                continue
            handlers = by_id.get(id(ev.event_type))
            if handlers:
                for h in list(handlers):
                    try:
                        r = h(ev)
                        if r is not None and _isawaitable(r):
                            await r
                    except _CancelledError:
                        raise
                    except Exception:
                        bus._handler_failed(h, ev)
            history.append(ev)
            delivered += 1
        if expired:
            bus.expired += expired
        bus.delivered += delivered
        extra = len(history) - bus.max_history
        if extra > 0:
            del history[:extra]
