"""A node's one state, as every view shows it (status, ``/api/*``, the dashboard, the HUD).

A node record's state is its ``NodeStatus`` value, or ``suspected`` while its record says
``suspect`` (its link was closed by its side and it is probed before removal; its status is
then ``disconnected``).  The views draw links from the state's kind: only ``live`` nodes
have live links.
"""

from __future__ import annotations

from typing import Any

#: What a node's state means for the topology and the dashboard.  A node's state is its
#: ``NodeStatus`` value, or ``suspected`` while its record says ``suspect`` (its link was
#: closed by its side and it is probed before removal; its status is then ``disconnected``).
#: ``live`` nodes are members we hear from, and only links between two of them are live
#: links; a ``suspect`` node's links are listed apart (drawn dashed), never as live; a
#: ``down`` node (disconnected, not suspected) and a state this version does not know
#: (``unknown``) get no link at all.
LIVE_STATES = frozenset({"active", "initializing", "dormant", "ritual_mode"})
SUSPECT_STATES = frozenset({"suspected", "suspect", "suspicious", "unreachable"})
DOWN_STATES = frozenset({"disconnected", "dead", "failed", "left", "removed", "offline"})
#: The state a node shown as suspected is in (see :func:`node_state`).
SUSPECTED = "suspected"


def node_state(record: dict[str, Any]) -> str:
    """The one state of a node record (``nodes_table``): ``suspected`` while it is
    suspected, else its status."""
    if record.get("suspect") is True:
        return SUSPECTED
    st = record.get("status")
    return str(getattr(st, "value", st))


def state_kind(status: Any) -> str:
    """``live``, ``suspect``, ``down`` or ``unknown`` for a node state (see ``LIVE_STATES``)."""
    st = str(getattr(status, "value", status) or "").lower()
    if st in LIVE_STATES:
        return "live"
    if st in SUSPECT_STATES or st.startswith("suspect"):
        return "suspect"
    if st in DOWN_STATES:
        return "down"
    return "unknown"


def node_states() -> dict[str, str]:
    """Every state a node can be in (the ``NodeStatus`` values and ``suspected``), with its
    kind (see :func:`state_kind`)."""
    from ..enums import NodeStatus

    out = {s.value: state_kind(s.value) for s in NodeStatus}
    out.setdefault(SUSPECTED, state_kind(SUSPECTED))
    return out
