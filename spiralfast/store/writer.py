"""The event log's writer thread: it commits batches, keeps the delivery cursor and bounds the store.

The loop side (:mod:`spiralfast.store.eventlog`) hands it work through a queue: a batch
(a list of envelopes or wire events; at most one is in its hands, see
``_writer_free``), metric rows (a tuple, written with the next batch or when due), a
``threading.Event`` (commit what waits, then set it: ``history()`` reads after it) or
:class:`Stop`.  Each batch is one transaction, the delivery cursor's changed rows
included.  A write that fails (read-only or full disk, lost database) is logged once as
an error; the node keeps running and the events are counted as ``dropped`` until a
retry (every :data:`ERROR_RETRY_S`) succeeds, which is logged too.  Retention and the
size cap run here too, never on the event loop.

:class:`WriterThread` is the writer's half of :class:`~spiralfast.store.eventlog.EventLog`
(a base class rather than a part, so the hot ``record()`` reads its counters directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import TypeAlias

from .base import Store
from .cursor import META as CURSOR_META
from .cursor import Cursor
from .rows import CursorRow, Recordable, Row

log = logging.getLogger("spiralfast.store.eventlog")

#: Seconds between write attempts while the store fails (events in between are
#: counted as dropped, so a broken disk never stalls the node).
ERROR_RETRY_S = 2.0


class Stop:
    """Queued last: the writer writes what waits (a clean stop), closes the store and ends."""


#: What the loop side queues for the writer (see the module docstring).
QueueItem: TypeAlias = "list[Recordable] | tuple[Row, ...] | threading.Event | Stop"


class WriterThread:
    """The writer thread's state and loop (see the module docstring)."""

    store: Store
    #: The delivery cursor (spiralfast/store/cursor.py), fed and stored by the writer thread.
    cursor: Cursor
    _cursor_ids: list[Recordable]  # events handed to handlers but not persisted: for the cursor
    _queue: queue.SimpleQueue[QueueItem]
    _opened: Future[None]
    _writer_free: threading.Semaphore  # held while a batch of events is in the writer's hands
    _loop: asyncio.AbstractEventLoop | None
    running: bool
    retention_days: float
    max_bytes: int | None
    metrics_retention_hours: float
    metrics_flush_s: float

    def _init_writer(self) -> None:
        """The writer's counters (written by the writer thread; read anywhere)."""
        self.in_flight = 0  # events in the writer's hands
        self.written = 0
        self.dropped = 0
        self.batches = 0
        self.last_batch = 0
        self.metrics_written = 0
        self.purged = 0
        self.capped = 0  # events removed by the size cap
        self.capped_metrics = 0  # metric rows removed by the size cap
        self.size_bytes = 0  # the store's size at the last cap check
        self._cap_failing = False
        self.error: str | None = None
        self.failures = 0  # times the store went from writable to failing
        self._error_since = 0.0
        self._next_retry = 0.0

    def _writer_done(self) -> None:
        """Called on the loop by the writer after each batch (the loop side overrides it)."""

    def _writer(self) -> None:
        try:
            self._writer_loop()
        except BaseException:  # never leave the loop waiting on a dead writer
            log.exception("event log: writer thread failed")
            self.error = self.error or "writer thread failed"
            if not self._opened.done():
                self._opened.set_result(None)
            raise

    def _writer_loop(self) -> None:
        store = self.store
        self._try_open()
        self._opened.set_result(None)
        retention_s = self.retention_days * 86400.0
        metrics_retention_s = self.metrics_retention_hours * 3600.0
        retention_every = min(3600.0, max(1.0, min(retention_s, metrics_retention_s) / 10.0))
        next_purge = time.monotonic()
        next_cap = time.monotonic()
        metrics: list[Row] = []
        metrics_due = math.inf  # when the metric rows waiting must be written
        first_metrics = True
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(next_purge, metrics_due) - now)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, Stop):
                self._write([], metrics, clean=True)  # the cursor is exact: a clean stop
                break
            wrote = False
            if isinstance(item, threading.Event):
                if metrics:
                    self._write([], metrics)
                    metrics, metrics_due, wrote = [], math.inf, True
                item.set()
            elif isinstance(item, tuple):  # metrics: written with the next batch, or when due
                metrics.extend(item)
                if first_metrics:  # the first sample at once: the log shows the node's start
                    first_metrics, metrics_due = False, time.monotonic()
                elif metrics_due == math.inf:
                    metrics_due = time.monotonic() + self.metrics_flush_s
            elif isinstance(item, list):
                try:
                    self._write(item, metrics)
                finally:
                    metrics, metrics_due, wrote = [], math.inf, True
                    self.in_flight = 0
                    self._writer_free.release()
                    loop = self._loop
                    if loop is not None and self.running:
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(self._writer_done)
            if metrics and time.monotonic() >= metrics_due and self._queue.empty():
                self._write([], metrics)
                metrics, metrics_due, wrote = [], math.inf, True
            now = time.monotonic()
            if wrote and now >= next_cap:
                next_cap = now + self.store.cap_every
                self._enforce_cap()
            if now >= next_purge:
                next_purge = now + retention_every
                self._purge(retention_s, metrics_retention_s)
        store.close()

    def _try_open(self) -> bool:
        try:
            self.store.open()
        except Exception as exc:  # noqa: BLE001 - any failure: one clear error, keep running
            self._failed(exc, 0)
            return False
        return True

    def _cursor_rows(self, envs: list[Recordable], ids: list[Recordable], clean: bool) -> list[CursorRow]:
        """The delivery cursor moved by what this batch (and the events not persisted,
        ``ids``) handed to the handlers: its changed rows and the meta row (on the writer)."""
        cur, wall = self.cursor, time.time()
        cur.note_ids([x.get("event_id") if type(x) is dict else getattr(x, "event_id", None)
                      for e in (envs, ids) for x in e], wall)
        return [*cur.take(), (CURSOR_META, 1 if clean else 0, "[]", wall)]

    def _write(self, envs: list[Recordable], metrics: list[Row], clean: bool = False) -> None:
        n = len(envs)
        now = time.monotonic()
        if self.error is not None and now < self._next_retry:
            self.dropped += n
            return
        ids, self._cursor_ids = self._cursor_ids, []
        if envs or ids or clean:
            self.store.cursor_rows = self._cursor_rows(envs, ids, clean)
        try:
            self.store.write(envs, metrics)
        except Exception as exc:  # noqa: BLE001 - sqlite3/OS/asyncpg errors alike
            self._failed(exc, n)
            return
        self.written += n
        self.metrics_written += len(metrics)
        if n:
            self.batches += 1
            self.last_batch = n
        if self.error is not None:
            log.warning("event log: writing to %s %s again (%d events were dropped while it failed)",
                        self.store.kind, self.store.where, self.dropped)
            self.error = None

    def _failed(self, exc: BaseException, n: int) -> None:
        self.dropped += n
        self._next_retry = time.monotonic() + ERROR_RETRY_S
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            self._error_since = time.time()
            self.failures += 1
            if self.failures == 1:
                log.error(
                    "event log: cannot write to %s %s (%s); the node keeps running, events are counted as "
                    "dropped until it is writable again (retry every %.0f s)",
                    self.store.kind, self.store.where, self.error, ERROR_RETRY_S,
                )
            else:  # a disk that keeps filling up again: said once already, keep it quieter
                log.warning("event log: writing to %s failed again (%s); %d events dropped so far",
                            self.store.where, self.error, self.dropped)

    def _purge(self, retention_s: float, metrics_retention_s: float | None = None) -> None:
        if self.error is not None:
            return
        now = datetime.now()
        cutoff = (now - timedelta(seconds=retention_s)).isoformat()
        mcut = (now - timedelta(seconds=metrics_retention_s)).isoformat() if metrics_retention_s else None
        try:
            n = self.store.purge(cutoff, mcut)
        except Exception as exc:  # noqa: BLE001
            log.warning("event log: retention on %s failed: %s", self.store.where, exc)
            return
        self.purged += n
        if n:
            log.debug("event log: %d rows older than %s removed", n, cutoff)

    def _enforce_cap(self) -> None:
        """Keep the store under ``persist_max_bytes`` (on the writer thread)."""
        if self.error is not None or self.max_bytes is None:
            return
        try:
            events, metrics, size = self.store.enforce_cap(self.max_bytes)
        except Exception as exc:  # noqa: BLE001 - the cap failed this time: say so (once), keep writing
            if not self._cap_failing:
                log.warning("event log: size cap on %s failed: %s (tried again after each write)",
                            self.store.where, exc)
            self._cap_failing = True
            return
        if self._cap_failing:
            log.warning("event log: size cap on %s works again", self.store.where)
            self._cap_failing = False
        self.size_bytes = size
        if events or metrics:
            if not self.capped and not self.capped_metrics:
                log.warning("event log: %s reached its size cap of %d bytes (persist_max_bytes); the oldest "
                            "events are removed from now on (counted as capped)", self.store.where, self.max_bytes)
            self.capped += events
            self.capped_metrics += metrics
            log.debug("event log: size cap removed %d events and %d metric rows", events, metrics)


__all__ = ["ERROR_RETRY_S", "QueueItem", "Stop", "WriterThread"]
