"""The old ``spiralcodex`` API, exactly: the persistence file and records, and the HUD settings.

The old library cannot be installed here (its source is not available), so
:class:`OldCodexDatabase` below plays the old ``CodexDatabase``: plain ``sqlite3`` on
``<data_dir>/codex.db``, plain SQL naming the old columns of the four old tables.
That schema is taken from the API contract (the project's specification, section
"Persistence"): the file name ``codex.db``, the tables ``agents``, ``ritual_events``,
``system_metrics`` and ``configuration``, and ``AgentRecord``'s fields
``agent_id, name, type, status, recursion_depth, entropy_level, metadata, created_at,
updated_at`` (the ``agents`` columns).  The other tables' columns are those of the old
record types (``RitualEventRecord``, ``SystemMetricRecord``) and of the old
``configuration`` table (key, value, description, updated_at); times are ISO text,
metadata and configuration values JSON text.

Both directions are checked: the old reader reads rows that ``PersistenceManager``
wrote, and ``PersistenceManager`` reads a file written in the old shapes with plain
SQL.  Files of spiralfast's earlier releases (``spiralcodex.db``, column
``agent_type``) are migrated once, nothing lost.  ``spiralcodex.hud.hud_config`` (after
``compat.install()``) is checked against the HUD rendered from real node processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from spiralfast import compat
from spiralfast.cli import hud
from spiralfast.client import ObserverClient
from spiralfast.persistence import AgentRecord, PersistenceManager, get_persistence

from .procs import NodeProc
from .waiting import wait_until_sync

OLD_AGENT_COLUMNS = ("agent_id", "name", "type", "status", "recursion_depth", "entropy_level", "metadata",
                     "created_at", "updated_at")
OLD_EVENT_COLUMNS = ("event_id", "timestamp", "event_type", "description", "agent_id", "metadata", "severity")
OLD_METRIC_COLUMNS = ("metric_id", "timestamp", "metric_name", "metric_value", "metadata")
OLD_CONFIG_COLUMNS = ("key", "value", "description", "updated_at")

#: The old tables, as an old tool creates them (plain SQL; see the module docstring).
OLD_SCHEMA = """
CREATE TABLE agents (agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
    recursion_depth INTEGER DEFAULT 0, entropy_level REAL DEFAULT 0.5, metadata TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE ritual_events (event_id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, event_type TEXT NOT NULL,
    description TEXT NOT NULL, agent_id TEXT, metadata TEXT, severity TEXT DEFAULT 'INFO');
CREATE TABLE system_metrics (metric_id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, metric_name TEXT NOT NULL,
    metric_value REAL NOT NULL, metadata TEXT);
CREATE TABLE configuration (key TEXT PRIMARY KEY, value TEXT NOT NULL, description TEXT,
    updated_at TEXT NOT NULL);
"""

#: An ``agents`` table as spiralfast's earlier releases made it.
EARLIER_AGENTS = """CREATE TABLE agents (agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, agent_type TEXT NOT NULL,
    status TEXT NOT NULL, recursion_depth INTEGER DEFAULT 0, entropy_level REAL DEFAULT 0.5,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, metadata TEXT)"""


class OldCodexDatabase:
    """The old ``CodexDatabase``'s reads: its own connection to ``<data_dir>/codex.db``,
    the old column names, ``json.loads`` on metadata and values."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "codex.db"
        assert self.path.is_file(), f"no {self.path}"
        self.conn = sqlite3.connect(self.path)

    def _rows(self, table: str, cols: tuple[str, ...], order: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}").fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def agents(self) -> list[dict[str, Any]]:
        out = self._rows("agents", OLD_AGENT_COLUMNS, "created_at")
        for a in out:
            a["metadata"] = json.loads(a["metadata"]) if a["metadata"] else {}
            a["created_at"] = datetime.fromisoformat(a["created_at"])
            a["updated_at"] = datetime.fromisoformat(a["updated_at"])
        return out

    def ritual_events(self) -> list[dict[str, Any]]:
        out = self._rows("ritual_events", OLD_EVENT_COLUMNS, "timestamp")
        for e in out:
            e["metadata"] = json.loads(e["metadata"]) if e["metadata"] else {}
            e["timestamp"] = datetime.fromisoformat(e["timestamp"])
        return out

    def system_metrics(self) -> list[dict[str, Any]]:
        out = self._rows("system_metrics", OLD_METRIC_COLUMNS, "timestamp")
        for m in out:
            m["metadata"] = json.loads(m["metadata"]) if m["metadata"] else {}
        return out

    def configuration(self) -> dict[str, Any]:
        return {c["key"]: json.loads(c["value"]) for c in self._rows("configuration", OLD_CONFIG_COLUMNS, "key")}

    def close(self) -> None:
        self.conn.close()


# -- the records -----------------------------------------------------------------------


def test_agent_record_has_the_old_fields_in_the_old_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(AgentRecord)) == OLD_AGENT_COLUMNS
    t0 = datetime(2024, 5, 1, 12, 0, 0)
    a = AgentRecord("a1", "Alpha", "worker", "active", 2, 0.7, {"k": 1}, t0, t0)  # positional, old order
    assert (a.type, a.metadata, a.created_at) == ("worker", {"k": 1}, t0)
    d = a.to_dict()
    assert tuple(d) == OLD_AGENT_COLUMNS
    assert d == {"agent_id": "a1", "name": "Alpha", "type": "worker", "status": "active", "recursion_depth": 2,
                 "entropy_level": 0.7, "metadata": {"k": 1}, "created_at": t0.isoformat(),
                 "updated_at": t0.isoformat()}
    assert AgentRecord.from_dict(d) == a
    assert "type='worker'" in repr(a) and "agent_type" not in repr(a)


