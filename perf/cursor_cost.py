"""What the durable delivery cursor costs on the receive path, in CPU seconds (issue 25).

One process receives ``EVENTS`` broadcast events (~100-byte payload, ``async def``
handler) as sealed NATS frames fed straight into the link's receive callback (no
socket; the pattern of ``perf/bus_receive_cpu.py``), through the gate and the
dispatcher into the handler.  The node is started (``MeshCore.start``) so that its
event log runs as it does under ``mesh start``.  Three variants, same events, same
process set-up:

- ``cursor``: persistence on (a fresh data directory, ``persistence_path`` set,
  ``persist_events="mesh"``: the default of ``mesh start``).  The events are not
  kept, but every one is handed to the delivery cursor (``EventLog.record``'s
  ``_cursor_ids.append``); every 100 ms the writer thread folds the ids into the
  cursor (``Cursor.note_ids``) and commits the changed rows (one SQLite transaction).
- ``nocursor``: the same, with the cursor's work off.  No setting turns it off:
  ``catch_up=False`` only skips loading the cursor on start (``CatchUp.prepare``),
  the hand-off and the writes go on.  So this variant monkeypatches
  ``EventLog.record``/``record_event`` to the same code without the hand-off branch
  and ``WriterThread._cursor_rows`` to write no rows.
- ``plain``: persistence off (no event log at all), for context.
- ``handoff`` (only with ``--variants``): the ids still handed over on the loop (and
  kept until the writer's next batch), but the writer neither folds them into the
  cursor nor writes rows: splits the cost between the two sides.

CPU time (``time.process_time``: the loop and the writer thread) runs from the first
frame fed until the handler has seen every event *and* the event log has committed
every cursor id handed to it (the last partial interval is inside the figure); the
loop thread's own share (``time.thread_time``) is reported beside it, the rest being
the writer thread's (and the GIL hand-offs between the two).
Variants run in separate subprocesses, interleaved in rotating order:

    python perf/cursor_cost.py --pairs 9            # the comparison (~1-2 min)
    python perf/cursor_cost.py --variant cursor     # one run, JSON
    python perf/cursor_cost.py --check-catch-up-off # shows catch_up=False still feeds the cursor

It drives private receive callbacks: a measuring tool, not an example of the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

TOKEN = "bench-token-0123456789abcdef0123"
EVENTS, PER_FRAME = 200_000, 50
VARIANTS = ("cursor", "nocursor", "plain")
#: Optional diagnostic: the loop-side hand-off kept, the writer's fold and rows off.
ALL_VARIANTS = (*VARIANTS, "handoff")
#: ``{"i": seq, "pad": ...}`` packs to ~100 bytes with a 6-digit ``i``.
PAD = "x" * 88


def _no_cursor_rows() -> None:
    from spiralfast.store import writer

    def cursor_rows(self: Any, envs: Any, ids: Any, clean: bool) -> list[Any]:
        return []

    writer.WriterThread._cursor_rows = cursor_rows  # type: ignore[method-assign]


def _no_cursor() -> None:
    """Turn the cursor's work off: ``record``/``record_event`` as they are, without the
    branch that hands a non-persisted event's id to the cursor; no cursor rows written."""
    from spiralfast.store import eventlog

    big, handoff = eventlog.BATCH_MAX_EVENTS, eventlog.HANDOFF_MIN_EVENTS

    def record(self: Any, env: Any) -> None:
        if self._all or (env["type"] if type(env) is dict else env.event_type) in self._types:
            buf = self._buf
            buf.append(env)
            n = len(buf)
            if n + self.in_flight >= big or (n >= handoff and not self.in_flight):
                self._full()

    def record_event(self: Any, ev: Any) -> None:
        if self._all or ev.event_type in self._types:
            buf = self._buf
            buf.append(ev)
            n = len(buf)
            if n + self.in_flight >= big or (n >= handoff and not self.in_flight):
                self._full()

    eventlog.EventLog.record = record  # type: ignore[method-assign]
    eventlog.EventLog.record_event = record_event  # type: ignore[method-assign]
    _no_cursor_rows()


