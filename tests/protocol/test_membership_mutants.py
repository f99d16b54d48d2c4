"""Signed endpoints in membership, as the mutation run (tools/mutation.sh, docs/mutation.md)
asked for: exactly what a node signs, when it signs again, which key a gossiped endpoint
must be signed with (pinned, else the one its node's own record gave, else the one the
record carries) and the refusal count.  Fake node table, no event loop."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from spiralfast.enums import NodeStatus
from spiralfast.protocol.membership import (
    RELEARN_FACTOR,
    SILENCE_FACTOR,
    Dial,
    Membership,
    SendAck,
    Suspicion,
    endpoint_claim,
)
from spiralfast.records import MeshNode
from spiralfast.wire.signing import NodeKey, self_record_bytes, verify

WALL = datetime(2026, 1, 2, 3, 4, 5)


class Table:
    """The ``NodeTable`` port, nothing more."""

    def __init__(self) -> None:
        self.nodes: dict[str, MeshNode] = {}

    def register_node(self, node: MeshNode) -> bool:
        new = node.node_id not in self.nodes
        self.nodes[node.node_id] = node
        return new

    def unregister_node(self, node_id: str) -> bool:
        return self.nodes.pop(node_id, None) is not None

    def update_node_heartbeat(self, node_id: str, data: dict[str, Any]) -> bool:
        return node_id in self.nodes


def membership() -> Membership:
    local = MeshNode("me", "me", NodeStatus.INITIALIZING, [], 0, 0.0, WALL, {})
    m = Membership(local, Table(), 10.0, 3.0, rng=random.Random(3), wall=lambda: WALL)
    m.join_local()
    return m


def signed(key: NodeKey, nid: str, ep: str, mesh: str = "mesh", carried: NodeKey | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"node_id": nid, "websocket_endpoint": ep,
                           "metadata": {"public_key": (carried or key).public.hex(), "incarnation": "i1"}}
    rec["metadata"]["endpoint_sig"] = key.sign(endpoint_claim(rec, mesh)).hex()
    return rec


def test_the_claim_covers_id_endpoint_incarnation_key_and_mesh() -> None:
    rec = {"node_id": "n", "websocket_endpoint": "ws://n", "name": "ignored",
           "metadata": {"incarnation": "i7", "public_key": "ab", "other": 1}}
    assert endpoint_claim(rec, "m") == self_record_bytes(
        {"node_id": "n", "websocket_endpoint": "ws://n", "incarnation": "i7", "public_key": "ab", "mesh": "m"})
    # metadata that is not a dict: no incarnation nor key
    assert endpoint_claim({"node_id": "n", "metadata": "junk"}, "m") == self_record_bytes(
        {"node_id": "n", "websocket_endpoint": None, "incarnation": None, "public_key": None, "mesh": "m"})


def test_sign_local_signs_the_claim_once_per_change() -> None:
    m = membership()
    key = NodeKey.generate()
    calls: list[bytes] = []

    def sign(data: bytes) -> bytes:
        calls.append(data)
        return key.sign(data)

    m.local.metadata["public_key"] = key.public.hex()
    m.local.metadata["incarnation"] = "i1"
    m.local.websocket_endpoint = "ws://me"
    m.enable_signed_endpoints(sign, "mesh")

    def sig_ok() -> bool:
        claim = endpoint_claim(m.local.to_dict(), "mesh")
        return verify(key.public, claim, bytes.fromhex(m.local.metadata["endpoint_sig"]))

    assert len(calls) == 1 and sig_ok()
    m.sign_local()
    assert len(calls) == 1  # nothing changed: not signed again
    m.local.metadata["incarnation"] = "i2"
    m.sign_local()
    assert len(calls) == 2 and sig_ok()
    m.local.metadata["public_key"] = NodeKey.generate().public.hex()
    m.sign_local()
    assert len(calls) == 3
    m.local.websocket_endpoint = None
    m.sign_local()
    assert "endpoint_sig" not in m.local.metadata and len(calls) == 3


def test_every_refusal_is_counted_once() -> None:
    m = membership()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    assert not m.endpoint_ok({"node_id": 5, "metadata": {}})
    assert m.endpoints_refused == 1
    assert not m.endpoint_ok({"node_id": "q", "metadata": {"public_key": "zz", "endpoint_sig": "00"}})
    assert m.endpoints_refused == 2
    assert not m.endpoint_ok(signed(NodeKey.generate(), "q", "ws://q", carried=NodeKey.generate()))
    assert m.endpoints_refused == 3
    assert m.endpoint_ok(signed(NodeKey.generate(), "q", "ws://q"))
    assert m.endpoints_refused == 3


def test_unsigned_mode_accepts_anything() -> None:
    m = membership()
    assert m.endpoint_ok({"node_id": 5})
    assert m.endpoints_refused == 0


def test_the_key_a_node_s_own_record_gave_wins_over_the_one_carried() -> None:
    m = membership()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    known, other = NodeKey.generate(), NodeKey.generate()
    m.nodes["q"] = MeshNode("q", "q", NodeStatus.ACTIVE, [], 0, 0.0, WALL, {"public_key": known.public.hex()})
    assert not m.endpoint_ok(signed(other, "q", "ws://q"))  # self-consistent, but not q's known key
    assert m.endpoint_ok(signed(known, "q", "ws://q"))


def test_starting_values() -> None:
    rng = random.Random(1)
    local = MeshNode("me", "me", NodeStatus.INITIALIZING, [], 0, 0.0, WALL, {})
    m = Membership(local, Table(), 10.0, rng=rng)
    assert m.rng is rng and m.now == 0.0 and m.endpoints_refused == 0 and m.signer is None
    m2 = Membership(MeshNode("me", "me", NodeStatus.INITIALIZING, [], 0, 0.0, WALL, {}), Table(), 10.0)
    assert isinstance(m2.rng, random.Random)  # none given: its own


# -- seen, heard, heartbeats, gossip ------------------------------------------------------


def test_second_hand_record_of_a_known_node_refreshes_it_but_keeps_its_fields() -> None:
    m = membership()
    m.seen({"node_id": "p", "name": "p-name"}, 1.0)
    node = m.nodes["p"]
    node.status = NodeStatus.DISCONNECTED
    assert m.seen({"node_id": "p", "name": "other", "websocket_endpoint": "ws://p"}, 2.0) == []
    assert node.name == "p-name"  # not authoritative: the name stays
    assert node.websocket_endpoint == "ws://p" and node.status is NodeStatus.ACTIVE
    assert node.last_heartbeat == WALL and m.last_seen["p"] == 2.0 and m.now == 2.0
    m.seen({"node_id": "p", "websocket_endpoint": 5}, 3.0)  # not a string: ignored
    assert node.websocket_endpoint == "ws://p"


def test_a_malformed_record_still_joins_under_a_default_name() -> None:
    m = membership()
    eff = m.seen({"node_id": "abcdefghijkl", "status": "no-such-status"}, 1.0)
    assert [type(e).__name__ for e in eff] == ["Joined"]
    assert m.nodes["abcdefghijkl"].name == "codex_node_abcdefgh"


def test_a_heartbeat_introduces_its_node() -> None:
    from spiralfast.wire import schema

    m = membership()
    m.on_heartbeat(schema.Heartbeat("abcdefghijkl", "dormant", 2, 0.5, 0.0), 1.0)
    node = m.nodes["abcdefghijkl"]
    assert node.name == "codex_node_abcdefgh" and node.status is NodeStatus.DORMANT


def test_heard_revives_and_moves_last_seen_forward_only() -> None:
    from spiralfast.wire import schema

    m = membership()
    m.seen({"node_id": "p"}, 1.0)
    m.nodes["p"].status = NodeStatus.DISCONNECTED
    m.nodes["p"].last_heartbeat = datetime(2000, 1, 1)
    m.on_ping(schema.Ping(7, "p"), "p", 5.0)
    assert m.last_seen["p"] == 5.0 and m.nodes["p"].status is NodeStatus.ACTIVE
    assert m.nodes["p"].last_heartbeat == WALL
    m.on_ping(schema.Ping(8, "p"), "p", 4.0)  # an older time: last_seen stays
    assert m.last_seen["p"] == 5.0
    del m.last_seen["p"]
    m.on_ping(schema.Ping(9, "p"), "p", 6.0)  # known, but never timed: stays untimed
    assert "p" not in m.last_seen
    assert m.on_ping(schema.Ping(1, "ghost"), "ghost", 7.0) == [SendAck("ghost", "me", 1)]  # only the answer
    assert "ghost" not in m.nodes


def test_gossip_skips_junk_and_self_and_goes_on() -> None:
    from spiralfast.wire import schema

    m = membership()
    g = schema.Gossip(["junk", {"node_id": "me", "websocket_endpoint": "ws://me"},
                       {"node_id": "", "websocket_endpoint": "ws://nobody"},
                       {"node_id": "q", "websocket_endpoint": "ws://q"}])
    eff = m.on_gossip(g, "p", 1.0, learn=True, dial=True)
    assert [e for e in eff if isinstance(e, Dial)] == [Dial("ws://q", "q")]
    assert "q" in m.nodes


def test_gossip_sender_s_own_record_is_authoritative_and_keeps_earlier_effects() -> None:
    from spiralfast.wire import schema

    m = membership()
    m.seen({"node_id": "p", "name": "old"}, 1.0)
    g = schema.Gossip([{"node_id": "q"}, {"node_id": "p", "name": "new"}])
    eff = m.on_gossip(g, "p", 2.0, learn=True, dial=False)
    assert [type(e).__name__ for e in eff] == ["Joined"]  # q joined; p's refresh has no effect
    assert m.nodes["p"].name == "new" and m.last_seen["p"] == 2.0


def test_learn_updates_a_known_node_s_endpoint() -> None:
    m = membership()
    m.seen({"node_id": "p"}, 1.0)
    assert m.learn({"node_id": "p", "websocket_endpoint": "ws://p2"}, 2.0) == []
    assert m.nodes["p"].websocket_endpoint == "ws://p2"


def test_a_known_key_that_is_not_hex_falls_back_to_the_carried_one() -> None:
    m = membership()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    m.nodes["q"] = MeshNode("q", "q", NodeStatus.ACTIVE, [], 0, 0.0, WALL, {"public_key": "not hex"})
    assert m.endpoint_ok(signed(NodeKey.generate(), "q", "ws://q"))
    m.nodes["q"].metadata["public_key"] = 12  # not a string: ignored too
    assert m.endpoint_ok(signed(NodeKey.generate(), "q", "ws://q"))


# -- suspicion, probes, removal, the sweep -------------------------------------------------

HB = 10.0  # membership()'s heartbeat interval; its suspicion timeout is 3 s


def with_peers(*ids: str, linked: bool = False) -> Membership:
    m = membership()
    for nid in ids:
        m.seen({"node_id": nid}, 0.0)
        if linked:
            m.linked.add(nid)
    return m


def test_hearing_from_a_suspect_refutes_the_suspicion() -> None:
    from spiralfast.protocol.membership import Refuted

    m = with_peers("p")
    m.suspect("p", 1.0)
    assert m.seen({"node_id": "p"}, 2.0) == [Refuted("p", "heard")]
    assert not m.is_suspect("p")


def test_heartbeat_and_local_record_carry_the_local_node() -> None:
    m = membership()
    m.local.recursion_depth, m.local.entropy_level = 3, 0.25
    m.local.last_heartbeat = datetime(2000, 1, 1)
    hb = m.heartbeat(123.0)
    assert (hb.node_id, hb.status, hb.recursion_depth, hb.entropy_level, hb.sent_at) == (
        "me", m.local.status.value, 3, 0.25, 123.0)
    assert m.local.last_heartbeat == WALL
    m.local.last_heartbeat = datetime(2000, 1, 1)
    assert m.local_record()["node_id"] == "me" and m.local.last_heartbeat == WALL


def test_a_link_we_closed_suspects_no_one() -> None:
    m = with_peers("p", linked=True)
    assert m.link_lost("p", 5.0) == []
    assert not m.is_suspect("p") and m.nodes["p"].status is NodeStatus.DISCONNECTED


def test_a_link_closed_by_the_peer_suspects_it_and_times_the_probes() -> None:
    from spiralfast.protocol.membership import PROBE_ROUNDS, Suspected

    m = with_peers("p", "h", linked=True)
    eff = m.link_lost("p", 5.0, by_peer=True)
    assert eff[0] == Suspected("p") and m.now == 5.0
    s = m.suspects["p"]
    assert (s.since, s.deadline) == (5.0, 8.0)
    assert s.next_probe == 5.0 + 3.0 / PROBE_ROUNDS
    assert s.nonce >= 1 and s.nonce < 2**62 + 1


def test_suspect_only_a_known_unlinked_other_node_once() -> None:
    m = with_peers("p", "q", linked=True)
    assert m.suspect("p", 1.0) == []  # linked: not suspected
    assert m.suspect("me", 1.0) == []
    m.linked.discard("p")
    assert m.suspect("p", 1.0) != [] and m.suspect("p", 2.0) == []


def test_suspicion_starts_now() -> None:
    s = Suspicion(4.0, 9.0, 7)
    assert (s.since, s.deadline, s.nonce, s.next_probe) == (4.0, 9.0, 7, 4.0)


def test_probe_helpers_are_linked_known_non_suspects() -> None:
    from spiralfast.protocol.membership import SendPingReq

    m = with_peers("p", "h", "s", linked=True)
    m.linked.add("ghost")  # linked but not in the table
    m.suspects["s"] = Suspicion(0.0, 99.0, 1)
    m.linked.discard("p")
    eff = m.suspect("p", 1.0)
    assert sorted(e.helper for e in eff if isinstance(e, SendPingReq)) == ["h"]


def test_an_ack_from_the_node_itself_and_for_our_probe() -> None:
    from spiralfast.protocol.membership import Refuted
    from spiralfast.wire import schema

    m = with_peers("p")
    m.suspect("p", 1.0)
    nonce = m.suspects["p"].nonce
    m.forwards[nonce] = ("asker", 42, "p", 99.0)
    eff = m.on_ack(schema.Ack("p", nonce), "p", 2.0)
    assert eff == [Refuted("p", "heard"), SendAck("asker", "p", 42)]
    assert m.last_seen["p"] == 2.0


def test_an_ack_through_a_relay_keeps_the_forward() -> None:
    from spiralfast.protocol.membership import Refuted
    from spiralfast.wire import schema

    m = with_peers("p")
    m.suspect("p", 1.0)
    nonce = m.suspects["p"].nonce
    m.forwards[nonce] = ("asker", 42, "p", 99.0)
    eff = m.on_ack(schema.Ack("p", nonce), "relay", 2.0)
    assert eff == [SendAck("asker", "p", 42), Refuted("p", "answered through relay")]
    assert m.last_seen["p"] == 0.0  # not heard from p itself


def test_forwards_expire_at_their_deadline() -> None:
    m = membership()
    m.forwards[1] = ("a", 1, "p", 5.0)
    m.sweep(5.0)
    assert m.forwards == {}


def test_remove_forgets_the_node() -> None:
    m = with_peers("p", "q", linked=True)
    m.suspects["p"] = Suspicion(0.0, 99.0, 1)
    m.now = 7.0
    assert [(e.node_id, e.reason) for e in m.remove("p", "left")] == [("p", "left")]  # type: ignore[attr-defined]
    assert "p" not in m.last_seen and "p" not in m.suspects and "p" not in m.linked and m.removed == {"p": 7.0}
    assert "q" in m.last_seen and "q" in m.linked
    assert m.remove("nobody", "left") == [] and "nobody" not in m.removed


def test_alive_moves_last_seen_forward_only_for_timed_nodes() -> None:
    m = with_peers("p")
    m.nodes["p"].last_heartbeat = datetime(2000, 1, 1)
    m.alive("p", 5.0)
    assert m.last_seen["p"] == 5.0 and m.nodes["p"].last_heartbeat == WALL
    m.nodes["p"].last_heartbeat = datetime(2000, 1, 1)
    m.alive("p", 5.0)  # not later: nothing changes
    assert m.nodes["p"].last_heartbeat == datetime(2000, 1, 1)


def test_stalled_moves_every_clock_on() -> None:
    m = with_peers("p", "q")
    m.last_seen["q"] = 2.0
    m.suspect("p", 1.0)
    m.stalled(10.0)
    assert m.last_seen == {"p": 10.0, "q": 12.0} and m.suspects["p"].deadline == 14.0


def test_sweep_timings() -> None:
    m = with_peers("p", "q")
    m.removed["gone"] = 0.0
    m.sweep(RELEARN_FACTOR * HB - 0.5)  # both silent beyond the limit: both lost
    assert "gone" in m.removed
    m.sweep(RELEARN_FACTOR * HB)  # exactly the relearn time: forgotten
    assert "gone" not in m.removed and set(m.removed) == {"p", "q"}  # removed just now: remembered


def test_sweep_reports_every_loss() -> None:
    m = with_peers("p", "q")
    eff = m.sweep(SILENCE_FACTOR * HB + 1)
    assert sorted((e.node_id, e.reason) for e in eff) == [("p", "silent"), ("q", "silent")]  # type: ignore[attr-defined]


def test_sweep_removes_every_unreachable_suspect_and_probes_on_time() -> None:
    from spiralfast.protocol.membership import Lost, SendPing

    m = with_peers("p", "q", "r")
    m.suspect("p", 1.0)
    m.suspect("q", 1.0)
    assert sorted((e.node_id, e.reason) for e in m.sweep(4.0) if isinstance(e, Lost)) == [
        ("p", "unreachable"), ("q", "unreachable")]
    m.suspect("r", 5.0)
    nxt = m.suspects["r"].next_probe
    assert [e.node_id for e in m.sweep(nxt) if isinstance(e, SendPing)] == ["r"]  # exactly on time


def test_sweep_starts_the_clock_of_a_node_added_by_hand() -> None:
    m = membership()
    m.nodes["x"] = MeshNode("x", "x", NodeStatus.ACTIVE, [], 0, 0.0, WALL, {})
    assert m.sweep(50.0) == [] and m.last_seen["x"] == 50.0


def test_learn_boundaries() -> None:
    m = with_peers("p")
    m.now = 10.0
    m.remove("p", "left")
    assert m.learn({"node_id": "p"}, 10.0 + RELEARN_FACTOR * HB) != []  # exactly the relearn time: back
    assert m.last_seen["p"] == 10.0 + RELEARN_FACTOR * HB
    m.learn({"node_id": "p", "websocket_endpoint": 7}, 99.0)  # not a string: ignored
    assert m.nodes["p"].websocket_endpoint is None


def test_learn_refuses_an_unsigned_endpoint_but_keeps_the_node() -> None:
    m = membership()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    m.learn({"node_id": "n", "websocket_endpoint": "ws://n", "metadata": {}}, 1.0)
    assert "n" in m.nodes and m.nodes["n"].websocket_endpoint is None and m.endpoints_refused == 1
    m.learn({"node_id": "o", "metadata": {}}, 1.0)  # no endpoint: not checked, not counted
    assert "o" in m.nodes and m.endpoints_refused == 1


def test_a_refusal_after_another_is_counted_too() -> None:
    m = membership()
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    assert not m.endpoint_ok(signed(NodeKey.generate(), "q", "ws://q", carried=NodeKey.generate()))
    assert not m.endpoint_ok({"node_id": 5, "metadata": {}})
    assert m.endpoints_refused == 2


def test_signed_mode_checks_second_hand_endpoints_of_known_nodes() -> None:
    m = with_peers("p")
    m.enable_signed_endpoints(NodeKey.generate().sign, "mesh")
    key = NodeKey.generate()
    m.seen(signed(key, "p", "ws://p1"), 1.0)
    assert m.nodes["p"].websocket_endpoint == "ws://p1"
    m.learn(signed(key, "p", "ws://p2"), 2.0)
    assert m.nodes["p"].websocket_endpoint == "ws://p2"


def test_a_capability_change_updates_the_registry() -> None:
    m = with_peers("p")
    calls: list[str] = []
    register = m.registry.register_node

    def counting(node: MeshNode) -> bool:
        calls.append(node.node_id)
        return register(node)

    m.registry.register_node = counting  # type: ignore[method-assign]
    m.link_ready("p", {"capabilities": ["x"]}, 1.0)
    assert calls == ["p"] and m.nodes["p"].capabilities == ["x"]
    m.link_ready("p", {"capabilities": ["x"]}, 2.0)
    assert calls == ["p"]  # unchanged: not registered again


def test_suspect_shows_the_node_disconnected() -> None:
    m = with_peers("p")
    m.nodes["p"].status = NodeStatus.ACTIVE
    m.suspect("p", 1.0)
    assert m.nodes["p"].status is NodeStatus.DISCONNECTED


def test_probe_nonces_come_from_the_given_rng() -> None:
    m = with_peers("p")
    m.rng = random.Random(5)
    m.suspect("p", 1.0)
    assert m.suspects["p"].nonce == random.Random(5).getrandbits(62) + 1


def test_a_relayed_ping_does_not_prove_the_prober_alive() -> None:
    from spiralfast.wire import schema

    m = with_peers("p")
    assert m.on_ping(schema.Ping(3, "p"), "relay", 9.0) == [SendAck("p", "me", 3)]
    assert m.last_seen["p"] == 0.0


def test_sweep_keeps_a_loss_and_a_probe_of_the_same_round() -> None:
    from spiralfast.protocol.membership import Lost, SendPing

    m = with_peers("p", "q")
    m.suspect("p", 1.0)
    m.suspect("q", 2.0)
    eff = m.sweep(4.0)  # p's time is over (1 + 3); q's next probe is due (2 + 1)
    assert Lost("p", "unreachable") in eff and any(isinstance(e, SendPing) and e.node_id == "q" for e in eff)
