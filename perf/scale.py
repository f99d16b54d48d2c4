"""Scaling run: N node processes (2, 4, 8) join through one seed; every node broadcasts
M events through the public API and counts what it receives.  Reports per-node
delivered rate and RSS.

Usage: python perf/scale.py [M] [N ...]        (default M=20,000, N = 2 4 8; not run in CI)
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time

from spiralfast import MeshConfig, MeshCore
from spiralfast.benchmark import _free_port


async def node_main(idx: int, n: int, m: int, port: int, seed_port: int, go_at: float) -> None:
    peers = [] if idx == 0 else [f"ws://127.0.0.1:{seed_port}"]
    core = MeshCore(MeshConfig(node_id=f"n{idx}", websocket_port=port, enable_redis=False, peers=peers,
                               heartbeat_interval=2.0))
    got = 0
    first = 0.0
    done = asyncio.get_running_loop().create_future()
    expected = (n - 1) * m

    def handler(env: dict) -> None:
        nonlocal got, first
        got += 1
        if got == 1:
            first = time.perf_counter()
        if got == expected and not done.done():
            done.set_result(None)

    core.register_event_handler("scale", handler)
    await core.start()
    deadline = time.monotonic() + 30
    while len(core.nodes) < n or len(core.outbox.links) < n - 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"n{idx}: mesh did not form ({len(core.nodes)} nodes)")
        await asyncio.sleep(0.02)
    while time.time() < go_at:
        await asyncio.sleep(0.005)
    data = {"from": idx}
    for _ in range(m):
        await core.broadcast_event("scale", data)
    try:
        await asyncio.wait_for(done, 120)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - first if first else float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"node": idx, "received": got, "expected": expected,
                                  "rate": round(got / elapsed) if elapsed else 0, "rss_mib": round(rss, 1)}),
          flush=True)
    await asyncio.sleep(1.0)
    await core.stop()


def run(n: int, m: int) -> list[dict]:
    ports = [_free_port() for _ in range(n)]
    go_at = time.time() + 3 + 0.4 * n
    procs = [
        subprocess.Popen([sys.executable, __file__, "node", str(i), str(n), str(m), str(ports[i]), str(ports[0]),
                          str(go_at)], stdout=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    out = []
    for p in procs:
        o, _ = p.communicate(timeout=300)
        out += [json.loads(ln[7:]) for ln in o.splitlines() if ln.startswith("RESULT ")]
    return out


def main() -> None:
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    sizes = [int(x) for x in sys.argv[2:]] or [2, 4, 8]
    for n in sizes:
        res = run(n, m)
        lost = sum(r["expected"] - r["received"] for r in res)
        rates = [r["rate"] for r in res]
        rss = [r["rss_mib"] for r in res]
        print(f"nodes={n} events/node={m}: per-node delivered {min(rates):,}-{max(rates):,} events/s "
              f"(mean {sum(rates) // len(rates):,}), lost={lost}, RSS {min(rss)}-{max(rss)} MiB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        import uvloop

        a = sys.argv[2:]
        uvloop.run(node_main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), float(a[5])))
    else:
        main()
