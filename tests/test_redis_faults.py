"""Redis faults against a redis-server of the test's own, on a free port:
Redis appearing late, a restart mid-stream, and CLIENT KILL of the pub/sub links."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from spiralfast import MeshConfig, MeshCore

from .conftest import free_port, require
from .waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(90)


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        exe = shutil.which("redis-server")
        require(exe is not None, "the redis-server binary")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import socket

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_until_sync(listening, f"redis-server listens on port {self.port}", interval=0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer(free_port())
    yield s
    s.stop()


def _cfg(node_id: str, url: str, ch: str) -> MeshConfig:
    return MeshConfig(node_id=node_id, enable_websocket=False, redis_url=url, ritual_channel=ch,
                      heartbeat_interval=0.2)


async def test_node_connects_when_redis_appears(server: RedisServer) -> None:
    ch = "f_" + uuid.uuid4().hex[:8]
    a = MeshCore(_cfg("late-a", server.url, ch))
    await a.start()  # Redis is not there yet
    try:
        assert a.running and a.config.enable_redis is False
        server.start()
        await wait_until(lambda: a.redis.connected and a.config.enable_redis, 'a.redis.connected and a.config.enable_redis', timeout=15)
        b = MeshCore(_cfg("late-b", server.url, ch))
        await b.start()
        try:
            await wait_until(lambda: "late-b" in a.nodes and "late-a" in b.nodes, '"late-b" in a.nodes and "late-a" in b.nodes', timeout=5)
        finally:
            await b.stop()
    finally:
        await a.stop()


async def _stream(a: MeshCore, stop: asyncio.Event) -> int:
    i = 0
    while not stop.is_set():
        await a.broadcast_event("tick", {"i": i})
        i += 1
        await asyncio.sleep(0.005)  # time itself: a steady stream while Redis restarts
    return i


async def test_restart_and_client_kill_recovery(server: RedisServer) -> None:
    server.start()
    ch = "f_" + uuid.uuid4().hex[:8]
    a, b = MeshCore(_cfg("fa", server.url, ch)), MeshCore(_cfg("fb", server.url, ch))
    await a.start()
    await b.start()
    got: list[Any] = []
    b.register_event_handler("tick", got.append)
    stop = asyncio.Event()
    streamer = asyncio.ensure_future(_stream(a, stop))
    try:
        await wait_until(lambda: len(got) > 20, 'len(got) > 20', timeout=5)
        # 1. restart Redis mid-stream
        server.stop()
        await wait_until(lambda: not b.redis.connected, 'not b.redis.connected', timeout=5)
        server.start()
        n = len(got)
        await wait_until(lambda: len(got) > n + 20, 'len(got) > n + 20', timeout=15)
        # a's own subscription may still be in its reconnect backoff: wait, bounded
        await wait_until(lambda: a.redis.stats["reconnects"] >= 1 and b.redis.stats["reconnects"] >= 1, 'a.redis.stats["reconnects"] >= 1 and b.redis.stats["reconnects"] >= 1', timeout=15)
        # 2. CLIENT KILL TYPE pubsub: both subscriptions are dropped by the server
        r = aioredis.from_url(server.url)
        killed = await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await r.aclose()
        assert int(killed) >= 2
        n = len(got)
        await wait_until(lambda: len(got) > n + 20, 'len(got) > n + 20', timeout=15)
        await wait_until(lambda: b.redis.stats["reconnects"] >= 2, 'b.redis.stats["reconnects"] >= 2', timeout=15)
        stop.set()
        sent = await streamer
        await a.broadcast_event("tick", {"i": sent})  # after the outages: b sees the gap's end
        # What the outages cost is repaired from a's retransmit buffer: every event once.
        await wait_until(lambda: len(got) == sent + 1, 'len(got) == sent + 1', timeout=20)
        ids = [e["data"]["i"] for e in got]
        assert sorted(ids) == list(range(sent + 1))  # each exactly once, nothing lost
        assert b.get_mesh_status()["counters"]["events_lost"] == 0
        assert a.redis.stats["dropped"] == 0  # the outage fit in the bounded outbox
    finally:
        stop.set()
        await streamer
        await b.stop()
        await a.stop()


async def test_burst_is_paced_under_a_tight_output_buffer_limit(server: RedisServer) -> None:
    # 8 MiB hard limit for pub/sub clients: an unpaced 300k-event burst (~15 MB of
    # frames, published in well under a second) would get the subscriber cut off.
    server.start("--client-output-buffer-limit", "pubsub 8mb 8mb 60")
    ch = "f_" + uuid.uuid4().hex[:8]
    a, b = MeshCore(_cfg("pa", server.url, ch)), MeshCore(_cfg("pb", server.url, ch))
    await a.start()
    await b.start()
    n = 300_000
    count = 0

    def handler(env: Any) -> None:
        nonlocal count
        count += 1

    b.register_event_handler("burst", handler)
    try:
        await wait_until(lambda: "pb" in a.nodes and "pa" in b.nodes, '"pb" in a.nodes and "pa" in b.nodes', timeout=5)
        await wait_until(lambda: "pb" in a.redis.acked, '"pb" in a.redis.acked', timeout=5)  # b's acks are flowing
        data = {"payload": "x" * 20}
        for _ in range(n):
            await a.broadcast_event("burst", data)
        try:
            await wait_until(lambda: count == n, 'count == n', timeout=60)
        except AssertionError:
            raise AssertionError(f"{count=} a={a.redis.stats} b={b.redis.stats} acked={a.redis.acked} tx={a.redis.tx_offset}") from None
        assert b.redis.stats["reconnects"] == 0  # never cut off by Redis
    finally:
        await b.stop()
        await a.stop()


async def test_acl_user_and_password_in_the_url(server: RedisServer) -> None:
    server.start("--user", "alice", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off")
    ch = "f_" + uuid.uuid4().hex[:8]
    good = f"redis://alice:s3cret@127.0.0.1:{server.port}/0"
    bad = f"redis://alice:wrong@127.0.0.1:{server.port}/0"
    a, b = MeshCore(_cfg("acl-a", good, ch)), MeshCore(_cfg("acl-b", good, ch))
    c = MeshCore(_cfg("acl-c", bad, ch))
    await a.start()
    await b.start()
    await c.start()
    try:
        assert a.config.enable_redis and b.config.enable_redis
        assert c.config.enable_redis is False and c.running  # refused: one warning, runs on
        await wait_until(lambda: "acl-b" in a.nodes and "acl-a" in b.nodes, '"acl-b" in a.nodes and "acl-a" in b.nodes', timeout=5)
        assert "acl-c" not in a.nodes
    finally:
        for n in (c, b, a):
            await n.stop()
