"""Exactly once over several paths: N nodes joined by WebSocket (a full mesh) *and* a
shared Redis, each broadcasting a burst; every node counts what it handled by origin
and sequence.  The issue's run: 4 nodes, 120,000-event bursts each, delivered 2,048
and then 28,672 duplicates when one 65,536-id dedupe window served every origin.

Usage: python perf/multipath_dupes.py [NODES] [EVENTS]   (default 4 and 120,000; not run in CI)
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import time
import uuid
from collections import Counter
from typing import Any

from spiralfast import MeshConfig, MeshCore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _node(i: int, ports: list[int], n: int, channel: str, redis_url: str, out: Any, go: Any) -> None:
    peers = [f"ws://127.0.0.1:{p}" for j, p in enumerate(ports) if j < i]
    core = MeshCore(MeshConfig(node_id=f"mp-{i}", websocket_port=ports[i], peers=peers, redis_url=redis_url,
                               ritual_channel=channel, heartbeat_interval=1.0))
    seen: Counter[tuple[str, int]] = Counter()
    others = (len(ports) - 1) * n

    async def handler(env: dict[str, Any]) -> None:
        origin, _, seq = env["event_id"].rpartition("-")
        seen[(origin, int(seq))] += 1

    core.register_event_handler("burst", handler)
    await core.start()
    deadline = time.monotonic() + 30
    while len(core.nodes) < len(ports) or len(core.outbox.links) < len(ports) - 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"mp-{i}: mesh not formed: {sorted(core.nodes)}")
        await asyncio.sleep(0.05)
    go.wait()
    payload = {"agent": "planner-7", "step": 0, "status": "running", "note": "x" * 40}
    t0 = time.perf_counter()
    for k in range(n):
        payload["step"] = k
        await core.broadcast_event("burst", payload)
    deadline = time.monotonic() + 120
    while len(seen) < others and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(3)  # late copies over the slower path would show up now
    st = core.get_mesh_status()
    out.put(json.dumps({
        "node": core.node_id, "unique": len(seen), "expected": others,
        "duplicates": sum(c - 1 for c in seen.values() if c > 1), "lost_counted": st["counters"]["events_lost"],
        "dedupe_dropped": st["counters"].get("duplicate_ids", 0), "seconds": round(elapsed, 2),
    }))
    await asyncio.sleep(2)
    await core.stop()


def _proc(*args: Any) -> None:
    try:
        import uvloop

        uvloop.run(_node(*args))
    except ImportError:
        asyncio.run(_node(*args))


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 120_000
    redis_url = os.environ.get("SPIRALFAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    ports = [_free_port() for _ in range(nodes)]
    channel = "mp_" + uuid.uuid4().hex[:8]
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Barrier(nodes)
    procs = [ctx.Process(target=_proc, args=(i, ports, n, channel, redis_url, out, go)) for i in range(nodes)]
    for p in procs:
        p.start()
    rows = [json.loads(out.get(timeout=300)) for _ in procs]
    for p in procs:
        p.join(30)
    print(f"# {nodes} nodes, WebSocket full mesh + Redis, {n:,}-event burst each, async handlers")
    print("| node | handled once (of expected) | duplicates delivered | lost (counted) | burst + delivery s |")
    print("|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["node"]):
        print(f"| {r['node']} | {r['unique']:,} / {r['expected']:,} | {r['duplicates']} | {r['lost_counted']} | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    main()
