"""The event log's SQLite store: batches of events in one file (WAL mode).

Events are kept in ``mesh_event_batches``, one row per batch, its events a JSON array
of envelopes (or wire-form arrays) in arrival order: writing a batch is one encode and
one row, so a node persists hundreds of thousands of events per second; queries skip
batches by time range, types and sources.  The ``mesh_events`` view shows them as rows.
Membership changes, status changes, alerts and errors are also written to the old
``ritual_events`` table, row by row, for tools that read it.  The file is opened by the
shared SQLite layer (:mod:`spiralfast.store.sqlite`).

Bounded storage: past the size cap the oldest batches (and metric samples, in time
order) are deleted in short transactions; SQLite measures its used pages after every
commit, so the file and its WAL stay under the cap plus about one batch.  The next
batches reuse the freed pages; pages beyond the cap (a lowered cap) and those freed by
retention are returned to the disk (new files are created with
``auto_vacuum=INCREMENTAL``; an older file of at most :data:`VACUUM_CONVERT_MAX` bytes is
converted once at start, a larger one keeps its size and reuses the freed pages).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..wire.fastpath import iso_from_epoch
from .base import CAP_CHUNK_BYTES, CAP_TARGET, RETENTION_CHUNK, QueryKey, Store
from .rows import (
    SPECIAL_TYPES,
    CursorRow,
    Recordable,
    Row,
    decode_batch,
    env_json,
    event_row,
    json_encode,
    struct_envelope,
)
from .sqlite import open_reader, open_sqlite

if TYPE_CHECKING:
    from ..wire.schema import Event

log = logging.getLogger("spiralfast.store.eventlog")

#: The WAL's share of the SQLite cap: at most this, and at most 1/8 of the cap.
WAL_BUDGET_MAX = 8 * 1024 * 1024
#: An existing SQLite file without incremental vacuum is converted at start up to this size.
VACUUM_CONVERT_MAX = 64 * 1024 * 1024
#: Batches read per query step (history and replay).
_BATCHES_PER_READ = 8
_INSERT_ROW = "INSERT INTO ritual_events VALUES (?, ?, ?, ?, ?, ?, ?)"


class SQLiteStore(Store):
    """One SQLite file in WAL mode (readers never block the writer).

    Events are kept in ``mesh_event_batches`` (see :data:`EVENT_LOG_SCHEMA`; the
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

    def open(self) -> None:
        if self._conn is None:
            capped = self.max_bytes is not None
            conn = open_sqlite(self.path, event_log=True, incremental_vacuum=capped)
            try:
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                self._auto_vacuum = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
                if capped:
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

    def write(self, envs: Sequence[Recordable], metrics: Sequence[Row]) -> None:
        if self._conn is None:
            self.open()
        c = self._conn
        assert c is not None
        special: list[dict[str, Any]] = []
        batch: Any = envs
        if envs:
            # (Each pass over a batch holds the GIL: as few as possible.)
            dicts = cast("list[dict[str, Any]]", [e for e in envs if type(e) is dict])
            if not dicts:
                structs = cast("Sequence[Event]", envs)
            elif len(dicts) < len(envs):
                structs = cast("list[Event]", [e for e in envs if type(e) is not dict])
            else:
                structs = []
            struct_types = {e.event_type for e in structs}
            special = [e for e in dicts if e["type"] in SPECIAL_TYPES]
            if not struct_types.isdisjoint(SPECIAL_TYPES):
                special += [struct_envelope(e) for e in structs if e.event_type in SPECIAL_TYPES]
            if dicts:  # membership envelopes have no id: give them one
                ids = {id(e): uuid.uuid4().hex for e in dicts if not e.get("event_id")}
                if ids:
                    batch = [{**cast("dict[str, Any]", e), "event_id": ids[id(e)]} if id(e) in ids else e
                             for e in envs]
                    special = [{**e, "event_id": ids[id(e)]} if id(e) in ids else e for e in special]
            try:
                blob = json_encode(batch)
            except (TypeError, ValueError, OverflowError):
                blob = b"[" + b",".join(env_json(e) for e in batch) + b"]"
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

    def read_cursor(self) -> list[CursorRow]:
        """The stored delivery cursor rows ([] when there are none)."""
        if str(self.path) == ":memory:" or not self.path.exists():
            return []
        try:
            return [tuple(r) for r in self._reader().execute(
                "SELECT origin, done, ahead, at FROM delivery_cursor").fetchall()]
        except sqlite3.Error:
            self._local.conn = None
            return []

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_reader(self.path)
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
              limit: int, ascending: bool, after: QueryKey = None) -> tuple[list[dict[str, Any]], QueryKey]:
        if ascending:  # replay: the next batches after the cursor, in storage order
            out: list[dict[str, Any]] = []
            last = after if isinstance(after, int) else None
            while len(out) < limit:
                got = self._batches(since, until, types, source, True, last, _BATCHES_PER_READ)
                if not got:
                    break
                for bid, _, events in got:
                    out.extend(self._filter(decode_batch(events), since, until, types, source))
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
                sel = self._filter(decode_batch(events), since, until, types, source)
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


__all__ = ["SQLiteStore", "VACUUM_CONVERT_MAX", "WAL_BUDGET_MAX"]
