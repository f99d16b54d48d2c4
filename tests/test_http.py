"""HTTP on the node's port: /health, /api/*, the dashboard's shell and its /live feed,
with and without ``auth_token`` (SPEC "Observability", issue 11 item 6)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import picows
import pytest

from spiralfast import MeshCore

from .test_metrics import cfg, get, peers
from .waiting import wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret"
STATIC = ("/", "/index.html", "/dashboard.css", "/dashboard.js", "/favicon.svg", "/favicon.ico")
PROTECTED = ("/metrics", "/api/status", "/api/nodes", "/api/events", "/api/topology", "/api/snapshot")


@pytest.fixture
async def open_node() -> AsyncIterator[MeshCore]:
    a = MeshCore(cfg("h-open"))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


@pytest.fixture
async def locked_node() -> AsyncIterator[MeshCore]:
    a = MeshCore(cfg("h-locked", auth_token=TOKEN))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def base(node: MeshCore) -> str:
    return f"http://127.0.0.1:{node.config.websocket_port}"


async def auth_failures(node: MeshCore) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = (await get(base(node) + "/metrics", TOKEN))[2].decode()
    for fam in text_string_to_metric_families(body):
        if fam.name == "spiralfast_auth_failures":
            return float(fam.samples[0].value)
    raise AssertionError("no spiralfast_auth_failures_total")


async def test_open_node_answers_everything(open_node: MeshCore) -> None:
    a = open_node
    status, _, body = await get(base(a) + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "node_id": "h-open"}
    for path in STATIC + PROTECTED:
        assert (await get(base(a) + path))[0] == 200, path
    status, headers, body = await get(base(a) + "/")
    assert headers["Content-Type"].startswith("text/html") and b"/dashboard.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert (await get(base(a) + "/nope"))[0] == 404


async def test_locked_node_needs_the_token(locked_node: MeshCore) -> None:
    a = locked_node
    # /health says only that it is up, to anyone
    status, _, body = await get(base(a) + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = await get(base(a) + "/health", TOKEN)
    assert status == 200 and json.loads(body)["node_id"] == "h-locked"
    # the static shell holds no node data and needs no token
    for path in STATIC:
        status, _, body = await get(base(a) + path)
        assert status == 200, path
        assert b"h-locked" not in body
    before = await auth_failures(a)
    for path in PROTECTED:
        status, _, body = await get(base(a) + path)
        assert status == 401, path
        assert b"h-locked" not in body
        assert (await get(base(a) + path, "wrong"))[0] == 401
        assert (await get(base(a) + path, TOKEN + "x"))[0] == 401
        assert (await get(base(a) + path, TOKEN))[0] == 200, path
    assert await auth_failures(a) >= before + 3 * len(PROTECTED)


async def test_api_events_honours_its_query(open_node: MeshCore) -> None:
    a = open_node
    b = MeshCore(cfg("h-b", peers=[f"ws://127.0.0.1:{a.config.websocket_port}"]))
    await b.start()
    try:
        await wait_until(lambda: "h-b" in peers(a), '"h-b" in peers(a)')
        for i in range(5):
            await b.broadcast_event("x", {"i": i})
            await b.broadcast_event("y", {"i": i})
        await wait_until(lambda: a.get_mesh_status()["counters"]["events_in"] >= 10, 'a.get_mesh_status()["counters"]["events_in"] >= 10')
        evs = json.loads((await get(base(a) + "/api/events?count=1&type=x"))[2])
        assert [(e["type"], e["data"]) for e in evs] == [("x", {"i": 4})]
        evs = json.loads((await get(base(a) + "/api/events?type=y"))[2])
        assert [e["data"]["i"] for e in evs] == [0, 1, 2, 3, 4] and {e["type"] for e in evs} == {"y"}
        evs = json.loads((await get(base(a) + "/api/events?count=3&type=x&type=y"))[2])
        assert len(evs) == 3
        evs = json.loads((await get(base(a) + "/api/events?count=2&type=x,y"))[2])
        assert len(evs) == 2
        assert (await get(base(a) + "/api/events?count=0"))[0] == 400  # tests/test_http_params.py
        assert json.loads((await get(base(a) + "/api/events?type=nothing"))[2]) == []
        evs = json.loads((await get(base(a) + "/api/events"))[2])  # no count: the default count
        assert len([e for e in evs if e["type"] in ("x", "y")]) == 10
        topo = json.loads((await get(base(a) + "/api/topology"))[2])
        assert topo == {"local": "h-open", "nodes": ["h-b", "h-open"], "links": [["h-b", "h-open"]],
                        "status": {"h-b": "active", "h-open": "active"}, "suspect_links": [],
                        "state": {"h-b": "active", "h-open": "active"}}
    finally:
        await b.stop()


def _raw(port: int, request: bytes | list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i, part in enumerate([request] if isinstance(request, bytes) else request):
            if i:
                time.sleep(0.05)  # time itself: a client that sends its request in pieces
            s.sendall(part)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_head_answers_headers_only() -> None:
    """What ops/http.py does with a HEAD once the transport lets one through."""
    from types import SimpleNamespace

    from multidict import CIMultiDict

    from spiralfast.ops.http import HttpEndpoints

    h = HttpEndpoints(MeshCore(cfg("h-head")).ops)
    head = h.respond(SimpleNamespace(method=b"HEAD", path=b"/health", headers=CIMultiDict())).response
    get_ = h.respond(SimpleNamespace(method=b"GET", path=b"/health", headers=CIMultiDict())).response
    assert head.status == 200 and head.body is None
    assert head.headers["Content-Length"] == str(len(get_.body))
    assert bytes(head.to_bytes()).endswith(b"\r\n\r\n")


async def test_head_health_is_not_400(open_node: MeshCore) -> None:
    out = await asyncio.to_thread(_raw, open_node.config.websocket_port,
                                  b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200"), out[:80]
    assert out.endswith(b"\r\n\r\n")  # no body


class _Live(picows.WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.msgs: list[Any] = []
        self.closed = False

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            self.msgs.append(orjson.loads(frame.get_payload_as_bytes()))
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True


async def _live(node: MeshCore) -> tuple[Any, _Live]:
    tr, lst = await picows.ws_connect(_Live, f"ws://127.0.0.1:{node.config.websocket_port}/live")
    return tr, lst


async def test_live_feed_open(open_node: MeshCore) -> None:
    tr, lst = await _live(open_node)
    try:
        await wait_until(lambda: len(lst.msgs) >= 2, 'len(lst.msgs) >= 2', timeout=5)
        s = lst.msgs[-1]
        assert s["node_id"] == "h-open"
        assert {n["node_id"] for n in s["nodes"]} == {"h-open"}
        assert s["topology"]["nodes"] == ["h-open"]
        for key in ("rates", "history", "by_type", "sync", "recent", "links", "counters"):
            assert key in s
        assert lst.msgs[-1]["t"] - lst.msgs[-2]["t"] >= 0.9  # never faster than once a second
    finally:
        tr.disconnect()


async def test_live_feed_keeps_history_for_the_next_page(open_node: MeshCore) -> None:
    tr, lst = await _live(open_node)
    await wait_until(lambda: len(lst.msgs) >= 3, 'len(lst.msgs) >= 3', timeout=6)
    tr.disconnect()
    await wait_until(lambda: lst.closed, 'lst.closed', timeout=5)
    seen = len(lst.msgs[-1]["history"])
    assert open_node.ws is not None and open_node.ws.http is not None
    live = open_node.ws.http.live
    await wait_until(lambda: not live.clients and len(live.history) > seen, 'not live.clients and len(live.history) > seen', timeout=10)  # nobody watching: still sampled
    tr, lst = await _live(open_node)
    try:
        await wait_until(lambda: bool(lst.msgs), 'bool(lst.msgs)', timeout=5)
        assert len(lst.msgs[0]["history"]) > seen  # the new page starts with the chart filled
        assert set(lst.msgs[0]["health"]) >= {"dropped", "lost", "handler_errors", "auth_failures"}
    finally:
        tr.disconnect()


async def test_live_feed_needs_the_token(locked_node: MeshCore) -> None:
    tr, lst = await _live(locked_node)
    await wait_until(lambda: bool(lst.msgs), 'bool(lst.msgs)', timeout=5)
    assert lst.msgs == [{"auth": "required"}]
    tr.send(picows.WSMsgType.TEXT, orjson.dumps({"token": "wrong"}))
    await wait_until(lambda: lst.closed, 'lst.closed', timeout=5)
    assert lst.msgs[-1] == {"error": "unauthorized"}
    assert not any("node_id" in m for m in lst.msgs)

    tr, lst = await _live(locked_node)
    try:
        await wait_until(lambda: bool(lst.msgs), 'bool(lst.msgs)', timeout=5)
        tr.send(picows.WSMsgType.TEXT, orjson.dumps({"token": TOKEN}))
        await wait_until(lambda: any("node_id" in m for m in lst.msgs), 'any("node_id" in m for m in lst.msgs)', timeout=5)
        assert lst.msgs[-1]["node_id"] == "h-locked"
    finally:
        tr.disconnect()


async def test_live_clients_closed_when_node_stops() -> None:
    a = MeshCore(cfg("h-stop"))
    await a.start()
    tr, lst = await _live(a)
    await wait_until(lambda: bool(lst.msgs), 'bool(lst.msgs)', timeout=5)
    await a.stop()
    await wait_until(lambda: lst.closed, 'lst.closed', timeout=5)



async def test_live_unauthenticated_connections_are_capped(locked_node: MeshCore) -> None:
    from spiralfast.ops.live import LIVE_MAX_PENDING

    conns = []
    try:
        for _ in range(LIVE_MAX_PENDING + 3):
            tr, lst = await _live(locked_node)
            await wait_until(lambda lst=lst: bool(lst.msgs), 'bool(lst.msgs)', timeout=5)
            conns.append((tr, lst))
        # the oldest unauthenticated ones were dropped; the newest wait for their token
        await wait_until(lambda: sum(lst.closed for _, lst in conns) == 3, 'sum(lst.closed for _, lst in conns) == 3', timeout=5)
        assert [lst.closed for _, lst in conns[:3]] == [True] * 3
        tr, lst = conns[-1]
        tr.send(picows.WSMsgType.TEXT, orjson.dumps({"token": TOKEN}))
        await wait_until(lambda: any("node_id" in m for m in lst.msgs), 'any("node_id" in m for m in lst.msgs)', timeout=5)
    finally:
        for tr, _ in conns:
            tr.disconnect()


class _Echo(picows.WSListener):  # type: ignore[misc]
    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            transport.send(picows.WSMsgType.TEXT, b"echo:" + frame.get_payload_as_bytes())


async def test_server_with_head(open_node: MeshCore) -> None:
    """spiralfast.ops.server.ws_create_server: HEAD answered, GET and WebSocket as picows does."""
    from spiralfast.ops.http import HttpEndpoints
    from spiralfast.ops.server import ws_create_server

    http = HttpEndpoints(open_node.ops)

    def factory(request: Any) -> Any:
        if (request.headers.get("Upgrade") or "").lower() == "websocket" and request.path == b"/echo":
            return _Echo()
        return http.respond(request)

    server = await ws_create_server(factory, "127.0.0.1", 0, max_frame_size=65536, websocket_handshake_timeout=2)
    port = server.sockets[0].getsockname()[1]
    try:
        head = await asyncio.to_thread(_raw, port, b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        get_ = await asyncio.to_thread(_raw, port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n"), head
        body = get_.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["node_id"] == "h-open"
        assert f"Content-Length: {len(body)}".encode() in head
        # HEAD of the dashboard, split over three reads
        head2 = await asyncio.to_thread(_raw, port, [b"HE", b"AD / HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n\r\n"])
        assert head2.startswith(b"HTTP/1.1 200") and b"text/html" in head2 and head2.endswith(b"\r\n\r\n")
        # other methods: still refused by picows, no hang
        assert (await asyncio.to_thread(_raw, port, b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")).startswith(
            b"HTTP/1.1 400")

        got: list[bytes] = []

        class _Client(picows.WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                got.append(frame.get_payload_as_bytes())

        tr, _ = await picows.ws_connect(_Client, f"ws://127.0.0.1:{port}/echo")
        tr.send(picows.WSMsgType.TEXT, b"hi")
        await wait_until(lambda: got == [b"echo:hi"], 'got == [b"echo:hi"]', timeout=5)
        tr.disconnect()
    finally:
        server.close()


async def test_mesh_node_on_server_with_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same server under a real node (as links/ws.py would call it): HEAD /health is
    answered, and mesh links and events work as before."""
    from spiralfast.ops import server

    monkeypatch.setattr(picows, "ws_create_server", server.ws_create_server)
    a = MeshCore(cfg("hs-a"))
    await a.start()
    b = MeshCore(cfg("hs-b", peers=[f"ws://127.0.0.1:{a.config.websocket_port}"]))
    await b.start()
    try:
        got: list[Any] = []
        a.register_event_handler("hs", lambda env: got.append(env["data"]))
        await wait_until(lambda: "hs-b" in peers(a) and "hs-a" in peers(b), '"hs-b" in peers(a) and "hs-a" in peers(b)')
        for i in range(100):
            await b.broadcast_event("hs", i)
        await wait_until(lambda: len(got) == 100, 'len(got) == 100')
        assert got == list(range(100))
        out = await asyncio.to_thread(_raw, a.config.websocket_port, b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n")
    finally:
        await b.stop()
        await a.stop()
