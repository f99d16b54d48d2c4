"""Suspicion and indirect probes (issue 24): the sans-I/O rules of ``Membership`` with a
fake clock (every call takes ``now``), and three memberships wired by a fake network
that carries their effects.

- a peer whose link its side closed is suspected at once and probed (a Ping over a bus,
  PingReqs through live members, a new dial);
- an answer relayed by a helper refutes the suspicion; without one, the node is removed
  when the suspicion timeout ends, whatever the heartbeat interval;
- never suspected while a link or a bus hears it; a paused peer (its link stays open) is
  judged by heartbeats only, and is not removed before 3 of them.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

import msgspec
import pytest

from spiralfast import MeshConfig, MeshCore, schema
from spiralfast.codec import decode_payload
from spiralfast.errors import ConfigError, FrameError
from spiralfast.node.gate import DELIVER, HANDSHAKE, MEMBER, OBSERVER, REFUSE, admit
from spiralfast.node.registry import MeshRegistry
from spiralfast.protocol.membership import (
    MAX_FORWARDS,
    PROBE_HELPERS,
    PROBE_ROUNDS,
    SILENCE_FACTOR,
    Dial,
    Effect,
    Joined,
    Lost,
    Membership,
    Refuted,
    SendAck,
    SendPing,
    SendPingReq,
    Suspected,
)
from spiralfast.records import MeshNode, NodeStatus
from tests.waiting import wait_until

#: The defaults under test: a 30 s heartbeat (the old library's) and a 3 s suspicion.
HB = 30.0
TIMEOUT = 3.0


def _membership(me: str = "me", hb: float = HB, timeout: float = TIMEOUT) -> Membership:
    local = MeshNode(me, me, NodeStatus.INITIALIZING, [], 0, 0.0, datetime.now(), {})
    m = Membership(local, MeshRegistry(me), hb, timeout, rng=random.Random(7))
    m.join_local()
    return m


def _linked(m: Membership, *peers: str, now: float = 0.0) -> None:
    for p in peers:
        m.link_ready(p, {"websocket_endpoint": f"ws://{p}"}, now)


_KIND = {Suspected: "suspect", SendPing: "ping", SendPingReq: "ping_req", SendAck: "ack", Dial: "dial",
         Lost: "lost", Refuted: "refuted", Joined: "joined"}


def _kinds(effects: list[Effect]) -> list[str]:
    return [_KIND[type(e)] for e in effects]


# -- suspicion at the close ---------------------------------------------------------------


def test_a_link_closed_by_the_peer_suspects_it_at_once_and_probes_it() -> None:
    m = _membership()
    _linked(m, "p", "q", "r", "s", "t")
    eff = m.link_lost("p", 10.0, by_peer=True)
    assert eff[0] == Suspected("p") and m.is_suspect("p")
    assert m.nodes["p"].status == NodeStatus.DISCONNECTED  # shown at once, not in 90 s
    nonce = m.suspects["p"].nonce
    assert SendPing("p", nonce, False) in eff  # directly, over a bus that reaches it
    helpers = [e.helper for e in eff if isinstance(e, SendPingReq)]
    assert len(helpers) == PROBE_HELPERS and set(helpers) <= {"q", "r", "s", "t"}  # a few live members
    assert all((e.target, e.nonce) == ("p", nonce) for e in eff if isinstance(e, SendPingReq))
    assert Dial("ws://p", "p") in eff  # a node that is alive answers a new dial too
    assert m.link_lost("p", 10.1, by_peer=True) == []  # once


def test_no_helpers_no_ping_reqs_but_still_a_direct_probe() -> None:
    m = _membership()
    _linked(m, "p")
    eff = m.link_lost("p", 1.0, by_peer=True)
    assert _kinds(eff) == ["suspect", "ping", "dial"]


def test_a_suspect_is_removed_when_the_timeout_ends_whatever_the_heartbeat() -> None:
    for hb in (30.0, 300.0):
        m = _membership(hb=hb)
        _linked(m, "p", "q", now=100.0)
        m.on_heartbeat(schema.Heartbeat("p", "active", 0, 0.0, 0.0), 100.0)  # just heard: fresh
        m.link_lost("p", 100.0, by_peer=True)
        reprobes = 0
        now = 100.0
        while now < 100.0 + TIMEOUT - 0.25:  # the sweep ticks every 0.25 s: probed again, kept
            now += 0.25
            eff = m.sweep(now)
            assert Lost("p", "unreachable") not in eff, now
            reprobes += _kinds(eff).count("ping")
        assert reprobes == PROBE_ROUNDS - 1  # the first round went out at the close
        assert "p" in m.nodes and m.is_suspect("p")
        assert m.sweep(100.0 + TIMEOUT) == [Lost("p", "unreachable")]
        assert "p" not in m.nodes and not m.is_suspect("p") and "q" in m.nodes
        # second-hand gossip does not bring it back; its own voice would
        assert m.on_gossip(schema.Gossip([{"node_id": "p"}]), "q", 104.0, learn=True, dial=False) == []
        assert "p" not in m.nodes


def test_an_answer_through_a_helper_refutes_the_suspicion() -> None:
    m = _membership()
    _linked(m, "p", "q")
    m.link_lost("p", 5.0, by_peer=True)
    nonce = m.suspects["p"].nonce
    assert m.on_ack(schema.Ack("p", nonce + 1), "q", 5.1) == []  # not our probe: nothing
    assert m.is_suspect("p")
    assert m.on_ack(schema.Ack("p", nonce), "q", 5.2) == [Refuted("p", "answered through q")]
    assert not m.is_suspect("p")
    # alive, though unlinked: judged by heartbeats again (last heard at 0), never by the
    # suspicion timeout
    for t in range(6, int(SILENCE_FACTOR * HB)):
        m.on_heartbeat(schema.Heartbeat("q", "active", 0, 0.0, 0.0), float(t))
        assert m.sweep(float(t)) == [], t
    assert m.sweep(SILENCE_FACTOR * HB + 0.1) == [Lost("p", "silent")]


# -- three nodes and a fake network -------------------------------------------------------


class Net:
    """Carries the probe effects between memberships; a dead node receives nothing."""

    def __init__(self, *ms: Membership, bus: bool = False) -> None:
        self.m = {x.node_id: x for x in ms}
        self.bus = bus  # a bus reaches every node: direct probes (any_route False) go through
        self.dead: set[str] = set()
        self.log: list[Any] = []
        self.lost: dict[str, list[str]] = {x.node_id: [] for x in ms}

    def run(self, src: str, effects: list[Effect], now: float) -> None:
        queue = [(src, e) for e in effects]
        while queue:
            frm, e = queue.pop(0)
            self.log.append((frm, e))
            match e:
                case Lost(node_id=nid):
                    self.lost[frm].append(nid)
                    continue
                case SendPing(node_id=dst, nonce=nonce, any_route=any_route):
                    if not self._reaches(dst) or (not any_route and not self.bus):
                        continue
                    out = self.m[dst].on_ping(schema.Ping(nonce, frm), frm, now)
                case SendPingReq(helper=dst, target=target, nonce=nonce):
                    if not self._reaches(dst):
                        continue
                    out = self.m[dst].on_ping_req(schema.PingReq(target, nonce), frm, now)
                case SendAck(to=dst, node_id=nid, nonce=nonce):
                    if not self._reaches(dst):
                        continue
                    out = self.m[dst].on_ack(schema.Ack(nid, nonce), frm, now)
                case _:
                    continue
            queue += [(dst, x) for x in out]

    def _reaches(self, dst: str) -> bool:
        return dst not in self.dead and dst in self.m

    def sweep(self, now: float) -> None:
        for nid, m in self.m.items():
            if nid not in self.dead:
                self.run(nid, m.sweep(now), now)


def _three() -> tuple[Net, Membership, Membership, Membership]:
    a, b, c = _membership("a"), _membership("b"), _membership("c")
    for x in (a, b, c):
        _linked(x, *[y for y in "abc" if y != x.node_id])
    return Net(a, b, c), a, b, c


def test_three_nodes_a_live_suspect_answers_through_a_helper() -> None:
    net, a, b, c = _three()
    # a's link to c closed (c's side closed it, e.g. it dropped a as too slow); b still links c
    net.run("a", a.link_lost("c", 1.0, by_peer=True), 1.0)
    refuted = [e for frm, e in net.log if frm == "a" and isinstance(e, Refuted)]
    assert refuted == [Refuted("c", "answered through b")] and not a.is_suspect("c")
    a_nonce = next(e.nonce for f, e in net.log if isinstance(e, SendPingReq))
    assert ("b", SendAck("a", "c", a_nonce)) in net.log
    assert a_nonce > 0
    for t in range(2, 60):
        net.sweep(float(t))
    assert net.lost == {"a": [], "b": [], "c": []}  # nobody removed anybody


def test_three_nodes_a_killed_node_is_removed_by_both_survivors() -> None:
    net, a, b, c = _three()
    net.dead.add("c")  # kill -9: the kernel closes its sockets; both survivors see the close
    net.run("a", a.link_lost("c", 1.0, by_peer=True), 1.0)
    net.run("b", b.link_lost("c", 1.02, by_peer=True), 1.02)
    assert a.is_suspect("c") and b.is_suspect("c")
    t = 1.0
    while t < 1.0 + TIMEOUT + 0.5:
        t += 0.1
        net.sweep(t)
    assert net.lost["a"] == ["c"] and net.lost["b"] == ["c"]
    assert "c" not in a.nodes and "c" not in b.nodes and "b" in a.nodes and "a" in b.nodes


def test_three_nodes_on_a_bus_the_suspect_answers_the_direct_probe() -> None:
    net, a, b, c = _three()
    net.bus = True
    net.run("a", a.link_lost("c", 1.0, by_peer=True), 1.0)
    assert ("a", Refuted("c", "heard")) in net.log and not a.is_suspect("c")
    assert a.nodes["c"].status == NodeStatus.ACTIVE  # heard itself: alive and connected


def test_the_prober_itself_is_heard_by_its_ping() -> None:
    m = _membership()
    _linked(m, "p")
    m.link_lost("p", 1.0, by_peer=True)
    # p probes us straight (over a bus): we answer it, and p is alive
    eff = m.on_ping(schema.Ping(42, "p"), "p", 1.5)
    assert SendAck("p", "me", 42) in eff and Refuted("p", "heard") in eff
    assert m.nodes["p"].status == NodeStatus.ACTIVE
    # a relayed Ping (sender: the relay) is answered to its prober, proves nothing of it
    eff = m.on_ping(schema.Ping(43, "x"), "p", 1.6)
    assert eff == [SendAck("x", "me", 43)]


def test_ping_req_about_us_is_answered_and_forwards_are_bounded() -> None:
    m = _membership()
    _linked(m, "p", "q")
    assert m.on_ping_req(schema.PingReq("me", 9), "p", 1.0) == [SendAck("p", "me", 9)]
    assert m.on_ping_req(schema.PingReq("nobody", 9), "p", 1.0) == []  # unknown: nothing to probe
    for i in range(MAX_FORWARDS + 50):
        m.on_ping_req(schema.PingReq("q", i + 1), "p", 1.0)
    assert len(m.forwards) == MAX_FORWARDS
    m.sweep(1.0 + TIMEOUT + 0.01)  # they expire with the suspicion timeout
    assert m.forwards == {}


# -- never suspected while heard ----------------------------------------------------------


def test_a_link_we_closed_suspects_nobody() -> None:
    m = _membership()
    _linked(m, "p")
    assert m.link_lost("p", 1.0, by_peer=False) == []  # a slow peer we dropped: heartbeats judge
    assert not m.is_suspect("p") and m.nodes["p"].status == NodeStatus.DISCONNECTED
    assert m.sweep(1.0 + TIMEOUT + 1) == []
    assert m.sweep(SILENCE_FACTOR * HB - 0.1) == [] and "p" in m.nodes


def test_never_suspected_while_a_link_hears_it() -> None:
    m = _membership()
    _linked(m, "p")
    assert m.suspect("p", 1.0) == [] and not m.is_suspect("p")  # its (newer) link is up
    # a newer link came up before the old one's close was seen: the close names the old one,
    # which the node no longer routes by (the shell calls link_lost only for the current link)
    m.link_lost("p", 2.0, by_peer=True)
    m.link_ready("p", None, 2.1)  # the peer dialled again at once: alive
    assert not m.is_suspect("p") and m.nodes["p"].status == NodeStatus.ACTIVE
    for t in range(3, 80):
        assert m.sweep(float(t)) == []


def test_never_removed_while_a_bus_hears_it() -> None:
    m = _membership()
    _linked(m, "p")
    eff = m.link_lost("p", 1.0, by_peer=True)  # its WebSocket link closed, it is on Redis too
    assert m.is_suspect("p") and SendPing("p", m.suspects["p"].nonce, False) in eff
    # its answer over the bus (authenticated sender: p itself) ends the suspicion
    assert Refuted("p", "heard") in m.on_ack(schema.Ack("p", m.suspects["p"].nonce), "p", 1.01)
    assert m.nodes["p"].status == NodeStatus.ACTIVE and not m.is_suspect("p")
    # ... and so does anything it says itself over the bus: a heartbeat
    m.link_ready("p", None, 2.0)
    m.link_lost("p", 3.0, by_peer=True)
    assert m.on_heartbeat(schema.Heartbeat("p", "active", 0, 0.0, 0.0), 3.5) == [Refuted("p", "heard")]
    for t in range(4, 200):  # heard over the bus every heartbeat: never removed, never suspected
        now = float(t)
        if t % 30 == 0:
            m.on_heartbeat(schema.Heartbeat("p", "active", 0, 0.0, 0.0), now)
        assert m.sweep(now) == [] and not m.is_suspect("p")
    # a node known over the bus only (never linked) is never suspected either
    m.on_heartbeat(schema.Heartbeat("busonly", "active", 0, 0.0, 0.0), 200.0)
    for t in range(201, 300):
        if t % 30 == 0:
            m.on_heartbeat(schema.Heartbeat("busonly", "active", 0, 0.0, 0.0), float(t))
            m.on_heartbeat(schema.Heartbeat("p", "active", 0, 0.0, 0.0), float(t))
        assert m.sweep(float(t)) == [] and not m.is_suspect("busonly")


def test_a_paused_peer_is_not_removed_before_three_heartbeats() -> None:
    """SIGSTOP keeps the peer's TCP link open: no close, no suspicion; silence decides."""
    m = _membership()
    _linked(m, "p", "q", now=0.0)
    for t in range(0, 200):  # q heartbeats; p is stopped and says nothing
        now = t * 0.5
        if t % 60 == 0:
            m.on_heartbeat(schema.Heartbeat("q", "active", 0, 0.0, 0.0), now)
        eff = m.sweep(now)
        if now <= SILENCE_FACTOR * HB:
            assert eff == [] and "p" in m.nodes and not m.is_suspect("p"), now
        elif eff:
            assert eff == [Lost("p", "silent")] and now > SILENCE_FACTOR * HB
            break
    else:
        pytest.fail("the silent node was never removed")
    # positive path of the same clock: a peer that keeps talking is never removed
    assert "q" in m.nodes


