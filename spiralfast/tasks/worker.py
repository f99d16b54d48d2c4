"""The worker side of the task manager: task types this node serves, running the
tasks that arrive (plain handlers inline, ``async def`` ones as at most ``capacity``
asyncio tasks with the rest queued per submitter and served in turns), the
per-submitter bound (``WorkerBusy``), and the replies buffered for the loops to send.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable
from typing import Any

from ..protocol.scheduling import MAX_TASK_TYPES, MAX_TYPE_NAME, Target, percentiles
from .state import Handler, Offer, TaskState, log
from .wire import BUSY, FAILED, MAX_BUSY_REPLIES, OK, REFUSED, failure, task_batch

_perf = time.perf_counter
#: Result types that are never awaitable (skips ``inspect.isawaitable``).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})


class Worker(TaskState):
    """Serving task types: registration, running, replies, the load this node offers."""

    def register(self, task_type: str, handler: Handler, *, capacity: int = 64) -> None:
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
            offer = self._offers[task_type] = Offer(handler, capacity)
        else:  # a new handler or capacity; what runs and the counters stay
            offer.handler, offer.capacity = handler, capacity
            offer.is_async = inspect.iscoroutinefunction(handler)
        me = self.port.node_id
        t = self._targets.setdefault(task_type, {}).get(me)
        if t is None:
            self._targets[task_type][me] = Target(me, capacity, offer)
            self._node_types.setdefault(me, set()).add(task_type)
        else:
            t.offer, t.capacity = offer, capacity
        self._refresh(task_type)
        self.port.add_capabilities(me, [task_type])
        self._publish_meta()
        if self._started:
            self._advert_now = True
            self._wake.set()
        self._schedule_drain()

    def offered(self) -> dict[str, int]:
        """Task types this node serves -> capacity."""
        return {k: o.capacity for k, o in self._offers.items()}

    # -- running ---------------------------------------------------------------------

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
            self._reply(src, tid, FAILED, failure(exc))
            return
        if r.__class__ not in _PLAIN and inspect.isawaitable(r):  # a plain function returning an awaitable
            o.by_src[src] = o.by_src.get(src, 0) + 1
            o.running += 1
            self._spawn_worker(o, ttype, src, tid, None, r)
            return
        o.done += 1
        o.latency.append(_perf() - t0)
        self._reply(src, tid, OK, r)

    def _busy(self, src: str, tid: Any, o: Offer, ttype: str) -> None:
        """``src`` already has ``o.per_source()`` tasks here: this one is refused at once
        with a ``WorkerBusy`` failure (the submitter's TaskError), and counted."""
        self._busy_refused += 1
        self._warn(("busy", src), logging.WARNING, "node %s sent more %r tasks than it may have queued here "
                   "(%d): refused with %s", src, ttype, o.per_source(), BUSY)
        me = self.port.node_id
        if src != me:
            buf = self._results.get(src)
            if buf is not None and len(buf[2]) >= MAX_BUSY_REPLIES:
                return  # a flood that does not take its replies: no more are buffered for it
        if o.busy is None or o.busy_cap != o.capacity:  # one shared (never changed) value per offer
            o.busy_cap = o.capacity
            o.busy = [BUSY, f"node {me} already holds {o.per_source()} {ttype!r} tasks of yours "
                            f"(capacity {o.capacity})"]
        self._reply(src, tid, FAILED, o.busy)

    def _spawn_worker(self, o: Offer, ttype: str, src: str, tid: Any, payload: Any,
                      aw: Awaitable[Any] | None = None) -> None:
        task = asyncio.ensure_future(self._work(o, ttype, src, tid, payload, aw))
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self, o: Offer, ttype: str, src: str, tid: Any, payload: Any, aw: Awaitable[Any] | None) -> None:
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
                    status, r = FAILED, failure(exc)
                    o.failed += 1
                aw = None
                o.release(src)
                self._reply(src, tid, status, r)
                if not o.queued:
                    break
                src, tid, payload = o.pop()
        finally:
            o.running -= 1

    def _reply(self, src: str, tid: Any, status: int, value: Any) -> None:
        if src == self.port.node_id:
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

    # -- receiving tasks -------------------------------------------------------------

    def _on_task_env(self, env: dict[str, Any]) -> None:
        src = env.get("source_node")
        try:
            src, ttype, ids, payloads = task_batch(src, env.get("data"), self.port.node_id)
        except ValueError:
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
                self._reply(src, tid, FAILED, failure(exc))
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

    # -- what this node offers -------------------------------------------------------

    def _load_for(self, src: str) -> dict[str, list[int]]:
        return {k: [o.capacity, o.load, o.by_src.get(src, 0)] for k, o in self._offers.items()}

    def _advert(self) -> dict[str, list[int]]:
        return {k: [o.capacity, o.load] for k, o in self._offers.items()}

    def _served(self) -> dict[str, list[Any]]:
        """Per offered type: ``[done, failed, p50_ms, p99_ms]`` (what peers show for us)."""
        out: dict[str, list[Any]] = {}
        for k, o in self._offers.items():
            p50, p99 = percentiles(o.latency)
            out[k] = [o.done, o.failed, p50, p99]
        return out

    def _advert_key(self) -> list[tuple[str, int, int, int, int]]:
        return [(k, o.capacity, o.load, o.done, o.failed) for k, o in self._offers.items()]

    def _publish_meta(self) -> None:
        """Offers and load in the local node's metadata, which travels in handshakes
        and in the gossip sent with every heartbeat."""
        adv = self._advert()
        md = self.port.local_metadata
        if md.get("tasks") != adv:
            md["tasks"] = adv  # a new dict each time: records already sent keep theirs
