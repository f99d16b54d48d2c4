"""State-sync rules (spiralfast.protocol.statesync) with a fake clock and no event loop:
the HLC under a clock going backwards, last-writer-wins ties, digest differences and the
requests they lead to, and clock-skew detection and decisions."""

from __future__ import annotations

from spiralfast.protocol import statesync as ss
from spiralfast.protocol.statesync import (
    CLOCK_STEP,
    MAX_CLOCK_CORRECTION_MS,
    HybridClock,
    LwwStore,
    Notice,
    PeerClock,
    Replica,
    hlc_at,
    hlc_wall,
)
from spiralfast.wire import schema
from spiralfast.wire.schema import StateEntry

T0 = 1_700_000_000.0  # a fixed wall time (seconds)
T0_MS = int(T0 * 1000)


class FakeClock:
    """A wall clock in milliseconds that the test sets."""

    def __init__(self, ms: int = T0_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def entry(key: str, hlc: int, node: str, value: object = 1, version: int = 1, deleted: bool = False,
          category: str = "agents") -> StateEntry:
    return StateEntry(category, key, None if deleted else value, hlc, node, version, deleted, None if deleted else {})


def replica(node: str, *entries: StateEntry, now: float = T0) -> Replica:
    r = Replica(node)
    r.merge(entries, now, T0_MS, lambda _: None)
    return r


# -- hybrid logical clock --------------------------------------------------------------


def test_hlc_is_monotonic_while_the_wall_clock_goes_backwards() -> None:
    wall = FakeClock()
    hlc = HybridClock(wall)
    seen = [hlc.now()]
    for ms in (T0_MS - 5_000, T0_MS - 60_000, T0_MS - 60_000, T0_MS + 1, T0_MS - 1):
        wall.ms = ms
        seen.append(hlc.now())
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False))
    assert seen[0] == hlc_at(T0_MS) and hlc_wall(seen[0]) == T0_MS / 1000
    wall.ms = T0_MS + 10_000  # the wall clock overtakes the counter: the HLC follows it again
    assert hlc.now() == hlc_at(T0_MS + 10_000)


def test_hlc_observes_remote_values_and_resets_only_when_told() -> None:
    hlc = HybridClock(FakeClock())
    remote = hlc_at(T0_MS + 30_000) + 7
    hlc.observe(remote)
    assert hlc.now() == remote + 1  # never below what it has seen
    hlc.observe(hlc_at(T0_MS))  # an older value changes nothing
    assert hlc.last == remote + 1
    hlc.reset(hlc_at(T0_MS))
    assert hlc.tick(T0_MS) == hlc_at(T0_MS) + 1


# -- last writer wins ------------------------------------------------------------------


def test_lww_newer_hlc_wins_and_ties_break_by_node_id() -> None:
    h = hlc_at(T0_MS)
    held = (h, "b", False, T0, 1)
    assert ss.wins(entry("k", h + 1, "a"), held, "latest_wins")  # newer clock wins whatever the node
    assert not ss.wins(entry("k", h - 1, "z"), held, "latest_wins")
    assert ss.wins(entry("k", h, "c"), held, "latest_wins")  # a tie: the higher node id wins
    assert not ss.wins(entry("k", h, "a"), held, "latest_wins")
    assert not ss.wins(entry("k", h, "b"), held, "latest_wins")  # the same write again: no change
    assert ss.wins(entry("k", 0, "a"), None, "latest_wins")  # nothing held: anything wins


def test_lww_highest_version_strategy_then_clock() -> None:
    h = hlc_at(T0_MS)
    held = (h, "b", False, T0, 5)
    assert not ss.wins(entry("k", h + 100, "z", version=4), held, "highest_version")
    assert ss.wins(entry("k", h - 100, "a", version=6), held, "highest_version")
    assert ss.wins(entry("k", h, "c", version=5), held, "highest_version")  # equal versions: LWW


def test_replicas_agree_whatever_the_order_and_tombstones_win_by_clock() -> None:
    h = hlc_at(T0_MS)
    writes = [entry("k", h, "a", "from-a"), entry("k", h, "b", "from-b"), entry("j", h + 1, "a", "j"),
              entry("j", h + 2, "c", deleted=True)]
    one = replica("x", *writes)
    other = replica("y", *reversed(writes))
    assert one.digests() == other.digests()
    assert one.get_local_state("agents") == other.get_local_state("agents")
    assert one.get_local_state("agents", "k") == "from-b" and one.get_local_state("agents", "j") is None
    assert one.stats["stale"] == 0 and other.stats["stale"] == 2  # the losers arrived second there


