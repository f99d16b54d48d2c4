"""The event log's PostgreSQL store: the old tables, written with ``COPY`` (asyncpg).

Every event is one ``ritual_events`` row (:func:`spiralfast.store.rows.event_row`);
metric samples go to ``system_metrics`` and the delivery cursor to ``delivery_cursor``,
all in one transaction per batch.  The writer thread runs its own event loop for its
connection; queries open their own.  The ``schema`` query parameter of the URL puts the
tables in that schema (created if missing).

Size cap: PostgreSQL estimates the live bytes (rows counted, or the statistics'
live-row count on large tables, times their average size plus index overhead) every
:data:`PG_CAP_EVERY_S`; its freed space is reused after autovacuum, not returned to the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import CAP_TARGET, SYNC_TIMEOUT_S, QueryKey, Store
from .rows import (
    EVENT_COLUMNS,
    METRIC_COLUMNS,
    CursorRow,
    Recordable,
    Row,
    event_row,
    row_envelope,
    struct_row,
)

if TYPE_CHECKING:
    from asyncpg import Connection

log = logging.getLogger("spiralfast.store.eventlog")

#: Seconds between PostgreSQL size estimates.
PG_CAP_EVERY_S = 30.0
#: PostgreSQL bytes per row on top of the row's own (tuple header, line pointer, index entries).
PG_ROW_OVERHEAD = 100
#: Below this many live rows (statistics), PostgreSQL tables are counted exactly.
PG_EXACT_COUNT_BELOW = 200_000

_T = TypeVar("_T")

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
    # The delivery cursor (spiralfast/store/cursor.py), written with the batches.
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
        self._conn: Connection | None = None

    async def _connect(self) -> Connection:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=10)
        if self.schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(f'SET search_path TO "{self.schema}"')
        return conn

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def open(self) -> None:
        if self._conn is not None:
            return

        async def go() -> Connection:
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

    def write(self, envs: Sequence[Recordable], metrics: Sequence[Row]) -> None:
        if self._conn is None:
            self.open()
        conn = self._conn
        assert conn is not None
        events = [event_row(e) if isinstance(e, dict) else struct_row(e) for e in envs]
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

    def read_cursor(self) -> list[CursorRow]:
        """The stored delivery cursor rows, on a connection of its own (any thread)."""
        out: list[CursorRow] = []

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

    async def _estimate(self, conn: Connection, table: str) -> tuple[int, int]:
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
              limit: int, ascending: bool, after: QueryKey = None) -> tuple[list[dict[str, Any]], QueryKey]:
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
        if isinstance(after, tuple):
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


__all__ = ["PostgresStore", "mask_url", "split_pg_url", "PG_CAP_EVERY_S"]
