"""The task manager (``mesh.tasks``): work distribution across the mesh — task
handlers, submission, load balancing, failover — built on a :class:`TaskPort`
(:mod:`spiralfast.ports.tasks`) rather than the node itself.

The manager is assembled from its parts, each a module of this package:
:mod:`~spiralfast.tasks.worker` (serving), :mod:`~spiralfast.tasks.peers` (what other
nodes offer, lost nodes), :mod:`~spiralfast.tasks.scheduler` (submitting, results,
retries), :mod:`~spiralfast.tasks.loops` (sending, housekeeping), over the shared state
of :mod:`~spiralfast.tasks.state`; the messages are in :mod:`~spiralfast.tasks.wire`
and the decisions in :mod:`spiralfast.protocol.scheduling`.

Trust (SECURITY.md): members speak only for their own affairs.  Task ids are random
(unguessable); the submitter records the node(s) it sent each task to, and a result
for it from any other node is refused and counted (``results_refused``).  A node
offers at most ``MAX_TASK_TYPES`` task types: a load or result message listing more is
refused whole (``types_refused``), and everything is looked up in sets and dicts (no
quadratic path).  A worker holds at most ``max(capacity * QUEUE_FACTOR, QUEUE_FLOOR)``
tasks per submitter (running and queued); beyond that a task is answered at once with
a ``WorkerBusy`` failure the submitter sees as :class:`TaskError` (``busy_refused``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from ..errors import NoNodeForTask, TaskError, TaskTimeout
from ..ports.tasks import TaskPort
from ..protocol.scheduling import Rand, Target, percentiles
from .loops import Loops
from .wire import LOAD_EVENT, RESULT_EVENT, TASK_EVENT

_perf = time.perf_counter


class TaskManager(Loops):
    """One per node (``mesh.tasks``).

    :param port: what it uses of the node it serves and submits for
        (:class:`spiralfast.ports.tasks.TaskPort`).
    :param rand: the randomness of the power of two choices (``() -> float in [0, 1)``).
    """

    def __init__(self, port: TaskPort, *, rand: Rand = random.random) -> None:
        super().__init__(port, rand)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Called by ``MeshCore.start()`` once the links are up."""
        if self._started:
            return
        # (Membership comes from the node itself: node_joined / node_removed.)
        port = self.port
        port.subscribe(TASK_EVENT, self._on_task_env)
        port.subscribe(RESULT_EVENT, self._on_result_env)
        port.subscribe(LOAD_EVENT, self._on_load_env)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._loop_tasks = [asyncio.ensure_future(self._outbox()), asyncio.ensure_future(self._housekeeping())]
        me = port.node_id
        if self._offers:
            port.add_capabilities(me, list(self._offers))
            self._advert_now = True
            self._wake.set()
        for k, o in self._offers.items():
            self._targets.setdefault(k, {}).setdefault(me, Target(me, o.capacity, o))
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
        me = self.port.node_id
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
            p50, p99 = percentiles(o.latency)
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
            p50, p99 = percentiles(st.latency)
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
