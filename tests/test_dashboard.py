"""The dashboard in a real browser: Debian's chromium driven by Playwright, against
real node processes.  Skips on a machine without chromium; fails in CI (.ci/run
installs it).

``SPIRALFAST_DASHBOARD_SCREENSHOT=path`` also saves a screenshot of the page.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from spiralfast.client import ObserverClient

from .conftest import require
from .procs import NodeProc
from .waiting import wait_until_sync

CHROMIUM = os.environ.get("SPIRALFAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HB = 0.3
#: A node is declared gone after 3 silent heartbeat intervals; the sweep runs every
#: half interval and the page updates once a second.
T = TypeVar("T")
FAILURE_DETECTION = 3 * HB + HB / 2 + 1.0

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - playwright is a test dependency
    sync_playwright = None  # type: ignore[assignment]


def _have_browser() -> bool:
    return sync_playwright is not None and (os.path.exists(CHROMIUM) or shutil.which("chromium") is not None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(_have_browser(), "chromium (Debian package) and playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Watch:
    """Everything the page logs or requests."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", lambda ws: self.requests.append(ws.url))

    def check(self) -> None:
        assert self.errors == []
        assert self.requests, "the page made no requests"
        for url in self.requests:
            assert urlsplit(url).hostname == "127.0.0.1", url


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own (Playwright's sync API owns this thread's loop)."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def svg_ids(page: Page) -> set[str]:
    return set(page.eval_on_selector_all("#topology [data-node-id]", "els => els.map(e => e.dataset.nodeId)"))


def svg_links(page: Page) -> set[str]:
    return set(page.eval_on_selector_all("#topology [data-link]", "els => els.map(e => e.dataset.link)"))


def row_ids(page: Page) -> set[str]:
    return set(page.eval_on_selector_all("#nodes [data-row-id]", "els => els.map(e => e.dataset.rowId)"))


def wait_nodes(node: NodeProc, ids: set[str], timeout: float = 20.0) -> None:
    wait_until_sync(lambda: arun(node.node_ids()) == ids, f"{node.node_id} lists exactly {sorted(ids)}",
                    timeout=timeout, interval=0.1)


def _burst(node: NodeProc, n: int, done: threading.Event) -> None:
    async def run() -> None:
        c = await ObserverClient.connect(node.url)
        try:
            for start in range(0, n, 250):
                await asyncio.gather(*(c.query("publish", type="burst", data={"i": i})
                                       for i in range(start, min(n, start + 250))))
        finally:
            c.close()

    try:
        asyncio.run(run())
    finally:
        done.set()


