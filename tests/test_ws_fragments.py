"""Hostile fragmented WebSocket messages, from a raw socket (frames built by hand).

Mesh frames over 64 KiB travel as fragmented WebSocket messages, which only an
authenticated link reassembles, up to ``max_frame_size`` (spiralfast.links.ws).  Each
test first shows the good path on the same kind of connection (an unfragmented Hello
moves the handshake on; a fragmented query from an authenticated observer is
reassembled and answered), then the attack: fragments before authentication, a
continuation with no start, a reassembly over the size limit.  The node refuses each
(counted, the connection closed) and keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore, schema
from spiralfast.client import ObserverClient
from spiralfast.codec import decode_frame, decode_payload
from spiralfast.node.outbox import single_frame
from spiralfast.protocol.handshake import Handshake

from .waiting import wait_until

pytestmark = pytest.mark.timeout(120)

OP_CONT, OP_BINARY = 0x0, 0x2
LIMIT = 256 * 1024  # the node's max_frame_size in these tests


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


class Raw:
    """A raw TCP connection speaking WebSocket by hand."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w
        self.hello: Any = None

    @classmethod
    async def open(cls, port: int) -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        self = cls(r, w)
        kind, self.hello = (await self.messages())[0]  # the node greets first
        assert kind == schema.KIND_HELLO
        return self

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.w.write(ws_frame(opcode, payload, fin))

    async def frame(self, timeout: float = 20) -> tuple[int, bytes]:
        """The next frame from the node: (opcode, payload); opcode -1 at EOF."""
        try:
            b0, b1 = await asyncio.wait_for(self.r.readexactly(2), timeout)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.r.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.r.readexactly(8))[0]
            return b0 & 0x0F, await self.r.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return -1, b""

    async def messages(self) -> list[tuple[int, Any]]:
        """The mesh messages of the next binary frame (pings answered, skipped)."""
        while True:
            op, data = await self.frame()
            if op == OP_BINARY:
                return [(m.kind, decode_payload(m.kind, m.payload)) for m in decode_frame(data)]
            if op in (-1, 0x8):
                raise ConnectionError("closed by the node")

    async def closed(self) -> list[int]:
        """Read until the node closes the connection; the opcodes it sent meanwhile."""
        ops: list[int] = []
        while True:
            op, _ = await self.frame()
            if op == -1:
                return ops
            ops.append(op)

    async def observe(self) -> None:
        """Complete the node's handshake as an observer (no token)."""
        hs = Handshake("raw-" + uuid.uuid4().hex[:8], self.hello.mesh_name, None, outbound=True, role="observer")
        out = hs.start() + hs.receive(schema.KIND_HELLO, self.hello)
        while hs.state != "ready":
            for k, o in out:
                self.send(OP_BINARY, single_frame(k, o))
            assert hs.state != "failed", hs.error
            out = []
            for k, o in await self.messages():
                out += hs.receive(k, o)
        for k, o in out:
            self.send(OP_BINARY, single_frame(k, o))

    async def reply(self, qid: int) -> Any:
        while True:
            for k, o in await self.messages():
                if k == schema.KIND_REPLY and o.qid == qid:
                    return o


def query(qid: int, what: str = "status", **args: Any) -> bytes:
    return single_frame(schema.KIND_QUERY, schema.Query(qid, what, args))


