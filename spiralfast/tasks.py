"""Work distribution: task handlers, submission, load balancing, failover.

Built on the mesh's public API only (``send_to_node``, ``broadcast_event``,
``register_event_handler``, ``nodes``, ``local_node``, ``registry``).  Three
reserved event types carry the protocol:

``_sf.task``    submitter -> worker: ``[task_type, [task_id, ...], [payload, ...]]``
``_sf.result``  worker -> submitter: ``{"i": [task_id, ...], "v": [result, ...],
                "x": [[task_id, status, value], ...], "l": {task_type: [capacity, load,
                load_from_you]}}`` (``x``: the tasks that did not succeed)
``_sf.load``    worker -> everyone: ``{"o": {task_type: [capacity, load]}, "s": {task_type:
                [done, failed, p50_ms, p99_ms]}}`` (+ ``"ask": 1`` when the receiver should
                answer with its own)

Tasks and results are batched: everything for one node (and task type) in one loop
iteration travels as one event, at most :data:`MAX_BATCH` items; ``map`` lets the
loop run every :data:`MAP_BURST` tasks so batches leave while it goes on.  A
status in ``x`` is 1 (the handler raised: the value is ``[type name, message]``) or
2 (the node does not serve the type: the submitter drops it and goes elsewhere,
without using up a retry).

Load travels four ways: every result event carries the worker's load per task
type (and how much of it is the receiver's, so a submitter adds the other
submitters' share to its own exact count); a ``_sf.load`` broadcast goes out
when the load changed, at most every ``heartbeat_interval / 4``, and at least
every ``heartbeat_interval`` while the node offers anything; a node that joins
gets one at once; and the local node's ``metadata["tasks"]`` (``{task_type:
[capacity, load]}``) travels in handshakes and in the gossip sent with every
heartbeat (used for nodes that sent no events for two heartbeat intervals, and
for the capacity of a node whose advert has not arrived yet).  Offered task
types are also appended to the local node's ``capabilities`` and applied to
peers' ``mesh.nodes`` records when their ``_sf.load`` arrives (a core that only
takes capabilities from the first record it sees still learns them).

Choosing a node: power of two choices over the nodes serving the type, by
load / capacity (this node's own in-flight count plus the others' advertised
share); a node at capacity is not chosen while another has room, and when every
node is full the task waits (without a node; its timeout runs) until one has
room.  The waiting list holds only tasks whose submitters are awaiting them, so
it is bounded by the callers (``map`` keeps ``concurrency`` tasks at most).

Failover: a task whose worker leaves or is removed by failure detection (the
local membership's own decision, told by the node through :meth:`TaskManager.node_removed`;
never a ``node_unregister`` event from another node), whose worker's link drops, or whose attempt times out is
sent to another node (the same one if it is the only one), at most ``retries``
times.  Each task has an id; the first result wins and later replies (a retry
racing a slow worker) are counted and dropped, so the caller gets each result
exactly once.  Execution is at least once: a task may run twice when a retry
races a worker that was slow rather than dead.  A dropped link is noticed by
looking at the node's links every housekeeping tick (the core has no link
up/down notification); a frozen node only by failure detection.

Trust (SECURITY.md): members speak only for their own affairs.  Task ids are
:data:`ID_BYTES` random bytes (unguessable); the submitter records the node(s) it sent
each task to, and a result for it from any other node is refused and counted
(``results_refused``).  A node offers at most :data:`MAX_TASK_TYPES` task types with
names of at most :data:`MAX_TYPE_NAME` characters: a load or result message listing
more is refused whole (``types_refused``), and everything is looked up in sets and
dicts (no quadratic path).  A worker holds at most ``max(capacity * QUEUE_FACTOR,
QUEUE_FLOOR)`` tasks per submitter (running and queued); beyond that a task is answered
at once with a ``WorkerBusy`` failure the submitter sees as :class:`TaskError`
(``busy_refused``).  Waiting tasks are queued per submitter and served in turns, so a
submitter's backlog never stands in front of another's next task.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._log import RateLimitedLog
from .errors import NoNodeForTask, TaskError, TaskTimeout
from .registry import MAX_CAPABILITIES, MAX_CAPABILITY_NAME

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.tasks")

#: Reserved event types of the task protocol.
TASK_EVENT = "_sf.task"
RESULT_EVENT = "_sf.result"
LOAD_EVENT = "_sf.load"
#: Result status codes.
OK, FAILED, REFUSED = 0, 1, 2
#: Items per task or result event (bounded so one event stays far below the
#: message size limit for small payloads; a batch that still does not fit is split).
MAX_BATCH = 512
#: Tasks ``map`` starts before it lets the loop run (so they leave while it goes on).
MAP_BURST = 64
#: Latency samples kept per task type for p50/p99.
LATENCY_SAMPLES = 4096
#: Capacity assumed for a node that lists a task type as a capability but whose
#: ``_sf.load`` advertisement has not arrived yet.
DEFAULT_CAPACITY = 64
#: Shortest period of the housekeeping loop (timeouts, link checks, load adverts).
MIN_TICK = 0.01
#: Longest period of the housekeeping loop; also the timeout precision.
MAX_TICK = 0.05
#: Random bytes in a task id (96 bits: not guessable by another node).
ID_BYTES = 12
#: Task ids drawn from the system's random source at once (one read per this many tasks).
ID_BATCH = 1024
#: Task types one node may offer, and the longest name (the registry's capability
#: bounds): a load or result message listing more types is refused whole.
MAX_TASK_TYPES = MAX_CAPABILITIES
MAX_TYPE_NAME = MAX_CAPABILITY_NAME
#: A worker holds at most ``max(capacity * QUEUE_FACTOR, QUEUE_FLOOR)`` tasks of one
#: type per submitter (running and queued); more are refused with ``WorkerBusy``.  A
#: submitter keeps at most the capacity it believes (DEFAULT_CAPACITY before the
#: advert) in flight at a node, so only one ignoring the advert ever meets the bound.
QUEUE_FACTOR = 4
QUEUE_FLOOR = 256
#: Refusals (``WorkerBusy``) waiting to be sent to one submitter at most; a flood that
#: does not read its replies gets no more buffered (counted in ``busy_refused`` too).
MAX_BUSY_REPLIES = 64 * MAX_BATCH
#: The error a refused task carries (type name, message).
BUSY = "WorkerBusy"

_perf = time.perf_counter
#: Result types that are never awaitable (skips ``inspect.isawaitable``).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})


class _Offer:
    """A task type this node serves."""

    __slots__ = ("handler", "capacity", "is_async", "running", "queues", "turns", "queued", "by_src", "done",
                 "failed", "latency", "busy", "busy_cap")

    def __init__(self, handler: Callable[[Any], Any], capacity: int) -> None:
        self.handler = handler
        self.capacity = capacity
        self.is_async = inspect.iscoroutinefunction(handler)
        self.running = 0
        # Waiting tasks per submitter, served in turns (one submitter's backlog never
        # stands in front of another's next task).
        self.queues: dict[str, deque[tuple[Any, Any]]] = {}
        self.turns: deque[str] = deque()  # submitters with waiting tasks, next first
        self.queued = 0
        self.by_src: dict[str, int] = {}
        self.done = 0
        self.failed = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.busy: list[Any] | None = None  # the WorkerBusy failure value (shared by every refusal)
        self.busy_cap = 0

    @property
    def load(self) -> int:
        return self.running + self.queued

    def push(self, src: str, tid: Any, payload: Any) -> None:
        q = self.queues.get(src)
        if q is None:
            q = self.queues[src] = deque()
            self.turns.append(src)
        q.append((tid, payload))
        self.queued += 1

    def pop(self) -> tuple[str, Any, Any]:
        """The next waiting task: the submitter whose turn it is, then it goes last."""
        src = self.turns.popleft()
        q = self.queues[src]
        tid, payload = q.popleft()
        if q:
            self.turns.append(src)
        else:
            del self.queues[src]
        self.queued -= 1
        return src, tid, payload

    def forget(self, src: str) -> int:
        """Drop ``src``'s waiting tasks; returns how many."""
        q = self.queues.pop(src, None)
        if not q:
            return 0
        self.turns.remove(src)
        self.queued -= len(q)
        return len(q)

    def clear(self) -> None:
        self.queues.clear()
        self.turns.clear()
        self.queued = 0

    def per_source(self) -> int:
        """Tasks one submitter may have here at once (running and queued)."""
        return max(self.capacity * QUEUE_FACTOR, QUEUE_FLOOR)


