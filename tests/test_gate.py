"""The gate's rule table (DESIGN-NOTES.md), row by row, and the sans-I/O handshake and
membership driven in memory with a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

from typing import Any

import pytest

from spiralfast import schema
from spiralfast.codec import FrameWriter
from spiralfast.errors import AuthError, HandshakeError
from spiralfast.node.dispatch import Dispatcher
from spiralfast.node.gate import (
    ANSWER,
    DELIVER,
    HANDSHAKE,
    MEMBER,
    OBSERVER,
    REFUSE,
    RELAY,
    Gate,
    Session,
    admit,
)
from spiralfast.node.registry import MeshRegistry
from spiralfast.protocol.handshake import Handshake
from spiralfast.protocol.membership import Dial, Joined, Lost, Membership
from spiralfast.records import MeshNode, NodeStatus

K = schema
ALL_KINDS = sorted(schema.KIND_TYPES)
MEMBER_KINDS = [K.KIND_EVENT, K.KIND_BUS_EVENT, K.KIND_GOSSIP, K.KIND_STATE_DELTA, K.KIND_STATE_DIGEST,
                K.KIND_STATE_REQUEST, K.KIND_REPAIR_REQUEST, K.KIND_REPAIR_GONE]

# -- the table, row by row ------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_row1_before_authentication_only_the_handshake_passes(kind: int) -> None:
    want = ANSWER if kind in (K.KIND_HELLO, K.KIND_AUTH, K.KIND_REJECT) else REFUSE
    assert admit(HANDSHAKE, kind) == want
    assert admit(HANDSHAKE, kind, targeted_elsewhere=True) == REFUSE  # never relayed


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_row2_observers_may_only_query(kind: int) -> None:
    assert admit(OBSERVER, kind) == (ANSWER if kind == K.KIND_QUERY else REFUSE)
    assert admit(OBSERVER, kind, targeted_elsewhere=True) == REFUSE


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_row3_members_relay_over_links_never_over_a_bus(kind: int) -> None:
    assert admit(MEMBER, kind, targeted_elsewhere=True) == RELAY
    assert admit(MEMBER, kind, targeted_elsewhere=True, bus=True) == REFUSE


@pytest.mark.parametrize("kind", MEMBER_KINDS)
def test_row4_member_messages_are_delivered(kind: int) -> None:
    assert admit(MEMBER, kind, sender="a") == DELIVER
    assert admit(MEMBER, kind, sender="a", bus=True) == DELIVER


@pytest.mark.parametrize("kind", [K.KIND_HEARTBEAT, K.KIND_LEAVE])
def test_row5_heartbeats_and_leaves_only_speak_for_their_sender(kind: int) -> None:
    assert admit(MEMBER, kind, about="a", sender="a") == DELIVER
    assert admit(MEMBER, kind, about="victim", sender="a") == REFUSE  # a forged departure
    assert admit(MEMBER, kind, about="a", sender=None) == REFUSE


def test_row6_queries_from_members_are_answered_except_over_a_bus() -> None:
    assert admit(MEMBER, K.KIND_QUERY) == ANSWER
    assert admit(MEMBER, K.KIND_QUERY, bus=True) == REFUSE


@pytest.mark.parametrize("kind", [K.KIND_HELLO, K.KIND_AUTH, K.KIND_REJECT, K.KIND_REPLY])
def test_row7_handshake_and_replies_after_authentication_are_refused(kind: int) -> None:
    assert admit(MEMBER, kind, sender="a") == REFUSE


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_row8_closed_links_get_nothing(kind: int) -> None:
    assert admit("closed", kind) == REFUSE


# -- the gate with a fake link ------------------------------------------------------------


class FakeLink:
    transport = "fake"
    shared_bus = False
    outbound = False
    name = "fake"

    def __init__(self, state: str = HANDSHAKE) -> None:
        self.session = Session(None, 0.0, state)
        self.closed: str | None = None
        self.peer_id: str | None = None

    def close(self, reason: str = "") -> None:
        self.closed = reason

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _gate() -> tuple[Gate, list[Any]]:
    calls: list[Any] = []
    d = Dispatcher()
    g = Gate("me", d, on_handshake=lambda *a: calls.append(("hs", a[1])),
             on_message=lambda *a: calls.append(("msg", a[2])), on_query=lambda *a: calls.append(("q",)),
             relay=lambda *a: calls.append(("relay", a[0])) or True)
    d.handlers["x"] = [lambda env: calls.append(("handler", env["type"]))]
    return g, calls


def _frame(*msgs: tuple[int, bytes, Any]) -> bytes:
    w = FrameWriter()
    for kind, target, obj in msgs:
        w.add(kind, 0, target, getattr(obj, "event_id", "").encode(), obj)
    return w.finish()


def test_gate_refuses_and_closes_a_guest_sending_an_event_relay_or_leave() -> None:
    g, calls = _gate()
    for msg in [(K.KIND_EVENT, b"", schema.Event("e1", "x", "evil", 1.0, {})),
                (K.KIND_EVENT, b"other", schema.Event("e2", "x", "evil", 1.0, {})),
                (K.KIND_LEAVE, b"", schema.Leave("victim")),
                (K.KIND_HEARTBEAT, b"other", schema.Heartbeat("ghost", "active", 0, 0.0, 1.0))]:
        link = FakeLink()
        g.on_frame(link, _frame(msg))
        assert link.closed and calls == []
    assert g.stats["preauth_refused"] >= 4


def test_gate_closes_a_guest_over_the_preauth_size_or_frame_budget() -> None:
    g, calls = _gate()
    link = FakeLink()
    g.on_frame(link, b"\x01" * (64 * 1024 + 1))
    assert link.closed and "before the handshake" in link.closed
    link = FakeLink()
    hello = _frame((K.KIND_HELLO, b"", schema.Hello("a", "m", 2, b"n" * 16)))
    for _ in range(9):
        g.on_frame(link, hello)
    assert link.closed and len(calls) == 8  # the budget: 8 frames before the handshake completes


def test_gate_delivers_members_and_relays_targeted_messages() -> None:
    g, calls = _gate()
    link = FakeLink(MEMBER)
    link.session.peer_id = "peer"
    g.on_frame(link, _frame((K.KIND_EVENT, b"", schema.Event("e1", "x", "peer", 1.0, {})),
                            (K.KIND_EVENT, b"far", schema.Event("e2", "x", "peer", 1.0, {})),
                            (K.KIND_HEARTBEAT, b"", schema.Heartbeat("peer", "active", 0, 0.0, 1.0)),
                            (K.KIND_LEAVE, b"", schema.Leave("someone-else"))))
    assert ("handler", "x") in calls and ("relay", "far") in calls and ("msg", K.KIND_HEARTBEAT) in calls
    assert ("msg", K.KIND_LEAVE) not in calls and g.stats["refused"] == 1 and not link.closed


def test_gate_never_raises_on_hostile_input() -> None:
    g, _ = _gate()
    nested = b"\x91" * 100_000 + b"\xc0"
    link = FakeLink(MEMBER)
    link.session.peer_id = "peer"
    w = FrameWriter()
    w.add_raw(K.KIND_GOSSIP, 0, b"", b"", nested)
    g.on_frame(link, w.finish())  # RecursionError inside msgspec: a FrameError here
    assert g.stats["frame_errors"] == 1
    g.on_frame(link, b"\xff\xff")
    assert g.stats["frame_errors"] == 2


# -- the handshake, as an in-memory pair (h11's ConnectionPair) -----------------------------


def _pair(tok_a: str | None, tok_b: str | None, role: str = "node", mesh_b: str = "m") -> tuple[Handshake, Handshake]:
    a = Handshake("A", "m", tok_a, outbound=True, role=role, record={"node_id": "A"})
    b = Handshake("B", mesh_b, tok_b, outbound=False, record={"node_id": "B"})
    inflight = [(a, m) for m in a.start()] + [(b, m) for m in b.start()]
    while inflight:
        src, (kind, obj) = inflight.pop(0)
        dst = b if src is a else a
        inflight += [(dst, m) for m in dst.receive(kind, obj)]
    return a, b


def test_handshake_with_the_same_token_admits_both_and_swaps_records() -> None:
    a, b = _pair("t", "t")
    assert a.state == b.state == "ready"
    assert a.peer_record == {"node_id": "B"} and b.peer_record == {"node_id": "A"}


@pytest.mark.parametrize("tokens", [("t", "u"), (None, "t"), ("t", None)])
def test_handshake_with_mismatched_tokens_admits_neither(tokens: tuple[str | None, str | None]) -> None:
    a, b = _pair(*tokens)
    assert a.state != "ready" and b.state != "ready"
    assert isinstance(a.error or b.error, AuthError)


def test_handshake_wrong_mesh_unknown_role_own_id() -> None:
    a, b = _pair(None, None, mesh_b="other")
    assert b.state == "failed" and isinstance(b.error, HandshakeError)
    b = Handshake("B", "m", "t", outbound=False)
    b.start()
    out = b.receive(K.KIND_HELLO, schema.Hello("X", "m", 2, b"n" * 16, "mallory"))
    assert b.state == "failed" and out[0][0] == K.KIND_REJECT
    b = Handshake("B", "m", "t", outbound=False)
    b.receive(K.KIND_HELLO, schema.Hello("B", "m", 2, b"n" * 16, "observer"))  # our own id
    assert b.state == "failed"


def test_listener_proves_nothing_before_the_dialler_did_no_reflection_oracle() -> None:
    """An attacker opens two connections to B and hopes B computes, on one, a proof it
    can replay on the other: B answers a Hello with nothing and a bad proof with a
    refusal, so there is never a proof of B's to reflect."""
    b1 = Handshake("B", "m", "t", outbound=False)
    b2 = Handshake("B", "m", "t", outbound=False)
    n1, n2 = b1.start()[0][1].nonce, b2.start()[0][1].nonce
    assert b1.receive(K.KIND_HELLO, schema.Hello("X", "m", 2, n2, "observer")) == []
    assert b2.receive(K.KIND_HELLO, schema.Hello("X", "m", 2, n1, "observer")) == []
    out = b1.receive(K.KIND_AUTH, schema.Auth(b"\0" * 32))
    assert b1.state == "failed" and [k for k, _ in out] == [K.KIND_REJECT]


