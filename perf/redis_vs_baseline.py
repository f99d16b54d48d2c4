"""Redis, two processes, same run, the shared benchmark definition
(spiralfast/benchmark.py): defaults (interop "auto"), async def and plain handlers,
~100-byte payloads, first send to last receipt; the old library's loop (one JSON
PUBLISH and one await per event) as the baseline; then paced latency.

Usage: python perf/redis_vs_baseline.py [EVENTS] [REDIS_URL]
(default 1,000,000 for spiralfast, 100,000 for the baseline; not run in CI)
"""

from __future__ import annotations

import sys
from datetime import datetime

from spiralfast.benchmark import redis_baseline, run_bench


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/0"
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n}")
    base = redis_baseline(min(n, 100_000), url)
    print(f"baseline (1 JSON PUBLISH + 1 await per event): {base['events_per_s']:>9,} events/s")
    for h in ("async", "plain"):
        r = run_bench("redis", n, redis_url=url, handler=h)
        print(f"spiralfast redis, {h:5} handler: {r['events_per_s']:>9,} events/s  "
              f"{r['events_per_s'] / base['events_per_s']:.1f}x baseline  {r['delivered']:,}/{n:,} delivered")
    paced = run_bench("redis", 30_000, rate=10_000, redis_url=url)
    print(f"paced 10k/s, async handler: p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  lost={paced['lost']}")


if __name__ == "__main__":
    main()
