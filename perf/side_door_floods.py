"""A member's task round trip with and without the side-door floods, side by side.

    python perf/side_door_floods.py [--seconds 8] [--rate 200] [--live 2] [--upgrades 300] [--json]

A worker node (``tests/task_worker.py`` serving ``echo``) runs as its own process; a member
node in this process submits ``echo`` tasks to it, paced at ``--rate`` per second, and
records each round trip.  The same run is made three times:

``quiet``       no flood;
``floods``      two ``/live`` connections sending WebSocket pings as fast as they can
                (each reconnects when closed) and one source address (127.0.0.2) opening
                idle WebSocket upgrades at ``--upgrades`` per second, each flood its own process;
``floods`` is the issue's attack #10 (15.5 M pings in 8 s once accepted) and #11 together.

It prints p50/p99/max of the round trip in each run, what the node counted
(``side_door_refused_total`` by reason), and the worker's CPU time per second in each run
(on a machine with fewer free cores than the five processes, the floods' own CPU shows in
the round trip; the worker's CPU is what the floods cost the node).  The floods are also used by
tests/test_side_doors.py (``python perf/side_door_floods.py flood-live|flood-upgrades ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PING = b"\x89\x80" + b"\x00\x00\x00\x00"  # a masked, empty ping (mask 0)


def upgrade_request(path: str, port: int, origin: str | None = None, host: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: " + (host or f"127.0.0.1:{port}").encode(),
             b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + key,
             b"Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(b"Origin: " + origin.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def read_head(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def flood_live(port: int, seconds: float) -> None:
    """Connect to ``/live`` and send pings as fast as the socket takes them; reconnect when
    closed.  Prints ``{"connections": N, "closed": N, "pings": N}`` at the end."""
    batch = PING * 10_000
    end = time.monotonic() + seconds
    connections = closed = pings = 0
    while time.monotonic() < end:
        s: socket.socket | None = None
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(upgrade_request("/live", port))
            head = read_head(s)
            connections += 1
            if not head.startswith(b"HTTP/1.1 101"):
                s.close()
                time.sleep(0.05)
                continue
            s.settimeout(0.5)
            while time.monotonic() < end:
                s.sendall(batch)
                pings += 10_000
        except OSError:
            closed += 1
        finally:
            if s is not None:
                s.close()
    print(json.dumps({"connections": connections, "closed": closed, "pings_written": pings}), flush=True)


def flood_upgrades(port: int, seconds: float, rate: float, source: str, path: str = "/",
                   keep: int = 2000) -> None:
    """Open idle WebSocket upgrades (never a Hello) from ``source`` at ``rate`` per second,
    keeping up to ``keep`` open; prints how many were opened and found closed by the node."""
    end = time.monotonic() + seconds
    open_: deque[socket.socket] = deque()
    opened = seen_closed = 0
    gap = 1.0 / rate
    nxt = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if now < nxt:
            time.sleep(nxt - now)
        nxt += gap
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            s.sendall(upgrade_request(path, port))
            s.setblocking(False)
            open_.append(s)
            opened += 1
        except OSError:
            continue
        while len(open_) > keep:
            open_.popleft().close()
        if opened % 50 == 0:  # sweep: which did the node close?
            for s in list(open_):
                try:
                    if s.recv(65536, socket.MSG_PEEK) == b"" or _eof(s):
                        seen_closed += 1
                        open_.remove(s)
                        s.close()
                except BlockingIOError:
                    pass
                except OSError:
                    seen_closed += 1
                    open_.remove(s)
                    s.close()
    for s in open_:
        s.close()
    print(json.dumps({"opened": opened, "closed_by_node": seen_closed}), flush=True)


def _eof(s: socket.socket) -> bool:
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return False
    return not data


def metrics(port: int) -> dict[str, float]:
    """``side_door_refused_total`` of the node, by reason."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Host": f"127.0.0.1:{port}"})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^\w+_side_door_refused_total\{reason="(\w+)"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(port: int, node_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "task_worker.py"), "--port", str(port),
                             "--node-id", node_id, "--serve", "echo:1024", "--hb", "1.0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("websocket"):
        raise RuntimeError(f"worker did not start: {line!r}")
    return proc


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def round_trips(mesh: Any, seconds: float, rate: float) -> list[float]:
    out: list[float] = []
    gap = 1.0 / rate
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    i = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now < nxt:
            await asyncio.sleep(nxt - now)
        nxt += gap
        t0 = time.perf_counter()
        got = await mesh.submit_task("echo", i, timeout=10)
        out.append(time.perf_counter() - t0)
        assert got == i
        i += 1
    return out


PIN = False


def spawn(*args: str) -> subprocess.Popen[str]:
    pin = ("--pin",) if PIN else ()
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args, *pin], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)


