"""Answers for observers (CLI, dashboard): they join with role "observer", never as
mesh members, and send ``Query`` messages; replies carry the same ``qid``.

Queries: ``status``, ``nodes``, ``events`` (args: count, types), ``follow``
(args: types; then every new event arrives as a ``Reply`` with qid 0 until the
observer disconnects), ``publish`` (args: type, data, target), ``state`` (args: category, key), ``state_set``
(category, key, value), ``state_delete`` (category, key), ``sync``, ``history`` (since, until, types, source, limit).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import schema
from .fastpath import iso_from_epoch
from .outbox import single_frame

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.observe")

#: qid of the replies that stream followed events.
FOLLOW_QID = 0
#: Event types only the node itself sends: membership announcements (another node may
#: announce only itself; see the receive path) and the mesh's own ``_sf.*`` protocols.
RESERVED_TYPES = frozenset(("node_register", "node_unregister"))


def reserved_type(etype: str) -> bool:
    """Whether an observer may not publish ``etype`` (refused and counted)."""
    return etype in RESERVED_TYPES or etype.startswith("_sf.")


def envelope(ev: Any) -> dict[str, Any]:
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


def node_dict(core: MeshCore, node: Any) -> dict[str, Any]:
    """A node's record as every view shows it (status, HUD, ``/api/*``): ``to_dict()``
    plus ``suspect`` (see :func:`connected`)."""
    d: dict[str, Any] = node.to_dict()
    d["suspect"] = core.membership.is_suspect(node.node_id)
    return d


def connected(core: MeshCore, node: Any) -> bool:
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
    return node is core.local_node or node.status.value != "disconnected"


def mesh_status(core: MeshCore) -> dict[str, Any]:
    """``get_mesh_status()``: the SPEC fields, then links, counters and the parts' stats.
    ``connected_nodes`` counts the live nodes of ``nodes`` (this one included): not the
    disconnected or suspected ones."""
    nodes = list(core.nodes.values())
    n = len(nodes)
    gate, ob, sender = core.gate, core.outbox, core.sender
    counters = node_counters(core)
    router = {**gate.stats, **ob.stats, "messages_out": ob.stats["messages_out"] + sender.events_out}
    return {
        "node_id": core.node_id,
        "status": core.local_node.status.value,
        "connected_nodes": sum(1 for x in nodes if connected(core, x)),
        "total_recursion_depth": sum(x.recursion_depth for x in nodes),
        "average_entropy": (sum(x.entropy_level for x in nodes) / n) if n else 0.0,
        "uptime": (time.monotonic() - core.start_time) if core.start_time is not None and core.running else 0.0,
        "mesh_name": core.config.mesh_name,
        "nodes": [node_dict(core, x) for x in nodes],
        "websocket_endpoint": core.local_node.websocket_endpoint,
        "redis": bool(core.redis is not None and core.redis.connected),
        "nats": bool(core.nats is not None and core.nats.connected),
        "links": link_info(core),
        "observers": sum(1 for o in core.observers if getattr(o, "transport", None)),
        "followers": sum(1 for o in core.observers if getattr(o, "following", False)),
        "counters": counters,
        "router": router,
        "bus": core.event_bus.get_event_stats(),
        "sync": core.state.get_sync_status(),
        "tasks": core.tasks.status(),
        "persistence": core.eventlog.status() if core.eventlog is not None else None,
        # Per origin: broadcast sequences given up (outside the origin's retransmit buffer,
        # or the origin gone) and those still missing (being repaired, or on a slower path).
        "delivery": delivery(core),
    }


def delivery(core: MeshCore) -> dict[str, Any]:
    """Unrepairable (``lost``) and not yet repaired (``missing``) events per broadcast
    origin (one per node incarnation), and the same per node for operators."""
    lost, missing = core.gate.dedupe.lost(), core.gate.dedupe.gaps()
    names = core.host.origin_names
    by_node: dict[str, dict[str, int]] = {}
    for what, counts in (("lost", lost), ("missing", missing)):
        for origin, n in counts.items():
            if n:
                node = by_node.setdefault(names.get(origin, origin), {"lost": 0, "missing": 0})
                node[what] += n
    return {"lost": lost, "missing": missing, "by_node": by_node,
            "origins": {o: names[o] for o in set(lost) | set(missing) if o in names}}


def node_counters(core: MeshCore) -> dict[str, int]:
    gate, d = core.gate, core.dispatcher
    c = dict(core.counts)
    c.update(events_in=gate.sink.events_in, events_out=core.sender.events_out, handler_errors=d.handler_errors,
             spilled_events=d.spilled, refused_messages=gate.stats["refused"],
             preauth_refused=gate.stats["preauth_refused"], rate_limited=gate.stats["rate_limited"],
             gate_errors=gate.stats["gate_errors"], bus_refused=sum(
                 link.stats.get("refused", 0) for link in core.outbox.bus_links if hasattr(link, "stats")),
             events_lost=sum(core.gate.dedupe.lost().values()),
             # membership events about another node from members, reserved types from observers
             reserved_refused=gate.sink.reserved_refused + c.pop("reserved_refused_observers", 0),
             capabilities_refused=core.registry.capabilities_refused,  # over the bound, or bad names
             events_missing=sum(core.gate.dedupe.gaps().values()),
             impersonation_refused=gate.stats.get("impersonation_refused", 0),
             **_bus_identity_counts(core))
    return c


def _bus_identity_counts(core: MeshCore) -> dict[str, int]:
    """Bus frames refused for their sender's key (``bus_key_refused``: unsigned, a bad
    signature, another key than the one pinned to the sender) or an epoch beyond the
    ceiling (``bus_future_epoch``), over the node's bus links."""
    key = epoch = 0
    for link in core.outbox.bus_links:
        for sealer in (getattr(link, "sealer", None), getattr(link, "msealer", None)):
            st = getattr(sealer, "stats", None)
            if isinstance(st, dict):
                key += st.get("key_unsigned", 0) + st.get("key_forged", 0) + st.get("key_mismatch", 0)
                epoch += st.get("future_epoch", 0)
    return {"bus_key_refused": key, "bus_future_epoch": epoch}


