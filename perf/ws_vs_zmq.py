"""Two processes, same run: spiralfast over WebSocket (public API) vs pyzmq PUSH/PULL
with one msgpack event per message, decoded on receipt.  Then a paced latency run.

Usage: python perf/ws_vs_zmq.py [EVENTS]          (default 500,000; not run in CI)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

from spiralfast.benchmark import _free_port, run_bench


def zmq_receiver(port: int, n: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(f"tcp://127.0.0.1:{port}")
    print("READY", flush=True)
    unpackb = msgpack.unpackb
    recv = s.recv
    first = 0.0
    for i in range(n):
        ev = unpackb(recv())
        if i == 0:
            first = time.perf_counter()
        assert ev["type"] == "bench"
    elapsed = time.perf_counter() - first
    print("RESULT " + json.dumps({"received": n, "elapsed": elapsed}), flush=True)


def zmq_bench(n: int) -> dict[str, float]:
    import msgpack
    import zmq

    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "zmq-rx", str(port), str(n)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().startswith("READY")
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(f"tcp://127.0.0.1:{port}")
    packb = msgpack.packb
    send = s.send
    node = "bench-tx"
    for i in range(n):
        send(packb({"type": "bench", "source_node": node, "timestamp": time.time(), "data": {"i": i}}))
    out, _ = child.communicate(timeout=300)
    rx = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:])
    s.close()
    ctx.term()
    return {"delivered": rx["received"], "events_per_s": round(rx["received"] / rx["elapsed"])}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n}")
    sf = run_bench("ws", n)
    zq = zmq_bench(n)
    print(f"spiralfast ws : {sf['events_per_s']:>9,} events/s delivered={sf['delivered']} lost={sf['lost']}")
    print(f"pyzmq msgpack : {zq['events_per_s']:>9,} events/s delivered={zq['delivered']}")
    print(f"ratio         : {sf['events_per_s'] / zq['events_per_s']:.2f}x pyzmq")
    paced = run_bench("ws", 30_000, rate=10_000)
    print(f"paced 10k/s   : p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  lost={paced['lost']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "zmq-rx":
        zmq_receiver(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
