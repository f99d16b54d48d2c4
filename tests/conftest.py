"""Shared fixtures.  The suite runs twice in CI: compiled, and SPIRALFAST_PUREPYTHON=1.

The Redis, NATS and PostgreSQL the tests use are the suite's own (tests/services.py)
unless ``SPIRALFAST_TEST_REDIS_URL`` / ``SPIRALFAST_TEST_NATS_URL`` / ``SPIRALFAST_TEST_PG``
name others; whatever the suite started is stopped when the session ends (Ctrl-C too).
A node left at the default ``redis_url`` (``redis://localhost:6379``) never reaches a Redis
there unless ``SPIRALFAST_TEST_REDIS_URL`` names it: the connection is sent to a closed port
and the test is listed at the end of the run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from spiralfast.wire import _codec_py, _ring_py
from spiralfast.wire._native import PUREPYTHON_REQUESTED

try:
    from spiralfast.wire import _codec as _codec_c
    from spiralfast.wire import _ring as _ring_c
except ImportError:  # pragma: no cover - only when the build failed
    _codec_c = None  # type: ignore[assignment]
    _ring_c = None  # type: ignore[assignment]

from . import services
from .waiting import wait_until

IN_CI = os.environ.get("CI", "").lower() == "true"

#: Tests whose node tried a Redis the suite did not start nor was told about (see the module doc).
FOREIGN_REDIS: dict[str, set[str]] = {}
_REDIS_DEFAULT_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _foreign_redis(url: Any) -> bool:
    """True for the default local Redis (port 6379 on loopback) when SPIRALFAST_TEST_REDIS_URL
    does not name it: tests must not write there unless told to."""
    from urllib.parse import urlparse

    try:
        u = urlparse(str(url))
        port = u.port or 6379
    except ValueError:
        return False
    if u.scheme not in ("redis", "rediss") or (u.hostname or "") not in _REDIS_DEFAULT_HOSTS or port != 6379:
        return False
    given = os.environ.get(services.REDIS_ENV, "")
    if given:
        try:
            g = urlparse(given)
            if (g.hostname or "") in _REDIS_DEFAULT_HOSTS and (g.port or 6379) == 6379:
                return False
        except ValueError:
            pass
    return True


def _guard_redis() -> None:
    """Send in-process redis-py connections to the default local Redis to a closed port."""
    try:
        import redis
        import redis.asyncio
    except ImportError:  # pragma: no cover - redis is a dependency
        return
    for cls in (redis.Redis, redis.asyncio.Redis):
        orig = cls.__dict__["from_url"].__func__

        def from_url(klass: Any, url: Any, *args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
            if _foreign_redis(url):
                test = os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)").split(" ")[0]
                FOREIGN_REDIS.setdefault(str(url), set()).add(test)
                url = "redis://127.0.0.1:1/0"
            return _orig(klass, url, *args, **kwargs)

        cls.from_url = classmethod(from_url)  # type: ignore[method-assign,assignment]


#: The user's data directory while the suite runs: a folder of the suite's own (nodes started
#: without --data-dir or --db keep their id and event log under $XDG_DATA_HOME/spiralfast, and
#: the old API's PersistenceManager() its codex.db), removed at the end.
_DATA_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _DATA_HOME
    _guard_redis()
    services.install_sigterm_handler()
    if _DATA_HOME is None:
        import tempfile

        _DATA_HOME = tempfile.mkdtemp(prefix="spiralfast-test-home-")
        os.environ["XDG_DATA_HOME"] = _DATA_HOME  # inherited by every node process the tests start
        os.environ.pop("SPIRALCODEX_DATA_DIR", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    services.stop_all()
    if _DATA_HOME is not None:
        import shutil

        shutil.rmtree(_DATA_HOME, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    own = ", ".join(f"{s.kind} {s.url}" for s in services.started())
    if own:
        terminalreporter.write_line(f"services of the suite's own (removed now): {own}")
    for url, tests in sorted(FOREIGN_REDIS.items()):
        terminalreporter.write_line(
            f"kept away from {url} (not the suite's Redis; set {services.REDIS_ENV} to use it): "
            + ", ".join(sorted(tests)))


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
    """Wait until ``cond()`` holds, failing after ``timeout`` seconds (no blind sleeps).

    The older spelling of :func:`tests.waiting.wait_until`, which it runs; new tests call
    that one, with a message naming what never happened."""
    await wait_until(cond, "a condition (given to conftest.wait_for, unnamed)", timeout=timeout, interval=interval)


def free_port() -> int:
    return services.free_port()
