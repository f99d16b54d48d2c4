"""The task manager's state: what a node serves (:class:`Offer`), what it submitted
(:class:`Pending`), and :class:`TaskState`, the fields the manager's parts (worker,
peers, scheduler, loops) share.

The parts are mixins over one object so the hot paths (a task batch in, a result
batch in, a submit) keep plain attribute access; each part's module says what it does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from .._log import RateLimitedLog
from ..ports.tasks import TaskPort
from ..protocol.scheduling import Rand, SubmitStats, Target, WorkerLoad
from .wire import TaskIds

log = logging.getLogger("spiralfast.tasks")

#: A task handler: ``handler(payload) -> result`` (plain, or returning an awaitable).
Handler = Callable[[Any], Any]


class Offer(WorkerLoad):
    """A task type this node serves: the handler, and the worker's accounting."""

    __slots__ = ("handler", "is_async", "busy", "busy_cap")

    def __init__(self, handler: Handler, capacity: int) -> None:
        super().__init__(capacity)
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.busy: list[Any] | None = None  # the WorkerBusy failure value (shared by every refusal)
        self.busy_cap = 0


class Pending:
    """One submitted task until its result reaches the caller.

    ``state`` is 0 while it runs, 1 once ``value`` holds its result, 2 once ``value``
    holds its exception.  ``fut`` exists only while someone awaits it (``map`` keeps
    finished tasks without a future until their turn).
    """

    __slots__ = ("tid", "ttype", "payload", "fut", "target", "attempts", "timeout", "deadline", "t0", "pinned",
                 "stats", "state", "value", "tried")

    def __init__(self, tid: bytes, ttype: str, payload: Any, stats: SubmitStats, retries: int, timeout: float,
                 pinned: str | None, now: float) -> None:
        self.tid = tid
        self.ttype = ttype
        self.payload = payload
        self.stats = stats
        self.fut: asyncio.Future[Any] | None = None
        self.target: Target | None = None
        self.attempts = retries  # retries left
        self.timeout = timeout
        self.t0 = now
        self.deadline = now + timeout
        self.pinned = pinned
        self.state = 0
        self.value: Any = None
        self.tried: tuple[str, ...] = ()  # nodes of earlier attempts (their late result still counts)


class TaskState:
    """The fields shared by the task manager's parts, and the few methods one part
    calls in another (defined there)."""

    def __init__(self, port: TaskPort, rand: Rand = random.random) -> None:
        self.port = port
        self._rand = rand  # the randomness of the power of two choices
        self._offers: dict[str, Offer] = {}
        self._targets: dict[str, dict[str, Target]] = {}  # task type -> node -> target
        self._cands: dict[str, list[Target]] = {}  # task type -> targets (cached list)
        self._refused: set[tuple[str, str]] = set()  # (node, type) that answered "not served"
        self._pending: dict[bytes, Pending] = {}
        self._waiting: dict[str, deque[Pending]] = {}
        self._stats: dict[str, SubmitStats] = {}
        self._ids = TaskIds()
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
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, from start()

    def _refresh(self, ttype: str) -> None:
        """The cached candidate list of ``ttype`` after its targets changed."""
        tmap = self._targets.get(ttype)
        if tmap:
            self._cands[ttype] = list(tmap.values())
        else:
            self._targets.pop(ttype, None)
            self._cands.pop(ttype, None)

    # -- defined by the scheduler (spiralfast/tasks/scheduler.py) ---------------------

    def _accept(self, src: str, tid: Any, status: Any, value: Any) -> None:
        raise NotImplementedError

    def _retry(self, p: Pending, why: str) -> None:
        raise NotImplementedError

    def _schedule_drain(self) -> None:
        raise NotImplementedError
