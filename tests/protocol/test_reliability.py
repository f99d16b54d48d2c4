"""Reliability rules (``spiralfast.protocol.reliability``) with a fake clock and no event
loop: gap repair, retransmit trimming, origin-end, duplicates and loss reports, over
both implementations of the de-duplication windows (compiled and pure Python)."""

from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from spiralfast.protocol.reliability import (
    MAX_REPAIR_SEQS,
    REPAIR_ATTEMPTS,
    REPAIR_DELAY,
    REPAIR_INTERVAL,
    AnnounceEnd,
    AskRepair,
    LossReport,
    Reliability,
    RetransmitTrimmer,
    answer_repair,
)
from tests.twins import load_twins

ORIGIN = "aaaaaaaaaaaas"  # a broadcast origin (ends in "s"): its gaps count
T0 = 1000.0  # the fake monotonic clock starts here


@pytest.fixture(params=["compiled", "pure"])
def dedupe(request: pytest.FixtureRequest) -> Any:
    """The compiled Dedupe and its twin, through tests/twins.py (on the pure-Python run
    the twin twice; under CI a missing build fails)."""
    pair = load_twins("fastpath")
    return (pair.compiled if request.param == "compiled" else pair.pure).Dedupe()


@dataclass
class Rec:
    """A node record as the rules read it."""

    metadata: dict[str, Any] = field(default_factory=dict)


def _see(dedupe: Any, *seqs: int, origin: str = ORIGIN) -> list[bool]:
    return [dedupe.first_time(f"{origin}-{s}".encode()) for s in seqs]


def _members(origin: str = ORIGIN, nid: str = "p") -> dict[str, Rec]:
    return {"me": Rec({"origin": "mmmmmmmmmmmms"}), nid: Rec({"origin": origin})}


# -- duplicates ------------------------------------------------------------------------


def test_duplicates_are_seen_once_and_a_gap_is_noticed(dedupe: Any) -> None:
    assert _see(dedupe, 1, 2, 2, 1) == [True, True, False, False]
    assert dedupe.gaps() == {}
    assert _see(dedupe, 5) == [True]
    assert dedupe.gaps() == {ORIGIN: 2}  # 3 and 4 are missing
    assert _see(dedupe, 3, 3) == [True, False]  # a late copy fills the gap once
    assert dedupe.gaps() == {ORIGIN: 1}


# -- gap repair -------------------------------------------------------------------------


def test_no_ask_before_the_delay_then_one_per_interval(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 4)
    assert rel.repair_tick(10.0, _members(), "me") == []  # just noticed: a copy may be on its way
    assert rel.repair_tick(10.0 + REPAIR_DELAY / 2, _members(), "me") == []
    asks = rel.repair_tick(10.0 + REPAIR_DELAY, _members(), "me")
    assert asks == [AskRepair("p", ORIGIN, [2, 3])]
    assert rel.repair_tick(10.0 + REPAIR_DELAY + REPAIR_INTERVAL / 2, _members(), "me") == []  # not again yet
    assert rel.repair_tick(10.0 + REPAIR_DELAY + REPAIR_INTERVAL, _members(), "me") == asks


def test_a_repaired_gap_ends_its_repair(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 3)
    rel.repair_tick(T0, _members(), "me")
    assert rel.repair_tick(T0 + REPAIR_DELAY, _members(), "me") == [AskRepair("p", ORIGIN, [2])]
    _see(dedupe, 2)  # the resent event arrives
    assert rel.repair_tick(T0 + REPAIR_DELAY + REPAIR_INTERVAL, _members(), "me") == [] and not rel.repairs


def test_a_silent_origin_is_given_up_after_its_attempts_and_counted_lost(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 4)
    now, asked = T0, 0
    rel.repair_tick(now, _members(), "me")
    now += REPAIR_DELAY
    for _ in range(REPAIR_ATTEMPTS + 2):
        asked += len(rel.repair_tick(now, _members(), "me"))
        now += REPAIR_INTERVAL
    assert asked == REPAIR_ATTEMPTS  # then no more asking
    assert dedupe.gaps() == {} and dedupe.lost() == {ORIGIN: 2}
    assert rel.losses() == [LossReport(ORIGIN, 2, 2)]
    assert rel.losses() == []  # reported once


