"""WebSocket, two processes, same run, the shared benchmark definition
(spiralfast/benchmark.py): defaults, async def and plain handlers, ~100-byte payloads,
first send to last receipt; pyzmq PUSH/PULL with msgpack encoding each event in the
sender as the baseline; the tuned figure alongside, labelled; then paced latency.

Usage: python perf/ws_vs_zmq.py [EVENTS]          (default 500,000; not run in CI)
"""

from __future__ import annotations

import sys
from datetime import datetime

from spiralfast.benchmark import run_bench, zmq_baseline


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n}")
    zq = zmq_baseline(n)
    rows = [(h, run_bench("ws", n, handler=h)) for h in ("async", "plain")]
    tuned = run_bench("ws", n, tuned=True)
    print(f"pyzmq PUSH/PULL, msgpack per event : {zq['events_per_s']:>9,} events/s")
    for h, r in rows:
        print(f"spiralfast ws, {h:5} handler       : {r['events_per_s']:>9,} events/s  "
              f"{r['events_per_s'] / zq['events_per_s']:.2f}x pyzmq  lost={r['lost']}")
    print(f"spiralfast ws, TUNED (plain counter, 1-field payload, interop off): {tuned['events_per_s']:>9,} events/s "
          f"{tuned['events_per_s'] / zq['events_per_s']:.2f}x pyzmq  lost={tuned['lost']}")
    paced = run_bench("ws", 30_000, rate=10_000)
    print(f"paced 10k/s, async handler: p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  lost={paced['lost']}")


if __name__ == "__main__":
    main()