def link_info(core: MeshCore) -> list[dict[str, Any]]:
    out = []
    for peer, link in core.outbox.links.items():
        out.append({"peer": peer, "transport": getattr(link, "transport", "?"), **link.info()})
    for link in core.outbox.bus_links:
        out.append({"peer": None, "transport": getattr(link, "transport", "?"), **link.info()})
    return out


def push_follow(core: MeshCore) -> Any:
    """The dispatcher's hook for observers following events."""
    def push(link: Any, env: dict[str, Any]) -> None:
        if not getattr(link, "following", False):
            return
        types = getattr(link, "follow_types", None)
        if types and env["type"] not in types:
            return
        _reply(core, link, FOLLOW_QID, True, env)
    return push


def nodes_table(core: MeshCore) -> list[dict[str, Any]]:
    now = datetime.now()
    out = []
    for n in core.nodes.values():
        d = node_dict(core, n)
        d["seconds_since_heartbeat"] = round((now - n.last_heartbeat).total_seconds(), 3)
        d["local"] = n.node_id == core.node_id
        out.append(d)
    return out


def _reply(core: MeshCore, link: Any, qid: int, ok: bool, data: Any) -> None:
    link.send_frame(single_frame(schema.KIND_REPLY, schema.Reply(qid, ok, data)))


#: Queries that change something: an observer's rate limit applies to them.
_WRITES = frozenset(("publish", "state_set", "state_delete", "submit"))


def answer_query(core: MeshCore, link: Any, q: schema.Query) -> None:
    args = q.args if isinstance(q.args, dict) else {}
    if q.what in _WRITES and core.gate.over_rate(link):  # counted: rate_limited, spiralfast_rate_limited_total
        _reply(core, link, q.qid, False, "rate limit exceeded: try again later")
        return
    try:
        if q.what == "ping":
            _reply(core, link, q.qid, True, {"node_id": core.node_id})
        elif q.what == "status":
            _reply(core, link, q.qid, True, _jsonable(core.get_mesh_status()))
        elif q.what == "nodes":
            _reply(core, link, q.qid, True, nodes_table(core))
        elif q.what == "events":
            count = int(args.get("count") or 50)
            types = set(args.get("types") or ())
            evs = [envelope(e) for e in core.recent_events]
            if types:
                evs = [e for e in evs if e["type"] in types]
            _reply(core, link, q.qid, True, evs[-count:] if count > 0 else [])
        elif q.what == "state":
            _reply(core, link, q.qid, True, _jsonable(core.state.get_local_state(args.get("category"), args.get("key"))))
        elif q.what == "state_set":
            core.state.update_local_state(str(args["category"]), str(args["key"]), args.get("value"))
            _reply(core, link, q.qid, True, {"state_version": core.state.state_version})
        elif q.what == "state_delete":
            ok = core.state.delete_local_state(str(args["category"]), str(args["key"]))
            _reply(core, link, q.qid, True, {"deleted": ok})
        elif q.what == "sync":
            _reply(core, link, q.qid, True, _jsonable(core.state.get_sync_status()))
        elif q.what == "history":
            from .eventlog import answer_history

            answer_history(core, args, lambda ok, data, qid=q.qid: _reply(core, link, qid, ok, data))
        elif q.what == "tasks":
            _reply(core, link, q.qid, True, _jsonable(core.tasks.status()))
        elif q.what == "submit":
            core.tasks.answer_submit(args, lambda ok, data, qid=q.qid: _reply(core, link, qid, ok, data))
        elif q.what == "follow":
            link.follow_types = set(args.get("types") or ())
            link.following = True
            _reply(core, link, q.qid, True, {"following": True})
        elif q.what == "publish":
            etype = str(args["type"])
            data = args.get("data")
            target = args.get("target")
            if not etype:
                raise ValueError("event type must not be empty")
            if reserved_type(etype):  # the node's own protocols and membership: never an observer's
                core.counts["reserved_refused_observers"] = core.counts.get("reserved_refused_observers", 0) + 1
                _reply(core, link, q.qid, False, f"event type {etype!r} is reserved to the node")
                return
            core.dispatcher.spawn(_publish(core, link, q.qid, etype, data, target))
        else:
            _reply(core, link, q.qid, False, f"unknown query {q.what!r}")
    except (KeyError, TypeError, ValueError) as exc:
        _reply(core, link, q.qid, False, f"bad query: {exc}")


async def _publish(core: MeshCore, link: Any, qid: int, etype: str, data: Any, target: str | None) -> None:
    if target:
        ok = await core.send_to_node(target, etype, data)
        _reply(core, link, qid, ok, {"sent": ok, "target": target} if ok else f"unknown node {target}")
    else:
        await core.broadcast_event(etype, data)
        _reply(core, link, qid, True, {"sent": True, "at": time.time()})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