def test_an_answer_in_part_resets_the_attempts(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 5)  # 2, 3, 4 missing
    now = T0
    rel.repair_tick(now, _members(), "me")
    now += REPAIR_DELAY
    for _ in range(REPAIR_ATTEMPTS - 1):
        assert rel.repair_tick(now, _members(), "me")
        now += REPAIR_INTERVAL
    _see(dedupe, 2)  # one of them came: the origin is alive
    for _ in range(REPAIR_ATTEMPTS):
        assert rel.repair_tick(now, _members(), "me") == [AskRepair("p", ORIGIN, [3, 4])]
        now += REPAIR_INTERVAL
    assert dedupe.lost() == {}


def test_an_origin_that_is_not_a_member_is_not_asked_but_still_given_up(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 3)
    now = 0.0
    for _ in range(REPAIR_ATTEMPTS + 3):
        assert rel.repair_tick(now, {"me": Rec()}, "me") == []
        now += REPAIR_INTERVAL
    assert dedupe.lost() == {ORIGIN: 1}


def test_origins_being_caught_up_are_left_alone(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 3)
    for t in range(20):
        assert rel.repair_tick(float(t), _members(), "me", busy={ORIGIN}) == []
    assert dedupe.gaps() == {ORIGIN: 1} and dedupe.lost() == {}


