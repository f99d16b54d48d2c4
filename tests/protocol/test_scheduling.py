"""The task scheduling rules (spiralfast.protocol.scheduling): no event loop, a fake
clock (plain floats) and seeded randomness."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from spiralfast.node.registry import MAX_CAPABILITIES, MAX_CAPABILITY_NAME
from spiralfast.protocol import scheduling as s
from spiralfast.protocol.scheduling import Advert, Expiry, RetryAction, Target, WorkerLoad


def targets(*loads: tuple[str, int, int]) -> list[Target]:
    """Targets ``(node, capacity, load from others)``."""
    out = []
    for node, cap, others in loads:
        t = Target(node, cap)
        t.others = others
        out.append(t)
    return out


def test_bounds_are_the_registry_capability_bounds() -> None:
    assert (s.MAX_TASK_TYPES, s.MAX_TYPE_NAME) == (MAX_CAPABILITIES, MAX_CAPABILITY_NAME)


def test_choose_single_and_full() -> None:
    rnd = random.Random(1).random
    (a,) = cands = targets(("a", 2, 1))
    assert s.choose(cands, None, (), rnd) is a
    a.mine = 1
    assert s.choose(cands, None, (), rnd) is None  # full: the task waits
    assert s.choose([], None, (), rnd) is None and s.choose(None, None, (), rnd) is None


def test_choose_two_prefers_lower_utilisation() -> None:
    rnd = random.Random(1).random
    a, b = cands = targets(("a", 10, 8), ("b", 2, 0))
    assert s.choose(cands, None, (), rnd) is b
    b.mine = 2  # b full, a has room
    assert s.choose(cands, None, (), rnd) is a
    a.others = 10
    assert s.choose(cands, None, (), rnd) is None


def test_choose_power_of_two_spreads_and_finds_room() -> None:
    rnd = random.Random(7).random
    cands = targets(*[(f"n{i}", 4, 0) for i in range(5)])
    picks = Counter(s.choose(cands, None, (), rnd).node for _ in range(500))  # type: ignore[union-attr]
    assert set(picks) == {t.node for t in cands}
    for t in cands[:-1]:
        t.others = 4  # every node full but the last: found even when both samples are full
    assert all(s.choose(cands, None, (), rnd) is cands[-1] for _ in range(50))


def test_choose_pinned_and_excluded() -> None:
    rnd = random.Random(3).random
    a, b = cands = targets(("a", 4, 0), ("b", 4, 3))
    assert s.choose(cands, "b", (), rnd) is b
    assert s.choose(cands, "zz", (), rnd) is None
    assert s.choose(cands, None, ("a",), rnd) is b
    assert s.choose([a], None, ("a",), rnd) is a  # the excluded node when it is the only one


def test_local_target_load_is_the_offer() -> None:
    offer = WorkerLoad(2)
    t = Target("me", 2, offer)
    t.mine = 5  # ignored: the local load is known exactly
    assert t.load() == 0 and s.choose([t], None, (), random.random) is t
    offer.running = 2
    assert s.choose([t], None, (), random.random) is None


def test_retry_actions() -> None:
    assert s.retry_action(0, True, "b", None) is RetryAction.TIMED_OUT
    assert s.retry_action(0, False, "b", None) is RetryAction.LOST
    assert s.retry_action(1, False, "b", "b") is RetryAction.LOST_PINNED
    assert s.retry_action(1, True, "b", "b") is RetryAction.RESEND  # a timeout on the pinned node: again there
    assert s.retry_action(2, False, "b", None) is RetryAction.RESEND
    assert s.retry_action(1, False, None, None) is RetryAction.RESEND


def test_expiry_actions() -> None:
    assert s.expiry_action(True, 0) is Expiry.RETRY
    assert s.expiry_action(False, 1) is Expiry.WAIT_AGAIN
    assert s.expiry_action(False, 0) is Expiry.GIVE_UP


def test_result_source() -> None:
    assert s.result_source_ok("b", (), "b")
    assert s.result_source_ok("c", ("b",), "b")  # an earlier attempt's node still counts
    assert s.result_source_ok(None, ("b",), "b")
    assert not s.result_source_ok("b", ("c",), "x")
    assert not s.result_source_ok(None, (), "x")


def test_worker_load_turns_and_bounds() -> None:
    w = WorkerLoad(1)
    assert w.per_source() == s.per_source_bound(1) == s.QUEUE_FLOOR
    assert s.per_source_bound(1000) == 1000 * s.QUEUE_FACTOR
    for i in range(3):
        w.push("x", i, f"x{i}")
    w.push("y", 0, "y0")
    w.by_src.update(x=3, y=1)
    # submitters take turns: x's backlog does not stand in front of y's task
    assert [w.pop()[0] for _ in range(4)] == ["x", "y", "x", "x"]
    assert w.queued == 0 and w.load == 0
    w.push("x", 9, None)
    w.push("y", 9, None)
    w.running = 1
    w.by_src.update(x=2, y=1)
    w.forget_source("x")  # gone: its waiting task dropped, the running one still counted
    assert (w.queued, w.by_src, list(w.turns)) == (1, {"x": 1, "y": 1}, ["y"])
    w.release("x")
    assert "x" not in w.by_src
    w.by_src["y"] = w.per_source()
    assert not w.admits("y") and w.admits("z")


def test_type_bounds() -> None:
    assert s.types_within_bound(s.MAX_TASK_TYPES) and not s.types_within_bound(s.MAX_TASK_TYPES + 1)
    assert s.valid_type_name("a") and s.valid_type_name("x" * s.MAX_TYPE_NAME)
    assert not s.valid_type_name("") and not s.valid_type_name("x" * (s.MAX_TYPE_NAME + 1))
    assert not s.valid_type_name(3) and not s.valid_type_name(None)


def test_meta_offer() -> None:
    assert s.meta_offer({"tasks": {"t": [4, 1]}}, "t") == (4, 1)
    bad: list[dict[str, Any]] = [{}, {"tasks": []}, {"tasks": {"t": ["x", 1]}}, {"tasks": {"t": [1]}},
                                 {"tasks": {"u": [1, 1]}}]
    for md in bad:
        assert s.meta_offer(md, "t") == (None, None)


@pytest.mark.parametrize(("timeout", "retries"), [(0, 1), (-1, 1), (True, 1), ("1", 1), (1, -1), (1, 1.5), (1, True)])
def test_check_limits_refuses(timeout: object, retries: object) -> None:
    with pytest.raises(ValueError):
        s.check_limits(timeout, retries)


def test_check_limits_accepts() -> None:
    s.check_limits(0.5, 0)
    s.check_limits(30, 2)


def test_percentiles() -> None:
    assert s.percentiles([]) == (None, None)
    assert s.percentiles([i / 1000 for i in range(1, 101)]) == (51.0, 100.0)


def test_advert_timing_with_a_fake_clock() -> None:
    hb = 1.0
    last = 100.0
    assert s.advert_timing(100.1, last, hb) is Advert.NOT_YET
    assert s.advert_timing(100.25, last, hb) is Advert.IF_CHANGED
    assert s.advert_timing(101.0, last, hb) is Advert.DUE
    assert not s.meta_stale(101.9, 100.0, hb) and s.meta_stale(102.0, 100.0, hb)


def test_tick_period() -> None:
    assert s.tick_period(0.04) == s.MIN_TICK
    assert s.tick_period(0.2) == pytest.approx(0.025)
    assert s.tick_period(5.0) == s.MAX_TICK


def test_link_changes() -> None:
    ch = s.link_changes({"a", "b"}, {"b", "c"})
    assert (ch.gone, ch.new) == (frozenset({"a"}), frozenset({"c"}))
