"""The node's event log: mesh events kept in SQLite (or PostgreSQL), queried, replayed.

``MeshCore.start()`` opens an :class:`EventLog` when ``persistence_path`` (a SQLite
file) or ``persistence_url`` (``postgresql://...``) is set, and calls :meth:`EventLog.record`
for every event envelope the node sends or receives.

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

Rows go to the old ``ritual_events`` table (see :mod:`spiralfast.persistence`):
``event_id``, ``timestamp`` (local ISO text, as in the envelope), ``event_type`` (the
envelope's type), ``description``, ``agent_id`` (the source node), ``metadata``
(JSON ``{"mesh": 1, "data": ..., "target_node": ...}``) and ``severity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import queue
import re
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from ..persistence import open_sqlite, private_file
from ..wire.fastpath import iso_from_epoch
from .cursor import META as CURSOR_META
from .cursor import Cursor

if TYPE_CHECKING:
    from ..node.core import MeshCore

log = logging.getLogger("spiralfast.eventlog")

#: Most events recorded but not yet committed (the batch being written plus the one
#: being filled): bounds what a kill -9 can lose and the memory they hold.
BATCH_MAX_EVENTS = 10_000
#: A batch is handed over at this age (seconds) if the writer is idle...
BATCH_MAX_AGE_S = 0.1
#: ...or at this many events as soon as the writer is idle (keeps it busy under load,
#: so the batch being filled rarely has to wait for it).
HANDOFF_MIN_EVENTS = 1_000
#: Seconds between write attempts while the store fails (events in between are
#: counted as dropped, so a broken disk never stalls the node).
ERROR_RETRY_S = 2.0
#: Rows deleted per retention transaction (keeps the write lock short).
RETENTION_CHUNK = 50_000
#: Past the size cap, the oldest rows are deleted until the log is under this fraction
#: of the cap (so the cap is not hit again by the next batch), or CAP_CHUNK_BYTES under
#: it when that is closer (a large cap: one pass stays one short transaction).
CAP_TARGET = 0.9
#: Most bytes of event batches deleted in one cap transaction (keeps the lock short).
CAP_CHUNK_BYTES = 32 * 1024 * 1024
#: The WAL's share of the SQLite cap: at most this, and at most 1/8 of the cap.
WAL_BUDGET_MAX = 8 * 1024 * 1024
#: An existing SQLite file without incremental vacuum is converted at start up to this size.
VACUUM_CONVERT_MAX = 64 * 1024 * 1024
#: Seconds between PostgreSQL size estimates.
PG_CAP_EVERY_S = 30.0
#: PostgreSQL bytes per row on top of the row's own (tuple header, line pointer, index entries).
PG_ROW_OVERHEAD = 100
#: Below this many live rows (statistics), PostgreSQL tables are counted exactly.
PG_EXACT_COUNT_BELOW = 200_000
#: Every metric value is stored at least this often (seconds); in between only changes.
METRICS_KEYFRAME_S = 3600.0
#: Metric samples wait at most this long (seconds) for a batch of events to ride with.
METRICS_FLUSH_S = 60.0
#: Metric values that change with the clock alone: stored in full samples only.
CLOCK_METRICS = frozenset({"uptime"})
#: Rows per page when replaying.
REPLAY_PAGE = 10_000
#: Seconds ``history()`` waits for pending events to be committed before it reads.
SYNC_TIMEOUT_S = 10.0

#: Event types always persisted: membership, status changes, alerts, errors.
MESH_EVENT_TYPES = frozenset({"node_register", "node_unregister", "node_status_change", "system_alert", "system_error"})

EVENT_COLUMNS = ("event_id", "timestamp", "event_type", "description", "agent_id", "metadata", "severity")
METRIC_COLUMNS = ("metric_id", "timestamp", "metric_name", "metric_value", "metadata")

Row = tuple[Any, ...]

#: Types whose rows get a description and severity of their own (see ``event_row``).
_SPECIAL = frozenset({"node_register", "node_unregister", "system_alert", "system_error"})
_INSERT_ROW = "INSERT INTO ritual_events VALUES (?, ?, ?, ?, ?, ?, ?)"

_json_encode = msgspec.json.Encoder(enc_hook=str).encode
_json_decode = msgspec.json.decode


# -- time arguments ----------------------------------------------------------------------

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_time(value: Any) -> str | None:
    """A time bound as stored (local ISO text), from None, a ``datetime`` (naive =
    local), an epoch number, a ``timedelta`` or relative string (``"10m"``, ``"2h"``,
    ``"30s"``, ``"1d"``: that long ago) or an ISO string.

    :raises ValueError: the value is none of these.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, timedelta):
        return (datetime.now() - value).isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value)).isoformat()
    if isinstance(value, str):
        m = _REL.match(value)
        if m:
            return (datetime.now() - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])).isoformat()
        try:
            return parse_time(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            pass
    raise ValueError(f"not a time: {value!r} (use an ISO time, or 30s, 10m, 2h, 1d ago)")


def _types(types: Any) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        return [types]
    out = [getattr(t, "value", t) for t in types]
    return [str(t) for t in out] or None


# -- rows <-> envelopes ----------------------------------------------------------------


def _encode_json(obj: Any) -> bytes:
    try:
        return _json_encode(obj)
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return json.dumps(obj, default=str).encode()
    except (TypeError, ValueError, OverflowError):  # e.g. tuple keys: keep it readable at least
        return json.dumps(repr(obj)).encode()


def event_row(env: dict[str, Any]) -> Row:
    """The ``ritual_events`` row of one envelope."""
    et = env["type"]
    meta = b'{"mesh":1,"data":' + _encode_json(env.get("data"))
    target = env.get("target_node")
    if target is not None:
        meta += b',"target_node":' + _encode_json(target)
    if env.get("replayed"):
        meta += b',"replayed":true'
    severity = "INFO"
    description = et
    if et == "node_register":
        description = "Node joined mesh"
    elif et == "node_unregister":
        data = env.get("data")
        reason = data.get("reason") if isinstance(data, dict) else None
        if reason in ("silent", "lost"):
            description, severity = f"Node lost ({reason})", "WARNING"
        else:
            description = f"Node left mesh ({reason})" if reason else "Node left mesh"
    elif et == "system_alert":
        severity = "WARNING"
    elif et == "system_error":
        severity = "ERROR"
    eid = env.get("event_id") or uuid.uuid4().hex
    ts = env.get("timestamp") or datetime.now().isoformat()
    return (eid, ts, et, description, env.get("source_node"), (meta + b"}").decode(), severity)


def _struct_row(ev: Any) -> Row:
    """``event_row`` of a wire event, without building its envelope first."""
    et = ev.event_type
    if et in _SPECIAL:
        return event_row(struct_envelope(ev))
    meta = b'{"mesh":1,"data":' + _encode_json(ev.data)
    if ev.target_node is not None:
        meta += b',"target_node":' + _encode_json(ev.target_node)
    return (ev.event_id, iso_from_epoch(ev.timestamp), et, et, ev.source_node, (meta + b"}").decode(), "INFO")


def row_envelope(event_id: str, timestamp: str, event_type: str, description: str, agent_id: str | None,
                 metadata: str | None, severity: str | None) -> dict[str, Any]:
    """The envelope of one stored row.  Rows written by ``PersistenceManager`` (not
    mesh events) carry ``{"description", "metadata", "severity"}`` as their data."""
    meta: Any = None
    if metadata:
        try:
            meta = _json_decode(metadata)
        except (msgspec.DecodeError, ValueError):
            meta = metadata
    env: dict[str, Any] = {"type": event_type, "source_node": agent_id, "timestamp": timestamp}
    if isinstance(meta, dict) and meta.get("mesh") == 1:
        env["data"] = meta.get("data")
        env["event_id"] = event_id
        if meta.get("target_node") is not None:
            env["target_node"] = meta["target_node"]
    else:
        env["data"] = {"description": description, "metadata": meta, "severity": severity or "INFO"}
        env["event_id"] = event_id
    return env


# -- stores ----------------------------------------------------------------------------


class Store(ABC):
    """Where the writer thread puts batches.  ``open``/``write``/``purge``/``close`` run
    on the writer thread; ``query`` on any thread."""

    kind = "?"
    where = "?"
    #: The size cap (bytes) set by the event log before ``open``; None: no cap.
    max_bytes: int | None = None
    #: Seconds between cap checks (0: after every write).
    cap_every = 0.0
    #: Delivery cursor rows committed with the next write (stores that keep a cursor).
    cursor_rows: list[tuple[str, int, str, float]] = []

    def read_cursor(self) -> list[tuple[str, int, str, float]]:
        """The stored delivery cursor rows (a store without one: [])."""
        return []

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def write(self, envs: Sequence[dict[str, Any]], metrics: Sequence[Row]) -> None:
        """Commit the envelopes (as ``ritual_events`` rows) and the metric rows in one
        transaction (raises on failure, nothing committed)."""

    @abstractmethod
    def purge(self, cutoff: str, metrics_cutoff: str | None = None) -> int:
        """Delete rows with ``timestamp < cutoff`` (metric rows: before the later of
        ``cutoff`` and ``metrics_cutoff``); returns how many."""

    def enforce_cap(self, max_bytes: int) -> tuple[int, int, int]:
        """Delete the oldest rows while the store is over ``max_bytes`` (down to
        :data:`CAP_TARGET` of it).  Returns ``(events removed, metric rows removed,
        bytes now)``.  A store that cannot measure itself keeps everything."""
        return 0, 0, 0

    @abstractmethod
    def query(self, since: str | None, until: str | None, types: list[str] | None, source: str | None,
              limit: int, ascending: bool, after: Any = None) -> tuple[list[dict[str, Any]], Any]:
        """Envelopes in time order (newest ``limit`` when not ``ascending``, oldest
        after the key ``after`` when ``ascending``) and the key of the last one."""

    @abstractmethod
    def close(self) -> None: ...


_SQLITE_BATCH_SCHEMA = (
    # The event log proper: one row per batch, its events a JSON array of envelopes in
    # arrival order.  Writing a batch is one encode and one row, so a node persists
    # hundreds of thousands of events per second; queries skip batches by time range,
    # types and sources.
    """CREATE TABLE IF NOT EXISTS mesh_event_batches (
        batch_id INTEGER PRIMARY KEY,
        first_ts TEXT NOT NULL,
        last_ts TEXT NOT NULL,
        count INTEGER NOT NULL,
        types TEXT NOT NULL,
        sources TEXT NOT NULL,
        events TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idx_mesh_event_batches_last_ts ON mesh_event_batches(last_ts)",
    # The delivery cursor (spiralfast/cursor.py), written with the batches.
    """CREATE TABLE IF NOT EXISTS delivery_cursor (
        origin TEXT PRIMARY KEY,
        done INTEGER NOT NULL,
        ahead TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    # Every stored event as a row, for SQL tools.
    # Events are envelope objects, or wire-form arrays [event_id, event_type,
    # source_node, epoch seconds, data, target_node, ...] (what record_event() keeps).
    """CREATE VIEW IF NOT EXISTS mesh_events AS
        SELECT iif(e.type = 'array', e.value->>0, e.value->>'event_id') AS event_id,
               iif(e.type = 'array', strftime('%Y-%m-%dT%H:%M:%f', e.value->>3, 'unixepoch', 'localtime'),
                   e.value->>'timestamp') AS timestamp,
               iif(e.type = 'array', e.value->>1, e.value->>'type') AS event_type,
               iif(e.type = 'array', e.value->>2, e.value->>'source_node') AS source_node,
               iif(e.type = 'array', e.value->>5, e.value->>'target_node') AS target_node,
               iif(e.type = 'array', e.value->4, e.value->'data') AS data,
               b.batch_id AS batch_id
        FROM mesh_event_batches AS b, json_each(b.events) AS e""",
)
#: Batches read per query step (history and replay).
_BATCHES_PER_READ = 8


def struct_envelope(ev: Any) -> dict[str, Any]:
    """The envelope of a wire ``Event`` (``schema.Event``) as handlers see it."""
    env = {"type": ev.event_type, "source_node": ev.source_node, "timestamp": iso_from_epoch(ev.timestamp),
           "data": ev.data, "event_id": ev.event_id}
    if ev.target_node is not None:
        env["target_node"] = ev.target_node
    return env


def _stored_envelope(item: Any) -> dict[str, Any]:
    """A stored batch element (envelope object, or wire-form array) as an envelope."""
    if isinstance(item, dict):
        return item
    env = {"type": item[1], "source_node": item[2], "timestamp": iso_from_epoch(item[3]),
           "data": item[4] if len(item) > 4 else None, "event_id": item[0]}
    if len(item) > 5 and item[5] is not None:
        env["target_node"] = item[5]
    return env


def _decode_batch(events: str) -> list[dict[str, Any]]:
    return [_stored_envelope(x) for x in _json_decode(events)]


def _env_json(env: Any) -> bytes:
    """One envelope (or wire event) as JSON, whatever its data holds."""
    try:
        return _json_encode(env)
    except (TypeError, ValueError, OverflowError):
        if not isinstance(env, dict):
            env = struct_envelope(env)
        rest = {k: v for k, v in env.items() if k != "data"}
        return _json_encode(rest)[:-1] + b',"data":' + _encode_json(env.get("data")) + b"}"


class SQLiteStore(Store):
    """One SQLite file in WAL mode (readers never block the writer).

    Events are kept in ``mesh_event_batches`` (see :data:`_SQLITE_BATCH_SCHEMA`; the
    ``mesh_events`` view shows them as rows); membership changes, status changes,
    alerts and errors are also written to the old ``ritual_events`` table, row by row,
    for tools that read it.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.where = str(self.path)
        self._conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._page_size = 8192
        self._auto_vacuum = 0
        self._wal_budget = WAL_BUDGET_MAX

    def _prepare_new_file(self) -> None:
        """A new file gets incremental vacuum (settable only before its first table)."""
        if str(self.path) == ":memory:" or (self.path.exists() and self.path.stat().st_size > 0):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # 0600, before SQLite creates it (and its -wal/-shm) world-readable
        pre = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            pre.execute("PRAGMA page_size=8192")
            pre.execute("PRAGMA auto_vacuum=INCREMENTAL")
            pre.execute("PRAGMA journal_mode=WAL")  # writes the header: the settings stick
        finally:
            pre.close()

    def open(self) -> None:
        if self._conn is None:
            if self.max_bytes is not None:
                self._prepare_new_file()
            conn = open_sqlite(self.path)
            try:
                conn.execute("BEGIN")
                for stmt in _SQLITE_BATCH_SCHEMA:
                    conn.execute(stmt)
                conn.execute("COMMIT")
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                self._auto_vacuum = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
                if self.max_bytes is not None:
                    self._setup_cap(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _setup_cap(self, conn: sqlite3.Connection) -> None:
        assert self.max_bytes is not None
        # The WAL's share of the cap: checkpoint at that size and truncate back to it.
        self._wal_budget = min(WAL_BUDGET_MAX, self.max_bytes // 8)
        conn.execute(f"PRAGMA journal_size_limit={self._wal_budget}")
        conn.execute(f"PRAGMA wal_autocheckpoint={max(8, self._wal_budget // self._page_size)}")
        if self._auto_vacuum != 0:
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        if size <= VACUUM_CONVERT_MAX:  # an older, small file: convert it now (a moment)
            try:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
                self._auto_vacuum = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
            except sqlite3.Error as exc:
                log.debug("event log: could not convert %s to incremental vacuum: %s", self.path, exc)
        if self._auto_vacuum == 0:
            log.info("event log: %s predates incremental vacuum: space freed by retention and the size cap is "
                     "reused but not returned to the disk (convert it while the node is stopped: "
                     "sqlite3 %s 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM')", self.path, self.path)

    def write(self, envs: Sequence[Any], metrics: Sequence[Row]) -> None:
        if self._conn is None:
            self.open()
        c = self._conn
        assert c is not None
        special: list[dict[str, Any]] = []
        batch: Any = envs
        if envs:
            # (Each pass over a batch holds the GIL: as few as possible.)
            dicts = [e for e in envs if type(e) is dict]
            if not dicts:
                structs: Sequence[Any] = envs
            elif len(dicts) < len(envs):
                structs = [e for e in envs if type(e) is not dict]
            else:
                structs = []
            struct_types = {e.event_type for e in structs}
            special = [e for e in dicts if e["type"] in _SPECIAL]
            if not struct_types.isdisjoint(_SPECIAL):
                special += [struct_envelope(e) for e in structs if e.event_type in _SPECIAL]
            if dicts:  # membership envelopes have no id: give them one
                ids = {id(e): uuid.uuid4().hex for e in dicts if not e.get("event_id")}
                if ids:
                    batch = [{**e, "event_id": ids[id(e)]} if id(e) in ids else e for e in envs]
                    special = [{**e, "event_id": ids[id(e)]} if id(e) in ids else e for e in special]
            try:
                blob = _json_encode(batch)
            except (TypeError, ValueError, OverflowError):
                blob = b"[" + b",".join(_env_json(e) for e in batch) + b"]"
            now = datetime.now().isoformat()
            stamps = [e.get("timestamp") or now for e in dicts]
            if structs:
                epochs = [e.timestamp for e in structs]
                stamps += [iso_from_epoch(min(epochs)), iso_from_epoch(max(epochs))]
            types = json.dumps(sorted({e["type"] for e in dicts} | struct_types))
            sources = json.dumps(sorted({str(e.get("source_node")) for e in dicts} | {e.source_node for e in structs}))
        c.execute("BEGIN")
        try:
            if envs:
                c.execute("INSERT INTO mesh_event_batches (first_ts, last_ts, count, types, sources, events) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (min(stamps), max(stamps), len(batch), types, sources, blob.decode()))
            if special:
                c.executemany(_INSERT_ROW, [event_row(e) for e in special])
            if metrics:
                c.executemany("INSERT OR REPLACE INTO system_metrics VALUES (?, ?, ?, ?, ?)", metrics)
            if self.cursor_rows:
                c.executemany("INSERT OR REPLACE INTO delivery_cursor VALUES (?, ?, ?, ?)", self.cursor_rows)
                self.cursor_rows = []
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise

    def purge(self, cutoff: str, metrics_cutoff: str | None = None) -> int:
        c = self._conn
        if c is None:
            return 0
        n = 0
        cur = c.execute("DELETE FROM mesh_event_batches WHERE last_ts < ?", (cutoff,))
        n += max(cur.rowcount, 0)
        for table, cut in (("ritual_events", cutoff), ("system_metrics", max(cutoff, metrics_cutoff or cutoff))):
            while True:
                cur = c.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE timestamp < ? LIMIT ?)",
                    (cut, RETENTION_CHUNK),
                )
                n += max(cur.rowcount, 0)
                if cur.rowcount < RETENTION_CHUNK:
                    break
        if n:
            self._reclaim()
        return n

    # -- the size cap ----------------------------------------------------------------------

    def _used_bytes(self, c: sqlite3.Connection) -> int:
        pages = c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * self._page_size

    def file_bytes(self) -> int:
        """The database file and its WAL, on disk now."""
        total = 0
        for p in (self.path, Path(str(self.path) + "-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def enforce_cap(self, max_bytes: int) -> tuple[int, int, int]:
        c = self._conn
        if c is None:
            return 0, 0, 0
        budget = max(max_bytes - self._wal_budget, max_bytes // 2)
        used = self._used_bytes(c)
        if used <= budget:
            return 0, 0, self.file_bytes()
        target = max(int(budget * CAP_TARGET), budget - CAP_CHUNK_BYTES)
        events = metrics = 0
        while used > target:
            got = self._drop_oldest(c, used - target, used)
            if got is None:
                break
            events += got[0]
            metrics += got[1]
            used = self._used_bytes(c)
        # Pages freed under the budget are reused by the next batches (moving pages to
        # shrink the file, only to grow it again, would cost a write of each); only what
        # lies beyond the budget (a lowered cap) goes back to the disk.
        self._reclaim(budget // self._page_size)
        return events, metrics, self.file_bytes()

    def _drop_oldest(self, c: sqlite3.Connection, excess: int, used: int) -> tuple[int, int] | None:
        """Delete the oldest rows (about ``excess`` bytes, at most CAP_CHUNK_BYTES) in one
        transaction: the oldest batches and every row of the other tables up to their time;
        with no batches left, the oldest rows of the other tables.  None: nothing left.

        (The share of batches to delete is the share of bytes to free: reading the batches'
        sizes would read every batch's events.)"""
        want = min(max(excess, 1), CAP_CHUNK_BYTES)
        nbatches = int(c.execute("SELECT count(*) FROM mesh_event_batches").fetchone()[0])
        events = 0
        last_id: int | None = None
        cutoff: str | None = None
        if nbatches:
            k = min(nbatches, max(1, math.ceil(nbatches * want / max(used, 1))))
            last_id = int(c.execute("SELECT batch_id FROM mesh_event_batches ORDER BY batch_id LIMIT 1 OFFSET ?",
                                    (k - 1,)).fetchone()[0])
            n, cutoff = c.execute("SELECT sum(count), max(last_ts) FROM mesh_event_batches WHERE batch_id <= ?",
                                  (last_id,)).fetchone()
            events = int(n or 0)
        else:
            stamps = []
            for table in ("ritual_events", "system_metrics"):
                r = c.execute(f"SELECT timestamp FROM {table} ORDER BY timestamp LIMIT 1 OFFSET 999").fetchone()
                if r is None:  # fewer than 1000 rows: all of them
                    r = c.execute(f"SELECT max(timestamp) FROM {table}").fetchone()
                if r is not None and r[0] is not None:
                    stamps.append(r[0])
            if not stamps:
                return None
            cutoff = min(stamps)
        c.execute("BEGIN")
        try:
            if last_id is not None:
                c.execute("DELETE FROM mesh_event_batches WHERE batch_id <= ?", (last_id,))
            # Mesh events in the old table are copies of batch entries (counted there).
            c.execute("""DELETE FROM ritual_events WHERE timestamp <= ? AND metadata LIKE '{"mesh":1%'""", (cutoff,))
            events += max(c.execute("DELETE FROM ritual_events WHERE timestamp <= ?", (cutoff,)).rowcount, 0)
            metrics = max(c.execute("DELETE FROM system_metrics WHERE timestamp <= ?", (cutoff,)).rowcount, 0)
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        return events, metrics

    def _reclaim(self, keep_pages: int = 0) -> None:
        """Return freed pages to the disk (incremental vacuum) so the file shrinks to
        ``keep_pages`` at most (0: every free page goes), and checkpoint; a file
        without incremental vacuum reuses them instead."""
        c = self._conn
        if c is None:
            return
        if self._auto_vacuum == 2:
            free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
            if keep_pages:
                free = min(free, int(c.execute("PRAGMA page_count").fetchone()[0]) - keep_pages)
            if free > 0:  # (execute() would free one page per step)
                c.executescript(f"PRAGMA incremental_vacuum({free});")
                # The moved pages are in the WAL now: copy them back and empty it (waits
                # for readers, which are short), or the WAL would hold them until reused.
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                return
        c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def read_cursor(self) -> list[tuple[str, int, str, float]]:
        """The stored delivery cursor rows ([] when there are none)."""
        if str(self.path) == ":memory:" or not self.path.exists():
            return []
        try:
            return [tuple(r) for r in self._reader().execute(  # type: ignore[misc]
                "SELECT origin, done, ahead, at FROM delivery_cursor").fetchall()]
        except sqlite3.Error:
            self._local.conn = None
            return []

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _batches(self, since: str | None, until: str | None, types: list[str] | None, source: str | None,
                 ascending: bool, after: int | None, count: int) -> list[tuple[int, str, str]]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("last_ts >= ?")
            params.append(since)
        if until is not None:
            where.append("first_ts <= ?")
            params.append(until)
        if types:
            where.append("(" + " OR ".join("instr(types, ?) > 0" for _ in types) + ")")
            params.extend(json.dumps(t) for t in types)
        if source is not None:
            where.append("instr(sources, ?) > 0")
            params.append(json.dumps(source))
        if after is not None:
            where.append("batch_id > ?" if ascending else "batch_id < ?")
            params.append(after)
        sql = "SELECT batch_id, last_ts, events FROM mesh_event_batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY batch_id {'ASC' if ascending else 'DESC'} LIMIT ?"
        params.append(count)
        try:
            return list(self._reader().execute(sql, params).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "unable to open" in str(exc):
                self._local.conn = None
                return []
            raise

    @staticmethod
    def _filter(envs: list[dict[str, Any]], since: str | None, until: str | None, types: list[str] | None,
                source: str | None) -> list[dict[str, Any]]:
        tset = set(types) if types else None
        return [e for e in envs
                if (tset is None or e.get("type") in tset)
                and (source is None or e.get("source_node") == source)
                and (since is None or str(e.get("timestamp")) >= since)
                and (until is None or str(e.get("timestamp")) <= until)]

    def query(self, since: str | None, until: str | None, types: list[str] | None, source: str | None,
              limit: int, ascending: bool, after: Any = None) -> tuple[list[dict[str, Any]], Any]:
        if ascending:  # replay: the next batches after the cursor, in storage order
            out: list[dict[str, Any]] = []
            last = after
            while len(out) < limit:
                got = self._batches(since, until, types, source, True, last, _BATCHES_PER_READ)
                if not got:
                    break
                for bid, _, events in got:
                    out.extend(self._filter(_decode_batch(events), since, until, types, source))
                    last = bid
            return out, (last if last != after else None)  # None: nothing more to read
        # history: the newest ``limit`` events.  Batches come newest first; time ranges of
        # batches may overlap a little (clocks of different sources), so read on until
        # the next batch ends before the oldest event kept.
        chunks: list[list[dict[str, Any]]] = []
        total = 0
        cursor: int | None = None
        done = False
        while not done:
            got = self._batches(since, until, types, source, False, cursor, _BATCHES_PER_READ)
            if not got:
                break
            for bid, last_ts, events in got:
                if total >= limit:
                    newest = sorted((str(e["timestamp"]) for ch in chunks for e in ch), reverse=True)
                    if last_ts < newest[limit - 1]:
                        done = True
                        break
                sel = self._filter(_decode_batch(events), since, until, types, source)
                chunks.append(sel)
                total += len(sel)
                cursor = bid
        envs = [e for ch in reversed(chunks) for e in ch]  # storage order, oldest first
        envs.sort(key=lambda e: str(e["timestamp"]))  # stable: ties keep storage order
        return envs[-limit:] if limit > 0 else [], None

    def close(self) -> None:
        for conn in (self._conn, getattr(self._local, "conn", None)):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._conn = None
        self._local.conn = None


_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agents (
        agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
        recursion_depth INTEGER DEFAULT 0, entropy_level DOUBLE PRECISION DEFAULT 0.5,
        metadata TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ritual_events (
        event_id TEXT NOT NULL, "timestamp" TEXT NOT NULL, event_type TEXT NOT NULL,
        description TEXT NOT NULL, agent_id TEXT, metadata TEXT, severity TEXT DEFAULT 'INFO')""",
    'CREATE INDEX IF NOT EXISTS idx_ritual_events_timestamp ON ritual_events ("timestamp")',
    """CREATE TABLE IF NOT EXISTS system_metrics (
        metric_id TEXT PRIMARY KEY, "timestamp" TEXT NOT NULL, metric_name TEXT NOT NULL,
        metric_value DOUBLE PRECISION NOT NULL, metadata TEXT)""",
    'CREATE INDEX IF NOT EXISTS idx_system_metrics_timestamp ON system_metrics ("timestamp")',
    """CREATE TABLE IF NOT EXISTS configuration (
        key TEXT PRIMARY KEY, value TEXT NOT NULL, description TEXT, updated_at TEXT NOT NULL)""",
    # The delivery cursor (spiralfast/cursor.py), written with the batches.
    """CREATE TABLE IF NOT EXISTS delivery_cursor (
        origin TEXT PRIMARY KEY, done BIGINT NOT NULL, ahead TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)""",
)


def split_pg_url(url: str) -> tuple[str, str | None]:
    """``(dsn, schema)``: the ``schema`` query parameter (tables live in that schema,
    created if missing) is taken out of the URL asyncpg sees."""
    parts = urlsplit(url)
    q = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in q if k == "schema"), None)
    rest = [(k, v) for k, v in q if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def mask_url(url: str) -> str:
    """The URL without its secrets (``safetext.mask_secrets``: password, secret query parameters)."""
    from ..safetext import mask_secrets

    return mask_secrets(url)


class PostgresStore(Store):
    """The same tables in PostgreSQL, written with ``COPY`` (asyncpg).  The writer
    thread runs its own event loop for its connection; queries open their own."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = mask_url(url)
        self.dsn, self.schema = split_pg_url(url)
        if self.schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.schema):
            raise ValueError(f"bad schema name {self.schema!r}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None

    async def _connect(self) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=10)
        if self.schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(f'SET search_path TO "{self.schema}"')
        return conn

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def open(self) -> None:
        if self._conn is not None:
            return

        async def go() -> Any:
            conn = await self._connect()
            try:
                # Concurrent nodes creating the tables at once: serialise on a lock.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(7316002)")
                    for stmt in _PG_SCHEMA:
                        await conn.execute(stmt)
            except BaseException:
                await conn.close()
                raise
            return conn

        self._conn = self._run(go())

    def write(self, envs: Sequence[dict[str, Any]], metrics: Sequence[Row]) -> None:
        if self._conn is None:
            self.open()
        conn = self._conn
        events = [event_row(e) if type(e) is dict else _struct_row(e) for e in envs]
        cursor, self.cursor_rows = self.cursor_rows, []

        async def go() -> None:
            async with conn.transaction():
                if events:
                    await conn.copy_records_to_table("ritual_events", records=events, columns=EVENT_COLUMNS)
                if metrics:
                    await conn.copy_records_to_table("system_metrics", records=metrics, columns=METRIC_COLUMNS)
                if cursor:
                    await conn.executemany(
                        "INSERT INTO delivery_cursor VALUES ($1, $2, $3, $4) ON CONFLICT (origin) DO UPDATE "
                        "SET done = EXCLUDED.done, ahead = EXCLUDED.ahead, at = EXCLUDED.at", cursor)

        try:
            self._run(go())
        except BaseException:
            self._drop_conn()
            raise

    def read_cursor(self) -> list[tuple[str, int, str, float]]:
        """The stored delivery cursor rows, on a connection of its own (any thread)."""
        out: list[tuple[str, int, str, float]] = []

        async def go() -> None:
            conn = await self._connect()
            try:
                for r in await conn.fetch("SELECT origin, done, ahead, at FROM delivery_cursor"):
                    out.append((str(r[0]), int(r[1]), str(r[2]), float(r[3])))
            finally:
                await conn.close()

        def run() -> None:
            try:
                asyncio.run(go())
            except Exception as exc:  # noqa: BLE001 - no table yet, or the server is away: no cursor
                log.debug("event log: cannot read the delivery cursor from %s: %s", self.where, exc)

        t = threading.Thread(target=run, name="spiralfast-cursor-read", daemon=True)
        t.start()
        t.join(SYNC_TIMEOUT_S)
        return out

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                self._run(conn.close(timeout=2))

    def purge(self, cutoff: str, metrics_cutoff: str | None = None) -> int:
        if self._conn is None:
            return 0
        conn = self._conn

        async def go() -> int:
            n = 0
            for table, cut in (("ritual_events", cutoff), ("system_metrics", max(cutoff, metrics_cutoff or cutoff))):
                r = await conn.execute(f'DELETE FROM {table} WHERE "timestamp" < $1', cut)
                n += int(r.split()[-1])
            return n

        return int(self._run(go()))

    cap_every = PG_CAP_EVERY_S

    async def _estimate(self, conn: Any, table: str) -> tuple[int, int]:
        """``(live rows, estimated bytes)`` of one table: rows counted exactly while
        the statistics say there are few, else the statistics' count; bytes are rows
        times (the average size of the newest 1000 rows + PG_ROW_OVERHEAD)."""
        live = await conn.fetchval("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = $1 "
                                   "AND schemaname = current_schema()", table)
        live = int(live or 0)
        if live < PG_EXACT_COUNT_BELOW:
            live = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        if not live:
            return 0, 0
        avg = await conn.fetchval(f'SELECT avg(pg_column_size(t.*)) FROM (SELECT * FROM {table} '
                                  f'ORDER BY "timestamp" DESC LIMIT 1000) AS t')
        return live, int(live * (float(avg or 0) + PG_ROW_OVERHEAD))

    def enforce_cap(self, max_bytes: int) -> tuple[int, int, int]:
        if self._conn is None:
            return 0, 0, 0
        conn = self._conn
        tables = ("ritual_events", "system_metrics")

        async def go() -> tuple[int, int, int]:
            est = {t: await self._estimate(conn, t) for t in tables}
            total = sum(b for _, b in est.values())
            if total <= max_bytes:
                return 0, 0, total
            share = (total - max_bytes * CAP_TARGET) / total  # the oldest share of each table goes
            removed = {}
            for t in tables:
                live, _ = est[t]
                n = min(live, math.ceil(live * share))
                removed[t] = 0
                if n:
                    r = await conn.execute(f'DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} '
                                           f'ORDER BY "timestamp" LIMIT $1))', n)
                    removed[t] = int(r.split()[-1])
            return removed["ritual_events"], removed["system_metrics"], int(total * (1 - share))

        try:
            events, metrics, size = self._run(go())
            return int(events), int(metrics), int(size)
        except BaseException:
            self._drop_conn()
            raise

    def query(self, since: str | None, until: str | None, types: list[str] | None, source: str | None,
              limit: int, ascending: bool, after: Any = None) -> tuple[list[dict[str, Any]], Any]:
        where: list[str] = []
        params: list[Any] = []

        def p(v: Any) -> str:
            params.append(v)
            return f"${len(params)}"

        if since is not None:
            where.append(f'"timestamp" >= {p(since)}')
        if until is not None:
            where.append(f'"timestamp" <= {p(until)}')
        if types:
            where.append(f"event_type = ANY({p(list(types))}::text[])")
        if source is not None:
            where.append(f"agent_id = {p(source)}")
        if after is not None:
            ts, eid = p(after[0]), p(after[1])
            where.append(f'("timestamp", length(event_id), event_id) > ({ts}, length({eid}), {eid})')
        cols = ", ".join('"timestamp"' if c == "timestamp" else c for c in EVENT_COLUMNS)
        sql = f"SELECT {cols} FROM ritual_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        order = "ASC" if ascending else "DESC"
        # Ties in time: ids of one origin are "<origin>-<sequence>", so shorter first, then
        # by text, is sending order ("...-999" before "...-1000").
        sql += f' ORDER BY "timestamp" {order}, length(event_id) {order}, event_id {order} LIMIT {p(int(limit))}'

        async def go() -> list[Any]:
            import asyncpg

            conn = await self._connect()
            try:
                return list(await conn.fetch(sql, *params))
            except asyncpg.UndefinedTableError:
                return []
            finally:
                await conn.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            rows = asyncio.run(go())
        else:  # called on a loop's thread (``history()``): run the query on a helper thread
            with ThreadPoolExecutor(1) as ex:
                rows = ex.submit(asyncio.run, go()).result()
        if not ascending:
            rows.reverse()
        key = (rows[-1][1], rows[-1][0]) if rows else None
        return [row_envelope(*tuple(r)) for r in rows], key

    def close(self) -> None:
        self._drop_conn()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def open_store(path: str | None, url: str | None) -> Store:
    """The store for a config: PostgreSQL when ``url`` is set, else the SQLite file."""
    if url:
        return PostgresStore(url)
    if path:
        return SQLiteStore(path)
    raise ValueError("no persistence_path or persistence_url")


# -- the event log ---------------------------------------------------------------------


class _Stop:
    pass


class EventLog:
    """Persists a node's events (see the module docstring).

    :param mesh: the node; its config's ``persistence_path``/``persistence_url``,
        ``persist_events``, ``persist_retention_days``, ``persist_max_bytes``,
        ``persist_metrics_retention_hours`` and ``sync_interval`` are used.
    """

    def __init__(self, mesh: MeshCore, store: Store | None = None) -> None:
        self.mesh = mesh
        cfg = mesh.config
        self.store = store if store is not None else open_store(cfg.persistence_path, cfg.persistence_url)
        pe = cfg.persist_events
        self._all = pe == "all"
        self._types = set(MESH_EVENT_TYPES)
        if isinstance(pe, (list, tuple, set, frozenset)):
            self._types.update(str(getattr(t, "value", t)) for t in pe)
        self.retention_days = float(cfg.persist_retention_days)
        self.max_bytes: int | None = getattr(cfg, "persist_max_bytes", None)
        self.store.max_bytes = self.max_bytes
        self.metrics_retention_hours = float(getattr(cfg, "persist_metrics_retention_hours", 24.0))
        self.metrics_interval = float(getattr(cfg, "sync_interval", 5.0) or 5.0)
        self.metrics_flush_s = min(METRICS_FLUSH_S, 6 * self.metrics_interval)
        self.metrics_keyframe_s = min(METRICS_KEYFRAME_S, self.metrics_retention_hours * 3600.0 / 4)
        self._metric_values: dict[str, float] = {}  # the values as last stored
        self._keyframe_at: float | None = None
        self._metric_prefix = uuid.uuid4().hex[:12] + "-"
        self._metric_seq = 0
        self._buf: list[Any] = []  # envelopes (dicts) or wire events (schema.Event)
        #: The delivery cursor (spiralfast/cursor.py), fed and stored by the writer thread.
        self.cursor = Cursor(skip=[str(mesh.local_node.metadata.get("origin"))])
        self._cursor_ids: list[Any] = []  # events handed to handlers but not persisted: for the cursor
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while a batch of events is in the writer's hands: at most one is.
        self._writer_free = threading.Semaphore(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._qpool: ThreadPoolExecutor | None = None
        self._opened: Future[None] = Future()
        self._writable: asyncio.Event | None = None
        self.running = False
        # counters (written by one thread each; read anywhere)
        self.handed = 0  # events handed to the writer
        self.written = 0
        self.dropped = 0
        self.batches = 0
        self.last_batch = 0
        self.metrics_written = 0
        self.purged = 0
        self.samples = 0  # metric samples taken
        self.capped = 0  # events removed by the size cap
        self.capped_metrics = 0  # metric rows removed by the size cap
        self.size_bytes = 0  # the store's size at the last cap check
        self._cap_failing = False
        self.stalls = 0
        self.stall_seconds = 0.0
        self.in_flight = 0
        self.error: str | None = None
        self.failures = 0  # times the store went from writable to failing
        self._error_since = 0.0
        self._next_retry = 0.0

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
        self._queue.put(_Stop())
        if self._thread is not None:
            self._thread.join(SYNC_TIMEOUT_S * 6)
            self._thread = None

    # -- the loop side --------------------------------------------------------------------

    def record(self, env: Any) -> None:
        """Called on the loop for every event the node sends or receives: its envelope
        (a dict), or the wire event itself (``schema.Event``, cheaper: see
        :meth:`record_event`)."""
        if self._all or (env["type"] if type(env) is dict else env.event_type) in self._types:
            buf = self._buf
            buf.append(env)
            n = len(buf)
            if n + self.in_flight >= BATCH_MAX_EVENTS or (n >= HANDOFF_MIN_EVENTS and not self.in_flight):
                self._full()
        else:
            self._cursor_ids.append(env)  # not kept, but the delivery cursor moves past it

    def record_event(self, ev: Any) -> None:
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

    def _hand(self, buf: list[Any]) -> None:
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

    # -- the writer thread ----------------------------------------------------------------

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
            if isinstance(item, _Stop):
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

    def _cursor_rows(self, envs: list[Any], ids: list[Any], clean: bool) -> list[tuple[str, int, str, float]]:
        """The delivery cursor moved by what this batch (and the events not persisted,
        ``ids``) handed to the handlers: its changed rows and the meta row (on the writer)."""
        cur, wall = self.cursor, time.time()
        cur.note_ids([x.get("event_id") if type(x) is dict else getattr(x, "event_id", None)
                      for e in (envs, ids) for x in e], wall)
        return [*cur.take(), (CURSOR_META, 1 if clean else 0, "[]", wall)]

    def _write(self, envs: list[Any], metrics: list[Row], clean: bool = False) -> None:
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

    # -- metrics --------------------------------------------------------------------------

    def metric_values(self) -> dict[str, float]:
        """The node's figures now, by ``system_metrics`` name."""
        st = self.mesh.get_mesh_status()
        values: dict[str, float] = {}
        for k in ("connected_nodes", "uptime", "average_entropy", "total_recursion_depth"):
            v = st.get(k)
            if isinstance(v, (int, float)):
                values[k] = float(v)
        for k, v in (st.get("counters") or {}).items():
            if isinstance(v, (int, float)):
                values["counters." + k] = float(v)
        values["persistence.written"] = float(self.written)
        values["persistence.dropped"] = float(self.dropped)
        values["persistence.pending"] = float(len(self._buf) + self.in_flight)
        values["persistence.capped"] = float(self.capped)
        return {k: v for k, v in values.items() if math.isfinite(v)}

    def _rows(self, values: dict[str, float]) -> list[Row]:
        ts = datetime.now().isoformat()
        meta = json.dumps({"node_id": self.mesh.node_id})
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

    # -- reading ----------------------------------------------------------------------------

    def history(self, since: Any = None, until: Any = None, types: Any = None, source: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Stored envelopes, newest last (at most ``limit``, the newest ones).  Events
        recorded so far are committed first, so they are included.

        :param since: ISO time, ``datetime``, epoch seconds or ``"10m"`` (ago).
        :param until: the same, inclusive.
        :param types: an event type or an iterable of them.
        :param source: only events from this node.
        :raises ValueError: a bad time.
        """
        s, u, t = parse_time(since), parse_time(until), _types(types)
        self._sync()
        return self.store.query(s, u, t, source, int(limit), False)[0]

    async def history_async(self, since: Any = None, until: Any = None, types: Any = None,
                            source: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """:meth:`history` without blocking the loop (for observer queries)."""
        s, u, t = parse_time(since), parse_time(until), _types(types)
        await self._sync_async()
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool(), self.store.query, s, u, t, source, int(limit), False)
        return out[0]

    async def _sync_async(self) -> None:
        if not self.running:
            return
        self._tick()
        done = threading.Event()
        self._queue.put(done)
        await asyncio.get_running_loop().run_in_executor(self._pool(), done.wait, SYNC_TIMEOUT_S)
        if self._buf:  # the writer was busy at the tick: once more
            self._tick()
            done = threading.Event()
            self._queue.put(done)
            await asyncio.get_running_loop().run_in_executor(self._pool(), done.wait, SYNC_TIMEOUT_S)

    def _pool(self) -> ThreadPoolExecutor:
        if self._qpool is None:
            self._qpool = ThreadPoolExecutor(1, thread_name_prefix="spiralfast-eventlog-query")
        return self._qpool

    async def replay(self, since: Any, types: Any = None) -> int:
        """Re-deliver stored events (from ``since`` on, oldest first) to this node's
        handlers, each envelope marked ``"replayed": True``; coroutine handlers are
        awaited in order.  Returns how many stored events were replayed."""
        s, t = parse_time(since), _types(types)
        await self._sync_async()
        loop = asyncio.get_running_loop()
        count = 0
        after: Any = None
        while True:
            envs, after = await loop.run_in_executor(self._pool(), self.store.query, s, None, t, None,
                                                     REPLAY_PAGE, True, after)
            for env in envs:
                env["replayed"] = True
                count += 1
                for h in list(self.mesh.event_handlers.get(env["type"], ())):
                    try:
                        r = h(env)
                        if r is not None and inspect.isawaitable(r):
                            await r
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("replay: handler %r failed on %s", h, env.get("event_id"))
            if after is None:
                return count

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


_answers: set[asyncio.Task[Any]] = set()


def answer_history(mesh: Any, args: dict[str, Any], reply: Any) -> None:
    """Answer an observer's ``history`` query (args: since, until, types, source,
    limit) without blocking the loop: ``reply(ok, data)`` is called later."""
    eventlog = getattr(mesh, "eventlog", None)
    if eventlog is None:
        reply(False, "persistence is off on this node (start it with --db PATH or a persistence_url)")
        return

    async def go() -> None:
        try:
            envs = await eventlog.history_async(args.get("since"), args.get("until"), args.get("types") or None,
                                                args.get("source"), int(args.get("limit") or 1000))
        except (ValueError, TypeError) as exc:
            reply(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - the store failed: say so, keep running
            reply(False, f"cannot read the event log: {type(exc).__name__}: {exc}")
        else:
            reply(True, envs)

    task = asyncio.ensure_future(go())
    _answers.add(task)
    task.add_done_callback(_answers.discard)


def read_history(path: str | None = None, url: str | None = None, since: Any = None, until: Any = None,
                 types: Iterable[str] | str | None = None, source: str | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Read stored envelopes (newest last) straight from a store, without a node
    (``spiralfast mesh history --db PATH``).

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: a bad time.
    """
    if path is not None and not url and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"no such database: {path}")
    store = open_store(path, url)
    try:
        return store.query(parse_time(since), parse_time(until), _types(types), source, int(limit), False)[0]
    finally:
        store.close()


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
    "MESH_EVENT_TYPES",
    "BATCH_MAX_EVENTS",
    "BATCH_MAX_AGE_S",
]
