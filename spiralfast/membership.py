"""Membership, sans-I/O: who is in the mesh, by heartbeats, gossip and leaves.

``Membership`` owns the node table (``nodes``, shared with the registry: one source
of truth).  It never touches a socket, a task or a clock: every method takes the
monotonic ``now`` it should use and returns effects for the asyncio shell to carry
out, as tuples:

- ``("joined", MeshNode)``: a node became known;
- ``("lost", node_id, reason)``: a node left (``"left"``), fell silent
  (``"silent"``) or was removed; the shell closes its link and stops dialling it;
- ``("dial", endpoint, node_id)``: gossip named an endpoint we have no link to.

Failure detection reads only ``now`` (monotonic): a node silent for
``silence_factor`` heartbeat intervals is lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import schema
from .registry import MeshRegistry
from .types import MeshNode, NodeStatus

Effect = tuple[Any, ...]

#: A node silent this many heartbeat intervals is removed (SPEC: 3).
SILENCE_FACTOR = 3
#: Gossip records about other nodes accepted per message; more is hostile.
MAX_GOSSIP_RECORDS = 1024
#: A removed node is not learnt again from other nodes' gossip for this many heartbeat
#: intervals (a peer that has not noticed yet would bring it back); from itself, at once.
RELEARN_FACTOR = 2 * SILENCE_FACTOR
#: Record fields a node may announce about itself (gossip of its own record).
_SELF_FIELDS = ("name", "status", "capabilities", "recursion_depth", "entropy_level", "metadata",
                "websocket_endpoint")


class Membership:
    """The node table of one node and the rules that change it.

    :param local: this node's record (kept in ``nodes`` while running).
    :param registry: the ``MeshRegistry`` whose ``nodes`` dict is the table.
    :param heartbeat_interval: seconds between heartbeats (failure detection scales).
    """

    def __init__(self, local: MeshNode, registry: MeshRegistry, heartbeat_interval: float) -> None:
        self.local = local
        self.node_id = local.node_id
        self.registry = registry
        self.nodes: dict[str, MeshNode] = registry.nodes
        self.heartbeat_interval = heartbeat_interval
        self.last_seen: dict[str, float] = {}  # node id -> monotonic time last heard of
        self.linked: set[str] = set()  # node ids we have a direct, authenticated link to
        self.removed: dict[str, float] = {}  # node id -> monotonic time it was removed
        self.now = 0.0  # the latest monotonic time we were given

    @property
    def silence_limit(self) -> float:
        return SILENCE_FACTOR * self.heartbeat_interval

    # -- the local node -------------------------------------------------------------

    def join_local(self) -> None:
        self.local.status = NodeStatus.ACTIVE
        self.local.last_heartbeat = datetime.now()
        self.registry.register_node(self.local)

    def leave_local(self) -> list[str]:
        """The node stops: forget every other node; returns their ids."""
        self.local.status = NodeStatus.DISCONNECTED
        gone = [n for n in self.nodes if n != self.node_id]
        for nid in gone:
            self.registry.unregister_node(nid)
        self.last_seen.clear()
        self.linked.clear()
        return gone

    def local_record(self) -> dict[str, Any]:
        self.local.last_heartbeat = datetime.now()
        return self.local.to_dict()

    def heartbeat(self, wall: float) -> schema.Heartbeat:
        ln = self.local
        ln.last_heartbeat = datetime.now()
        return schema.Heartbeat(self.node_id, ln.status.value, ln.recursion_depth, ln.entropy_level, wall)

    # -- inbound ---------------------------------------------------------------------

    def seen(self, record: dict[str, Any], now: float, *, authoritative: bool = False) -> list[Effect]:
        """A record of a node: a new node joins; a known one is refreshed.
        ``authoritative``: the record comes from that node itself over an
        authenticated route, so its fields replace ours."""
        nid = record.get("node_id")
        if not isinstance(nid, str) or not nid or nid == self.node_id:
            return []
        node = self.nodes.get(nid)
        self.last_seen[nid] = now
        self.now = now
        if node is None:
            try:
                node = MeshNode.from_dict(record)
            except (KeyError, TypeError, ValueError, AttributeError):
                node = MeshNode.from_dict({"node_id": nid, "name": "codex_node_" + nid[:8]})
            node.last_heartbeat = datetime.now()
            self.registry.register_node(node)
            return [("joined", node)]
        node.last_heartbeat = datetime.now()
        if authoritative:
            self._update(node, record)
        elif record.get("websocket_endpoint") and isinstance(record["websocket_endpoint"], str):
            node.websocket_endpoint = record["websocket_endpoint"]
        if node.status == NodeStatus.DISCONNECTED:
            node.status = NodeStatus.ACTIVE
        return []

    def _update(self, node: MeshNode, record: dict[str, Any]) -> None:
        try:
            fresh = MeshNode.from_dict({**node.to_dict(), **{k: record[k] for k in _SELF_FIELDS if k in record}})
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        caps_changed = fresh.capabilities != node.capabilities
        for k in _SELF_FIELDS:
            setattr(node, k, getattr(fresh, k))
        if caps_changed:  # keep the registry's capability index current
            self.registry.register_node(node)

    def link_ready(self, peer_id: str, record: dict[str, Any] | None, now: float) -> list[Effect]:
        """An authenticated member link to ``peer_id`` is up."""
        self.linked.add(peer_id)
        rec = dict(record) if isinstance(record, dict) else {}
        rec["node_id"] = peer_id
        return self.seen(rec, now, authoritative=True)

    def link_lost(self, peer_id: str) -> None:
        """The direct link to ``peer_id`` closed: it stays a member until silent or
        gone, but is shown as disconnected while nothing else is heard from it."""
        self.linked.discard(peer_id)
        node = self.nodes.get(peer_id)
        if node is not None and node is not self.local:
            node.status = NodeStatus.DISCONNECTED

    def on_heartbeat(self, hb: schema.Heartbeat, now: float) -> list[Effect]:
        effects = self.seen({"node_id": hb.node_id, "name": "codex_node_" + hb.node_id[:8], "status": hb.status}, now)
        if hb.node_id in self.nodes:
            self.registry.update_node_heartbeat(
                hb.node_id,
                {"status": hb.status, "recursion_depth": hb.recursion_depth, "entropy_level": hb.entropy_level},
            )
        return effects

    def on_gossip(self, g: schema.Gossip, sender: str | None, now: float, *, learn: bool,
                  dial: bool) -> list[Effect]:
        """Gossip from ``sender``: its own record refreshes it; other records are
        learnt (``learn``: over a shared bus, where gossip is how nodes meet) and
        their endpoints dialled (``dial``)."""
        effects: list[Effect] = []
        for rec in g.nodes[:MAX_GOSSIP_RECORDS]:
            if not isinstance(rec, dict):
                continue
            nid = rec.get("node_id")
            if not isinstance(nid, str) or not nid or nid == self.node_id:
                continue
            if nid == sender:
                effects += self.seen(rec, now, authoritative=True)
            elif learn:
                effects += self.learn(rec, now)
            ep = rec.get("websocket_endpoint")
            if dial and isinstance(ep, str) and ep and nid not in self.linked:
                effects.append(("dial", ep, nid))
        return effects

    def learn(self, record: dict[str, Any], now: float) -> list[Effect]:
        """A record of a node from another node's gossip (second hand): it introduces a
        node we do not know, but never keeps a known one alive; only the node itself does
        (a killed node, still listed by every survivor's gossip, would never expire)."""
        nid = record.get("node_id")
        if not isinstance(nid, str):
            return []
        node = self.nodes.get(nid)
        if node is not None:
            ep = record.get("websocket_endpoint")
            if ep and isinstance(ep, str):
                node.websocket_endpoint = ep
            return []
        gone = self.removed.get(nid)
        if gone is not None and now - gone < RELEARN_FACTOR * self.heartbeat_interval:
            return []
        return self.seen(record, now)

    def on_leave(self, node_id: str) -> list[Effect]:
        return self.remove(node_id, "left")

    def remove(self, node_id: str, reason: str) -> list[Effect]:
        self.last_seen.pop(node_id, None)
        if node_id != self.node_id and node_id in self.nodes:
            self.removed[node_id] = self.now
        self.linked.discard(node_id)
        if node_id == self.node_id or not self.registry.unregister_node(node_id):
            return []
        return [("lost", node_id, reason)]

    def alive(self, node_id: str, now: float) -> None:
        """Something other than a heartbeat proves ``node_id`` is alive (frames from it
        keep arriving while our own backlog delays its heartbeats behind them)."""
        if node_id in self.last_seen and self.last_seen[node_id] < now:
            self.last_seen[node_id] = now
            node = self.nodes.get(node_id)
            if node is not None:
                node.last_heartbeat = datetime.now()

    def stalled(self, seconds: float) -> None:
        """This node did not run for ``seconds`` (a blocked loop, SIGSTOP): the silence
        was ours, not the peers'.  Their clocks move on by as much."""
        for nid in self.last_seen:
            self.last_seen[nid] += seconds

    # -- time ------------------------------------------------------------------------

    def sweep(self, now: float) -> list[Effect]:
        """Failure detection: every node silent longer than the limit is lost."""
        limit = self.silence_limit
        self.now = now
        forget = RELEARN_FACTOR * self.heartbeat_interval
        for nid in [n for n, t in self.removed.items() if now - t >= forget]:
            del self.removed[nid]
        effects: list[Effect] = []
        for nid in [n for n in self.nodes if n != self.node_id]:
            if now - self.last_seen.get(nid, now) > limit:
                effects += self.remove(nid, "silent")
            elif nid not in self.last_seen:  # added by the user (register_node): start its clock
                self.last_seen[nid] = now
        return effects
