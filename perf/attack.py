"""Figures for the security issue, on real processes (not run in CI):

1. pre-auth memory: RSS growth of a token-protected node while 500 outsiders each hold a
   connection with a 60 KiB frame (just under the pre-auth limit) half sent;
2. a legitimate observer's round-trip latency (p50/p99) with and without one attacker
   flooding the node (reconnecting and sending junk frames as fast as it can);
3. the cost of Redis frame authentication: the Redis benchmark with and without a token,
   same run.

Usage: python perf/attack.py [REDIS_URL]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import psutil
import uvloop

from spiralfast.benchmark import run_bench
from spiralfast.client import ObserverClient

TOKEN = "perf-token"
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def start_node(port: int) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(port), "--no-redis",
                          "--token", TOKEN, "--log-level", "error"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    while not p.stdout.readline().strip().startswith("websocket"):
        pass
    return p


async def hold(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(UPGRADE)
        size = 60 * 1024
        w.write(b"\x82\x7f" + size.to_bytes(8, "big") + b"x" * (size // 2))  # half of a 60 KiB frame
        writers.append(w)
    await asyncio.sleep(1.0)
    return writers


async def latency(url: str, n: int = 300) -> tuple[float, float]:
    c = await ObserverClient.connect(url, TOKEN)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await c.query("ping")
        lat.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.005)
    c.close()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


async def one_socket_flood(port: int, stop: asyncio.Event) -> int:
    """The issue's attack: one socket that never sends a Hello, sending valid empty
    frames as fast as it can (the node closes it after its pre-auth budget)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(UPGRADE)
    junk = b"\x82\x83\0\0\0\0\x01\x00\x00"
    sent = 0
    try:
        while not stop.is_set():
            w.write(junk * 1000)
            await w.drain()
            sent += 1000
    except OSError:
        pass
    return sent


async def flood(port: int, stop: asyncio.Event) -> int:
    """One attacker, reconnecting as fast as it can, each time sending a burst of valid
    (masked) WebSocket frames holding empty mesh frames, never a Hello."""
    sent = 0
    junk = b"\x82\x83\0\0\0\0\x01\x00\x00"  # masked (with a zero key): an empty mesh frame
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(UPGRADE + junk * 2000)
            await w.drain()
            sent += 2000
            w.close()
        except OSError:
            await asyncio.sleep(0.001)
    return sent


async def main() -> None:
    port = 18000 + os.getpid() % 1000
    node = start_node(port)
    proc = psutil.Process(node.pid)
    try:
        rss0 = proc.memory_info().rss
        writers = await hold(port, 500)
        rss1 = proc.memory_info().rss
        print(f"pre-auth memory: 500 connections holding half a 60 KiB frame: RSS {rss0 / 2**20:.1f} -> "
              f"{rss1 / 2**20:.1f} MiB (+{(rss1 - rss0) / 2**20:.1f} MiB); goal < 64 MiB")
        for w in writers:
            w.close()
        await asyncio.sleep(1.0)
        url = f"ws://127.0.0.1:{port}"
        p50, p99 = await latency(url)
        print(f"observer ping latency, quiet: p50 {p50:.2f} ms p99 {p99:.2f} ms")
        for name, attack in (("one socket flooding empty frames", one_socket_flood),
                             ("one attacker reconnecting in a loop, 2,000 frames each time", flood)):
            stop = asyncio.Event()
            task = asyncio.ensure_future(attack(port, stop))
            await asyncio.sleep(0.5)
            f50, f99 = await latency(url)
            stop.set()
            frames = await task
            print(f"  while {name} ({frames:,} frames written): p50 {f50:.2f} ms p99 {f99:.2f} ms; goal p99 < 5 ms")
    finally:
        node.terminate()
        node.wait(10)


def redis_cost(url: str) -> None:
    rows = []
    for _ in range(2):
        for token in ("", TOKEN):
            os.environ["SPIRALFAST_BENCH_TOKEN"] = token
            r = run_bench("redis", 300_000, redis_url=url)
            rows.append((bool(token), r["events_per_s"], r["lost"]))
    os.environ.pop("SPIRALFAST_BENCH_TOKEN", None)
    for signed, rate, lost in rows:
        print(f"redis 300k burst, {'signed (token)' if signed else 'unsigned'}: {rate:,} events/s, lost {lost}")
    plain = statistics.mean(r for s, r, _ in rows if not s)
    signed = statistics.mean(r for s, r, _ in rows if s)
    print(f"cost of frame authentication: {(1 - signed / plain) * 100:.1f}% (goal < 10%)")


if __name__ == "__main__":
    uvloop.run(main())
    redis_cost(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
