"""Bounded event-log storage: the size cap (``persist_max_bytes``: oldest first, counted,
space returned to the disk, on the writer thread), compact metric samples kept for
``persist_metrics_retention_hours``, and the settings' validation.  Real SQLite files;
PostgreSQL through the suite's own server (``require``)."""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spiralfast.errors import ConfigError
from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore
from spiralfast.ops.metrics import registry_for, render
from spiralfast.persistence import open_sqlite
from spiralfast.store.eventlog import CLOCK_METRICS, EventLog, PostgresStore, SQLiteStore

from .conftest import wait_for
from .test_eventlog import pair, rows
from .test_eventlog_pg import _fetch, pg_url  # noqa: F401 - the fixture

MIB = 1 << 20
PAD = "x" * 1000
#: Event times: strictly increasing, 1 ms apart, from half an hour ago (inside any retention).
BASE = datetime.now() - timedelta(minutes=30)


def node(db: Path | None = None, url: str | None = None, **cfg: Any) -> MeshCore:
    return MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False, persistence_path=
                               str(db) if db else None, persistence_url=url, persist_events="all", **cfg))


def env(i: int) -> dict[str, Any]:
    return {"type": "t", "source_node": "S", "timestamp": (BASE + timedelta(milliseconds=i)).isoformat(),
            "data": {"seq": i, "pad": PAD}, "event_id": f"S-{i}"}


async def feed(log_: EventLog, start: int, n: int) -> None:
    """Record ``n`` events and wait until they are committed."""
    for i in range(start, start + n):
        log_.record(env(i))
    await log_._sync_async()


def prom(mesh: MeshCore, name: str) -> float:
    text = render(registry_for(mesh.ops))[0].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


# -- settings ------------------------------------------------------------------------------


def test_settings_defaults_and_validation() -> None:
    cfg = MeshConfig()
    assert cfg.persist_max_bytes == 1 << 30 and cfg.persist_metrics_retention_hours == 24.0
    ok = MeshConfig(persist_max_bytes=MIB, persist_metrics_retention_hours=0.5)
    assert ok.persist_max_bytes == MIB and ok.persist_metrics_retention_hours == 0.5
    for bad in (0, -1, MIB - 1, 1.5e9, "1G", True, None):
        with pytest.raises(ConfigError, match="persist_max_bytes must be an integer"):
            MeshConfig(persist_max_bytes=bad)
    for bad in (0, -1, math.nan, math.inf, "24", True, None):
        with pytest.raises(ConfigError, match="persist_metrics_retention_hours must be a positive, finite number "
                                              "of hours"):
            MeshConfig(persist_metrics_retention_hours=bad)


def test_settings_in_start_help_and_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "spiralfast", "mesh", "start", "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "--persist-max-bytes BYTES" in out.stdout and "Size cap of the event log" in out.stdout
    assert "--persist-metrics-retention-hours NUMBER" in out.stdout
    def show(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "spiralfast", "config", "show", *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **env})

    good = show("--persist-max-bytes", "2097152", SPIRALFAST_PERSIST_METRICS_RETENTION_HOURS="6")
    assert good.returncode == 0, good.stderr
    assert "2097152" in next(ln for ln in good.stdout.splitlines() if ln.startswith("persist_max_bytes"))
    assert "6.0" in next(ln for ln in good.stdout.splitlines() if ln.startswith("persist_metrics_retention_hours"))
    bad = show("--persist-max-bytes", "1000")
    assert bad.returncode == 2 and "persist_max_bytes must be an integer in [1048576" in bad.stdout + bad.stderr
    bad = show(SPIRALFAST_PERSIST_METRICS_RETENTION_HOURS="0")
    assert bad.returncode == 2 and "persist_metrics_retention_hours must be a positive" in bad.stdout + bad.stderr


# -- the size cap on SQLite ----------------------------------------------------------------------


