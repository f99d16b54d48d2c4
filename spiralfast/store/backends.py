"""Which store a configuration means: PostgreSQL for a ``persistence_url``, else the SQLite file."""

from __future__ import annotations

from .base import Store
from .postgres import PostgresStore
from .sqlite_store import SQLiteStore


def open_store(path: str | None, url: str | None) -> Store:
    """The store for a config: PostgreSQL when ``url`` is set, else the SQLite file."""
    if url:
        return PostgresStore(url)
    if path:
        return SQLiteStore(path)
    raise ValueError("no persistence_path or persistence_url")


__all__ = ["open_store"]
