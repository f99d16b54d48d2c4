"""Chaos suite fixtures: five network namespaces on a bridge (created and removed here).

Skipped entirely with ``SPIRALFAST_SKIP_CHAOS=1`` (CI's second and third runs);
skipped on a developer's machine without root or ``ip``; failing in CI (``CI=true``)
when it cannot run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..conftest import IN_CI
from .harness import Cluster, Netns, can_run, cleanup_leftovers

if os.environ.get("SPIRALFAST_SKIP_CHAOS") == "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def netns() -> Iterator[Netns]:
    ok, what = can_run()
    if not ok:
        if IN_CI:
            pytest.fail(f"the chaos suite needs {what}, which CI must provide")
        pytest.skip(f"the chaos suite needs {what}")
    cleanup_leftovers()
    ns = Netns(5)
    ns.create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def cluster(netns: Netns) -> Iterator[Cluster]:
    """A fresh mesh of five nodes (and its own Redis) on the session's namespaces;
    not started: the test calls ``start()`` after choosing settings."""
    c = Cluster(netns)
    try:
        yield c
    finally:
        for i in range(netns.n):
            netns.link(i, True)
        c.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove what crashed runs left behind (namespaces and links of dead pids)."""
    if can_run()[0]:
        cleanup_leftovers()
