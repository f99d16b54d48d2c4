"""The delivery cursor's storage (``delivery_cursor``) in both event-log stores: rows
written in the same transaction as a batch, read back by a returning node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spiralfast.store.eventlog import PostgresStore, SQLiteStore, Store

from . import services
from .conftest import require

ROWS = [("0123456789abs", 41, "[43]", 1000.5), ("", 1, "[]", 1001.0)]


def _round_trip(store: Store) -> list[Any]:
    store.open()
    try:
        store.cursor_rows = list(ROWS)
        store.write([], [])
        assert store.cursor_rows == []  # taken by the write
        store.cursor_rows = [("0123456789abs", 44, "[]", 1002.0)]  # the same origin again: replaced
        store.write([], [])
        return sorted(store.read_cursor())
    finally:
        store.close()


def test_sqlite_store_keeps_the_cursor(tmp_path: Any) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    assert store.read_cursor() == []  # no file yet: a fresh node
    assert _round_trip(store) == [("", 1, "[]", 1001.0), ("0123456789abs", 44, "[]", 1002.0)]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require(services.postgres().available, services.postgres().missing)
    import asyncpg

    base = services.postgres().url
    schema = "sf_test_" + uuid.uuid4().hex[:12]
    yield f"{base}?schema={schema}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_postgres_store_keeps_the_cursor(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    got = await asyncio.get_running_loop().run_in_executor(None, _round_trip, store)
    assert got == [("", 1, "[]", 1001.0), ("0123456789abs", 44, "[]", 1002.0)]
