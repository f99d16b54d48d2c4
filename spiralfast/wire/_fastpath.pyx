# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled receive hot path.  Behaviour identical to ``_fastpath_py`` (see there)."""

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF

cdef extern from "Python.h":
    bint PyCoro_CheckExact(object o)
    int PyIter_Send(object iter, object arg, PyObject** presult) except? -1
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_FromFormat, PyUnicode_DecodeASCII, PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR
from libc.string cimport memcpy, memcmp, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.math cimport modf, nearbyint
from libc.stdint cimport uint8_t, uint32_t

import inspect
from datetime import datetime

import msgspec

from spiralfast.wire._codec cimport Message, FrameWriter, validate_frame
from spiralfast.wire._ring cimport Ring
from cpython.bytearray cimport PyByteArray_GET_SIZE
from spiralfast.wire import limits as _limits
from spiralfast.wire import schema as _schema
from spiralfast.errors import FrameError
from spiralfast.wire.schema import Event

COMPILED = True

cdef int KIND_EVENT = _schema.KIND_EVENT
cdef Py_ssize_t FRAME_HEADER_SIZE = _limits.FRAME_HEADER_SIZE
cdef Py_ssize_t MESSAGE_HEADER_SIZE = _limits.MESSAGE_HEADER_SIZE
cdef Py_ssize_t MAX_FRAME_SIZE = _limits.MAX_FRAME_SIZE
cdef Py_ssize_t MAX_MESSAGES_PER_FRAME = _limits.MAX_MESSAGES_PER_FRAME
cdef long long SEQ_WINDOW = _limits.SEQ_WINDOW
cdef Py_ssize_t MAX_ORIGINS = _limits.MAX_ORIGINS
# Origin ownership (see _fastpath_py.EventSink.receive): the same constants.
STEM_SIZE = 12
MAX_OWNERS = 16384
MAX_FIRST_USES = 8
cdef Py_ssize_t _STEM = STEM_SIZE
cdef Py_ssize_t _MAX_OWNERS = MAX_OWNERS
cdef Py_ssize_t _MAX_FIRST_USES = MAX_FIRST_USES
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef inline double _monotonic() noexcept nogil:
    """``time.monotonic()`` (the same clock on Linux), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
#: Missing ranges kept per origin below its bitmap (the pure twin's ``MAX_OLD_RANGES``).
MAX_OLD_RANGES = 4096

cdef object _decode_event = msgspec.msgpack.Decoder(Event).decode
cdef object _Event = Event
cdef object _DecodeError = msgspec.DecodeError
cdef object _isawaitable = inspect.isawaitable
cdef object _iscoro = inspect.iscoroutinefunction
cdef object _fromtimestamp = datetime.fromtimestamp

cdef double _cache_sec = -1.0e300
cdef str _cache_prefix = ""
cdef char _cache_buf[40]  # the prefix as ASCII, then room for ".ffffff"
cdef Py_ssize_t _cache_len = 0


cpdef str iso_from_epoch(double ts):
    """``datetime.fromtimestamp(ts).isoformat()``, with the seconds part cached."""
    global _cache_sec, _cache_prefix, _cache_len
    cdef double t
    cdef double frac = modf(ts, &t)
    # nearbyint rounds half to even, like Python's round() on the same double.
    cdef long us = <long>nearbyint(frac * 1e6)
    cdef Py_ssize_t i
    cdef bytes b
    if us >= 1000000:
        t += 1
        us -= 1000000
    elif us < 0:
        t -= 1
        us += 1000000
    if t != _cache_sec:
        _cache_prefix = _fromtimestamp(t).isoformat()
        b = _cache_prefix.encode("ascii")
        _cache_len = len(b)
        if _cache_len > 32:  # years beyond 9999 cannot happen (schema limits), but be safe
            _cache_len = 0
        else:
            memcpy(_cache_buf, <char*>b, _cache_len)
        _cache_sec = t
    if not us:
        return _cache_prefix
    if _cache_len == 0:
        return PyUnicode_FromFormat("%U.%06ld", <void*>_cache_prefix, us)
    # ".ffffff" written by hand: PyUnicode_FromFormat's parsing costs more than this.
    _cache_buf[_cache_len] = 46  # '.'
    for i in range(6, 0, -1):
        _cache_buf[_cache_len + i] = <char>(48 + us % 10)
        us //= 10
    return PyUnicode_DecodeASCII(_cache_buf, _cache_len + 7, NULL)


cdef inline bint _internal(str etype):
    """``_sf.*`` event types carry the mesh's own protocols (tasks)."""
    return PyUnicode_GET_LENGTH(etype) > 4 and PyUnicode_READ_CHAR(etype, 0) == 95 and etype.startswith("_sf.")


