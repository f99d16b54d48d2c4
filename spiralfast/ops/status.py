"""The node's status as every view shows it: ``get_mesh_status()``, the node table, the
links and the counters, read from a :class:`~spiralfast.ports.ops.StatusSource`.

Also the event envelope (what handlers, observers and ``/api/events`` see of an event)
and :func:`jsonable`, which turns any status value into JSON-ready data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..ports.ops import LinkView, StatusSource
from ..protocol.states import node_state, state_kind
from ..records import MeshNode
from ..wire.fastpath import iso_from_epoch


def envelope(ev: Any) -> dict[str, Any]:
    """The envelope of a wire ``Event`` (a dict is returned as it is)."""
    if isinstance(ev, dict):
        return ev
    env = {
        "type": ev.event_type,
        "source_node": ev.source_node,
        "timestamp": iso_from_epoch(ev.timestamp),
        "data": ev.data,
        "event_id": ev.event_id,
    }
    if ev.target_node is not None:
        env["target_node"] = ev.target_node
    return env


def node_dict(src: StatusSource, node: MeshNode) -> dict[str, Any]:
    """A node's record as every view shows it (status, HUD, ``/api/*``): ``to_dict()``
    plus ``suspect`` (see :func:`connected`)."""
    d: dict[str, Any] = node.to_dict()
    d["suspect"] = src.is_suspect(node.node_id)
    return d


def connected(src: StatusSource, node: MeshNode) -> bool:
    """Whether ``node`` counts as connected (``connected_nodes``): this node, or a node
    heard or linked.  Node states, one table for every view (``status`` is the
    ``NodeStatus`` value):

    - ``active`` (or the ``dormant`` / ``ritual_mode`` / ``initializing`` a node reports of
      itself): alive, linked or heard; counted;
    - ``disconnected`` with ``suspect`` False: its link closed on our side (a slow peer) and
      nothing else heard since; judged by heartbeats (removed after 3 silent intervals);
      not counted;
    - ``disconnected`` with ``suspect`` True: its link was closed by its side and it is
      heard on no other route; probed, and removed after ``suspicion_timeout`` unless it
      answers; not counted;
    - removed: not listed anywhere (announced as ``node_unregister``).
    """
    return node is src.local_node or node.status.value != "disconnected"


def mesh_status(src: StatusSource) -> dict[str, Any]:
    """``get_mesh_status()``: the node's fields, then links, counters and the parts' stats.
    ``connected_nodes`` counts the live nodes of ``nodes`` (this one included): not the
    disconnected or suspected ones."""
    nodes = list(src.nodes.values())
    n = len(nodes)
    counters = node_counters(src)
    ob = src.router_stats()
    router = {**src.gate_stats(), **ob, "messages_out": ob["messages_out"] + src.traffic()["events_out"]}
    observers = list(src.observer_links())
    local = src.local_node
    return {
        "node_id": src.node_id,
        "status": local.status.value,
        "connected_nodes": sum(1 for x in nodes if connected(src, x)),
        "total_recursion_depth": sum(x.recursion_depth for x in nodes),
        "average_entropy": (sum(x.entropy_level for x in nodes) / n) if n else 0.0,
        "uptime": src.uptime(),
        "mesh_name": src.mesh_name,
        "nodes": [node_dict(src, x) for x in nodes],
        "websocket_endpoint": local.websocket_endpoint,
        "redis": src.redis_connected(),
        "nats": src.nats_connected(),
        "links": link_info(src),
        "observers": sum(1 for o in observers if getattr(o, "transport", None)),
        "followers": sum(1 for o in observers if getattr(o, "following", False)),
        "counters": counters,
        "router": router,
        "bus": src.bus_stats(),
        "sync": src.sync_status(),
        "tasks": src.tasks_status(),
        "persistence": src.persistence_status(),
        # Per origin: broadcast sequences given up (outside the origin's retransmit buffer,
        # or the origin gone) and those still missing (being repaired, or on a slower path).
        "delivery": delivery(src),
    }


def delivery(src: StatusSource) -> dict[str, Any]:
    """Unrepairable (``lost``) and not yet repaired (``missing``) events per broadcast
    origin (one per node incarnation), and the same per node for operators."""
    lost, missing = dict(src.lost()), dict(src.missing())
    names = src.origin_names()
    by_node: dict[str, dict[str, int]] = {}
    for what, counts in (("lost", lost), ("missing", missing)):
        for origin, n in counts.items():
            if n:
                node = by_node.setdefault(names.get(origin, origin), {"lost": 0, "missing": 0})
                node[what] += n
    return {"lost": lost, "missing": missing, "by_node": by_node,
            "origins": {o: names[o] for o in set(lost) | set(missing) if o in names}}


def node_counters(src: StatusSource) -> dict[str, int]:
    """Every counter of the node, read from its parts (``get_mesh_status()["counters"]``)."""
    gate, t = src.gate_stats(), src.traffic()
    c = dict(src.counts)
    c.update(events_in=t["events_in"], events_out=t["events_out"], handler_errors=t["handler_errors"],
             spilled_events=t["spilled_events"], refused_messages=gate["refused"],
             preauth_refused=gate["preauth_refused"], rate_limited=gate["rate_limited"],
             gate_errors=gate["gate_errors"], bus_refused=sum(
                 link_stats.get("refused", 0) for link in src.bus_links()
                 if isinstance(link_stats := getattr(link, "stats", None), dict)),
             events_lost=sum(src.lost().values()),
             # membership events about another node from members, reserved types from observers
             reserved_refused=t["reserved_refused"] + c.pop("reserved_refused_observers", 0),
             capabilities_refused=t["capabilities_refused"],  # over the bound, or bad names
             events_missing=sum(src.missing().values()),
             impersonation_refused=gate.get("impersonation_refused", 0),
             **_bus_identity_counts(src.bus_links()))
    return c


def _bus_identity_counts(links: Any) -> dict[str, int]:
    """Bus frames refused for their sender's key (``bus_key_refused``: unsigned, a bad
    signature, another key than the one pinned to the sender) or an epoch beyond the
    ceiling (``bus_future_epoch``), over the node's bus links."""
    key = epoch = 0
    for link in links:
        for sealer in (getattr(link, "sealer", None), getattr(link, "msealer", None)):
            st = getattr(sealer, "stats", None)
            if isinstance(st, dict):
                key += st.get("key_unsigned", 0) + st.get("key_forged", 0) + st.get("key_mismatch", 0)
                epoch += st.get("future_epoch", 0)
    return {"bus_key_refused": key, "bus_future_epoch": epoch}


