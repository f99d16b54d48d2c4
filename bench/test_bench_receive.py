"""The receive path, in process: frames of 64 events (about 100 bytes of JSON-able data
each) through the gate, the compiled sink and the handlers, with a plain handler and
with an ``async def`` handler that does not await (the one most users write).

Goal (issue 13): the async handler costs at most 1.25x the plain one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop

from spiralfast import MeshConfig, MeshCore, schema
from spiralfast.codec import FrameWriter
from spiralfast.node.gate import MEMBER, Session

N = 64 * 1000
DATA = {"agent_id": "agent-7", "message": "status update from the planner", "step": 12, "ok": True,
        "tags": ["a", "b"]}  # about 100 bytes as JSON


class _Link:
    transport = "bench"
    shared_bus = False
    outbound = False
    name = "bench"
    peer_id = "peer"

    def __init__(self) -> None:
        self.session = Session(None, 0.0, MEMBER)
        self.session.peer_id = "peer"

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self, reason: str = "") -> None: ...


def frames(n: int = N, start: int = 0) -> list[bytes]:
    out = []
    k = start
    for _ in range(n // 64):
        w = FrameWriter()
        for _ in range(64):
            k += 1
            eid = f"bench0peer00-{k}"
            w.add(schema.KIND_EVENT, 16, b"", eid, schema.Event(eid, "custom", "peer", time.time(), DATA))
        out.append(w.finish())
    return out


class Receiver:
    """A started node on its own loop, fed frames straight into its gate."""

    def __init__(self, kind: str) -> None:
        self.loop = uvloop.new_event_loop()
        self.core = MeshCore(MeshConfig(enable_redis=False, enable_websocket=False))
        self.loop.run_until_complete(self.core.start())
        self.count = 0
        self.want = 0
        self.done: asyncio.Future[None] | None = None

        def plain(env: dict[str, Any]) -> None:
            self.count += 1
            if self.count == self.want and self.done is not None:
                self.done.set_result(None)

        async def coro(env: dict[str, Any]) -> None:
            plain(env)

        self.core.register_event_handler("custom", plain if kind == "plain" else coro)
        self.link = _Link()
        self.next_id = 0

    def batch(self, n: int = N) -> list[bytes]:
        fr = frames(n, self.next_id)
        self.next_id += n
        return fr

    def run(self, fr: list[bytes]) -> float:
        """Feed the frames; seconds until the handler saw every event."""
        return self.loop.run_until_complete(self._feed(fr))

    async def _feed(self, fr: list[bytes]) -> float:
        self.done = asyncio.get_running_loop().create_future()
        self.want = self.count + len(fr) * 64
        on_frame = self.core.gate.on_frame
        t = time.perf_counter()
        for i, f in enumerate(fr):
            on_frame(self.link, f)
            if i % 16 == 15:
                await asyncio.sleep(0)  # one loop turn per 16 frames, as a socket's reads would give
        await self.done
        return time.perf_counter() - t

    def close(self) -> None:
        self.loop.run_until_complete(self.core.stop())
        self.loop.close()


@pytest.mark.benchmark(group="receive-64k")
@pytest.mark.parametrize("kind", ["plain", "async"])
def test_receive_path(benchmark: Any, kind: str) -> None:
    r = Receiver(kind)
    try:
        benchmark.pedantic(r.run, setup=lambda: ((r.batch(),), {}), rounds=5, iterations=1, warmup_rounds=1)
        # The handler saw every event fed, once (a dropped or doubled event would show).
        assert r.count == r.want == r.next_id and r.count % N == 0 and r.count > 0
        benchmark.extra_info["us_per_event"] = benchmark.stats.stats.median / N * 1e6
    finally:
        r.close()
