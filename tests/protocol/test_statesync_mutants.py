"""State-sync rules the mutation run (tools/mutation.sh, docs/mutation.md) found untested:
snapshots (their exact form, hash and the entries read back, old format included), the
store's view of an entry, tombstone collection and its digest, the merge's horizon and
counters, a wall-clock step back, and a replica's starting values.  Fake clock (plain
numbers), no event loop."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from spiralfast.protocol import statesync as ss
from spiralfast.protocol.statesync import LwwStore, Replica, StepBack, hlc_at, step_back
from spiralfast.wire.schema import StateEntry

T0 = 1_700_000_000.0
T0_MS = int(T0 * 1000)
H0 = hlc_at(T0_MS)


def entry(key: str, hlc: int = H0, node: str = "a", value: object = 1, version: int = 1, deleted: bool = False,
          category: str = "agents", metadata: dict[str, object] | None = None) -> StateEntry:
    return StateEntry(category, key, None if deleted else value, hlc, node, version, deleted,
                      None if deleted else (metadata if metadata is not None else {}))


def merged(r: Replica, *entries: StateEntry, now: float = T0) -> tuple[int, list[StateEntry]]:
    return r.merge(entries, now, T0_MS, lambda _: None)


def key_of(e: StateEntry) -> tuple[str, str]:
    return (e.category, e.key)


# -- a replica's starting values ------------------------------------------------------------


def test_replica_defaults() -> None:
    r = Replica("me")
    assert (r.node_id, r.state_version, r.conflict_resolution_strategy, r.shared) == ("me", 0, "latest_wins", None)
    assert (r.max_clock_offset, r.tombstone_ttl, r.skewed_peers, r.collected_upto) == (60.0, 86400.0, {}, 0)
    assert r.stats == {"applied": 0, "stale": 0, "rejected_clock": 0, "repairs": 0, "tombstones_collected": 0,
                       "full_resyncs": 0, "skew_notices_sent": 0, "clock_corrections": 0, "clock_steps": 0,
                       "restamped": 0}
    assert set(r.sync_categories) == set(ss.DEFAULT_CATEGORIES)


def test_state_summary_counts_and_lists_ten_keys() -> None:
    r = Replica("me")
    merged(r, *(entry(f"k{i:02}", H0 + i) for i in range(12)))
    summary = r.get_state_summary()
    assert summary["agents"] == {"count": 12, "keys": [f"k{i:02}" for i in range(10)]}
    assert summary["rituals"] == {"count": 0, "keys": []}


def test_all_shared_entries_only_from_shared_categories() -> None:
    r = Replica("me")
    merged(r, entry("a", category="agents"), entry("s", category="system"))
    r.shared = {"agents"}
    assert [key_of(e) for e in r.all_shared_entries()] == [("agents", "a")]


# -- snapshots ----------------------------------------------------------------------------


def test_state_hash_is_sha256_of_sorted_json() -> None:
    cats = {"b": {"k": {"timestamp": datetime(2024, 1, 2)}}, "a": {}}
    expected = hashlib.sha256(json.dumps(cats, sort_keys=True, default=str).encode()).hexdigest()
    assert ss.state_hash(cats) == expected
    assert ss.state_hash({"a": {}, "b": cats["b"]}) == expected  # key order does not matter


def test_snapshot_form() -> None:
    r = Replica("me")
    merged(r, entry("x", H0 + 5, "n1", value="v", version=3, metadata={"m": 1}),
           entry("gone", H0 + 7, "n2", version=4, deleted=True))
    when = datetime(2024, 5, 6, 7, 8, 9)
    snap = r.snapshot(when)
    cats = {c: {k: dict(v) for k, v in kv.items()} for c, kv in r.sync_categories.items()}
    assert (snap.node_id, snap.timestamp, snap.version) == ("me", when, r.state_version) and r.state_version == 1
    assert snap.state_hash == ss.state_hash(cats)
    assert snap.data == {
        "categories": cats,
        "version": 1,
        "clocks": {"agents\0x": [H0 + 5, "n1", False, 3], "agents\0gone": [H0 + 7, "n2", True, 4]},
    }
    assert snap.metadata == {"conflict_resolution": "latest_wins", "entries": 2}
    # a copy: changing the replica afterwards does not change the snapshot
    merged(r, entry("x", H0 + 9, "n1", value="w", version=5))
    assert snap.data["categories"]["agents"]["x"]["value"] == "v"


def test_snapshot_round_trip_restores_entries_and_tombstones() -> None:
    r = Replica("me")
    live = entry("x", H0 + 5, "n1", value="v", version=3, metadata={"m": 1})
    dead = entry("gone", H0 + 7, "n2", version=4, deleted=True)
    merged(r, live, dead)
    snap = r.snapshot(datetime(2024, 1, 1))
    other = Replica("other")
    got = other.snapshot_entries(snap)
    assert got is not None
    assert sorted(got, key=lambda e: e.key) == [
        StateEntry("agents", "gone", None, H0 + 7, "n2", 4, True, None),
        StateEntry("agents", "x", "v", H0 + 5, "n1", 3, False, {"m": 1}),
    ]
    merged(other, *got)
    assert other.digests() == r.digests()


def test_snapshot_with_a_wrong_hash_is_refused() -> None:
    r = Replica("me")
    merged(r, entry("x"))
    snap = r.snapshot(datetime(2024, 1, 1))
    snap.state_hash = "0" * 64
    assert r.snapshot_entries(snap) is None


def test_snapshot_entries_adds_unknown_categories() -> None:
    r = Replica("me")
    merged(r, entry("x", category="extra"))
    snap = r.snapshot(datetime(2024, 1, 1))
    other = Replica("other")
    other.sync_categories.pop("extra", None)
    assert other.snapshot_entries(snap) is not None
    assert other.sync_categories["extra"] == {}


def test_old_format_snapshot_is_ordered_by_its_timestamps() -> None:
    ts = datetime.fromtimestamp(T0).isoformat()
    data = {"categories": {"agents": {"a": {"value": 1, "timestamp": ts, "version": 7, "metadata": {"m": 2}},
                                      "b": {"value": 2, "timestamp": ts}}}}
    got = sorted(ss.snapshot_entries("old", data), key=lambda e: e.key)
    assert got == [StateEntry("agents", "a", 1, H0, "old", 7, False, {"m": 2}),
                   StateEntry("agents", "b", 2, H0, "old", 0, False, {})]


# -- the store's view -----------------------------------------------------------------------


def test_store_view_of_an_entry() -> None:
    s = LwwStore()
    s.store(entry("x", H0, value="v", version=3, metadata={"m": 1}), T0)
    s.store(entry("y", H0, value="w", version=2, metadata={}), T0)
    s.store(entry("z", H0, category="new"), T0)  # a category the store did not have
    stamp = datetime.fromtimestamp(T0).isoformat()
    assert s.categories["agents"]["x"] == {"value": "v", "timestamp": stamp, "version": 3, "metadata": {"m": 1}}
    assert s.categories["agents"]["y"]["metadata"] == {}
    assert s.categories["new"]["z"]["value"] == 1
    s.store(entry("x", H0 + 1, deleted=True, version=4), T0)
    assert "x" not in s.categories["agents"] and s.clocks[("agents", "x")][2] is True


def test_store_wire_entry() -> None:
    s = LwwStore()
    s.store(entry("x", H0 + 3, "n1", value="v", version=3, metadata={"m": 1}), T0)
    v = s.clocks[("agents", "x")]
    assert s.entry("agents", "x", v) == StateEntry("agents", "x", "v", H0 + 3, "n1", 3, False, {"m": 1})
    assert s.entry("agents", "x", v, H0) == StateEntry("agents", "x", "v", H0, "n1", 3, False, {"m": 1})
    s.store(entry("x", H0 + 4, "n1", version=4, deleted=True), T0)
    v = s.clocks[("agents", "x")]
    assert s.entry("agents", "x", v) == StateEntry("agents", "x", None, H0 + 4, "n1", 4, True, None)
    # a clock whose key the view no longer shows (nor its category): no value, no metadata
    s.store(entry("y", H0 + 5, "n1", value="w", version=2, metadata={"m": 3}), T0)
    v = s.clocks[("agents", "y")]
    del s.categories["agents"]
    assert s.entry("agents", "y", v) == StateEntry("agents", "y", None, H0 + 5, "n1", 2, False, None)


# -- tombstone collection -------------------------------------------------------------------


def test_collect_tombstones_before_the_cutoff_only() -> None:
    s = LwwStore()
    s.store(entry("alive", H0 + 1), 50.0)  # old, but not a tombstone
    s.store(entry("old", H0 + 9, "n1", deleted=True), 100.0)
    s.store(entry("older", H0 + 2, "n2", deleted=True), 90.0)
    s.store(entry("edge", H0 + 20, "n1", deleted=True), 150.0)  # exactly at the cutoff: kept
    s.store(entry("new", H0 + 30, "n1", deleted=True, category="rituals"), 200.0)
    assert s.collect_tombstones(150.0) == (2, H0 + 9)
    assert set(s.clocks) == {("agents", "alive"), ("agents", "edge"), ("rituals", "new")}
    # the digests are those of a store that never held the collected tombstones
    fresh = LwwStore()
    fresh.store(entry("alive", H0 + 1), 50.0)
    fresh.store(entry("edge", H0 + 20, "n1", deleted=True), 150.0)
    fresh.store(entry("new", H0 + 30, "n1", deleted=True, category="rituals"), 200.0)
    assert s.digests(lambda c: True) == fresh.digests(lambda c: True)
    assert s.collect_tombstones(0.0) == (0, 0)


def test_collect_tombstones_in_a_category_without_a_digest_yet() -> None:
    s = LwwStore()
    s.store(entry("old", H0, "n1", deleted=True, category="c2"), 1.0)
    del s.digest["c2"]
    assert s.collect_tombstones(10.0) == (1, H0)
    assert s.digest["c2"] == ss.entry_hash("c2", "old", H0, "n1", True)


# -- merge ----------------------------------------------------------------------------------


def test_merge_horizon_is_max_clock_offset_ahead() -> None:
    r = Replica("me")
    at_horizon = entry("edge", hlc_at(T0_MS + 60_000))
    beyond = entry("beyond", hlc_at(T0_MS + 60_001))
    beyond2 = entry("beyond2", hlc_at(T0_MS + 60_050))
    changed, refused = merged(r, at_horizon, beyond, beyond2)
    assert changed == 1 and refused == [beyond, beyond2]
    assert r.stats["rejected_clock"] == 2


def test_merge_skips_unshared_and_goes_on() -> None:
    r = Replica("me")
    r.shared = {"agents"}
    changed, _ = merged(r, entry("s", category="system"), entry("a"), entry("b"))
    assert changed == 2 and set(r.sync_categories["agents"]) == {"a", "b"}
    assert "s" not in r.sync_categories["system"]
    merged(r, entry("c", H0 + 1))
    assert r.stats["applied"] == 3 and r.state_version == 2


def test_merge_uses_the_replicas_strategy() -> None:
    r = Replica("me")
    r.conflict_resolution_strategy = "highest_version"
    merged(r, entry("x", H0 + 100, version=1, value="newer-clock"))
    changed, _ = merged(r, entry("x", H0 + 1, version=2, value="higher-version"))
    assert changed == 1 and r.get_local_state("agents", "x") == "higher-version"


# -- a step back of the wall clock ----------------------------------------------------------


def test_step_back_leaves_a_correction_of_exactly_clock_step() -> None:
    # 6 s of correction, a 5 s step: 1 s is left, which is skew (not under CLOCK_STEP)
    assert step_back(5000, -6000) == StepBack(5000, -1000, 0)


def test_step_back_beyond_the_correction_restamps_the_rest() -> None:
    assert step_back(5000, -2000) == StepBack(2000, 0, 3000)
    assert step_back(5000, 0) == StepBack(0, 0, 5000)


# -- the clock and the hashes ----------------------------------------------------------------


def test_hlc_tick_and_now_start_at_the_wall_clock_and_never_repeat() -> None:
    c = ss.HybridClock(lambda: T0_MS)
    assert c.tick(T0_MS) == H0
    assert c.tick(T0_MS) == H0 + 1
    c2 = ss.HybridClock(lambda: T0_MS)
    assert c2.now() == H0 and c2.now() == H0 + 1 and c2.now() == H0 + 2


def test_entry_hash_is_an_8_byte_little_endian_blake2b() -> None:
    h = hashlib.blake2b(b"agents\0k\0" + str(H0).encode() + b"\0n\0" + b"1", digest_size=8)
    assert ss.entry_hash("agents", "k", H0, "n", True) == int.from_bytes(h.digest(), "little")


def test_digests_are_lower_case_hex_of_the_xor() -> None:
    s = LwwStore()
    s.store(entry("x", H0, "n"), T0)
    s.store(entry("y", H0 + 1, "n"), T0)
    want = ss.entry_hash("agents", "x", H0, "n", False) ^ ss.entry_hash("agents", "y", H0 + 1, "n", False)
    d = s.digests(lambda c: True)
    assert d["agents"] == format(want, "x") and d["rituals"] == "0"


def test_a_tombstone_far_in_the_future_is_stored() -> None:
    s = LwwStore()
    far = hlc_at(10**15)  # beyond datetime's range: only a live entry needs a timestamp
    s.store(entry("x", far, deleted=True), T0)
    assert s.clocks[("agents", "x")][0] == far


# -- what a peer lacks -----------------------------------------------------------------------


def test_entries_newer_than_compares_hlc_then_node() -> None:
    r = Replica("me")
    merged(r, entry("same", H0, "b"), entry("older-there", H0 + 5, "b"), entry("node-tie", H0, "b"),
           entry("new", H0, "b"), entry("s", H0, "b", category="system"))
    r.shared = {"agents"}
    known = {"system": {}, "agents": {"same": [H0, "b"], "older-there": [H0 + 4, "z"], "node-tie": [H0, "a"]}}
    got = sorted(e.key for e in r.entries_newer_than(known))
    assert got == ["new", "node-tie", "older-there"]
    assert [e.key for e in r.entries_newer_than({"agents": {"same": [H0, "b"], "older-there": [H0 + 5, "b"],
                                                            "node-tie": [H0, "b"], "new": [H0, "b"]}})] == []


def test_differing_categories_missing_counts_as_empty() -> None:
    assert ss.differing_categories({}, {"agents": "0", "system": "ab"}, lambda c: True) == ["system"]
    assert ss.differing_categories({"agents": "1"}, {"agents": "2", "system": "3"}, {"agents"}.__contains__) == ["agents"]


def test_lacks_any() -> None:
    mine = {"agents": {"k": [H0, "a"]}}
    assert not ss.lacks_any(mine, {"agents": {"k": [H0, "a"]}})
    assert ss.lacks_any(mine, {"agents": {"k": [H0 + 1, "a"]}})
    assert ss.lacks_any(mine, {"system": {"k": [H0, "a"]}})  # a category we do not have


def test_delta_chunks_by_size_and_count() -> None:
    es = [entry(f"k{i}") for i in range(4)]
    size = {"k0": 5, "k1": 5, "k2": 10, "k3": 5}

    def size_of(e: StateEntry) -> int:
        return size[e.key]

    assert ss.delta_chunks(es[:2], size_of, 10) == [es[:2]]  # exactly max_bytes: one delta
    assert ss.delta_chunks([es[2], es[0], es[1]], size_of, 10) == [[es[2]], [es[0], es[1]]]
    assert ss.delta_chunks(es, size_of, 100, 3) == [es[:3], es[3:]]


def test_delta_messages_split_at_state_chunk_bytes() -> None:
    r = Replica("me")
    es = [entry(f"k{i}", value="x" * 600) for i in range(3)]  # ~1.9 kB: one delta
    msgs = r.delta_messages(es)
    assert len(msgs) == 1 and msgs[0][1].entries == es


# -- boundaries ------------------------------------------------------------------------------


def test_too_far_ahead_boundary() -> None:
    assert not ss.too_far_ahead(hlc_at(T0_MS + 60_000), T0_MS, 60.0)
    assert ss.too_far_ahead(hlc_at(T0_MS + 60_001), T0_MS, 60.0)


def test_rejoin_after_exactly_the_absence_is_no_rejoin() -> None:
    assert ss.rejoin_from(None, 100.0, 130.0, 30.0) is None
    assert ss.rejoin_from(None, 100.0, 130.5, 30.0) == 100.0


def test_notice_decision_boundaries() -> None:
    assert ss.notice_decision(5000, 0, T0_MS, 5000) is ss.Notice.STALE
    assert ss.notice_decision(5001, 0, T0_MS, 5000) is ss.Notice.CORRECT
    assert ss.notice_decision(1, 0, T0_MS, 0) is ss.Notice.CORRECT
    assert ss.notice_decision(ss.MAX_CLOCK_CORRECTION_MS, 0, T0_MS, 0) is ss.Notice.CORRECT
    assert ss.notice_decision(ss.MAX_CLOCK_CORRECTION_MS + 1, 0, T0_MS, 0) is ss.Notice.ABSURD
    assert ss.notice_decision(10_000, 0, 1, 0) is ss.Notice.CORRECT
    assert ss.notice_decision(10_000, 0, 0, 0) is ss.Notice.ABSURD


# -- replica counters, resync, restamp -------------------------------------------------------


def test_get_local_state_copies_every_category() -> None:
    r = Replica("me")
    merged(r, entry("x", value="v"))
    everything = r.get_local_state()
    assert everything["agents"]["x"]["value"] == "v" and everything["system"] == {}
    everything["agents"].clear()
    assert "x" in r.sync_categories["agents"]


def test_counters_add_up() -> None:
    r = Replica("me")
    merged(r, entry("a", deleted=True), entry("b", deleted=True), now=T0)
    assert r.collect(T0 + r.tombstone_ttl + 1) == 2
    merged(r, entry("c", H0 + 10, deleted=True), now=T0)
    r.collect(T0 + r.tombstone_ttl + 1)
    assert r.stats["tombstones_collected"] == 3 and r.collected_upto == H0 + 10
    r.repair_request({"agents": "1"})
    r.repair_request({"agents": "2"})
    assert r.stats["repairs"] == 2
    r.resync(T0, hlc_at(T0_MS + 5))
    r.resync(T0, hlc_at(T0_MS + 5))
    assert r.stats["full_resyncs"] == 2


def test_resync_drops_shared_entries_and_tombstones_stamped_before_the_horizon() -> None:
    r = Replica("me")
    r.shared = {"agents"}
    merged(r, entry("old", H0 - 1), entry("dead", H0 - 2, deleted=True), entry("edge", hlc_at(T0_MS + 1)),
           entry("s", H0 - 1, category="rituals"))
    r.shared = None
    merged(r, entry("s", H0 - 1, category="rituals"))
    r.shared = {"agents"}
    assert r.resync(T0, hlc_at(T0_MS)) == 2  # horizon: one ms after T0
    assert set(r.store.clocks) == {("agents", "edge"), ("rituals", "s")}


def test_restamp_moves_our_future_entries_and_finds_the_floor() -> None:
    r = Replica("me")
    now_ms = T0_MS
    r.store.store(entry("at-now", hlc_at(now_ms), "me"), T0)
    r.store.store(entry("mine", hlc_at(now_ms + 90_000), "me", value="v"), 123.0)
    r.store.store(entry("theirs", hlc_at(now_ms + 30_000), "peer"), T0)
    moved, floor = r.restamp(80_000, now_ms)
    assert [(e.key, e.hlc, e.value) for e in moved] == [("mine", hlc_at(now_ms + 10_000), "v")]
    assert r.store.clocks[("agents", "mine")][3] == 123.0  # the write's wall time is kept
    assert r.store.clocks[("agents", "at-now")][0] == hlc_at(now_ms)
    assert floor == hlc_at(now_ms + 30_000)  # the newest stamp within max_clock_offset
    assert r.stats["restamped"] == 1 and r.state_version == 1
    r.store.store(entry("mine2", hlc_at(now_ms + 90_000), "me"), T0)
    r.restamp(80_000, now_ms)
    assert r.stats["restamped"] == 3 and r.state_version == 2  # mine (still after now) and mine2


def test_restamp_floor_up_to_exactly_the_offset() -> None:
    r = Replica("me")
    merged(r, entry("theirs", hlc_at(T0_MS + 60_000), "peer"))
    assert r.restamp(1000, T0_MS) == ([], hlc_at(T0_MS + 60_000))
    r2 = Replica("me")
    r2.max_clock_offset = 120.0
    merged(r2, entry("theirs", hlc_at(T0_MS + 60_001), "peer"))
    r2.max_clock_offset = 60.0
    assert r2.restamp(1000, T0_MS) == ([], hlc_at(T0_MS))


def test_restamp_never_below_one() -> None:
    s = LwwStore()
    s.store(entry("x", hlc_at(10), "me"), 1.0)
    moved, _ = s.restamp_future("me", 5, 10**6, 0)
    assert [e.hlc for e in moved] == [1]


# -- snapshots: keys with a NUL, the old format through a replica ----------------------------


def test_snapshot_tombstone_key_may_hold_a_nul() -> None:
    r = Replica("me")
    merged(r, entry("a\0b", H0, deleted=True))
    got = Replica("o").snapshot_entries(r.snapshot(datetime(2024, 1, 1)))
    assert got is not None and [(e.category, e.key, e.deleted) for e in got] == [("agents", "a\0b", True)]


def test_old_format_snapshot_through_a_replica_is_the_snapshot_node_s() -> None:
    from spiralfast.records import StateSnapshot

    ts = datetime.fromtimestamp(T0).isoformat()
    cats = {"agents": {"a": {"value": 1, "timestamp": ts}}}
    snap = StateSnapshot(node_id="old", timestamp=datetime(2024, 1, 1), version=1, state_hash=ss.state_hash(cats),
                         data={"categories": cats})
    got = Replica("me").snapshot_entries(snap)
    assert got is not None and [e.node for e in got] == ["old"]


def test_hlc_first_tick_at_wall_zero_is_one() -> None:
    assert ss.HybridClock(lambda: 0).tick(0) == 1


def test_drop_after_the_view_was_replaced() -> None:
    r = Replica("me")
    merged(r, entry("x"))
    r.sync_categories = {}  # the old API may assign the view
    assert r.store.drop("agents", "x")[0] == H0
    assert ("agents", "x") not in r.store.clocks
