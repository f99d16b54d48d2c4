"""Two-process benchmark through the public API (used by ``spiralfast bench`` and perf/).

The receiver is a separate process running a MeshCore whose handler counts events
and records latency (sender wall-clock stamp in the event data); the sender awaits
``mesh.broadcast_event`` in a loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from .config import MeshConfig
from .core import MeshCore
from .errors import ConfigError, LinkError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def _receiver(transport: str, port: int, n: int, redis_url: str, paced: bool = True) -> dict[str, Any]:
    cfg = MeshConfig(
        node_id="bench-rx", websocket_port=port, enable_websocket=transport == "ws",
        enable_redis=transport == "redis", redis_url=redis_url, heartbeat_interval=1.0,
        ritual_channel="spiralfast_bench", interop=False, auth_token=os.environ.get("SPIRALFAST_BENCH_TOKEN") or None,
    )
    core = MeshCore(cfg)
    done = asyncio.get_running_loop().create_future()
    lat: list[float] = []
    state = {"count": 0, "first": 0.0}
    clock = time.time

    def handler(env: dict[str, Any]) -> None:
        c = state["count"] = state["count"] + 1
        if c == 1:
            state["first"] = time.perf_counter()
        t = env["data"].get("t")
        if t is not None:
            lat.append(clock() - t)
        if c == n and not done.done():
            done.set_result(None)

    count = 0

    def counting_handler(env: dict[str, Any]) -> None:
        # Throughput runs: the handler only counts, as the benchmark asks.
        nonlocal count
        count += 1
        if count == 1:
            state["first"] = time.perf_counter()
        if count == n:
            state["count"] = count
            if not done.done():
                done.set_result(None)

    core.register_event_handler("bench", handler if paced else counting_handler)
    await core.start()
    print("READY", flush=True)
    try:
        await asyncio.wait_for(done, 300)
    finally:
        elapsed = time.perf_counter() - state["first"]
        state["count"] = max(state["count"], count)
        await core.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"received": state["count"], "elapsed": elapsed, "p50_ms": _pct(lat, 50) * 1000,
            "p99_ms": _pct(lat, 99) * 1000, "rss_mib": rss}


async def _sender(transport: str, port: int, n: int, rate: int, redis_url: str) -> dict[str, Any]:
    cfg = MeshConfig(
        node_id="bench-tx", websocket_port=0, enable_websocket=transport == "ws",
        peers=[f"ws://127.0.0.1:{port}"] if transport == "ws" else [], enable_redis=transport == "redis",
        redis_url=redis_url, heartbeat_interval=1.0, ritual_channel="spiralfast_bench", interop=False,
        auth_token=os.environ.get("SPIRALFAST_BENCH_TOKEN") or None,  # perf: the cost of authentication
    )
    core = MeshCore(cfg)
    await core.start()
    deadline = time.monotonic() + 15
    while "bench-rx" not in core.nodes:
        if time.monotonic() > deadline:
            raise RuntimeError("receiver never joined")
        await asyncio.sleep(0.01)
    bcast = core.broadcast_event
    t0 = time.perf_counter()
    if rate:
        interval = 1.0 / rate
        start = time.perf_counter()
        for i in range(n):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await bcast("bench", {"i": i, "t": time.time()})
    else:
        for i in range(n):
            await bcast("bench", {"i": i})
    core.outbox.flush()
    sent_elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    await core.stop()
    return {"sent": n, "send_elapsed": sent_elapsed}


def _exit_with_parent() -> None:
    """The parent holds our stdin open; when it goes away (even killed with -9), so do we."""
    import threading

    def watch() -> None:
        # os.read on the descriptor: no buffered-reader lock held at interpreter exit.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="bench-parent-watch").start()


def _child_main() -> None:
    transport, port, n, redis_url = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    paced = sys.argv[6] == "1"
    _exit_with_parent()
    try:
        import uvloop

        res = uvloop.run(_receiver(transport, port, n, redis_url, paced))
    except ImportError:
        res = asyncio.run(_receiver(transport, port, n, redis_url, paced))
    print("RESULT " + json.dumps(res), flush=True)


def check_redis(redis_url: str, timeout: float = 3.0) -> None:
    """Raise ``LinkError`` saying why when Redis at ``redis_url`` does not answer a PING."""
    import redis as redis_sync

    try:
        client = redis_sync.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {redis_url!r}: {exc}") from None
    try:
        client.ping()
    except Exception as exc:  # redis raises its own ConnectionError/AuthenticationError/...
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise LinkError(f"Redis at {redis_url} unreachable: {why}") from None
    finally:
        client.close()


def run_bench(transport: str = "ws", events: int = 200_000, rate: int = 0,
              redis_url: str | None = None) -> dict[str, Any]:
    """Run sender (this process) and receiver (a child) and return the figures.

    The child is always reaped: killed when anything goes wrong here, and it exits by
    itself when this process dies (it watches its stdin).  Raises ``ConfigError`` for
    bad arguments, ``LinkError`` when Redis is unreachable and ``RuntimeError`` when
    the run fails.
    """
    if transport not in ("ws", "redis"):
        raise ConfigError(f"transport must be ws or redis, got {transport!r}")
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise ConfigError(f"events must be a positive integer, got {events!r}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise ConfigError(f"rate must be a non-negative integer (0: unpaced), got {rate!r}")
    redis_url = redis_url or os.environ.get("SPIRALFAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if transport == "redis":
        check_redis(redis_url)
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "spiralfast.benchmark", "child", transport, str(port), str(events), redis_url,
         "1" if rate else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"receiver failed to start (exit status {child.poll()})")
        try:
            import uvloop

            tx = uvloop.run(_sender(transport, port, events, rate, redis_url))
        except ImportError:
            tx = asyncio.run(_sender(transport, port, events, rate, redis_url))
        # Not communicate(): closing the child's stdin tells it we are gone.
        out = child.stdout.read()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    rx: dict[str, Any] = {}
    for ln in out.splitlines():
        if ln.startswith("RESULT "):
            rx = json.loads(ln[7:])
    if not rx:
        raise RuntimeError(f"receiver reported nothing (exit status {child.returncode})")
    res = {
        "transport": transport,
        "events": events,
        "delivered": rx["received"],
        "lost": events - rx["received"],
        "events_per_s": round(rx["received"] / rx["elapsed"]) if rx["elapsed"] > 0 else 0,
        "receiver_rss_mib": round(rx["rss_mib"], 1),
        "send_seconds": round(tx["send_elapsed"], 3),
    }
    if rate:
        res["rate"] = rate
        res["p50_ms"] = round(rx["p50_ms"], 3)
        res["p99_ms"] = round(rx["p99_ms"], 3)
    return res


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    _child_main()
