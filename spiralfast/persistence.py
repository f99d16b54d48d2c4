"""The old ``spiralcodex.persistence`` API on SQLite (or JSON files).

``PersistenceManager`` keeps agents, ritual events, system metrics and configuration
in the old tables (``agents``, ``ritual_events``, ``system_metrics``,
``configuration``), with the old column layouts, so a tool written for the old
database file reads rows written here, and the other way round.  A node's event log
(:mod:`spiralfast.eventlog`) writes mesh events into the same ``ritual_events`` table.

Timestamps are stored as local ISO-8601 text (``datetime.isoformat()``), as the old
library did; metadata and configuration values as JSON text.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("spiralfast.persistence")

#: File name of the database inside ``data_dir``.
DB_FILENAME = "spiralcodex.db"
#: Seconds a writer waits on a database another process holds locked (the node's
#: event log and a ``PersistenceManager`` may share one file).
BUSY_TIMEOUT_S = 10.0

#: The old table layouts (``CREATE ... IF NOT EXISTS``: an old file is used as is).
SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agents (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        agent_type TEXT NOT NULL,
        status TEXT NOT NULL,
        recursion_depth INTEGER DEFAULT 0,
        entropy_level REAL DEFAULT 0.5,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata TEXT
    )""",
    # event_id is not a PRIMARY KEY here: a unique index on it would cost a third
    # of the event log's write rate; ids are unique by construction (uuid4, or the
    # mesh's origin-prefixed ids).
    """CREATE TABLE IF NOT EXISTS ritual_events (
        event_id TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        event_type TEXT NOT NULL,
        description TEXT NOT NULL,
        agent_id TEXT,
        metadata TEXT,
        severity TEXT DEFAULT 'INFO'
    )""",
    "CREATE INDEX IF NOT EXISTS idx_ritual_events_timestamp ON ritual_events(timestamp)",
    """CREATE TABLE IF NOT EXISTS system_metrics (
        metric_id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL,
        metric_name TEXT NOT NULL,
        metric_value REAL NOT NULL,
        metadata TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_system_metrics_timestamp ON system_metrics(timestamp)",
    """CREATE TABLE IF NOT EXISTS configuration (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        description TEXT,
        updated_at TEXT NOT NULL
    )""",
)


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


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _loads(text: str | None) -> Any:
    if text is None or text == "":
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now()


# -- records (the old record types) ----------------------------------------------------


@dataclass
class AgentRecord:
    """One row of ``agents``."""

    agent_id: str
    name: str
    agent_type: str
    status: str
    recursion_depth: int = 0
    entropy_level: float = 0.5
    created_at: datetime = field(default_factory=datetime.now)
    updated_at: datetime = field(default_factory=datetime.now)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d


@dataclass
class RitualEventRecord:
    """One row of ``ritual_events``."""

    event_id: str
    timestamp: datetime
    event_type: str
    description: str
    agent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: str = "INFO"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat()
        return d


@dataclass
class SystemMetricRecord:
    """One row of ``system_metrics``."""

    metric_id: str
    timestamp: datetime
    metric_name: str
    metric_value: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat()
        return d


# -- backends --------------------------------------------------------------------------


class PersistenceBackend(ABC):
    """What a storage backend offers ``PersistenceManager``."""

    @abstractmethod
    def save_agent(self, agent: AgentRecord) -> bool: ...

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    @abstractmethod
    def get_all_agents(self) -> list[AgentRecord]: ...

    @abstractmethod
    def delete_agent(self, agent_id: str) -> bool: ...

    @abstractmethod
    def save_ritual_event(self, event: RitualEventRecord) -> bool: ...

    @abstractmethod
    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]: ...

    @abstractmethod
    def save_system_metric(self, metric: SystemMetricRecord) -> bool: ...

    @abstractmethod
    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]: ...

    @abstractmethod
    def get_config(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set_config(self, key: str, value: Any, description: str | None = None) -> bool: ...

    @abstractmethod
    def cleanup_old_data(self, days_to_keep: int = 30) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release the backend's resources (idempotent)."""