def test_our_own_stall_or_unread_answers_hold_the_suspicion() -> None:
    m = _membership()
    _linked(m, "p", "q")
    m.link_lost("p", 1.0, by_peer=True)
    m.stalled(10.0)  # we did not run for 10 s: the suspect had no chance to be heard
    assert Lost("p", "unreachable") not in m.sweep(1.0 + TIMEOUT + 5)
    m.hold_suspicions(2.0)  # 2 s of not reading (a busy receiver)
    assert Lost("p", "unreachable") not in m.sweep(1.0 + TIMEOUT + 11)
    assert m.sweep(1.0 + TIMEOUT + 12) == [Lost("p", "unreachable")]


def test_a_clean_leave_still_removes_at_once() -> None:
    m = _membership()
    _linked(m, "p")
    assert m.on_leave("p") == [Lost("p", "left")]
    assert m.link_lost("p", 1.0, by_peer=True) == []  # the close after the bye: already gone


# -- the wire and the gate ----------------------------------------------------------------


@pytest.mark.parametrize("kind", [schema.KIND_PING, schema.KIND_PING_REQ, schema.KIND_ACK])
def test_probe_messages_pass_the_gate_as_member_messages_only(kind: int) -> None:
    assert admit(MEMBER, kind, sender="a") == DELIVER
    assert admit(MEMBER, kind, sender="a", bus=True) == DELIVER
    assert admit(HANDSHAKE, kind) == REFUSE and admit(OBSERVER, kind) == REFUSE
    assert admit("closed", kind) == REFUSE


