"""The old ``spiralcodex.persistence`` API on SQLite (or JSON files).

``PersistenceManager`` keeps agents, ritual events, system metrics and configuration
in the old tables (``agents``, ``ritual_events``, ``system_metrics``,
``configuration``), with the old column names, in the old library's file
``<data_dir>/codex.db``, so a tool written for the old database file (the old
``CodexDatabase``) reads rows written here, and the other way round.  A node's event log
(:mod:`spiralfast.eventlog`) writes mesh events into the same ``ritual_events`` table.

Files from spiralfast's earlier releases are migrated once, on open, with a log line:
``<data_dir>/spiralcodex.db`` becomes ``<data_dir>/codex.db`` (when no ``codex.db``
exists yet), and an ``agents`` table with the column ``agent_type`` gets the old
column name ``type``.

Timestamps are stored as local ISO-8601 text (``datetime.isoformat()``), as the old
library did; metadata and configuration values as JSON text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("spiralfast.persistence")

#: File name of the database inside ``data_dir`` (the old library's name).
DB_FILENAME = "codex.db"
#: The name spiralfast's earlier releases used; such a file is renamed to
#: :data:`DB_FILENAME` once (see :func:`resolve_db_path`).
EARLIER_DB_FILENAME = "spiralcodex.db"
#: The columns of ``agents``, in the old order (also :class:`AgentRecord`'s fields).
AGENT_COLUMNS = ("agent_id", "name", "type", "status", "recursion_depth", "entropy_level", "metadata",
                 "created_at", "updated_at")
#: Seconds a writer waits on a database another process holds locked (the node's
#: event log and a ``PersistenceManager`` may share one file).
BUSY_TIMEOUT_S = 10.0

_AGENTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        recursion_depth INTEGER DEFAULT 0,
        entropy_level REAL DEFAULT 0.5,
        metadata TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )"""

