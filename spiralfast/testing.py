"""Test kit for users' own suites: an in-process mesh of real MeshCores.

    async with LocalMesh(3) as mesh:
        a, b, c = mesh.nodes
        await a.broadcast_event("x", {...})
        await mesh.wait_for(lambda: got)

Nodes use the in-process loopback link only (no ports, no Redis) unless
``config_overrides`` says otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .links.loopback import LoopbackHub
from .node.config import MeshConfig
from .node.core import MeshCore

__all__ = ["LoopbackHub", "LocalMesh", "wait_for"]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Wait until ``cond()`` is true; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class LocalMesh:
    """``n`` started MeshCores joined by one ``LoopbackHub``."""

    def __init__(self, n: int = 2, **config_overrides: Any) -> None:
        self.hub = LoopbackHub()
        self.n = n
        self.overrides = {"enable_redis": False, "enable_websocket": False, **config_overrides}
        self.nodes: list[MeshCore] = []

    def config(self, i: int) -> MeshConfig:
        return MeshConfig(node_id=f"node-{i}", **self.overrides)

    async def add(self, i: int | None = None) -> MeshCore:
        core = MeshCore(self.config(len(self.nodes) if i is None else i), loopback=self.hub)
        await core.start()
        self.nodes.append(core)
        return core

    async def __aenter__(self) -> LocalMesh:
        for i in range(self.n):
            await self.add(i)
        await self.wait_for(lambda: all(len(c.nodes) == self.n for c in self.nodes))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for c in self.nodes:
            await c.stop()

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        await wait_for(cond, timeout)