def test_store_digest_is_an_xor_that_undoes() -> None:
    store = LwwStore()
    before = store.digests(lambda c: True)
    e = entry("k", hlc_at(T0_MS), "a")
    store.store(e, T0)
    assert store.digests(lambda c: True)["agents"] != before["agents"]
    store.drop("agents", "k")
    assert store.digests(lambda c: True) == before


# -- digests and requests --------------------------------------------------------------


def test_equal_digests_ask_for_nothing() -> None:
    e = entry("k", hlc_at(T0_MS), "a")
    a, b = replica("a", e), replica("b", e)
    assert a.repair_request(b.digests()) == [] and a.stats["repairs"] == 0


def test_digest_difference_asks_for_the_differing_categories_only() -> None:
    h = hlc_at(T0_MS)
    common = entry("same", h, "a", category="system")
    a = replica("a", common, entry("k1", h, "a"))
    b = replica("b", common, entry("k2", h + 1, "b"), entry("u", h, "b", category="user_data"))
    [(kind, req)] = a.repair_request(b.digests())
    assert kind == schema.KIND_STATE_REQUEST and a.stats["repairs"] == 1
    assert sorted(req.categories) == ["agents", "user_data"]  # "system" agrees
    assert req.categories["agents"] == {"k1": [h, "a"]}  # what a holds, so b sends only what a lacks

    # b answers: the entries a lacks, and a request back for what b lacks (k1)
    out = b.on_request(req, "a")
    deltas = [m for k, m in out if k == schema.KIND_STATE_DELTA]
    requests = [m for k, m in out if k == schema.KIND_STATE_REQUEST]
    sent = {(e.category, e.key) for d in deltas for e in d.entries}
    assert sent == {("agents", "k2"), ("user_data", "u")}
    assert len(requests) == 1
    back = a.on_request(requests[0], "b")
    a.merge([e for d in deltas for e in d.entries], T0, T0_MS, lambda _: None)
    b.merge([e for k, d in back if k == schema.KIND_STATE_DELTA for e in d.entries], T0, T0_MS, lambda _: None)
    assert a.digests() == b.digests()


def test_no_request_back_to_a_peer_whose_clock_is_ahead() -> None:
    h = hlc_at(T0_MS)
    a, b = replica("a", entry("k1", h, "a")), replica("b", entry("k2", h, "b"))
    a.skewed_peers["b"] = 120.0
    [(kind, req)] = b.repair_request(a.digests())
    assert [k for k, _ in a.on_request(req, "b")] == [schema.KIND_STATE_DELTA]  # what b lacks; no ask back
    assert [k for k, _ in a.on_request(req, "c")] == [schema.KIND_STATE_DELTA, schema.KIND_STATE_REQUEST]


def test_unshared_categories_are_neither_compared_nor_sent() -> None:
    h = hlc_at(T0_MS)
    a = replica("a", entry("k", h, "a", category="system"))
    a.shared = {"agents"}
    assert set(a.digests()) == {"agents"}
    assert ss.differing_categories({"agents": "0"}, {"system": "ff"}, a.is_shared) == []
    assert a.entries_newer_than({"system": {}}) == []


def test_delta_chunks_respect_bytes_and_count() -> None:
    es = [entry(f"k{i}", hlc_at(T0_MS) + i, "a") for i in range(10)]
    assert [len(c) for c in ss.delta_chunks(es, lambda e: 10, 35, 1000)] == [3, 3, 3, 1]
    assert [len(c) for c in ss.delta_chunks(es, lambda e: 10, 10_000, 4)] == [4, 4, 2]
    assert [len(c) for c in ss.delta_chunks(es[:1], lambda e: 100, 10)] == [1]  # one big entry still goes


def test_tombstones_are_collected_after_their_ttl() -> None:
    h = hlc_at(T0_MS)
    r = replica("a", entry("k", h, "a"), entry("k", h + 5, "b", deleted=True), now=T0)
    r.tombstone_ttl = 10.0
    assert r.collect(T0 + 5) == 0
    assert r.collect(T0 + 11) == 1 and r.collected_upto == h + 5 and r.stats["tombstones_collected"] == 1


def test_rejoin_after_an_absence_and_full_resync() -> None:
    assert ss.rejoin_from(None, T0, T0 + 10, absence=30) is None  # not away long enough
    assert ss.rejoin_from(None, T0, T0 + 31, absence=30) == T0
    assert ss.rejoin_from(T0 - 100, T0, T0 + 31, absence=30) == T0 - 100  # the first absence counts
    assert ss.rejoin_from(None, None, T0, absence=30) is None  # never in contact
    assert ss.resync_horizon(None, hlc_at(T0_MS)) is None
    assert ss.resync_horizon(T0, hlc_at(T0_MS) - 1) is None  # the peer collected nothing newer
    assert ss.resync_horizon(T0, hlc_at(T0_MS)) == hlc_at(T0_MS + 1)
    old, new = entry("old", hlc_at(T0_MS - 1000), "a"), entry("new", hlc_at(T0_MS + 1000), "a")
    r = replica("a", old, new)
    assert r.resync(T0, hlc_at(T0_MS + 5)) == 1 and r.stats["full_resyncs"] == 1
    assert r.get_local_state("agents", "old") is None and r.get_local_state("agents", "new") == 1


