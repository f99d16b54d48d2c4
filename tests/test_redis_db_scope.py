"""Redis database numbers separate meshes (issue 24, item 9).  Redis pub/sub ignores the
database, so nodes on ``/0`` and ``/3`` with the same (default) mesh name used to merge
into one mesh; the channel names now carry the database (``C:sf:db3:<mesh>``), and
database 0 keeps the plain names earlier releases use.  The old JSON format's channels
(``ritual_channel``, ``node_<id>``) stay as the old library names them.  Real Redis: the
suite's own (tests/services.py)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.links.bus.redis import RedisSettings, redis_db

from . import services
from .conftest import require, wait_for


def _url(db: int) -> str:
    svc = services.redis()
    require(svc.available, svc.missing)
    base = svc.url.rsplit("/", 1)[0] if svc.url.count("/") > 2 else svc.url
    return f"{base}/{db}"


def test_database_number_of_a_url() -> None:
    assert [redis_db(u) for u in ("redis://h:1", "redis://h:1/0", "redis://h:1/3", "rediss://u:p@h:2/7",
                                  "unix:///tmp/r.sock?db=4", "redis://h:1/?db=5")] == [0, 0, 3, 7, 4, 5]
    plain, three = RedisSettings("n", "redis://h:1/0", "C"), RedisSettings("n", "redis://h:1/3", "C")
    assert plain.scope == "spiral_codex_mesh" and three.scope == "db3:spiral_codex_mesh"


async def test_nodes_on_db_0_and_db_3_are_two_meshes(caplog: pytest.LogCaptureFixture) -> None:
    ch = "dbs_" + uuid.uuid4().hex[:8]  # this test's own ritual_channel; the mesh name is the default

    def node(nid: str, db: int) -> MeshCore:
        return MeshCore(MeshConfig(node_id=nid, enable_websocket=False, redis_url=_url(db), ritual_channel=ch,
                                   heartbeat_interval=0.3))

    a0, b0, c3, d3 = node("a0", 0), node("b0", 0), node("c3", 3), node("d3", 3)
    got: dict[str, list[Any]] = {n: [] for n in ("a0", "b0", "c3", "d3")}
    for core in (a0, b0, c3, d3):
        core.register_event_handler("hello", lambda env, me=core.node_id: got[me].append(env["source_node"]))
    caplog.set_level(logging.INFO, logger="spiralfast.redis")
    for core in (a0, b0, c3, d3):
        await core.start()
    try:
        assert a0.redis is not None and c3.redis is not None
        # Within a database: one mesh, events delivered (the positive path).
        await wait_for(lambda: "b0" in a0.nodes and "a0" in b0.nodes and "d3" in c3.nodes and "c3" in d3.nodes)
        await a0.broadcast_event("hello", {})
        await c3.broadcast_event("hello", {})
        await wait_for(lambda: got["b0"] == ["a0"] and got["d3"] == ["c3"])
        # Across databases: nothing.  d3 has c3's event and b0 has a0's, so each had its
        # chance to cross; a second round of heartbeats and gossip has gone by as well.
        rounds = a0.get_mesh_status()["links"][0]["received"]
        await wait_for(lambda: a0.get_mesh_status()["links"][0]["received"] > rounds + 4)
        assert set(a0.nodes) == set(b0.nodes) == {"a0", "b0"}
        assert set(c3.nodes) == set(d3.nodes) == {"c3", "d3"}
        assert got["a0"] == got["c3"] == [] and got["b0"] == ["a0"] and got["d3"] == ["c3"]
        # Database 0 keeps the names earlier releases use; the old format's channels are the old library's.
        assert a0.redis.sf_channel == f"{ch}:sf:spiral_codex_mesh"
        assert c3.redis.sf_channel == f"{ch}:sf:db3:spiral_codex_mesh"
        assert (c3.redis.channel, c3.redis.legacy_direct) == (ch, "node_c3")
        assert any("Redis database 3" in r.getMessage() and "spiral_codex_mesh" in r.getMessage()
                   for r in caplog.records)
    finally:
        for core in (a0, b0, c3, d3):
            await core.stop()
