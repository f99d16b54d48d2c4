"""The event log through its port alone: a fake event source (no ``MeshCore``), a real
SQLite file.  Events recorded are written, read back by history and replay, the metric
samples carry the source's figures, the delivery cursor skips the source's own origin;
and the store package imports nothing from the layers above it."""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spiralfast.ports.store import EnvelopeHandler, EventSource, StoreSettings
from spiralfast.store.cursor import META
from spiralfast.store.eventlog import EventLog
from spiralfast.store.history import read_history
from spiralfast.store.sqlite_store import SQLiteStore
from spiralfast.wire import schema

STORE = Path(__file__).resolve().parent.parent / "spiralfast" / "store"
ORIGIN = "aaaaaaaaaaaas"
PEER = "bbbbbbbbbbbbs"


@dataclass
class Settings:
    persistence_path: str | None = None
    persistence_url: str | None = None
    persist_events: str | list[str] = "all"
    persist_retention_days: float = 30.0
    persist_max_bytes: int | None = 1 << 30
    persist_metrics_retention_hours: float = 24.0
    sync_interval: float = 10.0


@dataclass
class FakeSource:
    """An event source as a test writes it: fixed figures, handlers in a dict."""

    config: Settings
    node_id: str = "N"
    origin: str = ORIGIN
    event_handlers: dict[str, list[EnvelopeHandler]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=lambda: {"connected_nodes": 3, "uptime": 12.5,
                                                            "counters": {"events_in": 7, "events_out": 2}})

    def get_mesh_status(self) -> dict[str, Any]:
        return self.figures


def env(i: int, etype: str = "t", origin: str = PEER) -> dict[str, Any]:
    return {"type": etype, "source_node": "S", "timestamp": datetime.now().isoformat(), "data": {"seq": i},
            "event_id": f"{origin}-{i}"}


def test_fake_source_is_an_event_source(tmp_path: Path) -> None:
    settings: StoreSettings = Settings(persistence_path=str(tmp_path / "a.db"))
    source: EventSource = FakeSource(Settings(persistence_path=str(tmp_path / "a.db")))
    assert settings.persist_events == "all" and source.config.persistence_path


async def test_events_written_then_read_back(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    source = FakeSource(Settings(persistence_path=str(db)))
    elog = EventLog(source)
    assert isinstance(elog.store, SQLiteStore)
    await elog.start()
    for i in range(1, 6):
        elog.record(env(i))
    elog.record_event(schema.Event(f"{PEER}-6", "wire", "S", time.time(), {"seq": 6}))
    elog.record(env(1, "mine", ORIGIN))  # the node's own broadcast
    hist = elog.history(limit=100)
    assert [e["data"]["seq"] for e in hist] == [1, 2, 3, 4, 5, 6, 1]
    assert [e["type"] for e in elog.history(types="wire")] == ["wire"]

    seen: list[int] = []
    source.event_handlers["t"] = [lambda e: seen.append(e["data"]["seq"])]
    assert await elog.replay("1h") == 7
    assert seen == [1, 2, 3, 4, 5]
    st = elog.status()
    assert st["backend"] == "sqlite" and st["written"] == 7 and st["dropped"] == 0
    assert elog.sample_metrics()  # the source's figures, as rows
    await elog.stop()

    assert [e["data"]["seq"] for e in read_history(str(db), types=["t"])] == [1, 2, 3, 4, 5]
    store = SQLiteStore(db)
    try:
        cursor = {r[0]: r for r in store.read_cursor()}
    finally:
        store.close()
    assert cursor[PEER][1] == 6  # every peer event handed on, in order
    assert ORIGIN not in cursor  # never its own origin
    assert cursor[META][1] == 1  # a clean stop


async def test_metric_samples_carry_the_source_figures(tmp_path: Path) -> None:
    source = FakeSource(Settings(persistence_path=str(tmp_path / "a.db")))
    elog = EventLog(source)
    values = elog.metric_values()
    assert values["connected_nodes"] == 3.0 and values["uptime"] == 12.5
    assert values["counters.events_in"] == 7.0 and values["persistence.written"] == 0.0
    rows = elog.metric_rows()
    assert {r[2] for r in rows} == set(values) and all(r[4] == '{"node_id": "N"}' for r in rows)


async def test_persist_events_list_keeps_those_and_mesh_types(tmp_path: Path) -> None:
    source = FakeSource(Settings(persistence_path=str(tmp_path / "a.db"), persist_events=["keep"]))
    elog = EventLog(source)
    await elog.start()
    elog.record(env(1, "drop"))
    elog.record(env(2, "keep"))
    elog.record({"type": "node_register", "source_node": "S", "timestamp": datetime.now().isoformat(),
                 "data": {"node_id": "S"}})
    assert [e["type"] for e in elog.history()] == ["keep", "node_register"]
    await elog.stop()


FORBIDDEN = ("spiralfast.node", "spiralfast.tasks", "spiralfast.ops", "spiralfast.cli", "spiralfast.links",
             "spiralfast.mesh", "spiralfast.client", "spiralfast.testing", "spiralfast.compat",
             "spiralfast.benchmark")


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    pkg = ["spiralfast", "store"]
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def test_store_imports_no_upper_layer() -> None:
    for path in sorted(STORE.glob("*.py")):
        for mod in _imports(path):
            assert mod != "spiralfast", f"{path.name} imports the package __init__"
            assert not mod.startswith(FORBIDDEN), f"{path.name} imports {mod}"
