"""Catch-up across restarts on real processes (issue #25): one mesh node per process.

    python -m tests.catchup_worker NODE_ID DATA_DIR PEERS HB WINDOW PERSIST CATCHUP [LINK]

``PEERS``: comma-separated ws:// URLs or ``-``; ``PERSIST``: ``all`` or ``mesh``;
``CATCHUP``: 1 or 0; ``LINK``: ``ws`` (default), or ``redis:MESH:URL`` / ``nats:MESH:URL``
(a node on that bus alone, mesh name ``MESH``, no WebSocket peers; ``nats+stream:`` with
JetStream on).  The event log is ``DATA_DIR/NODE_ID.db``.
Prints ``url <ws url> <origin>`` once started.  Every ``load`` event its handler
finishes is appended to ``DATA_DIR/handled-NODE_ID.log`` as ``<event id> <r> <d>``
(replayed, redelivered: 0/1), one unbuffered write each, so the file survives a
kill -9.  Commands on stdin: ``send N`` (broadcast N ``load`` events, prints
``sent N``), ``stats`` (one JSON line), ``quit`` (a clean stop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from tests.delivery_worker import Proc

ETYPE = "load"


async def main(node_id: str, data_dir: str, peers: str, hb: float, window: float, persist: str,
               catch_up: bool, link: str) -> None:
    from spiralfast.node.config import MeshConfig
    from spiralfast.node.core import MeshCore

    cfg = MeshConfig(node_id=node_id, enable_redis=False, enable_nats=False, websocket_port=0, heartbeat_interval=hb,
                     peers=[] if peers == "-" else peers.split(","), retransmit_window=window,
                     persistence_path=os.path.join(data_dir, f"{node_id}.db"), persist_events=persist,
                     catch_up=catch_up, key_path=os.path.join(data_dir, f"{node_id}.key"))  # as the CLI keeps it
    kind, _, rest = link.partition(":")
    if kind == "nats+stream":
        kind, cfg.nats_stream = "nats", True
    if kind in ("redis", "nats"):  # "<kind>:<mesh name>:<url>": that bus alone
        mesh, _, url = rest.partition(":")
        cfg.mesh_name, cfg.ritual_channel, cfg.enable_websocket = mesh, f"{mesh}_events", False
        if kind == "redis":
            cfg.enable_redis, cfg.redis_url = True, url
        else:
            cfg.nats_url, cfg.enable_nats = url, True
    core = MeshCore(cfg)
    fd = os.open(os.path.join(data_dir, f"handled-{node_id}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    alerts: dict[str, int] = {}

    tally = {"handled": 0, "replayed": 0}
    nolog = os.environ.get("CATCHUP_NOLOG") == "1"  # perf: count only, no handled log

    def handler(env: dict[str, Any]) -> None:
        tally["handled"] += 1
        tally["replayed"] += bool(env.get("replayed"))
        if nolog:
            return
        os.write(fd, f"{env['event_id']} {int(bool(env.get('replayed')))} {int(bool(env.get('redelivered')))}\n"
                 .encode())

    def alert(env: dict[str, Any]) -> None:
        details = (env.get("data") or {}).get("details") or {}
        if isinstance(details, dict) and "origin" in details:
            alerts[details["origin"]] = alerts.get(details["origin"], 0) + int(details.get("lost", 0))

    core.register_event_handler(ETYPE, handler)
    core.register_event_handler("system_alert", alert)
    await core.start()
    url = core.ws.endpoint if core.ws is not None else "-"
    print(f"url {url} {core.local_node.metadata['origin']}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip().split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "send":
            n = int(cmd[1])
            for i in range(n):
                await core.broadcast_event(ETYPE, {"i": i})
            print(f"sent {n}", flush=True)
        elif cmd[0] == "stats":
            st = core.get_mesh_status()
            print("stats " + json.dumps({
                "nodes": sorted(core.nodes), "catchup": core.catchup.status(), "alerted_lost": alerts, **tally,
                "delivery": st.get("delivery"), "retx_len": len(core.sender.retx),
                "persisted": core.eventlog.written if core.eventlog is not None else 0,
            }, default=str), flush=True)
    await core.stop()
    os.close(fd)


class Node(Proc):
    """A worker process (see the module docstring); ``url``/``origin`` once started."""

    def __init__(self, *args: str) -> None:  # noqa: D107 - Proc's, with this module
        import queue
        import tempfile
        import threading

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen([sys.executable, "-m", "tests.catchup_worker", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=root, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url, _, self.origin = self.line("url ", 30).partition(" ")

    def kill9(self) -> None:
        self.p.kill()
        self.p.wait(5)
        self.close()

    def quit(self) -> None:
        self.send("quit")
        self.p.wait(30)
        self.close()


def read_handled(path: str) -> list[tuple[str, bool, bool]]:
    """The handled log: ``(event id, replayed, redelivered)`` in handling order."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) == 3:
                out.append((parts[0], parts[1] == "1", parts[2] == "1"))
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), float(a[4]), a[5], a[6] == "1", a[7] if len(a) > 7 else "ws"))
