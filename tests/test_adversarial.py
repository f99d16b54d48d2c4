"""Attacks on a token-protected mesh, from raw sockets and a raw Redis client, against
real node processes.  Each test asserts refusal, no change, counters raised, and the
node still serving a legitimate peer afterwards (SECURITY.md lists what each limit
protects)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import picows
import psutil
import pytest

from spiralfast import schema
from spiralfast.busauth import BusSealer
from spiralfast.codec import FrameWriter, decode_frame, decode_payload
from spiralfast.handshake import NONCE_SIZE, auth_proof
from spiralfast.limits import HANDSHAKE_VERSION

from .conftest import wait_for
from .procs import NodeProc
from .test_redis_link import REDIS_URL, _redis_or_fail

TOKEN = "s3cret-token"


def frame(*msgs: tuple[int, bytes, Any]) -> bytes:
    w = FrameWriter()
    for kind, target, obj in msgs:
        w.add(kind, 0, target, getattr(obj, "event_id", "").encode(), obj)
    return w.finish()


class RawWS(picows.WSListener):  # type: ignore[misc]
    """An outsider's WebSocket: sends whatever it likes, records what comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.msgs: list[tuple[int, Any]] = []
        self.closed = asyncio.Event()
        self.transport: Any = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, f: picows.WSFrame) -> None:
        if f.msg_type == picows.WSMsgType.BINARY:
            for m in decode_frame(f.get_payload_as_bytes()):
                self.msgs.append((m.kind, decode_payload(m.kind, m.payload)))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.closed.set()

    def send(self, data: bytes) -> None:
        self.transport.send(picows.WSMsgType.BINARY, data)

    @classmethod
    async def open(cls, url: str) -> RawWS:
        _, lst = await picows.ws_connect(cls, url, max_frame_size=1 << 24)
        await wait_for(lambda: bool(lst.msgs), timeout=5)  # the node's Hello
        return lst  # type: ignore[no-any-return]

    def hello(self) -> Any:
        return next(o for k, o in self.msgs if k == schema.KIND_HELLO)


async def node_ids(node: NodeProc, token: str | None = TOKEN) -> set[str]:
    return {n["node_id"] for n in await node.query("nodes", token=token)}


async def status(node: NodeProc) -> dict[str, Any]:
    return await node.query("status", token=TOKEN)  # type: ignore[no-any-return]


async def legit_roundtrip(a: NodeProc, b: NodeProc) -> None:
    """A legitimate broadcast from a reaches b's observer: the mesh still serves."""
    cb = await b.client(TOKEN)
    try:
        await cb.subscribe(["legit"])
        ca = await a.client(TOKEN)
        mark = uuid.uuid4().hex
        await ca.query("publish", type="legit", data={"mark": mark})
        ca.close()
        env = await asyncio.wait_for(cb.next_event(), 10)
        assert env["data"]["mark"] == mark
    finally:
        cb.close()


@pytest.fixture
def pair() -> Any:
    a = NodeProc("A", "--token", TOKEN)
    b = NodeProc("B", "--token", TOKEN, "--peer", a.url)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


async def test_preauth_messages_are_never_relayed_delivered_or_answered(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    before_b = await b.query("state", token=TOKEN)
    attacks = [
        frame((schema.KIND_EVENT, b"B", schema.Event("forged-1", "forged", "A", time.time(), {"x": 1}, "B"))),
        frame((schema.KIND_EVENT, b"", schema.Event("forged-2", "forged", "A", time.time(), {"x": 2}))),
        frame((schema.KIND_STATE_DELTA, b"B", schema.StateDelta([schema.StateEntry("agents", "pwned", 1, 1 << 40, "Z", 1)]))),
        frame((schema.KIND_LEAVE, b"B", schema.Leave("A"))),
        frame(*[(schema.KIND_HEARTBEAT, b"B", schema.Heartbeat(f"ghost{i}", "active", 0, 0.0, time.time())) for i in range(200)]),
        frame((schema.KIND_QUERY, b"", schema.Query(1, "status"))),
    ]
    for data in attacks:
        raw = await RawWS.open(a.url)
        raw.send(data)
        await asyncio.wait_for(raw.closed.wait(), 5)  # closed at once
        assert not any(k == schema.KIND_REPLY for k, _ in raw.msgs)  # the query was not answered
    st = await status(a)
    assert st["counters"]["preauth_refused"] >= len(attacks)
    assert await node_ids(b) == {"A", "B"}  # no ghosts, no forged departure
    assert await b.query("state", token=TOKEN) == before_b
    events = await b.query("events", token=TOKEN, count=1000)
    assert not any(e["type"] == "forged" for e in events)
    await legit_roundtrip(a, b)


async def wait_for_nodes(node: NodeProc, ids: set[str], token: str | None = TOKEN) -> None:
    deadline = time.monotonic() + 15
    while await node_ids(node, token) != ids:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.node_id} never saw {ids}")
        await asyncio.sleep(0.1)