def test_handshake_timeout_and_messages_out_of_turn() -> None:
    b = Handshake("B", "m", None, outbound=False)
    assert b.expire()[0][0] == K.KIND_REJECT and b.state == "failed"
    b = Handshake("B", "m", None, outbound=False)
    b.receive(K.KIND_EVENT, schema.Event("e", "x", "X", 1.0))
    assert b.state == "failed"


# -- membership with a fake clock ------------------------------------------------------------


def _membership(hb: float = 1.0) -> Membership:
    local = MeshNode("me", "me", NodeStatus.INITIALIZING, [], 0, 0.0, __import__("datetime").datetime.now(), {})
    m = Membership(local, MeshRegistry("me"), hb)
    m.join_local()
    return m


def test_membership_join_refresh_and_silence_with_a_fake_clock() -> None:
    m = _membership(hb=1.0)
    eff = m.link_ready("p", {"name": "peer", "capabilities": ["gpu"]}, now=100.0)
    assert isinstance(eff[0], Joined) and eff[0].node.node_id == "p" and m.nodes["p"].capabilities == ["gpu"]
    assert m.sweep(102.9) == []
    m.on_heartbeat(schema.Heartbeat("p", "active", 1, 0.5, 0.0), now=102.9)
    assert m.sweep(105.8) == []  # 2.9 s after the last heartbeat: still in
    assert m.sweep(106.0) == [Lost("p", "silent")] and "p" not in m.nodes


