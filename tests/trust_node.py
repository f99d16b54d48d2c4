"""A token-holding mesh member for the task-trust tests (run with ``sys.executable``):
a worker, an attacker, or both.  A real node (``MeshCore`` over real WebSockets); what
it does as an attacker it does through the node's own API, as a member's modified
program would.

    python tests/trust_node.py --port P --node-id ID --token T [--peer URL]... [--hb S]
        [--serve TYPE:CAPACITY]...

``--serve``: ``work`` (async: sleeps ``payload["s"]`` seconds, returns
``[payload["i"], node_id]``), ``echo`` (plain: returns the payload).

Prints ``websocket <endpoint>`` once started, then reads one JSON command per line on
stdin and answers ``ok <JSON>`` on stdout:

``{"op": "send", "to": ID, "type": T, "data": D}``  ``send_to_node``; a ``"hex_ids"``
    key (list of hex strings) is put into ``D["i"]`` as bytes (task ids), a ``"hex_x"``
    key into ``D["x"]`` as failures of those ids.
``{"op": "broadcast", "type": T, "data": D}``  ``broadcast_event``.
``{"op": "bus_publish", "type": T, "data": D}``  ``event_bus.publish`` (T an EventType value).
``{"op": "load", "to": ID, "n": N}``  one ``_sf.load`` listing N task types, sent to ID.
``{"op": "flood", "to": ID, "type": T, "n": N, "s": S}``  N ``_sf.task`` messages of
    type T (payload ``{"i": k, "s": S}``), batches of 512, ignoring the worker's capacity.
``{"op": "caps", "n": N}``  the node's own record (as its gossip carries it from now on)
    lists N extra capabilities (``cap0`` ...), past its own registry's bound.
``{"op": "stats"}``  ``{"busy": WorkerBusy refusals received, "results": results received}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--hb", type=float, default=0.3)
    ap.add_argument("--serve", action="append", default=[])
    args = ap.parse_args()

    async def run() -> None:
        from spiralfast import MeshConfig, MeshCore

        cfg = MeshConfig(node_id=args.node_id, websocket_port=args.port, enable_redis=False, peers=args.peer,
                         heartbeat_interval=args.hb, auth_token=args.token)
        mesh = MeshCore(cfg)
        me = args.node_id

        async def work(p: Any) -> Any:
            await asyncio.sleep(p.get("s", 0.01))  # time itself: a task that takes a while
            return [p["i"], me]

        def echo(p: Any) -> Any:
            return p

        handlers = {"work": work, "echo": echo}
        for spec in args.serve:
            name, _, cap = spec.partition(":")
            mesh.register_task_handler(name, handlers[name], capacity=int(cap or 64))
        seen = {"busy": 0, "results": 0}

        def on_result(env: dict[str, Any]) -> None:  # what comes back to this node as a submitter
            data = env.get("data") or {}
            seen["results"] += len(data.get("i") or ()) + len(data.get("x") or ())
            seen["busy"] += sum(1 for x in data.get("x") or () if isinstance(x[2], list) and x[2][0] == "WorkerBusy")

        mesh.register_event_handler("_sf.result", on_result)
        await mesh.start()
        print(f"websocket {mesh.local_node.websocket_endpoint}", flush=True)

        async def command(cmd: dict[str, Any]) -> Any:
            op = cmd["op"]
            if op == "send":
                data = cmd.get("data")
                if "hex_ids" in cmd:
                    data["i"] = [bytes.fromhex(h) for h in cmd["hex_ids"]]
                if "hex_x" in cmd:
                    data["x"] = [[bytes.fromhex(h), 1, ["Forged", "by M"]] for h in cmd["hex_x"]]
                return await mesh.send_to_node(cmd["to"], cmd["type"], data)
            if op == "bus_publish":  # the EventBus (SPEC publish), which the mesh carries too
                from spiralfast import EventType

                return await mesh.event_bus.publish(EventType(cmd["type"]), cmd.get("data"))
            if op == "broadcast":
                await mesh.broadcast_event(cmd["type"], cmd.get("data"))
                return True
            if op == "load":
                offers = {f"type{i}": [1, 0] for i in range(cmd["n"])}
                return await mesh.send_to_node(cmd["to"], "_sf.load", {"o": offers, "s": {}})
            if op == "flood":
                n, sent = cmd["n"], 0
                while sent < n:
                    k = min(512, n - sent)
                    ids = [os.urandom(12) for _ in range(k)]
                    payloads = [{"i": sent + j, "s": cmd.get("s", 0.3)} for j in range(k)]
                    if not await mesh.send_to_node(cmd["to"], "_sf.task", [cmd["type"], ids, payloads]):
                        return sent
                    sent += k
                return sent
            if op == "caps":
                mesh.local_node.capabilities.extend(f"cap{i}" for i in range(cmd["n"]))
                return len(mesh.local_node.capabilities)
            if op == "stats":
                return dict(seen)
            raise ValueError(op)

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def commands() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    stop.set()
                    return
                try:
                    out = await command(json.loads(line))
                    print("ok " + json.dumps(out), flush=True)
                except Exception as exc:  # the test reads the reason
                    print("error " + json.dumps(f"{type(exc).__name__}: {exc}"), flush=True)

        task = asyncio.ensure_future(commands())
        await stop.wait()
        task.cancel()
        await mesh.stop()

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