cdef inline bint _membership(str etype):
    """``node_register`` / ``node_unregister``: reserved to a node speaking about itself."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(etype)
    return (n == 13 or n == 15) and PyUnicode_READ_CHAR(etype, 0) == 110 and (
        etype == "node_register" or etype == "node_unregister")


cdef bint _about_itself(object ev):
    """A membership event is accepted only as its sender's own announcement about itself."""
    data = ev.data
    return isinstance(data, dict) and (<dict>data).get("node_id") == ev.source_node


cdef class _Window:
    """The sequence numbers seen from one origin: the highest, and a bitmap of the
    ``SEQ_WINDOW`` below it; missing ranges that slid out of the bitmap in ``old``
    (see the pure twin)."""

    cdef public long long high
    cdef public long long low  # the first sequence seen (we may have joined late)
    cdef public long long missing  # sequences skipped and not (yet) filled
    cdef public long long lost  # given up: outside the origin's retransmit buffer, or the origin gone
    cdef public bint counted  # a broadcast origin: a skipped sequence is a loss
    cdef bytearray bits
    cdef public list old  # missing [first, end) ranges below the bitmap, oldest first

    def __init__(self, bint counted=False):
        self.high = -1
        self.low = -1
        self.missing = 0
        self.lost = 0
        self.counted = counted
        self.bits = bytearray(SEQ_WINDOW >> 3)
        self.old = []

    cpdef list missing_seqs(self, Py_ssize_t limit):
        """The sequences skipped and not filled, oldest first (at most ``limit``)."""
        cdef unsigned char* b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
        cdef long long i, end, pos, lo = self.high - SEQ_WINDOW + 1
        cdef list out = []
        for r in self.old:
            i = r[0]
            end = r[1]
            while i < end and len(out) < limit:
                out.append(i)
                i += 1
        if lo < self.low:
            lo = self.low
        i = lo
        while i <= self.high and len(out) < limit:
            pos = i & (SEQ_WINDOW - 1)
            if not b[pos >> 3] & (1 << (pos & 7)):
                out.append(i)
            i += 1
        return out

    cpdef give_up(self, list seqs):
        """These will never come: count them as lost and stop asking."""
        cdef unsigned char* b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
        cdef long long seq, pos
        for s in seqs:
            seq = s
            if seq <= self.high - SEQ_WINDOW:
                if self._take_old(seq):
                    self.lost += 1
                continue
            if seq > self.high or seq < self.low:
                continue
            pos = seq & (SEQ_WINDOW - 1)
            if not b[pos >> 3] & (1 << (pos & 7)):
                b[pos >> 3] |= (1 << (pos & 7))
                self.lost += 1
                if self.missing > 0:
                    self.missing -= 1

    cpdef expect(self, long long seq):
        """The origin says it has sent up to ``seq`` (see the pure twin)."""
        if self.counted and self.high >= 0 and seq > self.high:
            self._advance(seq)

    cdef inline void _advance(self, long long seq):
        cdef unsigned char* b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
        cdef long long i, pos, high = self.high, lo
        cdef unsigned char bit
        if self.counted:
            self.missing += seq - high
        if seq - high >= SEQ_WINDOW:
            if self.counted:
                lo = high - SEQ_WINDOW + 1
                if lo < self.low:
                    lo = self.low
                i = lo
                while i <= high:
                    pos = i & (SEQ_WINDOW - 1)
                    if not b[pos >> 3] & (1 << (pos & 7)):
                        self._add_old_range(i, i + 1)
                    i += 1
                self._add_old_range(high + 1, seq - SEQ_WINDOW + 1)
            memset(b, 0, SEQ_WINDOW >> 3)
        else:
            i = high + 1
            while i <= seq:
                pos = i & (SEQ_WINDOW - 1)
                bit = <unsigned char>(1 << (pos & 7))
                if not b[pos >> 3] & bit:
                    if self.counted and i - SEQ_WINDOW >= self.low:
                        self._add_old_range(i - SEQ_WINDOW, i - SEQ_WINDOW + 1)
                        b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
                else:
                    b[pos >> 3] &= ~bit
                i += 1
        self.high = seq

    cdef _add_old_range(self, long long first, long long end):
        cdef list old = self.old
        cdef list r
        if first >= end:
            return
        cdef Py_ssize_t n = len(old)
        if n and (<list>old[n - 1])[1] == first:
            (<list>old[n - 1])[1] = end
        else:
            old.append([first, end])
            if len(old) > MAX_OLD_RANGES:
                r = old.pop(0)
                self.lost += r[1] - r[0]
                self.missing -= r[1] - r[0]

    cdef bint _take_old(self, long long seq):
        """Remove ``seq`` from ``old``; False if it is not there (seen or given up)."""
        cdef list old = self.old
        cdef list r, g
        cdef Py_ssize_t lo = 0, hi = len(old), mid, k
        cdef long long a, e
        while lo < hi:  # the last range starting at or before seq (ranges are sorted)
            mid = (lo + hi) >> 1
            if <long long>((<list>old[mid])[0]) <= seq:
                lo = mid + 1
            else:
                hi = mid
        k = lo - 1
        if k < 0:
            return False
        r = <list>old[k]
        a = r[0]
        e = r[1]
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

    cdef bint first(self, long long seq):
        cdef unsigned char* b
        cdef long long pos
        cdef unsigned char bit
        if seq == self.high + 1 and seq > 0:  # in order: the common case
            b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
            pos = seq & (SEQ_WINDOW - 1)
            bit = <unsigned char>(1 << (pos & 7))
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
            b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
            pos = seq & (SEQ_WINDOW - 1)
            b[pos >> 3] |= (1 << (pos & 7))
            if self.counted:
                self.missing -= 1
            return True
        if seq <= self.high - SEQ_WINDOW:
            # Older than the window: taken as already seen, unless still missing.
            return len(self.old) > 0 and self._take_old(seq)
        b = <unsigned char*>PyByteArray_AS_STRING(self.bits)
        pos = seq & (SEQ_WINDOW - 1)
        if b[pos >> 3] & (1 << (pos & 7)):
            return False
        b[pos >> 3] |= (1 << (pos & 7))
        if self.counted and self.missing > 0:
            self.missing -= 1  # a late arrival filled a gap
        return True


