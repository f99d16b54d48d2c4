"""The task protocol's messages: event types, status codes, batch bounds, task ids.

Three reserved event types carry the protocol:

``_sf.task``    submitter -> worker: ``[task_type, [task_id, ...], [payload, ...]]``
``_sf.result``  worker -> submitter: ``{"i": [task_id, ...], "v": [result, ...],
                "x": [[task_id, status, value], ...], "l": {task_type: [capacity, load,
                load_from_you]}}`` (``x``: the tasks that did not succeed)
``_sf.load``    worker -> everyone: ``{"o": {task_type: [capacity, load]}, "s": {task_type:
                [done, failed, p50_ms, p99_ms]}}`` (+ ``"ask": 1`` when the receiver should
                answer with its own)

Tasks and results are batched: everything for one node (and task type) in one loop
iteration travels as one event, at most :data:`MAX_BATCH` items.  A status in ``x`` is
:data:`FAILED` (the handler raised: the value is ``[type name, message]``) or
:data:`REFUSED` (the node does not serve the type: the submitter drops it and goes
elsewhere, without using up a retry).  Task ids are :data:`ID_BYTES` random bytes
(unguessable by another node).  Besides, a node's ``metadata["tasks"]`` (``{task_type:
[capacity, load]}``) travels in handshakes and gossip.
"""

from __future__ import annotations

import os
from collections.abc import Container, Sequence
from typing import Any

#: Reserved event types of the task protocol.
TASK_EVENT = "_sf.task"
RESULT_EVENT = "_sf.result"
LOAD_EVENT = "_sf.load"
#: Result status codes.
OK, FAILED, REFUSED = 0, 1, 2
#: Items per task or result event (bounded so one event stays far below the
#: message size limit for small payloads; a batch that still does not fit is split).
MAX_BATCH = 512
#: Random bytes in a task id (96 bits: not guessable by another node).
ID_BYTES = 12
#: Task ids drawn from the system's random source at once (one read per this many tasks).
ID_BATCH = 1024
#: Refusals (``WorkerBusy``) waiting to be sent to one submitter at most; a flood that
#: does not read its replies gets no more buffered (counted in ``busy_refused`` too).
MAX_BUSY_REPLIES = 64 * MAX_BATCH
#: The error a refused task carries (type name, message).
BUSY = "WorkerBusy"


def failure(exc: BaseException) -> list[str]:
    """The ``[type name, message]`` value of a failed task."""
    return [type(exc).__name__, str(exc)]


def error_parts(value: Any) -> tuple[str, str]:
    """(type name, message) of a failure value as received (anything a peer sent)."""
    try:
        return str(value[0]), str(value[1])
    except (TypeError, IndexError, KeyError):
        return "TaskError", repr(value)


def task_batch(src: object, data: Any, me: str) -> tuple[str, str, Sequence[Any], Sequence[Any]]:
    """``(source, task type, ids, payloads)`` of a received ``_sf.task`` event.

    :raises ValueError: a malformed batch (or one claiming to come from this node).
    """
    try:
        ttype, ids, payloads = data
        if not isinstance(src, str) or not isinstance(ttype, str) or len(ids) != len(payloads) or src == me:
            raise ValueError(data)
    except TypeError as exc:
        raise ValueError(data) from exc
    return src, ttype, ids, payloads


def load_message(offers: dict[str, list[int]], served: dict[str, list[Any]], ask: bool) -> dict[str, Any]:
    """A ``_sf.load`` message."""
    msg: dict[str, Any] = {"o": offers, "s": served}
    if ask:
        msg["ask"] = 1
    return msg


class TaskIds:
    """Fresh task ids: :data:`ID_BYTES` from the system's random source, read
    :data:`ID_BATCH` at a time."""

    __slots__ = ("_buf", "_at")

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def next(self, taken: Container[bytes]) -> bytes:
        """An id not in ``taken``."""
        while True:
            at = self._at
            if at >= len(self._buf):
                self._buf, at = os.urandom(ID_BYTES * ID_BATCH), 0
            self._at = at + ID_BYTES
            tid = self._buf[at : at + ID_BYTES]
            if tid not in taken:
                return tid
