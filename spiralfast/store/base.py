"""The store ABC: where the event log's writer thread puts its batches.

Two stores implement it: :class:`spiralfast.store.sqlite_store.SQLiteStore` (one file,
WAL mode) and :class:`spiralfast.store.postgres.PostgresStore` (``COPY`` through
asyncpg).  :func:`spiralfast.store.backends.open_store` picks one for a configuration.
The constants here bound the work of one retention or size-cap pass, whatever the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, TypeAlias

from .rows import CursorRow, Recordable, Row

#: Rows deleted per retention transaction (keeps the write lock short).
RETENTION_CHUNK = 50_000
#: Past the size cap, the oldest rows are deleted until the log is under this fraction
#: of the cap (so the cap is not hit again by the next batch), or CAP_CHUNK_BYTES under
#: it when that is closer (a large cap: one pass stays one short transaction).
CAP_TARGET = 0.9
#: Most bytes of event batches deleted in one cap transaction (keeps the lock short).
CAP_CHUNK_BYTES = 32 * 1024 * 1024
#: Seconds a caller waits for the store (pending events committed, a cursor read).
SYNC_TIMEOUT_S = 10.0

#: Where a paged (``ascending``) query goes on: a SQLite batch id, or PostgreSQL's
#: ``(timestamp, event_id)`` of the last row; None: nothing more to read.
QueryKey: TypeAlias = "int | tuple[str, str] | None"


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
    cursor_rows: list[CursorRow] = []

    def read_cursor(self) -> list[CursorRow]:
        """The stored delivery cursor rows (a store without one: [])."""
        return []

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def write(self, envs: Sequence[Recordable], metrics: Sequence[Row]) -> None:
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
              limit: int, ascending: bool, after: QueryKey = None) -> tuple[list[dict[str, Any]], QueryKey]:
        """Envelopes in time order (newest ``limit`` when not ``ascending``, oldest
        after the key ``after`` when ``ascending``) and the key of the last one."""

    @abstractmethod
    def close(self) -> None: ...


__all__ = ["CAP_CHUNK_BYTES", "CAP_TARGET", "RETENTION_CHUNK", "SYNC_TIMEOUT_S", "QueryKey", "Store"]
