"""A mesh peer in its own process that sends ``N`` events ``TYPE`` with data
``{"seq": i}`` to the node at ``URL`` (used by the persistence tests and perf).

Usage: ``python -m tests.persist_sender URL N [TYPE] [RATE]`` -- prints ``connected``,
then ``sent N SECONDS`` when done, and stays in the mesh until stdin closes.
``RATE`` (events/s, 0 = as fast as possible) paces the sending.
"""

from __future__ import annotations

import asyncio
import sys
import time

from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore
from tests.waiting import wait_until

#: Heartbeat interval (s) of the sender; the streaming tests give their receivers the same.
HEARTBEAT = 1.0


async def main(url: str, n: int, etype: str, rate: float) -> None:
    # As the tests' receivers (NodeProc(hb=HEARTBEAT)): a node declares a peer silent after
    # 3 intervals, and a receiver writing as fast as its disk allows may pause its loop.
    core = MeshCore(MeshConfig(enable_redis=False, websocket_port=0, peers=[url], heartbeat_interval=HEARTBEAT))
    await core.start()
    # the target is known: the handshake is done
    await wait_until(lambda: len(core.nodes) >= 2, "the sender joined its target", timeout=60)
    print("connected", flush=True)
    t0 = time.perf_counter()
    if rate > 0:
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)  # time itself: pacing at `rate`
            await core.broadcast_event(etype, {"seq": i})
    else:
        for i in range(n):
            await core.broadcast_event(etype, {"seq": i})
    await asyncio.sleep(0)  # one loop turn: the last frame goes out on the next iteration
    print(f"sent {n} {time.perf_counter() - t0:.6f}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await core.stop()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    args = sys.argv[1:]
    asyncio.run(main(args[0], int(args[1]), args[2] if len(args) > 2 else "load",
                     float(args[3]) if len(args) > 3 else 0.0))