async def test_reflection_and_replayed_handshakes_are_refused(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    for role in ("observer", "node", "mallory"):
        c1, c2 = await RawWS.open(a.url), await RawWS.open(a.url)
        n1, n2 = c1.hello().nonce, c2.hello().nonce
        # Pretend to be A itself, with the other connection's nonce, hoping A proves
        # on one connection what we can replay on the other.
        c1.send(frame((schema.KIND_HELLO, b"", schema.Hello("A", "spiral_codex_mesh", HANDSHAKE_VERSION, n2, role))))
        c2.send(frame((schema.KIND_HELLO, b"", schema.Hello("X", "spiral_codex_mesh", HANDSHAKE_VERSION, n1, role))))
        await asyncio.wait_for(c1.closed.wait(), 5)  # our own id (or an unknown role): refused
        assert not any(k == schema.KIND_AUTH for k, _ in c1.msgs + c2.msgs)  # A proved nothing
        c2.send(frame((schema.KIND_AUTH, b"", schema.Auth(b"\0" * 32))))
        await asyncio.wait_for(c2.closed.wait(), 5)
    # A replayed dialler proof: valid for one connection's nonces, worthless on another.
    c = await RawWS.open(a.url)
    nonce = os.urandom(NONCE_SIZE)
    c.send(frame((schema.KIND_HELLO, b"", schema.Hello("Y", "spiral_codex_mesh", HANDSHAKE_VERSION, nonce, "observer"))))
    old = auth_proof(TOKEN, b"dial", nonce, os.urandom(NONCE_SIZE), "Y", "A", "observer", "node")
    c.send(frame((schema.KIND_AUTH, b"", schema.Auth(old))))
    await asyncio.wait_for(c.closed.wait(), 5)
    assert any(k == schema.KIND_REJECT and "token" in o.reason for k, o in c.msgs)
    st = await status(a)
    assert st["counters"]["auth_failures"] >= 3 and st["counters"]["handshake_failures"] >= 6
    assert await node_ids(a) == {"A", "B"}
    await legit_roundtrip(a, b)


async def test_preauth_memory_and_floods_are_bounded(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    proc = psutil.Process(a.proc.pid)  # type: ignore[union-attr]
    rss0 = proc.memory_info().rss
    # 120 outsiders each announce a 16 MiB frame and send 1 MiB of it.
    readers: list[Any] = []
    for _ in range(120):
        r, w = await asyncio.open_connection("127.0.0.1", a.port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await w.drain()
        w.write(b"\x82\xff" + (16 * 1024 * 1024).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * (1024 * 1024))
        readers.append((r, w))
    await asyncio.sleep(1.0)
    grown = (proc.memory_info().rss - rss0) / 2**20
    for _, w in readers:
        w.close()
    assert grown < 64, f"pre-auth RSS grew {grown:.0f} MiB"
    # One outsider sending valid empty frames as fast as it can is cut off at once.
    raw = await RawWS.open(a.url)
    empty = FrameWriter().finish()
    for _ in range(10_000):
        if raw.closed.is_set():
            break
        raw.send(empty)
        await asyncio.sleep(0)
    await asyncio.wait_for(raw.closed.wait(), 5)
    t0 = time.perf_counter()
    await status(a)
    assert time.perf_counter() - t0 < 2.0
    await legit_roundtrip(a, b)


async def test_node_without_token_is_refused_backs_off_and_never_lists_the_mesh(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    intruder = NodeProc("I", "--peer", a.url)
    try:
        await asyncio.sleep(3.0)
        mine = {n["node_id"] for n in await intruder.query("nodes")}
        assert mine == {"I"}  # never believes it joined
        st = await status(a)
        # Backing off exponentially: a handful of attempts in 3 s, not 60.
        assert 1 <= st["counters"]["auth_failures"] <= 8, st["counters"]
    finally:
        intruder.stop()
    assert intruder.proc is not None and intruder.proc.stderr is not None
    err = intruder.proc.stderr.read()
    assert err.count("requires a token") + err.count("refused by peer") <= 3  # one clear error, not a flood
    await legit_roundtrip(a, b)


# -- Redis -------------------------------------------------------------------------------


def redis_node(node_id: str, channel: str, *extra: str) -> NodeProc:
    """A node on Redis (its WebSocket port serves the observer queries of the test)."""
    return NodeProc(node_id, "--enable-redis", "--redis", REDIS_URL, "--ritual-channel", channel, *extra)


async def test_redis_injection_is_refused_and_counted() -> None:
    r = await _redis_or_fail()
    ch = "adv_" + uuid.uuid4().hex[:8]
    a = redis_node("RA", ch, "--token", TOKEN)
    b = redis_node("RB", ch, "--token", TOKEN)
    try:
        await wait_for_nodes(a, {"RA", "RB"})
        base = f"{ch}:sf:spiral_codex_mesh"
        now = datetime.now().isoformat()
        legacy = [json.dumps({"type": t, "source_node": "old", "timestamp": now, "data": d}).encode()
                  for t, d in [("forged", {"x": 1}), ("node_register", {"node_id": "ghost"}),
                               ("heartbeat", {"recursion_depth": "abc"}), ("node_unregister", {"node_id": "RB"})]]
        for raw in legacy:
            await r.publish(ch, raw)
            await r.publish("node_RA", raw)
        # spiralfast frames: unsigned, signed with a wrong token, and replayed.
        ev = frame((schema.KIND_EVENT, b"", schema.Event("f1", "forged", "RB", time.time(), {})))
        gossip = frame((schema.KIND_GOSSIP, b"", schema.Gossip(
            [{"node_id": f"ghost{i}", "websocket_endpoint": "ws://10.0.0.1:1"} for i in range(1000)])))
        leave = frame((schema.KIND_LEAVE, b"", schema.Leave("RB")))
        plain = BusSealer("RB", "spiral_codex_mesh", None)
        wrong = BusSealer("RB", "spiral_codex_mesh", "not-the-token")
        for i, body in enumerate((ev, gossip, leave)):
            for s in (plain, wrong):
                await r.publish(base, s.seal(base.encode(), 10**9 + i, body))
                await r.publish(f"{base}:RA", s.seal(f"{base}:RA".encode(), 10**9 + i, body))
        acks = [wrong.seal(f"{base}:ack".encode(), i, b"\x81\xa2RA\x00") for i in range(50)]
        for x in acks:
            await r.publish(f"{base}:ack", x)
        # Capture a genuine frame of RB's and replay it.
        ps = r.pubsub()
        await ps.subscribe(base)
        genuine = None
        deadline = time.monotonic() + 5
        while genuine is None and time.monotonic() < deadline:
            msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1)
            if msg and msg["data"][2:4] == b"RB":
                genuine = msg["data"]
        await ps.aclose()
        assert genuine is not None
        for _ in range(3):
            await r.publish(base, genuine)
        await asyncio.sleep(1.0)
        st = await status(a)
        link = next(lk for lk in st["links"] if lk["transport"] == "redis")
        assert link["auth"]["unsigned"] >= 6 and link["auth"]["forged"] >= 6 + 50 and link["auth"]["replayed"] >= 3
        assert await node_ids(a) == {"RA", "RB"}  # no ghosts, no forged departure, no legacy node
        events = await a.query("events", token=TOKEN, count=1000)
        assert not any(e["type"] == "forged" for e in events)
        # The sender is not stalled by forged acks, and the link was never torn down.
        cb = await b.client(TOKEN)
        await cb.subscribe(["legit"])
        ca = await a.client(TOKEN)
        for i in range(200):
            await ca.query("publish", type="legit", data={"i": i})
        got = [await asyncio.wait_for(cb.next_event(), 10) for _ in range(200)]
        assert [e["data"]["i"] for e in got] == list(range(200))
        ca.close()
        cb.close()
        assert link["reconnects"] <= 1
    finally:
        await r.aclose()
        b.stop()
        a.stop()


async def test_meshes_sharing_a_redis_are_isolated() -> None:
    r = await _redis_or_fail()
    await r.aclose()
    ch = "iso_" + uuid.uuid4().hex[:8]
    one = redis_node("M1", ch, "--name", "one", "--token", "t1")
    two = redis_node("M2", ch, "--name", "two", "--token", "t2")
    same_name = redis_node("M3", ch, "--name", "one", "--token", "t3")
    try:
        c1 = await one.client("t1")
        await c1.query("publish", type="private", data={"secret": 1})
        await c1.query("state_set", category="agents", key="k1", value="v1")
        c1.close()
        await asyncio.sleep(1.5)
        for node, tok in ((two, "t2"), (same_name, "t3")):
            assert {n["node_id"] for n in await node.query("nodes", token=tok)} == {node.node_id}
            evs = await node.query("events", token=tok, count=100)
            assert not any(e["type"] == "private" for e in evs)
            assert await node.query("state", token=tok, category="agents") in ({}, None)
        st = await same_name.query("status", token="t3")
        link = next(lk for lk in st["links"] if lk["transport"] == "redis")
        assert link["auth"]["forged"] >= 1  # mesh one's frames failed its key, counted
    finally:
        for n in (same_name, two, one):
            n.stop()


async def test_malformed_old_format_and_nested_frames_never_cost_the_subscription() -> None:
    r = await _redis_or_fail()
    ch = "mal_" + uuid.uuid4().hex[:8]
    a = redis_node("LA", ch, "--interop", "true")
    b = redis_node("LB", ch, "--interop", "true")
    try:
        await wait_for_nodes(a, {"LA", "LB"}, token=None)
        base = f"{ch}:sf:spiral_codex_mesh"
        truncated = frame((schema.KIND_GOSSIP, b"", schema.Gossip([])))[:3]
        w = FrameWriter()
        w.add_raw(schema.KIND_GOSSIP, 0, b"", b"", b"\x91" * 100_000 + b"\xc0")
        plain = BusSealer("evil", "spiral_codex_mesh", None)
        for i in range(20):
            await r.publish(ch, json.dumps({"type": "heartbeat", "source_node": "old", "data": {"recursion_depth": "abc"}}))
            await r.publish(ch, b"[" * 100_000)
            await r.publish(base, plain.seal(base.encode(), i, w.finish()))
            await r.publish(base, plain.seal(base.encode(), 1000 + i, truncated))
        cb = await b.client()
        await cb.subscribe(["legit"])
        ca = await a.client()
        for i in range(100):
            await ca.query("publish", type="legit", data={"i": i})
        got = [await asyncio.wait_for(cb.next_event(), 10) for _ in range(100)]
        assert [e["data"]["i"] for e in got] == list(range(100))
        ca.close()
        cb.close()
        st = await b.query("status")
        link = next(lk for lk in st["links"] if lk["transport"] == "redis")
        assert link["reconnects"] == 0 and link["bad"] >= 20
    finally:
        await r.aclose()
        b.stop()
        a.stop()


def test_fd_exhaustion_refuses_without_spinning_or_flooding_the_log() -> None:
    code = f"""
import asyncio, resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from spiralfast import MeshCore, MeshConfig
async def main():
    m = MeshCore(MeshConfig(enable_redis=False, websocket_port=0, auth_token="{TOKEN}"))
    await m.start()
    print(m.config.websocket_port, flush=True)
    await asyncio.sleep(6)
    print("alive", m.running, flush=True)
    await m.stop()
asyncio.run(main())
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    socks = []
    import socket

    for _ in range(1000):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(3)
    for s in socks:
        s.close()
    out, err = p.communicate(timeout=20)
    assert "alive True" in out
    assert err.count("\n") < 50, err[-2000:]  # no spinning accept loop flooding the log


async def test_idle_handshakes_are_capped_oldest_dropped_first(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    conns = [await RawWS.open(a.url) for _ in range(100)]  # upgraded, never send a Hello
    await wait_for(lambda: sum(c.closed.is_set() for c in conns) >= 100 - 64, timeout=5)
    closed = [i for i, c in enumerate(conns) if c.closed.is_set()]
    assert closed == list(range(len(closed)))  # the oldest went first
    await legit_roundtrip(a, b)  # a legitimate observer still gets in
    for c in conns:
        if c.transport is not None:
            c.transport.disconnect()


async def test_an_outsider_flooding_pings_without_reading_stalls_nothing_and_holds_no_memory(pair: Any) -> None:
    a, b = pair
    await wait_for_nodes(a, {"A", "B"})
    proc = psutil.Process(a.proc.pid)  # type: ignore[union-attr]
    rss0 = proc.memory_info().rss
    writers = []
    ping = b"\x89\xfd" + b"\0\0\0\0" + b"p" * 125  # masked PING, 125 bytes
    for _ in range(16):  # never read what the node sends back
        r, w = await asyncio.open_connection("127.0.0.1", a.port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for _ in range(200):
            w.write(ping * 50)
        writers.append(w)
    await asyncio.sleep(2.0)
    t0 = time.perf_counter()
    await legit_roundtrip(a, b)  # senders are not stalled by the outsiders' full buffers
    assert time.perf_counter() - t0 < 5
    grown = (proc.memory_info().rss - rss0) / 2**20
    assert grown < 64, f"RSS grew {grown:.0f} MiB"
    for w in writers:
        w.close()