def pieces(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.fixture
async def node() -> AsyncIterator[MeshCore]:
    m = MeshCore(MeshConfig(node_id="frag", enable_redis=False, websocket_port=0, max_frame_size=LIMIT))
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


def frame_errors(m: MeshCore) -> int:
    assert m.ws is not None
    return int(m.ws.frame_errors)


async def still_serves(m: MeshCore) -> None:
    c = await ObserverClient.connect(f"ws://127.0.0.1:{m.config.websocket_port}")
    try:
        assert (await c.query("status"))["node_id"] == "frag"
    finally:
        c.close()


def test_ws_frame_masks_like_rfc6455() -> None:
    f = ws_frame(OP_BINARY, b"Hello", fin=True)
    assert f[0] == 0x82 and f[1] == 0x85
    mask, body = f[2:6], f[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == b"Hello"
    big = os.urandom(70_000)
    g = ws_frame(OP_CONT, big, fin=False)
    assert g[0] == 0x00 and g[1] == 0x80 | 127 and struct.unpack("!Q", g[2:10])[0] == len(big)
    assert bytes(b ^ g[10:14][i % 4] for i, b in enumerate(g[14:])) == big


async def test_fragments_before_authentication_are_never_reassembled(node: MeshCore) -> None:
    port = node.config.websocket_port
    # Good path: an unfragmented Hello from an observer moves the handshake on.
    good = await Raw.open(port)
    await good.observe()
    good.send(OP_BINARY, query(1))
    assert (await good.reply(1)).ok
    good.w.close()
    # The same Hello, fragmented, before authentication: never reassembled or answered;
    # each fragment counts as a frame error and the third closes the connection.
    raw = await Raw.open(port)
    errors0 = frame_errors(node)
    hs = Handshake("raw-frag", raw.hello.mesh_name, None, outbound=True, role="observer")
    (kind, hello), = hs.start()
    first, second = pieces(single_frame(kind, hello), 2)
    raw.send(OP_BINARY, first, fin=False)
    raw.send(OP_CONT, second, fin=True)
    await wait_until(lambda: frame_errors(node) == errors0 + 2, "two frame errors counted")
    raw.send(OP_CONT, b"x", fin=True)
    ops = await asyncio.wait_for(raw.closed(), 20)
    assert OP_BINARY not in ops  # the Hello was never seen: no Auth, no Reply, nothing but the close
    assert frame_errors(node) == errors0 + 3
    assert len(node.nodes) == 1  # nobody joined
    await still_serves(node)


async def test_a_continuation_with_no_start_is_refused(node: MeshCore) -> None:
    raw = await Raw.open(node.config.websocket_port)
    await raw.observe()
    # Good path: a query in three fragments is reassembled and answered.
    a, b, c = pieces(query(7), 3)
    raw.send(OP_BINARY, a, fin=False)
    raw.send(OP_CONT, b, fin=False)
    raw.send(OP_CONT, c, fin=True)
    assert (await raw.reply(7)).ok
    errors0 = frame_errors(node)
    # A continuation with no message started (the last one ended with fin): refused,
    # not delivered, counted; the third such frame closes the connection.
    raw.send(OP_CONT, query(8), fin=True)
    raw.send(OP_CONT, query(9), fin=False)
    await wait_until(lambda: frame_errors(node) == errors0 + 2, "two orphan continuations counted")
    raw.send(OP_BINARY, query(10))  # an unfragmented query between them is still answered
    assert (await raw.reply(10)).ok
    raw.send(OP_CONT, query(11), fin=True)
    ops = await asyncio.wait_for(raw.closed(), 20)
    assert OP_BINARY not in ops  # queries 8, 9 and 11 were never answered
    assert frame_errors(node) == errors0 + 3
    await still_serves(node)


async def test_reassembly_over_the_size_limit_closes_the_link(node: MeshCore,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spiralfast.ws")
    raw = await Raw.open(node.config.websocket_port)
    await raw.observe()
    # Good path: a message just under the limit, in 64 KiB fragments, is reassembled:
    # a query whose padding argument makes the frame LIMIT - 64 bytes long.
    pad = "p" * (LIMIT - 64 - len(query(1, pad="")))
    big = query(1, pad=pad)
    assert LIMIT - 128 < len(big) <= LIMIT
    parts = pieces(big, -(-len(big) // (64 * 1024)))
    for i, p in enumerate(parts):
        raw.send(OP_BINARY if i == 0 else OP_CONT, p, fin=i == len(parts) - 1)
    assert (await raw.reply(1)).ok
    # Over the limit: fragments adding up past max_frame_size; the link closes before
    # the last fragment is even sent (nothing is buffered past the limit).
    chunk = b"\0" * (64 * 1024)
    raw.send(OP_BINARY, chunk, fin=False)
    for _ in range(LIMIT // len(chunk)):
        raw.send(OP_CONT, chunk, fin=False)
    ops = await asyncio.wait_for(raw.closed(), 20)
    assert OP_BINARY not in ops
    assert any("message over the frame size limit" in r.getMessage() for r in caplog.records)  # the reason
    assert not [lk for lk in node.ws.links if lk._parts]  # type: ignore[union-attr]  # no buffer kept
    await still_serves(node)