def test_agent_type_stays_an_alias() -> None:
    """Code written for spiralfast's earlier releases (``agent_type``) keeps working."""
    a = AgentRecord("a1", "Alpha", agent_type="worker", status="active")
    assert (a.type, a.agent_type, a.recursion_depth, a.entropy_level, a.metadata) == ("worker", "worker", 0, 0.5, {})
    a.agent_type = "scout"
    assert a.type == "scout" and a.to_dict()["type"] == "scout" and "agent_type" not in a.to_dict()
    a.type = "planner"
    assert a.agent_type == "planner"
    assert AgentRecord("a1", "Alpha", type="x", status="s", agent_type="x").type == "x"  # the same value: fine
    earlier = {"agent_id": "a2", "name": "B", "agent_type": "llm", "status": "idle", "metadata": {}}
    assert AgentRecord.from_dict(earlier).type == "llm"
    with pytest.raises(TypeError, match="disagree"):
        AgentRecord("a1", "Alpha", type="x", status="s", agent_type="y")
    with pytest.raises(TypeError, match="type"):
        AgentRecord("a1", "Alpha", status="s")
    with pytest.raises(TypeError, match="status"):
        AgentRecord("a1", "Alpha", "worker")


def test_save_agent_takes_the_type_by_any_name(tmp_path: Path) -> None:
    pm = PersistenceManager(data_dir=tmp_path)
    try:
        assert pm.save_agent("a1", "Alpha", "worker", "active")
        assert pm.save_agent("a2", "Beta", agent_type="scout", status="idle")
        assert pm.save_agent("a3", "Gamma", type="llm", status="idle")
        assert pm.save_agent(AgentRecord("a4", "Delta", "tool", "active", metadata={"v": 2}))
        assert [(a.agent_id, a.type) for a in pm.get_all_agents()] == [
            ("a1", "worker"), ("a2", "scout"), ("a3", "llm"), ("a4", "tool")]
        assert pm.get_agent("a4") is not None and pm.get_agent("a4").metadata == {"v": 2}  # type: ignore[union-attr]
        with pytest.raises(TypeError, match="type"):
            pm.save_agent("a5", "Eps", status="idle")
        assert pm.get_agent("a5") is None
    finally:
        pm.close()


# -- the old reader reads our file, and we read an old file ----------------------------