def test_probe_messages_are_range_checked() -> None:
    enc = msgspec.msgpack.encode
    assert decode_payload(schema.KIND_PING, enc(schema.Ping(5, "a"))) == schema.Ping(5, "a")
    assert decode_payload(schema.KIND_ACK, enc(schema.Ack("a", 2**62))) == schema.Ack("a", 2**62)
    for kind, bad in [(schema.KIND_PING, [0, "a"]), (schema.KIND_PING, [-1, "a"]), (schema.KIND_PING, [1, ""]),
                      (schema.KIND_PING_REQ, ["x" * 201, 1]), (schema.KIND_ACK, ["a", 2**63]),
                      (schema.KIND_ACK, ["a"])]:
        with pytest.raises(FrameError):
            decode_payload(kind, enc(bad))


def test_suspicion_timeout_is_validated() -> None:
    assert MeshConfig().suspicion_timeout == TIMEOUT and MeshConfig().heartbeat_interval == HB
    assert MeshConfig(suspicion_timeout=0.5).suspicion_timeout == 0.5
    for bad in (0, -1.0, float("inf"), float("nan"), "3", True):
        with pytest.raises(ConfigError, match="suspicion_timeout"):
            MeshConfig(suspicion_timeout=bad)


# -- one state for every view ---------------------------------------------------------------