async def measure(seconds: float, rate: float, upgrades: float, live: int = 2) -> dict[str, Any]:
    sys.path.insert(0, ROOT)
    from spiralfast import MeshConfig, MeshCore

    port = free_port()
    worker = start_worker(port, "sd-worker")
    mesh = MeshCore(MeshConfig(node_id="sd-member", websocket_port=free_port(), enable_redis=False,
                               peers=[f"ws://127.0.0.1:{port}"], heartbeat_interval=1.0))
    await mesh.start()
    result: dict[str, Any] = {"seconds": seconds, "rate": rate, "upgrades_per_s": upgrades, "live_connections": live}
    try:
        deadline = time.monotonic() + 20
        while "sd-worker" not in mesh.nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("the member did not join the worker")
            await asyncio.sleep(0.05)
        await round_trips(mesh, 1.0, rate)  # warm up
        wproc = psutil.Process(worker.pid)

        def cpu() -> float:
            t = wproc.cpu_times()
            return float(t.user + t.system)

        c0, t0 = cpu(), time.monotonic()
        quiet = await round_trips(mesh, seconds, rate)
        result["worker_cpu_quiet"] = round((cpu() - c0) / (time.monotonic() - t0), 3)
        floods = [spawn("flood-live", "--port", str(port), "--seconds", str(seconds + 2)) for _ in range(live)]
        if upgrades > 0:
            floods.append(spawn("flood-upgrades", "--port", str(port), "--seconds", str(seconds + 2),
                                "--rate", str(upgrades), "--source", "127.0.0.2"))
        await asyncio.sleep(1.0)  # the floods are under way
        c0, t0 = cpu(), time.monotonic()
        flooded = await round_trips(mesh, seconds, rate)
        result["worker_cpu_floods"] = round((cpu() - c0) / (time.monotonic() - t0), 3)
        reports = []
        for f in floods:
            out, _ = await asyncio.to_thread(f.communicate)
            reports.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else None)
        result["flood_reports"] = reports
        result["refused"] = metrics(port)
        for name, xs in (("quiet", quiet), ("floods", flooded)):
            result[name] = {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1e3, 3),
                            "p99_ms": round(pct(xs, 99) * 1e3, 3), "max_ms": round(max(xs) * 1e3, 3)}
    finally:
        await mesh.stop()
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="measure", choices=["measure", "flood-live", "flood-upgrades"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=200.0, help="tasks per second (measure), upgrades per second")
    ap.add_argument("--upgrades", type=float, default=300.0, help="idle upgrades per second in the flood (0: none)")
    ap.add_argument("--live", type=int, default=2, help="/live flooding connections (0: none)")
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--path", default="/")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="floods on the last CPU, the worker and the member on the others (as if the attacker "
                         "were another machine; other load on the machine is not moved)")
    a = ap.parse_args()
    if a.pin and a.mode != "measure":
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    elif a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[:-1]) or set(cpus))
        global PIN
        PIN = True
    if a.mode == "flood-live":
        flood_live(a.port, a.seconds)
        return
    if a.mode == "flood-upgrades":
        flood_upgrades(a.port, a.seconds, a.rate, a.source, a.path)
        return
    import uvloop

    res = uvloop.run(measure(a.seconds, a.rate, a.upgrades, a.live))
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"member task round trip (echo, {a.rate:.0f}/s, {a.seconds:.0f} s per run); floods: {a.live} /live "
          f"connections, {a.upgrades:.0f} idle upgrades/s from 127.0.0.2")
    print(f"{'run':<8} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name in ("quiet", "floods"):
        r = res[name]
        print(f"{name:<8} {r['n']:>6} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['max_ms']:>9.3f}")
    print("floods (live: 2 connections' reports; upgrades: 1):", json.dumps(res["flood_reports"]))
    print("node counted (side_door_refused_total):", json.dumps(res["refused"]))
    print(f"worker CPU (seconds per second): quiet {res['worker_cpu_quiet']}, floods {res['worker_cpu_floods']}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
