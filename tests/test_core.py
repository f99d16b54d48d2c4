"""The drop-in API: MeshCore over the in-process link (spiralfast.testing), and local state."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Any

import pytest

from spiralfast import (
    EventBus,
    EventType,
    MeshConfig,
    MeshCore,
    MeshNode,
    MeshRegistry,
    NodeStatus,
    StateSnapshot,
    StateSynchronizer,
    SyncState,
    schema,
)
from spiralfast.codec import decode_frame
from spiralfast.protocol.membership import SILENCE_FACTOR
from spiralfast.testing import LocalMesh

from .conftest import run_on
from .waiting import wait_until


async def fence(sender: MeshCore, receivers: list[MeshCore]) -> None:
    """Broadcast a marker from ``sender`` and wait until every receiver handled it: what
    the sender sent before it on the same links has arrived by then (links are FIFO), so
    a negative checked after it had its chance to fail."""
    mark = "fence-" + uuid.uuid4().hex[:8]
    seen: set[str] = set()
    for r in receivers:
        r.register_event_handler(mark, lambda env, r=r: seen.add(r.node_id))
    await sender.broadcast_event(mark, {})
    want = {r.node_id for r in receivers}
    await wait_until(lambda: seen == want, f"{mark} from {sender.node_id} reached {sorted(want)}")


def isolated(**kw: Any) -> MeshConfig:
    return MeshConfig(enable_redis=False, enable_websocket=False, **kw)


def test_attributes_before_start() -> None:
    core = MeshCore(isolated())
    assert core.node_id and len(core.node_id) == 36  # uuid4 string
    assert core.config.node_id is None
    assert core.nodes == {} and core.event_handlers == {} and core.running is False
    ln = core.local_node
    assert ln.name == "codex_node_" + core.node_id[:8] and ln.status == NodeStatus.INITIALIZING
    assert ln.capabilities == ["ritual_processing", "agent_hosting", "state_sync"]
    assert (ln.recursion_depth, ln.entropy_level) == (0, 0.0) and "mesh_version" in ln.metadata
    assert isinstance(core.event_bus, EventBus) and isinstance(core.registry, MeshRegistry)
    assert isinstance(core.state, StateSynchronizer) and core.state.mesh_core is core
    assert MeshCore(isolated(node_id="fixed")).node_id == "fixed"


def test_start_stop_idempotent_and_status(loop_kind: str) -> None:
    async def main() -> None:
        core = MeshCore(isolated())
        await core.start()
        await core.start()
        assert core.running and core.local_node.status == NodeStatus.ACTIVE
        assert core.nodes[core.node_id] is core.local_node
        await asyncio.sleep(0.05)  # uptime is measured: let some pass
        st = core.get_mesh_status()
        for k in ("node_id", "status", "connected_nodes", "total_recursion_depth", "average_entropy",
                  "uptime", "mesh_name", "nodes"):
            assert k in st
        assert st["status"] == "active" and st["connected_nodes"] == 1
        assert 0.04 < st["uptime"] < 5  # seconds since start
        assert st["nodes"][0]["node_id"] == core.node_id
        await core.stop()
        await core.stop()
        assert core.running is False and core.local_node.status == NodeStatus.DISCONNECTED
        assert core.event_bus.running is False and core.state.running is False
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == []

    run_on(loop_kind, main)


def test_unreachable_redis_warns_and_runs(caplog: Any) -> None:
    async def main() -> MeshCore:
        core = MeshCore(MeshConfig(enable_websocket=False, redis_url="redis://127.0.0.1:1"))
        await core.start()
        assert core.running
        await core.stop()
        return core

    with caplog.at_level(logging.WARNING, logger="spiralfast"):
        core = asyncio.run(main())
    assert core.config.enable_redis is False
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


def test_busy_port_warns_and_runs(caplog: Any) -> None:
    async def main() -> tuple[MeshCore, MeshCore]:
        a = MeshCore(MeshConfig(enable_redis=False, websocket_port=0))
        await a.start()
        b = MeshCore(MeshConfig(enable_redis=False, websocket_port=a.config.websocket_port))
        await b.start()
        assert b.running
        await b.stop()
        await a.stop()
        return a, b

    with caplog.at_level(logging.WARNING, logger="spiralfast"):
        a, b = asyncio.run(main())
    assert b.config.enable_websocket is False and a.config.enable_websocket is True
    assert any("unavailable" in r.getMessage() for r in caplog.records)


def test_broadcast_reaches_others_not_sender(loop_kind: str) -> None:
    async def main() -> None:
        async with LocalMesh(3) as mesh:
            a, b, c = mesh.nodes
            got: list[tuple[str, dict[str, Any]]] = []
            for n in mesh.nodes:
                n.register_event_handler("ping", lambda env, n=n: got.append((n.node_id, env)))
            await a.broadcast_event("ping", {"k": 1})
            await wait_until(lambda: len(got) == 2, 'len(got) == 2')
            await fence(a, [b, c])
            assert sorted(x for x, _ in got) == ["node-1", "node-2"]  # never the sender, never twice
            env = got[0][1]
            assert env["type"] == "ping" and env["source_node"] == "node-0" and env["data"] == {"k": 1}
            datetime.fromisoformat(env["timestamp"])
            assert "target_node" not in env

    run_on(loop_kind, main)


def test_send_to_node_direct_and_unknown(caplog: Any) -> None:
    async def main() -> None:
        async with LocalMesh(3) as mesh:
            a, b, c = mesh.nodes
            got: list[str] = []
            for n in mesh.nodes:
                n.register_event_handler("d", lambda env, n=n: got.append(n.node_id))
            assert await a.send_to_node("node-2", "d", {"x": 1}) is True
            await wait_until(lambda: got == ["node-2"], 'got == ["node-2"]')
            with caplog.at_level(logging.WARNING, logger="spiralfast"):
                assert await a.send_to_node("ghost", "d", {}) is False
            assert "ghost" in caplog.text
            await fence(a, [mesh.nodes[1], mesh.nodes[2]])
            assert got == ["node-2"]

    asyncio.run(main())


def test_direct_envelope_has_target_and_async_handler_works() -> None:
    async def main() -> dict[str, Any]:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            box: list[dict[str, Any]] = []

            async def h(env: dict[str, Any]) -> None:
                await asyncio.sleep(0)  # an async handler that suspends (what is under test)
                box.append(env)

            b.register_event_handler("d", h)
            await a.send_to_node("node-1", "d", {"x": 1})
            await wait_until(lambda: box != [], 'box != []')
            return box[0]

    env = asyncio.run(main())
    assert env["target_node"] == "node-1" and env["source_node"] == "node-0"


def test_failing_handler_does_not_stop_others() -> None:
    async def main() -> tuple[list[str], int]:
        async with LocalMesh(3) as mesh:
            a, b, c = mesh.nodes
            got: list[str] = []
            b.register_event_handler("e", lambda env: 1 / 0)
            b.register_event_handler("e", lambda env: got.append("b"))
            c.register_event_handler("e", lambda env: got.append("c"))
            await a.broadcast_event("e", {})
            await wait_until(lambda: len(got) == 2, 'len(got) == 2')
            return got, b.counters["handler_errors"]

    got, errors = asyncio.run(main())
    assert sorted(got) == ["b", "c"] and errors == 1


def test_remote_nodes_appear_by_themselves_and_leave() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            assert set(a.nodes) == {"node-0", "node-1"}
            rb = a.nodes["node-1"]
            assert rb.name == "codex_node_node-1" and "state_sync" in rb.capabilities
            assert a.registry.get_node("node-1") is rb  # one table: the registry's record is the node's
            events: list[dict[str, Any]] = []
            a.register_event_handler("node_unregister", events.append)
            c = await mesh.add(2)
            await wait_until(lambda: "node-2" in a.nodes and "node-2" in b.nodes, '"node-2" in a.nodes and "node-2" in b.nodes')
            await c.stop()
            await wait_until(lambda: "node-2" not in a.nodes and "node-2" not in b.nodes, '"node-2" not in a.nodes and "node-2" not in b.nodes', timeout=2)
            await wait_until(lambda: any(e["data"]["node_id"] == "node-2" for e in events), 'any(e["data"]["node_id"] == "node-2" for e in events)')
            assert a.registry.get_node("node-2") is None

    asyncio.run(main())


def test_silent_node_removed_after_three_heartbeats() -> None:
    async def main() -> None:
        async with LocalMesh(2, heartbeat_interval=0.1) as mesh:
            a, b = mesh.nodes
            lost: list[dict[str, Any]] = []
            a.register_event_handler("node_unregister", lost.append)
            # Silence b without a leave: cancel its heartbeats and cut the link.
            mesh.hub.partition(b)  # no leave, no link: b falls silent
            link = a.outbox.links.get("node-1")
            assert link is None
            t0 = asyncio.get_running_loop().time()
            await wait_until(lambda: "node-1" not in a.nodes, '"node-1" not in a.nodes', timeout=20)
            elapsed = asyncio.get_running_loop().time() - t0
            # The silence rule: SILENCE_FACTOR intervals of 0.1 s since the last heartbeat,
            # which came at most one interval before the cut: never before (SILENCE_FACTOR - 1)
            # intervals (margin 0.05 s); by SILENCE_FACTOR intervals plus the half-interval
            # sweep, with a margin of 1.5 s for a shared, noisy machine.
            hb = 0.1
            assert (SILENCE_FACTOR - 1) * hb - 0.05 <= elapsed <= SILENCE_FACTOR * hb + hb / 2 + 1.5, elapsed
            await wait_until(lambda: bool(lost), 'bool(lost)')
            assert lost[0]["data"]["reason"] == "silent"

    asyncio.run(main())


def test_heartbeats_refresh_registry() -> None:
    async def main() -> None:
        async with LocalMesh(2, heartbeat_interval=0.05) as mesh:
            a, b = mesh.nodes
            b.local_node.recursion_depth = 7
            b.local_node.status = NodeStatus.RITUAL_MODE
            await wait_until(lambda: a.nodes["node-1"].recursion_depth == 7, 'a.nodes["node-1"].recursion_depth == 7')
            assert a.registry.get_node("node-1").status == NodeStatus.RITUAL_MODE  # type: ignore[union-attr]
            assert a.registry.get_node_metrics("node-1")["heartbeat_count"] >= 1  # type: ignore[index]

    asyncio.run(main())


def test_register_and_unregister_node_announce() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            seen: list[dict[str, Any]] = []
            b.register_event_handler("node_register", seen.append)
            b.register_event_handler("node_unregister", seen.append)
            ext = MeshNode("ext", "external", NodeStatus.ACTIVE, ["x"], 0, 0.0, datetime.now(), {})
            await a.register_node(ext)
            assert a.nodes["ext"] is ext and a.registry.get_node("ext") is ext
            await a.unregister_node("ext")
            assert "ext" not in a.nodes
            # a node announces only itself (issue 23, SECURITY.md): b refuses a's word about "ext"...
            await wait_until(lambda: b.get_mesh_status()["counters"]["reserved_refused"] == 2, "both refused")
            assert seen == []
            # ... and takes a's announcements about itself (what register_node/unregister_node send)
            await a.register_node(a.local_node)
            await a.broadcast_event("node_unregister", {"node_id": a.node_id})
            await wait_until(lambda: len(seen) == 2, 'len(seen) == 2')
            assert seen[0]["data"]["node_id"] == a.node_id and seen[0]["data"]["name"] == a.local_node.name
            assert seen[1]["data"] == {"node_id": a.node_id}

    asyncio.run(main())


def test_mesh_bus_reaches_every_node_and_target() -> None:
    async def main() -> None:
        async with LocalMesh(3) as mesh:
            got: list[tuple[str, Any]] = []
            for n in mesh.nodes:
                n.event_bus.subscribe(EventType.AGENT_SPAWN, lambda ev, n=n: got.append((n.node_id, ev)))
            a = mesh.nodes[0]
            eid = await a.event_bus.publish(EventType.AGENT_SPAWN, {"a": 1}, priority=6, metadata={"m": 1})
            await wait_until(lambda: len(got) == 3, 'len(got) == 3')
            assert sorted(x for x, _ in got) == ["node-0", "node-1", "node-2"]
            assert all(ev.event_id == eid and ev.priority == 6 and ev.metadata == {"m": 1} for _, ev in got)
            got.clear()
            await a.event_bus.publish(EventType.AGENT_SPAWN, {}, target_node="node-2")
            await wait_until(lambda: len(got) == 1, 'len(got) == 1')
            await a.event_bus.publish(EventType.AGENT_SPAWN, {"fence": 1})  # after it, to everyone
            await wait_until(lambda: len([ev for _, ev in got if ev.data.get("fence")]) == 3, "the bus fence everywhere")
            assert [x for x, ev in got if not ev.data.get("fence")] == ["node-2"]

    asyncio.run(main())


def test_standalone_bus_stays_local_and_nodes_without_hub_are_isolated() -> None:
    async def main() -> None:
        a = MeshCore(isolated(node_id="a"))
        b = MeshCore(isolated(node_id="b"))
        await a.start()
        await b.start()
        got: list[Any] = []
        b.register_event_handler("x", got.append)
        await a.broadcast_event("x", {})
        # No hub: nothing could carry it (no link at all), so no wait can change the answer.
        assert not a.outbox.links and not b.outbox.links
        assert got == [] and set(a.nodes) == {"a"}
        await a.stop()
        await b.stop()

    asyncio.run(main())


# -- local state -------------------------------------------------------------------


def test_state_defaults_and_local_api() -> None:
    s = StateSynchronizer("n")
    assert (s.node_id, s.mesh_core, s.state_version, s.sync_status) == ("n", None, 0, SyncState.SYNCED)
    assert s.conflict_resolution_strategy == "latest_wins" and s.running is False and s.sync_task is None
    assert list(s.sync_categories) == ["agents", "rituals", "system", "user_data"]
    assert s.node_states == {}
    s.update_local_state("agents", "a1", {"hp": 3}, metadata={"who": "me"})
    assert s.state_version == 1 and s.sync_status == SyncState.OUT_OF_SYNC
    e = s.sync_categories["agents"]["a1"]
    assert set(e) == {"value", "timestamp", "version", "metadata"}
    assert e["value"] == {"hp": 3} and e["version"] == 1 and e["metadata"] == {"who": "me"}
    datetime.fromisoformat(e["timestamp"])
    s.update_local_state("agents", "a1", {"hp": 4})
    assert s.sync_categories["agents"]["a1"]["version"] == 2
    assert s.get_local_state("agents", "a1") == {"hp": 4}
    assert s.get_local_state("agents", "missing") is None
    assert s.get_local_state("nope") is None
    assert set(s.get_local_state("agents")) == {"a1"}
    assert set(s.get_local_state()) == {"agents", "rituals", "system", "user_data"}
    s.update_local_state("new_cat", "k", 1)
    assert s.get_local_state("new_cat", "k") == 1
    assert s.delete_local_state("agents", "a1") is True
    assert s.get_local_state("agents", "a1") is None and s.state_version == 4
    assert s.delete_local_state("agents", "a1") is False
    summary = s.get_state_summary()
    assert summary["new_cat"] == {"count": 1, "keys": ["k"]}
    st = s.get_sync_status()
    for k in ("node_id", "sync_status", "state_version", "categories", "total_items", "known_nodes",
              "last_sync", "conflict_resolution"):
        assert k in st
    assert st["total_items"] == 1 and st["sync_status"] == "out_of_sync"


def test_summary_keys_first_ten() -> None:
    s = StateSynchronizer("n")
    for i in range(15):
        s.update_local_state("agents", f"k{i:02}", i)
    assert s.get_state_summary()["agents"] == {"count": 15, "keys": [f"k{i:02}" for i in range(10)]}


def test_snapshot_round_trip_and_apply() -> None:
    async def main() -> None:
        a = StateSynchronizer("a")
        a.update_local_state("agents", "x", 1)
        a.update_local_state("system", "y", {"z": [1, 2]})
        snap = await a.create_snapshot()
        assert isinstance(snap, StateSnapshot) and snap.node_id == "a" and snap.version == 2
        assert set(snap.data) >= {"categories", "version"} and snap.state_hash
        again = StateSnapshot.from_dict(snap.to_dict())
        b = StateSynchronizer("b")
        assert await b.apply_snapshot(again) is True
        assert b.get_local_state("system", "y") == {"z": [1, 2]} and b.sync_status == SyncState.SYNCED
        assert "a" in b.node_states
        # a newer local write is not overwritten by the older snapshot
        b.update_local_state("agents", "x", 2)
        assert await b.apply_snapshot(again) is True
        assert b.get_local_state("agents", "x") == 2
        # tampered snapshot refused
        bad = StateSnapshot.from_dict(snap.to_dict())
        bad.data["categories"]["agents"]["x"]["value"] = 99
        assert await b.apply_snapshot(bad) is False
        resp = await a.handle_sync_request({"requesting_node": "b"})
        c = StateSynchronizer("c")
        assert await c.handle_sync_response(resp) is True
        assert c.get_local_state("agents", "x") == 1
        assert await c.handle_sync_response({"snapshot": {"junk": 1}}) is False
        assert await a.sync_with_node("b") is False  # no mesh

    asyncio.run(main())


def test_state_sync_start_stop_idempotent() -> None:
    async def main() -> None:
        s = StateSynchronizer("n")
        await s.start()
        await s.start()
        assert s.running and s.sync_task is not None
        await s.stop()
        await s.stop()
        assert not s.running

    asyncio.run(main())


@pytest.mark.parametrize("n", [2, 3])
def test_state_converges_over_loopback(n: int) -> None:
    async def main() -> None:
        async with LocalMesh(n, shared_categories=["agents", "system"]) as mesh:
            a = mesh.nodes[0]
            a.state.update_local_state("agents", "k", 1)
            a.state.update_local_state("user_data", "private", 1)
            await wait_until(lambda: all(x.state.get_local_state("agents", "k") == 1 for x in mesh.nodes), 'all(x.state.get_local_state("agents", "k") == 1 for x in mesh.nodes)')
            mesh.nodes[-1].state.update_local_state("agents", "k", 2)
            await wait_until(lambda: all(x.state.get_local_state("agents", "k") == 2 for x in mesh.nodes), 'all(x.state.get_local_state("agents", "k") == 2 for x in mesh.nodes)')
            mesh.nodes[1].state.delete_local_state("agents", "k")
            await wait_until(lambda: all(x.state.get_local_state("agents", "k") is None for x in mesh.nodes), 'all(x.state.get_local_state("agents", "k") is None for x in mesh.nodes)')
            # The later 'agents' changes reached every node: a 'user_data' change made before
            # them would have too, had it been sent.
            assert all(x.state.get_local_state("user_data", "private") is None for x in mesh.nodes[1:])

    asyncio.run(main())


def test_dedupe_window_is_bounded_and_fifo() -> None:
    from spiralfast.fastpath import Dedupe

    d = Dedupe(4)
    assert all(d.first_time(bytes([i])) for i in range(4))
    assert not d.first_time(b"\x00")
    assert d.first_time(b"\x09")  # evicts 0, the oldest
    assert d.first_time(b"\x00") and not d.first_time(b"\x02")
    assert len(d) == 4


def test_oversized_event_is_refused_with_a_clear_error_and_the_node_goes_on() -> None:
    from spiralfast.errors import FrameError

    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            got: list[Any] = []
            b.register_event_handler("e", got.append)
            with pytest.raises(FrameError, match="exceeds"):
                await a.broadcast_event("e", {"blob": "x" * (9 * 1024 * 1024)})
            with pytest.raises(FrameError):
                await a.send_to_node("node-1", "e", {"blob": "x" * (9 * 1024 * 1024)})
            await a.broadcast_event("e", {"ok": 1})
            assert await a.send_to_node("node-1", "e", {"ok": 2})
            await wait_until(lambda: len(got) == 2, 'len(got) == 2')
            assert [g["data"] for g in got] == [{"ok": 1}, {"ok": 2}]

    asyncio.run(main())


def test_replacing_the_event_handlers_dict_is_honoured() -> None:
    from collections import defaultdict

    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            got: list[Any] = []
            b.event_handlers = defaultdict(list, {"e": [got.append]})  # old code may do this
            await a.broadcast_event("e", {"n": 1})
            await wait_until(lambda: len(got) == 1, 'len(got) == 1')
            assert b.event_handlers["e"] == [got.append]

    asyncio.run(main())


def test_internal_protocol_events_stay_out_of_logs_and_link_listeners_hear_links() -> None:
    async def main() -> None:
        async with LocalMesh(2) as mesh:
            a, b = mesh.nodes
            seen: list[Any] = []
            b.add_event_listener(seen.append)
            got: list[Any] = []
            b.register_event_handler("_sf.probe", got.append)
            await a.broadcast_event("_sf.probe", {"x": 1})
            await a.broadcast_event("visible", {"x": 2})
            await wait_until(lambda: len(got) == 1 and any(e["type"] == "visible" for e in seen), 'len(got) == 1 and any(e["type"] == "visible" for e in seen)')
            types = {getattr(e, "event_type", None) or e["type"] for e in list(a.recent_events) + list(b.recent_events)}
            assert "_sf.probe" not in types and "visible" in types  # delivered, never logged
            assert b.get_mesh_status()["router"]["bytes_in"] > 0  # (once stuck at 0)
            assert all(e["type"] != "_sf.probe" for e in seen)
            changes: list[tuple[str, bool]] = []
            a.add_link_listener(lambda peer, up: changes.append((peer, up)))
            mesh.hub.partition(b)
            await wait_until(lambda: (b.node_id, False) in changes, '(b.node_id, False) in changes')

    asyncio.run(main())


def test_stop_returns_promptly_when_redis_is_unreachable() -> None:
    async def main() -> None:
        for _ in range(3):
            m = MeshCore(MeshConfig(redis_url="redis://127.0.0.1:1", websocket_port=0, node_id="nr"))
            await m.start()
            await asyncio.wait_for(m.stop(), 10)  # once hung: a swallowed cancellation
            assert not m.running

    asyncio.run(main())


def _lossy_pair_run(retransmit_bytes: int) -> tuple[list[int], dict[str, Any], list[Any], MeshCore]:
    async def main() -> tuple[list[int], dict[str, Any], list[Any], MeshCore]:
        async with LocalMesh(2, retransmit_buffer_bytes=retransmit_bytes, heartbeat_interval=0.4) as mesh:
            a, b = mesh.nodes
            got: list[int] = []
            alerts: list[Any] = []
            b.register_event_handler("seq", lambda env: got.append(env["data"]["i"]))
            b.register_event_handler("system_alert", alerts.append)
            link = a.outbox.links[b.node_id]
            send, seen = link.send_frame, [0]

            def lossy(frame: bytes) -> bool:  # the network loses two frames of events
                msgs = decode_frame(frame)
                if any(m.kind == schema.KIND_EVENT and not m.target for m in msgs):
                    seen[0] += 1
                    if seen[0] in (3, 4):
                        return True
                return send(frame)

            link.send_frame = lossy
            for i in range(6):
                await a.broadcast_event("seq", {"i": i})
                await asyncio.sleep(0)  # one frame per event
            await a.send_to_node(b.node_id, "seq", {"i": 99})  # direct ids do not count as gaps
            if retransmit_bytes:
                await wait_until(lambda: sorted(got) == [0, 1, 2, 3, 4, 5, 99], 'sorted(got) == [0, 1, 2, 3, 4, 5, 99]', timeout=10)
            else:
                await wait_until(lambda: b.get_mesh_status()["counters"]["events_lost"] == 2 and bool(alerts), 'b.get_mesh_status()["counters"]["events_lost"] == 2 and bool(alerts)', timeout=10)
            return got, b.get_mesh_status(), alerts, a
    return asyncio.run(main())


def test_lost_broadcasts_are_repaired_from_the_origins_buffer() -> None:
    got, st, alerts, a = _lossy_pair_run(64 * 1024 * 1024)
    assert sorted(got) == [0, 1, 2, 3, 4, 5, 99]  # each exactly once, the lost two repaired
    assert st["counters"]["events_lost"] == 0 and st["counters"]["events_missing"] == 0
    assert st["counters"]["repair_requests"] >= 1 and a.counters["repaired_sent"] == 2
    assert alerts == []


def test_what_cannot_be_repaired_is_counted_and_announced_never_silent() -> None:
    got, st, alerts, a = _lossy_pair_run(0)  # no retransmit buffer: the origin has nothing to resend
    assert sorted(got) == [0, 1, 4, 5, 99]
    assert st["counters"]["events_lost"] == 2 and list(st["delivery"]["lost"].values()) == [2]
    assert st["delivery"]["by_node"] == {a.node_id: {"lost": 2, "missing": 0}}  # named for operators
    assert alerts[0]["data"]["details"]["lost"] == 2


def test_a_dead_origins_tail_seen_by_some_is_counted_lost_by_the_others() -> None:
    """A node dies after its last events reached b but not c (unsent data at the kill):
    b tells c the last sequence it saw, so c counts what it never got (chaos finding)."""

    async def main() -> None:
        async with LocalMesh(3, heartbeat_interval=0.2) as mesh:
            a, b, c = mesh.nodes
            got_b: list[int] = []
            got_c: list[int] = []
            b.register_event_handler("seq", lambda env: got_b.append(env["data"]["i"]))
            c.register_event_handler("seq", lambda env: got_c.append(env["data"]["i"]))
            for i in range(7):
                await a.broadcast_event("seq", {"i": i})
            await wait_until(lambda: len(got_c) == 7, 'len(got_c) == 7')
            a.outbox.links[c.node_id].send_frame = lambda frame: True  # c hears nothing more from a
            for i in range(7, 10):
                await a.broadcast_event("seq", {"i": i})
            await wait_until(lambda: len(got_b) == 10, 'len(got_b) == 10')
            mesh.hub.partition(a)  # a is gone without a word (no leave, no gossip)
            mesh.nodes.remove(a)
            await wait_until(lambda: c.get_mesh_status()["counters"]["events_lost"] == 3, 'c.get_mesh_status()["counters"]["events_lost"] == 3', timeout=15)
            assert sorted(got_c) == list(range(7))
            assert c.get_mesh_status()["delivery"]["by_node"][a.node_id]["lost"] == 3
            assert b.get_mesh_status()["counters"]["events_lost"] == 0  # b got everything
            await a.stop()

    asyncio.run(main())


def test_a_member_cannot_make_others_drop_a_live_nodes_events() -> None:
    """Review finding: one OriginEnd naming a live node's origin with a huge sequence made
    every receiver give up (and later drop) that node's next broadcasts."""

    async def main() -> None:
        async with LocalMesh(3, heartbeat_interval=0.2) as mesh:
            a, b, m = mesh.nodes
            got: list[int] = []
            b.register_event_handler("seq", lambda env: got.append(env["data"]["i"]))
            await a.broadcast_event("seq", {"i": 0})
            await wait_until(lambda: got == [0], 'got == [0]')
            origin = a.local_node.metadata["origin"]
            m.host.broadcast(schema.KIND_ORIGIN_END, schema.OriginEnd(origin, 10_000_000))
            # and an origin asked for sequences it has not sent yet never calls them gone
            m.outbox.send(a.node_id, schema.KIND_REPAIR_REQUEST, 0, b"", schema.RepairRequest(origin, [5, 6, 7]))
            await fence(m, [a, b])  # the claim and the request have arrived
            # a is a live member: b drops the claim (at a's next sign of life) instead of taking it
            await wait_until(lambda: not b.host.origin_ends, "b dropped the claim about a live member's origin")  # a is a member: the claim was dropped
            for i in range(1, 101):
                await a.broadcast_event("seq", {"i": i})
            await wait_until(lambda: len(got) == 101, 'len(got) == 101')
            assert sorted(got) == list(range(101))
            st = b.get_mesh_status()["counters"]
            assert st["events_lost"] == 0 and st["events_missing"] == 0
            assert m.get_mesh_status()["counters"]["events_lost"] == 0

    asyncio.run(main())
