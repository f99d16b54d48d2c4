"""The NATS link (issue #18) against real nats-server processes and real node
processes: a 3-server cluster of its own for failover, the suite's JetStream server
(the suite's own, or ``SPIRALFAST_TEST_NATS_URL``: tests/services.py) for the rest.  A missing
nats-server fails in CI and skips locally."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore, schema
from spiralfast.busauth import BusSealer, KeyPins
from spiralfast.links.bus.nats import CONNECT_TIMEOUT, server_list, subject_token
from spiralfast.node.outbox import single_frame
from spiralfast.wire.signing import NodeKey

from .nats_cluster import NatsCluster, TcpProxy, nats_or_fail, stream_cleanup
from .procs import NodeProc
from .waiting import wait_until, wait_until_async, wait_until_sync


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.name.startswith("spiralfast"))

TOKEN = "nats-test-token-0123456789abcdef"


class Node:
    """``tests/nats_node.py`` as a subprocess: a node on NATS alone."""

    def __init__(self, node_id: str, mesh: str, urls: list[str], *extra: str) -> None:
        self.node_id = node_id
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.nats_node", node_id, mesh, ",".join(urls), "--token", TOKEN, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"node {node_id} did not start: {line!r}")

    def ask(self, cmd: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    async def aask(self, cmd: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.ask, cmd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def _wait(cond: Any, timeout: float = 15.0, interval: float = 0.1, what: str = "the awaited condition") -> None:
    wait_until_sync(cond, what, timeout=timeout, interval=interval)


def _mesh() -> str:
    return "nt_" + uuid.uuid4().hex[:8]


def test_subject_tokens_and_server_lists() -> None:
    assert subject_token("plain_name-1") == "plain_name-1"
    assert subject_token("a.b") == "a~2eb" and subject_token("a~2eb") == "a~7e2eb"  # distinct stays distinct
    assert subject_token("a b*>") == "a~20b~2a~3e" and subject_token("") == "~"
    assert server_list("nats://a:1, nats://b:2") == ["nats://a:1", "nats://b:2"]
    assert server_list(["nats://a:1", "nats://b:2,nats://c:3"]) == ["nats://a:1", "nats://b:2", "nats://c:3"]


def test_three_nodes_on_three_servers_exactly_once_and_a_server_dies_mid_stream() -> None:
    cluster = NatsCluster(3)
    mesh = _mesh()
    nodes: list[Node] = []
    try:
        # each node dials its own server first, the others are its failover list
        for i, nid in enumerate(("na", "nb", "nc")):
            urls = cluster.urls[i:] + cluster.urls[:i]
            nodes.append(Node(nid, mesh, urls))
        a, b, c = nodes
        _wait(lambda: all(set(n.ask("report")["nodes"]) == {"na", "nb", "nc"} for n in nodes))
        servers = {n.node_id: n.ask("report")["nats"]["server"] for n in nodes}
        assert len(set(servers.values())) == 3, servers  # three different servers
        # direct messages over each node's own subject
        assert a.ask("direct nb 20")["ok"] == 20 and a.ask("direct nc 20")["ok"] == 20
        assert b.ask("direct nc 20")["ok"] == 20 and c.ask("direct na 20")["ok"] == 20
        # broadcasts from two nodes; the server of one of them (nb) dies mid-stream
        a.proc.stdin.write("send 3000 1500\n")  # type: ignore[union-attr]
        b.proc.stdin.write("send 3000 1500\n")  # type: ignore[union-attr]
        a.proc.stdin.flush()  # type: ignore[union-attr]
        b.proc.stdin.flush()  # type: ignore[union-attr]
        # Mid-stream: nc (not sending, so it answers) has events from both senders.
        _wait(lambda: all(c.ask("report")["got"]["t"].get(s, 0) >= 1 for s in ("na", "nb")),
              what="nc received events from both streams")
        cluster.kill(1)
        for n in (a, b):
            assert json.loads(n.proc.stdout.readline()) == {"sent": 3000}  # type: ignore[union-attr]

        def complete() -> bool:
            ra, rb, rc = (n.ask("report") for n in nodes)
            return (ra["got"]["t"].get("nb") == 3000 and rb["got"]["t"].get("na") == 3000
                    and rc["got"]["t"].get("na") == 3000 and rc["got"]["t"].get("nb") == 3000)

        _wait(complete, timeout=20, interval=0.3)
        reports = {n.node_id: n.ask("report") for n in nodes}
        for nid, r in reports.items():
            assert r["dups"] == {}, (nid, r["dups"])
            assert r["counters"]["events_lost"] == 0, (nid, r["delivery"])
        assert reports["nb"]["got"]["d"] == {"na": 20} and reports["na"]["got"]["d"] == {"nc": 20}
        assert reports["nc"]["got"]["d"] == {"na": 20, "nb": 20}
        rb = reports["nb"]["nats"]
        assert rb["reconnects"] >= 1 and rb["state"] == "open" and rb["server"] != servers["nb"]
        # what nb's outage cost was repaired from the senders' retransmit buffers
        assert sum(r["counters"]["repair_requests"] for r in reports.values()) >= 1, reports
    finally:
        for n in nodes:
            n.stop()
        cluster.close()


def test_a_node_away_longer_than_the_retransmit_window_catches_up_from_jetstream() -> None:
    url = nats_or_fail()
    mesh = _mesh()

    async def main() -> None:
        from urllib.parse import urlparse

        u = urlparse(url)
        proxy = TcpProxy(u.port or 4222, u.hostname or "127.0.0.1")
        await proxy.restore()
        # the sender forgets what it sent after 1 s: only the stream can fill the gap
        a = Node("sa", mesh, [url], "--stream", "--retx", "1", "--hb", "0.3")
        c = Node("sc", mesh, [proxy.url], "--stream", "--hb", "0.3")
        try:
            await asyncio.to_thread(_wait, lambda: "sa" in c.ask("report")["nodes"])
            assert (await a.aask("send 100 0"))["sent"] == 100
            await asyncio.to_thread(_wait, lambda: c.ask("report")["got"]["t"].get("sa") == 100)
            await proxy.cut()  # sc is away
            assert (await a.aask("send 500 1000"))["sent"] == 600
            await asyncio.sleep(2.5)  # > retransmit window: sa's buffer no longer holds them
            await proxy.restore()
            await asyncio.to_thread(_wait, lambda: c.ask("report")["nats"]["state"] == "open",
                                    what="sc reconnected after the cut")
            assert (await a.aask("send 100 0"))["sent"] == 700
            await asyncio.to_thread(_wait, lambda: c.ask("report")["got"]["t"].get("sa") == 700, 20)
            await asyncio.sleep(1.5)  # anything late (a second copy, a give-up) would show now
            r = await c.aask("report")
            assert r["got"]["t"] == {"sa": 700} and r["dups"] == {}
            assert r["counters"]["events_lost"] == 0, r["delivery"]
            assert r["nats"]["catchups"] >= 1 and r["nats"]["caught_up_events"] >= 500, r["nats"]
        finally:
            a.stop()
            c.stop()
            await proxy.cut()
            await stream_cleanup(url, mesh)

    asyncio.run(main())


def test_raw_client_junk_unsigned_forged_and_replayed_frames_are_refused_and_counted() -> None:
    url = nats_or_fail()
    mesh = _mesh()
    victim = NodeProc("victim", "--nats", url, "--token", TOKEN, "--name", mesh)

    async def main() -> None:
        import nats

        nc = await nats.connect(url)
        base = f"spiralfast.{subject_token(mesh)}"
        bcast, mine, members = f"{base}.bcast", f"{base}.node.victim", f"{base}.members"
        helper = MeshCore(MeshConfig(node_id="helper", mesh_name=mesh, enable_websocket=False, enable_redis=False,
                                     nats_url=url, auth_token=TOKEN, heartbeat_interval=0.3))
        got: list[Any] = []
        helper.register_event_handler("ping", got.append)
        await helper.start()
        try:
            await wait_until(lambda: "victim" in helper.nodes, '"victim" in helper.nodes', timeout=10)
            # a heartbeat speaking for the victim (a forged departure/ghost if it passed)
            hb = single_frame(schema.KIND_HEARTBEAT, schema.Heartbeat("victim", "active", 0, 0.0, time.time()))
            # an insider: the token, and a key of its own (frames must be signed by their sender's key)
            good = BusSealer("intruder", mesh, TOKEN, node_key=NodeKey.generate(), pins=KeyPins())
            plain = BusSealer("intruder", mesh, None)
            wrong = BusSealer("intruder", mesh, "not-the-token-0123456789abcdef")
            replay = good.seal(bcast.encode(), 1, hb)
            attacks = [
                (bcast, b"junk"), (mine, b"\xff" * 64), (members, b""),
                (bcast, plain.seal(bcast.encode(), 1, hb)), (mine, plain.seal(mine.encode(), 2, hb)),
                (bcast, wrong.seal(bcast.encode(), 1, hb)), (members, wrong.seal(members.encode(), 1, b"\x80")),
                (mine, good.seal(bcast.encode(), 5, hb)),  # sealed for another subject
                (bcast, replay), (bcast, replay), (bcast, replay),  # the first passes the seal, not the gate
            ]
            for subject, payload in attacks * 20:
                await nc.publish(subject, payload)
            for k in range(5):  # sealed with the token (an insider), but the frame inside is garbage
                await nc.publish(bcast, good.seal(bcast.encode(), 100 + k, b"\x07garbage" * 3))
            await nc.flush()
            st: dict[str, Any] = {}

            async def counted() -> bool:
                nonlocal st
                st = await victim.query("status", token=TOKEN)
                link = [x for x in st["links"] if x["transport"] == "nats"][0]
                return bool(link["refused"] >= 200 and st["router"]["frame_errors"] >= 1)

            await wait_until_async(counted, "the victim refused 200 bus messages and counted a frame error",
                                   interval=0.2)
            link = [x for x in st["links"] if x["transport"] == "nats"][0]
            assert st["counters"]["bus_refused"] == link["refused"]
            auth = link["auth"]
            assert auth["malformed"] >= 60 and auth["unsigned"] >= 40 and auth["forged"] >= 60, auth
            assert auth["replayed"] >= 40, auth
            assert st["nats"] is True and st["counters"]["refused_messages"] >= 1  # the heartbeat that passed the seal
            assert st["router"]["frame_errors"] >= 1, st["router"]  # the garbage frames, counted by the gate
            # the victim keeps serving its mesh
            vn = await victim.query("nodes", token=TOKEN)
            assert "helper" in {n["node_id"] for n in vn} and "intruder" not in {n["node_id"] for n in vn}
            c = await victim.client(TOKEN)
            try:
                await c.query("publish", type="ping", data={"ok": 1})
            finally:
                c.close()
            await wait_until(lambda: bool(got), 'bool(got)', timeout=10)
        finally:
            await helper.stop()
            await nc.close()

    try:
        asyncio.run(main())
    finally:
        victim.stop()


def test_in_process_mesh_state_and_tasks_over_nats_only() -> None:
    url = nats_or_fail()
    mesh = _mesh()

    async def main() -> None:
        def cfg(nid: str) -> MeshConfig:
            return MeshConfig(node_id=nid, mesh_name=mesh, enable_websocket=False, enable_redis=False, nats_url=url,
                              auth_token=TOKEN, heartbeat_interval=0.3, sync_interval=0.3)

        a, b = MeshCore(cfg("pa")), MeshCore(cfg("pb"))
        await a.start()
        await b.start()
        try:
            await wait_until(lambda: "pb" in a.nodes and "pa" in b.nodes, '"pb" in a.nodes and "pa" in b.nodes')
            assert a.get_mesh_status()["nats"] is True
            a.state.update_local_state("agents", "k", {"v": 1})
            await wait_until(lambda: b.state.get_local_state("agents", "k") == {"v": 1}, 'b.state.get_local_state("agents", "k") == {"v": 1}')
            b.register_task_handler("double", lambda x: x * 2)
            await wait_until(lambda: "double" in a.tasks.status()["nodes"].get("pb", {}), "pb's 'double' reached pa")
            assert await a.submit_task("double", 21, timeout=5) == 42
            await b.stop()
            await wait_until(lambda: "pb" not in a.nodes, '"pb" not in a.nodes', timeout=5)
        finally:
            await b.stop()
            await a.stop()

    asyncio.run(main())


def test_unreachable_nats_warns_once_the_node_runs_on_and_connects_when_nats_appears(
        caplog: pytest.LogCaptureFixture) -> None:
    """Also: no log line shows the URL's password, and the banner names the server reached."""
    from types import SimpleNamespace

    from spiralfast.cli import _banner

    from .conftest import free_port

    port, dead = free_port(), free_port()

    async def main() -> None:
        # a password in the URL (a server without auth ignores it); the first server never answers
        n = MeshCore(MeshConfig(node_id="lonely", enable_websocket=False, enable_redis=False,
                                nats_url=[f"nats://user:secretpw@127.0.0.1:{dead}",
                                          f"nats://user:secretpw@127.0.0.1:{port}"], heartbeat_interval=0.3))
        t = time.monotonic()
        await n.start()
        server = None
        try:
            # start() does not wait past one connect attempt per listed server (two here);
            # margin 1 s
            assert time.monotonic() - t < 2 * CONNECT_TIMEOUT + 1.0
            assert n.nats is not None and not n.nats.connected and n.get_mesh_status()["nats"] is False
            await n.broadcast_event("x", {"still": "running"})
            await wait_until(lambda: _logged(caplog, "unreachable"), "the node said NATS is unreachable")
            server = await asyncio.to_thread(NatsCluster, 1, False, [port])
            await wait_until(lambda: n.nats.connected, 'n.nats.connected', timeout=10)
            assert n.get_mesh_status()["nats"] is True
            rows = [line.split(None, 1) for line in _banner(n, SimpleNamespace(file=None))[1:]]
            assert dict(rows)["nats"] == f"connected 127.0.0.1:{port}", rows  # not the whole list
            server.kill(0)  # "connection lost; reconnecting (servers ...)"
            await wait_until(lambda: not n.nats.connected, 'not n.nats.connected', timeout=10)
        finally:
            await n.stop()
            if server is not None:
                server.close()

    asyncio.run(main())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("spiralfast")]
    downs = [m for m in ours if "unreachable" in m]
    assert len(downs) == 1, ours
    assert "user:****@127.0.0.1" in downs[0], downs
    assert any("connection lost" in m and "user:****@" in m for m in ours), ours
    assert not [m for m in ours if "secretpw" in m], ours