# -- clock skew ------------------------------------------------------------------------


def test_state_too_far_ahead_is_refused() -> None:
    r = Replica("me")
    observed: list[int] = []
    far = entry("far", hlc_at(T0_MS + 61_000), "skewed")
    near = entry("near", hlc_at(T0_MS + 59_000), "skewed")
    changed, refused = r.merge([far, near], T0, T0_MS, observed.append)
    assert changed == 1 and refused == [far] and r.stats["rejected_clock"] == 1
    assert observed == [near.hlc]  # a refused stamp does not drag our clock ahead
    assert ss.too_far_ahead(far.hlc, T0_MS, 60.0) and not ss.too_far_ahead(near.hlc, T0_MS, 60.0)


def test_peer_clock_detection() -> None:
    offset = 60_000
    assert ss.peer_clock(0, T0_MS, offset) is PeerClock.UNKNOWN  # an older node sends no reading
    assert ss.peer_clock(T0_MS + offset + 1, T0_MS, offset) is PeerClock.AHEAD
    assert ss.peer_clock(T0_MS + offset, T0_MS, offset) is PeerClock.WITHIN
    assert ss.peer_clock(T0_MS - 10 * offset, T0_MS, offset) is PeerClock.WITHIN  # behind: it is told by us


def test_notice_decisions() -> None:
    assert ss.notice_decision(30_000, 0, T0_MS, 60_000) is Notice.STALE  # corrected since
    assert ss.notice_decision(120_000, 0, T0_MS, 60_000) is Notice.CORRECT
    assert ss.notice_decision(MAX_CLOCK_CORRECTION_MS + 1, 0, T0_MS, 60_000) is Notice.ABSURD
    assert ss.notice_decision(120_000, 0, 0, 60_000) is Notice.ABSURD  # no reading
    # the limit counts the correction already applied
    assert ss.notice_decision(MAX_CLOCK_CORRECTION_MS // 2, -MAX_CLOCK_CORRECTION_MS // 2 - 1, T0_MS, 0) \
        is Notice.ABSURD


def test_clock_step_and_step_back() -> None:
    step, base = ss.clock_step(T0 - 100.0, T0 - 120.0, 20.0)  # wall minus monotonic fell by 40 s
    assert (step, base) == (-40.0, T0 - 140.0) and step < -CLOCK_STEP
    # no correction applied: everything we stamped in the last 40 s is now in the future
    d = ss.step_back(40_000, 0)
    assert (d.absorbed, d.correction_ms, d.restamp_ms) == (0, 0, 40_000)
    # we were correcting 120 s: a 120 s step back makes the correction unnecessary
    d = ss.step_back(120_000, -120_000)
    assert (d.absorbed, d.correction_ms, d.restamp_ms) == (120_000, 0, 0)
    # a correction left under CLOCK_STEP is the notice's latency, not skew: it ends too
    d = ss.step_back(119_500, -120_000)
    assert (d.correction_ms, d.restamp_ms) == (0, 0)
    # a partial step leaves the rest of the correction
    d = ss.step_back(60_000, -120_000)
    assert (d.absorbed, d.correction_ms, d.restamp_ms) == (60_000, -60_000, 0)


def test_correction_ends_when_our_clock_agrees_again() -> None:
    assert ss.correction_ends(T0_MS + 30_000, T0_MS, 60_000)
    assert not ss.correction_ends(T0_MS + 30_001, T0_MS, 60_000)


def test_restamp_moves_only_our_future_entries_back() -> None:
    ahead = 120_000
    mine_future = entry("mine", hlc_at(T0_MS + ahead), "me", "v")
    theirs = entry("theirs", hlc_at(T0_MS + ahead), "other")
    mine_past = entry("past", hlc_at(T0_MS - 5000), "me")
    r = replica("me", mine_past)
    r.store.store(mine_future, T0)  # stamped by our clock while it ran ahead (merge would refuse it)
    r.store.store(theirs, T0)
    moved, floor = r.restamp(ahead, T0_MS)
    assert [(e.key, e.hlc, e.value) for e in moved] == [("mine", hlc_at(T0_MS), "v")]
    assert r.stats["restamped"] == 1
    assert floor == hlc_at(T0_MS)  # the other writer's future stamp is beyond the horizon: not followed