cdef class Dedupe:
    """Seen message ids.  Ids of the form ``<origin>-<sequence>`` (every id spiralfast
    makes) are kept per origin as a sliding window of sequences, so a copy arriving over
    another path (Redis after WebSocket, a relay) is caught however many events of
    other origins came in between; any other id goes to a bounded window of recent
    ids (set + ring: O(1) eviction)."""

    cdef set _seen
    cdef list _order
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _max
    cdef dict _origins
    cdef bytes _last_origin
    cdef _Window _last_window

    def __init__(self, Py_ssize_t size=_limits.DEDUPE_WINDOW):
        if size < 1:
            raise ValueError(f"dedupe window must be at least 1, got {size}")
        self._seen = set()
        self._order = [None] * size
        self._pos = 0
        self._max = size
        self._origins = {}
        self._last_origin = None
        self._last_window = None

    cpdef bint first_time(self, bytes msg_id) except -1:
        if msg_id is None:
            raise TypeError("msg_id must be bytes, not None")
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(msg_id)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(msg_id), i = n - 1, ndig
        cdef long long seq = 0, mult = 1
        cdef _Window w
        while i >= 0 and 48 <= p[i] <= 57 and n - 1 - i < 17:
            seq += (p[i] - 48) * mult
            mult *= 10
            i -= 1
        ndig = n - 1 - i
        if ndig > 0 and i > 0 and p[i] == 45 and not (ndig > 1 and p[i + 1] == 48):  # "<origin>-<digits>"
            lo = self._last_origin
            if lo is not None and PyBytes_GET_SIZE(lo) == i and memcmp(PyBytes_AS_STRING(lo), p, i) == 0:
                w = self._last_window
            else:
                origin = PyBytes_FromStringAndSize(<const char*>p, i)
                w = self._origins.get(origin)
                if w is None:
                    if len(self._origins) >= MAX_ORIGINS:
                        del self._origins[next(iter(self._origins))]
                    w = _Window(i > 0 and p[i - 1] == 115)  # origin ends in "s": a broadcast sequence
                    self._origins[origin] = w
                self._last_origin = origin
                self._last_window = w
            return w.first(seq)
        if msg_id in self._seen:
            return False
        old = self._order[self._pos]
        if old is not None:
            self._seen.discard(old)
        self._order[self._pos] = msg_id
        self._pos += 1
        if self._pos >= self._max:
            self._pos = 0
        self._seen.add(msg_id)
        return True

    def __len__(self):
        return len(self._seen) + len(self._origins)

    def gaps(self):
        """``{origin: sequences skipped and not filled}`` for broadcast origins with gaps."""
        return {o.decode(errors="replace"): (<_Window>w).missing for o, w in self._origins.items()
                if (<_Window>w).missing}

    def lost(self):
        """``{origin: sequences given up}`` (never repaired)."""
        return {o.decode(errors="replace"): (<_Window>w).lost for o, w in self._origins.items()
                if (<_Window>w).lost}

    def window(self, str origin):
        """The window of ``origin`` (None if never seen)."""
        return self._origins.get(origin.encode())


