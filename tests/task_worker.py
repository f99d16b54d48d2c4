"""A mesh node process serving test task types (run with ``sys.executable``).

    python tests/task_worker.py --port P --node-id ID [--peer URL]... [--hb S]
        [--serve TYPE:CAPACITY]...

Task types (``--serve``):

``work``   async: sleeps ``payload["s"]`` seconds (default 0.01), returns
           ``[payload["i"], node_id]``.
``echo``   plain: returns the payload.
``boom``   plain: raises ``ValueError("boom: <payload>")``.
``hang``   async: never returns.

Prints ``websocket <endpoint>`` once started (what ``tests.procs.NodeProc``
waits for) and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--hb", type=float, default=0.3)
    ap.add_argument("--serve", action="append", default=[])
    args = ap.parse_args()

    async def run() -> None:
        from spiralfast import MeshConfig, MeshCore

        cfg = MeshConfig(node_id=args.node_id, websocket_port=args.port, enable_redis=False, peers=args.peer,
                         heartbeat_interval=args.hb)
        mesh = MeshCore(cfg)
        me = args.node_id

        async def work(p: Any) -> Any:
            await asyncio.sleep(p.get("s", 0.01))  # time itself: a task that takes a while
            return [p["i"], me]

        def echo(p: Any) -> Any:
            return p

        def boom(p: Any) -> Any:
            raise ValueError(f"boom: {p}")

        async def hang(p: Any) -> Any:
            await asyncio.Event().wait()

        handlers = {"work": work, "echo": echo, "boom": boom, "hang": hang}
        for spec in args.serve:
            name, _, cap = spec.partition(":")
            mesh.register_task_handler(name, handlers[name], capacity=int(cap or 64))
        await mesh.start()
        print(f"websocket {mesh.local_node.websocket_endpoint}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await mesh.stop()

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
