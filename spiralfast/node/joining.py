"""Joining: the handshake shell of the node's link host.

A link's handshake (:mod:`spiralfast.protocol.handshake`, sans-I/O) runs here: its
messages come from the gate, its answers go out on the link, and its outcome either
makes the link a member (or an observer) or refuses it, counted and logged with
back-off.  Here too the node notices that another live process holds its own id
(``id_taken``).  :class:`Joining` is a part of ``NodeHost`` (a mixin): it uses the
host's view of the node (the ``HostNode`` port) and calls back into the host for the
effects of a new member (membership, gossip, state digests).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .._log import BackoffLog
from ..errors import HandshakeError
from ..ports.node import DispatcherPort, GatePort, HostNode, OutboxPort
from ..protocol.handshake import Handshake, HandshakeState
from ..protocol.membership import Effect, Membership
from ..records import MeshNode
from .gate import CLOSED, HANDSHAKE, MEMBER, OBSERVER, Session
from .outbox import single_frame

__all__ = ["Joining", "incarnation"]

log = logging.getLogger("spiralfast.node.core")


def incarnation(record: Any) -> Any:
    """The incarnation a node record names (None when it names none)."""
    md = record.get("metadata") if isinstance(record, dict) else None
    return md.get("incarnation") if isinstance(md, dict) else None


class Joining:
    """The handshake half of ``NodeHost``: joining, duplicates and refusals."""

    node: HostNode
    membership: Membership
    outbox: OutboxPort
    dispatcher: DispatcherPort
    counts: dict[str, int]
    nodes: dict[str, MeshNode]
    #: Refused handshakes: logged once per peer and reason, then rarely.
    refusals: BackoffLog
    #: (first, latest) monotonic time a member refused this node's id as taken.
    id_refused: tuple[float, float]

    @property
    def gate(self) -> GatePort:
        raise NotImplementedError

    def apply(self, effects: list[Effect]) -> None:
        raise NotImplementedError

    def claim_origin(self, node_id: str, record: Any) -> None:
        raise NotImplementedError

    def send_gossip(self) -> None:
        raise NotImplementedError

    def on_handshake(self, link: Any, kind: int, obj: Any) -> None:
        s = link.session
        hs = s.handshake
        out = hs.receive(kind, obj)
        if hs.state == HandshakeState.READY and (dup := self.duplicate(hs)) is not None:
            out = hs.fail(dup)  # before our proof goes out: the newcomer never believes it joined
        elif hs.state == HandshakeState.READY and hs.peer_role != "observer" and getattr(link, "observers_only", False):
            out = hs.fail(HandshakeError("this port serves observers only (the node has no WebSocket links)"))
        for k, o in out:
            link.send_frame(single_frame(k, o))
        if hs.state == HandshakeState.FAILED:
            self.refuse(link, hs.error)
        elif hs.state == HandshakeState.READY:
            self.session_ready(link, s, hs)

    def duplicate(self, hs: Handshake) -> Exception | None:
        """Another process already in the mesh with this node id (its link is up and its
        incarnation differs) refuses the newcomer, so the two never take turns."""
        if hs.peer_role != "node" or hs.peer_id is None:
            return None
        link = self.outbox.links.get(hs.peer_id)
        known = self.nodes.get(hs.peer_id)
        if link is None or known is None:
            return None
        theirs = incarnation(hs.peer_record)
        mine = known.metadata.get("incarnation")
        held = getattr(getattr(link.session, "handshake", None), "peer_key", None)
        if held is not None and hs.peer_key == held:
            # The same key proved again: the same node, restarted (its key is kept with its
            # id) while its old link lingers here; the newcomer replaces that link.
            return None
        if held is not None and hs.peer_key != held:
            # The live link's node proved a key: only that key may replace its link (same
            # incarnation: a reconnect), whatever id and incarnation a newcomer names.
            self.counts["duplicate_ids"] += 1
            self.counts["impostors_refused"] += 1
            return HandshakeError(f"node id {hs.peer_id!r} is already in the mesh (held by another key)")
        if theirs is None or mine is None or theirs == mine:
            return None
        self.counts["duplicate_ids"] += 1
        return HandshakeError(f"node id {hs.peer_id!r} is already in the mesh (another process uses it)")

    def link_changed(self, peer_id: str, up: bool) -> None:
        for fn in list(self.node.link_listeners):
            try:
                fn(peer_id, up)
            except Exception:
                log.exception("link listener %r failed", fn)

    def refuse(self, link: Any, exc: Any) -> None:
        s = link.session
        if "refused by peer" in str(exc):
            self.counts["rejected_by_peer"] += 1
        elif "token" in str(exc):
            self.counts["auth_failures"] += 1
        self.counts["handshake_failures"] += 1
        # Keyed by the reason, not the peer: every outsider's connection is a new peer.
        self.refusals(("refused", str(exc)[:48]), logging.WARNING, "handshake with %s failed: %s",
                      getattr(link, "name", "?"), str(exc)[:200])
        self.id_conflict(link, str(exc))
        s.state = CLOSED
        link.close(str(exc))

    def id_conflict(self, link: Any, text: str) -> None:
        """Set ``node.id_taken`` when another live process holds this node's id: the node
        we dialled answers with our own id (and we are in no mesh yet), or a member keeps
        refusing us as "already in the mesh" for longer than a dead twin's stale link
        could last there (the silence limit, one heartbeat and the suspicion timeout)."""
        node = self.node
        me = f"{node.node_id[:64]!r}"
        hs = getattr(link.session, "handshake", None)
        if node.id_taken is not None or me not in text or hs is None:
            return
        where = getattr(link, "name", "?")
        now = time.monotonic()
        if "duplicate node id" in text and hs.outbound and not self.outbox.links:
            node.id_taken = f"{where} answers with this node's own id"
        elif "held by another key" in text:
            # The member's link for our id proved another key: a live process of its own,
            # not our earlier incarnation (that would prove our key, kept with our id).
            node.id_taken = f"{where} holds it for a node with another key: {text[:200]}"
        elif "already in the mesh" in text:
            ms = self.membership
            limit = ms.silence_limit + ms.heartbeat_interval + float(getattr(ms, "suspicion_timeout", 0.0))
            since, last = self.id_refused
            if now - last > limit + 90.0:  # longer than a refused dial's longest back-off: it was resolved
                since = now
            self.id_refused = (since, now)
            if now - since >= limit:
                node.id_taken = f"{where} has refused it for {now - since:.0f}s: {text[:200]}"
        if node.id_taken is not None:
            log.error("node id %s is already held by another live process (%s)", me, node.id_taken)

    def twin_on_bus(self, text: str) -> None:
        """A bus link saw frames sent with our node id under another key by a process that
        started before us: we are the newcomer and stop (``mesh start`` exits 1)."""
        if self.node.id_taken is None:
            self.node.id_taken = text
            log.error("node id %r is already held by another live process (%s)", self.node.node_id[:64], text)

    def handshake_expired(self, link: Any) -> None:
        s = link.session
        if s.state == HANDSHAKE:
            for k, o in s.handshake.expire():
                link.send_frame(single_frame(k, o))
            self.refuse(link, s.handshake.error)

    def session_ready(self, link: Any, s: Session, hs: Handshake) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        pid, me = hs.peer_id, self.node.node_id
        assert pid is not None
        s.peer_id = link.peer_id = pid
        s.bucket = self.gate.new_bucket()
        if hs.peer_role == "observer":
            s.state = OBSERVER
            self.node.observers.add(link)
            return
        existing = self.outbox.links.get(pid)
        if existing is not None and existing is not link and incarnation(hs.peer_record) == incarnation(
                getattr(getattr(getattr(existing, "session", None), "handshake", None), "peer_record", None)):
            # Two nodes dialled each other at once: both keep the link dialled by the
            # smaller node id, so they agree on one.  (A link from a new incarnation of the
            # node, which ``duplicate`` let through because it proved the same key, is its
            # restart: it replaces the old one below.)
            this_dialer = me if hs.outbound else pid
            if this_dialer != min(me, pid):
                s.state = CLOSED
                link.close("duplicate link")
                return
        s.state = MEMBER
        state = self.node.state
        state.before_rejoin()
        old = self.outbox.add_link(pid, link)
        if old is not None:
            old.close("replaced by a newer link")
        if self.dispatcher.reading_paused:
            link.pause_reading()
        self.claim_origin(pid, hs.peer_record)  # its ids are its own, from now on
        self.apply(self.membership.link_ready(pid, hs.peer_record, time.monotonic()))
        self.link_changed(pid, True)
        self.send_gossip()
        # A newcomer gets our digests at once, so it catches up without waiting a tick.
        link.send_frame(single_frame(*state.digest_message()))
