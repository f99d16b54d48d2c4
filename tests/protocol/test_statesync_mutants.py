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
