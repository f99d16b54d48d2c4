"""Scheduling rules the mutation run (tools/mutation.sh, docs/mutation.md) found untested:
which pair power-of-two-choices samples, utilisation as load / capacity, ties, a worker's
per-submitter accounting when tasks finish or a submitter goes, the p99 index and the
starting values of the counters.  No event loop; rand is a scripted sequence."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from spiralfast.protocol import scheduling as s
from spiralfast.protocol.scheduling import Advert, SubmitStats, Target, WorkerLoad


def scripted(values: Iterable[float]) -> Callable[[], float]:
    """A ``rand`` that returns ``values`` in order (and fails the test past their end)."""
    it = iter(values)
    return lambda: next(it)


def target(node: str, capacity: int, others: int = 0, mine: int = 0) -> Target:
    t = Target(node, capacity)
    t.others, t.mine = others, mine
    return t


# -- choose: which two are sampled -----------------------------------------------------------


def test_second_sample_skips_the_first_index() -> None:
    # four nodes, the later the emptier: the choice shows which pair was sampled
    cands = [target(f"n{i}", 10, others=3 - i) for i in range(4)]
    # i = int(0.0 * 4) = 0; j = int(0.9 * 3) = 2, >= i so 3: the pair (n0, n3)
    assert s.choose(cands, None, (), scripted([0.0, 0.9])) is cands[3]
    # i = int(0.5 * 4) = 2; j = int(0.5 * 3) = 1, < i so it stays: the pair (n2, n1)
    assert s.choose(cands, None, (), scripted([0.5, 0.5])) is cands[2]


def test_second_sample_never_repeats_the_first() -> None:
    # i = j = 0 before the skip: the pair is (n0, n1), never n0 twice
    cands = [target("n0", 10, others=2), target("n1", 10, others=1), target("n2", 10, others=5)]
    assert s.choose(cands, None, (), scripted([0.0, 0.0])) is cands[1]


def test_two_candidates_use_no_randomness_and_keep_the_first_on_a_tie() -> None:
    def no_rand() -> float:
        raise AssertionError("two candidates need no sampling")

    a, b = cands = [target("a", 4, others=1), target("b", 4, others=1)]
    assert s.choose(cands, None, (), no_rand) is a
    assert s.choose([b, a], None, (), no_rand) is b


def test_utilisation_is_load_over_capacity() -> None:
    # the same load of 1 is 10% of a and 50% of b: a is chosen, in either order
    a, b = target("a", 10, others=1), target("b", 2, others=1)
    assert s.choose([a, b], None, (), scripted([])) is a
    assert s.choose([b, a], None, (), scripted([])) is a


def test_both_samples_full_picks_the_least_used_with_room() -> None:
    full1, full2 = target("f1", 4, others=4), target("f2", 4, others=4)
    half, most = target("half", 4, others=2), target("most", 4, others=3)
    # i = 0, j = int(0.0 * 3) = 0 -> 1: both sampled are full
    assert s.choose([full1, full2, most, half], None, (), scripted([0.0, 0.0])) is half


# -- has_room, advert timing, staleness ------------------------------------------------------


def test_has_room_counts_mine_and_others() -> None:
    assert s.has_room(target("a", 4, others=1, mine=2))
    assert not s.has_room(target("a", 4, others=2, mine=2))  # exactly full
    assert not s.has_room(target("a", 4, others=3, mine=2))


def test_advert_if_changed_from_a_quarter_heartbeat() -> None:
    assert s.advert_timing(10.22, 10.0, 1.0) is Advert.NOT_YET  # more than a fifth, less than a quarter
    assert s.advert_timing(10.25, 10.0, 1.0) is Advert.IF_CHANGED


def test_meta_stale_after_two_heartbeats() -> None:
    assert s.meta_stale(101.0, 100.0, 0.5)
    assert not s.meta_stale(100.9, 100.0, 0.5)
    assert not s.meta_stale(103.9, 100.0, 2.0) and s.meta_stale(104.0, 100.0, 2.0)


# -- check_limits, percentiles ---------------------------------------------------------------


def test_check_limits_messages_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, got -1"):
        s.check_limits(-1, 0)
    with pytest.raises(ValueError, match=r"retries must be an integer >= 0, got 'x'"):
        s.check_limits(1.0, "x")


def test_percentiles_are_rounded_to_microseconds() -> None:
    assert s.percentiles([0.0012345678]) == (1.235, 1.235)


def test_p99_index() -> None:
    # 200 samples 0..199 ms: p99 is the 198th (int(200 * 0.99)), p50 the 100th
    p50, p99 = s.percentiles([i / 1000 for i in range(200)])
    assert (p50, p99) == (100.0, 198.0)


# -- WorkerLoad accounting -------------------------------------------------------------------


def test_worker_load_starts_empty() -> None:
    w = WorkerLoad(3)
    assert (w.capacity, w.running, w.queued, w.done, w.failed, w.load) == (3, 0, 0, 0, 0, 0)
    assert w.latency.maxlen == s.LATENCY_SAMPLES and not w.latency


def test_per_source_bound_grows_with_capacity() -> None:
    assert WorkerLoad(1000).per_source() == 4000 == s.per_source_bound(1000)
    assert WorkerLoad(1).per_source() == s.QUEUE_FLOOR


def test_forget_an_unknown_submitter() -> None:
    w = WorkerLoad(1)
    w.push("a", 1, None)
    assert w.forget("nobody") == 0
    assert w.queued == 1


def test_forget_counts_down_only_that_submitters_tasks() -> None:
    w = WorkerLoad(1)
    for i in range(3):
        w.push("a", i, None)
    w.push("b", 9, None)
    assert w.forget("a") == 3
    assert w.queued == 1 and w.load == 1
    assert w.pop() == ("b", 9, None)


def test_forget_source_drops_what_waited_and_keeps_what_runs() -> None:
    w = WorkerLoad(1)
    w.by_src = {"a": 3, "b": 1}
    w.push("a", 1, None)
    w.push("a", 2, None)  # a: one running, two waiting
    w.forget_source("a")
    assert w.by_src == {"a": 1, "b": 1} and w.queued == 0


def test_forget_source_removes_a_submitter_with_nothing_running() -> None:
    w = WorkerLoad(1)
    w.by_src = {"a": 2, "b": 1}
    w.push("a", 1, None)
    w.push("a", 2, None)
    w.forget_source("a")
    assert w.by_src == {"b": 1}


def test_forget_source_of_a_submitter_without_a_count() -> None:
    w = WorkerLoad(1)
    w.by_src = {"b": 1}
    w.push("a", 1, None)  # waiting, but never counted in by_src
    w.forget_source("c")  # not known at all
    assert w.by_src == {"b": 1} and w.queued == 1
    w.forget_source("a")
    assert w.by_src == {"b": 1} and w.queued == 0


def test_release_counts_down_one() -> None:
    w = WorkerLoad(1)
    w.by_src = {"a": 3}
    w.release("a")
    assert w.by_src == {"a": 2}
    w.release("a")
    assert w.by_src == {"a": 1}
    w.release("a")
    assert w.by_src == {}


def test_release_of_an_unknown_submitter_changes_nothing() -> None:
    w = WorkerLoad(1)
    w.by_src = {"a": 2}
    w.release("nobody")
    assert w.by_src == {"a": 2}


def test_clear_empties_the_queues() -> None:
    w = WorkerLoad(1)
    w.push("a", 1, None)
    w.push("b", 2, None)
    w.clear()
    assert (w.queued, w.load, dict(w.queues), list(w.turns)) == (0, 0, {}, [])


# -- Target and SubmitStats starting values --------------------------------------------------


def test_target_defaults() -> None:
    t = Target("n", 0)
    assert (t.node, t.capacity, t.others, t.mine, t.offer, t.advertised, t.seen) == ("n", 1, 0, 0, None, True, 0.0)
    assert Target("n", 5, advertised=False).advertised is False
    assert t.load() == 0 and s.choose([t], None, (), scripted([])) is t


def test_submit_stats_start_at_zero() -> None:
    st = SubmitStats()
    assert (st.submitted, st.done, st.failed, st.retried, st.timeouts) == (0, 0, 0, 0, 0)
    assert st.latency.maxlen == s.LATENCY_SAMPLES and not st.latency
