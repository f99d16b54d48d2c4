"""Redis link against a real Redis: the suite's own, or ``SPIRALFAST_TEST_REDIS_URL``
(tests/services.py); fails, never skips, in CI."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from spiralfast import MeshConfig, MeshCore

from . import services
from .conftest import require
from .waiting import wait_until, wait_until_async

REDIS_URL = services.redis().url


async def _redis_or_fail() -> aioredis.Redis:
    require(services.redis().available, services.redis().missing)
    r = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(r.ping(), 2)
        ok = True
    except Exception:
        ok = False
    require(ok, f"a Redis at {REDIS_URL}")
    return r


def _cfg(node_id: str, channel: str, **kw: Any) -> MeshConfig:
    return MeshConfig(node_id=node_id, enable_websocket=False, redis_url=REDIS_URL, ritual_channel=channel,
                      heartbeat_interval=0.3, **kw)


async def test_redis_only_mesh_membership_broadcast_direct_and_failure() -> None:
    r = await _redis_or_fail()
    await r.aclose()
    ch = "t_" + uuid.uuid4().hex[:8]
    a, b = MeshCore(_cfg("ra", ch)), MeshCore(_cfg("rb", ch))
    await a.start()
    await b.start()
    try:
        assert a.redis is not None and b.redis is not None
        await wait_until(lambda: "rb" in a.nodes and "ra" in b.nodes, '"rb" in a.nodes and "ra" in b.nodes')
        got: list[dict[str, Any]] = []
        b.register_event_handler("rx", got.append)
        a.register_event_handler("rx", got.append)
        ends: list[Any] = []
        b.register_event_handler("rx_end", ends.append)
        for i in range(100):
            await a.broadcast_event("rx", {"i": i})
        await a.broadcast_event("rx_end", {})  # a barrier: sent after, so delivered after
        await wait_until(lambda: bool(ends), 'bool(ends)')
        assert [e["data"]["i"] for e in got] == list(range(100))  # once each, not the sender
        assert await a.send_to_node("rb", "rx", {"direct": True})
        await wait_until(lambda: len(got) == 101, 'len(got) == 101')
        assert got[-1]["target_node"] == "rb"
        assert a.redis.stats["direct"] == 1  # on rb's own channel, not the broadcast one
        await b.stop()
        await wait_until(lambda: "rb" not in a.nodes, '"rb" not in a.nodes', timeout=3)
    finally:
        await b.stop()
        await a.stop()


async def test_interop_with_old_json_node_and_bad_input() -> None:
    r = await _redis_or_fail()
    ch = "t_" + uuid.uuid4().hex[:8]
    a = MeshCore(_cfg("new", ch))
    await a.start()
    ps = r.pubsub()
    await ps.subscribe(ch, "node_old")
    try:
        # the old node announces itself and broadcasts, in the old JSON format
        def env(t: str, data: Any, **kw: Any) -> bytes:
            return json.dumps({"type": t, "source_node": "old", "timestamp": datetime.now().isoformat(),
                               "data": data, **kw}).encode()

        got: list[dict[str, Any]] = []
        a.register_event_handler("legacy_evt", got.append)
        await r.publish(ch, env("node_register", {"node_id": "old", "name": "legacy", "status": "active",
                                                  "capabilities": ["x"], "recursion_depth": 0,
                                                  "entropy_level": 0.0, "metadata": {}}))
        await r.publish(ch, b"not json at all")
        await r.publish(ch, b'{"no": "type"}')
        await r.publish(ch, env("legacy_evt", {"v": 1}))
        await r.publish(f"node_{'new'}", env("legacy_evt", {"v": 2}, target_node="new"))
        await wait_until(lambda: len(got) == 2, 'len(got) == 2')
        assert [e["data"]["v"] for e in got] == [1, 2] and "old" in a.nodes
        assert a.redis is not None and a.redis.stats["bad"] >= 2
        # spiralfast -> old node: broadcast as JSON on the ritual channel, direct on node_<id>
        await a.broadcast_event("to_old", {"w": 1})
        assert await a.send_to_node("old", "to_old", {"w": 2})
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            while len([s for s in seen if s.get("type") == "to_old"]) < 2:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m:
                    try:
                        seen.append(json.loads(m["data"]))
                    except ValueError:
                        pass  # the junk this test published itself

        await asyncio.wait_for(read(), 5)
        to_old = [s for s in seen if s.get("type") == "to_old"]
        assert [s["data"]["w"] for s in to_old] == [1, 2]
        assert to_old[0]["source_node"] == "new" and to_old[1]["target_node"] == "old"
        datetime.fromisoformat(to_old[0]["timestamp"])
        assert a.running
    finally:
        await ps.aclose()
        await r.aclose()
        await a.stop()


async def test_malformed_frames_on_the_spiralfast_channel_are_counted_and_ignored() -> None:
    r = await _redis_or_fail()
    ch = "t_" + uuid.uuid4().hex[:8]
    a, b = MeshCore(_cfg("ja", ch)), MeshCore(_cfg("jb", ch))
    await a.start()
    await b.start()
    try:
        await wait_until(lambda: "jb" in a.nodes, '"jb" in a.nodes')
        from spiralfast.busauth import BusSealer

        chan = f"{ch}:sf:spiral_codex_mesh"
        evl = BusSealer("evl", "spiral_codex_mesh", None)
        bad_payload = b"\x01\x01\x00\x03\x00\x00\x00\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1"
        for i, junk in enumerate((b"", b"\x05ab", b"\x09junk", bad_payload)):
            await r.publish(chan, junk if i < 2 else evl.seal(chan.encode(), i, junk))
        got: list[Any] = []
        a.register_event_handler("after", got.append)
        await wait_until(lambda: a.gate.stats["frame_errors"] + a.redis.stats["bad"] + a.redis.stats["refused"] >= 4, 'a.gate.stats["frame_errors"] + a.redis.stats["bad"] + a.redis.stats["refused"] >= 4')
        await b.broadcast_event("after", {})
        await wait_until(lambda: len(got) == 1, 'len(got) == 1')  # still serving
        assert a.redis.connected
    finally:
        await r.aclose()
        await b.stop()
        await a.stop()


async def test_interop_auto_publishes_json_copies_only_while_an_old_node_is_heard() -> None:
    r = await _redis_or_fail()
    ch = "t_" + uuid.uuid4().hex[:8]
    a = MeshCore(_cfg("auto", ch))  # interop defaults to "auto"
    await a.start()
    ps = r.pubsub()
    await ps.subscribe(ch)
    copies: list[dict[str, Any]] = []
    witnessed: list[str] = []

    async def drain(seconds: float) -> None:
        """A window (time itself): collect a's JSON copies of 'probe' published in it."""
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg:
                env = json.loads(msg["data"])
                if env.get("_sf") and env["type"] == "probe":
                    copies.append(env)
                elif env.get("type") == "witness":
                    witnessed.append(env["type"])

    try:
        # The witness subscription is live before any negative is judged: it sees a message
        # published on the channel after it.
        await r.publish(ch, json.dumps({"type": "witness"}))

        async def live() -> bool:
            await drain(0.05)
            return bool(witnessed)

        await wait_until_async(live, "the witness subscription received a message on the channel")
        assert a.config.interop == "auto"
        await a.broadcast_event("probe", {"n": 0})
        await drain(0.3)
        assert copies == []  # nobody old around: no JSON copies
        old = json.dumps({"type": "heartbeat", "source_node": "old", "timestamp": datetime.now().isoformat(),
                          "data": {"status": "active"}})
        await r.publish(ch, old)
        await wait_until(lambda: "old" in a.nodes, '"old" in a.nodes')
        await a.broadcast_event("probe", {"n": 1})
        await drain(0.3)
        assert [c["data"]["n"] for c in copies] == [1]  # an old node is heard: copies on
        await wait_until(lambda: "old" not in a.nodes, '"old" not in a.nodes')  # silent for 3 heartbeat intervals: forgotten
        await a.broadcast_event("probe", {"n": 2})
        await drain(0.3)
        assert [c["data"]["n"] for c in copies] == [1]  # gone: copies off again
    finally:
        await ps.aclose()
        await r.aclose()
        await a.stop()


