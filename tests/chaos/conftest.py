"""Chaos suite fixtures: five network namespaces on a bridge (created and removed here).

The tests that build namespaces (those using the ``netns`` or ``cluster`` fixture) change
the host's network, so they run only when asked: with ``CI=true`` or ``SPIRALFAST_CHAOS=1``
(as root, with ``ip`` and ``redis-server``).  Otherwise they are skipped, naming the
variable; ``SPIRALFAST_SKIP_CHAOS=1`` (CI's second and third runs) skips them even then.
Asked for but unable to run (not root, no ``ip``): a failure.  The socket-free tests in
this folder always run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..conftest import IN_CI
from .harness import Cluster, Netns, can_run, cleanup_leftovers

#: Fixtures that build network namespaces; a test using one is a namespace test.
NETNS_FIXTURES = frozenset({"netns", "cluster"})


def netns_skip_reason() -> str:
    """Why the namespace tests do not run here ("" when they do)."""
    if os.environ.get("SPIRALFAST_SKIP_CHAOS") == "1":
        return "SPIRALFAST_SKIP_CHAOS=1: the chaos suite's network-namespace tests are off"
    if not IN_CI and os.environ.get("SPIRALFAST_CHAOS") != "1":
        return ("builds network namespaces and a bridge on this host (needs root): "
                "set SPIRALFAST_CHAOS=1 to run it")
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = netns_skip_reason()
    if not reason:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.path).startswith(here + os.sep) and NETNS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def netns() -> Iterator[Netns]:
    reason = netns_skip_reason()
    if reason:  # reached some other way than through a test the hook above marked
        pytest.skip(reason)
    ok, what = can_run()
    if not ok:
        pytest.fail(f"the chaos suite needs {what}" + (", which CI must provide" if IN_CI else
                    " (SPIRALFAST_CHAOS=1 asked for it)"))
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
    if not netns_skip_reason() and can_run()[0]:
        cleanup_leftovers()
