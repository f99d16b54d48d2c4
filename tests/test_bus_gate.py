"""Bus payloads pass the gate (issue 22 #3): a bus link never opens a sealed payload itself.
Data frames, control messages (Redis acks and joins, NATS acks, joins and ``bye``) and
catch-up replays are opened by ``Gate.bus_payload``/``bus_replayed``, refusals counted on
the gate and the link, control messages rate-limited per sender."""

from __future__ import annotations

import asyncio

import msgspec

from spiralfast import MeshConfig, MeshCore
from spiralfast.busauth import BusSealer
from spiralfast.links.bus.nats import NatsSettings, NatsTransport
from spiralfast.links.bus.redis import RedisSettings, RedisTransport
from spiralfast.node.gate import BUS_CONTROL_BURST

TOKEN = "gate-token-0123456789abcdef012345"
MESH = "spiral_codex_mesh"


def _core() -> MeshCore:
    return MeshCore(MeshConfig(node_id="rx", enable_websocket=False, enable_redis=False, auth_token=TOKEN,
                               sign_bus_frames=False))


def test_redis_control_messages_pass_the_gate() -> None:
    async def main() -> None:
        core = _core()
        link = RedisTransport(core.host, RedisSettings("rx", token=TOKEN))
        link.connected = True
        core.host.bus_up(link)
        gate = core.gate
        peer = BusSealer("peer", MESH, TOKEN)
        ack = link.ack_channel.encode()
        refused = gate.stats["refused"]
        # a join, answered by the link (through on_control)
        link._on_message(link.ack_channel, peer.seal(ack, 1, msgspec.msgpack.encode({0: "join"})))
        assert link.stats["joins_answered"] == 1 and "peer" in link.sf_nodes
        # an ack of our offset
        link.tx_offset = 100
        link._on_message(link.ack_channel, peer.seal(ack, 2, msgspec.msgpack.encode({"rx": 40})))
        assert link.acked["peer"] == 40
        # forged (another token) and replayed: refused by the gate, counted on both
        wrong = BusSealer("peer", MESH, "another-token-0123456789abcdef01")
        link._on_message(link.ack_channel, wrong.seal(ack, 3, msgspec.msgpack.encode({"rx": 90})))
        link._on_message(link.ack_channel, peer.seal(ack, 2, msgspec.msgpack.encode({"rx": 90})))
        assert link.acked["peer"] == 40
        assert link.stats["refused"] == 2 and gate.stats["refused"] == refused + 2
        # malformed (not a map): counted, nothing done
        errors = gate.stats["frame_errors"]
        link._on_message(link.ack_channel, peer.seal(ack, 4, msgspec.msgpack.encode([1, 2])))
        assert link.stats["bad"] == 1 and gate.stats["frame_errors"] == errors + 1
        # a flood of control messages from one sender: rate-limited per sender
        limited = gate.stats["rate_limited_bus"]
        flood = [peer.seal(ack, 10 + i, msgspec.msgpack.encode({"rx": 50})) for i in range(2 * BUS_CONTROL_BURST)]
        for payload in flood:  # sealed first: fed faster than the bucket refills
            link._on_message(link.ack_channel, payload)
        assert gate.stats["rate_limited_bus"] >= limited + BUS_CONTROL_BURST // 2
        # ...per sender: another one is heard
        other = BusSealer("other", MESH, TOKEN)
        link._on_message(link.ack_channel, other.seal(ack, 1, msgspec.msgpack.encode({"rx": 60})))
        assert link.acked["other"] == 60

    asyncio.run(main())


def test_nats_bye_and_acks_pass_the_gate() -> None:
    async def main() -> None:
        core = _core()
        link = NatsTransport(core.host, NatsSettings("rx", token=TOKEN))
        link.connected = True
        core.host.bus_up(link)
        peer = BusSealer("peer", MESH, TOKEN)
        members = link.members.encode()
        link.sf_nodes.add("peer")
        link._on_data(link.members, peer.seal(members, 1, msgspec.msgpack.encode({"acks": {"rx": 7}})))
        assert link.acked["peer"] == 7
        link._on_data(link.members, peer.seal(members, 2, msgspec.msgpack.encode({"bye": True})))
        assert "peer" not in link.sf_nodes and "peer" not in link.acked
        # a data frame sealed for the members subject is not a control message elsewhere
        refused = link.stats["refused"]
        link._on_data(link.bcast, peer.seal(members, 3, b"x"))
        assert link.stats["refused"] == refused + 1

    asyncio.run(main())
