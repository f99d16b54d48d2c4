"""The PostgreSQL event log when things go wrong: a hostile schema name, a password in
the URL, the database going away mid-run (its backend connection terminated), a
database never reachable, and retention.  Real PostgreSQL (tests/services.py, read
the way tests/test_eventlog_pg.py reads it); each test uses a schema of its own.

Each fault is shown against the working path first: events written and queryable,
then the fault, then what the node says and counts, then the recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore
from spiralfast.store.eventlog import ERROR_RETRY_S, PostgresStore, mask_url, split_pg_url
from spiralfast.testing import LoopbackHub

from . import services
from .conftest import free_port, require
from .waiting import wait_until, wait_until_async

PG_BASE = services.postgres().url

pytestmark = pytest.mark.timeout(120)


async def _pg_available() -> bool:
    require(services.postgres().available, services.postgres().missing)
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_BASE, timeout=3)
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False
    await conn.close()
    return True


async def _raw() -> Any:
    import asyncpg

    return await asyncpg.connect(PG_BASE, timeout=10)


async def _schemas() -> set[str]:
    conn = await _raw()
    try:
        return {r[0] for r in await conn.fetch("SELECT schema_name FROM information_schema.schemata")}
    finally:
        await conn.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    require(await _pg_available(), "PostgreSQL")
    name = "sf_fault_" + uuid.uuid4().hex[:12]
    yield name
    conn = await _raw()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def _with_password(url: str, password: str) -> str:
    """PG_BASE with a password added (the suite's server trusts local connections, so
    it is ignored there: the URL still works)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _node(url: str, hub: LoopbackHub, **kw: Any) -> MeshCore:
    return MeshCore(MeshConfig(node_id="PG", enable_redis=False, enable_websocket=False, persistence_url=url,
                               persist_events="all", sync_interval=0.2, **kw), loopback=hub)


async def _count(schema: str, where: str = "TRUE") -> int:
    conn = await _raw()
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        return int(await conn.fetchval(f"SELECT count(*) FROM ritual_events WHERE {where}"))
    finally:
        await conn.close()


async def _count_is(schema: str, where: str, n: int) -> bool:
    return await _count(schema, where) == n


def _persist(node: MeshCore) -> dict[str, Any]:
    return node.get_mesh_status()["persistence"]  # type: ignore[no-any-return]


# -- the schema-name guard ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    'x"; DROP SCHEMA public CASCADE; --', "a-b", "1abc", "sp ace", "dot.ted", "é", "x%22y",
])
async def test_a_hostile_schema_name_is_refused_and_creates_nothing(schema: str, bad: str) -> None:
    good = PostgresStore(_with_query(PG_BASE, schema=schema))  # the guard lets a plain name through

    def open_and_close() -> None:  # the store runs its own loop: on a thread of its own
        good.open()
        good.close()

    await asyncio.to_thread(open_and_close)
    assert schema in await _schemas()
    before = await _schemas()
    url = _with_query(PG_BASE, schema=bad)
    with pytest.raises(ValueError, match="bad schema name"):
        PostgresStore(url)
    hub = LoopbackHub()
    with pytest.raises(ValueError, match="bad schema name"):  # the node refuses it at start, too
        node = _node(url, hub)
        await node.start()
        await node.stop()
    assert await _schemas() == before  # nothing created, nothing dropped


# -- URL masking -------------------------------------------------------------------------


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql://u:hunter2@db:5432/x?schema=s") == "postgresql://u:****@db:5432/x?schema=s"
    assert mask_url("postgresql://u@db/x") == "postgresql://u@db/x"  # nothing to hide
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert mask_url("postgresql://hunter2:hunter2@db/x") == "postgresql://hunter2:****@db/x"  # user kept
    assert mask_url("postgresql://u:p%40ss@db/x") == "postgresql://u:****@db/x"  # percent-encoded
    assert split_pg_url("postgresql://u:pw@db/x?schema=s&sslmode=disable") == (
        "postgresql://u:pw@db/x?sslmode=disable", "s")


