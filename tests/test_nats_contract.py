"""Contract with nats-py: what ``links/bus/nats/client.py`` relies on in nats-py's private
API, checked against the installed version (fails loudly when it changes), and the NATS
link run over the public-API fallback (forced with ``client.FORCE_PUBLIC``)."""

from __future__ import annotations

import asyncio
import inspect
import uuid

import pytest

from spiralfast import MeshConfig, MeshCore
from spiralfast.links.bus.nats import client as nats_client

from .nats_cluster import nats_or_fail
from .waiting import wait_until

nats = pytest.importorskip("nats")


def test_installed_version_is_a_tested_one() -> None:
    v = nats_client.nats_version()
    assert v.startswith(nats_client.TESTED_VERSIONS), (
        f"nats-py {v} is not in TESTED_VERSIONS {nats_client.TESTED_VERSIONS}: the NATS link takes the public "
        "API (slower); check the private names below against it, then add it")


def test_private_names_we_rely_on_are_there() -> None:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

    params = list(inspect.signature(Client._process_msg).parameters)
    assert params == ["self", "sid", "subject", "reply", "data", "headers"], params
    params = list(inspect.signature(Client._process_info).parameters)
    assert params[:3] == ["self", "info", "initial_connection"], params
    c = Client()
    assert isinstance(c._pending, list) and "in_msgs" in c.stats and "in_bytes" in c.stats
    assert hasattr(c, "_current_server") and hasattr(c, "_transport")
    assert Subscription(c, id=7)._id == 7  # the sid nats-py's reader hands _process_msg
    assert "tls_handshake_first" in inspect.signature(Client.connect).parameters  # the public path's TLS


def test_private_path_reaches_the_socket_writer() -> None:
    url = nats_or_fail()

    async def main() -> None:
        c = nats_client.NatsClient(private=True)

        async def cb(*_a: object) -> None:
            pass

        await c.connect([url], tls=None, wants_tls=False, name="contract", connect_timeout=2,
                        reconnect_time_wait=0.25, pending_size=1 << 20, error_cb=cb, disconnected_cb=cb,
                        reconnected_cb=cb)
        got: list[tuple[str, bytes]] = []
        subject = f"contract.{uuid.uuid4().hex}"
        await c.subscribe(subject, lambda s, d: got.append((s, d)))
        await c.flush(2)
        w = c.writer()
        assert w is not None, "nats-py's transport writer (_transport._io_writer) is gone"
        other = nats_client.NatsClient(private=False)
        await other.connect([url], tls=None, wants_tls=False, name="contract-pub", connect_timeout=2,
                            reconnect_time_wait=0.25, pending_size=1 << 20, error_cb=cb, disconnected_cb=cb,
                            reconnected_cb=cb)
        await other.subscribe(subject + ".back", lambda s, d: got.append((s, d)))
        await other.flush(2)
        await other.publish(subject, b"hello")
        await other.flush(2)
        await wait_until(lambda: got == [(subject, b"hello")], "the inline handler got the message")
        nats_client.write_line(w, subject + ".back", b"direct")  # (no_echo: another client hears it)
        await c.flush(2)
        await wait_until(lambda: (subject + ".back", b"direct") in got, "a direct write reached the server")
        await other.close()
        await c.close()

    asyncio.run(main())


def test_the_link_works_over_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    url = nats_or_fail()
    monkeypatch.setattr(nats_client, "FORCE_PUBLIC", True)
    mesh = f"contract-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        def cfg(nid: str) -> MeshConfig:
            return MeshConfig(node_id=nid, mesh_name=mesh, enable_websocket=False, enable_redis=False, nats_url=url,
                              auth_token="contract-token-0123456789abcdef", heartbeat_interval=0.3)

        a, b = MeshCore(cfg("ca")), MeshCore(cfg("cb"))
        await a.start()
        await b.start()
        try:
            assert a.nats is not None and a.nats.client is not None and not a.nats.client.private
            await wait_until(lambda: "cb" in a.nodes and "ca" in b.nodes, "both nodes met over NATS")
            assert a.nats.info()["state"] == "open"
        finally:
            await b.stop()
            await a.stop()

    asyncio.run(main())
