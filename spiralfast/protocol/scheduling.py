"""Task scheduling rules, sans-I/O: who runs a task, when it goes elsewhere, what a
worker accepts.

The asyncio shell (:mod:`spiralfast.tasks`) holds the state this module reasons
about and asks it for decisions; nothing here reads a clock, draws randomness of its
own or touches a socket.  Times are ``now: float`` arguments (any monotonic clock, in
seconds), randomness is a ``rand() -> float in [0, 1)`` function passed in (for
example ``random.Random(seed).random``), and decisions are enums.

Choosing a node (:func:`choose`): power of two choices over the nodes serving the
type, by load / capacity (the submitter's own in-flight count plus the others'
advertised share); a node at capacity is not chosen while another has room, and when
every node is full the task waits until one has room.

Failover (:func:`retry_action`, :func:`expiry_action`): a task whose worker is lost or
whose attempt times out is sent to another node (the same one if it is the only one),
at most ``retries`` times; a task pinned to a node that is lost fails at once.  A task
still waiting for room when its timeout ends uses up an attempt too.

Trust and bounds: a node offers at most :data:`MAX_TASK_TYPES` task types with names
of at most :data:`MAX_TYPE_NAME` characters (a message listing more is refused whole);
a result is accepted only from a node the task was sent to
(:func:`result_source_ok`); a worker holds at most :func:`per_source_bound` tasks of
one type per submitter, and serves the submitters' waiting tasks in turns
(:class:`WorkerLoad`).

Load adverts (:func:`advert_timing`): at most every ``heartbeat / 4`` while the load
changes, at least every heartbeat while the node offers anything; a target's load
read from gossip metadata only when its own events are two heartbeats old
(:func:`meta_stale`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: Capacity assumed for a node that lists a task type as a capability but whose load
#: advertisement has not arrived yet.
DEFAULT_CAPACITY = 64
#: Shortest period of the housekeeping tick (timeouts, link checks, load adverts).
MIN_TICK = 0.01
#: Longest period of the housekeeping tick; also the timeout precision.
MAX_TICK = 0.05
#: Latency samples kept per task type for p50/p99.
LATENCY_SAMPLES = 4096
#: Task types one node may offer, and the longest name: the registry's capability
#: bounds (``spiralfast.node.registry.MAX_CAPABILITIES`` / ``MAX_CAPABILITY_NAME``;
#: a test keeps them equal).  A load or result message listing more types is refused.
MAX_TASK_TYPES = 1024
MAX_TYPE_NAME = 256
#: A worker holds at most ``max(capacity * QUEUE_FACTOR, QUEUE_FLOOR)`` tasks of one
#: type per submitter (running and queued); more are refused with ``WorkerBusy``.
QUEUE_FACTOR = 4
QUEUE_FLOOR = 256

Rand = Callable[[], float]


def per_source_bound(capacity: int) -> int:
    """Tasks one submitter may have at a worker at once (running and queued)."""
    return max(capacity * QUEUE_FACTOR, QUEUE_FLOOR)


class WorkerLoad:
    """A worker's accounting for one task type it serves: capacity, what runs, the
    waiting tasks per submitter (served in turns: one submitter's backlog never stands
    in front of another's next task), per-submitter counts and what it ran."""

    __slots__ = ("capacity", "running", "queues", "turns", "queued", "by_src", "done", "failed", "latency")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.queues: dict[str, deque[tuple[object, object]]] = {}
        self.turns: deque[str] = deque()  # submitters with waiting tasks, next first
        self.queued = 0
        self.by_src: dict[str, int] = {}  # submitter -> its tasks here (running and queued)
        self.done = 0
        self.failed = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    @property
    def load(self) -> int:
        return self.running + self.queued

    def per_source(self) -> int:
        """Tasks one submitter may have here at once (running and queued)."""
        return max(self.capacity * QUEUE_FACTOR, QUEUE_FLOOR)

    def admits(self, src: str) -> bool:
        """Whether ``src`` is still below its bound here."""
        return not self.by_src or self.by_src.get(src, 0) < self.per_source()

    def push(self, src: str, tid: object, payload: object) -> None:
        q = self.queues.get(src)
        if q is None:
            q = self.queues[src] = deque()
            self.turns.append(src)
        q.append((tid, payload))
        self.queued += 1

    def pop(self) -> tuple[str, object, object]:
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

    def forget_source(self, src: str) -> None:
        """``src`` is gone: its waiting tasks are dropped, and only what still runs for
        it stays counted."""
        if not self.queued:
            return
        left = self.by_src.get(src, 0) - self.forget(src)
        if left > 0:
            self.by_src[src] = left
        else:
            self.by_src.pop(src, None)

    def release(self, src: str) -> None:
        """One of ``src``'s tasks here finished."""
        n = self.by_src.get(src, 1) - 1
        if n > 0:
            self.by_src[src] = n
        else:
            self.by_src.pop(src, None)

    def clear(self) -> None:
        self.queues.clear()
        self.turns.clear()
        self.queued = 0


class Target:
    """A (node, task type) pair a submitter may send tasks to, with what it knows of
    the node's load."""

    __slots__ = ("node", "capacity", "others", "mine", "offer", "advertised", "seen")

    def __init__(self, node: str, capacity: int, offer: WorkerLoad | None = None, advertised: bool = True) -> None:
        self.node = node
        self.capacity = max(1, capacity)
        self.others = 0  # load from other submitters, as last advertised
        self.mine = 0  # this submitter's tasks in flight there
        self.offer = offer  # set for the local node: its load is known exactly
        self.advertised = advertised  # False: only known from capabilities
        self.seen = 0.0  # time of the last load from the node's own events

    def load(self) -> int:
        o = self.offer
        return o.load if o is not None else self.mine + self.others


def choose(cands: Sequence[Target] | None, pinned: str | None, exclude: tuple[str, ...],
           rand: Rand) -> Target | None:
    """The target to run a task on, or None when every candidate is full (or there is
    none).  ``pinned``: that node only; ``exclude``: nodes of earlier attempts, avoided
    unless they are the only ones."""
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
    elif n == 0:  # pinned to a node that no longer serves the type
        return None
    else:
        i = int(rand() * n)
        j = int(rand() * (n - 1))
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


def has_room(t: Target) -> bool:
    """Whether a remote target takes one more task from this submitter."""
    return t.mine + t.others < t.capacity


class RetryAction(Enum):
    """What happens to a task whose attempt timed out or whose worker was lost."""

    RESEND = "resend"  # another attempt (elsewhere when possible)
    TIMED_OUT = "timed_out"  # no attempts left after a timeout: TaskTimeout
    LOST = "lost"  # no attempts left after a lost worker: WorkerLost
    LOST_PINNED = "lost_pinned"  # the only node it may run on is lost: WorkerLost (an attempt used)


def retry_action(attempts_left: int, timed_out: bool, old: str | None, pinned: str | None) -> RetryAction:
    """The decision for a task whose attempt at ``old`` ended without a result."""
    if attempts_left <= 0:
        return RetryAction.TIMED_OUT if timed_out else RetryAction.LOST
    if not timed_out and old is not None and pinned == old:
        return RetryAction.LOST_PINNED
    return RetryAction.RESEND


class Expiry(Enum):
    """What happens to a task whose deadline passed."""

    RETRY = "retry"  # it was at a node: another attempt (see retry_action)
    WAIT_AGAIN = "wait_again"  # it waited for room: one attempt used, waits on
    GIVE_UP = "give_up"  # it waited for room with no attempts left: TaskTimeout


def expiry_action(at_node: bool, attempts_left: int) -> Expiry:
    """The decision for a task whose deadline passed (``at_node``: it was sent)."""
    if at_node:
        return Expiry.RETRY
    return Expiry.GIVE_UP if attempts_left <= 0 else Expiry.WAIT_AGAIN


def result_source_ok(target_node: str | None, tried: tuple[str, ...], src: str) -> bool:
    """A result counts only from the node the task is at or a node of an earlier
    attempt (the first result wins); from anyone else it is refused."""
    return target_node == src or src in tried


def types_within_bound(count: int) -> bool:
    """A message listing ``count`` task types is within what a node may offer."""
    return count <= MAX_TASK_TYPES


def valid_type_name(name: object) -> bool:
    """A task type name: a string of 1..MAX_TYPE_NAME characters."""
    return name.__class__ is str and isinstance(name, str) and 0 < len(name) <= MAX_TYPE_NAME


def meta_offer(md: Mapping[str, Any], ttype: str) -> tuple[int | None, int | None]:
    """(capacity, load) of ``ttype`` in a node's metadata (``{"tasks": {type: [capacity,
    load]}}``), or Nones."""
    try:
        v = md["tasks"][ttype]
        return int(v[0]), int(v[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None, None


def check_limits(timeout: object, retries: object) -> None:
    """A clear error for a timeout or retries of the wrong type or range.

    :raises ValueError: a timeout that is not a positive number, or retries that are
        not an integer >= 0.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")


def percentiles(samples: Iterable[float]) -> tuple[float | None, float | None]:
    """p50 and p99 of ``samples`` (seconds) in milliseconds, or Nones."""
    s = sorted(samples)
    if not s:
        return None, None
    return round(s[len(s) // 2] * 1000, 3), round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3)


def tick_period(heartbeat: float) -> float:
    """The housekeeping period for a heartbeat interval."""
    return max(MIN_TICK, min(heartbeat / 8, MAX_TICK))


class Advert(Enum):
    """Whether a load advert goes out now."""

    NOT_YET = "not_yet"
    IF_CHANGED = "if_changed"  # a quarter heartbeat since the last: only if the load changed
    DUE = "due"  # a heartbeat since the last: always


def advert_timing(now: float, last: float, heartbeat: float) -> Advert:
    since = now - last
    if since >= heartbeat:
        return Advert.DUE
    if since >= heartbeat / 4:
        return Advert.IF_CHANGED
    return Advert.NOT_YET


def meta_stale(now: float, seen: float, heartbeat: float) -> bool:
    """Whether a target's load from its own events (``seen``) is old enough for the
    gossip metadata's to replace it (two heartbeat intervals)."""
    return now - seen >= 2 * heartbeat


@dataclass(frozen=True, slots=True)
class LinkChanges:
    """Peers whose direct link dropped, and peers newly linked."""

    gone: frozenset[str]
    new: frozenset[str]


def link_changes(before: set[str], now: set[str]) -> LinkChanges:
    return LinkChanges(frozenset(before - now), frozenset(now - before))


class SubmitStats:
    """What a node submitted, per task type: ``done`` (a result), ``failed`` (an error
    other than a timeout), ``timeouts`` (ended with ``TaskTimeout``), ``retried``
    (attempts sent again after a timeout, a lost worker or a dropped link)."""

    __slots__ = ("submitted", "done", "failed", "retried", "timeouts", "latency")

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.retried = 0
        self.timeouts = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
