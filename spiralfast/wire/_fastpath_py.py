"""Pure-Python twin of ``spiralfast.wire._fastpath``: the receive hot path.

- ``Dedupe``: bounded window of seen message ids (set + ring: O(1) eviction).
- ``iso_from_epoch``: ``datetime.fromtimestamp(ts).isoformat()``, cached per second.
- ``EventSink``: turns a received frame into handler calls.  ``receive`` parses
  the frame; mesh events from member links are decoded and dispatched right
  here, everything else comes back as ``Message`` objects for the router.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections import deque
from datetime import datetime
from typing import Any

import msgspec

from ._codec_py import decode_frame
from .limits import DEDUPE_WINDOW, MAX_ORIGINS, MESSAGE_HEADER_SIZE, SEQ_WINDOW
from .schema import KIND_EVENT, Event

COMPILED = False

#: Missing ranges kept per origin below its bitmap (see ``_Window``); beyond it the
#: oldest is given up (counted lost).
MAX_OLD_RANGES = 4096

_cache_sec: float | None = None
_cache_prefix = ""


def iso_from_epoch(ts: float) -> str:
    global _cache_sec, _cache_prefix
    # Same rounding as CPython's datetime.fromtimestamp (round half even on the fraction).
    frac, t = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1000000:
        t += 1
        us -= 1000000
    elif us < 0:
        t -= 1
        us += 1000000
    if t != _cache_sec:
        _cache_prefix = datetime.fromtimestamp(t).isoformat()
        _cache_sec = t
    if us:
        return f"{_cache_prefix}.{us:06d}"
    return _cache_prefix


class _Window:
    """The sequences seen from one origin: the highest, and a bitmap below it.

    A broadcast origin's sequences still missing when they slide out of the bitmap
    (a gap longer than ``SEQ_WINDOW``, or one not yet repaired) move to ``old``, a
    sorted list of ``[first, end)`` ranges, so they can still be repaired or given up
    (counted lost), never forgotten.  At most ``MAX_OLD_RANGES`` ranges; beyond it
    the oldest is given up."""

    __slots__ = ("high", "low", "bits", "missing", "lost", "counted", "old")

    def __init__(self, counted: bool = False) -> None:
        self.high = -1
        self.low = -1  # the first sequence seen (we may have joined late)
        self.lost = 0  # given up: outside the origin's retransmit buffer, or the origin gone
        self.missing = 0  # sequences skipped and not (yet) filled
        self.counted = counted  # a broadcast origin: a skipped sequence is a loss
        self.bits = bytearray(SEQ_WINDOW >> 3)
        self.old: list[list[int]] = []  # missing ranges below the bitmap, oldest first

    def missing_seqs(self, limit: int) -> list[int]:
        """The sequences skipped and not filled, oldest first (at most ``limit``)."""
        out: list[int] = []
        for r in self.old:
            i = r[0]
            while i < r[1] and len(out) < limit:
                out.append(i)
                i += 1
        b = self.bits
        mask = SEQ_WINDOW - 1
        i = max(self.low, self.high - SEQ_WINDOW + 1)
        while i <= self.high and len(out) < limit:
            pos = i & mask
            if not b[pos >> 3] & (1 << (pos & 7)):
                out.append(i)
            i += 1
        return out

    def give_up(self, seqs: list[int]) -> None:
        """These will never come: count them as lost and stop asking."""
        b = self.bits
        mask = SEQ_WINDOW - 1
        for seq in seqs:
            if seq <= self.high - SEQ_WINDOW:
                if self._take_old(seq):
                    self.lost += 1
                continue
            if seq > self.high or seq < self.low:
                continue
            pos = seq & mask
            if not b[pos >> 3] & (1 << (pos & 7)):
                b[pos >> 3] |= 1 << (pos & 7)
                self.lost += 1
                if self.missing > 0:
                    self.missing -= 1

    def expect(self, seq: int) -> None:
        """The origin says it has sent up to ``seq``: what we have not seen is missing
        (a gap at the end, which no later event would reveal).  Ignored before the
        first event of the origin (we count from where we joined)."""
        if self.counted and self.high >= 0 and seq > self.high:
            self._advance(seq)

    def _advance(self, seq: int) -> None:
        """Move ``high`` to ``seq`` (> high), every sequence after the old high missing;
        missing ones sliding out of the bitmap go to ``old``."""
        b = self.bits
        mask = SEQ_WINDOW - 1
        high = self.high
        if self.counted:
            self.missing += seq - high
        if seq - high >= SEQ_WINDOW:
            if self.counted:
                i = max(self.low, high - SEQ_WINDOW + 1)
                while i <= high:
                    pos = i & mask
                    if not b[pos >> 3] & (1 << (pos & 7)):
                        self._add_old(i)
                    i += 1
                self._add_old_range(high + 1, seq - SEQ_WINDOW + 1)
            b[:] = bytes(len(b))
        else:
            low, counted = self.low, self.counted
            for i in range(high + 1, seq + 1):
                pos = i & mask
                bit = 1 << (pos & 7)
                if not b[pos >> 3] & bit:
                    if counted and i - SEQ_WINDOW >= low:
                        self._add_old(i - SEQ_WINDOW)
                else:
                    b[pos >> 3] &= ~bit & 0xFF
        self.high = seq

    def _add_old(self, seq: int) -> None:
        self._add_old_range(seq, seq + 1)

    def _add_old_range(self, first: int, end: int) -> None:
        if first >= end:
            return
        old = self.old
        if old and old[-1][1] == first:
            old[-1][1] = end
        else:
            old.append([first, end])
            if len(old) > MAX_OLD_RANGES:
                r = old.pop(0)
                self.lost += r[1] - r[0]
                self.missing -= r[1] - r[0]

    def _take_old(self, seq: int) -> bool:
        """Remove ``seq`` from ``old``; False if it is not there (seen or given up)."""
        old = self.old
        lo, hi = 0, len(old)
        while lo < hi:  # the last range starting at or before seq (ranges are sorted)
            mid = (lo + hi) >> 1
            if old[mid][0] <= seq:
                lo = mid + 1
            else:
                hi = mid
        k = lo - 1
        if k < 0:
            return False
        r = old[k]
        a, e = r
        if seq >= e:
            return False
        if e - a == 1:
            del old[k]
        elif seq == a:
            r[0] = a + 1
        elif seq == e - 1:
            r[1] = e - 1
        else:
            old.insert(k + 1, [seq + 1, e])
            r[1] = seq
            if len(old) > MAX_OLD_RANGES:
                g = old.pop(0)
                self.lost += g[1] - g[0]
                self.missing -= g[1] - g[0]
        if self.missing > 0:
            self.missing -= 1
        return True

    def first(self, seq: int) -> bool:
        b = self.bits
        mask = SEQ_WINDOW - 1
        if seq == self.high + 1 and seq > 0:  # in order: the common case
            pos = seq & mask
            bit = 1 << (pos & 7)
            # The slot held seq - SEQ_WINDOW: seen (or before we joined), so it stays set for seq.
            if b[pos >> 3] & bit or not self.counted or seq - SEQ_WINDOW < self.low:
                b[pos >> 3] |= bit
                self.high = seq
                return True
        if seq > self.high:
            if self.high < 0:
                self.low = seq
                self.high = seq - 1
            self._advance(seq)
            pos = seq & mask
            b[pos >> 3] |= 1 << (pos & 7)
            if self.counted:
                self.missing -= 1
            return True
        if seq <= self.high - SEQ_WINDOW:
            # Older than the window: taken as already seen, unless still missing.
            return bool(self.old) and self._take_old(seq)
        pos = seq & mask
        if b[pos >> 3] & (1 << (pos & 7)):
            return False
        b[pos >> 3] |= 1 << (pos & 7)
        if self.counted and self.missing > 0:
            self.missing -= 1  # a late arrival filled a gap
        return True


class Dedupe:
    """Seen message ids (see the compiled twin): ``<origin>-<sequence>`` ids per origin
    in a sliding window of sequences; others in a bounded window of recent ids (set +
    ring: O(1) eviction).

    (Evicting the oldest key of a dict with ``next(iter(d))`` looks O(1) but scans
    the deleted prefix of the dict's entry table; it dominated an early profile.)
    """

    __slots__ = ("_seen", "_order", "_pos", "_max", "_origins")

    def __init__(self, size: int = DEDUPE_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"dedupe window must be at least 1, got {size}")
        self._seen: set[bytes] = set()
        self._order: list[bytes | None] = [None] * size
        self._pos = 0
        self._max = size
        self._origins: dict[bytes, _Window] = {}

    def first_time(self, msg_id: bytes) -> bool:
        if not isinstance(msg_id, bytes):
            raise TypeError(f"msg_id must be bytes, not {type(msg_id).__name__}")
        m = _SEQ_ID.match(msg_id)
        if m is not None:
            origin = m.group(1)
            w = self._origins.get(origin)
            if w is None:
                if len(self._origins) >= MAX_ORIGINS:
                    del self._origins[next(iter(self._origins))]
                w = self._origins[origin] = _Window(origin.endswith(b"s"))  # a broadcast sequence
            return w.first(int(m.group(2)))
        seen = self._seen
        if msg_id in seen:
            return False
        pos = self._pos
        old = self._order[pos]
        if old is not None:
            seen.discard(old)
        self._order[pos] = msg_id
        self._pos = pos + 1 if pos + 1 < self._max else 0
        seen.add(msg_id)
        return True

    def __len__(self) -> int:
        return len(self._seen) + len(self._origins)

    def gaps(self) -> dict[str, int]:
        """``{origin: sequences skipped and not filled}`` for broadcast origins with gaps."""
        return {o.decode(errors="replace"): w.missing for o, w in self._origins.items() if w.missing}

    def lost(self) -> dict[str, int]:
        """``{origin: sequences given up}`` (never repaired)."""
        return {o.decode(errors="replace"): w.lost for o, w in self._origins.items() if w.lost}

    def window(self, origin: str) -> _Window | None:
        """The window of ``origin`` (None if never seen)."""
        return self._origins.get(origin.encode())


#: ``<origin>-<sequence>``: a non-empty origin, a dash, 1-17 digits without a leading 0.
_SEQ_ID = re.compile(rb"(.+)-((?:0|[1-9][0-9]{0,16}))\Z", re.DOTALL)


#: Membership event types: accepted only as a node's own announcement about itself
#: (``register_node`` / ``unregister_node`` of its own record); another node's word on
#: them is refused and counted (``reserved_refused``).
_MEMBERSHIP = frozenset(("node_register", "node_unregister"))


def _about_itself(ev: Event) -> bool:
    data = ev.data
    return isinstance(data, dict) and data.get("node_id") == ev.source_node


_decode_event = msgspec.msgpack.Decoder(Event).decode
#: The part of a message id naming its origin (``uuid4().hex[:12]``, then "s-" or "x-").
STEM_SIZE = 12
#: Origins whose owner is remembered (beyond it the oldest is forgotten).
MAX_OWNERS = 16384
#: Origins one node may take by first use, before its own record names them (one per
#: incarnation; a flood of made-up origins cannot push out the others' owners).
MAX_FIRST_USES = 8
_encode = msgspec.msgpack.Encoder().encode


class EventSink:
    """Delivers received mesh events to a node's handlers (see module docstring).

    ``dispatcher`` (``spiralfast.node.dispatch.Dispatcher``) provides: ``handlers``,
    ``recent``, ``observers``, ``push_observers(ev)``, ``spill``, ``inbox``,
    ``queue(env)``, ``handler_failed(h, env)``, ``spawn(aw)``.
    """

    def __init__(self, dispatcher: Any, node_id: bytes, dedupe: Dedupe) -> None:
        if not isinstance(dedupe, Dedupe):
            raise TypeError("dedupe must be a Dedupe")
        self.dispatcher = dispatcher
        self.me = node_id
        self.dedupe = dedupe
        self.last_messages = 0
        self.duplicates = 0
        self.bad_events = 0
        self.events_in = 0
        self.reserved_refused = 0  # membership events about another node (refused)
        self.handlers: dict[str, list[Any]] = dispatcher.handlers  # kept current by the node
        self._kinds: dict[str, tuple[Any, int, bool]] = {}
        self.turn_deadline = 0.0  # this loop turn's end for inline handlers (0.0: none; set by the gate)
        #: Sequence-id stem (the first 12 bytes of ``<origin>s-<n>`` / ``<origin>x-<n>``)
        #: -> the node that owns it: ids are accepted only from their origin's own link.
        self.owners: dict[bytes, str] = {}
        self._claims: dict[str, int] = {}  # node -> origins it took by first use (bounded)
        #: Messages (ids, or events' sources) refused as not from their origin.
        self.foreign = 0
        #: Messages for this node whose id belongs to another node than the link's
        #: (relayed by a neighbour), left to the gate (reset by every ``receive``).
        self.relayed: list[Any] = []

    def sync_only(self, etype: str, handlers: list[Any]) -> bool:
        c = self._kinds.get(etype)
        if c is None or c[0] is not handlers or c[1] != len(handlers):
            c = (handlers, len(handlers), not any(inspect.iscoroutinefunction(h) for h in handlers))
            self._kinds[etype] = c
        return c[2]

    def on_event(self, ev: Event) -> None:
        d = self.dispatcher
        etype = ev.event_type
        self.events_in += 1
        if etype in _MEMBERSHIP and not _about_itself(ev):
            self.reserved_refused += 1  # another node's word on a membership change: refused
            return
        if (self.events_in & 63) == 0 and d.sample_latency is not None:
            d.sample_latency(time.time() - ev.timestamp)  # one event in 64: origin to here
        if not etype.startswith("_sf."):  # the mesh's own protocol events (tasks) are not logged
            d.recent.append(ev)
            if d.observers:
                d.push_observers(ev)
        handlers = self.handlers.get(etype)
        if not handlers:
            return
        env: dict[str, Any] = {
            "type": etype,
            "source_node": ev.source_node,
            "timestamp": iso_from_epoch(ev.timestamp),
            "data": ev.data,
            "event_id": ev.event_id,
        }
        if ev.target_node is not None:
            env["target_node"] = ev.target_node
        if (self.events_in & 15) == 0 and self.turn_deadline and time.monotonic() > self.turn_deadline:
            d.defer()  # handlers have held the loop long enough: queue from here on
        self.dispatch(env, handlers)

    def dispatch(self, env: dict[str, Any], handlers: list[Any]) -> None:
        """Nothing queued ahead: call plain handlers now (a slow handler then slows our
        reads: TCP backpressure), coroutine handlers eagerly (``Dispatcher.run_eager``);
        else queue the envelope for the handler task."""
        d = self.dispatcher
        if not d.spill and d.inbox.empty():
            if not self.sync_only(env["type"], handlers):
                d.run_eager(env, handlers)  # coroutine handlers, started in place
                return
            for h in handlers:
                try:
                    r = h(env)
                    if r is not None and inspect.isawaitable(r):
                        d.spawn(r)
                except Exception:
                    d.handler_failed(h, env)
            return
        d.queue(env)

    def claim(self, origin: str, node: str) -> None:
        """``node``'s own record names ``origin``: its ids are ``node``'s alone."""
        stem = origin.encode()[:STEM_SIZE]
        if self.owners.get(stem) != node:
            self._drop(stem)
            self._evict()
            self.owners[stem] = node

    def release(self, node: str) -> None:
        """``node`` is gone: forget the origins it owned (a later one claims its own)."""
        for stem in [k for k, v in self.owners.items() if v == node]:
            del self.owners[stem]
        self._claims.pop(node, None)

    def _first_use(self, stem: bytes, sender: str) -> bool:
        n = self._claims.get(sender, 0)
        if n >= MAX_FIRST_USES:
            return False
        self._claims[sender] = n + 1
        self._evict()
        self.owners[stem] = sender
        return True

    def _drop(self, stem: bytes) -> None:
        old = self.owners.pop(stem, None)
        if old is not None and old in self._claims:
            self._claims[old] -= 1
            if self._claims[old] <= 0:
                del self._claims[old]

    def _evict(self) -> None:
        while len(self.owners) >= MAX_OWNERS:
            self._drop(next(iter(self.owners)))

    def receive(self, data: Any, member: bool, sender: str | None = None) -> list[Any]:
        """Handle one frame; returns the messages the gate must still handle
        (targeted elsewhere, or not a member's event).  Raises ``FrameError`` for a
        malformed frame; malformed event payloads are counted in ``bad_events``.

        ``sender``: the node the frame provably comes from (the link's peer, or a bus
        frame's key-verified sender).  A message id is then accepted only from the node
        owning its origin (the first to use it, or the one whose own record names it:
        ``owners``), and an event only with that node as its source; others are refused
        (counted in ``foreign``) before they can touch the de-duplication window, except
        messages for this node relayed by a neighbour, left in ``relayed`` for the gate."""
        msgs = decode_frame(data)
        self.last_messages = len(msgs)
        self.relayed = []
        me = self.me
        first_time = self.dedupe.first_time
        owners = self.owners
        rest = []
        for m in msgs:
            target = m.target
            if target and target != me:
                rest.append(m)
                continue
            msg_id = m.msg_id
            if msg_id and sender is not None:
                stem = msg_id[:STEM_SIZE]
                owner = owners.get(stem)
                if owner is None and not self._first_use(stem, sender):
                    owner = ""  # over its quota of origins: refused
                if owner is not None and owner != sender:
                    if target:
                        self.relayed.append(m)
                    else:
                        self.foreign += 1
                    continue
            if msg_id and not first_time(msg_id):
                self.duplicates += 1
                continue
            if member and m.kind == KIND_EVENT:
                try:
                    ev = _decode_event(m.payload)
                except (msgspec.DecodeError, ValueError, RecursionError):  # ValueError: bad UTF-8
                    self.bad_events += 1
                    continue
                if sender is not None and ev.source_node != sender:
                    self.foreign += 1
                    continue
                self.on_event(ev)
                continue
            rest.append(m)
        return rest


class EventSender:
    """The send half of the hot path: ``broadcast(event_type, data)`` builds the wire
    event, queues it once for every link (and the old-format copy, if any), records
    it, and returns True when the caller must ``await outbox.wait_writable()``.

    ``outbox`` provides ``bcast`` (the broadcast writer), ``flush()``, ``schedule()``,
    ``flush_handle`` and ``paused``; ``dispatcher`` provides ``recent``,
    ``observers`` and ``push_observers(ev)``.  ``legacy`` is set while a link
    publishes old-format copies (its ``legacy_broadcast(ev)``).
    """

    def __init__(self, outbox: Any, dispatcher: Any, node_id: str, prefix: str, etype_ids: dict[str, int],
                 flush_bytes: int, yield_every: int) -> None:
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.node_id = node_id
        self.prefix = prefix
        self.seq = 0
        self.direct_seq = 0
        self._direct_prefix = prefix[:-2] if prefix.endswith("s-") else prefix.rstrip("-")
        self.etype_ids = etype_ids
        self.flush_bytes = flush_bytes
        self.yield_every = yield_every
        self.since_yield = 0
        self.events_out = 0
        self.legacy: Any = None
        self.retx: deque[bytes] = deque()  # broadcast payloads as sent, oldest first (gap repair)
        self.retx_bytes = 0
        self.retx_base = 1  # the sequence of retx[0]

    def next_id(self) -> str:
        """An id for a direct message: its own sequence (broadcast sequences stay gapless)."""
        self.direct_seq += 1
        return self._direct_prefix + "x-" + str(self.direct_seq)

    def broadcast(self, etype: str, data: Any) -> bool:
        self.seq += 1
        eid = self.prefix + str(self.seq)
        ev = Event(eid, etype, self.node_id, time.time(), data)
        self.events_out += 1
        ob = self.outbox
        w = ob.bcast
        if w.full:
            ob.flush()
        before = w.nbytes
        w.add(KIND_EVENT, self.etype_ids.get(etype, 0), b"", eid, ev)
        # The payload as sent, kept for gap repair: sliced from the frame (no second
        # encode) when the writer is the pure one whose buffer we can read.
        buf = getattr(w, "_buf", None)
        payload = bytes(buf[before + MESSAGE_HEADER_SIZE + len(eid):]) if buf is not None else _encode(ev)
        self.retx.append(payload)
        self.retx_bytes += len(payload)
        if w.nbytes >= self.flush_bytes:
            ob.flush()
        elif ob.flush_handle is None:
            ob.schedule()
        if not etype.startswith("_sf."):  # the mesh's own protocol events (tasks) stay internal
            if self.legacy is not None:
                self.legacy.legacy_broadcast(ev)
            d = self.dispatcher
            d.recent.append(ev)
            if d.observers:
                d.push_observers(ev)
        self.since_yield += 1
        if ob.paused or self.since_yield >= self.yield_every:
            self.since_yield = 0
            return True
        return False