cdef inline uint32_t _get_u32(const uint8_t* p) noexcept:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline Message _message(int kind, int etype, bytes target, bytes msg_id, bytes payload):
    cdef Message m = Message.__new__(Message)
    m.kind = kind
    m.etype = etype
    m.target = target
    m.msg_id = msg_id
    m.payload = payload
    return m


cdef class EventSink:
    """Delivers received mesh events to a node's handlers (see ``_fastpath_py``)."""

    cdef public object dispatcher
    cdef public bytes me
    cdef public Dedupe dedupe
    cdef public Py_ssize_t last_messages
    cdef public Py_ssize_t duplicates
    cdef public Py_ssize_t bad_events
    cdef public Py_ssize_t events_in
    cdef public Py_ssize_t reserved_refused  # membership events about another node (refused)
    cdef public object handlers  # the dispatcher's handler table (kept current by the node)
    cdef dict _kinds
    cdef object _recent_append
    cdef object _spill
    cdef object _inbox
    cdef Ring _cring  # the same ring when it is the compiled one: a C-level empty()
    cdef set _observers
    cdef public double turn_deadline  # this loop turn's end for inline handlers (0.0: none; set by the gate)
    cdef public dict owners  # sequence-id stem -> the node owning it
    cdef dict _claims
    cdef public Py_ssize_t foreign
    cdef public list relayed

    def __init__(self, dispatcher, bytes node_id, Dedupe dedupe):
        if dedupe is None:
            raise TypeError("dedupe must be a Dedupe")
        self.dispatcher = dispatcher
        self.me = node_id
        self.dedupe = dedupe
        self.last_messages = 0
        self.duplicates = 0
        self.bad_events = 0
        self.events_in = 0
        self.reserved_refused = 0
        self._kinds = {}
        # These containers live as long as the dispatcher; caching them saves
        # attribute lookups per event.
        self.handlers = dispatcher.handlers
        self._recent_append = dispatcher.recent.append
        self._spill = dispatcher.spill
        self._inbox = dispatcher.inbox
        self._cring = dispatcher.inbox if isinstance(dispatcher.inbox, Ring) else None
        self._observers = dispatcher.observers
        self.turn_deadline = 0.0
        self.owners = {}
        self._claims = {}
        self.foreign = 0
        self.relayed = []

    def claim(self, str origin, str node):
        stem = origin.encode()[:_STEM]
        if self.owners.get(stem) != node:
            self._drop(stem)
            self._evict()
            self.owners[stem] = node

    def release(self, str node):
        for stem in [k for k, v in self.owners.items() if v == node]:
            del self.owners[stem]
        self._claims.pop(node, None)

    cdef bint _first_use(self, bytes stem, object sender) except -1:
        n = self._claims.get(sender, 0)
        if n >= _MAX_FIRST_USES:
            return False
        self._claims[sender] = n + 1
        self._evict()
        self.owners[stem] = sender
        return True

    cdef int _drop(self, bytes stem) except -1:
        old = self.owners.pop(stem, None)
        if old is not None and old in self._claims:
            self._claims[old] -= 1
            if self._claims[old] <= 0:
                del self._claims[old]
        return 0

    cdef int _evict(self) except -1:
        while len(self.owners) >= _MAX_OWNERS:
            self._drop(next(iter(self.owners)))
        return 0

    cpdef bint sync_only(self, str etype, list handlers) except -1:
        c = self._kinds.get(etype)
        if c is None or (<tuple>c)[0] is not handlers or (<tuple>c)[1] != len(handlers):
            ok = True
            for h in handlers:
                if _iscoro(h):
                    ok = False
                    break
            c = (handlers, len(handlers), ok)
            self._kinds[etype] = c
        return (<tuple>c)[2]

    cpdef on_event(self, object ev):
        cdef str etype = ev.event_type
        self.events_in += 1
        if _membership(etype) and not _about_itself(ev):
            self.reserved_refused += 1  # another node's word on a membership change: refused
            return
        if (self.events_in & 63) == 0 and self.dispatcher.sample_latency is not None:
            self.dispatcher.sample_latency(_now() - ev.timestamp)  # one event in 64: origin to here
        if not _internal(etype):  # the mesh's own protocol events (tasks) are not logged
            self._recent_append(ev)
            if self._observers:
                self.dispatcher.push_observers(ev)
        handlers = self.handlers.get(etype)
        if not handlers:
            return
        cdef dict env = {
            "type": etype,
            "source_node": ev.source_node,
            "timestamp": iso_from_epoch(ev.timestamp),
            "data": ev.data,
            "event_id": ev.event_id,
        }
        target = ev.target_node
        if target is not None:
            env["target_node"] = target
        if (self.events_in & 15) == 0 and self.turn_deadline != 0.0 and _monotonic() > self.turn_deadline:
            self.dispatcher.defer()  # handlers have held the loop long enough: queue from here on
        self.dispatch(env, handlers)

    cpdef dispatch(self, dict env, list handlers):
        cdef bint idle = self._cring.empty() if self._cring is not None else self._inbox.empty()
        cdef Py_ssize_t i
        cdef PyObject* res
        cdef int st
        if not self._spill and idle and not self.sync_only(env["type"], handlers):
            # Coroutine handlers run eagerly (see spiralfast.node.dispatch): PyIter_Send steps
            # the coroutine without raising StopIteration when it finishes at once.
            d = self.dispatcher
            needs = d.needs_task
            for i in range(len(handlers)):
                h = handlers[i]
                if needs and h in needs:
                    d.queue_rest(env, handlers, i)
                    return
                try:
                    r = h(env)
                except Exception:
                    d.handler_failed(h, env)
                    continue
                if r is None:
                    continue
                if not PyCoro_CheckExact(r):
                    if _isawaitable(r):
                        d.spawn(r)
                    continue
                res = NULL
                try:
                    st = PyIter_Send(r, None, &res)
                except RuntimeError as exc:
                    if d.first_step_failed(h, env, handlers, i, exc):
                        return
                    continue
                except Exception:
                    d.handler_failed(h, env)
                    continue
                if st == 0:  # PYGEN_RETURN: done without suspending
                    Py_XDECREF(res)
                    continue
                fut = <object>res
                Py_XDECREF(res)
                d.suspended(r, fut, h, env, handlers, i)
                return
            return
        if not self._spill and idle:
            for h in handlers:
                try:
                    r = h(env)
                    if r is not None and _isawaitable(r):
                        self.dispatcher.spawn(r)
                except Exception:
                    self.dispatcher.handler_failed(h, env)
            return
        self.dispatcher.queue(env)

    cpdef list receive(self, object data, bint member, object sender=None):
        cdef Py_buffer view
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except (TypeError, BufferError) as exc:
            raise FrameError("frame must be a contiguous bytes-like object") from exc
        try:
            return self._receive(<const uint8_t*>view.buf, view.len, member, sender)
        finally:
            PyBuffer_Release(&view)

    cdef list _receive(self, const uint8_t* data, Py_ssize_t size, bint member, object sender):
        cdef Py_ssize_t count, i, pos, tlen, ilen, end
        cdef uint32_t plen
        cdef int kind, etype
        cdef list rest = []
        cdef bytes target, msg_id, payload
        count = validate_frame(data, size, MAX_FRAME_SIZE)
        self.last_messages = count
        self.relayed = []
        pos = FRAME_HEADER_SIZE
        for i in range(count):
            kind = data[pos]
            etype = data[pos + 1]
            tlen = data[pos + 2]
            ilen = data[pos + 3]
            plen = _get_u32(data + pos + 4)
            pos += MESSAGE_HEADER_SIZE
            end = pos + tlen + ilen + <Py_ssize_t>plen
            target = PyBytes_FromStringAndSize(<const char*>data + pos, tlen)
            msg_id = PyBytes_FromStringAndSize(<const char*>data + pos + tlen, ilen)
            payload = PyBytes_FromStringAndSize(<const char*>data + pos + tlen + ilen, plen)
            pos = end
            if tlen and target != self.me:
                rest.append(_message(kind, etype, target, msg_id, payload))
                continue
            if ilen and sender is not None:
                stem = msg_id[:_STEM]
                owner = self.owners.get(stem)
                if owner is None and not self._first_use(stem, sender):
                    owner = ""  # over its quota of origins: refused
                if owner is not None and owner != sender:
                    if tlen:
                        self.relayed.append(_message(kind, etype, target, msg_id, payload))
                    else:
                        self.foreign += 1
                    continue
            if ilen and not self.dedupe.first_time(msg_id):
                self.duplicates += 1
                continue
            if member and kind == KIND_EVENT:
                try:
                    ev = _decode_event(payload)
                except (_DecodeError, ValueError, RecursionError):  # ValueError: bad UTF-8 in a string
                    self.bad_events += 1
                    continue
                if sender is not None and ev.source_node != sender:
                    self.foreign += 1
                    continue
                self.on_event(ev)
                continue
            rest.append(_message(kind, etype, target, msg_id, payload))
        return rest


