"""State synchronisation: model-based property test, clocks, tombstones, rejoin,
and convergence across processes over WebSocket and over Redis alone."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralfast import MeshConfig, MeshCore
from spiralfast.node.sync import StateSynchronizer
from spiralfast.schema import StateEntry
from spiralfast.testing import LocalMesh

from .procs import NodeProc
from .waiting import wait_until, wait_until_async

# -- model-based property test ---------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.integers(0, 99)),
        st.tuples(st.just("del"), st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.just(0)),
        st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(0, 1000), st.sampled_from(["ok", "dup", "lose"])),
        st.tuples(st.just("ae"), st.integers(0, 2), st.integers(0, 2), st.just(0)),
    ),
    max_size=60,
)


def _anti_entropy(a: StateSynchronizer, b: StateSynchronizer) -> None:
    cats = sorted(set(a.sync_categories) | set(b.sync_categories))
    a.apply_entries(b.entries_newer_than(a.clocks_for(cats)))
    b.apply_entries(a.entries_newer_than(b.clocks_for(cats)))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ops, st.randoms(use_true_random=False))
def test_replicas_converge_to_the_hlc_ordered_model(script: list[tuple[Any, ...]], rnd: random.Random) -> None:
    reps = [StateSynchronizer(f"n{i}") for i in range(3)]
    in_flight: list[list[tuple[int, StateEntry]]] = [[] for _ in reps]  # per receiver
    model: dict[str, tuple[int, str, Any, bool]] = {}  # key -> (hlc, node, value, deleted)

    def make_emit(i: int) -> Any:
        def emit(e: StateEntry) -> None:
            for j in range(len(reps)):
                if j != i:
                    in_flight[j].append((i, e))
            cur = model.get(e.key)
            if cur is None or (e.hlc, e.node) > (cur[0], cur[1]):
                model[e.key] = (e.hlc, e.node, e.value, e.deleted)

        return emit

    for i, r in enumerate(reps):
        r.emit = make_emit(i)
    for op, i, x, y in script:
        r = reps[i]
        if op == "set":
            r.update_local_state("agents", x, y)
        elif op == "del":
            r.delete_local_state("agents", x)
        elif op == "deliver" and in_flight[i]:
            k = x % len(in_flight[i])  # random order
            _, e = in_flight[i].pop(k) if y != "dup" else in_flight[i][k]
            if y != "lose":
                r.apply_entries([e])
        elif op == "ae" and i != x:
            _anti_entropy(reps[i], reps[x])
    # Whatever was lost, reordered or duplicated, anti-entropy rounds converge everyone.
    for _ in range(2):
        for a in range(3):
            for b in range(3):
                if a != b:
                    _anti_entropy(reps[a], reps[b])
    expected = {k: v[2] for k, v in model.items() if not v[3]}
    for r in reps:
        got = {k: e["value"] for k, e in r.sync_categories["agents"].items()}
        assert got == expected
    assert len({r.digests()["agents"] for r in reps}) == 1


# -- clocks, strategies, tombstones ----------------------------------------------------


def test_far_future_timestamp_rejected_and_counted() -> None:
    s = StateSynchronizer("me")
    future = int((time.time() + 3600) * 1000) << 16
    assert s.apply_entries([StateEntry("agents", "k", "evil", future, "skewed", 1)]) == 0
    assert s.get_local_state("agents", "k") is None and s.stats["rejected_clock"] == 1
    # within the allowed offset it is accepted, and our clock moves past it
    near = int((time.time() + 5) * 1000) << 16
    assert s.apply_entries([StateEntry("agents", "k", "ok", near, "skewed", 1)]) == 1
    s.update_local_state("agents", "k", "mine")
    assert s.get_local_state("agents", "k") == "mine"  # a later local write still wins


def test_highest_version_strategy() -> None:
    s = StateSynchronizer("me")
    s.conflict_resolution_strategy = "highest_version"
    now = int(time.time() * 1000) << 16
    s.apply_entries([StateEntry("agents", "k", "v9", now, "a", 9)])
    s.apply_entries([StateEntry("agents", "k", "v3-newer", now + 100, "b", 3)])
    assert s.get_local_state("agents", "k") == "v9"
    s.apply_entries([StateEntry("agents", "k", "v10", now - 100, "c", 10)])
    assert s.get_local_state("agents", "k") == "v10"


def test_tombstone_blocks_older_write_then_is_collected() -> None:
    s = StateSynchronizer("me")
    s.tombstone_ttl = 0.05
    old = int(time.time() * 1000) << 16
    s.apply_entries([StateEntry("agents", "k", 1, old, "x", 1)])
    s.delete_local_state("agents", "k")
    assert s.apply_entries([StateEntry("agents", "k", 1, old, "x", 1)]) == 0  # not undone
    assert s.get_local_state("agents", "k") is None
    time.sleep(0.1)  # time itself: the tombstone's 0.05 s TTL must lapse
    assert s.collect_tombstones() == 1 and s.collected_upto > old


# -- in-process mesh: restart catch-up, partition longer than tombstone_ttl ----------


def test_restarted_empty_node_receives_the_whole_state() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            for i in range(500):
                a.state.update_local_state("agents", f"k{i}", i)
            await wait_until(lambda: len(b.state.get_local_state("agents")) == 500, 'len(b.state.get_local_state("agents")) == 500')
            await b.stop()
            mesh.nodes.remove(b)
            fresh = await mesh.add(1)  # same id, empty state
            await wait_until(lambda: len(fresh.state.get_local_state("agents") or {}) == 500, 'len(fresh.state.get_local_state("agents") or {}) == 500')

    asyncio.run(main())


def test_long_partition_gets_full_resync_not_resurrection() -> None:
    async def main() -> None:
        async with LocalMesh(2, heartbeat_interval=0.05, sync_interval=0.05, tombstone_ttl=0.2) as mesh:
            a, b = mesh.nodes
            a.state.update_local_state("agents", "doomed", 1)
            a.state.update_local_state("agents", "kept", 1)
            await wait_until(lambda: b.state.get_local_state("agents", "doomed") == 1, 'b.state.get_local_state("agents", "doomed") == 1')
            mesh.hub.partition(b)
            a.state.delete_local_state("agents", "doomed")
            b.state.update_local_state("agents", "written_while_away", 2)
            await wait_until(lambda: a.state.stats["tombstones_collected"] >= 1, 'a.state.stats["tombstones_collected"] >= 1', timeout=5)
            mesh.hub.heal(b)
            await wait_until(lambda: a.state.get_local_state("agents", "written_while_away") == 2, 'a.state.get_local_state("agents", "written_while_away") == 2')
            await wait_until(lambda: b.state.get_local_state("agents", "doomed") is None, 'b.state.get_local_state("agents", "doomed") is None')
            # Converged: any resurrection would have to come through the sync that made them equal.
            await wait_until(lambda: a.state.digests() == b.state.digests(), 'a.state.digests() == b.state.digests()')
            assert a.state.get_local_state("agents", "doomed") is None  # not resurrected
            assert b.state.get_local_state("agents", "kept") == 1
            assert b.state.stats["full_resyncs"] == 1

    asyncio.run(main())


def test_lost_delta_healed_by_anti_entropy() -> None:
    async def main() -> None:
        async with LocalMesh(3, sync_interval=0.1) as mesh:
            a = mesh.nodes[0]
            a.state.emit = lambda entry: None  # this change's delta is lost
            a.state.update_local_state("system", "x", 1)
            a.state.emit = None
            await wait_until(lambda: all(n.state.get_local_state("system", "x") == 1 for n in mesh.nodes), 'all(n.state.get_local_state("system", "x") == 1 for n in mesh.nodes)', timeout=5)
            assert any(n.state.stats["repairs"] for n in mesh.nodes)

    asyncio.run(main())


# -- across processes -----------------------------------------------------------------


async def test_converges_across_processes_over_websocket() -> None:
    a = NodeProc("A")
    b = NodeProc("B", "--peer", a.url)
    c = NodeProc("C", "--peer", b.url)
    procs = [a, b, c]
    try:
        await wait_for_all(procs, lambda st: True)
        for i in range(50):
            await a.query("state_set", category="agents", key=f"k{i}", value={"i": i})
        await c.query("state_set", category="rituals", key="r", value="from-c")
        await c.query("state_delete", category="agents", key="k0")

        async def agree() -> bool:
            states = [await p.query("state") for p in procs]
            return all(s == states[0] for s in states) and len(states[0]["agents"]) == 49

        await poll(agree)
        snap = await a.query("state")
        assert snap["rituals"]["r"]["value"] == "from-c" and "k0" not in snap["agents"]
        c.kill9()
        c.start()  # restarts empty and catches up
        await poll(lambda: _has(c, "agents", "k49"))
        assert await c.query("state") == await a.query("state")
    finally:
        for p in procs:
            p.stop()


async def _has(p: NodeProc, cat: str, key: str) -> bool:
    return await p.query("state", category=cat, key=key) is not None


async def wait_for_all(procs: list[NodeProc], _: Any) -> None:
    ids = {p.node_id for p in procs}
    await poll(lambda: _all_know(procs, ids))


async def _all_know(procs: list[NodeProc], ids: set[str]) -> bool:
    for p in procs:
        if await p.node_ids() != ids:
            return False
    return True


async def poll(cond: Any, timeout: float = 15, what: str = "the nodes' states agree") -> None:
    await wait_until_async(cond, what, timeout=timeout, interval=0.1)


async def test_converges_over_redis_alone() -> None:
    from .test_redis_link import REDIS_URL, _redis_or_fail

    r = await _redis_or_fail()
    await r.aclose()
    ch = "st_" + uuid.uuid4().hex[:8]
    cfg = dict(enable_websocket=False, redis_url=REDIS_URL, ritual_channel=ch, heartbeat_interval=0.2,
               sync_interval=0.2, shared_categories=["agents"])
    a = MeshCore(MeshConfig(node_id="sa", **cfg))  # type: ignore[arg-type]
    b = MeshCore(MeshConfig(node_id="sb", **cfg))  # type: ignore[arg-type]
    await a.start()
    a.state.update_local_state("agents", "before_b", 1)  # b must catch up on this
    await b.start()
    try:
        await wait_until(lambda: "sb" in a.nodes and "sa" in b.nodes, '"sb" in a.nodes and "sa" in b.nodes')
        a.state.update_local_state("agents", "x", 1)
        a.state.update_local_state("user_data", "private", 1)
        b.state.update_local_state("agents", "y", 2)
        await wait_until(lambda: b.state.get_local_state("agents", "before_b") == 1, 'b.state.get_local_state("agents", "before_b") == 1', timeout=5)
        await wait_until(lambda: b.state.get_local_state("agents", "x") == 1 and a.state.get_local_state("agents", "y") == 2, 'b.state.get_local_state("agents", "x") == 1 and a.state.get_local_state("agents", "y") == 2')
        b.state.delete_local_state("agents", "x")
        await wait_until(lambda: a.state.get_local_state("agents", "x") is None, 'a.state.get_local_state("agents", "x") is None')
        assert b.state.get_local_state("user_data", "private") is None
    finally:
        await b.stop()
        await a.stop()




def test_large_state_travels_in_chunks_and_a_too_large_value_is_refused() -> None:
    import pytest

    from spiralfast import MeshConfig, MeshCore, StateTooLarge

    async def main() -> None:
        base = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5, sync_interval=0.3)
        a = MeshCore(MeshConfig(node_id="big-a", **base))  # type: ignore[arg-type]
        await a.start()
        try:
            for i in range(1000):
                a.state.update_local_state("agents", f"k{i}", "x" * 10_000)
            for i in range(100):
                a.state.update_local_state("system", f"m{i}", "y" * 1_000_000)
            with pytest.raises(StateTooLarge, match="MAX_STATE_ENTRY_SIZE"):
                a.state.update_local_state("system", "huge", "z" * 9_000_000)
            assert a.state.get_local_state("system", "huge") is None  # refused before storing
            b = MeshCore(MeshConfig(node_id="big-b", peers=[a.local_node.websocket_endpoint or ""], **base))  # type: ignore[arg-type]
            await b.start()
            try:
                def complete() -> bool:
                    return (len(b.state.get_local_state("agents") or {}) == 1000
                            and len(b.state.get_local_state("system") or {}) == 100)

                early: list[str] = []

                def watch() -> bool:  # "synced" only once everything is here
                    if b.state.sync_status.value == "synced" and not complete():
                        early.append(f"synced with {len(b.state.get_local_state('agents') or {})} keys")
                    return complete() and b.state.sync_status.value == "synced"

                await wait_until(watch, 'watch', timeout=60)
                assert not early, early[:3]
                a.state.update_local_state("agents", "after", 1)  # small keys still flow afterwards
                await wait_until(lambda: b.state.get_local_state("agents", "after") == 1, 'b.state.get_local_state("agents", "after") == 1')
                assert "big-a" in b.nodes and b.outbox.links  # the link was never torn down
            finally:
                await b.stop()
        finally:
            await a.stop()

    asyncio.run(main())


def test_whole_state_answers_are_bounded() -> None:
    """Review finding: an insider on a bus naming 300 invented senders got 300 paced
    whole-state answers going at once (RSS 39 -> 808 MB)."""
    from spiralfast import schema
    from spiralfast.node.host import MAX_PACED_REPLIES

    class Link:
        def __init__(self, bus: bool) -> None:
            self.shared_bus, self.paused, self.closed, self.sent = bus, True, False, 0  # paused: answers wait

        def send_direct(self, *a: Any) -> None:
            self.sent += 1

        def send_frame(self, frame: bytes) -> bool:
            self.sent += 1
            return True

    async def main() -> None:
        async with LocalMesh(1) as mesh:
            a = mesh.nodes[0]
            for i in range(50):
                a.state.update_local_state("agents", f"k{i}", "x" * 10_000)
            msgs = a.state.on_request(schema.StateRequest({"agents": {}}))
            assert len(msgs) > 1
            bus = Link(True)
            for i in range(300):
                a.host.reply(bus, f"forged-{i}", msgs)
            assert not a.host.replying and a.counters["state_replies_deferred"] == 300
            ws = [Link(False) for _ in range(50)]
            for i, lk in enumerate(ws):
                a.host.reply(lk, f"peer-{i}", msgs)
            assert len(a.host.replying) == MAX_PACED_REPLIES
            for lk in ws:
                lk.paused = False
            await wait_until(lambda: not a.host.replying, 'not a.host.replying')
            assert sum(lk.sent for lk in ws) == MAX_PACED_REPLIES * len(msgs)

    asyncio.run(main())