def test_status_registry_and_views_agree_on_a_suspect() -> None:
    async def main() -> None:
        core = MeshCore(MeshConfig(enable_redis=False, enable_websocket=False))
        await core.start()
        try:
            m = core.membership
            now = 1000.0
            for p in ("p", "q"):
                core.host.apply(m.link_ready(p, {"name": p}, now))
            st = core.get_mesh_status()
            assert st["connected_nodes"] == 3 and not any(n["suspect"] for n in st["nodes"])
            core.host.apply(m.link_lost("q", now, by_peer=True))
            st = core.get_mesh_status()
            by_id = {n["node_id"]: n for n in st["nodes"]}
            assert st["connected_nodes"] == 2  # a suspect is not counted as connected
            assert by_id["q"]["status"] == "disconnected" and by_id["q"]["suspect"] is True
            assert by_id["p"]["suspect"] is False and by_id["p"]["status"] == "active"
            from spiralfast.ops.status import nodes_table

            table = {n["node_id"]: n for n in nodes_table(core.ops)}
            assert table["q"]["suspect"] is True and table["q"]["status"] == "disconnected"
            reg = core.registry
            assert {n.node_id for n in reg.get_active_nodes()} == {core.node_id, "p"}
            assert reg.get_mesh_topology()["node_statuses"] == {"active": 2, "disconnected": 1}
            assert [n.node_id for n in reg.get_nodes_by_status("disconnected")] == ["q"]
            seen: list[Any] = []
            core.register_event_handler("node_unregister", seen.append)
            core.host.apply(m.sweep(now + TIMEOUT))
            st = core.get_mesh_status()
            assert st["connected_nodes"] == 2 and "q" not in core.nodes and "q" not in reg.nodes
            await wait_until(lambda: seen, "the node_unregister event reached the handler")
            assert [e["data"] for e in seen] == [{"node_id": "q", "reason": "unreachable"}]
            assert core.counters["suspected"] == 1
        finally:
            await core.stop()

    asyncio.run(main())
