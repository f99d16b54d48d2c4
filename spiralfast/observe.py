"""Answers for observers (CLI, dashboard): they join with role "observer", never as
mesh members, and send ``Query`` messages; replies carry the same ``qid``.

Queries: ``status``, ``nodes``, ``events`` (args: count, types), ``follow``
(args: types; then every new event arrives as a ``Reply`` with qid 0 until the
observer disconnects), ``publish`` (args: type, data, target), ``state`` (args: category, key), ``state_set``
(category, key, value), ``state_delete`` (category, key), ``sync``, ``history`` (since, until, types, source, limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import schema
from .fastpath import iso_from_epoch

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.observe")

#: qid of the replies that stream followed events.
FOLLOW_QID = 0


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


def nodes_table(core: MeshCore) -> list[dict[str, Any]]:
    now = datetime.now()
    out = []
    for n in core.nodes.values():
        d = n.to_dict()
        d["seconds_since_heartbeat"] = round((now - n.last_heartbeat).total_seconds(), 3)
        d["local"] = n.node_id == core.node_id
        out.append(d)
    return out


def _reply(core: MeshCore, link: Any, qid: int, ok: bool, data: Any) -> None:
    core.router.send_link(link, schema.KIND_REPLY, schema.Reply(qid, ok, data))


def answer_query(core: MeshCore, link: Any, q: schema.Query) -> None:
    args = q.args if isinstance(q.args, dict) else {}
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
            task = asyncio.ensure_future(_publish(core, link, q.qid, etype, data, target))
            core._tasks.append(task)
            task.add_done_callback(lambda t: core._tasks.remove(t) if t in core._tasks else None)
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


def push_event(core: MeshCore, ev: Any) -> None:
    env = None
    if core._listeners:
        env = envelope(ev)
        core._notify(env)
    for link in list(core.observers):
        if not getattr(link, "following", False):
            continue
        types = getattr(link, "follow_types", None)
        t = ev["type"] if isinstance(ev, dict) else ev.event_type
        if types and t not in types:
            continue
        if env is None:
            env = envelope(ev)
        _reply(core, link, FOLLOW_QID, True, env)


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
