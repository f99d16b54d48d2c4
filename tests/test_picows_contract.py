"""What spiralfast relies on in picows, checked against the installed picows.

``spiralfast.links.ws.picows_adapter`` is the only module that uses picows' private names
(``WSProtocol`` built by hand, ``_parse_http_request``), and only for the versions in
``TESTED_VERSIONS``.  These tests fail loudly when the installed picows is not one of
them or changes what we use, and check that the public-API fallback (forced with
``SPIRALFAST_PICOWS_PUBLIC``) serves HTTP, the dashboard and mesh WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from importlib import resources
from typing import Any

import picows
import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.links.ws import picows_adapter
from spiralfast.ops.server import HeadShim, ws_create_server

from .waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def test_installed_picows_is_a_tested_version() -> None:
    version = picows_adapter.installed_version()
    assert version in picows_adapter.TESTED_VERSIONS, (
        f"picows {version} is not in spiralfast.links.ws.picows_adapter.TESTED_VERSIONS "
        f"{sorted(picows_adapter.TESTED_VERSIONS)}: the node serves through picows' public API (no HEAD, "
        "connections counted from their request).  Run this file; when it passes, add the version and "
        "move the upper bound in pyproject.toml")


def test_private_names_are_there() -> None:
    from picows import picows as impl

    assert hasattr(impl, "WSProtocol"), "picows.picows.WSProtocol is gone"
    assert callable(getattr(impl, "_parse_http_request", None)), "picows.picows._parse_http_request is gone"
    assert picows_adapter.private_path()


def test_logger_naming_matches_picows() -> None:
    """The adapter names picows' server logger as picows' own server does (a log level set
    on ``picows.spiralfast.ws.server`` must reach the protocol)."""
    from picows import api

    resolve = api._resolve_logger
    for name in ("spiralfast.ws.server", None):
        assert resolve(name, "server") is picows_adapter.server_logger(name)


def test_wsprotocol_init_signature() -> None:
    """The 15 parameters we pass, in order, read from picows' own source when it ships it."""
    src = resources.files("picows").joinpath("picows.pyx")
    if not src.is_file():
        pytest.skip("picows ships no picows.pyx: the arity is checked by test_private_protocol_builds")
    text = src.read_text()
    m = re.search(r"cdef class WSProtocol\b.*?def __init__\(self,(.*?)\):", text, re.S)
    assert m, "WSProtocol.__init__ not found in picows.pyx"
    names = tuple(p.strip().split()[-1].split("=")[0] for p in m.group(1).split(",") if p.strip())
    assert names == picows_adapter.WSPROTOCOL_PARAMS, f"WSProtocol.__init__ changed: {names}"


def test_upstream_server_passes_the_same_arguments() -> None:
    """picows' own ws_create_server builds WSProtocol with the argument list we copy."""
    import inspect

    from picows import api

    body = inspect.getsource(api.ws_create_server)
    call = body[body.index("WSProtocol("):]
    assert call.count(",") >= len(picows_adapter.WSPROTOCOL_PARAMS) - 1
    assert "read_buffer_init_size" in call[: call.index(")\n")]


async def test_private_protocol_builds() -> None:
    proto = picows_adapter.server_protocol(lambda r: None, logger=picows_adapter.server_logger("spiralfast.test"),
                                           handshake_timeout=1.0,
                                           max_frame_size=65536, read_buffer_init_size=4096)
    assert isinstance(proto, asyncio.BufferedProtocol)
    assert proto.listener is None  # type: ignore[attr-defined]


def test_request_parser() -> None:
    req = picows_adapter.parse_request(b"GET /health?x=1 HTTP/1.1\r\nHost: a:1\r\nX-Y: z")
    assert isinstance(req, picows.WSUpgradeRequest)
    assert req.method == b"GET" and req.path == b"/health?x=1"
    assert req.headers.get("Host") == "a:1" and req.headers.get("x-y") == "z"


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


class _Echo(picows.WSListener):
    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            transport.send(picows.WSMsgType.TEXT, b"echo:" + frame.get_payload_as_bytes())


async def _serve_and_check(expect_head: bool) -> None:
    def factory(request: Any) -> Any:
        if request.path == b"/echo":
            return _Echo()
        body = json.dumps({"path": request.path.decode()}).encode()
        resp = picows.WSUpgradeResponse.create_ok_response(body, {"Content-Type": "application/json"})
        return picows.WSUpgradeResponseWithListener(resp, None)

    server = await ws_create_server(factory, "127.0.0.1", 0, max_frame_size=65536, websocket_handshake_timeout=2)
    port = server.sockets[0].getsockname()[1]
    try:
        out = await asyncio.to_thread(_raw, port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        assert json.loads(out.split(b"\r\n\r\n", 1)[1]) == {"path": "/health"}
        head = await asyncio.to_thread(_raw, port, b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") == expect_head, head[:80]
        got: list[bytes] = []

        class _Client(picows.WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                got.append(frame.get_payload_as_bytes())

        tr, _ = await picows.ws_connect(_Client, f"ws://127.0.0.1:{port}/echo")
        tr.send(picows.WSMsgType.TEXT, b"hi")
        await wait_until(lambda: got == [b"echo:hi"], 'got == [b"echo:hi"]', timeout=5)
        tr.disconnect()
    finally:
        server.close()


async def test_private_path_serves_http_head_and_websocket() -> None:
    assert picows_adapter.private_path()
    await _serve_and_check(expect_head=True)


async def test_public_fallback_serves_http_and_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(picows_adapter.FORCE_PUBLIC_ENV, "1")
    assert not picows_adapter.private_path()
    built: list[Any] = []
    monkeypatch.setattr(HeadShim, "__init__", lambda *a: built.append(a))  # never reached on this path
    await _serve_and_check(expect_head=False)
    assert built == []


async def test_public_fallback_runs_a_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real nodes on the fallback: links, events, /api/status and the dashboard."""
    monkeypatch.setenv(picows_adapter.FORCE_PUBLIC_ENV, "1")

    def cfg(node_id: str, **kw: Any) -> MeshConfig:
        return MeshConfig(node_id=node_id, websocket_port=0, enable_redis=False, heartbeat_interval=0.3, **kw)

    def peers(node: MeshCore) -> set[str]:
        return {str(lk["peer"]) for lk in node.get_mesh_status()["links"] if lk.get("peer") is not None}

    a = MeshCore(cfg("pf-a"))
    await a.start()
    b = MeshCore(cfg("pf-b", peers=[f"ws://127.0.0.1:{a.config.websocket_port}"]))
    await b.start()
    try:
        got: list[Any] = []
        a.register_event_handler("pf", lambda env: got.append(env["data"]))
        await wait_until(lambda: "pf-b" in peers(a) and "pf-a" in peers(b), "linked")
        for i in range(50):
            await b.broadcast_event("pf", i)
        await wait_until(lambda: len(got) == 50, "len(got) == 50")
        assert got == list(range(50))
        port = a.config.websocket_port
        out = await asyncio.to_thread(_raw, port, b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and json.loads(out.split(b"\r\n\r\n", 1)[1])["node_id"] == "pf-a"
        page = await asyncio.to_thread(_raw, port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200") and b"text/html" in page
    finally:
        await b.stop()
        await a.stop()
