"""The node's event log on real SQLite files: in-process nodes, then real node processes
(joins, a kill -9 stored as a lost node, 100,000 events, kill -9 mid-stream, a full and a
read-only disk)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore
from spiralfast.persistence import PersistenceManager, RitualEventRecord, SystemMetricRecord
from spiralfast.store.eventlog import BATCH_MAX_EVENTS, EventLog, SQLiteStore, parse_time, read_history
from spiralfast.testing import LoopbackHub

from .conftest import require
from .persist_sender import HEARTBEAT
from .procs import NodeProc
from .waiting import wait_until, wait_until_async, wait_until_sync


async def _knows(p: NodeProc, nid: str) -> bool:
    return nid in await p.node_ids()

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------


async def pair(db: Path, **cfg: Any) -> tuple[MeshCore, MeshCore]:
    """A (persisting to ``db``) and B, joined in-process."""
    hub = LoopbackHub()
    a = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False,
                            persistence_path=str(db), **cfg), loopback=hub)
    b = MeshCore(MeshConfig(node_id="B", enable_redis=False, enable_websocket=False), loopback=hub)
    await a.start()
    await b.start()
    await wait_until(lambda: "B" in a.nodes and "A" in b.nodes, '"B" in a.nodes and "A" in b.nodes')
    return a, b


def events_in(node: MeshCore) -> int:
    return int(node.get_mesh_status()["counters"]["events_in"])


def rows(db: Path, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def load_seqs(db: Path, etype: str = "load") -> list[int]:
    return sorted(json.loads(d)["seq"] for (d,) in rows(db, "SELECT data FROM mesh_events WHERE event_type = ?", etype))


class Sender:
    """``tests/persist_sender.py`` in its own process."""

    def __init__(self, url: str, n: int, etype: str = "load") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.persist_sender", url, str(n), etype],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "connected", line + (self.proc.stderr.read() if self.proc.stderr else "")

    def wait_sent(self, timeout: float = 120) -> None:
        stdout = self.proc.stdout
        assert stdout is not None

        def sent_line() -> bool:
            """Read one line of the sender's; true once it reports it sent everything."""
            line = stdout.readline()
            if not line:
                raise AssertionError("sender did not finish: it exited without its 'sent' line")
            return line.startswith("sent")

        wait_until_sync(sent_line, "the sender finished (its 'sent' line)", timeout=timeout, interval=0)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _mount(point: Path, opts: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                          capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(point: Path, size: str = "2m", ro: bool = False) -> Iterator[Path]:
    """A real tmpfs of ``size`` (read-only with ``ro``) at ``point`` (needs root)."""
    ok = _mount(point, f"size={size}" + (",ro" if ro else ""))
    require(ok, "mount (root) for a small or read-only disk")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# -- in-process ------------------------------------------------------------------------


async def test_history_filters_and_replay(tmp_path: Path) -> None:
    a, b = await pair(tmp_path / "a.db", persist_events="all")
    try:
        for i in range(300):
            await b.broadcast_event("hello" if i % 3 else "other", {"i": i})
        await a.broadcast_event("mine", {"x": 1})
        await wait_until(lambda: events_in(a) >= 300, 'events_in(a) >= 300')
        hello = a.history(types=["hello"], limit=10_000)
        assert [e["data"]["i"] for e in hello] == [i for i in range(300) if i % 3]
        assert all(e["source_node"] == "B" and e["event_id"] for e in hello)
        assert [e["data"]["i"] for e in a.history(types="hello", limit=3)] == [296, 298, 299]  # newest last
        assert [e["type"] for e in a.history(source="A", types=["mine"])] == ["mine"]
        assert {e["type"] for e in a.history(limit=10_000)} >= {"hello", "other", "mine", "node_register"}
        assert a.history(since="1h", types=["other"], limit=1)[0]["data"] == {"i": 297}
        assert a.history(until=datetime.now() - timedelta(hours=1)) == []
        assert a.history(since=datetime.now() + timedelta(seconds=30)) == []

        got: list[dict[str, Any]] = []
        order: list[int] = []

        async def slow(env: dict[str, Any]) -> None:
            await asyncio.sleep(0)  # a handler that suspends (what is under test), not a wait
            order.append(env["data"]["i"])

        a.register_event_handler("other", got.append)
        a.register_event_handler("other", slow)
        n = await a.replay("1h", types=["other"])
        assert n == 100
        assert [e["data"]["i"] for e in got] == list(range(0, 300, 3)) == order
        assert all(e["replayed"] is True for e in got)
        st = a.get_mesh_status()["persistence"]
        assert st["dropped"] == 0 and st["error"] is None and st["backend"] == "sqlite"
    finally:
        await b.stop()
        await a.stop()


async def test_mesh_mode_persists_membership_and_listed_types(tmp_path: Path) -> None:
    a, b = await pair(tmp_path / "a.db", persist_events=["chosen"])
    try:
        await b.broadcast_event("chosen", {"k": 1})
        await b.broadcast_event("ignored", {"k": 2})
        await b.broadcast_event("system_alert", {"level": "high"})
        await wait_until(lambda: events_in(a) >= 3, 'events_in(a) >= 3')
    finally:
        await b.stop()
        await wait_until(lambda: "B" not in a.nodes, '"B" not in a.nodes')
        await a.stop()
    envs = read_history(str(tmp_path / "a.db"))
    assert [e["type"] for e in envs] == ["node_register", "chosen", "system_alert", "node_unregister"]
    assert envs[-1]["data"] == {"node_id": "B", "reason": "left"}
    # Membership, alerts and errors are also rows of the old table, for old tools.
    got = rows(tmp_path / "a.db", "SELECT event_type, description, agent_id, severity FROM ritual_events ORDER BY timestamp")
    assert got == [("node_register", "Node joined mesh", "B", "INFO"), ("system_alert", "system_alert", "B", "WARNING"),
                   ("node_unregister", "Node left mesh (left)", "B", "INFO")]
    assert [r[0] for r in rows(tmp_path / "a.db", "SELECT event_type FROM mesh_events ORDER BY timestamp")] == [
        "node_register", "chosen", "system_alert", "node_unregister"]


async def test_metrics_every_sync_interval_and_retention(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    old = datetime.now() - timedelta(days=3)
    pm = PersistenceManager(data_dir=tmp_path)  # the old API writes rows the node later expires
    pm.backend.save_ritual_event(RitualEventRecord("old", old, "X", "old"))
    pm.backend.save_system_metric(SystemMetricRecord("old-m", old, "m", 1.0))
    pm.save_ritual_event("KEEP", "recent")
    pm.close()
    os.replace(tmp_path / "codex.db", db)
    store = SQLiteStore(db)  # and a batch of old mesh events
    store.open()
    store.write([{"type": "x", "source_node": "S", "timestamp": old.isoformat(), "data": 1, "event_id": "o"}], [])
    store.close()
    a, b = await pair(db, sync_interval=0.2, persist_retention_days=1)
    try:
        await wait_until(lambda: a.eventlog.status()["purged"] == 3, 'a.eventlog.status()["purged"] == 3')
        assert a.history(types=["x"]) == []
        await wait_until(lambda: a.eventlog.status()["metrics_written"] >= 20, 'a.eventlog.status()["metrics_written"] >= 20')
    finally:
        await b.stop()
        await a.stop()
    names = {r[0] for r in rows(db, "SELECT metric_name FROM system_metrics")}
    assert {"connected_nodes", "uptime", "counters.events_in", "persistence.written"} <= names
    assert rows(db, "SELECT DISTINCT metadata FROM system_metrics") == [('{"node_id": "A"}',)]
    assert [r[0] for r in rows(db, "SELECT event_type FROM ritual_events WHERE event_type IN ('X', 'KEEP')")] == ["KEEP"]


class SlowStore(SQLiteStore):
    """A real file on a disk slower than the event rate."""

    def write(self, events: Any, metrics: Any) -> None:
        time.sleep(0.05)  # time itself: a slow disk
        super().write(events, metrics)


async def test_slow_disk_backpressure_bounded_no_drops(tmp_path: Path) -> None:
    mesh = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False,
                               persistence_path=str(tmp_path / "a.db"), persist_events="all"))
    log_ = EventLog(mesh, SlowStore(tmp_path / "a.db"))
    await log_.start()
    n = 6 * BATCH_MAX_EVENTS + 123
    most = 0
    ts = datetime.now().isoformat()
    for i in range(n):
        log_.record({"type": "t", "source_node": "S", "timestamp": ts, "data": {"seq": i}, "event_id": f"S-{i}"})
        most = max(most, len(log_._buf) + log_.in_flight)
    st = log_.status()
    assert most <= BATCH_MAX_EVENTS  # uncommitted events stay bounded: record() waited instead
    assert st["stalls"] >= 4 and st["stall_seconds"] > 0
    seen: list[int] = []
    mesh.register_event_handler("t", lambda env: seen.append(env["data"]["seq"]))
    assert await log_.replay("1h") == n  # across many batches, in order
    assert seen == list(range(n))
    await log_.stop()
    assert log_.status()["dropped"] == 0
    assert load_seqs(tmp_path / "a.db", "t") == list(range(n))


