"""The old ``spiralcodex.persistence`` API on SQLite (or JSON files).

``PersistenceManager`` keeps agents, ritual events, system metrics and configuration
in the old tables (``agents``, ``ritual_events``, ``system_metrics``,
``configuration``), with the old column names, in the old library's file
``<data_dir>/codex.db``, so a tool written for the old database file (the old
``CodexDatabase``) reads rows written here, and the other way round.  A node's event log
(:mod:`spiralfast.store.eventlog`) writes mesh events into the same ``ritual_events`` table.

Files from spiralfast's earlier releases are migrated once, on open, with a log line:
``<data_dir>/spiralcodex.db`` becomes ``<data_dir>/codex.db`` (when no ``codex.db``
exists yet), and an ``agents`` table with the column ``agent_type`` gets the old
column name ``type``.

Timestamps are stored as local ISO-8601 text (``datetime.isoformat()``), as the old
library did; metadata and configuration values as JSON text.

This module holds the paths and the manager; the records are in
:mod:`spiralfast.store.persistence_records`, the backends in
:mod:`spiralfast.store.persistence_backends`, the SQLite opening in
:mod:`spiralfast.store.sqlite`.  The public path is :mod:`spiralfast.persistence`, which
also keeps the module-level manager (:func:`spiralfast.persistence.get_persistence`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from .persistence_backends import JSONPersistenceBackend, SQLitePersistenceBackend
from .persistence_records import AgentRecord, PersistenceBackend, RitualEventRecord, SystemMetricRecord
from .sqlite import checkpoint_file

log = logging.getLogger("spiralfast.persistence")

#: File name of the database inside ``data_dir`` (the old library's name).
DB_FILENAME = "codex.db"
#: The name spiralfast's earlier releases used; such a file is renamed to
#: :data:`DB_FILENAME` once (see :func:`resolve_db_path`).
EARLIER_DB_FILENAME = "spiralcodex.db"


def default_data_dir() -> Path:
    """``$SPIRALCODEX_DATA_DIR``, else ``$XDG_DATA_HOME/spiralfast`` (``~/.local/share/spiralfast``)."""
    env = os.environ.get("SPIRALCODEX_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "spiralfast"


def default_db_path(node_id: str) -> Path:
    """The event log file ``mesh start`` uses by default: ``<data dir>/<node_id>.db``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node_id) or "node"
    return default_data_dir() / f"{safe}.db"


