"""The old persistence API's backends: the old tables in SQLite, or JSON files.

:class:`SQLitePersistenceBackend` opens its file through the store's one SQLite layer
(:func:`spiralfast.store.sqlite.open_sqlite`: WAL mode, mode 0600, the old tables), so it
may share the file with a running node's event log; :class:`JSONPersistenceBackend`
keeps the same records in JSON files (``use_sqlite=False``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .persistence_records import (
    AgentRecord,
    PersistenceBackend,
    RitualEventRecord,
    SystemMetricRecord,
    dumps,
    loads,
    parse_dt,
)
from .sqlite import AGENT_COLS, open_sqlite

log = logging.getLogger("spiralfast.persistence")


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
            f"INSERT OR REPLACE INTO agents ({AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent.agent_id, agent.name, agent.type, agent.status, int(agent.recursion_depth),
             float(agent.entropy_level), dumps(agent.metadata), agent.created_at.isoformat(),
             agent.updated_at.isoformat()),
        ) > 0

    @staticmethod
    def _agent(row: tuple[Any, ...]) -> AgentRecord:
        return AgentRecord(row[0], row[1], row[2], row[3], int(row[4] or 0),
                           float(row[5] if row[5] is not None else 0.5),
                           loads(row[6]), parse_dt(row[7]), parse_dt(row[8]))

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            row = self._c().execute(f"SELECT {AGENT_COLS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return self._agent(row) if row is not None else None

    def get_all_agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._c().execute(f"SELECT {AGENT_COLS} FROM agents ORDER BY created_at").fetchall()
        return [self._agent(r) for r in rows]

    def delete_agent(self, agent_id: str) -> bool:
        return self._write("DELETE FROM agents WHERE agent_id = ?", (agent_id,)) > 0

    def save_ritual_event(self, event: RitualEventRecord) -> bool:
        return self._write(
            "INSERT INTO ritual_events (event_id, timestamp, event_type, description, agent_id, metadata, severity)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, event.timestamp.isoformat(), event.event_type, event.description,
             event.agent_id, dumps(event.metadata), event.severity),
        ) > 0

    def _newest(self, select: str, column: str, value: str | None, since: datetime | None,
                limit: int) -> list[Any]:
        """Rows of ``select``, optionally where ``column = value`` and from ``since`` on,
        newest first, at most ``limit``."""
        where: list[str] = []
        params: list[Any] = []
        if value is not None:
            where.append(f"{column} = ?")  # column: a name from this module, never user input
            params.append(value)
        if since is not None:
            where.append("timestamp >= ?")
            params.append(since.isoformat())
        sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY timestamp DESC LIMIT ?"
        params.append(int(limit))
        with self._lock:
            return self._c().execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]:
        """Newest first, like the old backend."""
        rows = self._newest("SELECT event_id, timestamp, event_type, description, agent_id, metadata, severity"
                            " FROM ritual_events", "event_type", event_type, since, limit)
        return [RitualEventRecord(r[0], parse_dt(r[1]), r[2], r[3], r[4], loads(r[5]), r[6] or "INFO") for r in rows]

    def save_system_metric(self, metric: SystemMetricRecord) -> bool:
        return self._write(
            "INSERT OR REPLACE INTO system_metrics (metric_id, timestamp, metric_name, metric_value, metadata)"
            " VALUES (?, ?, ?, ?, ?)",
            (metric.metric_id, metric.timestamp.isoformat(), metric.metric_name, float(metric.metric_value),
             dumps(metric.metadata)),
        ) > 0

    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]:
        """Newest first."""
        rows = self._newest("SELECT metric_id, timestamp, metric_name, metric_value, metadata FROM system_metrics",
                            "metric_name", metric_name, since, limit)
        return [SystemMetricRecord(r[0], parse_dt(r[1]), r[2], float(r[3]), loads(r[4])) for r in rows]

    def get_config(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._c().execute("SELECT value FROM configuration WHERE key = ?", (key,)).fetchone()
        return loads(row[0]) if row is not None else default

    def set_config(self, key: str, value: Any, description: str | None = None) -> bool:
        return self._write(
            "INSERT OR REPLACE INTO configuration (key, value, description, updated_at) VALUES (?, ?, ?, ?)",
            (key, dumps(value), description, datetime.now().isoformat()),
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
            tmp.write_text(dumps(obj))
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


__all__ = ["JSONPersistenceBackend", "SQLitePersistenceBackend"]
