"""The picows listener (``links/ws/_wslistener``): compiled and pure twins through the one
``twins`` fixture (tests/twins.py), over a real picows connection: whole binary frames to
``on_frame``, fragments, pings and pongs to the link, connect and disconnect."""

from __future__ import annotations

import asyncio
from typing import Any

import picows
import pytest

from tests.twins import Twins, twins_fixture  # noqa: F401  (the fixture)


class _Link:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.up = asyncio.Event()
        self.down = asyncio.Event()

    def connected(self, transport: Any) -> None:
        self.events.append(("connected",))
        self.up.set()

    def disconnected(self) -> None:
        self.events.append(("disconnected",))
        self.down.set()

    def pong(self, payload: bytes) -> None:
        self.events.append(("pong", payload))

    def ping_received(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def fragment(self, msg_type: Any, data: bytes, fin: bool) -> None:
        self.events.append(("fragment", int(msg_type), data, fin))

    def bad_frame(self, msg_type: Any) -> None:
        self.events.append(("bad", int(msg_type)))

    def pause(self) -> None:
        self.events.append(("pause",))

    def resume(self) -> None:
        self.events.append(("resume",))


async def _run(mod: Any) -> list[tuple[Any, ...]]:
    link = _Link()
    frames: list[bytes] = []

    def on_frame(lk: Any, view: memoryview) -> None:
        assert lk is link
        frames.append(bytes(view))

    server = await picows.ws_create_server(lambda _req: mod.MeshListener(link, on_frame), "127.0.0.1", 0,
                                           enable_auto_pong=False)
    port = server.sockets[0].getsockname()[1]
    try:
        tr, _ = await picows.ws_connect(picows.WSListener, f"ws://127.0.0.1:{port}/")
        await asyncio.wait_for(link.up.wait(), 5)
        tr.send(picows.WSMsgType.BINARY, b"one")
        tr.send(picows.WSMsgType.BINARY, b"pa", False)
        tr.send(picows.WSMsgType.CONTINUATION, b"rt", True)
        tr.send_ping(b"p1")
        tr.send(picows.WSMsgType.TEXT, b"text")
        tr.send(picows.WSMsgType.BINARY, b"two")
        tr.send_close(picows.WSCloseCode.OK)
        await asyncio.wait_for(link.down.wait(), 5)
        tr.disconnect()
    finally:
        server.close()
    return [("frame", f) for f in frames] + link.events


@pytest.mark.parametrize("twins", ["wslistener"], indirect=True)
async def test_compiled_and_pure_listeners_behave_identically(twins: Twins) -> None:
    seen = [await _run(impl) for impl in twins.both]
    assert seen[0] == seen[-1]
    events = seen[0]
    assert ("frame", b"one") in events and ("frame", b"two") in events
    assert ("fragment", int(picows.WSMsgType.BINARY), b"pa", False) in events
    assert ("fragment", int(picows.WSMsgType.CONTINUATION), b"rt", True) in events
    assert ("ping", b"p1") in events and ("bad", int(picows.WSMsgType.TEXT)) in events
    assert events[-1] == ("disconnected",) and ("connected",) in events
    assert twins.pure.COMPILED is False
