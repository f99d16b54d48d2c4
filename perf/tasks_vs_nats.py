"""Tasks round trip, two processes, same run: spiralfast ``map_tasks`` / ``submit_task``
against nats-py request/reply to a queue-group worker, same window and payload.

1. throughput: N tasks (about 100-byte payloads, echoed back) with 256 in flight;
2. latency: paced 1,000 tasks/s for 3 s, p50/p99 of each round trip; and the same
   for a bare event there and back (``send_to_node`` both ways), the mesh's floor;
3. failover (spiralfast only): two workers, 32 tasks of 0.2 s running on each; kill -9
   one (its sockets close: the link drop is noticed at once), or SIGSTOP it (frozen:
   only failure detection notices); time from the signal until every task has
   completed, next to the failure-detection time (3 heartbeat intervals of 0.5 s).

Usage: python perf/tasks_vs_nats.py [TASKS]   (default 100,000; needs nats-server on
127.0.0.1:4222, or NATS_URL; not run in CI)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
WINDOW = 256
RATE = 1000
PACED_SECONDS = 3.0
PAD = "x" * 80


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "pad": PAD}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return round(s[len(s) // 2] * 1000, 3), round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3)


# -- worker processes ----------------------------------------------------------------


def sf_worker(port: int, node_id: str, hb: float) -> None:
    from spiralfast import MeshConfig, MeshCore

    async def main() -> None:
        mesh = MeshCore(MeshConfig(node_id=node_id, websocket_port=port, enable_redis=False, heartbeat_interval=hb))

        def echo(p: Any) -> Any:
            return p

        async def slow(p: Any) -> Any:
            await asyncio.sleep(p["s"])
            return node_id

        mesh.register_task_handler("echo", echo, capacity=1024)
        mesh.register_task_handler("cpu", lambda _: time.process_time(), capacity=1)

        def ping(env: dict[str, Any]) -> None:  # the floor: one event there, one back
            asyncio.ensure_future(mesh.send_to_node(env["source_node"], "perf.pong", env["data"]))

        mesh.register_event_handler("perf.ping", ping)
        mesh.register_task_handler("slow", slow, capacity=64)
        await mesh.start()
        print("READY", flush=True)
        await asyncio.Event().wait()

    import uvloop

    uvloop.run(main())


def nats_worker() -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(NATS_URL)

        async def cb(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("perf.task", queue="workers", cb=cb)
        await nc.flush()
        print("READY", flush=True)
        await asyncio.Event().wait()

    import uvloop

    uvloop.run(main())


def spawn(*args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"worker {args} did not start")
    return p


# -- spiralfast ----------------------------------------------------------------------


async def sf_run(n: int) -> dict[str, Any]:
    from spiralfast import MeshConfig, MeshCore

    port = free_port()
    w = spawn("sf-worker", str(port), "perf-worker", "1.0")
    mesh = MeshCore(MeshConfig(node_id="perf-submitter", websocket_port=free_port(), enable_redis=False,
                               heartbeat_interval=1.0, peers=[f"ws://127.0.0.1:{port}"]))
    try:
        await mesh.start()
        while "perf-worker" not in mesh.tasks.status()["nodes"]:
            await asyncio.sleep(0.01)
        # warm-up
        async for _ in mesh.map_tasks("echo", (payload(i) for i in range(2000)), concurrency=WINDOW):
            pass
        wcpu0 = await mesh.submit_task("cpu", None)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        ok = 0
        async for r in mesh.map_tasks("echo", (payload(i) for i in range(n)), concurrency=WINDOW):
            ok += r["i"] >= 0
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        wcpu = await mesh.submit_task("cpu", None) - wcpu0
        lat = await paced(lambda i: mesh.submit_task("echo", payload(i)))
        waiters: dict[int, asyncio.Future[Any]] = {}
        mesh.register_event_handler("perf.pong", lambda env: waiters.pop(env["data"]["i"]).set_result(None))

        async def ping(i: int) -> None:
            f = waiters[i] = asyncio.get_running_loop().create_future()
            await mesh.send_to_node("perf-worker", "perf.ping", payload(i))
            await f

        floor = await paced(ping)
        return {"tasks_per_s": round(n / elapsed), "ok": ok, "paced": lat, "paced_events": floor,
                "cpu_us_per_task": {"submitter": round(cpu / n * 1e6, 2), "worker": round(wcpu / n * 1e6, 2)}}
    finally:
        await mesh.stop()
        w.kill()
        w.wait()


async def paced(call: Any) -> dict[str, Any]:
    """``RATE`` calls per second for ``PACED_SECONDS``, each timed on its own."""
    samples: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - t)

    total = int(RATE * PACED_SECONDS)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    p50, p99 = pct(samples)
    return {"n": len(samples), "p50_ms": p50, "p99_ms": p99}


async def sf_failover(how: str) -> dict[str, Any]:
    """Two workers with 32 slow tasks each; ``how`` = "kill9" (the process dies: its
    sockets close) or "sigstop" (it freezes: only failure detection notices)."""
    import signal

    from spiralfast import MeshConfig, MeshCore

    hb = 0.5
    ports = [free_port(), free_port()]
    workers = [spawn("sf-worker", str(p), f"fo-worker-{i}", str(hb)) for i, p in enumerate(ports)]
    mesh = MeshCore(MeshConfig(node_id="fo-submitter", websocket_port=free_port(), enable_redis=False,
                               heartbeat_interval=hb, peers=[f"ws://127.0.0.1:{p}" for p in ports]))
    try:
        await mesh.start()
        while len(mesh.tasks.status()["nodes"]) < 2:
            await asyncio.sleep(0.01)
        task_s = 0.2
        n = 64
        futs = [asyncio.ensure_future(mesh.submit_task("slow", {"s": task_s}, timeout=30)) for _ in range(n)]
        while sum(v.get("slow", {}).get("in_flight", 0) for v in mesh.tasks.status()["nodes"].values()) < n:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # the tasks are running on both workers
        victim = workers[0]
        victim.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGSTOP)
        t_kill = time.perf_counter()
        results = await asyncio.gather(*futs)
        last = time.perf_counter() - t_kill
        st = mesh.tasks.status()["submitted"]["slow"]
        return {"how": how, "kill_to_all_done_s": round(last, 3), "handler_s": task_s,
                "failure_detection_s": 3 * hb, "moved": st["retried"], "done": st["done"],
                "by_survivor": sum(1 for r in results if r == "fo-worker-1")}
    finally:
        await mesh.stop()
        for w in workers:
            w.kill()
            w.wait()


# -- nats ----------------------------------------------------------------------------


async def nats_run(n: int) -> dict[str, Any]:
    import nats
    import orjson

    w = spawn("nats-worker")
    nc = await nats.connect(NATS_URL)
    try:
        async def window(count: int) -> int:
            it = iter(range(count))
            ok = 0

            async def lane() -> None:
                nonlocal ok
                for i in it:
                    r = await nc.request("perf.task", orjson.dumps(payload(i)), timeout=10)
                    ok += orjson.loads(r.data)["i"] >= 0

            await asyncio.gather(*(lane() for _ in range(WINDOW)))
            return ok

        await window(2000)
        t0 = time.perf_counter()
        ok = await window(n)
        elapsed = time.perf_counter() - t0

        async def one(i: int) -> None:
            await nc.request("perf.task", orjson.dumps(payload(i)), timeout=10)

        lat = await paced(one)
        return {"tasks_per_s": round(n / elapsed), "ok": ok, "paced": lat}
    finally:
        await nc.close()
        w.kill()
        w.wait()


def main() -> None:
    import uvloop

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"# {datetime.now().isoformat(timespec='seconds')}  tasks={n} window={WINDOW} payload~100B")
    sf = uvloop.run(sf_run(n))
    nt = uvloop.run(nats_run(n))
    fo = [uvloop.run(sf_failover("kill9")), uvloop.run(sf_failover("sigstop"))]
    print(f"spiralfast map_tasks : {sf['tasks_per_s']:>9,} tasks/s  ok={sf['ok']}  cpu/task {sf['cpu_us_per_task']}")
    print(f"nats-py request/reply: {nt['tasks_per_s']:>9,} tasks/s  ok={nt['ok']}")
    print(f"ratio                : {sf['tasks_per_s'] / nt['tasks_per_s']:.2f}x nats-py")
    print(f"paced {RATE}/s spiralfast: p50 {sf['paced']['p50_ms']} ms  p99 {sf['paced']['p99_ms']} ms")
    print(f"paced {RATE}/s nats-py   : p50 {nt['paced']['p50_ms']} ms  p99 {nt['paced']['p99_ms']} ms")
    fl = sf["paced_events"]
    print(f"paced {RATE}/s floor     : p50 {fl['p50_ms']} ms  p99 {fl['p99_ms']} ms  (send_to_node there and back, no tasks)")
    for f in fo:
        print(f"failover {f['how']:<8}    : {json.dumps(f)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sf-worker":
        sf_worker(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "nats-worker":
        nats_worker()
    else:
        main()
