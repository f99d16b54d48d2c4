"""Sans-I/O regression for what the chaos suite found: second-hand gossip (every
survivor's records, over Redis) kept a kill -9'd node alive forever."""

from __future__ import annotations

from spiralfast import schema
from spiralfast.node.registry import MeshRegistry
from spiralfast.protocol.membership import Joined, Membership
from spiralfast.records import MeshNode


def _membership() -> Membership:
    local = MeshNode.from_dict({"node_id": "me", "name": "me"})
    return Membership(local, MeshRegistry("me"), heartbeat_interval=1.0)


def test_others_gossip_does_not_keep_a_dead_node_alive() -> None:
    m = _membership()
    m.on_heartbeat(schema.Heartbeat("dead", "active", 0, 0.0, 0.0), now=0.0)
    m.on_heartbeat(schema.Heartbeat("alive", "active", 0, 0.0, 0.0), now=0.0)
    g = schema.Gossip([{"node_id": "dead", "websocket_endpoint": "ws://d"}, {"node_id": "alive"}])
    for t in range(1, 40):  # "alive" heartbeats and gossips about "dead" every 0.1 s
        now = t / 10
        m.on_heartbeat(schema.Heartbeat("alive", "active", 0, 0.0, 0.0), now=now)
        m.on_gossip(g, "alive", now, learn=True, dial=False)
        m.sweep(now)
    assert "dead" not in m.nodes and "alive" in m.nodes
    # nor does it bring the dead node back while it may still be listed by a slower peer
    assert m.on_gossip(g, "alive", 5.0, learn=True, dial=False) == [] and "dead" not in m.nodes
    # its own heartbeat does (a restart under the same id)
    m.on_heartbeat(schema.Heartbeat("dead", "active", 0, 0.0, 0.0), now=5.1)
    assert "dead" in m.nodes
    # and a node never heard of is still learnt from gossip
    eff = m.on_gossip(schema.Gossip([{"node_id": "new"}]), "alive", 5.2, learn=True, dial=False)
    assert eff and isinstance(eff[0], Joined)