class _Target:
    """A (node, task type) pair this node may send tasks to."""

    __slots__ = ("node", "capacity", "others", "mine", "offer", "advertised", "seen")

    def __init__(self, node: str, capacity: int, offer: _Offer | None = None, advertised: bool = True) -> None:
        self.node = node
        self.capacity = max(1, capacity)
        self.others = 0  # load from other submitters, as last advertised
        self.mine = 0  # this node's tasks in flight there
        self.offer = offer  # set for the local node: its load is known exactly
        self.advertised = advertised  # False: only known from capabilities
        self.seen = 0.0  # monotonic time of the last load from the node's own events

    def load(self) -> int:
        o = self.offer
        return o.load if o is not None else self.mine + self.others


class _Pending:
    """One submitted task until its result reaches the caller.

    ``state`` is 0 while it runs, 1 once ``value`` holds its result, 2 once ``value``
    holds its exception.  ``fut`` exists only while someone awaits it (``map`` keeps
    finished tasks without a future until their turn).
    """

    __slots__ = ("tid", "ttype", "payload", "fut", "target", "attempts", "timeout", "deadline", "t0", "pinned",
                 "stats", "state", "value", "tried")

    def __init__(self, tid: bytes, ttype: str, payload: Any, stats: _Stats, retries: int, timeout: float,
                 pinned: str | None) -> None:
        self.tid = tid
        self.ttype = ttype
        self.payload = payload
        self.stats = stats
        self.fut: asyncio.Future[Any] | None = None
        self.target: _Target | None = None
        self.attempts = retries  # retries left
        self.timeout = timeout
        self.t0 = t0 = _perf()
        self.deadline = t0 + timeout
        self.pinned = pinned
        self.state = 0
        self.value: Any = None
        self.tried: tuple[str, ...] = ()  # nodes of earlier attempts (their late result still counts)


class _Stats:
    """What this node submitted, per task type: ``done`` (a result), ``failed`` (an
    error other than a timeout), ``timeouts`` (ended with ``TaskTimeout``), ``retried``
    (attempts sent again after a timeout, a lost worker or a dropped link)."""

    __slots__ = ("submitted", "done", "failed", "retried", "timeouts", "latency")

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.retried = 0
        self.timeouts = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)


