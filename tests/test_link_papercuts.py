"""Papercuts of issue 24 (item 11) on the links: an oversized payload's error names the
limit and the size; a TLS certificate refused on either side of a dial is a WARNING
naming the peer and the reason."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

import pytest

from spiralfast import MeshConfig, MeshCore, schema
from spiralfast.errors import FrameError
from spiralfast.limits import MAX_MESSAGE_SIZE

from .conftest import require, wait_for


def test_an_oversized_payload_names_the_limit_and_its_size(codec_impl: Any) -> None:
    w = codec_impl.FrameWriter()
    w.add(schema.KIND_EVENT, 0, b"", b"ok", "y" * 1000)  # within the limit: fine
    big = "y" * (10 << 20)
    with pytest.raises(FrameError) as err:
        w.add(schema.KIND_EVENT, 0, b"", b"big", big)
    text = str(err.value)
    assert f"{MAX_MESSAGE_SIZE:,} bytes (8.0 MiB)" in text and "10,485," in text and "(10.0 MiB)" in text
    assert w.count == 1  # the good message is kept, the bad one left no trace
    with pytest.raises(FrameError, match=r"8,388,608 bytes \(8\.0 MiB\) per message"):
        w.add_raw(schema.KIND_EVENT, 0, b"", b"big", big.encode())


async def test_a_node_refuses_a_10_mib_payload_saying_the_limit() -> None:
    n = MeshCore(MeshConfig(node_id="big-n", enable_redis=False, enable_websocket=False))
    await n.start()
    try:
        await n.broadcast_event("x", "y" * 1000)  # the positive path
        with pytest.raises(FrameError, match=r"10,485,\d+ bytes \(10\.0 MiB\) exceeds the limit of 8,388,608 bytes"):
            await n.broadcast_event("x", "y" * (10 << 20))
        await n.broadcast_event("x", "y" * 1000)  # and the node goes on
    finally:
        await n.stop()


def _self_signed(tmp: Any) -> tuple[str, str]:
    require(shutil.which("openssl") is not None, "the openssl binary (for a test certificate)")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_a_refused_certificate_is_a_warning_on_both_sides(tmp_path: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spiralfast.ws")
    cert, key = _self_signed(tmp_path)
    base: dict[str, Any] = dict(enable_redis=False, websocket_port=0, heartbeat_interval=0.5)
    a = MeshCore(MeshConfig(node_id="tlsw-a", ssl_certfile=cert, ssl_keyfile=key, **base))
    await a.start()
    ep = a.local_node.websocket_endpoint or ""
    b = MeshCore(MeshConfig(node_id="tlsw-b", peers=[ep], ssl_cafile=cert, **base))  # trusts a's certificate
    c = MeshCore(MeshConfig(node_id="tlsw-c", peers=[ep], **base))  # does not
    await b.start()
    try:
        await wait_for(lambda: "tlsw-b" in a.nodes and "tlsw-a" in b.nodes)  # the positive path
        await c.start()

        def warned(start: str, *parts: str) -> bool:
            return any(r.levelno == logging.WARNING and r.getMessage().startswith(start)
                       and all(p in r.getMessage() for p in parts) for r in caplog.records)

        # The dialler refuses the certificate: the peer's URL, the reason and what to do.
        await wait_for(lambda: warned(f"cannot reach {ep}: TLS certificate refused", "self-signed certificate",
                                      "ssl_cafile"), timeout=15)
        # The node whose certificate was refused: the peer's address and what it means.
        await wait_for(lambda: warned("TLS handshake from 127.0.0.1:", "refuses our certificate"), timeout=15)
        assert c.ws is not None and c.ws.tls_failures >= 1
        assert "tlsw-c" not in a.nodes and "tlsw-a" not in c.nodes
    finally:
        for n in (c, b, a):
            await n.stop()
