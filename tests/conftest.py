"""Shared fixtures.  The suite runs twice in CI: compiled, and SPIRALFAST_PUREPYTHON=1."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from spiralfast import _codec_py, _ring_py
from spiralfast._native import PUREPYTHON_REQUESTED

try:
    from spiralfast import _codec as _codec_c
    from spiralfast import _ring as _ring_c
except ImportError:  # pragma: no cover - only when the build failed
    _codec_c = None  # type: ignore[assignment]
    _ring_c = None  # type: ignore[assignment]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing on a developer's machine; fail in CI, where
    .ci/run provides it (a missing service must never pass silently there)."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} is missing")

CODEC_IMPLS = [pytest.param(_codec_py, id="pure")]
RING_IMPLS = [pytest.param(_ring_py, id="pure")]
if _codec_c is not None and not PUREPYTHON_REQUESTED:
    CODEC_IMPLS.insert(0, pytest.param(_codec_c, id="compiled"))
    RING_IMPLS.insert(0, pytest.param(_ring_c, id="compiled"))


@pytest.fixture(params=CODEC_IMPLS)
def codec_impl(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_on(kind: str, coro_fn: Callable[[], Any]) -> Any:
    """Run ``coro_fn()`` on a fresh asyncio or uvloop event loop."""
    if kind == "uvloop":
        import uvloop

        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until ``cond()`` holds, failing after ``timeout`` seconds (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
