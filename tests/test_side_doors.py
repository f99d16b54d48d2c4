"""The port's side doors (issue 23, outsider attacks #10-#13), against real node processes
from raw sockets: each attack refused and counted while the legitimate path is served in
the same test.

- ``/live``: every frame a dashboard connection sends is counted; past the budget it is
  closed (``side_door_refused_total{reason="live_flood"}``) and a member's tasks go on.
- Handshake slots are shared per source address: idle upgrades from 127.0.0.2 evict only
  their own, and a peer 150 ms away (through a delaying proxy) still joins.
- ``wss://``: sockets that never finish TLS are closed after ``handshake_timeout``, count
  against the handshake cap, and a failed TLS handshake is one counted line, no traceback.
- ``Origin`` on upgrades and ``Host`` on every request: a foreign page and DNS rebinding
  are refused while the CLI (no Origin) and the dashboard (same origin) work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.limits import MAX_PREAUTH_CONNECTIONS
from spiralfast.ops.live import LIVE_MAX_FRAMES

from .conftest import free_port, require
from .procs import NodeProc
from .waiting import wait_until, wait_until_async

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOODS = os.path.join(ROOT, "perf", "side_door_floods.py")
sys.path.insert(0, os.path.join(ROOT, "perf"))
import side_door_floods as floods  # noqa: E402  (the flood code the perf script measures with)


class Worker:
    """``tests/task_worker.py`` serving ``echo``, as its own process."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "task_worker.py"), "--port", str(self.port),
             "--node-id", node_id, "--serve", "echo:1024", "--hb", "0.5"],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("websocket"), line
        self.url = f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def refused(port: int, scheme: str = "http", ctx: ssl.SSLContext | None = None) -> dict[str, float]:
    """The node's ``side_door_refused_total`` by reason (its /metrics, as Prometheus reads it)."""
    text = urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=10, context=ctx).read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^\w+_side_door_refused_total\{reason="(\w+)"\} ([0-9.e+]+)$', text, re.M)}


async def member_of(worker: Worker, node_id: str, peer: str | None = None) -> MeshCore:
    m = MeshCore(MeshConfig(node_id=node_id, websocket_port=free_port(), enable_redis=False,
                            peers=[peer or worker.url], heartbeat_interval=0.5))
    await m.start()
    return m