def test_tls_url_against_a_plain_server_does_not_connect(caplog: pytest.LogCaptureFixture) -> None:
    """nats-py upgrades to TLS only when the server asks: a tls:// URL must never end up in plain text."""
    url = nats_or_fail()
    plain = url.replace("nats://", "tls://", 1)

    async def main() -> None:
        n = MeshCore(MeshConfig(node_id="tlsnode", enable_websocket=False, enable_redis=False, nats_url=plain,
                                heartbeat_interval=0.3))
        t = time.monotonic()
        await n.start()
        try:
            assert time.monotonic() - t < CONNECT_TIMEOUT + 4.0  # one server's attempt; margin 4 s
            assert n.nats is not None and not n.nats.connected and n.get_mesh_status()["nats"] is False
            # The dial happened and was refused for the reason under test, then: not connected.
            await wait_until(lambda: _logged(caplog, "offers no TLS"), "the node refused the plain-text server")
            assert not n.nats.connected
        finally:
            await n.stop()

    asyncio.run(main())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("spiralfast")]
    assert any("offers no TLS" in m and "plain text" in m for m in ours), ours


def test_nats_url_validation() -> None:
    from spiralfast.errors import ConfigError

    for bad in ("nats://127.0.0.1:99999", "nats://", "NATS://127.0.0.1:4222", "Tls://h:1", "nats://h:0",
                "nats://h:x", "foo", "127.0.0.1:4222", "http://h:1", [], ["nats://a:1", "nats://:2"], "nats://a:1,b"):
        with pytest.raises(ConfigError, match="nats_url"):
            MeshConfig(nats_url=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        MeshConfig(nats_url="nats://user:secretpw@h:70000")
    assert "secretpw" not in str(e.value) and "user:****@h" in str(e.value)
    for good in ("nats://127.0.0.1:4222", "tls://nats.example.com", "nats://u:p@h:1", "ws://h:8080", "wss://h",
                 "nats://a:1, nats://b:2", ["tls://a:1", "tls://[::1]:4222"]):
        MeshConfig(nats_url=good)


def test_bench_over_nats_refuses_a_bad_or_unreachable_url_at_once() -> None:
    from spiralfast.benchmark import run_bench
    from spiralfast.errors import ConfigError, LinkError

    from .conftest import free_port

    t = time.monotonic()
    with pytest.raises(ConfigError, match="nats_url"):
        run_bench("nats", 10, nats_url="foo")
    with pytest.raises(LinkError, match="unreachable") as e:
        run_bench("nats", 10, nats_url=f"nats://u:secretpw@127.0.0.1:{free_port()}")
    assert "secretpw" not in str(e.value)
    assert time.monotonic() - t < CONNECT_TIMEOUT + 3.0  # one connect attempt, not a retry loop; margin 3 s


def test_catch_up_holds_only_authenticated_frames_bounded_and_refuses_replayed_stream_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a node catches up from JetStream, an outsider's junk is never held (it is
    refused at once), what is held is bounded in bytes (the oldest dropped, then repaired),
    and a captured frame published again into the stream is refused (its stream timestamp is
    far from its send time) instead of being delivered from the stream."""
    from types import SimpleNamespace
    from unittest import mock
    from urllib.parse import urlparse

    from spiralfast.links.bus.nats import catchup as nats_link
    from spiralfast.wire import sealing as busauth

    url = nats_or_fail()
    mesh = _mesh()

    def cfg(nid: str, u: str) -> MeshConfig:
        return MeshConfig(node_id=nid, mesh_name=mesh, enable_websocket=False, enable_redis=False, nats_url=u,
                          nats_stream=True, auth_token=TOKEN, heartbeat_interval=0.3, max_clock_offset=1.0)

    async def main() -> None:
        import nats

        pu = urlparse(url)
        proxy = TcpProxy(pu.port or 4222, pu.hostname or "127.0.0.1")
        await proxy.restore()
        att = await nats.connect(url)  # an outsider: no token
        s = MeshCore(cfg("S", url))
        v = MeshCore(cfg("V", proxy.url))
        got: list[str] = []
        v.register_event_handler("payment", lambda e: got.append(e["data"]["id"]))
        await s.start()
        try:
            assert s.nats is not None
            bcast = s.nats.bcast
            captured: list[bytes] = []

            async def cap(m: Any) -> None:
                captured.append(m.data)

            sub = await att.subscribe(bcast, cb=cap)
            # nats-py's flush() writes its PING ahead of a SUB still queued for its flusher,
            # so its PONG does not prove the subscription is in place (S's "old" frame was
            # then published before it, and never captured): hearing a heartbeat of S's does
            await wait_until(lambda: captured, "the listener hears S", timeout=10)
            captured.clear()
            # S's frames as a listener captured them 70 s ago (S's sealing clock set back
            # instead of waiting 70 s): stale for the live path (window 61 s)
            real = time.time
            old = b"\x81\xa2id\xa3old"  # the event's data, {"id": "old"}, as msgpack (frames are MAC'd, not encrypted)
            with mock.patch.object(busauth, "time", SimpleNamespace(time=lambda: real() - 70)):
                await s.broadcast_event("payment", {"id": "old"})
                # S's writer seals the event's frame a moment later, and the listener may
                # first capture other frames of S sealed before the mock: wait for the
                # frame holding "old" itself, or it would be sealed fresh (a genuine
                # broadcast, rightly caught up from the stream) once the mock is gone
                await wait_until(lambda: any(old in d for d in captured), "the listener captured S's old frame")
            await sub.unsubscribe()
            assert all(nats_link._sealed_sent(d) < real() - 60 for d in captured if old in d), "old sealed stale"
            await v.start()
            assert v.nats is not None
            await wait_until(lambda: "S" in v.nodes, '"S" in v.nodes', timeout=10)
            await s.broadcast_event("payment", {"id": "live-0"})
            await wait_until(lambda: got == ["live-0"], 'got == ["live-0"]', timeout=5)

            gate = asyncio.Event()
            orig = v.nats._catch_up

            async def gated(since: float) -> None:
                await gate.wait()
                await orig(since)

            v.nats._catch_up = gated  # type: ignore[method-assign]
            await proxy.cut()  # V is away: the attacker republishes the captured frames into the stream
            await wait_until(lambda: not v.nats.connected, "V noticed it is cut off")
            for d in captured:
                await att.publish(bcast, d)
            published = s.nats.stats["published"]  # type: ignore[union-attr]
            for i in range(3):
                await s.broadcast_event("payment", {"id": f"away-{i}"})
            await att.flush()
            await wait_until(lambda: s.nats.stats["published"] > published,  # type: ignore[union-attr]
                             "S published the events made while V was away")
            await proxy.restore()
            await wait_until(lambda: v.nats.connected and v.nats.held is not None, 'v.nats.connected and v.nats.held is not None', timeout=10)
            # during the catch-up: an outsider floods the broadcast subject with junk...
            refused = v.nats.stats["refused"]
            junk = b"\x01" + os.urandom(256 * 1024)
            for _ in range(40):
                await att.publish(bcast, junk)
            await att.flush()
            await wait_until(lambda: v.nats.stats["refused"] >= refused + 40, 'v.nats.stats["refused"] >= refused + 40', timeout=10)
            held = v.nats.held
            assert held is not None and all(h[0] == "S" for h in held), [h[:2] for h in held]  # none of it held
            assert v.nats.held_bytes < 256 * 1024, v.nats.held_bytes
            # ...and a member's live frames are held up to the byte bound, the oldest dropped beyond it
            monkeypatch.setattr(nats_link, "MAX_HELD_BYTES", 8 * 1024)
            for i in range(12):
                await s.broadcast_event("payment", {"id": f"held-{i}", "pad": "x" * 2000})
                await asyncio.sleep(0.02)  # a pause that means time: one frame per event, not one batch
            await wait_until(lambda: v.nats.stats["held_dropped"] >= 1, 'v.nats.stats["held_dropped"] >= 1', timeout=5)
            assert v.nats.held is not None and v.nats.held_bytes <= 8 * 1024
            gate.set()
            want = ["live-0"] + [f"away-{i}" for i in range(3)] + [f"held-{i}" for i in range(12)]
            await wait_until(lambda: sorted(got) == sorted(want), 'sorted(got) == sorted(want)', timeout=15)  # dropped ones repaired from S
            await s.broadcast_event("payment", {"id": "fence"})  # after everything: what came late shows first
            await wait_until(lambda: "fence" in got, '"fence" in got', timeout=15)
            assert sorted(got) == sorted([*want, "fence"]), got  # once each, and never "old"
            st = v.nats.stats
            assert st["catchups"] == 1 and st["stream_refused"] >= 1 and st["caught_up_events"] >= 3, st
        finally:
            await v.stop()
            await s.stop()
            await proxy.cut()
            await att.close()
            await stream_cleanup(url, mesh)

    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


async def test_a_dialled_peer_also_on_nats_does_not_relink_forever(caplog: pytest.LogCaptureFixture) -> None:
    """New-user finding: B dials A (--peer) and both share NATS; A learns B's endpoint over
    NATS and dials it too; the rule keeps the link dialled by the smaller id (A's), and B's
    permanent dial used to redial at once, ~20 closes a second, forever."""
    import logging

    from spiralfast import MeshConfig, MeshCore

    url = nats_or_fail()
    mesh = f"dup_{uuid.uuid4().hex[:8]}"
    base = dict(enable_redis=False, nats_url=url, mesh_name=mesh, heartbeat_interval=0.3, websocket_port=0)
    a = MeshCore(MeshConfig(node_id="A", **base))  # type: ignore[arg-type]
    await a.start()
    b = MeshCore(MeshConfig(node_id="B", peers=[a.local_node.websocket_endpoint or ""], **base))  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.INFO, logger="spiralfast"):
            await b.start()
            await wait_until(lambda: "B" in a.nodes and "A" in b.nodes, '"B" in a.nodes and "A" in b.nodes', timeout=10)
            await asyncio.sleep(3.0)  # a window that means time: links must stay put in it, not flap
        closes = [r for r in caplog.records if "duplicate link" in r.getMessage()]
        assert len(closes) <= 4, f"{len(closes)} duplicate-link closes in 3 s"
        assert "A" in b.outbox.links and "B" in a.outbox.links  # one link each way survives
    finally:
        await b.stop()
        await a.stop()


async def test_without_nats_py_the_node_says_how_to_install_it_and_runs_on(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """New-user finding: --nats without nats-py ran the whole node twice (the CLI took the
    ImportError for uvloop's) and ended in a traceback."""
    import logging

    from spiralfast import MeshConfig, MeshCore

    monkeypatch.setitem(sys.modules, "nats", None)  # import nats -> ImportError
    node = MeshCore(MeshConfig(node_id="no-nats", enable_redis=False, websocket_port=0,
                               nats_url="nats://127.0.0.1:4222"))
    with caplog.at_level(logging.WARNING, logger="spiralfast"):
        await node.start()
    try:
        assert node.running and node.nats is None and node.config.enable_nats is False
        assert any("pip install 'spiralfast[nats]'" in r.getMessage() for r in caplog.records)
    finally:
        await node.stop()
