"""Work distribution: task handlers, submission, load balancing, failover.

:class:`TaskManager` (``mesh.tasks``) takes a :class:`~spiralfast.ports.tasks.TaskPort`
— send, broadcast, subscribe, members and their metadata, links — and nothing else of
the node, so it runs against a fake port in a unit test.  Modules:

- :mod:`.wire`: the three reserved event types and their messages, status codes, ids;
- :mod:`.state`: offers, pending tasks, the state the parts share;
- :mod:`.worker`: serving task types (running, per-submitter bounds, replies);
- :mod:`.peers`: what other nodes offer (adverts, gossip, capabilities), lost nodes;
- :mod:`.scheduler`: ``submit``/``map``, choosing a node, results, retries, timeouts;
- :mod:`.loops`: the outbox and housekeeping loops;
- :mod:`.manager`: :class:`TaskManager` (lifecycle, observer queries, status).

The rules themselves (power of two choices, retry and timeout decisions, per-submitter
bounds, advert timing) are sans-I/O, in :mod:`spiralfast.protocol.scheduling`.
"""

from __future__ import annotations

from ..protocol.scheduling import (
    DEFAULT_CAPACITY,
    LATENCY_SAMPLES,
    MAX_TASK_TYPES,
    MAX_TICK,
    MAX_TYPE_NAME,
    MIN_TICK,
    QUEUE_FACTOR,
    QUEUE_FLOOR,
)
from .manager import TaskManager
from .scheduler import MAP_BURST
from .wire import (
    BUSY,
    FAILED,
    ID_BATCH,
    ID_BYTES,
    LOAD_EVENT,
    MAX_BATCH,
    MAX_BUSY_REPLIES,
    OK,
    REFUSED,
    RESULT_EVENT,
    TASK_EVENT,
)

__all__ = [
    "BUSY",
    "DEFAULT_CAPACITY",
    "FAILED",
    "ID_BATCH",
    "ID_BYTES",
    "LATENCY_SAMPLES",
    "LOAD_EVENT",
    "MAP_BURST",
    "MAX_BATCH",
    "MAX_BUSY_REPLIES",
    "MAX_TASK_TYPES",
    "MAX_TICK",
    "MAX_TYPE_NAME",
    "MIN_TICK",
    "OK",
    "QUEUE_FACTOR",
    "QUEUE_FLOOR",
    "REFUSED",
    "RESULT_EVENT",
    "TASK_EVENT",
    "TaskManager",
]