async def measure(variant: str, events: int, catch_up: bool = True) -> dict[str, Any]:
    from spiralfast import schema
    from spiralfast.links.bus.nats import NatsSettings, NatsTransport
    from spiralfast.node.config import MeshConfig
    from spiralfast.node.core import MeshCore
    from spiralfast.wire.codec import FrameWriter
    from spiralfast.wire.sealing import BusSealer

    if variant == "nocursor":
        _no_cursor()
    elif variant == "handoff":
        _no_cursor_rows()
    data_dir = tempfile.mkdtemp(prefix="sf-cursor-cost-")
    try:
        cfg = MeshConfig(node_id="rx", enable_websocket=False, enable_redis=False, enable_nats=False,
                         auth_token=TOKEN, sign_bus_frames=False, heartbeat_interval=5.0, catch_up=catch_up)
        if variant != "plain":
            cfg.persistence_path = os.path.join(data_dir, "rx.db")
        core = MeshCore(cfg)
        got = [0]

        async def handler(env: dict[str, Any]) -> None:
            got[0] += 1

        core.register_event_handler("bench", handler)
        await core.start()
        link = NatsTransport(core.host, NatsSettings("rx", token=TOKEN))
        ch = link.bcast
        link.connected = True
        link._send_acks = lambda: None  # type: ignore[method-assign]
        core.host.bus_up(link)
        sealer = BusSealer("tx", "spiral_codex_mesh", TOKEN)
        origin = uuid.uuid4().hex[:12] + "s"
        frames, seq, off = [], 0, 0
        while seq < events:
            w = FrameWriter()
            for _ in range(PER_FRAME):
                seq += 1
                eid = f"{origin}-{seq}"
                w.add(schema.KIND_EVENT, schema.event_type_id("bench"), b"", eid,
                      schema.Event(eid, "bench", "tx", time.time(), {"i": seq, "pad": PAD}, None))
            f = w.finish()
            off += len(f)
            frames.append(sealer.seal(ch.encode(), off, f))
        el = core.eventlog
        t0, l0 = time.process_time(), time.thread_time()
        for d in frames:
            link._on_data(ch, d)
            await asyncio.sleep(0)
        while got[0] < seq and time.process_time() - t0 < 120:
            await asyncio.sleep(0)
        if el is not None:  # the last cursor ids committed: inside the figure
            while (el._cursor_ids or el._buf) and time.process_time() - t0 < 120:
                el._tick()  # hands them over once the writer is free
                await asyncio.sleep(0.002)
            assert el._sync(), "the event log's writer did not finish"  # queued behind that batch
        dt, loop_dt = time.process_time() - t0, time.thread_time() - l0
        assert got[0] == seq, (got[0], seq)
        done = el.cursor.done.get(origin) if el is not None else None
        await core.stop()
        return {"variant": variant, "events": seq, "cpu_s": round(dt, 4), "loop_cpu_s": round(loop_dt, 4),
                "events_per_cpu_s": round(seq / dt), "cursor_done": done}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _child(variant: str, events: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--variant", variant, "--events", str(events)],
                         capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return float(r["cpu_s"]), float(r["loop_cpu_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=ALL_VARIANTS, help="one run of one variant (JSON on stdout)")
    ap.add_argument("--events", type=int, default=EVENTS)
    ap.add_argument("--pairs", type=int, default=7, help="rounds; each runs every variant once, in rotating order")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {','.join(ALL_VARIANTS)}")
    ap.add_argument("--check-catch-up-off", action="store_true",
                    help="one small run with catch_up=False: does the cursor still move?")
    args = ap.parse_args()
    if args.check_catch_up_off:
        print(json.dumps({"catch_up": False, **_run(measure("cursor", 20_000, catch_up=False))}))
        return
    if args.variant:
        print(json.dumps(_run(measure(args.variant, args.events))))
        return
    variants = tuple(v for v in args.variants.split(",") if v)
    if not set(VARIANTS) <= set(variants) or not set(variants) <= set(ALL_VARIANTS):
        ap.error(f"--variants: {','.join(VARIANTS)} and optionally handoff")
    k = len(variants)
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    loop: dict[str, list[float]] = {v: [] for v in variants}
    t_wall = time.monotonic()
    for i in range(args.pairs):
        order = variants[i % k:] + variants[:i % k]
        for v in order if i % 2 == 0 else tuple(reversed(order)):
            c, lc = _child(v, args.events)
            cpu[v].append(c)
            loop[v].append(lc)
    med = {v: statistics.median(cpu[v]) for v in variants}
    lmed = {v: statistics.median(loop[v]) for v in variants}
    # paired ratios (same round): steadier than the ratio of medians on a busy machine
    paired = statistics.median(a / b for a, b in zip(cpu["cursor"], cpu["nocursor"], strict=True))
    n = args.events
    extra: dict[str, float] = {}
    if "handoff" in med:
        extra["handoff_us_per_event"] = round((med["handoff"] - med["nocursor"]) / n * 1e6, 3)
        extra["fold_and_rows_us_per_event"] = round((med["cursor"] - med["handoff"]) / n * 1e6, 3)
    print(json.dumps({
        "events": n, "rounds": args.pairs, "cpu_s": cpu,
        "median_cpu_s": med, "median_loop_thread_cpu_s": lmed,
        "median_events_per_cpu_s": {v: round(n / med[v]) for v in variants},
        "cpu_ratio_cursor_over_nocursor": round(med["cursor"] / med["nocursor"], 4),
        "cpu_ratio_cursor_over_nocursor_paired_median": round(paired, 4),
        "cpu_ratio_cursor_over_plain": round(med["cursor"] / med["plain"], 4),
        "cpu_ratio_nocursor_over_plain": round(med["nocursor"] / med["plain"], 4),
        "cursor_us_per_event": round((med["cursor"] - med["nocursor"]) / n * 1e6, 3),
        "cursor_loop_thread_us_per_event": round((lmed["cursor"] - lmed["nocursor"]) / n * 1e6, 3),
        **extra,
        "wall_s": round(time.monotonic() - t_wall, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