def _meta_offer(md: dict[str, Any], ttype: str) -> tuple[int | None, int | None]:
    """(capacity, load) of ``ttype`` in a node's metadata, or Nones."""
    try:
        v = md["tasks"][ttype]
        return int(v[0]), int(v[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None, None


def _check_limits(timeout: Any, retries: Any) -> None:
    """A clear error for a timeout or retries of the wrong type or range (the per-task
    path only compares them)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")


def _percentiles(samples: Iterable[float]) -> tuple[float | None, float | None]:
    s = sorted(samples)
    if not s:
        return None, None
    return round(s[len(s) // 2] * 1000, 3), round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3)


class TaskManager:
    """One per MeshCore (``mesh.tasks``).  Uses only the mesh's public API.

    :param mesh: the node it serves and submits for.
    """

    def __init__(self, mesh: MeshCore) -> None:
        self.mesh = mesh
        self._offers: dict[str, _Offer] = {}
        self._targets: dict[str, dict[str, _Target]] = {}  # task type -> node -> target
        self._cands: dict[str, list[_Target]] = {}  # task type -> targets (cached list)
        self._refused: set[tuple[str, str]] = set()  # (node, type) that answered "not served"
        self._pending: dict[bytes, _Pending] = {}
        self._waiting: dict[str, deque[_Pending]] = {}
        self._stats: dict[str, _Stats] = {}
        self._ids = b""  # random bytes for the next task ids
        self._id_at = 0
        self._late = 0
        self._results_refused = 0  # results from a node the task was not sent to (or a malformed id)
        self._types_refused = 0  # load/result messages over the type bounds
        self._busy_refused = 0  # tasks refused: their submitter's queue here was full
        self._node_types: dict[str, set[str]] = {}  # node -> task types it has a target for
        self._warn = RateLimitedLog(log)
        # node -> task type -> (ids, payloads) to send
        self._out: dict[str, dict[str, tuple[list[bytes], list[Any]]]] = {}
        # node -> (ids, values, failures) to send back (ids as the submitter sent them)
        self._results: dict[str, tuple[list[Any], list[Any], list[list[Any]]]] = {}
        self._hello: dict[str, bool] = {}  # nodes that get our load advert directly -> ask back
        self._advert_now = False
        self._wake = asyncio.Event()
        self._drain_scheduled = False
        self._loop_tasks: list[asyncio.Task[Any]] = []
        self._workers: set[asyncio.Task[Any]] = set()
        self._linked: set[str] = set()
        self._down: set[str] = set()  # nodes whose link dropped (not chosen until it is back)
        self._meta_t = 0.0
        self._last_advert: Any = None  # what the last _sf.load broadcast said (change detection)
        self._last_advert_t = 0.0
        self._peer_stats: dict[str, dict[str, list[Any]]] = {}  # node -> type -> [done, failed, p50, p99]
        self._started = False
        self._loop: Any = None  # the running loop, from start()

    # -- serving ---------------------------------------------------------------------

    def register(self, task_type: str, handler: Callable[[Any], Any], *, capacity: int = 64) -> None:
        """Serve ``task_type`` on this node.

        :param task_type: the name submitters use; it becomes a capability of this node.
        :param handler: ``handler(payload) -> result`` (plain or ``async def``).  Plain
            handlers run inline on the event loop as tasks arrive; ``async def`` ones
            run as tasks, at most ``capacity`` at once (the rest queue on this node).
        :param capacity: how many tasks of this type the node takes at once; submitters
            do not send more while they know it is full.
        :raises ValueError: for an empty type, a handler that is not callable or a
            capacity below 1.
        """
        if not isinstance(task_type, str) or not task_type:
            raise ValueError(f"task_type must be a non-empty string, got {task_type!r}")
        if not callable(handler):
            raise ValueError(f"handler for {task_type!r} is not callable")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if len(task_type) > MAX_TYPE_NAME:
            raise ValueError(f"task_type is longer than {MAX_TYPE_NAME} characters")
        if task_type not in self._offers and len(self._offers) >= MAX_TASK_TYPES:
            raise ValueError(f"a node serves at most {MAX_TASK_TYPES} task types")
        offer = self._offers.get(task_type)
        if offer is None:
            offer = self._offers[task_type] = _Offer(handler, capacity)
        else:  # a new handler or capacity; what runs and the counters stay
            offer.handler, offer.capacity = handler, capacity
            offer.is_async = inspect.iscoroutinefunction(handler)
        me = self.mesh.node_id
        t = self._targets.setdefault(task_type, {}).get(me)
        if t is None:
            self._targets[task_type][me] = _Target(me, capacity, offer)
            self._node_types.setdefault(me, set()).add(task_type)
        else:
            t.offer, t.capacity = offer, capacity
        self._refresh(task_type)
        ln = self.mesh.local_node
        if task_type not in ln.capabilities:
            ln.capabilities.append(task_type)
        if me in self.mesh.registry.nodes:
            self.mesh.registry.register_node(ln)  # re-index its capabilities
        self._publish_meta()
        if self._started:
            self._advert_now = True
            self._wake.set()
        self._schedule_drain()

    def offered(self) -> dict[str, int]:
        """Task types this node serves -> capacity."""
        return {k: o.capacity for k, o in self._offers.items()}

    # -- submitting ------------------------------------------------------------------

    async def submit(self, task_type: str, payload: Any, *, timeout: float = 30.0, retries: int = 2,
                     target_node: str | None = None) -> Any:
        """Run one task on the least-loaded node serving ``task_type`` (this one included).

        :param task_type: a type some node registered a handler for.
        :param payload: the handler's argument (msgpack/JSON-able to reach other nodes).
        :param timeout: seconds per attempt (waiting for a node with room included).
        :param retries: attempts on other nodes after a timeout or a lost worker.
        :param target_node: run it on that node only.
        :returns: the handler's result.
        :raises NoNodeForTask: at once, when no known node serves the type (or
            ``target_node`` does not).
        :raises TaskError: the handler raised (``type_name``, ``message``), or the
            worker was lost with no retries left (``type_name == "WorkerLost"``).
        :raises TaskTimeout: no result within ``timeout`` on the last attempt.
        """
        _check_limits(timeout, retries)
        p = self._start(task_type, payload, timeout, retries, target_node)
        if p.state == 0:
            try:
                await self._wait(p)
            except asyncio.CancelledError:
                self._abandon(p)
                raise
        if p.state == 2:
            raise p.value
        return p.value

    def map(self, task_type: str, payloads: Iterable[Any], *, concurrency: int = 256, timeout: float = 30.0,
            retries: int = 2) -> AsyncIterator[Any]:
        """Results of ``task_type`` for each payload, in submission order, with up to
        ``concurrency`` tasks in flight across the mesh.

        The first failed task raises its error at its place in the order; the tasks
        still in flight are then abandoned (their results are dropped).
        """
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        _check_limits(timeout, retries)
        return self._map(task_type, payloads, concurrency, timeout, retries)

    async def _map(self, task_type: str, payloads: Iterable[Any], concurrency: int, timeout: float,
                   retries: int) -> AsyncIterator[Any]:
        window: deque[_Pending] = deque()
        start = self._start
        burst = 0
        p: _Pending | None = None
        try:
            for payload in payloads:
                window.append(start(task_type, payload, timeout, retries, None))
                burst += 1
                if burst >= MAP_BURST:
                    # let this burst leave while the next is prepared (pipelining:
                    # a whole window sent at once makes both sides work in turns)
                    burst = 0
                    await asyncio.sleep(0)
                if len(window) >= concurrency:
                    p = window.popleft()
                    if p.state == 0:
                        burst = 0
                        await self._wait(p)
                    if p.state == 2:
                        raise p.value
                    yield p.value
                    p = None
            while window:
                p = window.popleft()
                if p.state == 0:
                    await self._wait(p)
                if p.state == 2:
                    raise p.value
                yield p.value
                p = None
        finally:
            if p is not None:
                self._abandon(p)
            for p in window:
                self._abandon(p)

    def _new_id(self) -> bytes:
        """A fresh task id: ID_BYTES from the system's random source (read in batches)."""
        at = self._id_at
        if at >= len(self._ids):
            self._ids, at = os.urandom(ID_BYTES * ID_BATCH), 0
        self._id_at = at + ID_BYTES
        tid = self._ids[at : at + ID_BYTES]
        return tid if tid not in self._pending else self._new_id()

    async def _wait(self, p: _Pending) -> None:
        """Until ``p`` has its result or exception (``p.state`` != 0)."""
        p.fut = self._loop.create_future()
        await p.fut

    def _start(self, ttype: str, payload: Any, timeout: float, retries: int, pinned: str | None) -> _Pending:
        st = self._stats.get(ttype)
        if st is None or pinned is not None or not self._started or not timeout > 0 or retries < 0 \
                or ttype not in self._cands:
            return self._start_checked(ttype, payload, timeout, retries, pinned)
        # the common case: checked before, a node serves it
        st.submitted += 1
        tid = self._new_id()
        p = self._pending[tid] = _Pending(tid, ttype, payload, st, retries, timeout, None)
        cands = self._cands[ttype]
        t: _Target | None = cands[0] if len(cands) == 1 else self._choose(ttype, None, ())
        if t is None or t.offer is not None or t.mine + t.others >= t.capacity:
            self._dispatch(p, ())  # full, or this node: the general path
            return p
        p.target = t  # _send_to, inlined
        t.mine += 1
        node = t.node
        out = self._out.get(node)
        if out is None:
            out = self._out[node] = {}
            self._wake.set()
        group = out.get(ttype)
        if group is None:
            group = out[ttype] = ([], [])
        group[0].append(tid)
        group[1].append(payload)
        return p

    def _start_checked(self, ttype: str, payload: Any, timeout: float, retries: int,
                       pinned: str | None) -> _Pending:
        if not self._started:
            raise NoNodeForTask(f"cannot submit {ttype!r}: the mesh node is not running")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if (pinned is not None or ttype not in self._cands) and not self._has_candidates(ttype, pinned, ()):
            raise NoNodeForTask(f"node {pinned} does not serve task type {ttype!r}" if pinned
                                else f"no node of the mesh serves task type {ttype!r}")
        st = self._stats.get(ttype)
        if st is None:
            st = self._stats[ttype] = _Stats()
        st.submitted += 1
        tid = self._new_id()
        p = self._pending[tid] = _Pending(tid, ttype, payload, st, retries, timeout, pinned)
        self._dispatch(p, ())
        return p

    def _abandon(self, p: _Pending) -> None:
        """The caller no longer waits for ``p`` (cancelled, or ``map`` closed)."""
        if self._pending.get(p.tid) is p:
            del self._pending[p.tid]
            self._release(p)
        fut = p.fut
        if fut is not None:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning
            else:
                fut.cancel()

    # -- choosing a node -------------------------------------------------------------

    def _refresh(self, ttype: str) -> None:
        tmap = self._targets.get(ttype)
        if tmap:
            self._cands[ttype] = list(tmap.values())
        else:
            self._targets.pop(ttype, None)
            self._cands.pop(ttype, None)

    def _learn_from_capabilities(self, ttype: str) -> None:
        """Targets for nodes listing ``ttype`` as a capability whose advert has not
        arrived yet (a node that joined a moment ago); found in the registry's index."""
        me = self.mesh.node_id
        nodes = self.mesh.nodes
        tmap = self._targets.get(ttype) or {}
        for nid in list(self.mesh.registry.node_capabilities.get(ttype, ())):
            node = nodes.get(nid)
            if node is None or nid == me or nid in self._down or nid in tmap or (nid, ttype) in self._refused:
                continue
            md = node.metadata if isinstance(node.metadata, dict) else {}
            if md.get("implementation") != "spiralfast":
                continue
            cap, _ = _meta_offer(md, ttype)
            self._add_target(nid, ttype, cap or DEFAULT_CAPACITY, advertised=cap is not None)

    def _has_candidates(self, ttype: str, pinned: str | None, exclude: Iterable[str]) -> bool:
        cands = self._cands.get(ttype)
        if not cands:
            self._learn_from_capabilities(ttype)
            cands = self._cands.get(ttype)
            if not cands:
                return False
        if pinned is not None:
            return any(t.node == pinned for t in cands)
        return True

    def _choose(self, ttype: str, pinned: str | None, exclude: tuple[str, ...]) -> _Target | None:
        """The node to run a task on, or None when every candidate is full."""
        cands = self._cands.get(ttype)
        if not cands:
            return None
        if pinned is not None or exclude:
            if pinned is not None:
                cands = [t for t in cands if t.node == pinned]
            else:
                rest = [t for t in cands if t.node not in exclude]
                cands = rest or cands  # the excluded node if it is the only one
        n = len(cands)
        if n == 1:
            t = cands[0]
            o = t.offer
            return t if (o.load if o is not None else t.mine + t.others) < t.capacity else None
        if n == 2:
            a, b = cands
        else:
            i = int(random.random() * n)
            j = int(random.random() * (n - 1))
            if j >= i:
                j += 1
            a, b = cands[i], cands[j]
        ua = a.load() / a.capacity
        ub = b.load() / b.capacity
        if ua > ub:
            a, ua = b, ub
        if ua < 1.0:
            return a
        best = None
        bu = 1.0
        for t in cands:  # both sampled are full: any node with room
            u = t.load() / t.capacity
            if u < bu:
                best, bu = t, u
        return best

    def _dispatch(self, p: _Pending, exclude: tuple[str, ...]) -> None:
        t = self._choose(p.ttype, p.pinned, exclude)
        if t is None:
            if not self._has_candidates(p.ttype, p.pinned, exclude):
                self._finish_exc(p, NoNodeForTask(f"no node serves task type {p.ttype!r}"))
                return
            w = self._waiting.get(p.ttype)
            if w is None:
                w = self._waiting[p.ttype] = deque()
            w.append(p)
            return
        self._send_to(p, t)

    def _send_to(self, p: _Pending, t: _Target) -> None:
        p.target = t
        t.mine += 1
        node = t.node
        if t.offer is not None:  # this node: no network
            self._run(node, p.tid, p.ttype, p.payload)
            return
        out = self._out.get(node)
        if out is None:
            out = self._out[node] = {}
            self._wake.set()
        group = out.get(p.ttype)
        if group is None:
            group = out[p.ttype] = ([], [])
        group[0].append(p.tid)
        group[1].append(p.payload)

    def _release(self, p: _Pending) -> None:
        t = p.target
        if t is not None:
            p.target = None
            t.mine -= 1
            if self._waiting:
                self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._waiting and not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Send waiting tasks to nodes that have room now."""
        self._drain_scheduled = False
        pending = self._pending
        for ttype, w in list(self._waiting.items()):
            blocked: set[str | None] = set()  # None: every node is full; else a pinned node
            keep: deque[_Pending] = deque()
            while w:
                p = w.popleft()
                if pending.get(p.tid) is not p or p.target is not None:
                    continue
                if None in blocked or p.pinned in blocked:
                    keep.append(p)  # order kept: the oldest goes first once there is room
                    continue
                if not self._has_candidates(ttype, p.pinned, ()):
                    self._finish_exc(p, NoNodeForTask(f"no node serves task type {ttype!r} any more"))
                    continue
                t = self._choose(ttype, p.pinned, ())
                if t is None:
                    blocked.add(p.pinned)
                    keep.append(p)
                    continue
                self._send_to(p, t)
            if keep:
                self._waiting[ttype] = keep
            else:
                del self._waiting[ttype]

    # -- results ---------------------------------------------------------------------

    def _finish_exc(self, p: _Pending, exc: BaseException) -> None:
        if self._pending.get(p.tid) is p:
            del self._pending[p.tid]
        self._release(p)
        st = p.stats
        if isinstance(exc, TaskTimeout):
            st.timeouts += 1
        else:
            st.failed += 1
        if p.state == 0:
            p.state, p.value = 2, exc
            fut = p.fut
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _accept(self, src: str, tid: Any, status: Any, value: Any) -> None:
        p = self._pending.get(tid) if tid.__class__ is bytes else None
        if p is None:
            if tid.__class__ is bytes:
                self._late += 1
            else:
                self._results_refused += 1
            return
        t = p.target
        if (t is None or t.node != src) and src not in p.tried:
            self._refuse_result(src, p)
            return
        if status == REFUSED:
            if t is None or t.node != src:
                return  # an earlier attempt's refusal
            self._drop_target(src, p.ttype, refused=True)
            self._release(p)
            self._dispatch(p, (src,))
            return
        del self._pending[tid]
        if t is not None:
            p.target = None
            t.mine -= 1
            if self._waiting:
                self._schedule_drain()
        st = p.stats
        if status == OK:
            st.done += 1
            st.latency.append(_perf() - p.t0)
            p.state, p.value = 1, value
        else:
            st.failed += 1
            try:
                tn, msg = str(value[0]), str(value[1])
            except (TypeError, IndexError, KeyError):
                tn, msg = "TaskError", repr(value)
            p.state, p.value = 2, TaskError(tn, msg, task_type=p.ttype, node_id=src)
        fut = p.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _refuse_result(self, src: str, p: _Pending) -> None:
        """A result for ``p`` from a node it was never sent to: refused, counted."""
        self._results_refused += 1
        self._warn(("forged", src), logging.WARNING, "refused a result for a %r task from node %s, which was "
                   "not given that task", p.ttype, src)

    def _retry(self, p: _Pending, why: str) -> None:
        """Another attempt for ``p`` after a timeout or a lost worker."""
        old = p.target.node if p.target is not None else None
        if old is not None and old not in p.tried:
            p.tried += (old,)  # its result may still come, and counts (the first one wins)
        self._release(p)
        st = p.stats
        if p.attempts <= 0:
            if why == "timeout":
                self._finish_exc(p, TaskTimeout(
                    f"task {p.ttype!r} got no result within {p.timeout}s (attempts exhausted)"))
            else:
                self._finish_exc(p, TaskError("WorkerLost", f"node {old} {why}; no retries left",
                                              task_type=p.ttype, node_id=old))
            return
        p.attempts -= 1
        st.retried += 1
        p.deadline = _perf() + p.timeout
        if why != "timeout" and old is not None and p.pinned == old:
            self._finish_exc(p, TaskError("WorkerLost", f"node {old} {why}", task_type=p.ttype, node_id=old))
            return
        self._dispatch(p, (old,) if old is not None else ())

    # -- worker side -----------------------------------------------------------------

    def _run(self, src: str, tid: Any, ttype: str, payload: Any) -> None:
        o = self._offers.get(ttype)
        if o is None:
            self._reply(src, tid, REFUSED, None)
            return
        if o.by_src and o.by_src.get(src, 0) >= o.per_source():
            self._busy(src, tid, o, ttype)
            return
        if o.is_async:
            o.by_src[src] = o.by_src.get(src, 0) + 1
            if o.running < o.capacity:
                o.running += 1
                self._spawn_worker(o, ttype, src, tid, payload)
            else:
                o.push(src, tid, payload)
            return
        t0 = _perf()
        try:
            r = o.handler(payload)
        except Exception as exc:
            o.failed += 1
            self._reply(src, tid, FAILED, [type(exc).__name__, str(exc)])
            return
        if r.__class__ not in _PLAIN and inspect.isawaitable(r):  # a plain function returning an awaitable
            o.by_src[src] = o.by_src.get(src, 0) + 1
            o.running += 1
            self._spawn_worker(o, ttype, src, tid, None, r)
            return
        o.done += 1
        o.latency.append(_perf() - t0)
        self._reply(src, tid, OK, r)

    def _busy(self, src: str, tid: Any, o: _Offer, ttype: str) -> None:
        """``src`` already has ``o.per_source()`` tasks here: this one is refused at once
        with a ``WorkerBusy`` failure (the submitter's TaskError), and counted."""
        self._busy_refused += 1
        self._warn(("busy", src), logging.WARNING, "node %s sent more %r tasks than it may have queued here "
                   "(%d): refused with %s", src, ttype, o.per_source(), BUSY)
        if src != self.mesh.node_id:
            buf = self._results.get(src)
            if buf is not None and len(buf[2]) >= MAX_BUSY_REPLIES:
                return  # a flood that does not take its replies: no more are buffered for it
        if o.busy is None or o.busy_cap != o.capacity:  # one shared (never changed) value per offer
            o.busy_cap = o.capacity
            o.busy = [BUSY, f"node {self.mesh.node_id} already holds {o.per_source()} {ttype!r} tasks of yours "
                            f"(capacity {o.capacity})"]
        self._reply(src, tid, FAILED, o.busy)

    def _spawn_worker(self, o: _Offer, ttype: str, src: str, tid: Any, payload: Any, aw: Any = None) -> None:
        task = asyncio.ensure_future(self._work(o, ttype, src, tid, payload, aw))
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self, o: _Offer, ttype: str, src: str, tid: Any, payload: Any, aw: Any) -> None:
        """One of an offer's ``capacity`` slots: runs tasks until its queue is empty."""
        try:
            while True:
                t0 = _perf()
                try:
                    r = aw if aw is not None else o.handler(payload)
                    if inspect.isawaitable(r):  # (a handler re-registered as plain runs too)
                        r = await r
                    status = OK
                    o.done += 1
                    o.latency.append(_perf() - t0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    status, r = FAILED, [type(exc).__name__, str(exc)]
                    o.failed += 1
                aw = None
                n = o.by_src.get(src, 1) - 1
                if n > 0:
                    o.by_src[src] = n
                else:
                    o.by_src.pop(src, None)
                self._reply(src, tid, status, r)
                if not o.queued:
                    break
                src, tid, payload = o.pop()
        finally:
            o.running -= 1

    def _reply(self, src: str, tid: Any, status: int, value: Any) -> None:
        if src == self.mesh.node_id:
            self._accept(src, tid, status, value)
            return
        buf = self._results.get(src)
        if buf is None:
            buf = self._results[src] = ([], [], [])
            self._wake.set()
        if status == OK:
            buf[0].append(tid)
            buf[1].append(value)
        else:
            buf[2].append([tid, status, value])

    def _load_for(self, src: str) -> dict[str, list[int]]:
        return {k: [o.capacity, o.load, o.by_src.get(src, 0)] for k, o in self._offers.items()}

    def _advert(self) -> dict[str, list[int]]:
        return {k: [o.capacity, o.load] for k, o in self._offers.items()}

    def _served(self) -> dict[str, list[Any]]:
        """Per offered type: ``[done, failed, p50_ms, p99_ms]`` (what peers show for us)."""
        out: dict[str, list[Any]] = {}
        for k, o in self._offers.items():
            p50, p99 = _percentiles(o.latency)
            out[k] = [o.done, o.failed, p50, p99]
        return out

    def _advert_key(self) -> Any:
        return [(k, o.capacity, o.load, o.done, o.failed) for k, o in self._offers.items()]

    # -- receiving -------------------------------------------------------------------

    def _on_task_env(self, env: dict[str, Any]) -> None:
        src = env.get("source_node")
        data = env.get("data")
        try:
            ttype, ids, payloads = data  # type: ignore[misc]
            if not isinstance(src, str) or not isinstance(ttype, str) or len(ids) != len(payloads) \
                    or src == self.mesh.node_id:
                raise ValueError(data)
        except (TypeError, ValueError):
            log.warning("malformed task batch from %s", src)
            return
        o = self._offers.get(ttype)
        if o is None or o.is_async:
            for tid, payload in zip(ids, payloads, strict=True):
                self._run(src, tid, ttype, payload)
            return
        out = None
        by_src = o.by_src
        for tid, payload in zip(ids, payloads, strict=True):
            if by_src and by_src.get(src, 0) >= o.per_source():  # awaitables it left running here
                self._busy(src, tid, o, ttype)
                continue
            # a plain handler: run it now (the common, fast case inlined)
            sample = not o.done & 15
            if sample:
                t0 = _perf()
            try:
                r = o.handler(payload)
            except Exception as exc:
                o.failed += 1
                self._reply(src, tid, FAILED, [type(exc).__name__, str(exc)])
                continue
            if r.__class__ not in _PLAIN and inspect.isawaitable(r):
                o.by_src[src] = o.by_src.get(src, 0) + 1
                o.running += 1
                self._spawn_worker(o, ttype, src, tid, None, r)
                continue
            if sample:
                o.latency.append(_perf() - t0)
            o.done += 1
            if out is None:
                out = self._results.get(src)
                if out is None:
                    out = self._results[src] = ([], [], [])
                    self._wake.set()
            out[0].append(tid)
            out[1].append(r)

    def _on_result_env(self, env: dict[str, Any]) -> None:
        src = env.get("source_node")
        data = env.get("data")
        if not isinstance(src, str) or not isinstance(data, dict):
            return
        loads = data.get("l")
        if isinstance(loads, dict) and self._types_ok(src, loads):
            for ttype, v in loads.items():
                try:
                    cap, load, yours = int(v[0]), int(v[1]), int(v[2])
                except (TypeError, ValueError, IndexError):
                    continue
                self._update_target(src, ttype, cap, max(0, load - yours))
        pending = self._pending
        now = _perf()
        freed = False
        for item in data.get("x") or ():  # failures and refusals
            try:
                tid, status, value = item
            except (TypeError, ValueError):
                continue
            self._accept(src, tid, status, value)
        ids = data.get("i") or ()
        values = data.get("v") or ()
        try:
            if len(ids) != len(values):
                return
        except TypeError:
            return
        get = pending.get
        late = 0
        for tid, value in zip(ids, values, strict=True):
            if tid.__class__ is not bytes:
                self._results_refused += 1
                continue
            p = get(tid)
            if p is None:
                late += 1  # its task already finished: a retry won, or it timed out
                continue
            # (_accept's success path, inlined; also right for a result from an earlier
            # attempt's node: the first result wins and the current attempt is released)
            t = p.target
            if t is not None and t.node == src:
                p.target = None
                t.mine -= 1
                freed = True
            elif src in p.tried:
                if t is not None:
                    p.target = None
                    t.mine -= 1
                    freed = True
            else:  # a node this task was never sent to
                self._refuse_result(src, p)
                continue
            del pending[tid]
            st = p.stats
            st.done += 1
            st.latency.append(now - p.t0)
            p.state = 1
            p.value = value
            fut = p.fut
            if fut is not None and not fut.done():
                fut.set_result(None)
        if late:
            self._late += late
        if freed and self._waiting:
            self._schedule_drain()

    def _types_ok(self, src: str, types: dict[Any, Any]) -> bool:
        """A message listing task types (a load advert, a result's loads): refused whole
        (counted) when it lists more than a node may offer."""
        if len(types) <= MAX_TASK_TYPES:
            return True
        self._types_refused += 1
        self._warn(("types", src), logging.WARNING, "refused a task-load message from %s listing %d task types "
                   "(at most %d)", src, len(types), MAX_TASK_TYPES)
        return False

    def _on_load_env(self, env: dict[str, Any]) -> None:
        src = env.get("source_node")
        data = env.get("data")
        if not isinstance(src, str) or src == self.mesh.node_id or not isinstance(data, dict):
            return
        offers = data.get("o")
        if not isinstance(offers, dict) or not self._types_ok(src, offers):
            return
        if data.get("ask"):
            self._hello.setdefault(src, False)
            self._wake.set()
        for ttype in [k for k in self._node_types.get(src, ()) if k not in offers]:
            self._drop_target(src, ttype)
        named: list[str] = []
        for ttype, v in offers.items():
            try:
                cap, load = int(v[0]), int(v[1])
            except (TypeError, ValueError, IndexError):
                continue
            t = self._update_target(src, ttype, cap, None)
            if t is not None:
                t.others = max(0, load - t.mine)
                named.append(ttype)
        served = data.get("s")
        if isinstance(served, dict) and len(served) <= MAX_TASK_TYPES:
            self._peer_stats[src] = {k: v for k, v in served.items()
                                     if k in offers and isinstance(v, list) and len(v) >= 4}
        node = self.mesh.nodes.get(src)
        if node is not None and named:  # capabilities of a node the core knew before it offered
            have = set(node.capabilities)
            new = [k for k in named if k not in have]
            if new:
                node.capabilities.extend(new)
                self.mesh.registry.register_node(node)  # re-indexed (and bounded) by the registry
        if self._waiting:
            self._schedule_drain()

    def _add_target(self, node: str, ttype: Any, cap: int, advertised: bool = True) -> _Target | None:
        """The target (node, ttype), made if new; None (counted) for a bad name, or a
        node that already has MAX_TASK_TYPES of them."""
        tmap = self._targets.get(ttype) if ttype.__class__ is str else None
        t = tmap.get(node) if tmap is not None else None
        if t is not None:
            return t
        if ttype.__class__ is not str or not ttype or len(ttype) > MAX_TYPE_NAME:
            self._types_refused += 1
            return None
        types = self._node_types.get(node)
        if types is None:
            types = self._node_types[node] = set()
        if len(types) >= MAX_TASK_TYPES:
            self._types_refused += 1
            return None
        if tmap is None:
            tmap = self._targets[ttype] = {}
        t = tmap[node] = _Target(node, cap, advertised=advertised)
        types.add(ttype)
        self._refresh(ttype)
        return t

    def _update_target(self, node: str, ttype: Any, cap: int, others: int | None) -> _Target | None:
        tmap = self._targets.get(ttype) if ttype.__class__ is str else None
        t = tmap.get(node) if tmap is not None else None
        if t is None:
            t = self._add_target(node, ttype, cap)
            if t is None:
                return None
            self._refused.discard((node, ttype))
        t.capacity = max(1, cap)
        t.advertised = True
        t.seen = time.monotonic()
        if others is not None:
            t.others = others
        return t

    def _drop_target(self, node: str, ttype: str, refused: bool = False) -> None:
        tmap = self._targets.get(ttype)
        if tmap is not None and tmap.pop(node, None) is not None:
            self._refresh(ttype)
        types = self._node_types.get(node)
        if types is not None:
            types.discard(ttype)
            if not types:
                del self._node_types[node]
        if refused:
            self._refused.add((node, ttype))

    def node_joined(self, nid: str) -> None:
        """The local membership admitted ``nid`` (``NodeHost.apply``): it gets our offers."""
        if self._started and nid != self.mesh.node_id and self._offers:
            self._hello.setdefault(nid, False)
            self._wake.set()

    def node_removed(self, nid: str, reason: str) -> None:
        """The local membership removed ``nid`` (it left, or failure detection decided:
        ``NodeHost.apply``).  The only way a worker is lost besides its link dropping: a
        ``node_unregister`` event from another node never is."""
        if self._started and nid != self.mesh.node_id:
            self._node_lost(nid, f"was removed ({reason})")

    def _node_lost(self, nid: str, why: str) -> None:
        self._peer_stats.pop(nid, None)
        for ttype in list(self._node_types.get(nid, ())):
            self._drop_target(nid, ttype)
        self._refused = {r for r in self._refused if r[0] != nid}
        lost = [p for p in self._pending.values() if p.target is not None and p.target.node == nid]
        if lost:
            log.info("node %s %s: %d task(s) go elsewhere", nid, why, len(lost))
        for p in lost:
            self._retry(p, why)
        for offer in self._offers.values():  # its queued tasks here have nobody to reply to
            if offer.queued:
                left = offer.by_src.get(nid, 0) - offer.forget(nid)  # still running for it
                if left > 0:
                    offer.by_src[nid] = left
                else:
                    offer.by_src.pop(nid, None)

    # -- sending ---------------------------------------------------------------------

    async def _outbox(self) -> None:
        """Sends what one loop iteration produced: one event per node and kind."""
        mesh = self.mesh
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            if self._results:
                results, self._results = self._results, {}
                for node, (ids, values, errs) in results.items():
                    if node in mesh.nodes:
                        await self._send_results(node, ids, values, errs)
            if self._out:
                out, self._out = self._out, {}
                for node, groups in out.items():
                    for ttype, (ids, payloads) in groups.items():
                        if node in mesh.nodes:
                            await self._send_tasks(node, ttype, ids, payloads)
                        else:
                            self._unsent(node, ids, "is not in the mesh")
            if self._advert_now:
                self._advert_now = False
                await self._broadcast_advert()
            if self._hello:
                hello, self._hello = self._hello, {}
                for node, ask in hello.items():
                    if node in mesh.nodes:
                        msg: dict[str, Any] = {"o": self._advert(), "s": self._served()}
                        if ask:
                            msg["ask"] = 1
                        await mesh.send_to_node(node, LOAD_EVENT, msg)

    def _unsent(self, node: str, ids: list[Any], why: str) -> None:
        for tid in ids:
            p = self._pending.get(tid)
            if p is not None and p.target is not None and p.target.node == node:
                self._retry(p, why)

    async def _send_tasks(self, node: str, ttype: str, ids: list[Any], payloads: list[Any]) -> None:
        """``[task type, ids, payloads]`` events, at most MAX_BATCH tasks each."""
        for i in range(0, len(ids), MAX_BATCH):
            cids, cpay = ids[i : i + MAX_BATCH], payloads[i : i + MAX_BATCH]
            try:
                ok = await self.mesh.send_to_node(node, TASK_EVENT, [ttype, cids, cpay])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an unencodable payload, or a batch too large
                if len(cids) > 1:
                    for tid, pl in zip(cids, cpay, strict=True):
                        await self._send_tasks(node, ttype, [tid], [pl])
                else:
                    p = self._pending.get(cids[0])
                    if p is not None:
                        self._finish_exc(p, TaskError(type(exc).__name__, f"payload not sendable: {exc}",
                                                      task_type=ttype))
                continue
            if not ok:
                self._unsent(node, cids, "is unreachable")

    async def _send_results(self, node: str, ids: list[Any], values: list[Any], errs: list[list[Any]]) -> None:
        """``{"i": ids, "v": values, "x": failures, "l": load}`` events, at most
        MAX_BATCH results each; a result that cannot be sent becomes a failure."""
        loads = self._load_for(node)
        for i in range(0, max(len(ids), 1), MAX_BATCH):
            cids, cval = ids[i : i + MAX_BATCH], values[i : i + MAX_BATCH]
            data: dict[str, Any] = {"i": cids, "v": cval, "l": loads}
            if errs and i == 0:
                data["x"] = errs
            try:
                await self.mesh.send_to_node(node, RESULT_EVENT, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an unencodable result, or a batch too large
                if len(cids) + (len(errs) if i == 0 else 0) > 1:
                    if i == 0:
                        for e in errs:
                            await self._send_results(node, [], [], [e])
                    for tid, v in zip(cids, cval, strict=True):
                        await self._send_results(node, [tid], [v], [])
                elif cids:
                    err = [type(exc).__name__, f"result not sendable: {exc}"]
                    await self._send_results(node, [], [], [[cids[0], FAILED, err]])
                else:
                    log.error("task failure report for %s not sendable: %s", node, exc)

    def _publish_meta(self) -> None:
        """Offers and load in the local node's metadata, which travels in handshakes
        and in the gossip sent with every heartbeat."""
        adv = self._advert()
        md = self.mesh.local_node.metadata
        if md.get("tasks") != adv:
            md["tasks"] = adv  # a new dict each time: records already sent keep theirs

    def _read_meta(self, now: float, hb: float) -> None:
        """Offers and load from peers' metadata (as gossip refreshed it): new targets,
        and the load of targets that sent no events for two heartbeat intervals."""
        me = self.mesh.node_id
        changed = False
        for nid, node in list(self.mesh.nodes.items()):
            md = node.metadata
            offers = md.get("tasks") if isinstance(md, dict) else None
            if nid == me or nid in self._down or not isinstance(offers, dict) or not self._types_ok(nid, offers):
                continue
            for ttype in offers:
                cap, load = _meta_offer(md, ttype)
                if cap is None or load is None or (nid, ttype) in self._refused:
                    continue
                t = self._targets.get(ttype, {}).get(nid) if ttype.__class__ is str else None
                if t is None:
                    t = self._update_target(nid, ttype, cap, None)
                    if t is None:
                        continue
                    t.seen = 0.0
                elif now - t.seen < 2 * hb:
                    continue  # its own events (a load advert at least every hb) are fresher
                t.capacity = max(1, cap)
                t.others = max(0, load - t.mine)
                t.advertised = True
                changed = True
        if changed and self._waiting:
            self._schedule_drain()

    async def _broadcast_advert(self) -> None:
        adv = self._advert()
        self._last_advert = self._advert_key()
        self._last_advert_t = time.monotonic()
        await self.mesh.broadcast_event(LOAD_EVENT, {"o": adv, "s": self._served()})

    # -- housekeeping ----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        hb = float(self.mesh.config.heartbeat_interval)
        tick = max(MIN_TICK, min(hb / 8, MAX_TICK))
        while True:
            await asyncio.sleep(tick)
            try:
                self._check_timeouts()
                self._check_links()
                now = time.monotonic()
                if self._offers:
                    self._publish_meta()
                    since = now - self._last_advert_t
                    if since >= hb or (since >= hb / 4 and self._advert_key() != self._last_advert):
                        await self._broadcast_advert()
                if now - self._meta_t >= hb:
                    self._meta_t = now
                    self._read_meta(now, hb)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task housekeeping failed")

    def _check_timeouts(self) -> None:
        if not self._pending:
            return
        now = _perf()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            if self._pending.get(p.tid) is not p:
                continue
            if p.target is None:  # still waiting for room: counts as an attempt
                if p.attempts <= 0:
                    self._finish_exc(p, TaskTimeout(f"task {p.ttype!r}: no node had room within {p.timeout}s"))
                else:
                    p.attempts -= 1
                    p.deadline = now + p.timeout
                continue
            self._retry(p, "timeout")

    def _check_links(self) -> None:
        """Tasks at a node whose direct link just dropped go elsewhere at once (the
        node itself goes when failure detection removes it)."""
        now = self._link_peers()
        if now is None:
            return
        gone = self._linked - now
        new = now - self._linked
        self._linked = now
        for nid in gone:  # not chosen until its link is back and it advertised again
            if nid in self.mesh.nodes:
                self._down.add(nid)
                self._node_lost(nid, "lost its link")
        for nid in new:  # (re)connected: ask for its offers (a reconnect sends no node_register)
            self._down.discard(nid)
            self._hello[nid] = True
            self._wake.set()
        if self._down:
            self._down &= set(self.mesh.nodes)

    def _link_peers(self) -> set[str] | None:
        """Node ids this node has an open direct link to, or None when that cannot be
        told.  (The core has no link up/down notification; see the module docstring.)"""
        mesh = self.mesh
        try:
            info = getattr(mesh, "link_info", None)
            if info is not None:
                links = info()
            else:
                from . import observe

                fn = getattr(observe, "link_info", None)
                if fn is None:
                    return None
                links = fn(mesh)
            return {x["peer"] for x in links if x.get("peer") and x.get("state") != "closed"}
        except Exception:
            return None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Called by ``MeshCore.start()`` once the links are up."""
        if self._started:
            return
        # (Membership comes from the node itself: node_joined / node_removed.)
        handlers = {TASK_EVENT: self._on_task_env, RESULT_EVENT: self._on_result_env, LOAD_EVENT: self._on_load_env}
        for etype, h in handlers.items():
            if h not in self.mesh.event_handlers.get(etype, ()):
                self.mesh.register_event_handler(etype, h)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._loop_tasks = [asyncio.ensure_future(self._outbox()), asyncio.ensure_future(self._housekeeping())]
        me = self.mesh.node_id
        if self._offers:
            ln = self.mesh.local_node
            for k in self._offers:
                if k not in ln.capabilities:
                    ln.capabilities.append(k)
            self.mesh.registry.register_node(ln)
            self._advert_now = True
            self._wake.set()
        for k, o in self._offers.items():
            self._targets.setdefault(k, {}).setdefault(me, _Target(me, o.capacity, o))
            self._node_types.setdefault(me, set()).add(k)
            self._refresh(k)

    async def stop(self) -> None:
        """Called by ``MeshCore.stop()`` before the links close: fails what this node
        still waits for and cancels the handlers running here."""
        if not self._started:
            return
        self._started = False
        for t in self._loop_tasks:
            t.cancel()
        workers = list(self._workers)
        for t in workers:
            t.cancel()
        await asyncio.gather(*self._loop_tasks, *workers, return_exceptions=True)
        self._loop_tasks = []
        for p in list(self._pending.values()):
            self._finish_exc(p, TaskError("MeshStopped", "the mesh node stopped", task_type=p.ttype))
        self._waiting.clear()
        self._out.clear()
        self._results.clear()
        self._hello.clear()
        me = self.mesh.node_id
        for k in list(self._targets):
            mine = self._targets[k].get(me)
            self._targets[k] = {me: mine} if mine is not None else {}
            self._refresh(k)
        self._node_types = {me: set(self._offers)} if self._offers else {}
        self._refused.clear()
        self._linked.clear()
        self._down.clear()
        for o in self._offers.values():
            o.clear()
            o.by_src.clear()

    # -- observer queries (``mesh tasks``, ``mesh submit``) ---------------------------

    def answer_submit(self, args: dict[str, Any], reply: Callable[..., None]) -> None:
        """Run one task for an observer (``spiralfast mesh submit``) and ``reply(ok, data)``:
        ``{"result", "task_type", "elapsed_ms"}``, or a one-line reason.

        :raises ValueError: for a missing type or a bad timeout (the caller refuses the query).
        """
        ttype = args.get("type")
        if not isinstance(ttype, str) or not ttype:
            raise ValueError("task type must be a non-empty string")
        timeout = float(args.get("timeout_s") or args.get("timeout") or 30.0)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        payload = args.get("payload")

        async def run() -> None:
            t0 = _perf()
            try:
                result = await self.submit(ttype, payload, timeout=timeout)
            except TaskError as exc:
                reply(False, f"task failed on node {exc.node_id or '?'}: {exc}")
            except (NoNodeForTask, TaskTimeout) as exc:
                reply(False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                reply(False, f"{type(exc).__name__}: {exc}")
            else:
                try:
                    reply(True, {"result": result, "task_type": ttype, "elapsed_ms": round((_perf() - t0) * 1000, 3)})
                except Exception as exc:  # a local handler's result that cannot be encoded
                    reply(False, f"result not sendable: {exc}")

        task = asyncio.ensure_future(run())
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``get_mesh_status()["tasks"]`` shows.

        ``offered``: per task type this node serves: ``capacity``, ``running``,
        ``queued``, ``done``, ``failed``, ``p50_ms``/``p99_ms`` (handler time, sampled).
        ``submitted``: per task type this node submitted: ``submitted``, ``in_flight``
        (at a node), ``waiting`` (for room), ``done``, ``failed`` (errors other than
        timeouts), ``timeouts`` (ended with ``TaskTimeout``), ``retried`` (attempts sent
        again), ``p50_ms``/``p99_ms`` (submit to result).  ``nodes``: node id -> task
        type -> ``capacity``, ``load`` (as last advertised plus this node's own tasks),
        ``in_flight`` (this node's tasks there), ``advertised``, and what that node ran:
        ``done``, ``failed``, ``p50_ms``/``p99_ms`` (as it last advertised, at most
        ``heartbeat_interval / 4`` old while it changes).  ``late_replies``:
        results that came after their task had already finished (dropped).
        ``results_refused``: results from a node the task was not sent to (or with a
        malformed id), refused.  ``types_refused``: task-load or result messages
        listing more than MAX_TASK_TYPES types, and type names refused.
        ``busy_refused``: tasks this node refused as a worker because their submitter
        already had its bound here (answered with ``WorkerBusy``).
        """
        offered = {}
        for k, o in self._offers.items():
            p50, p99 = _percentiles(o.latency)
            offered[k] = {"capacity": o.capacity, "running": o.running, "queued": o.queued,
                          "done": o.done, "failed": o.failed, "p50_ms": p50, "p99_ms": p99}
        in_flight: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for p in self._pending.values():
            if p.target is None:
                waiting[p.ttype] = waiting.get(p.ttype, 0) + 1
            else:
                in_flight[p.ttype] = in_flight.get(p.ttype, 0) + 1
        submitted = {}
        for k, st in self._stats.items():
            p50, p99 = _percentiles(st.latency)
            submitted[k] = {"submitted": st.submitted, "in_flight": in_flight.get(k, 0), "waiting": waiting.get(k, 0),
                            "done": st.done, "failed": st.failed, "retried": st.retried, "timeouts": st.timeouts,
                            "p50_ms": p50, "p99_ms": p99}
        nodes: dict[str, dict[str, Any]] = {}
        served = self._served()
        for k, tmap in self._targets.items():
            for nid, t in tmap.items():
                row = nodes.setdefault(nid, {})[k] = {"capacity": t.capacity, "load": t.load(), "in_flight": t.mine,
                                                      "advertised": t.advertised}
                v = served.get(k) if t.offer is not None else self._peer_stats.get(nid, {}).get(k)
                if v is not None:  # what that node ran, as it last advertised
                    row.update(done=v[0], failed=v[1], p50_ms=v[2], p99_ms=v[3])
        return {"offered": offered, "submitted": submitted, "nodes": nodes, "late_replies": self._late,
                "results_refused": self._results_refused, "types_refused": self._types_refused,
                "busy_refused": self._busy_refused}
