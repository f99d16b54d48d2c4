"""A node on NATS alone, as a process of its own, driven over stdin (test helper).

    python -m tests.nats_node NODE_ID MESH URLS [--token T] [--stream] [--hb S] [--retx S]

Commands, one a line, each answered by one line on stdout:
``send N RATE`` (broadcast N events of type ``t``, numbered on from the previous ones,
RATE per second, 0: as fast as possible), ``direct TARGET N`` (N events of type ``d``),
``report`` (JSON: nodes known, per sender the distinct events received and the
duplicates, the NATS link's info, the node's counters), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

from spiralfast import MeshConfig, MeshCore


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("node_id")
    p.add_argument("mesh")
    p.add_argument("urls")
    p.add_argument("--token")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--hb", type=float, default=0.5)
    p.add_argument("--retx", type=float, default=30.0)
    a = p.parse_args()
    cfg = MeshConfig(node_id=a.node_id, mesh_name=a.mesh, enable_websocket=False, enable_redis=False,
                     nats_url=a.urls.split(","), nats_stream=a.stream, auth_token=a.token,
                     heartbeat_interval=a.hb, retransmit_window=a.retx)
    core = MeshCore(cfg)
    seen: dict[str, dict[str, set[int]]] = {"t": defaultdict(set), "d": defaultdict(set)}
    dups: dict[str, int] = defaultdict(int)

    def recorder(kind: str) -> Any:
        async def handler(env: dict[str, Any]) -> None:
            d = env["data"]
            s = seen[kind][d["src"]]
            if d["i"] in s:
                dups[f"{kind}:{d['src']}"] += 1
            s.add(d["i"])
        return handler

    core.register_event_handler("t", recorder("t"))
    core.register_event_handler("d", recorder("d"))
    await core.start()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    sent = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "send":
            n, rate = int(words[1]), float(words[2])
            start = time.perf_counter()
            for k in range(n):
                if rate:
                    delay = start + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # time itself: pacing at `rate`
                await core.broadcast_event("t", {"src": a.node_id, "i": sent})
                sent += 1
            out: Any = {"sent": sent}
        elif words[0] == "direct":
            ok = [await core.send_to_node(words[1], "d", {"src": a.node_id, "i": k}) for k in range(int(words[2]))]
            out = {"ok": sum(ok)}
        elif words[0] == "report":
            nats = core.nats
            out = {"nodes": sorted(core.nodes), "dups": dict(dups),
                   "got": {k: {s: len(v) for s, v in by.items()} for k, by in seen.items()},
                   "max": {s: max(v) for s, v in seen["t"].items() if v},
                   "nats": nats.info() if nats is not None else None,
                   **{k: core.get_mesh_status()[k] for k in ("delivery", "counters")}}
        else:
            out = {"error": line.strip()}
        print(json.dumps(out), flush=True)
    await core.stop()


if __name__ == "__main__":
    asyncio.run(main())
