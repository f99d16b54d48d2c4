"""The event log on a real PostgreSQL: a database of the suite's own in the server at
127.0.0.1:5432 (trust auth), or ``SPIRALFAST_TEST_PG`` (tests/services.py).  Each test
uses a schema of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore
from spiralfast.store.eventlog import EVENT_COLUMNS, read_history
from spiralfast.testing import LoopbackHub

from . import services
from .conftest import require
from .persist_sender import HEARTBEAT
from .procs import NodeProc
from .test_eventlog import Sender, events_in
from .waiting import wait_until, wait_until_async

PG_BASE = services.postgres().url


async def _pg_available() -> bool:
    require(services.postgres().available, services.postgres().missing)
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_BASE, timeout=3)
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False
    await conn.close()
    return True


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require(await _pg_available(), "PostgreSQL")
    import asyncpg

    schema = "sf_test_" + uuid.uuid4().hex[:12]
    yield f"{PG_BASE}?schema={schema}"
    conn = await asyncpg.connect(PG_BASE)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[Any]:
    import asyncpg

    from spiralfast.store.eventlog import split_pg_url

    dsn, schema = split_pg_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_pg_history_replay_metrics_old_tables(pg_url: str) -> None:
    hub = LoopbackHub()
    a = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False, persistence_url=pg_url,
                            persist_events="all", sync_interval=0.2), loopback=hub)
    b = MeshCore(MeshConfig(node_id="B", enable_redis=False, enable_websocket=False), loopback=hub)
    await a.start()
    await b.start()
    try:
        await wait_until(lambda: "B" in a.nodes, '"B" in a.nodes')
        n = 20_000
        for i in range(n):
            await b.broadcast_event("load", {"seq": i})
        await b.send_to_node("A", "direct", {"x": 1})
        await wait_until(lambda: events_in(a) >= n + 1, 'events_in(a) >= n + 1', timeout=30)
        hist = a.history(types=["load"], limit=n)
        assert [e["data"]["seq"] for e in hist] == list(range(n))
        assert a.history(types="direct")[0]["target_node"] == "A"
        assert [e["type"] for e in a.history(types=["node_register"])] == ["node_register"]
        got: list[int] = []
        a.register_event_handler("load", lambda env: got.append(env["data"]["seq"]) if env.get("replayed") else None)
        assert await a.replay("1h", types=["load"]) == n
        assert got == list(range(n))
        await wait_until(lambda: a.eventlog.status()["metrics_written"] > 0, 'a.eventlog.status()["metrics_written"] > 0')
        st = a.get_mesh_status()["persistence"]
        assert st["backend"] == "postgresql" and st["dropped"] == 0 and st["error"] is None
    finally:
        await b.stop()
        await a.stop()
    cols = await _fetch(pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'ritual_events' "
                                "AND table_schema = current_schema() ORDER BY ordinal_position")
    assert tuple(r[0] for r in cols) == EVENT_COLUMNS
    tables = {r[0] for r in await _fetch(pg_url, "SELECT table_name FROM information_schema.tables "
                                                 "WHERE table_schema = current_schema()")}
    assert tables == {"agents", "ritual_events", "system_metrics", "configuration", "delivery_cursor"}
    assert (await _fetch(pg_url, "SELECT count(*) FROM system_metrics WHERE metric_name = 'uptime'"))[0][0] > 0
    assert [e["data"]["seq"] for e in read_history(url=pg_url, types=["load"], limit=2)] == [n - 2, n - 1]


async def test_pg_two_node_processes_share_one_log(pg_url: str) -> None:
    """Two persisting node processes write into one PostgreSQL log (a fleet)."""
    n = 50_000
    a = NodeProc("node-a", "--persistence-url", pg_url, "--persist-events", "all", hb=HEARTBEAT)
    b = None
    s = None
    try:
        b = NodeProc("node-b", "--persistence-url", pg_url, "--persist-events", "all", "--peer", a.url, hb=HEARTBEAT)
        s = Sender(a.url, n)
        s.wait_sent()

        async def stored() -> tuple[int, int]:
            r = await _fetch(pg_url, "SELECT count(DISTINCT event_id), count(*) FROM ritual_events "
                                     "WHERE event_type = 'load'")
            return int(r[0][0]), int(r[0][1])

        # Each node stores what it receives: node-a all of them (the sender's peer),
        # node-b those sent after gossip joined it to the sender.
        async def all_stored() -> bool:
            return (await stored())[0] >= n

        await wait_until_async(all_stored, f"{n} distinct events stored", timeout=60, interval=0.2)
        distinct, total = await stored()
        assert distinct == n and total > n
        rows = await _fetch(pg_url, "SELECT DISTINCT agent_id FROM ritual_events WHERE event_type = 'node_register'")
        assert "node-b" in {r[0] for r in rows}  # node-a stored node-b's join
    finally:
        if s is not None:
            s.close()
        for p in (b, a):
            if p is not None:
                assert p.sigint() == 0


async def test_pg_record_event_wire_events(pg_url: str) -> None:
    import time
    from datetime import datetime

    from spiralfast.store.eventlog import EventLog
    from spiralfast.wire import schema

    mesh = MeshCore(MeshConfig(node_id="A", enable_redis=False, enable_websocket=False, persistence_url=pg_url,
                               persist_events="all"))
    elog = EventLog(mesh)
    await elog.start()
    t0 = time.time()
    elog.record_event(schema.Event("S-1", "wire", "S", t0, {"k": 1}, "A"))
    elog.record_event(schema.Event("S-2", "system_alert", "S", t0 + 0.1, {"level": "high"}))
    hist = elog.history()
    await elog.stop()
    assert hist == [
        {"type": "wire", "source_node": "S", "timestamp": datetime.fromtimestamp(t0).isoformat(), "data": {"k": 1},
         "event_id": "S-1", "target_node": "A"},
        {"type": "system_alert", "source_node": "S", "timestamp": datetime.fromtimestamp(t0 + 0.1).isoformat(),
         "data": {"level": "high"}, "event_id": "S-2"},
    ]
    sev = await _fetch(pg_url, "SELECT severity FROM ritual_events WHERE event_id = 'S-2'")
    assert sev[0][0] == "WARNING"
