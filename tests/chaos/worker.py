"""One chaos-suite node: a MeshCore in its own network namespace, driven over stdin.

Run as ``ip netns exec <ns> python tests/chaos/worker.py --node-id ... --host ...``.
It broadcasts ``chaos_tick`` events at a steady rate (about 100-byte payloads) and
writes state keys while told to, records every ``chaos_tick`` it receives by origin
and sequence (parsed from the event id ``<origin>s-<seq>``), and answers one JSON
line on stdout per JSON line command on stdin:

- ``{"cmd": "report"}``: everything the checks need (see ``report()``);
- ``{"cmd": "send", "on": bool}`` / ``{"cmd": "state", "on": bool}``: traffic on/off;
- ``{"cmd": "quit"}``: stop the node cleanly and exit.

Logs go to stderr.  Times are ``time.monotonic()``, which every process on the
machine shares (network namespaces do not change clocks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from spiralfast import MeshConfig, MeshCore

TICK = "chaos_tick"
PAD = "p" * 72  # with the counter and keys, about 100 bytes of payload


def ranges(seqs: Any) -> list[list[int]]:
    """Sorted integers as inclusive ``[first, last]`` ranges."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        peers = [p for p in args.peers.split(",") if p]
        self.core = MeshCore(MeshConfig(
            node_id=args.node_id, mesh_name=args.mesh, websocket_host=args.host, websocket_port=args.port,
            peers=peers if not args.no_ws else [], redis_url=args.redis or "redis://127.0.0.1:1",
            enable_redis=bool(args.redis), enable_websocket=not args.no_ws, heartbeat_interval=args.hb,
            sync_interval=args.sync, ritual_channel=args.channel, interop=False,
        ))
        self.sending = False
        self.state_on = False
        self.sent: list[int] = []  # broadcast sequences of our ticks
        self.received: dict[str, set[int]] = {}
        self.dups = 0
        self.other_ids = 0  # ticks whose id did not parse (must stay 0)
        # [monotonic, "node_discovered" | "node_lost" | "link_up" | "link_down", node id]
        self.transitions: list[list[Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.started_at = 0.0
        self.i = 0

    def on_tick(self, env: dict[str, Any]) -> None:
        eid = env.get("event_id") or ""
        origin, sep, seq = eid.rpartition("-")
        if not sep or not origin.endswith("s") or not seq.isdigit():
            self.other_ids += 1
            return
        got = self.received.setdefault(origin, set())
        n = int(seq)
        if n in got:
            self.dups += 1
        else:
            got.add(n)

    def on_alert(self, env: dict[str, Any]) -> None:
        d = env.get("data") or {}
        if isinstance(d, dict) and isinstance(d.get("details"), dict) and "lost" in d["details"]:
            self.alerts.append(d["details"])

    def on_membership(self, event: str, node: Any) -> None:
        self.transitions.append([time.monotonic(), event, node.node_id])

    def on_link(self, peer: str, up: bool) -> None:
        self.transitions.append([time.monotonic(), "link_up" if up else "link_down", peer])

    async def ticker(self) -> None:
        period = 1.0 / self.args.rate
        nxt = time.monotonic()
        core = self.core
        me = self.args.node_id
        while True:
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # time itself: pacing at the configured rate
            elif delay < -1.0:
                nxt = time.monotonic()  # we were stopped or starved: do not burst to catch up
            if not self.sending:
                continue
            self.i += 1
            seq = core.sender.seq + 1  # broadcast_event takes it before its first await
            await core.broadcast_event(TICK, {"n": self.i, "node": me, "pad": PAD})
            self.sent.append(seq)
            if self.state_on and self.i % 5 == 0:
                core.state.update_local_state("user_data", f"{me}:{self.i % 40}", {"i": self.i, "by": me})

    def report(self) -> dict[str, Any]:
        core = self.core
        st = core.get_mesh_status()
        return {
            "node_id": core.node_id,
            "origin": core.local_node.metadata["origin"],
            "incarnation": core.local_node.metadata["incarnation"],
            "pid": os.getpid(),
            "now": time.monotonic(),
            "started_at": self.started_at,
            "sent": ranges(self.sent),
            "sent_count": len(self.sent),
            "received": {o: ranges(s) for o, s in self.received.items()},
            "received_count": sum(len(s) for s in self.received.values()),
            "dups": self.dups,
            "other_ids": self.other_ids,
            "delivery": st["delivery"],
            "events_lost": st["counters"]["events_lost"],
            "events_missing": st["counters"]["events_missing"],
            "repair_requests": st["counters"]["repair_requests"],
            "repaired_sent": st["counters"]["repaired_sent"],
            "alerts_lost": sum(int(a.get("lost", 0)) for a in self.alerts),
            "digests": core.state.digests(),
            "state_items": sum(len(v) for v in core.state.sync_categories.values()),
            "transitions": self.transitions,
            "nodes": {nid: {"status": n.status.value, "origin": n.metadata.get("origin"),
                            "incarnation": n.metadata.get("incarnation")} for nid, n in core.nodes.items()},
            "links": sorted(core.outbox.links),
            "redis": bool(core.redis is not None and core.redis.connected),
            "rss": rss_bytes(),
        }

    async def run(self) -> None:
        core = self.core
        core.register_event_handler(TICK, self.on_tick)
        core.register_event_handler("system_alert", self.on_alert)
        core.registry.register_discovery_callback(self.on_membership)
        core.add_link_listener(self.on_link)
        await core.start()
        self.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        out = sys.stdout
        out.write(json.dumps({"ready": True, "origin": core.local_node.metadata["origin"],
                              "started_at": self.started_at}) + "\n")
        out.flush()
        tick = asyncio.ensure_future(self.ticker())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break  # the suite went away
                cmd = json.loads(line)
                c = cmd.get("cmd")
                if c == "report":
                    answer: dict[str, Any] = self.report()
                elif c == "send":
                    self.sending = bool(cmd["on"])
                    answer = {"ok": True, "sent_count": len(self.sent)}
                elif c == "state":
                    self.state_on = bool(cmd["on"])
                    answer = {"ok": True}
                elif c == "quit":
                    out.write(json.dumps({"ok": True}) + "\n")
                    out.flush()
                    break
                else:
                    answer = {"error": f"unknown command {c!r}"}
                out.write(json.dumps(answer) + "\n")
                out.flush()
        finally:
            tick.cancel()
            await core.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--node-id", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--peers", default="")
    p.add_argument("--redis", default="")
    p.add_argument("--mesh", default="chaos")
    p.add_argument("--channel", default="chaos_events")
    p.add_argument("--hb", type=float, default=0.5)
    p.add_argument("--sync", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--no-ws", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.node_id} %(name)s %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.run(Worker(args).run())
    except ImportError:
        asyncio.run(Worker(args).run())


if __name__ == "__main__":
    main()
