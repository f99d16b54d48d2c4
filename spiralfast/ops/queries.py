"""Answers for observers (CLI, dashboard): they join with role "observer", never as
mesh members, and send ``Query`` messages; replies carry the same ``qid``.

Queries: ``status``, ``nodes``, ``events`` (args: count, types), ``follow``
(args: types; then every new event arrives as a ``Reply`` with qid 0 until the
observer disconnects), ``publish`` (args: type, data, target), ``state`` (args: category, key), ``state_set``
(category, key, value), ``state_delete`` (category, key), ``sync``, ``history`` (since, until, types, source, limit),
``tasks``, ``submit``.

Everything a query reads or changes goes through a :class:`~spiralfast.ports.ops.QueryHost`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from ..ports.ops import QueryHost
from ..wire import schema
from ..wire.codec import FrameWriter
from .status import envelope, jsonable, nodes_table

#: qid of the replies that stream followed events.
FOLLOW_QID = 0
#: Event types only the node itself sends: membership announcements (another node may
#: announce only itself; see the receive path) and the mesh's own ``_sf.*`` protocols.
RESERVED_TYPES = frozenset(("node_register", "node_unregister"))
#: Queries that change something: an observer's rate limit applies to them.
_WRITES = frozenset(("publish", "state_set", "state_delete", "submit"))


class ObserverLink(Protocol):
    """An observer's connection: replies are sent as frames of their own."""

    def send_frame(self, frame: bytes) -> bool: ...


def reserved_type(etype: str) -> bool:
    """Whether an observer may not publish ``etype`` (refused and counted)."""
    return etype in RESERVED_TYPES or etype.startswith("_sf.")


def _reply(link: ObserverLink, qid: int, ok: bool, data: Any) -> None:
    w = FrameWriter()  # one message in a frame of its own: sent at once, unbatched
    w.add(schema.KIND_REPLY, 0, b"", b"", schema.Reply(qid, ok, data))
    link.send_frame(bytes(w.finish()))


def push_follow() -> Callable[[Any, dict[str, Any]], None]:
    """The dispatcher's hook for observers following events: ``push(link, envelope)``."""
    def push(link: Any, env: dict[str, Any]) -> None:
        if not getattr(link, "following", False):
            return
        types = getattr(link, "follow_types", None)
        if types and env["type"] not in types:
            return
        _reply(link, FOLLOW_QID, True, env)
    return push


def answer_query(host: QueryHost, link: Any, q: schema.Query) -> None:
    """Answer one observer query on ``link`` (a bad one with ``ok`` False and the reason)."""
    args = q.args if isinstance(q.args, dict) else {}
    if q.what in _WRITES and host.over_rate(link):  # counted: rate_limited, spiralfast_rate_limited_total
        _reply(link, q.qid, False, "rate limit exceeded: try again later")
        return

    def later(ok: bool, data: Any, qid: int = q.qid) -> None:
        _reply(link, qid, ok, data)

    try:
        if q.what == "ping":
            _reply(link, q.qid, True, {"node_id": host.node_id})
        elif q.what == "status":
            _reply(link, q.qid, True, jsonable(host.status()))
        elif q.what == "nodes":
            _reply(link, q.qid, True, nodes_table(host))
        elif q.what == "events":
            count = int(args.get("count") or 50)
            types = set(args.get("types") or ())
            evs = [envelope(e) for e in host.recent_events()]
            if types:
                evs = [e for e in evs if e["type"] in types]
            _reply(link, q.qid, True, evs[-count:] if count > 0 else [])
        elif q.what == "state":
            _reply(link, q.qid, True, jsonable(host.get_state(args.get("category"), args.get("key"))))
        elif q.what == "state_set":
            version = host.set_state(str(args["category"]), str(args["key"]), args.get("value"))
            _reply(link, q.qid, True, {"state_version": version})
        elif q.what == "state_delete":
            ok = host.delete_state(str(args["category"]), str(args["key"]))
            _reply(link, q.qid, True, {"deleted": ok})
        elif q.what == "sync":
            _reply(link, q.qid, True, jsonable(host.sync_status()))
        elif q.what == "history":
            host.answer_history(args, later)
        elif q.what == "tasks":
            _reply(link, q.qid, True, jsonable(host.tasks_status()))
        elif q.what == "submit":
            host.submit_task(args, later)
        elif q.what == "follow":
            link.follow_types = set(args.get("types") or ())
            link.following = True
            _reply(link, q.qid, True, {"following": True})
        elif q.what == "publish":
            etype = str(args["type"])
            data = args.get("data")
            target = args.get("target")
            if not etype:
                raise ValueError("event type must not be empty")
            if reserved_type(etype):  # the node's own protocols and membership: never an observer's
                host.counts["reserved_refused_observers"] = host.counts.get("reserved_refused_observers", 0) + 1
                _reply(link, q.qid, False, f"event type {etype!r} is reserved to the node")
                return
            host.spawn(_publish(host, link, q.qid, etype, data, target))
        else:
            _reply(link, q.qid, False, f"unknown query {q.what!r}")
    except (KeyError, TypeError, ValueError) as exc:
        _reply(link, q.qid, False, f"bad query: {exc}")


async def _publish(host: QueryHost, link: ObserverLink, qid: int, etype: str, data: Any,
                   target: str | None) -> None:
    if target:
        ok = await host.send_to_node(target, etype, data)
        _reply(link, qid, ok, {"sent": ok, "target": target} if ok else f"unknown node {target}")
    else:
        await host.broadcast_event(etype, data)
        _reply(link, qid, True, {"sent": True, "at": time.time()})
