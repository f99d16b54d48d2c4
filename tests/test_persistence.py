"""The old ``spiralcodex.persistence`` API on real SQLite files (and JSON files)."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from spiralfast import persistence
from spiralfast.persistence import (
    AgentRecord,
    PersistenceManager,
    RitualEventRecord,
    SystemMetricRecord,
    get_persistence,
)

#: The columns an old tool reads, in the old order.
OLD_EVENT_COLUMNS = "event_id, timestamp, event_type, description, agent_id, metadata, severity"


@pytest.fixture(params=[True, False], ids=["sqlite", "json"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> PersistenceManager:
    m = PersistenceManager(use_sqlite=request.param, data_dir=tmp_path)
    yield m
    m.close()


def test_agents_round_trip(manager: PersistenceManager) -> None:
    assert manager.get_agent("a1") is None
    assert manager.save_agent("a1", "Alpha", "worker", "active", recursion_depth=2, entropy_level=0.7,
                              metadata={"k": [1, 2]})
    a = manager.get_agent("a1")
    assert isinstance(a, AgentRecord)
    assert (a.agent_id, a.name, a.type, a.status, a.recursion_depth, a.entropy_level, a.metadata) == (
        "a1", "Alpha", "worker", "active", 2, 0.7, {"k": [1, 2]})
    created = a.created_at
    assert manager.save_agent("a1", "Alpha", "worker", "busy")  # defaults: depth 0, entropy 0.5
    b = manager.get_agent("a1")
    assert b is not None
    assert (b.status, b.recursion_depth, b.entropy_level, b.metadata) == ("busy", 0, 0.5, {})
    assert b.created_at == created and b.updated_at >= created
    manager.save_agent("a2", "Beta", "scout", "idle")
    assert [x.agent_id for x in manager.get_all_agents()] == ["a1", "a2"]
    assert manager.delete_agent("a1") is True
    assert manager.delete_agent("a1") is False
    assert [x.agent_id for x in manager.get_all_agents()] == ["a2"]


def test_config_round_trip(manager: PersistenceManager) -> None:
    assert manager.get_config("missing") is None
    assert manager.get_config("missing", default=42) == 42
    assert manager.set_config("limits", {"max": 3, "names": ["x"]}, description="the limits")
    assert manager.get_config("limits") == {"max": 3, "names": ["x"]}
    manager.set_config("limits", 7)
    assert manager.get_config("limits", default=0) == 7


def test_ritual_events_round_trip(manager: PersistenceManager) -> None:
    assert manager.save_ritual_event("MESH_NODE_JOIN", "New node joined mesh", metadata={"node_id": "n1"})
    assert manager.save_ritual_event("RITUAL_START", "started", agent_id="a1", severity="WARNING")
    events = manager.backend.get_ritual_events()
    assert [e.event_type for e in events] == ["RITUAL_START", "MESH_NODE_JOIN"]  # newest first
    join = events[1]
    assert isinstance(join, RitualEventRecord)
    assert (join.description, join.agent_id, join.metadata, join.severity) == (
        "New node joined mesh", None, {"node_id": "n1"}, "INFO")
    assert events[0].agent_id == "a1" and events[0].severity == "WARNING"
    assert [e.event_type for e in manager.backend.get_ritual_events(event_type="MESH_NODE_JOIN")] == ["MESH_NODE_JOIN"]
    assert len(manager.backend.get_ritual_events(limit=1)) == 1
    assert manager.backend.get_ritual_events(since=datetime.now() + timedelta(seconds=5)) == []


def test_cleanup_old_data(manager: PersistenceManager) -> None:
    old = datetime.now() - timedelta(days=40)
    manager.backend.save_ritual_event(RitualEventRecord("old-1", old, "X", "old one"))
    manager.backend.save_system_metric(SystemMetricRecord("m-old", old, "cpu", 0.5))
    manager.save_ritual_event("Y", "new one")
    manager.save_system_metric("cpu", 0.7)
    assert manager.cleanup_old_data(days_to_keep=30) == 2
    assert [e.event_type for e in manager.backend.get_ritual_events()] == ["Y"]
    assert [m.metric_value for m in manager.get_system_metrics("cpu")] == [0.7]


def test_old_reader_reads_our_rows(tmp_path: Path) -> None:
    m = PersistenceManager(data_dir=tmp_path)
    m.save_ritual_event("MESH_NODE_JOIN", "New node joined mesh", agent_id="n1", metadata={"node_id": "n1"})
    m.save_agent("a1", "Alpha", "worker", "active")
    m.set_config("k", "v")
    m.close()
    # What an old tool does: its own connection, its own column list, json.loads.
    db = sqlite3.connect(tmp_path / "codex.db")
    (eid, ts, et, desc, agent, meta, sev), = db.execute(f"SELECT {OLD_EVENT_COLUMNS} FROM ritual_events").fetchall()
    assert (et, desc, agent, json.loads(meta), sev) == ("MESH_NODE_JOIN", "New node joined mesh", "n1",
                                                         {"node_id": "n1"}, "INFO")
    assert datetime.fromisoformat(ts) <= datetime.now() and len(eid) == 36
    assert [r[0] for r in db.execute("SELECT * FROM ritual_events")] == [eid]  # 7 columns, old order
    assert len(db.execute("SELECT * FROM ritual_events").fetchone()) == 7
    assert db.execute("SELECT name, type, status, recursion_depth, entropy_level FROM agents").fetchall() == [
        ("Alpha", "worker", "active", 0, 0.5)]
    assert json.loads(db.execute("SELECT value FROM configuration WHERE key='k'").fetchone()[0]) == "v"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"agents", "ritual_events", "system_metrics", "configuration"} <= tables
    db.close()


def test_we_read_an_old_file(tmp_path: Path) -> None:
    """A database made by the old library (event_id a primary key) is used as is."""
    db = sqlite3.connect(tmp_path / "codex.db")
    db.execute("CREATE TABLE ritual_events (event_id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, event_type TEXT NOT NULL,"
               " description TEXT NOT NULL, agent_id TEXT, metadata TEXT, severity TEXT DEFAULT 'INFO')")
    db.execute("INSERT INTO ritual_events VALUES ('e1', ?, 'OLD', 'from the old tool', NULL, '{\"a\": 1}', 'INFO')",
               (datetime.now().isoformat(),))
    db.commit()
    db.close()
    m = PersistenceManager(data_dir=tmp_path)
    m.save_ritual_event("NEW", "ours")
    assert [(e.event_type, e.metadata) for e in m.backend.get_ritual_events()] == [("NEW", {}), ("OLD", {"a": 1})]
    m.close()


def test_get_persistence_is_module_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIRALCODEX_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(persistence, "_persistence_manager", None)
    p = get_persistence()
    assert p is get_persistence()
    assert p.db_path == tmp_path / "codex.db"
    p.save_agent("x", "X", "t", "s")
    assert PersistenceManager(data_dir=tmp_path).get_agent("x") is not None
    p.close()


def test_compat_aliases_old_import(tmp_path: Path) -> None:
    from spiralfast import compat

    compat.install()
    try:
        import spiralcodex.persistence as old  # type: ignore[import-not-found]

        assert old is persistence
        assert old.PersistenceManager(data_dir=tmp_path).save_ritual_event("T", "d")
    finally:
        compat.uninstall()
    assert "spiralcodex.persistence" not in sys.modules


def test_unwritable_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "codex.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        PersistenceManager(data_dir=tmp_path)