def test_with_a_token_the_old_format_is_off_unless_asked_for() -> None:
    assert MeshConfig(auth_token="t").interop_mode() is False  # "auto" means off with a token
    assert MeshConfig(auth_token="t", interop=False).interop_mode() is False
    assert MeshConfig(auth_token="t", interop=True).interop_mode() is True
    assert MeshConfig().interop_mode() == "auto"


async def test_old_heartbeats_and_registers_are_delivered_once_with_their_time() -> None:
    r = await _redis_or_fail()
    ch = "t_" + uuid.uuid4().hex[:8]
    a = MeshCore(_cfg("once", ch, interop=True))
    await a.start()
    seen: list[dict[str, Any]] = []
    a.register_event_handler("heartbeat", seen.append)
    a.register_event_handler("node_register", seen.append)
    try:
        now = datetime.now()
        for t, d in (("node_register", {"name": "old node"}), ("heartbeat", {"status": "active", "recursion_depth": 2})):
            await r.publish(ch, json.dumps({"type": t, "source_node": "old1", "timestamp": now.isoformat(), "data": d}))
        await wait_until(lambda: len([e for e in seen if e["source_node"] == "old1"]) >= 2, 'len([e for e in seen if e["source_node"] == "old1"]) >= 2')
        # A fence: Redis hands a subscriber its messages in publishing order, so a second copy
        # of old1's two would have arrived before this later heartbeat from another old node.
        await r.publish(ch, json.dumps({"type": "heartbeat", "source_node": "old2", "timestamp": now.isoformat(),
                                        "data": {"status": "active"}}))
        await wait_until(lambda: any(e["source_node"] == "old2" for e in seen), 'any(e["source_node"] == "old2" for e in seen)')
        mine = [e for e in seen if e["source_node"] == "old1"]
        assert sorted(e["type"] for e in mine) == ["heartbeat", "node_register"]  # once each (was twice)
        for e in mine:
            assert abs((datetime.fromisoformat(e["timestamp"]) - now).total_seconds()) < 60  # not 1970
    finally:
        await r.aclose()
        await a.stop()