def _link_row(peer: str | None, link: LinkView) -> dict[str, Any]:
    return {"peer": peer, "transport": getattr(link, "transport", "?"), **link.info()}


def link_info(src: StatusSource) -> list[dict[str, Any]]:
    """One dict per open link (``peer`` None for a shared bus), as ``links`` shows them."""
    out = [_link_row(peer, link) for peer, link in src.peer_links().items()]
    out.extend(_link_row(None, link) for link in src.bus_links())
    return out


def nodes_table(src: StatusSource) -> list[dict[str, Any]]:
    """The node table (``/api/nodes``, ``mesh nodes``): each record, its heartbeat age and
    whether it is this node."""
    now = datetime.now()
    out = []
    for n in src.nodes.values():
        d = node_dict(src, n)
        d["seconds_since_heartbeat"] = round((now - n.last_heartbeat).total_seconds(), 3)
        d["local"] = n.node_id == src.node_id
        out.append(d)
    return out


def topology(src: StatusSource, links: list[dict[str, Any]] | None = None,
             table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The mesh as this node knows it: the nodes of its node table with their status
    (``NodeStatus`` value, as ``/api/nodes``) and their one ``state`` (:func:`node_state`:
    ``suspected`` for a suspected node), and links as sorted id pairs.

    Links are this node's own open links (from its router) and the ``links`` list in
    each node's record metadata (gossiped).  ``links`` holds only links between two live
    nodes; ``suspect_links`` those with a suspected end (and no down one); a link to a
    disconnected node, to a node in a state this version does not know, or to a node no
    longer in the table, is not listed at all, so a removed node takes its links with it.
    ``table`` is the ``nodes_table`` to describe (the live feed passes the one it shows).
    """
    if table is None:
        table = nodes_table(src)
    status = {str(n["node_id"]): str(n.get("status")) for n in table}
    state = {str(n["node_id"]): node_state(n) for n in table}
    kinds = {nid: state_kind(st) for nid, st in state.items()}
    live: set[tuple[str, str]] = set()
    suspect: set[tuple[str, str]] = set()

    def add(a: str, b: str) -> None:
        if a == b or a not in kinds or b not in kinds:
            return
        pair = (a, b) if a < b else (b, a)
        ends = {kinds[a], kinds[b]}
        if ends == {"live"}:
            live.add(pair)
        elif ends <= {"live", "suspect"}:
            suspect.add(pair)

    if links is None:
        links = link_info(src)
    for lk in links:
        peer = lk.get("peer")
        if peer is not None and lk.get("state") not in ("closed", "down"):  # bus links have no single peer
            add(src.node_id, str(peer))
    records = {src.node_id: src.local_node, **src.nodes}
    for node in records.values():
        md = node.metadata if isinstance(node.metadata, dict) else {}
        peers = md.get("links")
        if isinstance(peers, (list, tuple)):
            for peer in peers:
                add(node.node_id, peer if isinstance(peer, str) else str(peer))
    return {
        "local": src.node_id,
        "nodes": sorted(status),
        "status": dict(sorted(status.items())),
        "state": dict(sorted(state.items())),
        "links": [list(p) for p in sorted(live)],
        "suspect_links": [list(p) for p in sorted(suspect)],
    }


def jsonable(obj: Any) -> Any:
    """``obj`` with every key a string and every value JSON-ready (datetimes in ISO form,
    anything unknown as its ``str``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