cdef object _now = __import__("time").time
cdef object _deque = __import__("collections").deque


cdef class EventSender:
    """The send half of the hot path (see ``_fastpath_py.EventSender``)."""

    cdef public object outbox
    cdef public object dispatcher
    cdef public str node_id
    cdef public str prefix
    cdef public long seq
    cdef public long direct_seq
    cdef str _direct_prefix
    cdef public dict etype_ids
    cdef public Py_ssize_t flush_bytes
    cdef public Py_ssize_t yield_every
    cdef public Py_ssize_t since_yield
    cdef public Py_ssize_t events_out
    cdef public object legacy  # set while a link publishes old-format copies
    cdef public object retx  # deque of broadcast payloads (bytes), oldest first: the retransmit buffer
    cdef public Py_ssize_t retx_bytes
    cdef public long retx_base  # the sequence of retx[0]
    cdef FrameWriter _writer
    cdef object _recent_append
    cdef set _observers

    def __init__(self, outbox, dispatcher, str node_id, str prefix, dict etype_ids, Py_ssize_t flush_bytes,
                 Py_ssize_t yield_every):
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
        self.legacy = None
        self.retx = _deque()
        self.retx_bytes = 0
        self.retx_base = 1
        self._writer = outbox.bcast
        self._recent_append = dispatcher.recent.append
        self._observers = dispatcher.observers

    cpdef str next_id(self):
        """An id for a direct message: its own sequence (broadcast sequences stay gapless)."""
        self.direct_seq += 1
        return PyUnicode_FromFormat("%Ux-%ld", <void*>self._direct_prefix, self.direct_seq)

    cpdef bint broadcast(self, str etype, object data) except -1:
        cdef FrameWriter w = self._writer
        ob = self.outbox
        self.seq += 1
        eid = PyUnicode_FromFormat("%U%ld", <void*>self.prefix, self.seq)
        ev = _Event(eid, etype, self.node_id, _now(), data)
        self.events_out += 1
        if w._count >= MAX_MESSAGES_PER_FRAME:
            ob.flush()
        cdef Py_ssize_t before = PyByteArray_GET_SIZE(w._buf)
        w.add(KIND_EVENT, self.etype_ids.get(etype, 0), b"", eid, ev)
        cdef Py_ssize_t after = PyByteArray_GET_SIZE(w._buf)
        # The payload as sent, kept for gap repair (trimmed by bytes and age elsewhere).
        cdef Py_ssize_t start = before + MESSAGE_HEADER_SIZE + PyUnicode_GET_LENGTH(eid)
        self.retx.append(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(w._buf) + start, after - start))
        self.retx_bytes += after - start
        if after >= self.flush_bytes:
            ob.flush()
        elif ob.flush_handle is None:
            ob.schedule()
        if not _internal(etype):  # the mesh's own protocol events (tasks) stay internal
            if self.legacy is not None:
                self.legacy.legacy_broadcast(ev)
            self._recent_append(ev)
            if self._observers:
                self.dispatcher.push_observers(ev)
        self.since_yield += 1
        if ob.paused or self.since_yield >= self.yield_every:
            self.since_yield = 0
            return True
        return False
