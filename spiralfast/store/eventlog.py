"""The node's event log: mesh events kept in SQLite (or PostgreSQL), queried, replayed.

``MeshCore.start()`` opens an :class:`EventLog` when ``persistence_path`` (a SQLite
file) or ``persistence_url`` (``postgresql://...``) is set, and calls :meth:`EventLog.record`
for every event envelope the node sends or receives.  The log takes the node as an
:class:`~spiralfast.ports.store.EventSource` (its id and origin, the settings, the
replay handlers, its figures), so a fake source serves in tests.

The parts: rows and envelopes (:mod:`.rows`), the store ABC (:mod:`.base`), the one
SQLite layer shared with the old persistence API (:mod:`.sqlite`), the SQLite and
PostgreSQL stores (:mod:`.sqlite_store`, :mod:`.postgres`), the writer thread
(:mod:`.writer`), history and replay (:mod:`.history`) and the delivery cursor
(:mod:`.cursor`).  This module is the facade: batching on the loop side, lifecycle,
metric samples and status.

How writes flow:

- ``record()`` runs on the event loop and only appends the envelope to the batch being
  filled (when its type is persisted).
- A batch is handed to the writer thread every :data:`BATCH_MAX_AGE_S` while the writer
  is idle, or as soon as it is free once the batch is full.  The writer commits each
  batch in one transaction (SQLite in WAL mode, or one ``COPY`` into PostgreSQL).
- Only one batch is ever in the writer's hands, and the events not yet committed (in
  the writer's hands plus the batch being filled) never exceed :data:`BATCH_MAX_EVENTS`:
  when they would, ``record()`` waits for the writer (the loop stalls, reading stops,
  TCP pushes back on the senders).  So a kill -9 loses at most that many events, a disk
  slower than the event rate slows the node, and memory stays bounded.  Stalls are
  counted in :meth:`EventLog.status`.
- A write that fails (read-only or full disk, lost database) is logged once as an error;
  the node keeps running and the events are counted as ``dropped`` until a retry
  (every :data:`ERROR_RETRY_S`) succeeds, which is logged too.

Bounded storage (all on the writer thread, never on the event loop):

- Retention: events older than ``persist_retention_days`` are deleted (checked every
  hour at most), the node's metric samples older than ``persist_metrics_retention_hours``.
- Size cap: past ``persist_max_bytes`` the oldest events (and metric samples, in time
  order) are deleted until the log is back under :data:`CAP_TARGET` of the cap (or
  :data:`CAP_CHUNK_BYTES` under it, whichever is closer, so one pass stays short); they are
  counted as ``capped`` (``spiralfast_persist_capped_total``).  SQLite measures its used
  pages after every commit; the file and its WAL stay under the cap plus about one batch.
  The next batches reuse the freed pages; pages beyond the cap (a lowered cap) and those
  freed by retention are returned to the disk (new files are created with
  ``auto_vacuum=INCREMENTAL``; an older file of at most :data:`VACUUM_CONVERT_MAX` bytes
  is converted once at start, a larger one keeps its size and reuses the freed pages).  PostgreSQL
  estimates the live bytes (rows counted, or the statistics' live-row count on large
  tables, times their average size plus index overhead) every :data:`PG_CAP_EVERY_S`;
  its freed space is reused after autovacuum, not returned to the disk.
- Metrics: the node samples its figures every ``sync_interval`` but stores only the
  values that changed since the last stored sample (``uptime``, which changes with the
  clock, only in full samples), and every value once per :data:`METRICS_KEYFRAME_S`;
  samples are written with the next batch of events or at most every
  :data:`METRICS_FLUSH_S`.  An idle node thus writes a full sample an hour.

Rows go to the old ``ritual_events`` table (see :mod:`spiralfast.store.rows`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..ports.store import EventSource
from .backends import open_store
from .base import CAP_CHUNK_BYTES, CAP_TARGET, SYNC_TIMEOUT_S, Store
from .cursor import Cursor
from .history import REPLAY_PAGE, HistoryReader, answer_history, read_history
from .postgres import PG_CAP_EVERY_S, PostgresStore, mask_url, split_pg_url
from .rows import EVENT_COLUMNS, METRIC_COLUMNS, Recordable, Row, event_row, parse_time, row_envelope
from .sqlite_store import VACUUM_CONVERT_MAX, SQLiteStore
from .writer import ERROR_RETRY_S, QueueItem, Stop, WriterThread

if TYPE_CHECKING:
    from ..wire.schema import Event

log = logging.getLogger("spiralfast.store.eventlog")

#: Most events recorded but not yet committed (the batch being written plus the one
#: being filled): bounds what a kill -9 can lose and the memory they hold.
BATCH_MAX_EVENTS = 10_000
#: A batch is handed over at this age (seconds) if the writer is idle...
BATCH_MAX_AGE_S = 0.1
#: ...or at this many events as soon as the writer is idle (keeps it busy under load,
#: so the batch being filled rarely has to wait for it).
HANDOFF_MIN_EVENTS = 1_000
#: Every metric value is stored at least this often (seconds); in between only changes.
METRICS_KEYFRAME_S = 3600.0
#: Metric samples wait at most this long (seconds) for a batch of events to ride with.
METRICS_FLUSH_S = 60.0
#: Metric values that change with the clock alone: stored in full samples only.
CLOCK_METRICS = frozenset({"uptime"})

#: Event types always persisted: membership, status changes, alerts, errors.
MESH_EVENT_TYPES = frozenset({"node_register", "node_unregister", "node_status_change", "system_alert", "system_error"})


class EventLog(WriterThread, HistoryReader):
    """Persists a node's events (see the module docstring).

    :param source: the node (an :class:`~spiralfast.ports.store.EventSource`); its
        config's ``persistence_path``/``persistence_url``, ``persist_events``,
        ``persist_retention_days``, ``persist_max_bytes``,
        ``persist_metrics_retention_hours`` and ``sync_interval`` are used.
    :param store: the store (default: the one the config names, :func:`open_store`).
    """

    def __init__(self, source: EventSource, store: Store | None = None) -> None:
        self.source = source
        cfg = source.config
        self.store = store if store is not None else open_store(cfg.persistence_path, cfg.persistence_url)
        pe = cfg.persist_events
        self._all = pe == "all"
        self._types = set(MESH_EVENT_TYPES)
        if isinstance(pe, (list, tuple, set, frozenset)):
            self._types.update(str(getattr(t, "value", t)) for t in pe)
        self.retention_days = float(cfg.persist_retention_days)
        self.max_bytes: int | None = cfg.persist_max_bytes
        self.store.max_bytes = self.max_bytes
        self.metrics_retention_hours = float(cfg.persist_metrics_retention_hours)
        self.metrics_interval = float(cfg.sync_interval or 5.0)
        self.metrics_flush_s = min(METRICS_FLUSH_S, 6 * self.metrics_interval)
        self.metrics_keyframe_s = min(METRICS_KEYFRAME_S, self.metrics_retention_hours * 3600.0 / 4)
        self._metric_values: dict[str, float] = {}  # the values as last stored
        self._keyframe_at: float | None = None
        self._metric_prefix = uuid.uuid4().hex[:12] + "-"
        self._metric_seq = 0
        self._buf: list[Recordable] = []  # envelopes (dicts) or wire events (schema.Event)
        self.cursor = Cursor(skip=[source.origin])
        self._cursor_ids: list[Recordable] = []
        self._queue: queue.SimpleQueue[QueueItem] = queue.SimpleQueue()
        self._writer_free = threading.Semaphore(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._qpool: ThreadPoolExecutor | None = None
        self._opened: Future[None] = Future()
        self._writable: asyncio.Event | None = None
        self.running = False
        # counters of the loop side (the writer's: _init_writer)
        self.handed = 0  # events handed to the writer
        self.samples = 0  # metric samples taken
        self.stalls = 0
        self.stall_seconds = 0.0
        self._init_writer()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (on the writer thread) and start writing.  A store that
        cannot be opened is logged once as an error; the node runs on and the writer
        keeps trying (events are counted as dropped meanwhile)."""
        if self.running:
            return
        self.running = True
        self._loop = asyncio.get_running_loop()
        self._writable = asyncio.Event()
        self._writable.set()
        self._thread = threading.Thread(target=self._writer, name="spiralfast-eventlog", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(self._opened)
        self._tasks.append(asyncio.ensure_future(self._ticker()))
        self._tasks.append(asyncio.ensure_future(self._metrics_loop()))
        log.info("persisting %s events to %s %s", "all" if self._all else sorted(self._types),
                 self.store.kind, self.store.where)

    async def stop(self) -> None:
        """Write what is pending, then stop the writer and close the store."""
        if not self.running:
            return
        self.running = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._final_flush)
        if self._qpool is not None:
            self._qpool.shutdown(wait=False)
            self._qpool = None

    def _final_flush(self) -> None:
        got = self._writer_free.acquire(timeout=SYNC_TIMEOUT_S * 3)
        if not got:
            log.error("event log: the writer did not finish its batch in time; handing over the last one anyway")
        buf, self._buf = self._buf, []
        if buf:
            self._hand(buf)
        elif got:
            self._writer_free.release()
        self._queue.put(Stop())
        if self._thread is not None:
            self._thread.join(SYNC_TIMEOUT_S * 6)
            self._thread = None

    # -- the loop side --------------------------------------------------------------------

    def record(self, env: Recordable) -> None:
        """Called on the loop for every event the node sends or receives: its envelope
        (a dict), or the wire event itself (``schema.Event``, cheaper: see
        :meth:`record_event`)."""
        # (type() is: the hot path; mypy narrows only its first branch)
        if self._all or (env["type"] if type(env) is dict else env.event_type) in self._types:  # type: ignore[union-attr]
            buf = self._buf
            buf.append(env)
            n = len(buf)
            if n + self.in_flight >= BATCH_MAX_EVENTS or (n >= HANDOFF_MIN_EVENTS and not self.in_flight):
                self._full()
        else:
            self._cursor_ids.append(env)  # not kept, but the delivery cursor moves past it

    def record_event(self, ev: Event) -> None:
        """Like :meth:`record`, for a wire event (``schema.Event``) instead of its
        envelope: the receive and send hot paths have the struct at hand, and keeping
        it costs one append (the writer thread encodes it, as is)."""
        if self._all or ev.event_type in self._types:
            buf = self._buf
            buf.append(ev)
            n = len(buf)
            if n + self.in_flight >= BATCH_MAX_EVENTS or (n >= HANDOFF_MIN_EVENTS and not self.in_flight):
                self._full()
        else:
            self._cursor_ids.append(ev)  # not kept, but the delivery cursor moves past it

    def _hand(self, buf: list[Recordable]) -> None:
        # The caller holds _writer_free; the writer releases it after the commit.
        self.handed += len(buf)
        self.in_flight = len(buf)
        self._queue.put(buf)

    def _full(self) -> None:
        """The batch being filled is full: hand it over, waiting for the writer if it
        is still busy with the previous one (this is the backpressure)."""
        if not self.running:
            return  # stopping: _final_flush takes the buffer
        if not self._writer_free.acquire(blocking=False):
            if self._writable is not None:
                self._writable.clear()
            t0 = time.monotonic()
            self._writer_free.acquire()
            self.stalls += 1
            self.stall_seconds += time.monotonic() - t0
        buf, self._buf = self._buf, []
        self._hand(buf)

    def _tick(self) -> None:
        """Hand over the batch being filled if the writer is idle."""
        if (self._buf or self._cursor_ids) and self.running and self._writer_free.acquire(blocking=False):
            buf, self._buf = self._buf, []
            self._hand(buf)
        if self._writable is not None and not self._writable.is_set() and len(self._buf) < BATCH_MAX_EVENTS // 2:
            self._writable.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(BATCH_MAX_AGE_S)
            self._tick()

    def _writer_done(self) -> None:
        """Called on the loop by the writer after each batch."""
        if self._buf and len(self._buf) >= BATCH_MAX_EVENTS // 10:
            self._tick()
        elif self._writable is not None and not self._writable.is_set():
            self._writable.set()

    @property
    def congested(self) -> bool:
        """True while the writer is behind (a batch waits for it): the core may stop
        reading from its links and hold senders until :meth:`wait_writable` returns."""
        return len(self._buf) >= BATCH_MAX_EVENTS // 2 and self.in_flight > 0

    async def wait_writable(self) -> None:
        """Return once the writer has caught up (for senders while :attr:`congested`)."""
        if self.congested and self._writable is not None:
            self._writable.clear()
            await self._writable.wait()

    def _sync(self, timeout: float = SYNC_TIMEOUT_S) -> bool:
        """Commit everything recorded so far (blocks the caller up to ``timeout``)."""
        if not self.running:
            return True
        if self._buf:
            if not self._writer_free.acquire(timeout=timeout):
                return False
            buf, self._buf = self._buf, []
            self._hand(buf)
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- metrics --------------------------------------------------------------------------

    def metric_values(self) -> dict[str, float]:
        """The node's figures now, by ``system_metrics`` name."""
        st = self.source.get_mesh_status()
        values: dict[str, float] = {}
        for k in ("connected_nodes", "uptime", "average_entropy", "total_recursion_depth"):
            v = st.get(k)
            if isinstance(v, (int, float)):
                values[k] = float(v)
        counters = st.get("counters")
        if isinstance(counters, Mapping):
            for k, v in counters.items():
                if isinstance(v, (int, float)):
                    values["counters." + str(k)] = float(v)
        values["persistence.written"] = float(self.written)
        values["persistence.dropped"] = float(self.dropped)
        values["persistence.pending"] = float(len(self._buf) + self.in_flight)
        values["persistence.capped"] = float(self.capped)
        return {k: v for k, v in values.items() if math.isfinite(v)}

    def _rows(self, values: dict[str, float]) -> list[Row]:
        ts = datetime.now().isoformat()
        meta = json.dumps({"node_id": self.source.node_id})
        out = []
        for name, v in values.items():
            self._metric_seq += 1  # short, ordered ids (the prefix keeps nodes apart)
            out.append((f"{self._metric_prefix}{self._metric_seq:x}", ts, name, v, meta))
        return out

    def metric_rows(self) -> list[Row]:
        """The node's metrics now, all of them, as ``system_metrics`` rows."""
        return self._rows(self.metric_values())

    def sample_metrics(self) -> list[Row]:
        """The rows to store for one sample: every value in a full sample (the first,
        then one per ``metrics_keyframe_s``), else only the values that changed since
        they were last stored (values that change with the clock alone, such as
        ``uptime``, wait for the next full sample)."""
        values = self.metric_values()
        now = time.monotonic()
        self.samples += 1
        if self._keyframe_at is None or now - self._keyframe_at >= self.metrics_keyframe_s:
            self._keyframe_at = now
            self._metric_values = dict(values)
            return self._rows(values)
        last = self._metric_values
        changed = {k: v for k, v in values.items() if k not in CLOCK_METRICS and last.get(k) != v}
        last.update(changed)
        return self._rows(changed)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval)
            try:
                rows = self.sample_metrics()
                if rows:
                    self._queue.put(tuple(rows))
            except Exception:  # noqa: BLE001
                log.debug("metrics sample failed", exc_info=True)

    def status(self) -> dict[str, Any]:
        """Figures for ``get_mesh_status()["persistence"]``."""
        return {
            "backend": self.store.kind,
            "where": self.store.where,
            "persist_events": "all" if self._all else sorted(self._types),
            "recorded": self.handed + len(self._buf),
            "written": self.written,
            "pending": len(self._buf) + self.in_flight,
            "dropped": self.dropped,
            "batches": self.batches,
            "last_batch": self.last_batch,
            "metrics_written": self.metrics_written,
            "metric_samples": self.samples,
            "purged": self.purged,
            "capped": self.capped,
            "capped_metrics": self.capped_metrics,
            "size_bytes": self.size_bytes,
            "max_bytes": self.max_bytes,
            "metrics_retention_hours": self.metrics_retention_hours,
            "stalls": self.stalls,
            "stall_seconds": round(self.stall_seconds, 3),
            "congested": self.congested,
            "retention_days": self.retention_days,
            "error": self.error,
            "failures": self.failures,
        }


__all__ = [
    "EventLog",
    "Store",
    "SQLiteStore",
    "PostgresStore",
    "open_store",
    "read_history",
    "answer_history",
    "parse_time",
    "event_row",
    "row_envelope",
    "mask_url",
    "split_pg_url",
    "MESH_EVENT_TYPES",
    "BATCH_MAX_EVENTS",
    "BATCH_MAX_AGE_S",
    "CLOCK_METRICS",
    "EVENT_COLUMNS",
    "METRIC_COLUMNS",
    "ERROR_RETRY_S",
    "CAP_TARGET",
    "CAP_CHUNK_BYTES",
    "PG_CAP_EVERY_S",
    "REPLAY_PAGE",
    "SYNC_TIMEOUT_S",
    "VACUUM_CONVERT_MAX",
]