#: The old table layouts (``CREATE ... IF NOT EXISTS``: an old file is used as is).
SQLITE_SCHEMA = (
    _AGENTS_TABLE.format(name="agents"),
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


_AGENT_COLS = ", ".join(AGENT_COLUMNS)


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


@dataclass(init=False)
class AgentRecord:
    """One row of ``agents``: the old record, fields in the old order.

    ``agent_type`` (the name spiralfast's earlier releases used) is an alias of
    ``type``: a read/write property, and accepted as a keyword by the constructor
    and by :meth:`from_dict`.

    :raises TypeError: no type (or two different ones), or no status.
    """

    agent_id: str
    name: str
    type: str
    status: str
    recursion_depth: int
    entropy_level: float
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def __init__(
        self,
        agent_id: str,
        name: str,
        type: str | None = None,
        status: str | None = None,
        recursion_depth: int = 0,
        entropy_level: float = 0.5,
        metadata: dict[str, Any] | None = None,
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
        *,
        agent_type: str | None = None,
    ) -> None:
        if type is None:
            type = agent_type
        elif agent_type is not None and agent_type != type:
            raise TypeError(f"AgentRecord: type={type!r} and agent_type={agent_type!r} disagree (agent_type is "
                            "the other name of type: give one)")
        if type is None:
            raise TypeError("AgentRecord: missing the agent's type (type=..., or agent_type=...)")
        if status is None:
            raise TypeError("AgentRecord: missing the agent's status")
        now = datetime.now()
        self.agent_id = agent_id
        self.name = name
        self.type = type
        self.status = status
        self.recursion_depth = recursion_depth
        self.entropy_level = entropy_level
        self.metadata = metadata if metadata is not None else {}
        self.created_at = created_at if created_at is not None else now
        self.updated_at = updated_at if updated_at is not None else now

    @property
    def agent_type(self) -> str:
        """The agent's type (alias of :attr:`type`)."""
        return self.type

    @agent_type.setter
    def agent_type(self, value: str) -> None:
        self.type = value

    def to_dict(self) -> dict[str, Any]:
        """The old dict shape: the fields in order, times as ISO text."""
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentRecord:
        """A record from :meth:`to_dict`'s shape (``agent_type`` is read for ``type`` too;
        missing numbers and times take the defaults).

        :raises KeyError: no ``agent_id``, ``name`` or ``status``.
        :raises TypeError: no type.
        """
        return cls(
            str(d["agent_id"]), str(d["name"]), d.get("type", d.get("agent_type")), str(d["status"]),
            int(d.get("recursion_depth") or 0),
            float(d["entropy_level"]) if d.get("entropy_level") is not None else 0.5,
            _loads(d["metadata"]) if isinstance(d.get("metadata"), str) else (d.get("metadata") or {}),
            _parse_dt(d["created_at"]) if d.get("created_at") is not None else None,
            _parse_dt(d["updated_at"]) if d.get("updated_at") is not None else None,
        )


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RitualEventRecord:
        """A record from :meth:`to_dict`'s shape."""
        return cls(str(d["event_id"]), _parse_dt(d["timestamp"]), str(d["event_type"]), str(d["description"]),
                   d.get("agent_id"), d.get("metadata") or {}, d.get("severity") or "INFO")


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SystemMetricRecord:
        """A record from :meth:`to_dict`'s shape."""
        return cls(str(d["metric_id"]), _parse_dt(d["timestamp"]), str(d["metric_name"]), float(d["metric_value"]),
                   d.get("metadata") or {})


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


def private_file(path: str | Path) -> None:
    """Make the database file at ``path`` readable by its owner only (0600), creating it
    empty if it does not exist: events and state are nobody else's business.  SQLite
    gives its ``-wal`` and ``-shm`` files the database file's mode; those that exist
    already (and a file of an earlier release) are tightened too.  Files of another
    owner are left alone (chmod is refused), as are ``:memory:`` and special files."""
    p = Path(path)
    if str(p) == ":memory:":
        return
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
    except OSError:
        return  # not writable: sqlite3 says why when it opens it
    for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm"), Path(f"{p}-journal")):
        try:
            st = f.stat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(f, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError:
            pass


def open_sqlite(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed, mode 0600: ``private_file``) a database file in WAL mode
    with the old tables.

    :raises sqlite3.Error: the file cannot be opened or written (read-only, full disk).
    :raises OSError: its directory cannot be created.
    """
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
        private_file(p)
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
        if _agents_need_migration(conn):
            _migrate_agents(conn, p)
    except BaseException:
        conn.close()
        raise
    return conn


def _agent_columns(conn: sqlite3.Connection) -> list[str]:
    return [str(r[1]) for r in conn.execute("PRAGMA table_info(agents)")]


def _agents_need_migration(conn: sqlite3.Connection) -> bool:
    cols = _agent_columns(conn)
    return "agent_type" in cols and "type" not in cols


def _migrate_agents(conn: sqlite3.Connection, path: Path) -> None:
    """Rebuild an ``agents`` table of an earlier spiralfast release (column
    ``agent_type``, ``metadata`` last) in the old layout, rows kept, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _agents_need_migration(conn):  # another process did it meanwhile
            conn.execute("COMMIT")
            return
        n = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS agents_migrating")
        conn.execute(_AGENTS_TABLE.format(name="agents_migrating"))
        conn.execute(f"INSERT INTO agents_migrating ({_AGENT_COLS}) SELECT agent_id, name, agent_type, status, "
                     "recursion_depth, entropy_level, metadata, created_at, updated_at FROM agents")
        conn.execute("DROP TABLE agents")
        conn.execute("ALTER TABLE agents_migrating RENAME TO agents")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.warning("persistence: %s: table agents migrated to the old column names (agent_type -> type), "
                "%d rows kept", path, n)


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
        conn = sqlite3.connect(str(earlier), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()  # the last connection to close removes the -wal file
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


class SQLitePersistenceBackend(PersistenceBackend):
    """The old tables in one SQLite file (WAL mode; safe to share with a running node).

    :param db_path: the database file (created with its directory when missing).
    """

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = open_sqlite(self.db_path)
        except sqlite3.Error as exc:
            raise type(exc)(f"{self.db_path}: {exc}") from exc

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
            f"INSERT OR REPLACE INTO agents ({_AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent.agent_id, agent.name, agent.type, agent.status, int(agent.recursion_depth),
             float(agent.entropy_level), _dumps(agent.metadata), agent.created_at.isoformat(),
             agent.updated_at.isoformat()),
        ) > 0

    @staticmethod
    def _agent(row: tuple[Any, ...]) -> AgentRecord:
        return AgentRecord(row[0], row[1], row[2], row[3], int(row[4] or 0),
                           float(row[5] if row[5] is not None else 0.5),
                           _loads(row[6]), _parse_dt(row[7]), _parse_dt(row[8]))

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            row = self._c().execute(f"SELECT {_AGENT_COLS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return self._agent(row) if row is not None else None

    def get_all_agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._c().execute(f"SELECT {_AGENT_COLS} FROM agents ORDER BY created_at").fetchall()
        return [self._agent(r) for r in rows]

    def delete_agent(self, agent_id: str) -> bool:
        return self._write("DELETE FROM agents WHERE agent_id = ?", (agent_id,)) > 0

    def save_ritual_event(self, event: RitualEventRecord) -> bool:
        return self._write(
            "INSERT INTO ritual_events (event_id, timestamp, event_type, description, agent_id, metadata, severity)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            "INSERT OR REPLACE INTO system_metrics (metric_id, timestamp, metric_name, metric_value, metadata)"
            " VALUES (?, ?, ?, ?, ?)",
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
            "INSERT OR REPLACE INTO configuration (key, value, description, updated_at) VALUES (?, ?, ?, ?)",
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
        return AgentRecord.from_dict(d)  # also the earlier releases' "agent_type" key

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
        out = [RitualEventRecord.from_dict(e) for e in events]
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
        out = [SystemMetricRecord.from_dict(m) for m in metrics]
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
    "default_data_dir",
    "default_db_path",
    "open_sqlite",
    "private_file",
]
