"""What the task manager knows of other nodes: the (node, task type) targets it may
send to, learnt from load adverts, result events, gossip metadata and capabilities;
the bounds on what a node may claim to offer; and the nodes lost (removed by the local
membership, or their direct link dropped), whose tasks go elsewhere.

Load travels four ways: every result event carries the worker's load per task type
(and how much of it is the receiver's, so a submitter adds the other submitters' share
to its own exact count); a ``_sf.load`` broadcast goes out when the load changed, at
most every ``heartbeat_interval / 4``, and at least every ``heartbeat_interval`` while
the node offers anything; a node that joins gets one at once; and the local node's
``metadata["tasks"]`` travels in handshakes and gossip (used for nodes that sent no
events for two heartbeat intervals, and for the capacity of a node whose advert has
not arrived yet).  Offered task types are applied to peers' capabilities when their
``_sf.load`` arrives.

A dropped link is noticed by looking at the node's links every housekeeping tick
(:meth:`TaskPort.linked_peers`); a frozen node only by failure detection.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..protocol.scheduling import (
    DEFAULT_CAPACITY,
    MAX_TASK_TYPES,
    Target,
    link_changes,
    meta_offer,
    meta_stale,
    types_within_bound,
    valid_type_name,
)
from .state import log
from .worker import Worker


class Peers(Worker):
    """Targets on other nodes, and losing them."""

    def _learn_from_capabilities(self, ttype: str) -> None:
        """Targets for nodes listing ``ttype`` as a capability whose advert has not
        arrived yet (a node that joined a moment ago); found in the registry's index."""
        port = self.port
        me = port.node_id
        tmap = self._targets.get(ttype) or {}
        for nid in list(port.members_with_capability(ttype)):
            if nid == me or nid in self._down or nid in tmap or (nid, ttype) in self._refused:
                continue
            md = port.metadata_of(nid)
            if md is None or md.get("implementation") != "spiralfast":
                continue
            cap, _ = meta_offer(md, ttype)
            self._add_target(nid, ttype, cap or DEFAULT_CAPACITY, advertised=cap is not None)

    def _types_ok(self, src: str, types: dict[Any, Any]) -> bool:
        """A message listing task types (a load advert, a result's loads): refused whole
        (counted) when it lists more than a node may offer."""
        if types_within_bound(len(types)):
            return True
        self._types_refused += 1
        self._warn(("types", src), logging.WARNING, "refused a task-load message from %s listing %d task types "
                   "(at most %d)", src, len(types), MAX_TASK_TYPES)
        return False

    def _on_load_env(self, env: dict[str, Any]) -> None:
        src = env.get("source_node")
        data = env.get("data")
        if not isinstance(src, str) or src == self.port.node_id or not isinstance(data, dict):
            return
        offers = data.get("o")
        if not isinstance(offers, dict) or not self._types_ok(src, offers):
            return
        if data.get("ask"):
            self._hello.setdefault(src, False)
            self._wake.set()
        for ttype in [k for k in self._node_types.get(src, ()) if k not in offers]:
            self._drop_target(src, ttype)
        named: list[str] = []
        for ttype, v in offers.items():
            try:
                cap, load = int(v[0]), int(v[1])
            except (TypeError, ValueError, IndexError):
                continue
            t = self._update_target(src, ttype, cap, None)
            if t is not None:
                t.others = max(0, load - t.mine)
                named.append(ttype)
        served = data.get("s")
        if isinstance(served, dict) and types_within_bound(len(served)):
            self._peer_stats[src] = {k: v for k, v in served.items()
                                     if k in offers and isinstance(v, list) and len(v) >= 4}
        if named:  # capabilities of a node the core knew before it offered
            self.port.add_capabilities(src, named)  # re-indexed (and bounded) by the registry
        if self._waiting:
            self._schedule_drain()

    def _add_target(self, node: str, ttype: Any, cap: int, advertised: bool = True) -> Target | None:
        """The target (node, ttype), made if new; None (counted) for a bad name, or a
        node that already has MAX_TASK_TYPES of them."""
        tmap = self._targets.get(ttype) if ttype.__class__ is str else None
        t = tmap.get(node) if tmap is not None else None
        if t is not None:
            return t
        if not valid_type_name(ttype):
            self._types_refused += 1
            return None
        types = self._node_types.get(node)
        if types is None:
            types = self._node_types[node] = set()
        if len(types) >= MAX_TASK_TYPES:
            self._types_refused += 1
            return None
        if tmap is None:
            tmap = self._targets[ttype] = {}
        t = tmap[node] = Target(node, cap, advertised=advertised)
        types.add(ttype)
        self._refresh(ttype)
        return t

    def _update_target(self, node: str, ttype: Any, cap: int, others: int | None) -> Target | None:
        tmap = self._targets.get(ttype) if ttype.__class__ is str else None
        t = tmap.get(node) if tmap is not None else None
        if t is None:
            t = self._add_target(node, ttype, cap)
            if t is None:
                return None
            self._refused.discard((node, ttype))
        t.capacity = max(1, cap)
        t.advertised = True
        t.seen = time.monotonic()
        if others is not None:
            t.others = others
        return t

    def _drop_target(self, node: str, ttype: str, refused: bool = False) -> None:
        tmap = self._targets.get(ttype)
        if tmap is not None and tmap.pop(node, None) is not None:
            self._refresh(ttype)
        types = self._node_types.get(node)
        if types is not None:
            types.discard(ttype)
            if not types:
                del self._node_types[node]
        if refused:
            self._refused.add((node, ttype))

    # -- membership and links --------------------------------------------------------

    def node_joined(self, nid: str) -> None:
        """The local membership admitted ``nid`` (``NodeHost.apply``): it gets our offers."""
        if self._started and nid != self.port.node_id and self._offers:
            self._hello.setdefault(nid, False)
            self._wake.set()

    def node_removed(self, nid: str, reason: str) -> None:
        """The local membership removed ``nid`` (it left, or failure detection decided:
        ``NodeHost.apply``).  The only way a worker is lost besides its link dropping: a
        ``node_unregister`` event from another node never is."""
        if self._started and nid != self.port.node_id:
            self._node_lost(nid, f"was removed ({reason})")

    def _node_lost(self, nid: str, why: str) -> None:
        self._peer_stats.pop(nid, None)
        for ttype in list(self._node_types.get(nid, ())):
            self._drop_target(nid, ttype)
        self._refused = {r for r in self._refused if r[0] != nid}
        lost = [p for p in self._pending.values() if p.target is not None and p.target.node == nid]
        if lost:
            log.info("node %s %s: %d task(s) go elsewhere", nid, why, len(lost))
        for p in lost:
            self._retry(p, why)
        for offer in self._offers.values():  # its queued tasks here have nobody to reply to
            offer.forget_source(nid)

    def _check_links(self) -> None:
        """Tasks at a node whose direct link just dropped go elsewhere at once (the
        node itself goes when failure detection removes it)."""
        try:
            now = self.port.linked_peers()
        except Exception:
            now = None
        if now is None:
            return
        ch = link_changes(self._linked, now)
        self._linked = now
        is_member = self.port.is_member
        for nid in ch.gone:  # not chosen until its link is back and it advertised again
            if is_member(nid):
                self._down.add(nid)
                self._node_lost(nid, "lost its link")
        for nid in ch.new:  # (re)connected: ask for its offers (a reconnect sends no node_register)
            self._down.discard(nid)
            self._hello[nid] = True
            self._wake.set()
        if self._down:
            self._down = {nid for nid in self._down if is_member(nid)}

    def _read_meta(self, now: float, hb: float) -> None:
        """Offers and load from peers' metadata (as gossip refreshed it): new targets,
        and the load of targets that sent no events for two heartbeat intervals."""
        me = self.port.node_id
        changed = False
        for nid, md in self.port.member_metadata():
            offers = md.get("tasks") if isinstance(md, dict) else None
            if nid == me or nid in self._down or not isinstance(offers, dict) or not self._types_ok(nid, offers):
                continue
            for ttype in offers:
                cap, load = meta_offer(md, ttype)
                if cap is None or load is None or (nid, ttype) in self._refused:
                    continue
                t = self._targets.get(ttype, {}).get(nid) if ttype.__class__ is str else None
                if t is None:
                    t = self._update_target(nid, ttype, cap, None)
                    if t is None:
                        continue
                    t.seen = 0.0
                elif not meta_stale(now, t.seen, hb):
                    continue  # its own events (a load advert at least every hb) are fresher
                t.capacity = max(1, cap)
                t.others = max(0, load - t.mine)
                t.advertised = True
                changed = True
        if changed and self._waiting:
            self._schedule_drain()