def open_sqlite(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a database file in WAL mode with the old tables.

    :raises sqlite3.Error: the file cannot be opened or written (read-only, full disk).
    :raises OSError: its directory cannot be created.
    """
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA page_size=8192")  # fewer page writes per batch (new files only)
        conn.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints only: a power cut may lose the last
        # commits, a crashed process (kill -9) loses nothing that was committed.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN")
        for stmt in SQLITE_SCHEMA:
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


class SQLitePersistenceBackend(PersistenceBackend):
    """The old tables in one SQLite file (WAL mode; safe to share with a running node).

    :param db_path: the database file (created with its directory when missing).
    """

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_sqlite(self.db_path)

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("persistence backend is closed")
        return self._conn

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                return self._c().execute(sql, params).rowcount
            except sqlite3.Error as exc:
                log.error("persistence: write to %s failed: %s", self.db_path, exc)
                return -1

    def save_agent(self, agent: AgentRecord) -> bool:
        return self._write(
            "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent.agent_id, agent.name, agent.agent_type, agent.status, int(agent.recursion_depth),
             float(agent.entropy_level), agent.created_at.isoformat(), agent.updated_at.isoformat(),
             _dumps(agent.metadata)),
        ) > 0

    @staticmethod
    def _agent(row: tuple[Any, ...]) -> AgentRecord:
        return AgentRecord(row[0], row[1], row[2], row[3], int(row[4] or 0),
                           float(row[5] if row[5] is not None else 0.5),
                           _parse_dt(row[6]), _parse_dt(row[7]), _loads(row[8]))

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            row = self._c().execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return self._agent(row) if row is not None else None

    def get_all_agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._c().execute("SELECT * FROM agents ORDER BY created_at").fetchall()
        return [self._agent(r) for r in rows]

    def delete_agent(self, agent_id: str) -> bool:
        return self._write("DELETE FROM agents WHERE agent_id = ?", (agent_id,)) > 0

    def save_ritual_event(self, event: RitualEventRecord) -> bool:
        return self._write(
            "INSERT INTO ritual_events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, event.timestamp.isoformat(), event.event_type, event.description,
             event.agent_id, _dumps(event.metadata), event.severity),
        ) > 0

    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]:
        """Newest first, like the old backend."""
        sql = "SELECT event_id, timestamp, event_type, description, agent_id, metadata, severity FROM ritual_events"
        where: list[str] = []
        params: list[Any] = []
        if event_type is not None:
            where.append("event_type = ?")
            params.append(event_type)
        if since is not None:
            where.append("timestamp >= ?")
            params.append(since.isoformat())
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp DESC LIMIT ?"
        params.append(int(limit))
        with self._lock:
            rows = self._c().execute(sql, params).fetchall()
        return [RitualEventRecord(r[0], _parse_dt(r[1]), r[2], r[3], r[4], _loads(r[5]), r[6] or "INFO") for r in rows]

    def save_system_metric(self, metric: SystemMetricRecord) -> bool:
        return self._write(
            "INSERT OR REPLACE INTO system_metrics VALUES (?, ?, ?, ?, ?)",
            (metric.metric_id, metric.timestamp.isoformat(), metric.metric_name, float(metric.metric_value),
             _dumps(metric.metadata)),
        ) > 0

    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]:
        """Newest first."""
        sql = "SELECT metric_id, timestamp, metric_name, metric_value, metadata FROM system_metrics"
        where: list[str] = []
        params: list[Any] = []
        if metric_name is not None:
            where.append("metric_name = ?")
            params.append(metric_name)
        if since is not None:
            where.append("timestamp >= ?")
            params.append(since.isoformat())
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp DESC LIMIT ?"
        params.append(int(limit))
        with self._lock:
            rows = self._c().execute(sql, params).fetchall()
        return [SystemMetricRecord(r[0], _parse_dt(r[1]), r[2], float(r[3]), _loads(r[4])) for r in rows]

    def get_config(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._c().execute("SELECT value FROM configuration WHERE key = ?", (key,)).fetchone()
        return _loads(row[0]) if row is not None else default

    def set_config(self, key: str, value: Any, description: str | None = None) -> bool:
        return self._write(
            "INSERT OR REPLACE INTO configuration VALUES (?, ?, ?, ?)",
            (key, _dumps(value), description, datetime.now().isoformat()),
        ) > 0

    def cleanup_old_data(self, days_to_keep: int = 30) -> int:
        """Delete ritual events and metrics older than ``days_to_keep`` days; returns rows deleted."""
        cutoff = (datetime.now() - timedelta(days=days_to_keep)).isoformat()
        n = 0
        for sql in ("DELETE FROM ritual_events WHERE timestamp < ?", "DELETE FROM system_metrics WHERE timestamp < ?"):
            r = self._write(sql, (cutoff,))
            n += max(r, 0)
        return n

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class JSONPersistenceBackend(PersistenceBackend):
    """The same records in JSON files (``use_sqlite=False``): for small, single-process use.

    :param data_dir: folder of ``agents.json``, ``ritual_events.json``,
        ``system_metrics.json`` and ``configuration.json``.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _load(self, name: str, empty: Any) -> Any:
        p = self.data_dir / f"{name}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return empty

    def _save(self, name: str, obj: Any) -> bool:
        p = self.data_dir / f"{name}.json"
        tmp = p.with_suffix(".json.tmp")
        try:
            tmp.write_text(_dumps(obj))
            os.replace(tmp, p)
            return True
        except OSError as exc:
            log.error("persistence: write to %s failed: %s", p, exc)
            return False

    def save_agent(self, agent: AgentRecord) -> bool:
        with self._lock:
            agents = self._load("agents", {})
            agents[agent.agent_id] = agent.to_dict()
            return self._save("agents", agents)

    @staticmethod
    def _agent(d: dict[str, Any]) -> AgentRecord:
        return AgentRecord(d["agent_id"], d["name"], d["agent_type"], d["status"], int(d.get("recursion_depth", 0)),
                           float(d.get("entropy_level", 0.5)), _parse_dt(d.get("created_at")),
                           _parse_dt(d.get("updated_at")), d.get("metadata") or {})

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            d = self._load("agents", {}).get(agent_id)
        return self._agent(d) if d else None

    def get_all_agents(self) -> list[AgentRecord]:
        with self._lock:
            return [self._agent(d) for d in self._load("agents", {}).values()]

    def delete_agent(self, agent_id: str) -> bool:
        with self._lock:
            agents = self._load("agents", {})
            if agents.pop(agent_id, None) is None:
                return False
            return self._save("agents", agents)

    def save_ritual_event(self, event: RitualEventRecord) -> bool:
        with self._lock:
            events = self._load("ritual_events", [])
            events.append(event.to_dict())
            return self._save("ritual_events", events)

    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]:
        with self._lock:
            events = self._load("ritual_events", [])
        out = [RitualEventRecord(e["event_id"], _parse_dt(e["timestamp"]), e["event_type"], e["description"],
                                 e.get("agent_id"), e.get("metadata") or {}, e.get("severity", "INFO")) for e in events]
        if event_type is not None:
            out = [e for e in out if e.event_type == event_type]
        if since is not None:
            out = [e for e in out if e.timestamp >= since]
        out.sort(key=lambda e: e.timestamp, reverse=True)
        return out[: int(limit)]

    def save_system_metric(self, metric: SystemMetricRecord) -> bool:
        with self._lock:
            metrics = self._load("system_metrics", [])
            metrics.append(metric.to_dict())
            return self._save("system_metrics", metrics)

    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]:
        with self._lock:
            metrics = self._load("system_metrics", [])
        out = [SystemMetricRecord(m["metric_id"], _parse_dt(m["timestamp"]), m["metric_name"], float(m["metric_value"]),
                                  m.get("metadata") or {}) for m in metrics]
        if metric_name is not None:
            out = [m for m in out if m.metric_name == metric_name]
        if since is not None:
            out = [m for m in out if m.timestamp >= since]
        out.sort(key=lambda m: m.timestamp, reverse=True)
        return out[: int(limit)]

    def get_config(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._load("configuration", {}).get(key)
        return entry["value"] if entry is not None else default

    def set_config(self, key: str, value: Any, description: str | None = None) -> bool:
        with self._lock:
            cfg = self._load("configuration", {})
            cfg[key] = {"value": value, "description": description, "updated_at": datetime.now().isoformat()}
            return self._save("configuration", cfg)

    def cleanup_old_data(self, days_to_keep: int = 30) -> int:
        cutoff = (datetime.now() - timedelta(days=days_to_keep)).isoformat()
        n = 0
        with self._lock:
            for name in ("ritual_events", "system_metrics"):
                rows = self._load(name, [])
                keep = [r for r in rows if str(r.get("timestamp", "")) >= cutoff]
                if len(keep) != len(rows):
                    n += len(rows) - len(keep)
                    self._save(name, keep)
        return n


# -- the manager -----------------------------------------------------------------------


class PersistenceManager:
    """The old ``spiralcodex.persistence.PersistenceManager``.

    :param use_sqlite: SQLite file ``<data_dir>/spiralcodex.db`` (default), else JSON files.
    :param data_dir: where the data lives (default: :func:`default_data_dir`).
    :raises sqlite3.Error: the database cannot be opened (read-only, not a database).
    """

    def __init__(self, use_sqlite: bool = True, data_dir: str | Path | None = None) -> None:
        self.use_sqlite = use_sqlite
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.backend: PersistenceBackend
        if use_sqlite:
            self.db_path: Path | None = self.data_dir / DB_FILENAME
            self.backend = SQLitePersistenceBackend(self.db_path)
        else:
            self.db_path = None
            self.backend = JSONPersistenceBackend(self.data_dir)

    def save_agent(self, agent_id: str, name: str, agent_type: str, status: str, recursion_depth: int = 0,
                   entropy_level: float = 0.5, metadata: dict[str, Any] | None = None) -> bool:
        """Insert or update an agent (``created_at`` is kept on update).  True when stored."""
        now = datetime.now()
        old = self.backend.get_agent(agent_id)
        rec = AgentRecord(agent_id, name, agent_type, status, recursion_depth, entropy_level,
                          old.created_at if old is not None else now, now, metadata or {})
        return self.backend.save_agent(rec)

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
    "default_data_dir",
    "default_db_path",
    "open_sqlite",
]
