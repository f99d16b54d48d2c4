"""Rows and envelopes: how events look in the store, and the time arguments of queries.

An event is an *envelope* (a dict, as handlers see it) or a wire event
(``schema.Event``, what the hot paths hold); the log keeps batches of either as JSON
(:mod:`spiralfast.store.sqlite_store`) or one ``ritual_events`` row per event
(:func:`event_row`, PostgreSQL and the old table).  Rows go to the old
``ritual_events`` table (see :mod:`spiralfast.persistence`): ``event_id``,
``timestamp`` (local ISO text, as in the envelope), ``event_type`` (the envelope's
type), ``description``, ``agent_id`` (the source node), ``metadata`` (JSON
``{"mesh": 1, "data": ..., "target_node": ...}``) and ``severity``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from ..wire.fastpath import iso_from_epoch

if TYPE_CHECKING:
    from ..wire.schema import Event

#: An envelope: the dict handlers get (``type``, ``source_node``, ``timestamp``, ``data``,
#: ``event_id``, and ``target_node`` when set).
Envelope: TypeAlias = "dict[str, Any]"
#: What the log records: an envelope, or the wire event itself.
Recordable: TypeAlias = "dict[str, Any] | Event"
#: One table row.
Row = tuple[Any, ...]
#: A time bound of a query: an ISO time, a ``datetime`` (naive = local), epoch seconds,
#: a ``timedelta`` or ``"10m"`` (that long ago); None: unbounded (see :func:`parse_time`).
TimeArg: TypeAlias = "datetime | timedelta | float | str | None"
#: Event types of a query: one, or an iterable of them (enums give their ``value``); None: all.
TypesArg: TypeAlias = "str | Iterable[Any] | None"
#: One ``delivery_cursor`` row: ``(origin, done, ahead json, at)``.
CursorRow = tuple[str, int, str, float]

EVENT_COLUMNS = ("event_id", "timestamp", "event_type", "description", "agent_id", "metadata", "severity")
METRIC_COLUMNS = ("metric_id", "timestamp", "metric_name", "metric_value", "metadata")

#: Types whose rows get a description and severity of their own (see ``event_row``).
SPECIAL_TYPES = frozenset({"node_register", "node_unregister", "system_alert", "system_error"})

json_encode = msgspec.json.Encoder(enc_hook=str).encode
json_decode = msgspec.json.decode

# -- time arguments ----------------------------------------------------------------------

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_time(value: object) -> str | None:
    """A time bound as stored (local ISO text), from None, a ``datetime`` (naive =
    local), an epoch number, a ``timedelta`` or relative string (``"10m"``, ``"2h"``,
    ``"30s"``, ``"1d"``: that long ago) or an ISO string.

    :raises ValueError: the value is none of these.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, timedelta):
        return (datetime.now() - value).isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value)).isoformat()
    if isinstance(value, str):
        m = _REL.match(value)
        if m:
            return (datetime.now() - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])).isoformat()
        try:
            return parse_time(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            pass
    raise ValueError(f"not a time: {value!r} (use an ISO time, or 30s, 10m, 2h, 1d ago)")


def types_arg(types: TypesArg) -> list[str] | None:
    """The event types of a query as a list (None: all types)."""
    if types is None:
        return None
    if isinstance(types, str):
        return [types]
    out = [getattr(t, "value", t) for t in types]
    return [str(t) for t in out] or None


# -- rows <-> envelopes ----------------------------------------------------------------


def encode_json(obj: Any) -> bytes:
    try:
        return json_encode(obj)
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return json.dumps(obj, default=str).encode()
    except (TypeError, ValueError, OverflowError):  # e.g. tuple keys: keep it readable at least
        return json.dumps(repr(obj)).encode()


def event_row(env: dict[str, Any]) -> Row:
    """The ``ritual_events`` row of one envelope."""
    et = env["type"]
    meta = b'{"mesh":1,"data":' + encode_json(env.get("data"))
    target = env.get("target_node")
    if target is not None:
        meta += b',"target_node":' + encode_json(target)
    if env.get("replayed"):
        meta += b',"replayed":true'
    severity = "INFO"
    description = et
    if et == "node_register":
        description = "Node joined mesh"
    elif et == "node_unregister":
        data = env.get("data")
        reason = data.get("reason") if isinstance(data, dict) else None
        if reason in ("silent", "lost"):
            description, severity = f"Node lost ({reason})", "WARNING"
        else:
            description = f"Node left mesh ({reason})" if reason else "Node left mesh"
    elif et == "system_alert":
        severity = "WARNING"
    elif et == "system_error":
        severity = "ERROR"
    eid = env.get("event_id") or uuid.uuid4().hex
    ts = env.get("timestamp") or datetime.now().isoformat()
    return (eid, ts, et, description, env.get("source_node"), (meta + b"}").decode(), severity)


def struct_row(ev: Event) -> Row:
    """``event_row`` of a wire event, without building its envelope first."""
    et = ev.event_type
    if et in SPECIAL_TYPES:
        return event_row(struct_envelope(ev))
    meta = b'{"mesh":1,"data":' + encode_json(ev.data)
    if ev.target_node is not None:
        meta += b',"target_node":' + encode_json(ev.target_node)
    return (ev.event_id, iso_from_epoch(ev.timestamp), et, et, ev.source_node, (meta + b"}").decode(), "INFO")


def row_envelope(event_id: str, timestamp: str, event_type: str, description: str, agent_id: str | None,
                 metadata: str | None, severity: str | None) -> dict[str, Any]:
    """The envelope of one stored row.  Rows written by ``PersistenceManager`` (not
    mesh events) carry ``{"description", "metadata", "severity"}`` as their data."""
    meta: Any = None
    if metadata:
        try:
            meta = json_decode(metadata)
        except (msgspec.DecodeError, ValueError):
            meta = metadata
    env: dict[str, Any] = {"type": event_type, "source_node": agent_id, "timestamp": timestamp}
    if isinstance(meta, dict) and meta.get("mesh") == 1:
        env["data"] = meta.get("data")
        env["event_id"] = event_id
        if meta.get("target_node") is not None:
            env["target_node"] = meta["target_node"]
    else:
        env["data"] = {"description": description, "metadata": meta, "severity": severity or "INFO"}
        env["event_id"] = event_id
    return env


def struct_envelope(ev: Event) -> dict[str, Any]:
    """The envelope of a wire ``Event`` (``schema.Event``) as handlers see it."""
    env = {"type": ev.event_type, "source_node": ev.source_node, "timestamp": iso_from_epoch(ev.timestamp),
           "data": ev.data, "event_id": ev.event_id}
    if ev.target_node is not None:
        env["target_node"] = ev.target_node
    return env


def stored_envelope(item: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """A stored batch element (envelope object, or wire-form array) as an envelope."""
    if isinstance(item, dict):
        return item
    env = {"type": item[1], "source_node": item[2], "timestamp": iso_from_epoch(item[3]),
           "data": item[4] if len(item) > 4 else None, "event_id": item[0]}
    if len(item) > 5 and item[5] is not None:
        env["target_node"] = item[5]
    return env


def decode_batch(events: str) -> list[dict[str, Any]]:
    """The envelopes of one stored batch (its ``events`` JSON)."""
    return [stored_envelope(x) for x in json_decode(events)]


def env_json(env: Recordable) -> bytes:
    """One envelope (or wire event) as JSON, whatever its data holds."""
    try:
        return json_encode(env)
    except (TypeError, ValueError, OverflowError):
        if not isinstance(env, dict):
            env = struct_envelope(env)
        rest = {k: v for k, v in env.items() if k != "data"}
        return json_encode(rest)[:-1] + b',"data":' + encode_json(env.get("data")) + b"}"
