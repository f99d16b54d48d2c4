"""The benchmark definition, one for ``spiralfast bench``, perf/ and the README.

Two processes through the public API, as a user would write them:

- ``MeshConfig`` defaults apart from ports, heartbeat and channel (``interop`` stays
  ``"auto"``, no token);
- the receiver's handler is an ``async def`` (``handler="async"``, the default, as in the
  old library's examples) or a plain function (``handler="plain"``); it does what a
  user's handler would do with the event: reads its data;
- every event carries a realistic payload, about 100 bytes of JSON-able data
  (``PAYLOAD``);
- the rate is events / (last receipt - first send), on the one machine's clock.

``tuned=True`` gives the previous, tuned figure for comparison (``interop=False``, a
1-field payload, a plain counting handler); it is always labelled as such.  The
baselines run with the same payload: pyzmq PUSH/PULL with msgpack encoding each event
in the sender (``zmq_baseline``) and the old library's one-await-per-PUBLISH Redis loop
with JSON (``redis_baseline``).
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

from .errors import ConfigError, LinkError
from .node.config import MeshConfig
from .node.core import MeshCore
from .safetext import mask_secrets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The realistic payload: about 100 bytes as JSON (the user's data, not the envelope).
PAYLOAD: dict[str, Any] = {"agent_id": "agent-7", "message": "status update from the planner",
                           "step": 0, "ok": True, "tags": ["plan", "exec"]}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def _config(node_id: str, transport: str, port: int, redis_url: str, tuned: bool, **kw: Any) -> MeshConfig:
    extra: dict[str, Any] = {"interop": False} if tuned else {}
    token = os.environ.get("SPIRALFAST_BENCH_TOKEN") or None  # perf/attack.py: the cost of authentication
    # SPIRALFAST_BENCH_UNSIGNED=1: bus frames not signed by the nodes' keys (the cost of signing, side by side)
    extra["sign_bus_frames"] = os.environ.get("SPIRALFAST_BENCH_UNSIGNED") != "1"
    if transport == "nats":  # the NATS URL and a mesh name of this run's own come from run_bench
        kw.setdefault("nats_url", os.environ.get("SPIRALFAST_BENCH_NATS_URL", "nats://127.0.0.1:4222"))
        kw.setdefault("mesh_name", os.environ.get("SPIRALFAST_BENCH_MESH", "spiralfast_bench"))
    return MeshConfig(node_id=node_id, websocket_port=port, enable_websocket=transport == "ws",
                      enable_redis=transport == "redis", redis_url=redis_url, heartbeat_interval=1.0,
                      ritual_channel="spiralfast_bench", auth_token=token, **extra, **kw)


async def _receiver(transport: str, port: int, n: int, redis_url: str, paced: bool = True,
                    handler_kind: str = "async", tuned: bool = False) -> dict[str, Any]:
    cfg = _config("bench-rx", transport, port, redis_url, tuned)
    core = MeshCore(cfg)
    done = asyncio.get_running_loop().create_future()
    lat: list[float] = []
    state = {"count": 0, "first": 0.0}
    clock = time.time

    def handler(env: dict[str, Any]) -> None:
        c = state["count"] = state["count"] + 1
        data = env["data"]
        if c == 1:
            state["first"] = time.perf_counter()
            state["t0"] = data.get("t0", 0.0)
        t = data.get("t")
        if t is not None:
            lat.append(clock() - t)
        if c == n and not done.done():
            state["last"] = clock()
            done.set_result(None)

    async def async_handler(env: dict[str, Any]) -> None:
        handler(env)

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

    if tuned:
        core.register_event_handler("bench", handler if paced else counting_handler)
    else:
        core.register_event_handler("bench", async_handler if handler_kind == "async" else handler)
    await core.start()
    print("READY", flush=True)
    try:
        await asyncio.wait_for(done, 300)
    finally:
        elapsed = time.perf_counter() - state["first"]
        state["count"] = max(state["count"], count)
        await core.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if state.get("t0") and state.get("last"):  # first send to last receipt (same machine clock)
        elapsed = state["last"] - state["t0"]
    return {"received": state["count"], "elapsed": elapsed, "p50_ms": _pct(lat, 50) * 1000,
            "p99_ms": _pct(lat, 99) * 1000, "rss_mib": rss}


async def _sender(transport: str, port: int, n: int, rate: int, redis_url: str, tuned: bool = False) -> dict[str, Any]:
    cfg = _config("bench-tx", transport, 0, redis_url, tuned,
                  peers=[f"ws://127.0.0.1:{port}"] if transport == "ws" else [])
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
            await bcast("bench", {**PAYLOAD, "step": i, "t": time.time()})
    elif tuned:
        await bcast("bench", {"i": 0, "t0": time.time()})
        for i in range(1, n):
            await bcast("bench", {"i": i})
    else:
        await bcast("bench", {**PAYLOAD, "t0": time.time()})
        for i in range(1, n):
            await bcast("bench", {**PAYLOAD, "step": i})
    core.outbox.flush()
    sent_elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    await core.stop()
    return {"sent": n, "send_elapsed": sent_elapsed}


def _loop_run(coro: Any) -> Any:
    """uvloop when installed (only its own absence falls back to asyncio)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


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
    handler_kind, tuned = sys.argv[7], sys.argv[8] == "1"
    _exit_with_parent()
    res = _loop_run(_receiver(transport, port, n, redis_url, paced, handler_kind, tuned))
    print("RESULT " + json.dumps(res), flush=True)