async def test_sqlite_cap_oldest_first_counted_file_stops_growing(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    mesh = node(db, persist_max_bytes=MIB)
    log_ = mesh.eventlog = EventLog(mesh)
    threads: set[str] = set()
    enforce = log_.store.enforce_cap

    def spy(max_bytes: int) -> tuple[int, int, int]:
        threads.add(threading.current_thread().name)
        return enforce(max_bytes)

    log_.store.enforce_cap = spy  # type: ignore[method-assign]
    await log_.start()
    per_batch = 200
    batch_bytes = per_batch * len(PAD) * 1.2  # one batch of events as stored, with room for its JSON
    try:
        # Under the cap: nothing is removed.
        await feed(log_, 0, per_batch)
        assert log_.capped == 0 and len(log_.history(limit=10**6)) == per_batch
        # 20 times the cap: the file (and its WAL) never exceed the cap plus one batch.
        sizes = []
        n = per_batch
        while n < 20 * MIB // len(PAD):
            await feed(log_, n, per_batch)
            n += per_batch
            sizes.append(log_.store.file_bytes())  # type: ignore[attr-defined]
        assert max(sizes) <= MIB + batch_bytes, max(sizes)
        kept = [e["data"]["seq"] for e in log_.history(limit=10**6)]
        # The oldest are the ones gone: what is left is the newest run, complete and in order.
        assert kept == list(range(n - len(kept), n)) and 0 < len(kept) < n
        st = mesh.get_mesh_status()["persistence"]
        assert st["capped"] == n - len(kept) and st["max_bytes"] == MIB and 0 < st["size_bytes"] <= MIB
        assert st["dropped"] == 0 and st["error"] is None
        assert threads == {"spiralfast-eventlog"}  # enforced by the writer thread, not the event loop
        assert prom(mesh, "spiralfast_persist_capped_total") == n - len(kept)
        assert prom(mesh, "spiralfast_persist_max_bytes") == MIB
    finally:
        mesh.eventlog = None
        await log_.stop()
    # Space freed is returned to the disk: a new file vacuums incrementally.
    assert rows(db, "PRAGMA auto_vacuum") == [(2,)]
    assert rows(db, "PRAGMA freelist_count")[0][0] * 8192 <= batch_bytes


async def test_sqlite_lowered_cap_shrinks_the_file(tmp_path: Path) -> None:
    """Space beyond the cap goes back to the disk (incremental vacuum): a log filled under
    a 4 MiB cap shrinks under 1 MiB (+ one batch) when the node comes back with a 1 MiB cap."""
    db = tmp_path / "a.db"
    log_ = EventLog(node(db, persist_max_bytes=4 * MIB))
    await log_.start()
    n = 0
    try:
        while log_.capped == 0:
            await feed(log_, n, 200)
            n += 200
            assert n < 20 * MIB // len(PAD), "the cap was never reached"
        big = log_.store.file_bytes()  # type: ignore[attr-defined]
        assert 3 * MIB < big <= 4 * MIB + 200 * len(PAD) * 1.2
    finally:
        await log_.stop()
    log_ = EventLog(node(db, persist_max_bytes=MIB))
    await log_.start()
    try:
        await feed(log_, n, 1)  # the next write applies the new cap
        small = log_.store.file_bytes()  # type: ignore[attr-defined]
        assert small <= MIB + 200 * len(PAD) * 1.2, small
        assert log_.capped > 0
        kept = [e["data"]["seq"] for e in log_.history(limit=10**6)]
        assert kept == list(range(n + 1 - len(kept), n + 1))
    finally:
        await log_.stop()
    assert (db.stat().st_size + Path(f"{db}-wal").stat().st_size) <= MIB + 200 * len(PAD) * 1.2


async def test_sqlite_cap_removes_metrics_and_old_rows_in_time_order(tmp_path: Path) -> None:
    """Metric rows and old-API rows older than the removed batches go with them; newer ones stay."""
    db = tmp_path / "a.db"
    log_ = EventLog(node(db, persist_max_bytes=MIB))
    await log_.start()
    try:
        old = (datetime.now() - timedelta(hours=1)).isoformat()
        future = (datetime.now() + timedelta(hours=1)).isoformat()
        conn = sqlite3.connect(db, timeout=10)
        conn.execute("INSERT INTO ritual_events VALUES ('r-old', ?, 'OLD', 'old-api row', NULL, NULL, 'INFO')", (old,))
        conn.executemany("INSERT INTO system_metrics VALUES (?, ?, 'x', 1.0, NULL)", [("m-old", old), ("m-new", future)])
        conn.commit()
        conn.close()
        n = 0
        while log_.capped == 0:
            await feed(log_, n, 200)
            n += 200
            assert n < 10 * MIB // len(PAD), "the cap was never reached"
    finally:
        await log_.stop()
    assert rows(db, "SELECT metric_id FROM system_metrics WHERE metric_id LIKE 'm-%'") == [("m-new",)]
    assert rows(db, "SELECT count(*) FROM ritual_events WHERE event_id = 'r-old'") == [(0,)]
    assert log_.capped_metrics >= 1
    # the old-API row counts as an event removed, with the batches' events
    left = rows(db, "SELECT count(*) FROM mesh_events WHERE event_type = 't'")[0][0]
    assert log_.capped == n - left + 1


async def test_sqlite_older_file_converted_to_incremental_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = open_sqlite(db)  # made by the old API, before the cap existed
    conn.execute("INSERT INTO ritual_events VALUES ('r1', ?, 'KEEP', 'kept', NULL, NULL, 'INFO')",
                 (datetime.now().isoformat(),))
    conn.close()
    assert rows(db, "PRAGMA auto_vacuum") == [(0,)]
    log_ = EventLog(node(db))
    await log_.start()
    await log_.stop()
    assert rows(db, "PRAGMA auto_vacuum") == [(2,)]
    assert rows(db, "SELECT event_id FROM ritual_events") == [("r1",)]


# -- metrics: compact and short-lived ---------------------------------------------------------------


async def test_metric_samples_store_changes_and_hourly_full_samples(tmp_path: Path) -> None:
    mesh = node(tmp_path / "a.db")
    log_ = EventLog(mesh)
    full = log_.sample_metrics()  # the first sample: every value
    names = [r[2] for r in full]
    assert {"connected_nodes", "uptime", "counters.events_in", "persistence.written", "persistence.capped"} <= set(names)
    assert len(set(r[0] for r in full)) == len(full) and all(len(r[0]) <= 20 for r in full)  # short ids
    assert log_.sample_metrics() == []  # nothing changed (uptime moves with the clock alone)
    log_.written += 5
    changed = log_.sample_metrics()
    assert [(r[2], r[3]) for r in changed] == [("persistence.written", 5.0)]
    assert log_.sample_metrics() == []
    log_.metrics_keyframe_s = 0.0  # a full sample is due
    assert sorted(r[2] for r in log_.sample_metrics()) == sorted(names)
    assert set(names) >= CLOCK_METRICS


async def test_idle_node_stores_only_full_samples(tmp_path: Path) -> None:
    """Two joined idle nodes: after the first sample, nothing is stored until the next
    full sample (one per metrics_keyframe_s, an hour by default)."""
    db = tmp_path / "a.db"
    a, b = await pair(db, sync_interval=0.05)
    try:
        await wait_for(lambda: a.eventlog.samples >= 3)
        a.history(limit=1)  # commit what is waiting
        base = a.eventlog.status()["metrics_written"]  # the first sample (+ the join, if it came after it)
        taken = a.eventlog.samples
        await wait_for(lambda: a.eventlog.samples >= taken + 40)
        a.history(limit=1)  # commit what is waiting
        assert a.eventlog.status()["metrics_written"] == base, rows(db, "SELECT * FROM system_metrics")
    finally:
        await b.stop()
        await a.stop()
    assert rows(db, "SELECT count(*) FROM system_metrics WHERE metric_name = 'uptime'") == [(1,)]


async def test_metrics_retention_separate_from_events(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    two_h = (datetime.now() - timedelta(hours=2)).isoformat()
    store = SQLiteStore(db)
    store.open()
    store.write([{"type": "x", "source_node": "S", "timestamp": two_h, "data": 1, "event_id": "old-event"}],
                [("old-metric", two_h, "m", 1.0, None)])
    store.close()
    # Metrics kept for 1 hour, events for 30 days (the default): the metric row goes, the event stays.
    a, b = await pair(db, persist_metrics_retention_hours=1.0, sync_interval=0.2)
    try:
        await wait_for(lambda: a.eventlog.status()["purged"] >= 1)
        assert a.eventlog.status()["metrics_retention_hours"] == 1.0
        assert [e["event_id"] for e in a.history(types=["x"])] == ["old-event"]
        await wait_for(lambda: a.eventlog.status()["metrics_written"] > 0)
    finally:
        await b.stop()
        await a.stop()
    assert rows(db, "SELECT count(*) FROM system_metrics WHERE metric_id = 'old-metric'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM system_metrics")[0][0] > 0  # the node's own, recent ones stay
    assert rows(db, "SELECT count(*) FROM mesh_events WHERE event_id = 'old-event'") == [(1,)]


# -- PostgreSQL ------------------------------------------------------------------------------------


async def test_pg_cap_oldest_first_counted(pg_url: str) -> None:  # noqa: F811 - the fixture
    mesh = node(url=pg_url, persist_max_bytes=MIB)
    store = PostgresStore(pg_url)
    store.cap_every = 0.0  # check after every write (30 s by default)
    log_ = EventLog(mesh, store)
    await log_.start()
    try:
        await feed(log_, 0, 500)  # under the cap: nothing goes
        assert log_.capped == 0
        n = 500
        while n < 8000:
            await feed(log_, n, 500)
            n += 500
        await wait_for(lambda: log_.capped > 0)
        kept = [e["data"]["seq"] for e in log_.history(types=["t"], limit=10**6)]
        assert kept == list(range(n - len(kept), n)) and 0 < len(kept) < n
        assert log_.capped == n - len(kept)
        assert log_.size_bytes <= MIB
        assert log_.error is None and log_.dropped == 0
    finally:
        await log_.stop()
    left = (await _fetch(pg_url, "SELECT count(*) FROM ritual_events"))[0][0]
    assert left == len(kept)


async def test_pg_metrics_retention_separate(pg_url: str) -> None:  # noqa: F811 - the fixture
    store = PostgresStore(pg_url)
    await asyncio.get_running_loop().run_in_executor(None, store.open)
    two_h = (datetime.now() - timedelta(hours=2)).isoformat()
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: store.write(
            [{"type": "x", "source_node": "S", "timestamp": two_h, "data": 1, "event_id": "old-event"}],
            [("old-metric", two_h, "m", 1.0, None)]))
        cutoff = (datetime.now() - timedelta(days=30)).isoformat()
        mcut = (datetime.now() - timedelta(hours=1)).isoformat()
        assert await asyncio.get_running_loop().run_in_executor(None, store.purge, cutoff, mcut) == 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, store.close)
    assert (await _fetch(pg_url, "SELECT count(*) FROM system_metrics"))[0][0] == 0
    assert (await _fetch(pg_url, "SELECT event_id FROM ritual_events"))[0][0] == "old-event"
