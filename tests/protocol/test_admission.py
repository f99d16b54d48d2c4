"""The gate's rule table and token bucket (``spiralfast.protocol.admission``), pure:
no links, no event loop, the time passed in."""

from __future__ import annotations

import pytest

from spiralfast.protocol.admission import (
    HANDSHAKE_KINDS,
    MEMBER_KINDS,
    SessionState,
    TokenBucket,
    Verdict,
    admit,
)
from spiralfast.wire import schema as K

ALL_KINDS = sorted({v for k, v in vars(K).items() if k.startswith("KIND_") and isinstance(v, int)})
S, V = SessionState, Verdict


def test_states_and_verdicts_equal_their_old_strings() -> None:
    assert [s.value for s in S] == ["handshake", "member", "observer", "closed"]
    assert S.MEMBER == "member" and f"{S.OBSERVER}" == "observer"
    assert [v.value for v in V] == ["deliver", "relay", "answer", "refuse"]
    assert admit("member", K.KIND_EVENT) == "deliver"  # a plain string state still works


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_before_the_handshake_only_handshake_messages_pass(kind: int) -> None:
    want = V.ANSWER if kind in HANDSHAKE_KINDS else V.REFUSE
    assert admit(S.HANDSHAKE, kind) is want
    assert admit(S.HANDSHAKE, kind, targeted_elsewhere=True) is V.REFUSE  # never relayed
    assert admit(S.HANDSHAKE, kind, bus=True, sender="x", about="x") is want  # no claims help


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_observers_may_only_query_this_node(kind: int) -> None:
    assert admit(S.OBSERVER, kind) is (V.ANSWER if kind == K.KIND_QUERY else V.REFUSE)
    assert admit(S.OBSERVER, kind, targeted_elsewhere=True) is V.REFUSE


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_closed_and_unknown_states_refuse_everything(kind: int) -> None:
    assert admit(S.CLOSED, kind, sender="a", about="a") is V.REFUSE
    assert admit("bogus", kind, sender="a", about="a") is V.REFUSE


@pytest.mark.parametrize("kind", sorted(MEMBER_KINDS - {K.KIND_HEARTBEAT, K.KIND_LEAVE}))
def test_members_deliver_member_messages_on_links_and_buses(kind: int) -> None:
    assert admit(S.MEMBER, kind, sender="a") is V.DELIVER
    assert admit(S.MEMBER, kind, sender="a", bus=True) is V.DELIVER


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_messages_for_another_node_are_relayed_on_links_and_refused_on_buses(kind: int) -> None:
    assert admit(S.MEMBER, kind, targeted_elsewhere=True) is V.RELAY
    assert admit(S.MEMBER, kind, targeted_elsewhere=True, bus=True) is V.REFUSE


@pytest.mark.parametrize("kind", [K.KIND_HEARTBEAT, K.KIND_LEAVE])
def test_a_member_speaks_only_for_itself(kind: int) -> None:
    assert admit(S.MEMBER, kind, about="a", sender="a") is V.DELIVER
    assert admit(S.MEMBER, kind, about="victim", sender="a") is V.REFUSE  # a forged departure
    assert admit(S.MEMBER, kind, about="a", sender=None) is V.REFUSE  # unknown sender
    assert admit(S.MEMBER, kind, about=None, sender="a") is V.REFUSE  # names nobody


def test_member_queries_are_answered_on_links_only() -> None:
    assert admit(S.MEMBER, K.KIND_QUERY) is V.ANSWER
    assert admit(S.MEMBER, K.KIND_QUERY, bus=True) is V.REFUSE


@pytest.mark.parametrize("kind", sorted(HANDSHAKE_KINDS) + [9999, -1])
def test_a_member_cannot_restart_the_handshake_or_send_unknown_kinds(kind: int) -> None:
    assert admit(S.MEMBER, kind, sender="a") is V.REFUSE


# -- token bucket --------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    b = TokenBucket(rate=100.0, burst=10, now=50.0)
    assert b.take(10, 50.0) == 0.0  # the whole burst at once
    assert b.take(1, 50.0) == pytest.approx(0.01)  # one token of debt: 10 ms
    assert b.take(1, 50.03) == 0.0  # 3 tokens came back
    assert b.tokens == pytest.approx(1.0)


def test_a_bucket_never_saves_more_than_its_burst() -> None:
    b = TokenBucket(rate=1000.0, burst=5, now=0.0)
    assert b.take(0, 3600.0) == 0.0 and b.tokens == 5.0
    assert b.take(6, 3600.0) == pytest.approx(0.001)


def test_a_deep_debt_takes_proportionally_long() -> None:
    b = TokenBucket(rate=10.0, burst=10, now=0.0)
    assert b.take(30, 0.0) == pytest.approx(2.0)  # 20 tokens of debt at 10/s
    assert b.take(0, 1.0) == pytest.approx(1.0)  # half repaid a second later
    assert b.take(0, 2.0) == 0.0


def test_a_refund_gives_back_what_a_refused_write_took() -> None:
    b = TokenBucket(rate=1.0, burst=2, now=0.0)
    b.take(2, 0.0)
    wait = b.take(1, 0.0)
    assert wait == pytest.approx(1.0)
    b.refund(1)
    assert b.take(0, 0.0) == 0.0 and b.tokens == 0.0