async def test_full_disk_one_error_node_keeps_running(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        hub = LoopbackHub()
        a = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False,
                                persistence_path=str(disk / "a.db"), persist_events="all"), loopback=hub)
        b = MeshCore(MeshConfig(node_id="B", enable_redis=False, enable_websocket=False), loopback=hub)
        await a.start()
        await b.start()
        await wait_until(lambda: "B" in a.nodes, '"B" in a.nodes')
        caplog.set_level(logging.ERROR, "spiralfast.store.eventlog")
        try:
            blob = "x" * 500
            i = 0
            while a.eventlog.status()["error"] is None:
                for _ in range(500):
                    await b.broadcast_event("fill", {"i": i, "pad": blob})
                    i += 1
                await wait_until(lambda: a.eventlog.status()["pending"] == 0 or a.eventlog.status()["error"],
                                 "the writer took the burst (or failed)")
                assert i < 200_000, "the 1 MB disk never filled"
            for _ in range(2000):  # the node goes on receiving after the error
                await b.broadcast_event("after", {"pad": blob})
            await wait_until(lambda: events_in(a) >= i + 2000, 'events_in(a) >= i + 2000')
            await wait_until(lambda: a.eventlog.status()["dropped"] > 0, 'a.eventlog.status()["dropped"] > 0')
            assert a.running and a.get_mesh_status()["status"] == "active"
        finally:
            await b.stop()
            await a.stop()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        msg = errors[0].getMessage()
        assert "cannot write" in msg and ("full" in msg or "disk I/O error" in msg), msg