def test_old_codex_database_reads_our_rows(tmp_path: Path) -> None:
    pm = PersistenceManager(use_sqlite=True, data_dir=tmp_path)
    try:
        assert pm.db_path == tmp_path / "codex.db"
        assert pm.save_agent("a1", "Alpha", "worker", "active", recursion_depth=3, entropy_level=0.25,
                             metadata={"skills": ["x"]})
        assert pm.save_ritual_event("RITUAL_START", "started", agent_id="a1", metadata={"n": 1}, severity="WARNING")
        assert pm.save_system_metric("cpu", 0.5, metadata={"host": "h"})
        assert pm.set_config("limits", {"max": 3}, description="the limits")
        # An old tool reads while the application runs (WAL: committed rows are visible).
        old = OldCodexDatabase(tmp_path)
        try:
            (agent,) = old.agents()
            assert {k: v for k, v in agent.items() if k not in ("created_at", "updated_at")} == {
                "agent_id": "a1", "name": "Alpha", "type": "worker", "status": "active", "recursion_depth": 3,
                "entropy_level": 0.25, "metadata": {"skills": ["x"]}}
            assert agent["created_at"] <= agent["updated_at"] <= datetime.now()
            (ev,) = old.ritual_events()
            assert (ev["event_type"], ev["description"], ev["agent_id"], ev["metadata"], ev["severity"]) == (
                "RITUAL_START", "started", "a1", {"n": 1}, "WARNING")
            assert len(ev["event_id"]) == 36
            (m,) = old.system_metrics()
            assert (m["metric_name"], m["metric_value"], m["metadata"]) == ("cpu", 0.5, {"host": "h"})
            assert old.configuration() == {"limits": {"max": 3}}
            # ``SELECT *`` gives the old columns in the old order.
            cur = old.conn.execute("SELECT * FROM agents")
            assert tuple(c[0] for c in cur.description) == OLD_AGENT_COLUMNS
        finally:
            old.close()
    finally:
        pm.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["codex.db"]


def test_we_read_a_file_written_in_the_old_shapes(tmp_path: Path) -> None:
    ts = datetime(2024, 5, 1, 12, 0, 0).isoformat()
    db = sqlite3.connect(tmp_path / "codex.db")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO agents (agent_id, name, type, status, recursion_depth, entropy_level, metadata, "
               "created_at, updated_at) VALUES ('old1', 'Oldie', 'legacy', 'dormant', 4, 0.9, '{\"a\": 1}', ?, ?)",
               (ts, ts))
    db.execute("INSERT INTO ritual_events (event_id, timestamp, event_type, description, agent_id, metadata, "
               "severity) VALUES ('e1', ?, 'OLD', 'from the old tool', 'old1', '{\"b\": 2}', 'ERROR')", (ts,))
    db.execute("INSERT INTO system_metrics (metric_id, timestamp, metric_name, metric_value, metadata) "
               "VALUES ('m1', ?, 'entropy', 0.75, NULL)", (ts,))
    db.execute("INSERT INTO configuration (key, value, description, updated_at) VALUES ('mode', '\"ritual\"', "
               "NULL, ?)", (ts,))
    db.commit()
    db.close()
    pm = PersistenceManager(use_sqlite=True, data_dir=tmp_path)
    try:
        a = pm.get_agent("old1")
        assert a is not None
        assert (a.agent_id, a.name, a.type, a.agent_type, a.status, a.recursion_depth, a.entropy_level, a.metadata,
                a.created_at.isoformat()) == ("old1", "Oldie", "legacy", "legacy", "dormant", 4, 0.9, {"a": 1}, ts)
        assert [x.agent_id for x in pm.get_all_agents()] == ["old1"]
        (ev,) = pm.get_ritual_events()
        assert (ev.event_id, ev.event_type, ev.agent_id, ev.metadata, ev.severity) == (
            "e1", "OLD", "old1", {"b": 2}, "ERROR")
        (m,) = pm.get_system_metrics("entropy")
        assert (m.metric_id, m.metric_value, m.metadata) == ("m1", 0.75, {})
        assert pm.get_config("mode") == "ritual"
        # and our writes go into the old tables, next to the old rows
        assert pm.save_agent("new1", "Newbie", "worker", "active")
        assert pm.save_ritual_event("NEW", "ours")
    finally:
        pm.close()
    old = OldCodexDatabase(tmp_path)
    try:
        assert [(a["agent_id"], a["type"]) for a in old.agents()] == [("old1", "legacy"), ("new1", "worker")]
        assert [e["event_type"] for e in old.ritual_events()] == ["OLD", "NEW"]
    finally:
        old.close()


