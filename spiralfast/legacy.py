"""The old ``spiralcodex.mesh`` JSON format, as a codec into the same schema messages.

An old message is one JSON object: ``{"type", "source_node", "timestamp" (ISO),
"data"}`` (+ ``"target_node"``).  ``decode`` turns it into spiralfast messages, so one
membership code path serves both formats:

- ``node_register`` -> ``Gossip([record])`` (the sender's own record);
- ``heartbeat`` -> ``Heartbeat``;
- ``node_unregister`` -> ``Leave``;
- anything else -> ``Event`` (the sender is also seen, as by a heartbeat).

Copies that spiralfast itself publishes carry ``"_sf": 1`` and are ignored by
spiralfast nodes (which get the real frame).  Old messages cannot be authenticated,
so a node with a token does not speak this format unless told to.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson

from .errors import FrameError
from .wire import schema

#: Largest old-format message accepted (its JSON is parsed whole).
MAX_LEGACY_SIZE = 1024 * 1024


def decode(raw: bytes) -> tuple[str, list[tuple[int, Any]]] | None:
    """``(sender, messages)``, or None for our own copies.  ``FrameError`` if malformed."""
    if len(raw) > MAX_LEGACY_SIZE:
        raise FrameError("old-format message too large")
    try:
        env = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise FrameError("non-JSON message on the legacy channel") from exc
    if not isinstance(env, dict) or not isinstance(env.get("type"), str) or not isinstance(env.get("source_node"), str):
        raise FrameError("legacy message without type/source_node")
    if env.get("_sf"):
        return None
    src: str = env["source_node"]
    if not src or len(src.encode()) > 200:
        raise FrameError("bad source_node")
    etype: str = env["type"]
    data = env.get("data")
    ts = _epoch(env.get("timestamp"))
    name = "codex_node_" + src[:8]
    if etype == "node_register":
        rec = dict(data) if isinstance(data, dict) else {}
        rec["node_id"] = src
        rec.setdefault("name", name)
        return src, [(schema.KIND_GOSSIP, schema.Gossip([rec]))]
    if etype == "node_unregister":
        return src, [(schema.KIND_LEAVE, schema.Leave(src, "left"))]
    d = data if isinstance(data, dict) else {}
    try:
        hb = schema.Heartbeat(src, str(d.get("status", "active")), int(d.get("recursion_depth", 0)),
                              float(d.get("entropy_level", 0.0)), ts)
    except (TypeError, ValueError, OverflowError):
        hb = schema.Heartbeat(src, "active", 0, 0.0, ts)
    if etype == "heartbeat":
        return src, [(schema.KIND_HEARTBEAT, hb)]
    target = env.get("target_node")
    eid = env.get("event_id")
    ev = schema.Event(eid if isinstance(eid, str) and eid else "legacy-" + uuid.uuid4().hex, etype, src, ts, data,
                      target if isinstance(target, str) else None)
    seen = schema.Gossip([{"node_id": src, "name": name}])
    return src, [(schema.KIND_GOSSIP, seen), (schema.KIND_EVENT, ev)]


def encode(etype: str, source: str, data: Any, target: str | None = None, event_id: str | None = None,
           timestamp: str | None = None) -> bytes:
    """One old-format message (marked as ours)."""
    env: dict[str, Any] = {"type": etype, "source_node": source,
                           "timestamp": timestamp or datetime.now().isoformat(), "data": data, "_sf": 1}
    if target is not None:
        env["target_node"] = target
    if event_id is not None:
        env["event_id"] = event_id
    return orjson.dumps(env, default=str)


def _epoch(ts: Any) -> float:
    if isinstance(ts, str):
        try:
            v = datetime.fromisoformat(ts).timestamp()
            if 0.0 <= v <= 253402300799.0:
                return v
        except (ValueError, OverflowError, OSError):
            pass
    return time.time()
