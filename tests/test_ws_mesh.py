"""WebSocket mesh across real processes (and real sockets in-process)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import picows
import pytest

from spiralfast import EventType, MeshConfig, MeshCore
from spiralfast.errors import AuthError, HandshakeError
from spiralfast.links.ws import BACKOFF_JITTER, MAX_OUTBOX_BYTES, REFUSED_BACKOFF_INITIAL, WSLink
from spiralfast.protocol.membership import DEFAULT_SUSPICION_TIMEOUT, SILENCE_FACTOR

from .conftest import require
from .procs import NodeProc
from .waiting import wait_until, wait_until_async

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def chain() -> Iterator[list[NodeProc]]:
    a = NodeProc("A", "--log-level", "info")  # info: 'node X removed (reason)' lines
    b = NodeProc("B", "--peer", a.url, "--log-level", "info")
    c = NodeProc("C", "--peer", b.url)
    procs = [a, b, c]
    yield procs
    for p in procs:
        p.stop()


async def _all_know(procs: list[NodeProc], ids: set[str], timeout: float = 20) -> None:
    async def converged() -> bool:
        return all([await p.node_ids() == ids for p in procs])

    names = ", ".join(p.node_id for p in procs)
    await wait_until_async(converged, f"{names} all list exactly {sorted(ids)}", timeout=timeout, interval=0.1)


def most_refusals(elapsed: float) -> int:
    """The most handshake attempts a refused dialler can make in ``elapsed`` seconds:
    after each refusal it waits at least REFUSED_BACKOFF_INITIAL * (1 - jitter) * 2**k
    (k = 0, 1, ...; the code doubles before the first wait too, a margin), so m waits
    fit in w0 * (2**m - 1) <= elapsed.  Margin: one more attempt."""
    import math

    w0 = REFUSED_BACKOFF_INITIAL * (1 - BACKOFF_JITTER)
    return 1 + math.floor(math.log2(elapsed / w0 + 1)) + 1


async def _count(p: NodeProc) -> int:
    return int((await p.query("status"))["counters"]["events_in"])


async def test_chain_join_broadcast_direct_kill_and_leave(chain: list[NodeProc]) -> None:
    a, b, c = chain
    await _all_know(chain, {"A", "B", "C"})
    nodes = {n["node_id"]: n for n in await a.query("nodes")}
    assert nodes["C"]["name"] == "codex_node_C" and nodes["C"]["websocket_endpoint"] == c.url
    assert "state_sync" in nodes["C"]["capabilities"]

    # broadcast: every other node exactly once, never the sender
    followers = {p.node_id: await p.client() for p in chain}
    streams = {nid: followers[nid].follow(["bx"]) for nid in followers}
    got: dict[str, list[dict[str, Any]]] = {nid: [] for nid in followers}

    async def collect(nid: str) -> None:
        async for env in streams[nid]:
            got[nid].append(env)

    tasks = [asyncio.ensure_future(collect(n)) for n in followers]
    for p in chain:
        await wait_for_async(lambda p=p: _following(p), f"{p.node_id} has its follower")
    before = {p.node_id: await _count(p) for p in chain}
    for i in range(200):
        await a.query("publish", type="bx", data={"i": i})
    await a.query("publish", type="bx", data={"barrier": 1})  # sent after: seen after the rest
    await wait_until(lambda: all(any(e["data"].get("barrier") for e in got[n]) for n in ("B", "C")), 'all(any(e["data"].get("barrier") for e in got[n]) for n in ("B", "C"))', timeout=10)
    for n in ("B", "C"):
        got[n] = [e for e in got[n] if not e["data"].get("barrier")]
    after = {p.node_id: await _count(p) - (1 if p.node_id != "A" else 0) for p in chain}
    # The sender's handlers never see its own broadcast: its 201 would all be counted here.
    # events_in counts every event A receives, and other nodes' task adverts (``_sf.*``
    # protocol events, on their own timer) may land in this window (seen on Python 3.12: +2),
    # so the bound is below the broadcast's size rather than zero.
    assert after["A"] - before["A"] < 200, (before["A"], after["A"])
    assert after["B"] - before["B"] == 200 and after["C"] - before["C"] == 200
    for nid in ("B", "C"):
        assert [e["data"]["i"] for e in got[nid]] == list(range(200))  # exactly once, in order
        assert {e["source_node"] for e in got[nid]} == {"A"}

    # direct message: only the target
    got["B"].clear()
    got["C"].clear()
    await a.query("publish", type="bx", data={"direct": 1}, target="C")
    await wait_until(lambda: len(got["C"]) == 1, 'len(got["C"]) == 1')
    await a.query("publish", type="bx", data={"barrier": 2})  # B would have had the direct one first
    await wait_until(lambda: any(e["data"].get("barrier") == 2 for e in got["B"]), 'any(e["data"].get("barrier") == 2 for e in got["B"])', timeout=10)
    assert [e for e in got["B"] if not e["data"].get("barrier")] == [] and got["C"][0]["target_node"] == "C"
    for t in tasks:
        t.cancel()
    for cl in followers.values():
        cl.close()

    # kill -9: a failure, detected by the failure detector.  The bound is the detector's:
    # the silence rule (SILENCE_FACTOR heartbeats of 0.3 s) or the suspicion timeout,
    # whichever ends first, plus one heartbeat for the sweep; margin 1.5 s for the kill,
    # our polling queries and a loaded machine.
    hb = 0.3
    limit = min(SILENCE_FACTOR * hb, DEFAULT_SUSPICION_TIMEOUT) + hb + 1.5
    c.kill9()
    t0 = time.monotonic()
    await _all_know([a, b], {"A", "B"})
    assert time.monotonic() - t0 < limit

    # graceful leave: exit code 0, and A removes B
    assert b.sigint() == 0
    await _all_know([a], {"A"})
    # What each survivor logged: C removed as a failure, B as a leave (not detected as a
    # failure), each exactly once.
    assert a.sigint() == 0
    for p, expected in ((a, ["C failed", "B left"]), (b, ["C failed"])):
        assert p.proc is not None and p.proc.stderr is not None
        removals = re.findall(r"node (\w+) removed \((\w+)\)", p.proc.stderr.read())
        assert [f"{n} {'left' if why == 'left' else 'failed'}" for n, why in removals] == expected, removals


async def test_restarted_peer_is_reconnected() -> None:
    a = NodeProc("A")
    b = NodeProc("B", "--peer", a.url)
    try:
        await _all_know([a, b], {"A", "B"})
        a.kill9()
        await _all_know([b], {"B"}, timeout=5)
        a.start()  # same id, same port
        await _all_know([a, b], {"A", "B"}, timeout=10)
    finally:
        a.stop()
        b.stop()


async def test_wrong_token_and_wrong_mesh_refused() -> None:
    a = NodeProc("A", "--token", "right")
    bad_token = NodeProc("B", "--peer", a.url, "--token", "wrong")
    bad_mesh = NodeProc("C", "--peer", a.url, "--token", "right", "--name", "other_mesh")
    good = NodeProc("D", "--peer", a.url, "--token", "right")
    try:
        await wait_for_async(lambda: a_knows(a, "D", token="right"))  # the right token and mesh: in

        async def both_refused() -> bool:
            c = (await a.query("status", token="right"))["counters"]
            return bool(c["auth_failures"] >= 1 and c["handshake_failures"] >= 2)

        # The wrong ones dialled and were refused (counted) before we judge the membership.
        await wait_until_async(both_refused, "A refused B's token and C's mesh name")
        assert {n["node_id"] for n in await a.query("nodes", token="right")} == {"A", "D"}
        with pytest.raises((AuthError, HandshakeError)):
            await a.client(token="nope")
        with pytest.raises((AuthError, HandshakeError)):
            await a.client()
    finally:
        for p in (a, bad_token, bad_mesh, good):
            p.stop()


async def _following(p: NodeProc) -> bool:
    return int((await p.query("status"))["followers"]) >= 1


async def a_knows(p: NodeProc, nid: str, token: str | None = None) -> bool:
    return nid in {n["node_id"] for n in await p.query("nodes", token=token)}


async def wait_for_async(fn: Any, what: str = "the awaited condition") -> None:
    await wait_until_async(fn, what, interval=0.1)


class _Raw(picows.WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed.set()


async def test_malformed_and_oversized_frames_close_link_node_keeps_serving() -> None:
    a = NodeProc("A")
    b = NodeProc("B", "--peer", a.url)
    try:
        await _all_know([a, b], {"A", "B"})
        # junk before the handshake
        tr, lst = await picows.ws_connect(_Raw, a.url)
        for _ in range(5):
            tr.send(picows.WSMsgType.BINARY, b"\x07garbage-frame")
        await asyncio.wait_for(lst.closed.wait(), 5)
        # a well-formed frame of an unknown kind, then text frames
        tr, lst = await picows.ws_connect(_Raw, a.url)
        tr.send(picows.WSMsgType.BINARY, b"\x01\x01\x00\xfa\x00\x00\x00\x00\x00\x00\x00")
        tr.send(picows.WSMsgType.TEXT, b"hello?")
        await asyncio.wait_for(lst.closed.wait(), 10)
        # oversized frame (default limit 16 MiB)
        tr, lst = await picows.ws_connect(_Raw, a.url, max_frame_size=64 * 1024 * 1024)
        tr.send(picows.WSMsgType.BINARY, b"\x01" * (17 * 1024 * 1024))
        await asyncio.wait_for(lst.closed.wait(), 10)
        # still serving, still meshed
        st = await a.query("status")
        assert st["router"]["frame_errors"] + st["counters"]["handshake_failures"] >= 2
        assert await a.node_ids() == {"A", "B"}
        await a.query("publish", type="after", data={})
        await wait_for_async(lambda: _has_event(b, "after"), "B logged the event A published after the attacks")
    finally:
        a.stop()
        b.stop()


async def _has_event(p: NodeProc, etype: str) -> bool:
    return any(e["type"] == etype for e in await p.query("events", count=100))


async def test_bus_events_and_state_over_real_websockets() -> None:
    cfg = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5)
    a = MeshCore(MeshConfig(node_id="a", **cfg))  # type: ignore[arg-type]
    await a.start()
    b = MeshCore(MeshConfig(node_id="b", peers=[a.local_node.websocket_endpoint], **cfg))  # type: ignore[arg-type]
    await b.start()
    try:
        await wait_until(lambda: "b" in a.nodes and "a" in b.nodes, '"b" in a.nodes and "a" in b.nodes')
        got: list[tuple[str, Any]] = []
        for n in (a, b):
            n.event_bus.subscribe(EventType.AGENT_MESSAGE, lambda ev, n=n: got.append((n.node_id, ev.data)))
        await a.event_bus.publish_agent_message("ag1", "hello")
        await wait_until(lambda: len(got) == 2, 'len(got) == 2')
        assert sorted(x for x, _ in got) == ["a", "b"]
        b.state.update_local_state("agents", "k", 42)
        await wait_until(lambda: a.state.get_local_state("agents", "k") == 42, 'a.state.get_local_state("agents", "k") == 42')
    finally:
        await b.stop()
        await a.stop()


class _FakeWS:
    """Stands in for a picows transport that never drains (what is under test is WSLink)."""

    def __init__(self) -> None:
        self.sent = 0
        self.disconnected = False

    def send(self, t: Any, frame: bytes) -> None:
        self.sent += len(frame)

    def send_close(self, *a: Any) -> None:
        pass

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnected = True


async def test_slow_peer_outbox_is_bounded_and_link_dropped() -> None:
    core = MeshCore(MeshConfig(enable_redis=False, enable_websocket=False))
    from spiralfast.links.ws import WebSocketTransport, WSSettings

    wst = WebSocketTransport(core.host, WSSettings())
    from spiralfast.node.gate import MEMBER, Session

    link = WSLink(wst, outbound=False)
    link.ws = _FakeWS()
    link.session = Session(None, 0.0, MEMBER)  # an authenticated member that stopped reading
    link.pause()  # picows: the socket buffer is full
    frame = b"x" * (1024 * 1024)
    sent = 0
    while link.send_frame(frame):
        sent += 1
        assert sent < 1000
    assert link.outbox_bytes <= MAX_OUTBOX_BYTES
    assert link.closed and link.ws.disconnected and wst.slow_drops == 1 and link.dropped_frames == 1


def _self_signed(tmp: Any) -> tuple[str, str]:
    import shutil
    import subprocess as sp

    require(shutil.which("openssl") is not None, "the openssl binary (for a test certificate)")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    sp.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_wss_with_a_verified_certificate(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from spiralfast.client import ObserverClient
    from spiralfast.errors import LinkError

    caplog.set_level(logging.INFO, logger="spiralfast.ws")
    cert, key = _self_signed(tmp_path)
    base = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5)
    a = MeshCore(MeshConfig(node_id="tls-a", ssl_certfile=cert, ssl_keyfile=key, **base))  # type: ignore[arg-type]
    await a.start()
    ep = a.local_node.websocket_endpoint
    assert ep is not None and ep.startswith("wss://")
    b = MeshCore(MeshConfig(node_id="tls-b", peers=[ep], ssl_cafile=cert, **base))  # type: ignore[arg-type]
    c = MeshCore(MeshConfig(node_id="tls-c", peers=[ep], **base))  # type: ignore[arg-type]  # no CA: refused
    await b.start()
    await c.start()
    try:
        await wait_until(lambda: "tls-b" in a.nodes and "tls-a" in b.nodes, '"tls-b" in a.nodes and "tls-a" in b.nodes')
        got: list[Any] = []
        b.register_event_handler("secret", got.append)
        await a.broadcast_event("secret", {"x": 1})
        await wait_until(lambda: got != [], 'got != []')

        def c_refused() -> bool:  # c dialled a and its TLS handshake failed verification
            return any(r.getMessage().startswith(f"cannot reach {ep}") and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
                       for r in caplog.records)

        await wait_until(c_refused, "tls-c dialled tls-a and refused its unverified certificate")
        assert "tls-c" not in a.nodes and "tls-a" not in c.nodes
        client = await ObserverClient.connect(ep, cafile=cert)
        assert (await client.query("status"))["node_id"] == "tls-a"
        client.close()
        with pytest.raises(LinkError):
            await ObserverClient.connect(ep)  # unverified certificate
    finally:
        for n in (c, b, a):
            await n.stop()


async def test_links_measure_their_round_trip() -> None:
    base = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.2)
    a = MeshCore(MeshConfig(node_id="rtt-a", **base))  # type: ignore[arg-type]
    await a.start()
    b = MeshCore(MeshConfig(node_id="rtt-b", peers=[a.local_node.websocket_endpoint or ""], **base))  # type: ignore[arg-type]
    await b.start()
    try:
        def rtt() -> Any:
            links = [lk for lk in b.get_mesh_status()["links"] if lk["peer"] == "rtt-a"]
            return links[0].get("rtt_ms") if links else None

        await wait_until(lambda: rtt() is not None, 'rtt() is not None', timeout=5)
        assert 0 < rtt() < 1000
    finally:
        await b.stop()
        await a.stop()


async def test_a_second_process_with_an_existing_node_id_is_refused_clearly() -> None:
    base = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.3)
    a = MeshCore(MeshConfig(node_id="dup-a", **base))  # type: ignore[arg-type]
    await a.start()
    ep = a.local_node.websocket_endpoint or ""
    b = MeshCore(MeshConfig(node_id="dup-b", peers=[ep], **base))  # type: ignore[arg-type]
    await b.start()
    twin = MeshCore(MeshConfig(node_id="dup-b", peers=[ep], **base))  # type: ignore[arg-type]
    try:
        await wait_until(lambda: "dup-b" in a.nodes, '"dup-b" in a.nodes')
        started = time.monotonic()
        await twin.start()
        # Refused, and refused again after a back-off (it keeps trying, without flapping).
        await wait_until(lambda: a.counters["duplicate_ids"] >= 2, "a refused the twin twice")
        assert "dup-a" not in twin.nodes  # the newcomer never believes it joined
        elapsed = time.monotonic() - started
        assert a.counters["duplicate_ids"] <= most_refusals(elapsed), (a.counters["duplicate_ids"], elapsed)
        assert a.outbox.links["dup-b"].session.peer_id == "dup-b" and b.outbox.links  # the original stays
        assert twin.counters["rejected_by_peer"] >= 1
    finally:
        await twin.stop()
        await b.stop()
        await a.stop()


async def test_a_killed_peer_is_marked_disconnected_at_once_and_removed_after_the_timeout() -> None:
    a = NodeProc("FA", hb=2.0)
    b = NodeProc("FB", "--peer", a.url, hb=2.0)
    try:
        await _all_know([a], {"FA", "FB"})
        hb = 2.0
        silence = SILENCE_FACTOR * hb  # 6 s: when the silence rule alone would act
        b.kill9()
        t0 = time.monotonic()

        async def marked() -> bool:
            status = {n["node_id"]: n["status"] for n in await a.query("nodes")}
            return status.get("FB") == "disconnected"

        await wait_until_async(marked, "A shows FB as disconnected", interval=0.05)
        # At once: from the closed link, before the silence rule (3 x 2 s) could have
        # acted; the margin is the whole silence period minus our polling.
        assert time.monotonic() - t0 < silence
        # Then removed by failure detection: by the suspicion timeout or the silence rule,
        # whichever ends first, plus one heartbeat for the sweep; margin 4 s (loaded machine).
        limit = min(silence, DEFAULT_SUSPICION_TIMEOUT) + hb + 4.0

        async def removed() -> bool:
            return "FB" not in await a.node_ids()

        await wait_until_async(removed, "A removed FB", interval=0.1)
        assert time.monotonic() - t0 < limit
    finally:
        b.stop()
        a.stop()