def check_redis(redis_url: str, timeout: float = 3.0) -> None:
    """Raise ``LinkError`` saying why when Redis at ``redis_url`` does not answer a PING."""
    import redis as redis_sync

    try:
        client = redis_sync.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {mask_secrets(redis_url)!r}: {mask_secrets(exc)}") from None
    try:
        client.ping()
    except Exception as exc:  # redis raises its own ConnectionError/AuthenticationError/...
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise LinkError(f"Redis at {mask_secrets(redis_url)} unreachable: {mask_secrets(why)}") from None
    finally:
        client.close()


def run_bench(transport: str = "ws", events: int = 200_000, rate: int = 0,
              redis_url: str | None = None, handler: str = "async", tuned: bool = False,
              nats_url: str | None = None) -> dict[str, Any]:
    """Run sender (this process) and receiver (a child) and return the figures
    (the definition is in the module docstring).

    The child is always reaped: killed when anything goes wrong here, and it exits by
    itself when this process dies (it watches its stdin).  Raises ``ConfigError`` for
    bad arguments, ``LinkError`` when Redis is unreachable and ``RuntimeError`` when
    the run fails.
    """
    if transport not in ("ws", "redis", "nats"):
        raise ConfigError(f"transport must be ws, redis or nats, got {transport!r}")
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise ConfigError(f"events must be a positive integer, got {events!r}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise ConfigError(f"rate must be a non-negative integer (0: unpaced), got {rate!r}")
    if handler not in ("async", "plain"):
        raise ConfigError(f"handler must be async or plain, got {handler!r}")
    redis_url = redis_url or os.environ.get("SPIRALFAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if transport == "redis":
        check_redis(redis_url)
    env = dict(os.environ)
    if transport == "nats":
        from urllib.parse import urlparse

        from .links.bus.nats import mask_url, server_list

        nats_url = nats_url or os.environ.get("SPIRALFAST_TEST_NATS_URL") or "nats://127.0.0.1:4222"
        MeshConfig(nats_url=nats_url, enable_websocket=False, enable_redis=False)  # ConfigError when malformed
        why = ""
        for server in server_list(nats_url):  # as check_redis: fail here, not in the child, when none answers
            u = urlparse(server)
            try:
                socket.create_connection((u.hostname, u.port or {"ws": 80, "wss": 443}.get(u.scheme, 4222)),
                                         timeout=3.0).close()
                break
            except OSError as exc:
                why = f"{mask_url(server)}: {exc.strerror or exc}"
        else:
            raise LinkError(f"NATS at {mask_url(nats_url)} unreachable ({why})")
        env["SPIRALFAST_BENCH_NATS_URL"] = nats_url
        env["SPIRALFAST_BENCH_MESH"] = f"bench_{time.time_ns()}"  # nothing left over from an earlier run
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "spiralfast.benchmark", "child", transport, str(port), str(events), redis_url,
         "1" if rate else "0", handler, "1" if tuned else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    saved = {k: os.environ.get(k) for k in ("SPIRALFAST_BENCH_NATS_URL", "SPIRALFAST_BENCH_MESH")}
    os.environ.update({k: env[k] for k in saved if k in env})  # the sender (this process) uses them too
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"receiver failed to start (exit status {child.poll()})")
        tx = _loop_run(_sender(transport, port, events, rate, redis_url, tuned))
        # Not communicate(): closing the child's stdin tells it we are gone.
        out = child.stdout.read()
        child.wait(30)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
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
        "handler": "tuned (plain counter, 1-field payload, interop off)" if tuned else handler,
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


def _zmq_receiver(port: int, n: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(f"tcp://127.0.0.1:{port}")
    print("READY", flush=True)
    unpackb, recv = msgpack.unpackb, sock.recv
    t0 = 0.0
    for _ in range(n):
        ev = unpackb(recv())
        if not t0:
            t0 = ev["data"].get("t0", 0.0)
        ev["data"]["step"]  # what a handler would read
    print("RESULT " + json.dumps({"received": n, "elapsed": time.time() - t0}), flush=True)


def zmq_baseline(events: int) -> dict[str, Any]:
    """pyzmq PUSH/PULL, one msgpack event (the same envelope and payload) per message,
    encoded in the sender, decoded in the receiver; first send to last receipt."""
    import msgpack
    import zmq

    port = _free_port()
    child = subprocess.Popen([sys.executable, "-m", "spiralfast.benchmark", "zmq-rx", str(port), str(events)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if not child.stdout.readline().startswith("READY"):
            raise RuntimeError("zmq receiver failed to start")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.connect(f"tcp://127.0.0.1:{port}")
        packb, send = msgpack.packb, sock.send
        send(packb({"type": "bench", "source_node": "zmq-tx", "timestamp": time.time(),
                    "data": {**PAYLOAD, "t0": time.time()}}))
        for i in range(1, events):
            send(packb({"type": "bench", "source_node": "zmq-tx", "timestamp": time.time(),
                        "data": {**PAYLOAD, "step": i}}))
        out, _ = child.communicate(timeout=600)
        sock.close()
        ctx.term()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rx = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:])
    return {"delivered": rx["received"], "events_per_s": round(rx["received"] / rx["elapsed"])}


async def _redis_baseline_rx(url: str, channel: str, n: int) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(channel)
    print("READY", flush=True)
    got, t0 = 0, 0.0
    async for msg in ps.listen():
        if msg["type"] != "message":
            continue
        env = json.loads(msg["data"])
        if not t0:
            t0 = env["data"].get("t0", 0.0)
        got += 1
        if got == n:
            break
    print("RESULT " + json.dumps({"received": got, "elapsed": time.time() - t0}), flush=True)
    await ps.aclose()
    await r.aclose()


async def _redis_baseline_tx(url: str, channel: str, n: int) -> None:
    from datetime import datetime

    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    for i in range(n):
        data = {**PAYLOAD, "t0": time.time()} if i == 0 else {**PAYLOAD, "step": i}
        await r.publish(channel, json.dumps({"type": "bench", "source_node": "old-node",
                                             "timestamp": datetime.now().isoformat(), "data": data}))
    await r.aclose()


def redis_baseline(events: int, redis_url: str) -> dict[str, Any]:
    """The old library's Redis loop: one JSON PUBLISH and one await per event."""
    channel = f"baseline_{time.time_ns()}"
    child = subprocess.Popen([sys.executable, "-m", "spiralfast.benchmark", "redis-rx", redis_url, channel,
                              str(events)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if not child.stdout.readline().startswith("READY"):
            raise RuntimeError("redis baseline receiver failed to start")
        asyncio.run(_redis_baseline_tx(redis_url, channel, events))
        out, _ = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rx = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][7:])
    return {"delivered": rx["received"], "events_per_s": round(rx["received"] / rx["elapsed"])}


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    _child_main()
elif __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "zmq-rx":
    _zmq_receiver(int(sys.argv[2]), int(sys.argv[3]))
elif __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "redis-rx":
    asyncio.run(_redis_baseline_rx(sys.argv[2], sys.argv[3], int(sys.argv[4])))
