"""The submitter side of the task manager, the asyncio shell around the scheduling
rules (:mod:`spiralfast.protocol.scheduling`): ``submit`` and ``map``, choosing a node,
the tasks waiting for room, results, retries and timeouts.

Choosing a node: power of two choices by load / capacity (:func:`choose`); when every
node is full the task waits (without a node; its timeout runs) until one has room.  The
waiting list holds only tasks whose submitters are awaiting them, so it is bounded by
the callers (``map`` keeps ``concurrency`` tasks at most).  ``map`` lets the loop run
every :data:`MAP_BURST` tasks so batches leave while it goes on.

Failover: a task whose worker leaves or is removed by failure detection, whose worker's
link drops, or whose attempt times out is sent to another node (the same one if it is
the only one), at most ``retries`` times.  The first result wins and later replies (a
retry racing a slow worker) are counted and dropped, so the caller gets each result
exactly once.  Execution is at least once.  A result from a node the task was never
sent to is refused and counted (``results_refused``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ..errors import NoNodeForTask, TaskError, TaskTimeout
from ..protocol.scheduling import (
    Expiry,
    RetryAction,
    SubmitStats,
    Target,
    check_limits,
    choose,
    expiry_action,
    result_source_ok,
    retry_action,
)
from .peers import Peers
from .state import Pending
from .wire import OK, REFUSED, error_parts

#: Tasks ``map`` starts before it lets the loop run (so they leave while it goes on).
MAP_BURST = 64

_perf = time.perf_counter


class Scheduler(Peers):
    """Submitting tasks and getting their results."""

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
        check_limits(timeout, retries)
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
        check_limits(timeout, retries)
        return self._map(task_type, payloads, concurrency, timeout, retries)

    async def _map(self, task_type: str, payloads: Iterable[Any], concurrency: int, timeout: float,
                   retries: int) -> AsyncIterator[Any]:
        window: deque[Pending] = deque()
        start = self._start
        burst = 0
        p: Pending | None = None
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

    async def _wait(self, p: Pending) -> None:
        """Until ``p`` has its result or exception (``p.state`` != 0)."""
        loop = self._loop
        if loop is None:
            raise NoNodeForTask("the mesh node is not running")
        p.fut = loop.create_future()
        await p.fut

    def _start(self, ttype: str, payload: Any, timeout: float, retries: int, pinned: str | None) -> Pending:
        st = self._stats.get(ttype)
        if st is None or pinned is not None or not self._started or not timeout > 0 or retries < 0 \
                or ttype not in self._cands:
            return self._start_checked(ttype, payload, timeout, retries, pinned)
        # the common case: checked before, a node serves it
        st.submitted += 1
        pending = self._pending
        tid = self._ids.next(pending)
        p = pending[tid] = Pending(tid, ttype, payload, st, retries, timeout, None, _perf())
        cands = self._cands[ttype]
        t: Target | None = cands[0] if len(cands) == 1 else choose(cands, None, (), self._rand)
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
                       pinned: str | None) -> Pending:
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
            st = self._stats[ttype] = SubmitStats()
        st.submitted += 1
        tid = self._ids.next(self._pending)
        p = self._pending[tid] = Pending(tid, ttype, payload, st, retries, timeout, pinned, _perf())
        self._dispatch(p, ())
        return p

    def _abandon(self, p: Pending) -> None:
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

    def _choose(self, ttype: str, pinned: str | None, exclude: tuple[str, ...]) -> Target | None:
        """The node to run a task on, or None when every candidate is full."""
        return choose(self._cands.get(ttype), pinned, exclude, self._rand)

    def _dispatch(self, p: Pending, exclude: tuple[str, ...]) -> None:
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

    def _send_to(self, p: Pending, t: Target) -> None:
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

    def _release(self, p: Pending) -> None:
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
            keep: deque[Pending] = deque()
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

    def _finish_exc(self, p: Pending, exc: BaseException) -> None:
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
        if not result_source_ok(t.node if t is not None else None, p.tried, src):
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
            tn, msg = error_parts(value)
            p.state, p.value = 2, TaskError(tn, msg, task_type=p.ttype, node_id=src)
        fut = p.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _refuse_result(self, src: str, p: Pending) -> None:
        """A result for ``p`` from a node it was never sent to: refused, counted."""
        self._results_refused += 1
        self._warn(("forged", src), logging.WARNING, "refused a result for a %r task from node %s, which was "
                   "not given that task", p.ttype, src)

    def _retry(self, p: Pending, why: str) -> None:
        """Another attempt for ``p`` after a timeout or a lost worker."""
        old = p.target.node if p.target is not None else None
        if old is not None and old not in p.tried:
            p.tried += (old,)  # its result may still come, and counts (the first one wins)
        self._release(p)
        action = retry_action(p.attempts, why == "timeout", old, p.pinned)
        if action is RetryAction.TIMED_OUT:
            self._finish_exc(p, TaskTimeout(f"task {p.ttype!r} got no result within {p.timeout}s (attempts exhausted)"))
            return
        if action is RetryAction.LOST:
            self._finish_exc(p, TaskError("WorkerLost", f"node {old} {why}; no retries left",
                                          task_type=p.ttype, node_id=old))
            return
        p.attempts -= 1
        p.stats.retried += 1
        p.deadline = _perf() + p.timeout
        if action is RetryAction.LOST_PINNED:
            self._finish_exc(p, TaskError("WorkerLost", f"node {old} {why}", task_type=p.ttype, node_id=old))
            return
        self._dispatch(p, (old,) if old is not None else ())

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

    def _check_timeouts(self) -> None:
        if not self._pending:
            return
        now = _perf()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            if self._pending.get(p.tid) is not p:
                continue
            action = expiry_action(p.target is not None, p.attempts)
            if action is Expiry.GIVE_UP:
                self._finish_exc(p, TaskTimeout(f"task {p.ttype!r}: no node had room within {p.timeout}s"))
            elif action is Expiry.WAIT_AGAIN:  # still waiting for room: counts as an attempt
                p.attempts -= 1
                p.deadline = now + p.timeout
            else:
                self._retry(p, "timeout")