def test_our_own_origin_is_never_asked_of_ourselves(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    own = "mmmmmmmmmmmms"
    _see(dedupe, 1, 3, origin=own)
    rel.repair_tick(T0, _members(), "me")
    assert rel.repair_tick(T0 + REPAIR_DELAY, _members(), "me") == []


def test_a_long_gap_is_asked_in_batches(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, MAX_REPAIR_SEQS * 2 + 2)
    rel.repair_tick(T0, _members(), "me")
    asks = rel.repair_tick(T0 + REPAIR_DELAY, _members(), "me")
    assert [len(a.seqs) for a in asks] == [MAX_REPAIR_SEQS, MAX_REPAIR_SEQS]
    assert asks[0].seqs[0] == 2 and asks[1].seqs[-1] == MAX_REPAIR_SEQS * 2 + 1


def test_repair_gone_gives_up_at_once(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 4)
    rel.on_repair_gone(ORIGIN, [2])
    assert dedupe.gaps() == {ORIGIN: 1} and dedupe.lost() == {ORIGIN: 1}
    rel.on_repair_gone("never-seen-s", [1])  # no window: nothing happens


def test_gossip_names_the_end_of_a_senders_sequence(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 2)
    rec = {"node_id": "p", "metadata": {"origin": ORIGIN, "seq": 5}}
    rel.expect_upto("q", [rec])  # someone else's record: no claim about p's sequence
    assert dedupe.gaps() == {}
    rel.expect_upto("p", [{"node_id": "p", "metadata": {"origin": ORIGIN, "seq": "5"}}])  # not an int
    assert dedupe.gaps() == {}
    rel.expect_upto("p", [rec])
    assert dedupe.gaps() == {ORIGIN: 3}


# -- answering a repair -------------------------------------------------------------------


def test_answer_repair_resends_what_is_held_and_names_the_rest_gone() -> None:
    # sent 1..10; the buffer holds 6..10
    a = answer_repair([3, 6, 10, 11, 50], sent=10, base=6, held=5)
    assert a.resend == [6, 10] and a.gone == [3]  # 11 and 50 were never sent: neither


def test_answer_repair_is_bounded() -> None:
    a = answer_repair(range(1, MAX_REPAIR_SEQS * 2), sent=10**6, base=1, held=10**6)
    assert len(a.resend) == MAX_REPAIR_SEQS and a.gone == []


# -- retransmit trimming -----------------------------------------------------------------


@dataclass
class Buf:
    retx: deque[bytes] = field(default_factory=deque)
    retx_base: int = 1
    retx_bytes: int = 0

    def add(self, n: int, size: int = 10) -> None:
        for _ in range(n):
            self.retx.append(b"x" * size)
            self.retx_bytes += size


def test_trimming_by_age_drops_what_was_sent_before_an_old_mark() -> None:
    buf, trim = Buf(), RetransmitTrimmer()
    buf.add(5)  # sequences 1..5
    assert trim.trim(buf, 0.0, window=10.0, max_bytes=10**6) == 0
    buf.add(3)  # 6..8
    assert trim.trim(buf, 5.0, window=10.0, max_bytes=10**6) == 0
    assert trim.trim(buf, 10.5, window=10.0, max_bytes=10**6) == 5  # the mark at 0 s: before sequence 6
    assert buf.retx_base == 6 and len(buf.retx) == 3 and buf.retx_bytes == 30
    assert trim.trim(buf, 15.5, window=10.0, max_bytes=10**6) == 3
    assert buf.retx_base == 9 and not buf.retx and buf.retx_bytes == 0


def test_trimming_by_size_drops_the_oldest_first() -> None:
    buf, trim = Buf(), RetransmitTrimmer()
    buf.add(10)
    assert trim.trim(buf, 0.0, window=60.0, max_bytes=35) == 7
    assert buf.retx_base == 8 and len(buf.retx) == 3 and buf.retx_bytes == 30


# -- origin-end ---------------------------------------------------------------------------


def test_a_gone_node_s_origin_end_is_announced(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    rel.origin_joined(ORIGIN, "p")
    rel.origin_joined("qqqqqqqqqqqqs", "q")
    _see(dedupe, 1, 2, 3)
    assert rel.origin_ended("p") == [AnnounceEnd(ORIGIN, 3)]
    assert rel.origin_ended("q") == []  # nothing seen of it: nothing to say
    assert rel.origin_ended("nobody") == []


def test_an_origin_end_claim_waits_for_the_repair_budget_then_counts_the_tail(dedupe: Any) -> None:
    rel = Reliability(dedupe, own_origin="mmmmmmmmmmmms")
    _see(dedupe, 1, 2)
    assert rel.on_origin_end(ORIGIN, 4, now=100.0)
    assert rel.on_origin_end(ORIGIN, 5, now=100.5)  # a later claim raises the end
    assert rel.on_origin_end(ORIGIN, 3, now=100.6)  # a lower one does not lower it
    budget = REPAIR_INTERVAL * REPAIR_ATTEMPTS
    rel.repair_tick(100.0 + budget - 0.1, {"me": Rec()}, "me")
    assert dedupe.gaps() == {} and rel.origin_ends  # not yet
    # 3, 4, 5 expected and, as the origin has had its repair budget, given up at once: never asked
    assert rel.repair_tick(100.0 + budget, {"me": Rec()}, "me") == []
    assert not rel.origin_ends and dedupe.gaps() == {} and dedupe.lost() == {ORIGIN: 3}
    assert rel.losses() == [LossReport(ORIGIN, 3, 3)]


def test_an_origin_end_about_a_live_member_is_dropped(dedupe: Any) -> None:
    rel = Reliability(dedupe)
    _see(dedupe, 1, 2)
    rel.on_origin_end(ORIGIN, 9, now=0.0)
    rel.repair_tick(100.0, _members(), "me")  # p (ORIGIN) is a member: it speaks for itself
    assert not rel.origin_ends and dedupe.gaps() == {} and dedupe.lost() == {}


def test_an_origin_end_about_us_is_ignored(dedupe: Any) -> None:
    rel = Reliability(dedupe, own_origin=ORIGIN)
    assert rel.on_origin_end(ORIGIN, 9, now=0.0) is False
    assert not rel.origin_ends


def test_origin_names_are_bounded() -> None:
    from spiralfast.protocol.reliability import MAX_ORIGIN_NAMES

    rel = Reliability(importlib.import_module("spiralfast.wire._fastpath_py").Dedupe())
    for i in range(MAX_ORIGIN_NAMES + 10):
        rel.origin_joined(f"o{i}s", f"n{i}")
    assert len(rel.origin_names) == MAX_ORIGIN_NAMES and "o0s" not in rel.origin_names
    assert rel.origin_names[f"o{MAX_ORIGIN_NAMES + 9}s"] == f"n{MAX_ORIGIN_NAMES + 9}"