def test_parse_time() -> None:
    now = datetime.now()
    assert parse_time(None) is None
    assert parse_time("2026-01-02T03:04:05") == "2026-01-02T03:04:05"
    assert abs(datetime.fromisoformat(parse_time("10m") or "") - (now - timedelta(minutes=10))).total_seconds() < 5
    assert abs(datetime.fromisoformat(parse_time(time.time()) or "") - now).total_seconds() < 5
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")


# -- real node processes -------------------------------------------------------------------


def _stderr(p: NodeProc) -> str:
    assert p.proc is not None and p.proc.stderr is not None
    return p.proc.stderr.read()


async def test_three_nodes_joins_and_kill9_stored_as_lost(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    a = NodeProc("node-a", "--db", str(db))
    b = c = None
    try:
        b = NodeProc("node-b", "--peer", a.url, "--no-db")
        c = NodeProc("node-c", "--peer", a.url)

        async def known() -> bool:
            return await a.node_ids() >= {"node-a", "node-b", "node-c"}

        await wait_until_async(known, "node-a knows node-b and node-c", interval=0.05)
        c.kill9()

        async def c_gone_logged() -> bool:
            return any(e["source_node"] == "node-c" for e in await a.query("history", types=["node_unregister"]))

        await wait_until_async(c_gone_logged, "node-a's history shows node-c's removal", interval=0.1)
    finally:
        for p in (c, b):
            if p is not None:
                p.stop()
        assert a.sigint() == 0
    joined = {e["source_node"] for e in read_history(str(db), types=["node_register"])}
    assert joined == {"node-b", "node-c"}
    lost = rows(db, "SELECT description, severity, metadata FROM ritual_events "
                    "WHERE event_type = 'node_unregister' AND agent_id = 'node-c'")
    assert [(d, s, json.loads(m)["data"]["reason"]) for d, s, m in lost] == [("Node lost (silent)", "WARNING", "silent")]


async def test_100k_events_all_queryable(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    n = 100_000
    a = NodeProc("node-a", "--db", str(db), "--persist-events", "all", hb=HEARTBEAT)
    s = None
    try:
        s = Sender(a.url, n)
        s.wait_sent()
        await wait_until(lambda: rows(db, "SELECT count(*) FROM mesh_events WHERE event_type='load'")[0][0] >= n, 'rows(db, "SELECT count(*) FROM mesh_events WHERE event_type=\'load\'")[0][0] >= n', timeout=60, interval=0.2)
        newest = await a.query("history", types=["load"], limit=3)
        assert [e["data"]["seq"] for e in newest] == [n - 3, n - 2, n - 1]
        st = (await a.query("status"))["persistence"]
        assert st["dropped"] == 0 and st["error"] is None
    finally:
        if s is not None:
            s.close()
        assert a.sigint() == 0
    assert load_seqs(db) == list(range(n))
    out = subprocess.run([sys.executable, "-m", "spiralfast", "mesh", "history", "--db", str(db), "--type", "load",
                          "--limit", "2", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["data"]["seq"] for x in out.stdout.splitlines()] == [n - 2, n - 1]


async def test_kill9_mid_stream_loses_at_most_one_batch(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    a = NodeProc("node-a", "--db", str(db), "--persist-events", "all", hb=HEARTBEAT)
    s = None
    try:
        s = Sender(a.url, 3_000_000)
        async def written() -> dict[str, Any] | None:
            p: dict[str, Any] = (await a.query("status"))["persistence"]
            return p if p["written"] > 3 * BATCH_MAX_EVENTS else None

        st = await wait_until_async(written, f"more than {3 * BATCH_MAX_EVENTS} events written", timeout=60,
                                    interval=0.05)
        recorded = st["recorded"]  # accepted by the event log before the kill
        a.kill9()
    finally:
        if s is not None:
            s.close()
        a.stop()
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    seqs = load_seqs(db)
    assert seqs == list(range(len(seqs)))  # a prefix of the stream: nothing in the middle is missing
    stored = rows(db, "SELECT count(*) FROM mesh_events")[0][0]
    # Lost: at most BATCH_MAX_EVENTS (the batch being written plus the one being filled).
    assert stored >= recorded - BATCH_MAX_EVENTS, (stored, recorded)


async def test_history_command_against_a_node(tmp_path: Path) -> None:
    a = NodeProc("node-a", "--db", str(tmp_path / "a.db"), "--persist-events", "ping")
    b = None
    try:
        b = NodeProc("node-b", "--peer", a.url, "--no-db")
        await wait_until_async(lambda: _knows(b, "node-a"), "node-b knows node-a", interval=0.05)
        for i in range(3):
            await b.query("publish", type="ping", data={"i": i})
        await b.query("publish", type="pong", data={})

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "spiralfast", "mesh", "history", *args],
                                  capture_output=True, text=True, cwd=ROOT, timeout=60)

        def three() -> list[dict[str, Any]] | None:
            out = cli("--node", a.url, "--type", "ping", "--since", "5m", "--json")
            assert out.returncode == 0, out.stderr
            envs = [json.loads(x) for x in out.stdout.splitlines()]
            return envs if len(envs) == 3 else None

        envs = await wait_until(three, "the history command shows the three pings", interval=0.1)
        assert [e["data"]["i"] for e in envs] == [0, 1, 2] and {e["source_node"] for e in envs} == {"node-b"}
        assert "node_register from node-b" in cli("--node", a.url, "--source", "node-b").stdout
        assert cli("--node", a.url, "--type", "pong").stdout == ""  # not persisted
        bad = cli("--node", a.url, "--since", "yesterday-ish")
        assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1
        off = cli("--node", b.url)
        assert off.returncode != 0 and "persistence is off" in off.stderr
    finally:
        if b is not None:
            b.stop()
        a.stop()


async def test_read_only_disk_one_error_node_keeps_running(tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", ro=True) as disk:
        a = NodeProc("node-a", "--db", str(disk / "a.db"))
        try:
            st = (await a.query("status"))["persistence"]
            assert st["error"] is not None and st["written"] == 0
            b = NodeProc("node-b", "--peer", a.url, "--no-db")
            try:
                await wait_until_async(lambda: _knows(a, "node-b"), "node-a knows node-b", interval=0.05)
            finally:
                b.stop()
        finally:
            assert a.sigint() == 0
        err = _stderr(a)
        assert err.count("event log: cannot write") == 1, err


async def test_full_disk_in_a_node_process(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        a = NodeProc("node-a", "--db", str(disk / "a.db"), "--persist-events", "all", hb=HEARTBEAT)
        s = None
        try:
            s = Sender(a.url, 400_000)
            s.wait_sent()
            async def dropping() -> bool:
                return bool((await a.query("status"))["persistence"]["dropped"] > 0)

            await wait_until_async(dropping, "node-a counts dropped events on the full disk", timeout=30)
            st = await a.query("status")
            assert st["status"] == "active" and st["persistence"]["failures"] >= 1
        finally:
            if s is not None:
                s.close()
            assert a.sigint() == 0
        err = _stderr(a)
        assert err.count("event log: cannot write") == 1, err
        assert "full" in err or "disk I/O error" in err, err
        assert "Traceback" not in err


async def test_record_event_keeps_wire_events(tmp_path: Path) -> None:
    """record_event() (the struct the hot paths have) and record() (an envelope) mix."""
    from spiralfast.wire import schema

    mesh = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False,
                               persistence_path=str(tmp_path / "a.db"), persist_events="all"))
    elog = EventLog(mesh)
    await elog.start()
    t0 = time.time()
    elog.record_event(schema.Event("S-1", "wire", "S", t0, {"k": [1, 2]}))
    elog.record({"type": "node_register", "source_node": "S", "timestamp": datetime.now().isoformat(),
                 "data": {"node_id": "S"}})
    elog.record_event(schema.Event("S-2", "wire", "S", t0 + 0.5, "text", "A"))
    elog.record_event(schema.Event("S-3", "system_error", "S", t0 + 1.0, {"e": 1}))
    hist = elog.history(limit=10)
    await elog.stop()
    assert [e["type"] for e in hist] == ["wire", "node_register", "wire", "system_error"]
    assert hist[0] == {"type": "wire", "source_node": "S", "timestamp": datetime.fromtimestamp(t0).isoformat(),
                       "data": {"k": [1, 2]}, "event_id": "S-1"}
    assert hist[2]["target_node"] == "A" and hist[2]["data"] == "text"
    assert hist[1]["event_id"]  # given one when stored
    view = rows(tmp_path / "a.db", "SELECT event_id, event_type, source_node, target_node, data FROM mesh_events")
    assert [v[0] for v in view][:1] == ["S-1"] and {v[1] for v in view} == {"wire", "node_register", "system_error"}
    assert ("S-2", "wire", "S", "A", '"text"') in view
    old = rows(tmp_path / "a.db", "SELECT event_id, event_type, severity FROM ritual_events ORDER BY timestamp")
    assert [(o[1], o[2]) for o in old] == [("node_register", "INFO"), ("system_error", "ERROR")]