def test_dashboard_three_nodes(browser: Browser) -> None:
    a = NodeProc("node-a", hb=HB)
    procs = [a]
    try:
        b = NodeProc("node-b", "--peer", a.url, hb=HB)
        procs.append(b)
        c = NodeProc("node-c", "--peer", a.url, hb=HB)
        procs.append(c)
        ids = {"node-a", "node-b", "node-c"}
        wait_nodes(a, ids)

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        watch = Watch(page)
        page.goto(f"http://127.0.0.1:{a.port}/")

        # the page lists all three nodes, and draws them with the links between them
        page.wait_for_function("() => document.querySelectorAll('#topology [data-node-id]').length === 3", timeout=10_000)
        assert svg_ids(page) == ids
        assert row_ids(page) == ids
        page.wait_for_function("() => document.querySelectorAll('#topology [data-link]').length >= 2", timeout=10_000)
        links = svg_links(page)
        assert {"node-a|node-b", "node-a|node-c"} <= links
        for link in links:
            x, y = link.split("|")
            assert x < y and {x, y} <= ids
        # The link between B and C is known to A only through gossiped records
        # (metadata["links"]); once the core publishes them it must be drawn too.
        status = arun(a.query("status"))
        if any("links" in (n.get("metadata") or {}) for n in status["nodes"]):
            page.wait_for_function(
                "() => document.querySelector('#topology [data-link=\"node-b|node-c\"]') !== null", timeout=10_000)

        # a burst of published events raises the shown rate (how fast the page follows is
        # not judged here: the node, the burst and the browser share a loaded machine)
        assert float(page.get_attribute("#rate-in", "data-value") or 0) < 50
        done = threading.Event()
        th = threading.Thread(target=_burst, args=(b, 3000, done), daemon=True)
        th.start()
        page.wait_for_function("() => Number(document.getElementById('rate-in').dataset.value) >= 50", timeout=20_000)
        page.wait_for_function("() => document.querySelector('#by-type [data-type=\"burst\"]') !== null", timeout=20_000)
        th.join(30)
        assert done.is_set()
        page.wait_for_function("() => document.querySelectorAll('#recent tr').length > 1", timeout=20_000)

        shot = os.environ.get("SPIRALFAST_DASHBOARD_SCREENSHOT")
        if shot:
            page.screenshot(path=shot, full_page=True)

        # a killed node disappears within the failure-detection time (FAILURE_DETECTION,
        # derived from HB above, plus a stated 2 s margin: the assertion below)
        c.kill9()
        t0 = time.monotonic()
        page.wait_for_function("() => document.querySelectorAll('#topology [data-node-id]').length === 2",
                               timeout=20_000)
        assert svg_ids(page) == {"node-a", "node-b"}
        assert all("node-c" not in lk for lk in svg_links(page))
        page.wait_for_function("() => document.querySelectorAll('#nodes [data-row-id]').length === 2", timeout=20_000)
        assert time.monotonic() - t0 <= FAILURE_DETECTION + 2.0

        watch.check()
        assert any(urlsplit(u).path == "/favicon.svg" for u in watch.requests)  # and it loaded (no error)
        page.close()
    finally:
        for p in procs:
            p.stop()


def test_dashboard_asks_for_the_token(browser: Browser) -> None:
    node = NodeProc("node-t", "--token", "s3cret", hb=HB)
    try:
        page = browser.new_page()
        watch = Watch(page)
        page.goto(f"http://127.0.0.1:{node.port}/")
        page.wait_for_selector("#token-dialog[open]", timeout=5_000)
        assert svg_ids(page) == set()  # the shell holds no node data
        page.fill("#token-input", "wrong")
        page.click("#token-form button")
        page.wait_for_selector("#token-error:not([hidden])", timeout=5_000)
        page.fill("#token-input", "s3cret")
        page.click("#token-form button")
        page.wait_for_function("() => document.querySelectorAll('#topology [data-node-id]').length === 1", timeout=5_000)
        assert svg_ids(page) == {"node-t"}
        # asked once: a reload reuses the token kept in this tab
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#topology [data-node-id]').length === 1", timeout=5_000)
        assert not page.is_visible("#token-dialog")
        watch.check()
        page.close()
    finally:
        node.stop()



def test_hud_shows_topology_and_link_analytics() -> None:
    """``mesh status --watch`` (rendered twice, so rates exist) against three real nodes."""
    from rich.console import Console

    from spiralfast.cli.hud import links_table, run_hud

    a = NodeProc("hud-a", hb=HB)
    procs = [a]
    try:
        procs.append(NodeProc("hud-b", "--peer", a.url, hb=HB))
        procs.append(NodeProc("hud-c", "--peer", a.url, hb=HB))
        wait_nodes(a, {"hud-a", "hud-b", "hud-c"})

        async def run() -> str:
            console = Console(record=True, width=160, force_terminal=False)
            c = await ObserverClient.connect(a.url)
            try:
                await run_hud(c, console, iterations=2)
            finally:
                c.close()
            return console.export_text()

        text = arun(run())
        status = arun(a.query("status"))
        console = Console(record=True, width=160, force_terminal=False)
        console.print(links_table(status))  # what `mesh status` prints: totals, not rates
        totals = console.export_text()
        assert "bytes out" in totals and "hud-b" in totals and "hud-c" in totals
        assert "topology: 3 nodes" in text
        assert "hud-a (this node)" in text
        for peer in ("hud-b", "hud-c"):
            assert f"── {peer}" in text
        assert "RTT" in text and "out/s" in text and "in/s" in text
        assert "websocket" in text
    finally:
        for p in procs:
            p.stop()
