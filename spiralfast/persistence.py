"""The old ``spiralcodex.persistence`` API (a public import path; the code is in :mod:`spiralfast.store`).

``PersistenceManager`` keeps agents, ritual events, system metrics and configuration
in the old tables, with the old column names, in the old library's file
``<data_dir>/codex.db`` (see :mod:`spiralfast.store.persistence`); the SQLite opening
(WAL mode, file mode 0600, the schema) is the event store's one SQLite layer
(:mod:`spiralfast.store.sqlite`), shared with the node's event log.

This module re-exports that API and keeps the module-level manager of
:func:`get_persistence` (``compat.install()`` makes ``spiralcodex.persistence`` this module).
"""

from __future__ import annotations

import threading

from .store.persistence import (
    DB_FILENAME,
    EARLIER_DB_FILENAME,
    PersistenceManager,
    default_data_dir,
    default_db_path,
    resolve_db_path,
)
from .store.persistence_backends import JSONPersistenceBackend, SQLitePersistenceBackend
from .store.persistence_records import AgentRecord, PersistenceBackend, RitualEventRecord, SystemMetricRecord
from .store.sqlite import AGENT_COLUMNS, BUSY_TIMEOUT_S, SQLITE_SCHEMA, open_sqlite, private_file

_persistence_manager: PersistenceManager | None = None
_manager_lock = threading.Lock()


def get_persistence() -> PersistenceManager:
    """The module-level manager (created with the defaults on first use)."""
    global _persistence_manager
    with _manager_lock:
        if _persistence_manager is None:
            _persistence_manager = PersistenceManager()
        return _persistence_manager


__all__ = [
    "AgentRecord",
    "RitualEventRecord",
    "SystemMetricRecord",
    "PersistenceBackend",
    "SQLitePersistenceBackend",
    "JSONPersistenceBackend",
    "PersistenceManager",
    "get_persistence",
    "resolve_db_path",
    "DB_FILENAME",
    "EARLIER_DB_FILENAME",
    "AGENT_COLUMNS",
    "BUSY_TIMEOUT_S",
    "SQLITE_SCHEMA",
    "default_data_dir",
    "default_db_path",
    "open_sqlite",
    "private_file",
]