def _companions(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def resolve_db_path(data_dir: str | Path) -> Path:
    """``<data_dir>/codex.db``; an earlier release's ``<data_dir>/spiralcodex.db`` is
    renamed to it first (once, logged) when no ``codex.db`` exists yet.

    The earlier file's write-ahead log is checkpointed into it before the rename.  While
    another process has it open (its ``-wal`` file is still there once ours is closed),
    or it cannot be read, it is used in place under its earlier name, with a warning
    (opening it then reports what is wrong with it); a later open renames it.
    """
    d = Path(data_dir)
    target = d / DB_FILENAME
    earlier = d / EARLIER_DB_FILENAME
    if target.exists() or not earlier.is_file():
        return target
    try:
        checkpoint_file(earlier)  # the last connection to close removes the -wal file
    except sqlite3.Error as exc:
        log.warning("persistence: %s (an earlier release's file) cannot be read (%s): not renamed to %s",
                    earlier, exc, DB_FILENAME)
        return earlier
    if _companions(earlier)[0].exists():
        log.warning("persistence: %s is open in another process: used in place this time; it becomes %s "
                    "when no other process has it open", earlier, target)
        return earlier
    try:
        os.link(earlier, target)  # fails if target appeared meanwhile (another process migrated it)
    except FileExistsError:
        return target
    except OSError:  # a file system without hard links
        try:
            os.rename(earlier, target)
        except OSError as exc:
            log.warning("persistence: %s could not be renamed to %s (%s): used in place", earlier, target, exc)
            return earlier
    else:
        os.unlink(earlier)
    for comp in _companions(earlier):
        with contextlib.suppress(FileNotFoundError):
            comp.unlink()
    log.warning("persistence: renamed %s to %s (the old library's file name; spiralfast's earlier releases "
                "used %s)", earlier, target, EARLIER_DB_FILENAME)
    return target


# -- the manager -----------------------------------------------------------------------


class PersistenceManager:
    """The old ``spiralcodex.persistence.PersistenceManager``.

    :param use_sqlite: SQLite file ``<data_dir>/codex.db`` (default; an earlier release's
        ``spiralcodex.db`` there is renamed to it once, see :func:`resolve_db_path`), else
        JSON files.
    :param data_dir: where the data lives (default: :func:`default_data_dir`).
    :raises sqlite3.Error: the database cannot be opened (read-only, not a database).
    """

    def __init__(self, use_sqlite: bool = True, data_dir: str | Path | None = None) -> None:
        self.use_sqlite = use_sqlite
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.backend: PersistenceBackend
        if use_sqlite:
            self.db_path: Path | None = resolve_db_path(self.data_dir)
            self.backend = SQLitePersistenceBackend(self.db_path)
        else:
            self.db_path = None
            self.backend = JSONPersistenceBackend(self.data_dir)

    def save_agent(self, agent_id: str | AgentRecord, name: str | None = None, agent_type: str | None = None,
                   status: str | None = None, recursion_depth: int = 0, entropy_level: float = 0.5,
                   metadata: dict[str, Any] | None = None, *, type: str | None = None) -> bool:
        """Insert or update an agent (``created_at`` is kept on update).  True when stored.

        The type is the third argument (or ``agent_type=`` / ``type=``); an
        :class:`AgentRecord` may be given instead of the fields.

        :raises TypeError: no name, type or status.
        """
        if isinstance(agent_id, AgentRecord):
            rec = agent_id
            agent_id, name, agent_type, status = rec.agent_id, rec.name, rec.type, rec.status
            recursion_depth, entropy_level, metadata = rec.recursion_depth, rec.entropy_level, rec.metadata
        if name is None:
            raise TypeError("save_agent: missing the agent's name")
        now = datetime.now()
        old = self.backend.get_agent(agent_id)
        new = AgentRecord(agent_id, name, type, status, recursion_depth, entropy_level, metadata or {},
                          old.created_at if old is not None else now, now, agent_type=agent_type)
        return self.backend.save_agent(new)

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent, or None."""
        return self.backend.get_agent(agent_id)

    def get_all_agents(self) -> list[AgentRecord]:
        """Every stored agent, oldest first."""
        return self.backend.get_all_agents()

    def delete_agent(self, agent_id: str) -> bool:
        """True when the agent existed and was deleted."""
        return self.backend.delete_agent(agent_id)

    def save_ritual_event(self, event_type: str, description: str, agent_id: str | None = None,
                          metadata: dict[str, Any] | None = None, severity: str = "INFO") -> bool:
        """Append one event to ``ritual_events`` (a new uuid4 id, now).  True when stored."""
        rec = RitualEventRecord(str(uuid.uuid4()), datetime.now(), event_type, description, agent_id,
                                metadata or {}, severity)
        return self.backend.save_ritual_event(rec)

    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]:
        """Newest first (``backend.get_ritual_events``)."""
        return self.backend.get_ritual_events(limit, event_type, since)

    def save_system_metric(self, metric_name: str, metric_value: float,
                           metadata: dict[str, Any] | None = None) -> bool:
        """Append one metric sample to ``system_metrics``."""
        rec = SystemMetricRecord(str(uuid.uuid4()), datetime.now(), metric_name, float(metric_value), metadata or {})
        return self.backend.save_system_metric(rec)

    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]:
        """Newest first."""
        return self.backend.get_system_metrics(metric_name, since, limit)

    def get_config(self, key: str, default: Any = None) -> Any:
        """The stored value (JSON-decoded), or ``default``."""
        return self.backend.get_config(key, default)

    def set_config(self, key: str, value: Any, description: str | None = None) -> bool:
        """Store a JSON-serialisable value under ``key``."""
        return self.backend.set_config(key, value, description)

    def cleanup_old_data(self, days_to_keep: int = 30) -> int:
        """Delete events and metrics older than ``days_to_keep`` days; returns rows deleted."""
        return self.backend.cleanup_old_data(days_to_keep)

    def close(self) -> None:
        """Close the database."""
        self.backend.close()


__all__ = [
    "DB_FILENAME",
    "EARLIER_DB_FILENAME",
    "PersistenceManager",
    "default_data_dir",
    "default_db_path",
    "resolve_db_path",
]
