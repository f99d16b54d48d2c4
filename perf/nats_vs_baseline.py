"""NATS, two processes, same run, the shared benchmark definition
(spiralfast/benchmark.py: MeshConfig defaults, an ``async def`` handler reading each
event's data, ~100-byte payloads, first send to last receipt):

- baseline: nats-py publishing one JSON message per event (one ``await publish`` per
  event, as a user of nats-py alone would), a subscriber decoding each;
- spiralfast over one NATS server (``nats_url``, WebSocket and Redis off);
- spiralfast over WebSocket (``run_bench("ws")``), for the ratio the issue asks;
- paced 10,000 events/s over NATS: p50/p99 latency (send to handler, same clock).

Usage: python perf/nats_vs_baseline.py [EVENTS] [NATS_URL]
(default 1,000,000 events for spiralfast, 200,000 for the baseline; not run in CI)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import spiralfast.benchmark as B

URL = os.environ.get("SPIRALFAST_TEST_NATS_URL", "nats://127.0.0.1:4222")


def run_nats(events: int, rate: int = 0, url: str = URL, handler: str = "async") -> dict[str, Any]:
    """The shared benchmark (``benchmark.run_bench``) over the NATS link."""
    return B.run_bench("nats", events, rate, handler=handler, nats_url=url)


async def _baseline_rx(url: str, subject: str, n: int) -> None:
    import nats

    nc = await nats.connect(url)
    done = asyncio.get_running_loop().create_future()
    state = {"got": 0, "t0": 0.0}

    async def cb(msg: Any) -> None:
        env = json.loads(msg.data)
        if not state["t0"]:
            state["t0"] = env["data"].get("t0", 0.0)
        env["data"]["step"]  # what a handler would read
        state["got"] += 1
        if state["got"] == n and not done.done():
            done.set_result(time.time())

    await nc.subscribe(subject, cb=cb, pending_msgs_limit=10_000_000, pending_bytes_limit=4 << 30)
    await nc.flush()
    print("READY", flush=True)
    try:
        end = await asyncio.wait_for(done, 300)
    except TimeoutError:
        end = time.time()
    print("RESULT " + json.dumps({"received": state["got"], "elapsed": end - state["t0"]}), flush=True)
    await nc.close()


async def _baseline_tx(url: str, subject: str, n: int) -> None:
    import nats

    nc = await nats.connect(url)
    for i in range(n):
        data = {**B.PAYLOAD, "t0": time.time()} if i == 0 else {**B.PAYLOAD, "step": i}
        await nc.publish(subject, json.dumps({"type": "bench", "source_node": "nats-node",
                                              "timestamp": datetime.now().isoformat(), "data": data}).encode())
    await nc.flush()
    await nc.close()


def nats_baseline(events: int, url: str = URL) -> dict[str, Any]:
    """nats-py alone: one JSON message and one ``await publish`` per event."""
    subject = f"baseline.{time.time_ns()}"
    child = subprocess.Popen([sys.executable, __file__, "baseline-rx", url, subject, str(events)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if not child.stdout.readline().startswith("READY"):
            raise RuntimeError("baseline receiver failed to start")
        asyncio.run(_baseline_tx(url, subject, events))
        out, _ = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rx = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:])
    return {"delivered": rx["received"], "events_per_s": round(rx["received"] / rx["elapsed"])}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = sys.argv[2] if len(sys.argv) > 2 else URL
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n}  nats={url}")
    base = nats_baseline(min(n, 200_000), url)
    print(f"baseline (nats-py, 1 JSON publish + 1 await per event): {base['events_per_s']:>9,} events/s  "
          f"{base['delivered']:,} delivered")
    r = run_nats(n, url=url)
    print(f"spiralfast nats, async handler: {r['events_per_s']:>9,} events/s  "
          f"{r['events_per_s'] / base['events_per_s']:.1f}x baseline  {r['delivered']:,}/{n:,} delivered")
    ws = B.run_bench("ws", n)
    print(f"spiralfast ws,   async handler: {ws['events_per_s']:>9,} events/s  "
          f"nats/ws = {r['events_per_s'] / ws['events_per_s']:.0%}  {ws['delivered']:,}/{n:,} delivered")
    paced = run_nats(30_000, rate=10_000, url=url)
    print(f"paced 10k/s over nats, async handler: p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  "
          f"lost={paced['lost']}")
    own = _own_server()
    if own is not None:  # the same, over a nats-server of our own (no JetStream, no log file, no other users)
        try:
            paced = run_nats(30_000, rate=10_000, url=own[0])
            print(f"paced 10k/s over a dedicated nats-server: p50 {paced['p50_ms']} ms  p99 {paced['p99_ms']} ms  "
                  f"lost={paced['lost']}")
        finally:
            own[1].kill()
            own[1].wait()


def _own_server() -> tuple[str, subprocess.Popen[bytes]] | None:
    import shutil
    import socket

    exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"nats://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "baseline-rx":
    asyncio.run(_baseline_rx(sys.argv[2], sys.argv[3], int(sys.argv[4])))
elif __name__ == "__main__":
    main()
