"""MeshRegistry: who is in the mesh, what they can do, and how healthy it is."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .._log import RateLimitedLog
from ..records import MeshNode, NodeStatus

log = logging.getLogger("spiralfast.node.registry")
_warn = RateLimitedLog(log)

DiscoveryCallback = Callable[[str, MeshNode], Any]

#: Capabilities one node may list, and the longest capability name.  A record listing
#: more keeps the first MAX_CAPABILITIES valid ones; the rest (and names that are not
#: strings of 1..MAX_CAPABILITY_NAME characters) are refused and counted in
#: ``capabilities_refused``.  (Task types are capabilities: the same bounds.)
MAX_CAPABILITIES = 1024
MAX_CAPABILITY_NAME = 256


def _valid_capability(c: Any) -> bool:
    return c.__class__ is str and 0 < len(c) <= MAX_CAPABILITY_NAME


class MeshRegistry:
    """Registry of mesh nodes (the drop-in API: MeshRegistry).

    The live registry of a node is ``mesh.registry`` (``MeshCore.registry``): the mesh
    feeds it, and its ``nodes`` dict *is* ``mesh.nodes`` (one table).  Nodes appear in it
    when they join, their heartbeats refresh them, and they leave it when they leave, fall
    silent or die.  A standalone ``MeshRegistry("my_node")`` is local to its process and
    starts empty: nothing feeds it but your own ``register_node`` /
    ``update_node_heartbeat`` calls, so its queries (``get_all_nodes()``,
    ``get_active_nodes()``, ``find_best_node_for_task()``, ``get_mesh_topology()``) answer
    ``[]`` / None / zeros until you do.  To see the mesh, use ``mesh.registry`` of a started
    ``MeshCore``.

    Capabilities are indexed in sets (``node_capabilities``: capability -> node ids, and
    per node), so adding, replacing or removing a node costs its own capabilities only;
    a node lists at most MAX_CAPABILITIES (see there).

    ``heartbeat_timeout`` (seconds) decides which nodes count as active and which
    ``cleanup_stale_nodes`` removes.  A node whose status is ``disconnected`` (in the live
    registry: its link closed and nothing heard from it since, suspected or not) is not
    active either, so the registry, ``get_mesh_status()`` and the dashboard agree.
    """

    def __init__(self, local_node_id: str) -> None:
        self.local_node_id = local_node_id
        self.nodes: dict[str, MeshNode] = {}
        self.node_capabilities: dict[str, set[str]] = {}
        self.node_metrics: dict[str, dict[str, Any]] = {}
        self.discovery_callbacks: list[DiscoveryCallback] = []
        self.heartbeat_timeout = 90.0
        self._caps_of: dict[str, frozenset[str]] = {}  # node id -> its indexed capabilities
        #: Capabilities refused from records (over MAX_CAPABILITIES, or bad names).
        self.capabilities_refused = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- membership ----------------------------------------------------------------

    def register_node(self, node: MeshNode) -> bool:
        """Add or replace ``node``; announces ``node_discovered`` for a new id."""
        is_new = node.node_id not in self.nodes
        if not is_new:
            self._unindex(node.node_id)
        self.nodes[node.node_id] = node
        self._bound(node)
        caps = self._caps_of[node.node_id] = frozenset(node.capabilities)
        for cap in caps:
            self.node_capabilities.setdefault(cap, set()).add(node.node_id)
        if is_new:
            self.node_metrics[node.node_id] = {
                "registered_at": datetime.now().isoformat(),
                "heartbeat_count": 0,
                "last_heartbeat": node.last_heartbeat.isoformat(),
                "status": node.status.value,
                "recursion_depth": node.recursion_depth,
                "entropy_level": node.entropy_level,
            }
            self._notify("node_discovered", node)
        return True

    def unregister_node(self, node_id: str) -> bool:
        """Remove a node; False if it is unknown.  Announces ``node_lost``."""
        node = self.nodes.get(node_id)
        if node is None:
            return False
        self._unindex(node_id)
        del self.nodes[node_id]
        self.node_metrics.pop(node_id, None)
        self._notify("node_lost", node)
        return True

    def _bound(self, node: MeshNode) -> None:
        """Keep at most MAX_CAPABILITIES valid capabilities in ``node``'s record."""
        caps = node.capabilities
        if not isinstance(caps, list):
            caps = node.capabilities = list(caps) if isinstance(caps, (tuple, set, frozenset)) else []
        if len(caps) <= MAX_CAPABILITIES and all(_valid_capability(c) for c in caps):
            return
        kept: list[str] = []
        seen: set[str] = set()
        for c in caps:
            if len(kept) >= MAX_CAPABILITIES:
                break
            if _valid_capability(c) and c not in seen:
                seen.add(c)
                kept.append(c)
        refused = len(caps) - len(kept)
        self.capabilities_refused += refused
        _warn(("capabilities", node.node_id), logging.WARNING, "node %s lists %d capabilities: %d refused (at most "
              "%d, names of 1..%d characters)", node.node_id, len(caps), refused, MAX_CAPABILITIES,
              MAX_CAPABILITY_NAME)
        node.capabilities = kept

    def _unindex(self, node_id: str) -> None:
        index = self.node_capabilities
        for cap in self._caps_of.pop(node_id, ()):
            ids = index.get(cap)
            if ids is not None:
                ids.discard(node_id)
                if not ids:
                    del index[cap]

    def update_node_heartbeat(self, node_id: str, data: dict[str, Any]) -> bool:
        """Refresh a node's heartbeat, applying ``status``, ``recursion_depth``, ``entropy_level``."""
        node = self.nodes.get(node_id)
        if node is None:
            return False
        node.last_heartbeat = datetime.now()
        if "status" in data and data["status"] is not None:
            try:
                st = data["status"]
                node.status = st if isinstance(st, NodeStatus) else NodeStatus(st)
            except ValueError:
                log.warning("heartbeat from %s has an unknown status %r", node_id, data["status"])
        if "recursion_depth" in data:
            node.recursion_depth = int(data["recursion_depth"])
        if "entropy_level" in data:
            node.entropy_level = float(data["entropy_level"])
        m = self.node_metrics.setdefault(node_id, {"heartbeat_count": 0})
        m["heartbeat_count"] = m.get("heartbeat_count", 0) + 1
        m["last_heartbeat"] = node.last_heartbeat.isoformat()
        m["status"] = node.status.value
        m["recursion_depth"] = node.recursion_depth
        m["entropy_level"] = node.entropy_level
        return True

    def register_discovery_callback(self, callback: DiscoveryCallback) -> None:
        """``callback(event, node)`` with event ``"node_discovered"`` or ``"node_lost"``."""
        self.discovery_callbacks.append(callback)

    def _notify(self, event: str, node: MeshNode) -> None:
        for cb in list(self.discovery_callbacks):
            try:
                r = cb(event, node)
                if inspect.isawaitable(r):
                    task = asyncio.ensure_future(r)
                    self._tasks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:
                log.exception("discovery callback %r failed", cb)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("discovery callback failed", exc_info=task.exception())

    # -- queries -------------------------------------------------------------------

    def get_node(self, node_id: str) -> MeshNode | None:
        return self.nodes.get(node_id)

    def get_all_nodes(self) -> list[MeshNode]:
        return list(self.nodes.values())

    def _is_active(self, node: MeshNode, now: datetime) -> bool:
        return (node.status != NodeStatus.DISCONNECTED
                and (now - node.last_heartbeat).total_seconds() <= self.heartbeat_timeout)

    def get_active_nodes(self) -> list[MeshNode]:
        now = datetime.now()
        return [n for n in self.nodes.values() if self._is_active(n, now)]

    def get_nodes_by_capability(self, capability: str) -> list[MeshNode]:
        return [self.nodes[i] for i in self.node_capabilities.get(capability, ()) if i in self.nodes]

    def get_nodes_by_status(self, status: NodeStatus | str) -> list[MeshNode]:
        st = status if isinstance(status, NodeStatus) else NodeStatus(status)
        return [n for n in self.nodes.values() if n.status == st]

    @staticmethod
    def _score(node: MeshNode) -> float:
        score = 100.0 - 2 * node.recursion_depth - 10 * node.entropy_level
        if node.status == NodeStatus.RITUAL_MODE:
            score += 20
        return score

    def find_best_node_for_task(
        self, task_type: str, requirements: dict[str, Any] | None = None
    ) -> MeshNode | None:
        """Best active node having capability ``task_type``; None if there is none.

        ``requirements`` may hold ``capabilities`` (all required), ``max_recursion_depth``
        and ``max_entropy_level``.
        """
        req = requirements or {}
        extra_caps = set(req.get("capabilities") or ())
        max_depth = req.get("max_recursion_depth")
        max_entropy = req.get("max_entropy_level")
        best: MeshNode | None = None
        best_score = float("-inf")
        for node in self.get_active_nodes():
            caps = set(node.capabilities)
            if task_type not in caps or not extra_caps <= caps:
                continue
            if max_depth is not None and node.recursion_depth > max_depth:
                continue
            if max_entropy is not None and node.entropy_level > max_entropy:
                continue
            s = self._score(node)
            if s > best_score:
                best, best_score = node, s
        return best

    def cleanup_stale_nodes(self) -> list[str]:
        """Remove nodes (never the local one) silent for longer than ``heartbeat_timeout``."""
        now = datetime.now()
        stale = [
            nid for nid, n in self.nodes.items()
            if nid != self.local_node_id and (now - n.last_heartbeat).total_seconds() > self.heartbeat_timeout
        ]
        for nid in stale:
            self.unregister_node(nid)
        return stale

    def _calculate_network_health(self) -> float:
        total = len(self.nodes)
        if total == 0:
            return 0.0
        active = len(self.get_active_nodes())
        distinct_caps = len({c for n in self.nodes.values() for c in n.capabilities})
        ritual = sum(1 for n in self.nodes.values() if n.status == NodeStatus.RITUAL_MODE)
        health = 70.0 * active / total + min(5 * distinct_caps, 20) + min(2 * ritual, 10)
        return float(min(100.0, max(0.0, health)))

    def get_mesh_topology(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        caps: dict[str, int] = {}
        for n in self.nodes.values():
            statuses[n.status.value] = statuses.get(n.status.value, 0) + 1
            for c in n.capabilities:
                caps[c] = caps.get(c, 0) + 1
        return {
            "total_nodes": len(self.nodes),
            "active_nodes": len(self.get_active_nodes()),
            "node_statuses": statuses,
            "capabilities": caps,
            "network_health": self._calculate_network_health(),
        }

    def get_node_metrics(self, node_id: str) -> dict[str, Any] | None:
        m = self.node_metrics.get(node_id)
        return dict(m) if m is not None else None

    def get_registry_status(self) -> dict[str, Any]:
        return {
            "local_node_id": self.local_node_id,
            "total_nodes": len(self.nodes),
            "active_nodes": len(self.get_active_nodes()),
            "capabilities": sorted(self.node_capabilities),
            "heartbeat_timeout": self.heartbeat_timeout,
            "network_health": self._calculate_network_health(),
            "discovery_callbacks": len(self.discovery_callbacks),
            "capabilities_refused": self.capabilities_refused,
        }
