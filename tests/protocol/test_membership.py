"""Membership (``spiralfast.protocol.membership``) with a fake clock, a fake node table,
a seeded rng and no event loop: joins, silence, leaves, gossip, signed endpoints and
suspicion, asserted on the typed effects it returns."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from spiralfast.enums import NodeStatus
from spiralfast.protocol.membership import (
    MAX_FORWARDS,
    MAX_GOSSIP_RECORDS,
    RELEARN_FACTOR,
    SILENCE_FACTOR,
    Dial,
    Joined,
    Lost,
    Membership,
    NodeTable,
    Refuted,
    SendAck,
    SendPing,
    SendPingReq,
    Suspected,
    endpoint_claim,
)
from spiralfast.records import MeshNode
from spiralfast.wire import schema
from spiralfast.wire.signing import NodeKey

HB = 10.0
WALL = datetime(2026, 1, 2, 3, 4, 5)


class Table:
    """A node table with nothing but what membership needs (the ``NodeTable`` port)."""

    def __init__(self) -> None:
        self.nodes: dict[str, MeshNode] = {}
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []

    def register_node(self, node: MeshNode) -> bool:
        new = node.node_id not in self.nodes
        self.nodes[node.node_id] = node
        return new

    def unregister_node(self, node_id: str) -> bool:
        return self.nodes.pop(node_id, None) is not None

    def update_node_heartbeat(self, node_id: str, data: dict[str, Any]) -> bool:
        self.heartbeats.append((node_id, data))
        return node_id in self.nodes


def _m(me: str = "me", timeout: float = 3.0) -> tuple[Membership, Table]:
    table: NodeTable = Table()
    local = MeshNode(me, me, NodeStatus.INITIALIZING, [], 0, 0.0, WALL, {})
    m = Membership(local, table, HB, timeout, rng=random.Random(3), wall=lambda: WALL)
    m.join_local()
    assert isinstance(table, Table)
    return m, table


def _hb(nid: str) -> schema.Heartbeat:
    return schema.Heartbeat(nid, "active", 2, 0.5, 0.0)


# -- joins, silence, leaves --------------------------------------------------------------


def test_a_new_link_joins_its_node_with_the_record_it_proved() -> None:
    m, table = _m()
    eff = m.link_ready("p", {"name": "peer", "capabilities": ["gpu"], "node_id": "spoofed"}, 1.0)
    assert len(eff) == 1 and isinstance(eff[0], Joined) and eff[0].node.node_id == "p"  # the link's id wins
    assert table.nodes["p"].capabilities == ["gpu"] and table.nodes["p"].last_heartbeat == WALL
    assert m.local.status is NodeStatus.ACTIVE and "me" in table.nodes
    # the same node again: refreshed, no second join; its own record's fields replace ours
    assert m.link_ready("p", {"name": "renamed", "capabilities": ["cpu"]}, 2.0) == []
    assert table.nodes["p"].name == "renamed" and table.nodes["p"].capabilities == ["cpu"]


def test_records_about_nobody_or_us_are_ignored() -> None:
    m, table = _m()
    assert m.seen({"name": "x"}, 1.0) == [] and m.seen({"node_id": ""}, 1.0) == []
    assert m.seen({"node_id": "me"}, 1.0) == [] and m.seen({"node_id": 7}, 1.0) == []
    assert set(table.nodes) == {"me"}


def test_a_broken_record_still_joins_its_node_under_a_default_name() -> None:
    m, table = _m()
    eff = m.seen({"node_id": "p", "status": "no-such-status"}, 1.0)
    assert isinstance(eff[0], Joined) and table.nodes["p"].name == "codex_node_p"


def test_heartbeats_join_refresh_and_update_the_table() -> None:
    m, table = _m()
    eff = m.on_heartbeat(_hb("p"), 5.0)
    assert isinstance(eff[0], Joined) and table.heartbeats[-1] == (
        "p", {"status": "active", "recursion_depth": 2, "entropy_level": 0.5})
    assert m.on_heartbeat(_hb("p"), 6.0) == [] and m.last_seen["p"] == 6.0


def test_a_silent_node_is_lost_after_the_silence_limit_and_not_relearnt_second_hand() -> None:
    m, table = _m()
    m.on_heartbeat(_hb("p"), 100.0)
    limit = SILENCE_FACTOR * HB
    assert m.sweep(100.0 + limit) == [] and "p" in table.nodes  # not more than the limit yet
    assert m.sweep(100.0 + limit + 0.1) == [Lost("p", "silent")] and "p" not in table.nodes
    gossip = schema.Gossip([{"node_id": "p", "name": "p"}])
    assert m.on_gossip(gossip, "q", 101.0 + limit, learn=True, dial=False) == []  # a survivor's stale list
    assert "p" not in table.nodes
    # from itself, at once
    assert isinstance(m.on_heartbeat(_hb("p"), 102.0 + limit)[0], Joined)


def test_a_removed_node_may_be_learnt_again_once_the_relearn_window_passed() -> None:
    m, table = _m()
    m.on_heartbeat(_hb("p"), 0.0)
    m.now = 50.0
    assert m.on_leave("p") == [Lost("p", "left")] and m.on_leave("p") == []
    gossip = schema.Gossip([{"node_id": "p"}])
    assert m.on_gossip(gossip, "q", 50.0 + RELEARN_FACTOR * HB - 1, learn=True, dial=False) == []
    m.sweep(50.0 + RELEARN_FACTOR * HB)  # forgets the removal
    eff = m.on_gossip(gossip, "q", 50.0 + RELEARN_FACTOR * HB + 1, learn=True, dial=False)
    assert [type(e) for e in eff] == [Joined]


def test_second_hand_gossip_never_keeps_a_node_alive() -> None:
    m, _ = _m()
    m.on_heartbeat(_hb("p"), 0.0)
    for t in range(1, 40):
        m.on_gossip(schema.Gossip([{"node_id": "p"}]), "q", float(t), learn=True, dial=False)
    assert m.last_seen["p"] == 0.0
    assert m.sweep(SILENCE_FACTOR * HB + 1) == [Lost("p", "silent")]


def test_our_own_stall_moves_every_peer_s_clock_on() -> None:
    m, _ = _m()
    m.on_heartbeat(_hb("p"), 0.0)
    m.stalled(100.0)  # we did not run for 100 s
    assert m.sweep(SILENCE_FACTOR * HB + 50.0) == []
    m.alive("p", 200.0)  # frames from it keep arriving
    assert m.last_seen["p"] == 200.0
    m.alive("ghost", 300.0)  # unknown: nothing
    assert "ghost" not in m.last_seen


def test_leave_local_forgets_every_other_node() -> None:
    m, table = _m()
    m.on_heartbeat(_hb("p"), 0.0)
    m.link_ready("q", None, 0.0)
    assert sorted(m.leave_local()) == ["p", "q"]
    assert set(table.nodes) == {"me"} and not m.linked and not m.last_seen
    assert m.local.status is NodeStatus.DISCONNECTED


def test_the_heartbeat_carries_the_local_node_s_figures_and_the_wall_time_given() -> None:
    m, _ = _m()
    hb = m.heartbeat(1234.5)
    assert (hb.node_id, hb.status, hb.sent_at) == ("me", "active", 1234.5)


# -- gossip --------------------------------------------------------------------------------


def test_gossip_refreshes_its_sender_and_dials_endpoints_not_linked() -> None:
    m, table = _m()
    m.link_ready("p", None, 0.0)
    g = schema.Gossip([{"node_id": "p", "websocket_endpoint": "ws://p"},
                       {"node_id": "q", "websocket_endpoint": "ws://q"}, "junk", {"node_id": "me"}])
    eff = m.on_gossip(g, "p", 1.0, learn=False, dial=True)
    assert eff == [Dial("ws://q", "q")] and "q" not in table.nodes  # linked p is not dialled again
    eff = m.on_gossip(g, "p", 1.0, learn=True, dial=False)
    assert [type(e) for e in eff] == [Joined] and "q" in table.nodes


def test_gossip_is_bounded() -> None:
    m, table = _m()
    g = schema.Gossip([{"node_id": f"n{i}"} for i in range(MAX_GOSSIP_RECORDS + 50)])
    eff = m.on_gossip(g, "x", 1.0, learn=True, dial=False)
    assert len(eff) == MAX_GOSSIP_RECORDS and len(table.nodes) == MAX_GOSSIP_RECORDS + 1


def _signed(key: NodeKey, nid: str, ep: str, mesh: str = "mesh") -> dict[str, Any]:
    rec: dict[str, Any] = {"node_id": nid, "websocket_endpoint": ep,
                           "metadata": {"public_key": key.public.hex(), "incarnation": "i1"}}
    rec["metadata"]["endpoint_sig"] = key.sign(endpoint_claim(rec, mesh)).hex()
    return rec


def test_signed_endpoints_only_the_named_node_s_signature_makes_an_endpoint_dialable() -> None:
    m, table = _m()
    mine, kq = NodeKey.generate(), NodeKey.generate()
    m.enable_signed_endpoints(mine.sign, "mesh")
    m.local.websocket_endpoint = "ws://me"
    m.sign_local()
    assert "endpoint_sig" in m.local.metadata
    good = _signed(kq, "q", "ws://q")
    assert m.on_gossip(schema.Gossip([good]), "p", 1.0, learn=True, dial=True)[-1] == Dial("ws://q", "q")
    forged = _signed(NodeKey.generate(), "r", "ws://evil")
    forged["metadata"]["public_key"] = kq.public.hex()  # names q's key, signed by another
    eff = m.on_gossip(schema.Gossip([forged]), "p", 1.0, learn=True, dial=True)
    assert not any(isinstance(e, Dial) for e in eff)
    assert table.nodes["r"].websocket_endpoint is None and m.endpoints_refused >= 1
    other_mesh = _signed(kq, "s", "ws://s", mesh="elsewhere")  # replayed from another mesh
    assert not any(isinstance(e, Dial) for e in m.on_gossip(schema.Gossip([other_mesh]), "p", 1.0,
                                                             learn=True, dial=True))


def test_a_pinned_key_wins_over_the_key_a_record_carries() -> None:
    m, _ = _m()
    pinned, other = NodeKey.generate(), NodeKey.generate()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh", {"q": pinned.public}.get)
    assert not m.endpoint_ok(_signed(other, "q", "ws://q"))  # self-consistent, but not q's pinned key
    assert m.endpoint_ok(_signed(pinned, "q", "ws://q"))
    assert not m.endpoint_ok({"node_id": "q", "metadata": {"public_key": "zz", "endpoint_sig": "00"}})
    assert not m.endpoint_ok({"node_id": "q"})


# -- suspicion -----------------------------------------------------------------------------


def test_only_a_link_closed_by_the_peer_suspects_it() -> None:
    m, table = _m()
    m.link_ready("p", {"websocket_endpoint": "ws://p"}, 0.0)
    assert m.link_lost("p", 1.0, by_peer=False) == [] and not m.is_suspect("p")
    assert table.nodes["p"].status is NodeStatus.DISCONNECTED
    m.link_ready("p", None, 2.0)
    eff = m.link_lost("p", 3.0, by_peer=True)
    nonce = m.suspects["p"].nonce
    assert eff == [Suspected("p"), SendPing("p", nonce, False), Dial("ws://p", "p")]
    assert m.link_lost("unknown", 3.0, by_peer=True) == []


def test_helpers_are_asked_and_an_answer_through_one_refutes() -> None:
    m, _ = _m()
    for p in ("p", "q", "r"):
        m.link_ready(p, None, 0.0)
    eff = m.link_lost("p", 1.0, by_peer=True)
    nonce = m.suspects["p"].nonce
    reqs = [e for e in eff if isinstance(e, SendPingReq)]
    assert {e.helper for e in reqs} == {"q", "r"} and all((e.target, e.nonce) == ("p", nonce) for e in reqs)
    assert m.on_ack(schema.Ack("p", nonce + 1), "q", 1.1) == []  # another probe's nonce
    assert m.on_ack(schema.Ack("p", nonce), "q", 1.2) == [Refuted("p", "answered through q")]
    assert not m.is_suspect("p")


def test_a_suspect_that_never_answers_is_removed_when_its_time_is_up() -> None:
    m, table = _m(timeout=3.0)
    m.link_ready("p", None, 0.0)
    m.link_lost("p", 10.0, by_peer=True)
    m.hold_suspicions(1.0)  # we could not hear answers for 1 s
    assert Lost("p", "unreachable") not in m.sweep(13.5)
    assert m.sweep(14.0) == [Lost("p", "unreachable")] and "p" not in table.nodes


def test_probing_for_others_is_answered_forwarded_and_bounded() -> None:
    m, _ = _m()
    m.link_ready("t", None, 0.0)
    assert m.on_ping_req(schema.PingReq("me", 5), "asker", 1.0) == [SendAck("asker", "me", 5)]
    assert m.on_ping_req(schema.PingReq("t", 5), None, 1.0) == []  # unauthenticated
    assert m.on_ping_req(schema.PingReq("nobody", 5), "asker", 1.0) == []  # unknown target
    eff = m.on_ping_req(schema.PingReq("t", 6), "asker", 1.0)
    assert len(eff) == 1 and isinstance(eff[0], SendPing) and eff[0].any_route and eff[0].node_id == "t"
    # the target's answer goes back to the asker, with the asker's nonce
    assert m.on_ack(schema.Ack("t", eff[0].nonce), "t", 1.1) == [SendAck("asker", "t", 6)]
    for i in range(MAX_FORWARDS + 5):
        m.on_ping_req(schema.PingReq("t", i), "asker", 2.0)
    assert len(m.forwards) == MAX_FORWARDS
    m.sweep(2.0 + 10.0)  # expired with the suspicion timeout
    assert not m.forwards


def test_a_ping_is_answered_and_proves_its_prober_alive() -> None:
    m, _ = _m()
    m.link_ready("p", None, 0.0)
    m.link_lost("p", 1.0, by_peer=True)
    assert m.on_ping(schema.Ping(42, "p"), "p", 1.5) == [Refuted("p", "heard"), SendAck("p", "me", 42)]
    assert m.on_ping(schema.Ping(43, "x"), "relay", 1.6) == [SendAck("x", "me", 43)]
    assert m.on_ping(schema.Ping(44, "me"), "relay", 1.6) == []  # about us, from us: nothing