def raw_request(port: int, head: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(head)
        return floods.read_head(s)


def spawn_flood(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, FLOODS, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=60)
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- #10: /live ------------------------------------------------------------------------

async def test_live_frames_are_counted_and_a_flood_is_closed_while_a_member_task_round_trip_completes() -> None:
    worker = Worker("sd-live-w")
    member = await member_of(worker, "sd-live-m")
    try:
        await wait_until(lambda: "sd-live-w" in member.nodes, "the member joins the worker")
        assert await member.submit_task("echo", 1, timeout=10) == 1  # the legitimate path first
        port = worker.port

        def dashboard_then_flood() -> tuple[bytes, bytes]:
            # A dashboard (same origin) is served a snapshot ...
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(floods.upgrade_request("/live", port, origin=f"http://127.0.0.1:{port}"))
                head = floods.read_head(s)
                first = s.recv(2)  # a text frame: the snapshot
            # ... and a connection that sends a burst of pings gets at most the budget answered,
            # then a close (1008) and the end of the socket.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(floods.upgrade_request("/live", port))
                assert floods.read_head(s).startswith(b"HTTP/1.1 101")
                try:
                    s.sendall(floods.PING * 1000)
                except OSError:
                    pass  # closed under us: what we want
                got = b""
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                except OSError:
                    pass
            return head + first, got

        head, got = await asyncio.to_thread(dashboard_then_flood)
        assert head.startswith(b"HTTP/1.1 101") and head.endswith(b"\x81") or b"\r\n\r\n\x81" in head
        pongs = got.count(b"\x8a\x00")
        assert pongs <= LIVE_MAX_FRAMES, pongs
        assert b"\x88" in got and (1008).to_bytes(2, "big") in got  # closed: policy violation
        assert (await asyncio.to_thread(refused, port)).get("live_flood", 0) >= 1

        # Two flooding connections (reconnecting whenever closed) while the member's tasks go on.
        procs = [spawn_flood("flood-live", "--port", str(port), "--seconds", "4") for _ in range(2)]
        done = 0
        while any(p.poll() is None for p in procs):
            assert await member.submit_task("echo", done, timeout=10) == done
            done += 1
        reports = [finish(p) for p in procs]
        assert done > 0
        closed = await asyncio.to_thread(refused, port)
        assert closed["live_flood"] >= 1 + sum(r["connections"] for r in reports) - 2, (closed, reports)
        assert await member.submit_task("echo", "after", timeout=10) == "after"
    finally:
        await member.stop()
        worker.stop()


# -- #11: handshake slots per source address ---------------------------------------------

class SlowProxy:
    """A TCP proxy that delays each chunk ``delay`` seconds each way: a peer that far away."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.forwarded = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await r.read(65536):
                self.forwarded += len(data)
                loop.call_later(self.delay, w.write, data)
        except (ConnectionError, OSError):
            pass
        finally:
            loop.call_later(self.delay, w.close)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(r, tw), self._pipe(tr, w))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_idle_upgrades_from_one_address_never_evict_a_slow_peer_from_another() -> None:
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=0.1, source_address=("127.0.0.2", 0)).close()
    except ConnectionRefusedError:
        pass
    except OSError as e:
        pytest.skip(f"127.0.0.2 is not usable as a source address here: {e}")
    worker = Worker("sd-fair-w")
    proxy = SlowProxy(worker.port, 0.075)  # 75 ms each way: a peer 150 ms away
    await proxy.start()
    flood = spawn_flood("flood-upgrades", "--port", str(worker.port), "--seconds", "20", "--rate", "300",
                        "--source", "127.0.0.2")
    member: MeshCore | None = None
    try:
        # The flood is filling the handshake slots before the slow peer starts dialling.
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: refused(worker.port).get("handshake_evicted", 0) >= 1),
            "the flood from 127.0.0.2 fills the handshake slots and evicts its own", timeout=20)
        member = await member_of(worker, "sd-fair-m", peer=f"ws://127.0.0.1:{proxy.port}")
        await wait_until(lambda: "sd-fair-w" in member.nodes, "the slow peer joins under the flood", timeout=15)
        assert flood.poll() is None, "the flood was still running when the slow peer joined"
        assert await member.submit_task("echo", "slow", timeout=10) == "slow"
        report = finish(flood)
        counts = await asyncio.to_thread(refused, worker.port)
        assert counts["handshake_evicted"] >= report["opened"] - MAX_PREAUTH_CONNECTIONS - 50, (counts, report)
        assert report["closed_by_node"] > 0
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
        if member is not None:
            await member.stop()
        await proxy.stop()
        worker.stop()


# -- #12: wss:// ---------------------------------------------------------------------------

def _self_signed(tmp: Any) -> tuple[str, str]:
    require(shutil.which("openssl") is not None, "the openssl binary (for a test certificate)")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_idle_tls_sockets_are_closed_after_the_handshake_timeout_counted_and_never_a_traceback(
        tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    timeout = 1.5  # --handshake-timeout: also the TLS handshake's
    node = NodeProc("sd-tls", "--certfile", cert, "--keyfile", key, "--handshake-timeout", str(timeout),
                    "--log-level", "info", scheme="wss")
    ctx = ssl.create_default_context(cafile=cert)
    try:
        def health() -> bytes:
            return bytes(urllib.request.urlopen(f"https://127.0.0.1:{node.port}/health", context=ctx,
                                                timeout=10).read())

        assert b'"ok"' in await asyncio.to_thread(health)  # the legitimate path first

        def idle(n: int, source: str) -> list[socket.socket]:
            out = []
            for _ in range(n):
                s = socket.socket()
                s.bind((source, 0))
                s.connect(("127.0.0.1", node.port))
                out.append(s)
            return out

        def closed_within(socks: list[socket.socket], limit: float) -> bool:
            end = time.monotonic() + limit
            for s in socks:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    if s.recv(1) != b"":
                        return False
                except TimeoutError:
                    return False
                except OSError:
                    pass  # reset: closed too
            return True

        # Sockets that never send a ClientHello are closed after handshake_timeout (asyncio's
        # own default is 60 s); the bound: the timeout plus 3 s of scheduling margin.
        socks = await asyncio.to_thread(idle, 10, "127.0.0.1")
        assert await asyncio.to_thread(closed_within, socks, timeout + 3.0)
        counts = await asyncio.to_thread(refused, node.port, "https", ctx)
        assert counts["tls_timeout"] >= 10, counts

        # They count against the handshake cap (per source address): more than the cap from
        # 127.0.0.2 and the oldest of them are evicted at once, not after the timeout.
        try:
            flood = await asyncio.to_thread(idle, MAX_PREAUTH_CONNECTIONS + 8, "127.0.0.2")
        except OSError as e:
            pytest.skip(f"127.0.0.2 is not usable as a source address here: {e}")
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: refused(node.port, "https", ctx).get("handshake_evicted", 0) >= 8),
            "idle TLS sockets over the cap are evicted")
        for s in socks + flood:
            s.close()

        # Connect-and-close, 50 times: counted, and the log gets at most a rate-limited line.
        def connect_close(n: int) -> None:
            for _ in range(n):
                socket.create_connection(("127.0.0.1", node.port), timeout=5).close()

        await asyncio.to_thread(connect_close, 50)
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: refused(node.port, "https", ctx).get("tls_failed", 0) >= 50),
            "every failed TLS handshake counted")
        assert b'"ok"' in await asyncio.to_thread(health)  # and still served
    finally:
        node.stop()
    assert node.proc is not None and node.proc.stderr is not None
    err = node.proc.stderr.read()
    assert "Logging error" not in err and "Traceback" not in err, err[-3000:]
    tls_lines = [ln for ln in err.splitlines() if "TLS handshake" in ln]
    assert len(tls_lines) <= 6, tls_lines  # rate-limited: a line now and then, not one per socket


# -- #13: Origin and Host ---------------------------------------------------------------------

async def test_a_foreign_origin_and_a_rebinding_host_are_refused_while_the_cli_and_dashboard_work() -> None:
    node = NodeProc("sd-origin")  # token-less: what a page on another port could once drive
    port = node.port
    try:
        # The CLI's client (no Origin header) and the dashboard (its own origin) work.
        assert "sd-origin" in await node.node_ids()
        page = await asyncio.to_thread(
            raw_request, port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert page.startswith(b"HTTP/1.1 200")
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            live = await asyncio.to_thread(raw_request, port, floods.upgrade_request(
                "/live", port, origin=f"http://{host}", host=host))
            assert live.startswith(b"HTTP/1.1 101"), live

        # A page on another localhost port: its Origin is refused on /live and on the mesh path.
        for path in ("/live", "/"):
            out = await asyncio.to_thread(raw_request, port, floods.upgrade_request(
                path, port, origin="http://localhost:3000"))
            assert out.startswith(b"HTTP/1.1 403"), out
        out = await asyncio.to_thread(raw_request, port, floods.upgrade_request("/", port, origin="null"))
        assert out.startswith(b"HTTP/1.1 403"), out

        # DNS rebinding: the attacker's name in Host, on HTTP and on an upgrade (same-origin to it).
        evil = f"rebind.attacker.example:{port}"
        out = await asyncio.to_thread(raw_request, port, f"GET /api/status HTTP/1.1\r\nHost: {evil}\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 421"), out
        out = await asyncio.to_thread(raw_request, port, floods.upgrade_request(
            "/", port, origin=f"http://{evil}", host=evil))
        assert out.startswith(b"HTTP/1.1 421"), out

        counts = await asyncio.to_thread(refused, port)
        assert counts["bad_origin"] >= 3 and counts["bad_host"] >= 2, counts
        assert "sd-origin" in await node.node_ids()  # still served
        status = await asyncio.to_thread(
            raw_request, port, f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert status.startswith(b"HTTP/1.1 200")
    finally:
        node.stop()


async def test_allowed_hosts_and_origins_extend_the_defaults() -> None:
    n = MeshCore(MeshConfig(node_id="sd-allow", websocket_port=0, enable_redis=False,
                            allowed_hosts=["mesh.example"], allowed_origins=["https://ops.example"]))
    await n.start()
    try:
        assert n.ws is not None
        port = n.ws.port
        ok = await asyncio.to_thread(raw_request, port, f"GET /health HTTP/1.1\r\nHost: mesh.example:{port}\r\n\r\n"
                                     .encode())
        assert ok.startswith(b"HTTP/1.1 200"), ok
        bad = await asyncio.to_thread(raw_request, port, b"GET /health HTTP/1.1\r\nHost: other.example\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 421"), bad
        live = await asyncio.to_thread(raw_request, port, floods.upgrade_request("/live", port,
                                                                               origin="https://ops.example"))
        assert live.startswith(b"HTTP/1.1 101"), live
        foreign = await asyncio.to_thread(raw_request, port, floods.upgrade_request("/live", port,
                                                                                  origin="https://x.example"))
        assert foreign.startswith(b"HTTP/1.1 403"), foreign
    finally:
        await n.stop()
    with pytest.raises(ValueError, match="allowed_hosts"):
        MeshConfig(allowed_hosts="mesh.example")  # type: ignore[arg-type]


# -- #13 in a real browser -------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body><script>
window.results = {};
for (const path of ["/", "/live"]) {
  const ws = new WebSocket("ws://127.0.0.1:%d" + path);
  window.results[path] = [];
  ws.onopen = () => window.results[path].push("open");
  ws.onerror = () => window.results[path].push("error");
  ws.onclose = () => window.results[path].push("close");
}
</script></body></html>"""


def test_a_page_on_another_port_cannot_open_the_nodes_websockets_while_its_own_dashboard_works() -> None:
    from .test_dashboard import CHROMIUM, CHROMIUM_ARGS, _have_browser

    require(_have_browser(), "chromium (Debian package) and playwright")
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    node = NodeProc("sd-browser")  # token-less
    port = node.port
    page_body = (ATTACK_PAGE % port).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page_body)))
            self.end_headers()
            self.wfile.write(page_body)

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                # The node's own dashboard (same origin) connects to /live and lists the node.
                own = b.new_page()
                own.goto(f"http://127.0.0.1:{port}/")
                own.wait_for_selector('#nodes [data-row-id="sd-browser"]', timeout=20_000)
                # A page on another localhost port: both of its WebSockets refused, never opened.
                evil = b.new_page()
                evil.goto(f"http://127.0.0.1:{other.server_address[1]}/")
                evil.wait_for_function(  # each socket opened or was refused
                    "() => ['/', '/live'].every(p => window.results[p].length > 0)", timeout=20_000)
                results = evil.evaluate("() => window.results")
                assert all("open" not in v for v in results.values()), results
                # and the dashboard goes on
                own.wait_for_selector('#nodes [data-row-id="sd-browser"]', timeout=20_000)
            finally:
                b.close()
        counts = refused(port)
        assert counts["bad_origin"] >= 2, counts
    finally:
        other.shutdown()
        node.stop()