async def test_the_password_never_shows_in_status_or_logs(schema: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    hub = LoopbackHub()
    node = _node(_with_query(_with_password(PG_BASE, secret), schema=schema), hub)
    await node.start()
    try:
        await node.broadcast_event("masked", {"n": 1})
        await wait_until_async(lambda: _count(schema, "event_type = 'masked'"), "the event reached PostgreSQL")
        st = _persist(node)
        assert st["backend"] == "postgresql" and ":****@" in st["where"]  # the URL is shown, masked
        assert secret not in json.dumps(node.get_mesh_status(), default=str)
    finally:
        await node.stop()
    assert any(":****@" in r.getMessage() for r in caplog.records)  # the log names where, masked
    assert not [r.getMessage() for r in caplog.records if secret in r.getMessage()]


# -- an outage mid-run, and a database never reachable -----------------------------------


async def test_backend_terminated_mid_run_is_counted_then_recovered(schema: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spiralfast")
    app = "sf_fault_" + uuid.uuid4().hex[:8]  # names the writer's connection in pg_stat_activity
    hub = LoopbackHub()
    node = _node(_with_query(PG_BASE, schema=schema, application_name=app), hub)
    await node.start()
    raw = await _raw()
    try:
        # Working: events written and counted.
        for i in range(50):
            await node.broadcast_event("before", {"i": i})
        await wait_until_async(lambda: _count_is(schema, "event_type = 'before'", 50), "50 events written")
        assert _persist(node)["error"] is None

        # The outage: PostgreSQL ends the writer's connection.
        pids = [r[0] for r in await raw.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app)]
        assert pids, "the writer's connection is in pg_stat_activity"
        assert all([await raw.fetchval("SELECT pg_terminate_backend($1)", p) for p in pids])
        await wait_until_async(
            lambda: _fetch_pids(raw, app, pids), "the terminated backend is gone from pg_stat_activity"
        )
        n = 0
        while _persist(node)["error"] is None:  # the next batch meets the dead connection
            await node.broadcast_event("during", {"i": n})
            n += 1
            await wait_until(lambda: _persist(node)["pending"] == 0, "the batch was handed over and settled")
            assert n < 1000, "the writer never noticed the terminated connection"
        st = _persist(node)
        assert st["failures"] == 1 and st["dropped"] >= 1 and st["error"]
        assert node.running  # the node runs on

        # Recovery: the writer reconnects at its next retry (ERROR_RETRY_S) and writes again.
        async def after_written() -> int:
            await node.broadcast_event("after", {"t": 1})
            return await _count(schema, "event_type = 'after'")

        await wait_until_async(after_written, "events written again after the outage",
                               timeout=ERROR_RETRY_S * 5 + 10, interval=0.2)
        await wait_until(lambda: _persist(node)["error"] is None, "the error cleared")
        await wait_until(lambda: _persist(node)["pending"] == 0, "nothing pending")
        st = _persist(node)
        # Every event handed to the writer is either written or counted as dropped.
        assert st["written"] + st["dropped"] == st["recorded"], st
        assert await _count(schema, "event_type = 'before'") == 50  # what was written stays
        assert st["written"] == await _count(schema), st
        msgs = [r.getMessage() for r in caplog.records]
        assert sum("cannot write to postgresql" in m for m in msgs) == 1, msgs  # one error, not a flood
        assert any("again" in m and "dropped" in m for m in msgs), msgs  # and the recovery is said
    finally:
        await raw.close()
        await node.stop()


async def _fetch_pids(raw: Any, app: str, old: list[int]) -> bool:
    rows = await raw.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app)
    return not {r[0] for r in rows} & set(old)


async def test_a_database_never_reachable_runs_on_and_counts_drops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spiralfast")
    secret = "pw-" + uuid.uuid4().hex[:6]
    port = free_port()  # nothing listens there
    url = f"postgresql://sf:{secret}@127.0.0.1:{port}/nowhere?schema=sf_never"
    hub = LoopbackHub()
    peer = MeshCore(MeshConfig(node_id="PEER", enable_redis=False, enable_websocket=False), loopback=hub)
    node = _node(url, hub)
    await peer.start()
    await node.start()  # does not fail: one clear error, the node runs
    try:
        got: list[Any] = []
        peer.register_event_handler("still", got.append)
        await wait_until(lambda: "PEER" in node.nodes, "the node joined its peer")
        for i in range(20):
            await node.broadcast_event("still", {"i": i})
        await wait_until(lambda: len(got) == 20, "the peer got all 20 events")  # the mesh is unaffected
        await wait_until(lambda: _persist(node)["dropped"] >= 20, "the unwritten events counted as dropped")
        st = _persist(node)
        assert st["error"] and st["written"] == 0 and st["failures"] == 1
        msgs = [r.getMessage() for r in caplog.records]
        errors = [m for m in msgs if "cannot write to postgresql" in m]
        assert len(errors) == 1 and f":{port}/" in errors[0], msgs
        assert not [m for m in msgs if secret in m]
    finally:
        await node.stop()
        await peer.stop()


# -- retention -----------------------------------------------------------------------------


async def test_retention_removes_only_what_is_older(schema: str) -> None:
    hub = LoopbackHub()
    # Retention every max(1 s, min(retention, metrics retention) / 10): metrics kept for
    # 36 s makes the writer purge about every 3.6 s.
    node = _node(_with_query(PG_BASE, schema=schema), hub, persist_retention_days=1.0,
                 persist_metrics_retention_hours=0.01)
    await node.start()
    try:
        await node.broadcast_event("fresh", {"n": 1})
        await wait_until_async(lambda: _count(schema, "event_type = 'fresh'"), "the fresh event written")
        old = (datetime.now() - timedelta(days=2)).isoformat()
        young = (datetime.now() - timedelta(hours=20)).isoformat()
        conn = await _raw()
        try:
            await conn.execute(f'SET search_path TO "{schema}"')
            rows = [(f"old-{i}", old, "aged", "", "X", "{}", "INFO") for i in range(30)]
            rows += [(f"young-{i}", young, "aged", "", "X", "{}", "INFO") for i in range(5)]
            await conn.copy_records_to_table("ritual_events", records=rows,
                                             columns=["event_id", "timestamp", "event_type", "description",
                                                      "agent_id", "metadata", "severity"])
        finally:
            await conn.close()
        purged0 = _persist(node)["purged"]
        await wait_until_async(lambda: _count_is(schema, "event_id LIKE 'old-%'", 0),
                               "the 2-day-old rows removed by retention", timeout=60)
        assert _persist(node)["purged"] >= purged0 + 30
        assert await _count(schema, "event_id LIKE 'young-%'") == 5  # within a day: kept
        assert await _count(schema, "event_type = 'fresh'") == 1
    finally:
        await node.stop()
