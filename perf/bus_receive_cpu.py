"""The bus links' receive path in one process, in CPU seconds: sealed Redis or NATS frames
fed to the link's receive callback, through the gate, into an event handler.

CPU time (``time.process_time``) makes the figure steadier than a wall-clock rate on a
shared machine.  With ``--a``/``--b`` it runs itself from two source trees, alternating, and
prints the medians and the ratio (used to show a restructure left the bus paths' cost
where it was):

    python perf/bus_receive_cpu.py --a /tmp/base --b . --transport nats --pairs 7

It drives the links' private receive callbacks (``_on_message``/``_on_data``): it is a
measuring tool, not an example of the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid


def _imports():  # the tree's own modules (old and new layouts)
    from spiralfast import MeshConfig, MeshCore, schema
    from spiralfast.busauth import BusSealer
    from spiralfast.codec import FrameWriter
    try:
        from spiralfast.links.bus.nats import NatsSettings, NatsTransport
        from spiralfast.links.bus.redis import RedisSettings, RedisTransport
    except ImportError:
        from spiralfast.links.nats import NatsSettings, NatsTransport  # type: ignore[no-redef]
        from spiralfast.links.redis import RedisSettings, RedisTransport  # type: ignore[no-redef]
    return MeshConfig, MeshCore, schema, BusSealer, FrameWriter, NatsSettings, NatsTransport, RedisSettings, RedisTransport

TOKEN = "bench-token-0123456789abcdef0123"
N_FRAMES, PER_FRAME = 4000, 50

async def measure(kind: str) -> float:
    (MeshConfig, MeshCore, schema, BusSealer, FrameWriter, NatsSettings, NatsTransport, RedisSettings,
     RedisTransport) = _imports()
    core = MeshCore(MeshConfig(node_id="rx", enable_websocket=False, enable_redis=False, auth_token=TOKEN,
                               sign_bus_frames=False))
    got = [0]
    core.register_event_handler("bench", lambda e: got.__setitem__(0, got[0] + 1))
    if kind == "redis":
        link = RedisTransport(core.host, RedisSettings("rx", token=TOKEN))
        ch = link.sf_channel
        def feed(d):
            return link._on_message(ch, d)
    else:
        link = NatsTransport(core.host, NatsSettings("rx", token=TOKEN))
        ch = link.bcast
        def feed(d):
            return link._on_data(ch, d)
    link.connected = True
    link._send_acks = lambda: None
    core.host.bus_up(link)
    sealer = BusSealer("tx", "spiral_codex_mesh", TOKEN)
    origin = uuid.uuid4().hex[:12] + "s"
    frames = []
    seq = 0
    off = 0
    for _i in range(N_FRAMES):
        w = FrameWriter()
        for _ in range(PER_FRAME):
            seq += 1
            eid = f"{origin}-{seq}"
            w.add(schema.KIND_EVENT, schema.event_type_id("bench"), b"", eid,
                  schema.Event(eid, "bench", "tx", time.time(), {"i": seq, "pad": "x" * 60}, None))
        f = w.finish()
        off += len(f)
        frames.append(sealer.seal(ch.encode(), off, f))
    t0 = time.process_time()
    for d in frames:
        feed(d)
        await asyncio.sleep(0)
    while got[0] < seq and time.process_time() - t0 < 60:
        await asyncio.sleep(0)
    dt = time.process_time() - t0
    assert got[0] == seq, (got[0], seq)
    return seq / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", default="nats", choices=["redis", "nats"])
    ap.add_argument("--a", help="tree A (baseline); with --b: alternate and compare")
    ap.add_argument("--b", help="tree B")
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    if not (args.a and args.b):
        print(json.dumps({"transport": args.transport, "events_per_cpu_s": int(asyncio.run(measure(args.transport)))}))
        return
    runs: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(args.pairs):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            tree = os.path.abspath(getattr(args, name))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--transport", args.transport],
                                 env=dict(os.environ, PYTHONPATH=tree), cwd=tree, capture_output=True, text=True,
                                 timeout=300, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1])["events_per_cpu_s"])
    ma, mb = statistics.median(runs["a"]), statistics.median(runs["b"])
    print(json.dumps({"transport": args.transport, **runs, "a_median": ma, "b_median": mb,
                      "ratio_b_over_a": round(mb / ma, 4)}))


if __name__ == "__main__":
    main()
