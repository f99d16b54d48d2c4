"""State sync figures (not run in CI).

1. 5 nodes over real WebSockets (one process, one uvloop loop: all five share one
   core, a harder setting than five processes), 10,000 keys bulk-loaded on one node:
   time until every node holds all of them.
2. Bytes on the wire for one change on a 10,000-key state (per peer link).
3. One anti-entropy round when in sync (digest bytes) vs a full snapshot's bytes.
4. Delta apply rate: StateEntry merges per second into a fresh replica.

Usage: python perf/state_sync.py
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import orjson
import uvloop

from spiralfast import MeshConfig, MeshCore
from spiralfast.node.sync import StateSynchronizer
from spiralfast.schema import StateDelta, StateDigest, StateEntry

N_NODES = 5
N_KEYS = 10_000


async def mesh_figures() -> None:
    cfg = dict(enable_redis=False, websocket_port=0, heartbeat_interval=5.0, sync_interval=60.0)
    seed = MeshCore(MeshConfig(node_id="s0", **cfg))  # type: ignore[arg-type]
    await seed.start()
    nodes = [seed]
    for i in range(1, N_NODES):
        n = MeshCore(MeshConfig(node_id=f"s{i}", peers=[seed.local_node.websocket_endpoint], **cfg))  # type: ignore[arg-type]
        await n.start()
        nodes.append(n)
    while not all(len(n.outbox.links) == N_NODES - 1 for n in nodes):
        await asyncio.sleep(0.01)

    t0 = time.perf_counter()
    for i in range(N_KEYS):
        seed.state.update_local_state("agents", f"agent-{i}", {"status": "idle", "load": i % 7})
    while not all(len(n.state.sync_categories["agents"]) == N_KEYS for n in nodes):
        await asyncio.sleep(0.001)
    converge = time.perf_counter() - t0
    print(f"converge: {N_NODES} nodes, {N_KEYS} keys bulk-loaded on one node -> all hold them in {converge:.3f} s")

    await asyncio.sleep(0.2)
    before = seed.outbox.stats["bytes_out"]
    seed.state.update_local_state("agents", "agent-42", {"status": "busy", "load": 3})
    while not all(n.state.get_local_state("agents", "agent-42")["status"] == "busy" for n in nodes):
        await asyncio.sleep(0.001)
    sent = seed.outbox.stats["bytes_out"] - before
    print(f"one change on a {N_KEYS}-key state: {sent // (N_NODES - 1)} bytes per peer link "
          f"({sent} bytes to {N_NODES - 1} peers)")

    digest = len(msgspec.msgpack.encode(StateDigest(seed.state.digests(), True, 0)))
    snap = await seed.state.create_snapshot()
    snap_bytes = len(orjson.dumps(snap.to_dict()))
    wire_full = len(msgspec.msgpack.encode(StateDelta(seed.state.all_shared_entries())))
    print(f"anti-entropy round in sync: {digest} bytes digest vs full snapshot {snap_bytes} bytes JSON "
          f"({100 * digest / snap_bytes:.3f}%), {wire_full} bytes as one msgpack delta ({100 * digest / wire_full:.3f}%)")
    for n in nodes:
        await n.stop()


def apply_rate() -> None:
    now = int(time.time() * 1000) << 16
    entries = [StateEntry("agents", f"k{i % 50_000}", {"v": i}, now + i, "w", i) for i in range(200_000)]
    s = StateSynchronizer("r")
    t0 = time.perf_counter()
    for i in range(0, len(entries), 1000):
        s.apply_entries(entries[i : i + 1000])
    dt = time.perf_counter() - t0
    print(f"delta apply: {len(entries) / dt:,.0f} ops/s ({len(entries)} entries over 50,000 keys, batches of 1000)")


if __name__ == "__main__":
    uvloop.run(mesh_figures())
    apply_rate()
