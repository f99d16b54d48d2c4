"""Two processes over Redis, same run: spiralfast through the public API vs the
reference semantics (one await per event, one JSON PUBLISH per event), plus a paced
latency run.  Usage: python perf/redis_vs_baseline.py [EVENTS] [REDIS_URL]
(default 1,000,000 for spiralfast, 100,000 for the baseline; not run in CI)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import redis.asyncio as aioredis
import uvloop

from spiralfast.benchmark import run_bench


async def baseline_receiver(url: str, channel: str, n: int) -> None:
    r = aioredis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(channel)
    print("READY", flush=True)
    got = 0
    first = 0.0
    async for msg in ps.listen():
        if msg["type"] != "message":
            continue
        env = json.loads(msg["data"])
        datetime.fromisoformat(env["timestamp"])
        got += 1
        if got == 1:
            first = time.perf_counter()
        if got == n:
            break
    print("RESULT " + json.dumps({"received": got, "elapsed": time.perf_counter() - first}), flush=True)
    await ps.aclose()
    await r.aclose()


async def baseline_sender(url: str, channel: str, n: int) -> None:
    r = aioredis.from_url(url)
    for i in range(n):
        env = {"type": "bench", "source_node": "old-node", "timestamp": datetime.now().isoformat(), "data": {"i": i}}
        await r.publish(channel, json.dumps(env))
    await r.aclose()


def baseline(url: str, n: int) -> dict[str, float]:
    channel = f"baseline_{time.time_ns()}"
    child = subprocess.Popen([sys.executable, __file__, "rx", url, channel, str(n)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().startswith("READY")
    uvloop.run(baseline_sender(url, channel, n))
    out, _ = child.communicate(timeout=600)
    rx = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:])
    return {"delivered": rx["received"], "events_per_s": round(rx["received"] / rx["elapsed"])}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/0"
    print(f"# {datetime.now().isoformat(timespec='seconds')}")
    sf = run_bench("redis", n, redis_url=url)
    base = baseline(url, min(n, 100_000))
    print(f"spiralfast redis : {sf['events_per_s']:>9,} events/s, {sf['delivered']:,}/{n:,} delivered, lost={sf['lost']}")
    print(f"baseline (1 JSON PUBLISH + 1 await per event): {base['events_per_s']:>9,} events/s")
    print(f"ratio            : {sf['events_per_s'] / base['events_per_s']:.1f}x")
    paced = run_bench("redis", 30_000, rate=10_000, redis_url=url)
    print(f"paced 10k/s      : p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  lost={paced['lost']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rx":
        uvloop.run(baseline_receiver(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        main()
