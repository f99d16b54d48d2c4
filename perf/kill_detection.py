"""Time for a mesh at the default settings to remove a node killed with ``kill -9`` (issue 24).

    python perf/kill_detection.py [--trials 20] [--json] [--redis URL]

Each trial starts a fresh 3-node WebSocket mesh of ``spiralfast mesh start`` processes at
the default settings (heartbeat 30 s, suspicion timeout 3 s; ``--no-redis`` unless
``--redis`` is given, ``--no-db``), waits until every node lists and links the other two,
kills one with SIGKILL and polls both survivors' ``status`` (every 10 ms, one observer
connection each) until both have removed it.  Prints p50/p99/max over the trials of:

- ``suspected``: kill to the first survivor showing it suspected (its link's close seen);
- ``removed``: kill to the *second* survivor removing it (both have; ``connected_nodes``
  dropped to 2 there).

Before this issue, removal waited for 3 missed heartbeats: about 90 s at these settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spiralfast import MeshConfig  # noqa: E402
from spiralfast.client import ObserverClient  # noqa: E402

#: Seconds a trial may take from the kill before it is counted as a failure.
GIVE_UP = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


class Node:
    def __init__(self, node_id: str, peers: list[str], extra: list[str], data: str) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(self.port), "--node-id", node_id,
                "--no-db", "--log-level", "warning", *extra]
        for p in peers:
            args += ["--peer", p]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", XDG_DATA_HOME=data))

    def ready(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node {self.node_id} exited with {self.proc.wait()}")
            if line.strip().startswith("websocket"):
                return
        raise RuntimeError(f"node {self.node_id} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def trial(i: int, extra: list[str], data: str) -> dict[str, float]:
    tag = f"kd{os.getpid()}-{i}"
    a = Node(f"{tag}-A", [], extra, data)
    a.ready()
    b = Node(f"{tag}-B", [a.url], extra, data)
    c = Node(f"{tag}-C", [a.url, b.url], extra, data)
    nodes = [a, b, c]
    clients: list[ObserverClient] = []
    try:
        b.ready()
        c.ready()
        clients = [await ObserverClient.connect(n.url) for n in (a, b)]
        want = {n.node_id for n in nodes}
        deadline = time.monotonic() + 60
        while True:  # formed: every node lists the others and links to each
            sts = [await ObserverClient.connect(n.url) for n in nodes]
            try:
                ok = True
                for n, cl in zip(nodes, sts, strict=True):
                    st = await cl.query("status")
                    ok = ok and {x["node_id"] for x in st["nodes"]} == want and {
                        lk["peer"] for lk in st["links"] if lk["peer"]} == want - {n.node_id}
            finally:
                for cl in sts:
                    cl.close()
            if ok:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the mesh did not form")
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        c.proc.kill()
        suspected: float | None = None
        removed: dict[str, float] = {}
        while len(removed) < 2:
            for n, cl in zip((a, b), clients, strict=True):
                if n.node_id in removed:
                    continue
                st = await cl.query("status")
                now = time.monotonic() - t0
                victim = [x for x in st["nodes"] if x["node_id"] == c.node_id]
                if not victim:
                    removed[n.node_id] = now
                    if st["connected_nodes"] != 2:
                        raise RuntimeError(f"{n.node_id}: connected_nodes {st['connected_nodes']} after the removal")
                elif victim[0].get("suspect") and suspected is None:
                    suspected = now
            if time.monotonic() - t0 > GIVE_UP:
                raise RuntimeError(f"not removed within {GIVE_UP:g} s")
            await asyncio.sleep(0.01)
        return {"removed": max(removed.values()), "suspected": suspected if suspected is not None else float("nan")}
    finally:
        for cl in clients:
            cl.close()
        c.proc.wait()
        for n in nodes:
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--redis", metavar="URL", help="the nodes also share this Redis (default: --no-redis)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()
    cfg = MeshConfig()
    extra = ["--enable-redis", "--redis", args.redis, "--name", f"kd-{os.getpid()}"] if args.redis else ["--no-redis"]
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="spiralfast-kd-") as data:
        for i in range(args.trials):
            r = asyncio.run(trial(i, extra, data))
            rows.append(r)
            if not args.json:
                print(f"trial {i + 1:2d}: suspected after {r['suspected']:.3f} s, removed by both after "
                      f"{r['removed']:.3f} s", flush=True)
    figures: dict[str, Any] = {
        "trials": len(rows), "heartbeat_interval": cfg.heartbeat_interval,
        "suspicion_timeout": cfg.suspicion_timeout, "redis": bool(args.redis),
    }
    for key in ("suspected", "removed"):
        xs = [r[key] for r in rows if r[key] == r[key]]
        figures[key] = {"p50": statistics.median(xs), "p99": pct(xs, 99), "max": max(xs), "n": len(xs)} if xs else None
    if args.json:
        print(json.dumps(figures))
        return
    print(f"\n{len(rows)} trials, 3-node WebSocket mesh, heartbeat {cfg.heartbeat_interval:g} s, suspicion timeout "
          f"{cfg.suspicion_timeout:g} s{' + Redis' if args.redis else ''}")
    for key in ("suspected", "removed"):
        f = figures[key]
        if f is not None:
            print(f"  {key:9s} p50 {f['p50']:.3f} s   p99 {f['p99']:.3f} s   max {f['max']:.3f} s")


if __name__ == "__main__":
    main()