# -- files of spiralfast's earlier releases ---------------------------------------------

#: Writes an earlier release's file and dies without closing it (kill -9 alike): the
#: committed rows are left in the write-ahead log.
EARLIER_WRITER = textwrap.dedent('''
    import os, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(sys.argv[2])
    db.execute("CREATE TABLE ritual_events (event_id TEXT NOT NULL, timestamp TEXT NOT NULL, event_type TEXT NOT NULL,"
               " description TEXT NOT NULL, agent_id TEXT, metadata TEXT, severity TEXT DEFAULT 'INFO')")
    db.execute("INSERT INTO agents VALUES ('a1', 'Alpha', 'worker', 'active', 1, 0.4, '2024-05-01T12:00:00',"
               " '2024-05-01T12:00:01', '{\\"m\\": 1}')")
    db.execute("INSERT INTO ritual_events VALUES ('e1', '2024-05-01T12:00:00', 'EARLY', 'kept', NULL, '{}', 'INFO')")
    if len(sys.argv) > 3:  # hold it open until told to stop
        print("ready", flush=True)
        sys.stdin.readline()
    os._exit(0)
''')


def _earlier_file(path: Path, hold: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", EARLIER_WRITER, str(path), EARLIER_AGENTS] + (["hold"] if hold else [])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if hold:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    else:
        assert proc.wait(30) == 0
    return proc


def test_earlier_release_file_is_renamed_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    earlier = tmp_path / "spiralcodex.db"
    _earlier_file(earlier)
    assert Path(f"{earlier}-wal").stat().st_size > 0  # the rows are still in the write-ahead log
    caplog.set_level(logging.WARNING, "spiralfast.persistence")
    pm = PersistenceManager(use_sqlite=True, data_dir=tmp_path)
    try:
        assert pm.db_path == tmp_path / "codex.db"
        a = pm.get_agent("a1")
        assert a is not None and (a.type, a.recursion_depth, a.metadata) == ("worker", 1, {"m": 1})
        assert a.created_at.isoformat() == "2024-05-01T12:00:00"
        assert [e.event_type for e in pm.get_ritual_events()] == ["EARLY"]
    finally:
        pm.close()
    assert not any(p.name.startswith("spiralcodex.db") for p in tmp_path.iterdir())
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("renamed" in m and "spiralcodex.db" in m for m in msgs) == 1
    assert sum("agent_type -> type" in m and "1 rows kept" in m for m in msgs) == 1
    old = OldCodexDatabase(tmp_path)
    try:
        assert [(x["agent_id"], x["type"], x["metadata"]) for x in old.agents()] == [("a1", "worker", {"m": 1})]
    finally:
        old.close()
    caplog.clear()
    PersistenceManager(data_dir=tmp_path).close()  # once: nothing more to migrate
    assert [r.getMessage() for r in caplog.records] == []


def test_codex_db_wins_over_an_earlier_file(tmp_path: Path) -> None:
    _earlier_file(tmp_path / "spiralcodex.db")
    first = PersistenceManager(data_dir=tmp_path)  # renames it
    first.close()
    _earlier_file(tmp_path / "spiralcodex.db")  # another earlier file appears later
    before = (tmp_path / "spiralcodex.db").stat().st_size
    pm = PersistenceManager(data_dir=tmp_path)
    try:
        assert pm.db_path == tmp_path / "codex.db"
        assert [a.agent_id for a in pm.get_all_agents()] == ["a1"]
    finally:
        pm.close()
    assert (tmp_path / "spiralcodex.db").stat().st_size == before  # left alone


def test_earlier_file_open_elsewhere_is_used_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    earlier = tmp_path / "spiralcodex.db"
    holder = _earlier_file(earlier, hold=True)
    try:
        caplog.set_level(logging.WARNING, "spiralfast.persistence")
        pm = PersistenceManager(data_dir=tmp_path)
        try:
            assert pm.db_path == earlier  # not renamed under the other process's feet
            assert not (tmp_path / "codex.db").exists()
            assert pm.get_agent("a1") is not None
            assert pm.save_ritual_event("WHILE_OPEN", "written in place")
        finally:
            pm.close()
        assert any("open in another process" in r.getMessage() for r in caplog.records)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(30) == 0
    pm = PersistenceManager(data_dir=tmp_path)  # free now: renamed, nothing lost
    try:
        assert pm.db_path == tmp_path / "codex.db"
        assert sorted(e.event_type for e in pm.get_ritual_events()) == ["EARLY", "WHILE_OPEN"]
    finally:
        pm.close()
    assert not earlier.exists()


def test_unreadable_earlier_file_is_one_clear_error_and_kept(tmp_path: Path) -> None:
    earlier = tmp_path / "spiralcodex.db"
    junk = b"this is not a database" * 100
    earlier.write_bytes(junk)
    with pytest.raises(sqlite3.DatabaseError, match="spiralcodex.db"):
        PersistenceManager(data_dir=tmp_path)
    assert earlier.read_bytes() == junk
    assert not (tmp_path / "codex.db").exists()


def test_json_files_of_an_earlier_release_are_read(tmp_path: Path) -> None:
    (tmp_path / "agents.json").write_text(json.dumps({"a1": {
        "agent_id": "a1", "name": "Alpha", "agent_type": "worker", "status": "active", "recursion_depth": 0,
        "entropy_level": 0.5, "created_at": "2024-05-01T12:00:00", "updated_at": "2024-05-01T12:00:00",
        "metadata": {}}}))
    pm = PersistenceManager(use_sqlite=False, data_dir=tmp_path)
    a = pm.get_agent("a1")
    assert a is not None and a.type == "worker"
    assert pm.save_agent("a2", "Beta", "scout", "idle")
    stored = json.loads((tmp_path / "agents.json").read_text())
    assert tuple(stored["a2"]) == OLD_AGENT_COLUMNS  # new rows in the old shape
    assert [x.type for x in pm.get_all_agents()] == ["worker", "scout"]


# -- old code, unchanged, in a process of its own --------------------------------------

OLD_CODE = textwrap.dedent('''
    import sys
    import spiralfast.compat
    spiralfast.compat.install()

    # --- from here on: code written for the old library, unchanged ---
    import spiralcodex.persistence
    from spiralcodex.persistence import PersistenceManager, get_persistence
    from spiralcodex.hud import hud_config

    hud_config.mesh_enabled = True
    hud_config.show_network_topology = False
    pm = PersistenceManager(use_sqlite=True, data_dir=sys.argv[1])
    pm.save_ritual_event("RITUAL_START", "Ritual started", agent_id="a1", metadata={"depth": 3}, severity="INFO")
    pm.save_agent("a1", "Alpha", "worker", "active")
    agent = pm.get_agent("a1")
    print(agent.type, agent.to_dict()["type"], [a.agent_id for a in pm.get_all_agents()])
    pm.set_config("ritual_mode", {"depth": 3})
    print(pm.get_config("ritual_mode"), pm.get_config("missing", "dflt"))
    get_persistence().save_ritual_event("GLOBAL", "through get_persistence")
    # --- end of the old code ---

    import spiralfast.cli.hud, spiralfast.persistence
    print(spiralcodex.persistence is spiralfast.persistence, hud_config is spiralfast.cli.hud.hud_config,
          spiralfast.cli.hud.hud_config.show_network_topology)
''')


def test_old_code_runs_unchanged_after_compat_install(tmp_path: Path) -> None:
    data, default_dir = tmp_path / "data", tmp_path / "default"
    env = dict(os.environ, SPIRALCODEX_DATA_DIR=str(default_dir))
    r = subprocess.run([sys.executable, "-c", OLD_CODE, str(data)], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["worker worker ['a1']", "{'depth': 3} dflt", "True True False"]
    old = OldCodexDatabase(data)
    try:
        assert [(e["event_type"], e["agent_id"], e["metadata"]) for e in old.ritual_events()] == [
            ("RITUAL_START", "a1", {"depth": 3})]
        assert [(a["agent_id"], a["type"]) for a in old.agents()] == [("a1", "worker")]
        assert old.configuration() == {"ritual_mode": {"depth": 3}}
    finally:
        old.close()
    default = OldCodexDatabase(default_dir)  # get_persistence(): codex.db in the default data dir
    try:
        assert [e["event_type"] for e in default.ritual_events()] == ["GLOBAL"]
    finally:
        default.close()


def test_compat_install_and_uninstall_the_old_modules() -> None:
    assert "spiralcodex.hud" not in sys.modules
    compat.install()
    try:
        from spiralcodex.hud import hud_config  # type: ignore[import-not-found]
        from spiralcodex.persistence import PersistenceManager as OldPM  # type: ignore[import-not-found]

        assert hud_config is hud.hud_config
        assert (hud_config.mesh_enabled, hud_config.show_network_topology) == (True, True)  # the defaults
        assert OldPM is PersistenceManager
        assert get_persistence is sys.modules["spiralcodex.persistence"].get_persistence
    finally:
        compat.uninstall()
    assert not [m for m in sys.modules if m == "spiralcodex" or m.startswith("spiralcodex.")]


# -- hud_config, honoured by the HUD ---------------------------------------------------


@pytest.fixture
def old_hud_config() -> Iterator[Any]:
    """``spiralcodex.hud.hud_config`` after ``compat.install()``; restored afterwards."""
    compat.install()
    try:
        from spiralcodex.hud import hud_config  # type: ignore[import-not-found]

        saved = dataclasses.replace(hud_config)
        yield hud_config
    finally:
        hud.hud_config.mesh_enabled = saved.mesh_enabled
        hud.hud_config.show_network_topology = saved.show_network_topology
        compat.uninstall()


def test_hud_follows_hud_config(old_hud_config: Any) -> None:
    """``mesh status --watch``'s view (:func:`spiralfast.cli.hud.run_hud`) of two real nodes,
    drawn once per setting of the old ``hud_config``."""
    from rich.console import Console

    a = NodeProc("oldhud-a")
    procs = [a]
    try:
        procs.append(NodeProc("oldhud-b", "--peer", a.url))
        wait_until_sync(lambda: asyncio.run(a.node_ids()) == {"oldhud-a", "oldhud-b"}, "oldhud-a saw oldhud-b",
                        timeout=20, interval=0.1)

        def draw() -> str:
            async def run() -> str:
                console = Console(record=True, width=160, force_terminal=False)
                c = await ObserverClient.connect(a.url)
                try:
                    await hud.run_hud(c, console, iterations=1)
                finally:
                    c.close()
                return console.export_text()

            return asyncio.run(run())

        full = draw()  # the defaults: everything
        assert "spiralfast oldhud-a" in full
        assert "last seen (s)" in full and "oldhud-b" in full  # the nodes
        assert "RTT" in full and "websocket" in full  # the links
        assert "topology: 2 nodes, 1 links" in full and "── oldhud-b" in full

        old_hud_config.show_network_topology = False
        no_topo = draw()
        assert "last seen (s)" in no_topo and "RTT" in no_topo and "oldhud-b" in no_topo
        assert "topology" not in no_topo and "(this node)" not in no_topo and "── oldhud-b" not in no_topo

        old_hud_config.show_network_topology = True
        old_hud_config.mesh_enabled = False
        no_mesh = draw()
        assert "spiralfast oldhud-a" in no_mesh and "events in/s" in no_mesh  # the node's own line
        for gone in ("last seen (s)", "RTT", "topology", "(this node)", "oldhud-b"):
            assert gone not in no_mesh

        old_hud_config.mesh_enabled = True
        assert "topology: 2 nodes" in draw()  # back on
    finally:
        for p in procs:
            p.stop()