def test_membership_does_not_blame_peers_for_our_own_silence() -> None:
    """A peer whose frames keep coming (its heartbeats wait behind our backlog) is alive;
    a node that did not run for a while (blocked loop, SIGSTOP) moves the clocks on."""
    m = _membership(hb=1.0)
    m.link_ready("p", None, now=100.0)
    m.link_ready("q", None, now=100.0)
    m.alive("p", 102.5)  # frames from p arrived; q said nothing
    m.alive("ghost", 102.5)  # unknown: no effect
    assert m.sweep(103.2) == [Lost("q", "silent")] and "p" in m.nodes and "ghost" not in m.last_seen
    m.stalled(20.0)  # we were stopped for 20 s: p's silence is ours
    assert m.sweep(124.0) == [] and "p" in m.nodes
    assert m.sweep(125.6) == [Lost("p", "silent")]


def test_membership_leave_link_loss_and_gossip() -> None:
    m = _membership()
    m.link_ready("p", None, now=0.0)
    m.link_lost("p")
    assert m.nodes["p"].status == NodeStatus.DISCONNECTED  # at once, not after the timeout
    m.on_heartbeat(schema.Heartbeat("p", "active", 0, 0.0, 0.0), now=1.0)
    assert m.nodes["p"].status == NodeStatus.ACTIVE
    g = schema.Gossip([{"node_id": "q", "websocket_endpoint": "ws://q"}, {"node_id": "me"}, "junk"])  # type: ignore[list-item]
    eff = m.on_gossip(g, "p", now=1.0, learn=False, dial=True)
    assert eff == [Dial("ws://q", "q")] and "q" not in m.nodes
    eff = m.on_gossip(g, "p", now=1.0, learn=True, dial=False)
    assert isinstance(eff[0], Joined) and eff[0].node.node_id == "q" and "q" in m.nodes
    assert m.on_leave("p") == [Lost("p", "left")] and m.on_leave("p") == []
    many = schema.Gossip([{"node_id": f"g{i}"} for i in range(5000)])
    m.on_gossip(many, "x", now=2.0, learn=True, dial=False)
    assert len(m.nodes) <= 1024 + 3  # gossip is bounded per message


def test_outsiders_cannot_flood_the_log_by_reconnecting(caplog: pytest.LogCaptureFixture) -> None:
    g, _ = _gate()
    with caplog.at_level("WARNING", logger="spiralfast.node.gate"):
        for i in range(300):  # 300 connections, each with one bad frame
            link = FakeLink()
            link.name = f"10.0.0.1:{40000 + i}"
            g.on_frame(link, b"\xff" * 10)
    assert g.stats["frame_errors"] == 300
    assert len(caplog.records) <= 2  # keyed by the reason, not by the connection
