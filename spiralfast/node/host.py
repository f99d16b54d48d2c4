"""The node's side of the seam: the ``LinkHost`` its transports call, and the
callbacks of its gate.  It carries out what the sans-I/O parts decide (handshake,
membership and state-sync effects) and runs the heartbeat and failure-detection loops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from .. import schema
from .._log import BackoffLog
from ..errors import HandshakeError
from ..fastpath import iso_from_epoch
from .gate import CLOSED, HANDSHAKE, MEMBER, OBSERVER, Session
from ..protocol.handshake import Handshake
from ..observe import answer_query
from .outbox import single_frame
from ..records import EventType, RitualEvent

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.node.core")

_EVENT_TYPES = {e.value: e for e in EventType}
_decode_event = msgspec.msgpack.Decoder(schema.Event).decode
#: Gap repair: wait this long before asking (a copy may be on a slower path), ask at most
#: this often, this many times, for at most this many sequences at once.
REPAIR_DELAY = 0.5
REPAIR_INTERVAL = 1.0
REPAIR_ATTEMPTS = 5
MAX_REPAIR_SEQS = 4096
#: Requests (of MAX_REPAIR_SEQS each) sent to one origin per round: a long gap (a peer
#: paused for seconds) is repaired while the origin still holds it.
REPAIR_BATCH = 16
#: A paced state reply waits while the link holds more than this many unsent bytes.
REPLY_PACE_BYTES = 4 * 1024 * 1024
#: Many-chunk state answers on their way at once, over all links (more wait for the next round).
MAX_PACED_REPLIES = 8
#: Origins whose node names are remembered (the dedupe windows keep at most 4,096 origins).
MAX_ORIGIN_NAMES = 8192
#: A suspect is judged this long after its suspicion timeout (timers of the loop run a little early or late).
SUSPICION_SLACK = 0.02



def _incarnation(record: Any) -> Any:
    """The incarnation a node record names (None when it names none)."""
    md = record.get("metadata") if isinstance(record, dict) else None
    return md.get("incarnation") if isinstance(md, dict) else None

class NodeHost:
    """``LinkHost`` of one node (see ``spiralfast.links.base``)."""

    def __init__(self, node: MeshCore) -> None:
        self.node = node
        # Endpoints are signed by the node they name, and gossiped ones dialled only then
        # (issue 23 #7): our own claim signed with our key, others' checked against the
        # key pinned to their node id (bus pins; else the key of their own record).
        key, pins = getattr(node, "key", None), getattr(node, "key_pins", None)
        if key is not None:
            node.membership.enable_signed_endpoints(key.sign, node.config.mesh_name,
                                                    pins.get if pins is not None else None)
        #: Refused handshakes: logged once per peer and reason, then rarely.
        self.refusals = BackoffLog(log, initial=60.0, maximum=3600.0)
        #: Lost events (sequence gaps), per origin: reported so far, and the log of them.
        self.reported: dict[str, int] = {}
        self.losses = BackoffLog(log, initial=10.0, maximum=600.0)
        self.repairs: dict[str, list[float]] = {}  # origin -> [first noticed, last asked, attempts]
        self.retx_marks: deque[tuple[float, int]] = deque()  # (monotonic time, next broadcast sequence)
        #: Broadcast origin -> the node (one per incarnation) it belongs to, for operators.
        self.origin_names: dict[str, str] = {}
        #: origin -> [last sequence a peer saw of it, when to take that] (``OriginEnd``)
        self.origin_ends: dict[str, list[Any]] = {}
        #: (first, latest) monotonic time a member refused this node's id as taken.
        self.id_refused: tuple[float, float] = (0.0, float("-inf"))
        self.replying: dict[Any, asyncio.Task[None]] = {}  # (link, peer) -> paced state reply on its way
        self.frames_seen: dict[Any, Any] = {}  # member link -> frames it had delivered at the last sweep

    def broadcast(self, kind: int, obj: Any) -> None:
        self.node.outbox.broadcast(kind, 0, b"", obj)

    def link_opened(self, link: Any, outbound: bool) -> None:
        """A transport opened ``link``: start its handshake."""
        hs = Handshake(self.node.node_id, self.node.config.mesh_name, self.node.config.auth_token, outbound=outbound,
                       record=self.node.membership.local_record, node_key=self.node.key)
        link.session = Session(hs, time.monotonic())
        self.node.links.add(link)
        for kind, obj in hs.start():
            link.send_frame(single_frame(kind, obj))
        loop = asyncio.get_running_loop()
        link.session.timer = loop.call_later(self.node.config.handshake_timeout, self.handshake_expired, link)

    def link_closed(self, link: Any) -> None:
        """A transport lost ``link``.  If the peer's side closed it (``closed_by_peer``:
        its process stopped or died), its node is suspected and probed (see
        ``Membership.link_lost``); if we closed it, the node stays until silent or gone."""
        self.node.links.discard(link)
        self.node.observers.discard(link)
        s = getattr(link, "session", None)
        if s is None:
            return
        was, s.state = s.state, CLOSED
        if s.timer is not None:
            s.timer.cancel()
        if was == MEMBER and s.peer_id is not None and self.node.outbox.links.get(s.peer_id) is link:
            self.node.outbox.remove_link(s.peer_id, link)
            by_peer = bool(getattr(link, "closed_by_peer", False)) and self.node.running
            self.apply(self.node.membership.link_lost(s.peer_id, time.monotonic(), by_peer=by_peer))
            self.link_changed(s.peer_id, False)

    def frame_received(self, link: Any, data: Any, sender: str | None = None) -> None:
        self.node.gate.on_frame(link, data, sender)

    def messages_received(self, link: Any, sender: str, msgs: list[tuple[int, Any]]) -> None:
        self.node.gate.messages(link, sender, msgs)

    def writable_changed(self, link: Any, writable: bool) -> None:
        (self.node.outbox.link_resumed if writable else self.node.outbox.link_paused)(link)

    def bus_up(self, link: Any) -> None:
        """A bus link (Redis, NATS) is (again) connected: its frames are authenticated
        per frame, and nodes on it learn us from our gossip."""
        if link.session is None:
            link.session = Session(None, time.monotonic(), MEMBER)
        if link not in self.node.outbox.bus_links:
            self.node.outbox.bus_links.append(link)
        if link.transport == "redis":
            self.node.config.enable_redis = True
        self.send_gossip()

    def bus_down(self, link: Any) -> None:
        if link in self.node.outbox.bus_links:
            self.node.outbox.bus_links.remove(link)
        self.node.outbox.link_resumed(link)

    def claim_origin(self, node_id: str, record: Any) -> None:
        """``node_id``'s own record (from its authenticated handshake, or its key-signed bus
        frame) names its broadcast origin: ids of that origin are accepted from it alone."""
        md = record.get("metadata") if isinstance(record, dict) else None
        origin = md.get("origin") if isinstance(md, dict) else None
        if isinstance(origin, str) and origin:
            self.node.gate.sink.claim(origin, node_id)

    def local_record(self) -> dict[str, Any]:
        return self.node.membership.local_record()

    def knows(self, node_id: str) -> bool:
        return node_id in self.node.nodes

    def linked(self, node_id: str) -> bool:
        return node_id in self.node.outbox.links

    # -- the gate's callbacks --------------------------------------------------------

    def on_handshake(self, link: Any, kind: int, obj: Any) -> None:
        s = link.session
        hs = s.handshake
        out = hs.receive(kind, obj)
        if hs.state == "ready" and (dup := self.duplicate(hs)) is not None:
            out = hs.fail(dup)  # before our proof goes out: the newcomer never believes it joined
        elif hs.state == "ready" and hs.peer_role != "observer" and getattr(link, "observers_only", False):
            out = hs.fail(HandshakeError("this port serves observers only (the node has no WebSocket links)"))
        for k, o in out:
            link.send_frame(single_frame(k, o))
        if hs.state == "failed":
            self.refuse(link, hs.error)
        elif hs.state == "ready":
            self.session_ready(link, s, hs)

    def duplicate(self, hs: Handshake) -> Exception | None:
        """Another process already in the mesh with this node id (its link is up and its
        incarnation differs) refuses the newcomer, so the two never take turns."""
        if hs.peer_role != "node" or hs.peer_id is None:
            return None
        link = self.node.outbox.links.get(hs.peer_id)
        known = self.node.nodes.get(hs.peer_id)
        if link is None or known is None:
            return None
        theirs = (hs.peer_record or {}).get("metadata", {}).get("incarnation") if isinstance(
            (hs.peer_record or {}).get("metadata"), dict) else None
        mine = known.metadata.get("incarnation")
        held = getattr(getattr(link.session, "handshake", None), "peer_key", None)
        if held is not None and hs.peer_key == held:
            # The same key proved again: the same node, restarted (its key is kept with its
            # id) while its old link lingers here; the newcomer replaces that link.
            return None
        if held is not None and hs.peer_key != held:
            # The live link's node proved a key: only that key may replace its link (same
            # incarnation: a reconnect), whatever id and incarnation a newcomer names.
            self.node.counts["duplicate_ids"] += 1
            self.node.counts["impostors_refused"] += 1
            return HandshakeError(f"node id {hs.peer_id!r} is already in the mesh (held by another key)")
        if theirs is None or mine is None or theirs == mine:
            return None
        self.node.counts["duplicate_ids"] += 1
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
            self.node.counts["rejected_by_peer"] += 1
        elif "token" in str(exc):
            self.node.counts["auth_failures"] += 1
        self.node.counts["handshake_failures"] += 1
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
        me = f"{self.node.node_id[:64]!r}"
        hs = getattr(link.session, "handshake", None)
        if self.node.id_taken is not None or me not in text or hs is None:
            return
        where = getattr(link, "name", "?")
        now = time.monotonic()
        if "duplicate node id" in text and hs.outbound and not self.node.outbox.links:
            self.node.id_taken = f"{where} answers with this node's own id"
        elif "held by another key" in text:
            # The member's link for our id proved another key: a live process of its own,
            # not our earlier incarnation (that would prove our key, kept with our id).
            self.node.id_taken = f"{where} holds it for a node with another key: {text[:200]}"
        elif "already in the mesh" in text:
            ms = self.node.membership
            limit = ms.silence_limit + ms.heartbeat_interval + float(getattr(ms, "suspicion_timeout", 0.0))
            since, last = self.id_refused
            if now - last > limit + 90.0:  # longer than a refused dial's longest back-off: it was resolved
                since = now
            self.id_refused = (since, now)
            if now - since >= limit:
                self.node.id_taken = f"{where} has refused it for {now - since:.0f}s: {text[:200]}"
        if self.node.id_taken is not None:
            log.error("node id %s is already held by another live process (%s)", me, self.node.id_taken)

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
        pid = hs.peer_id
        assert pid is not None
        s.peer_id = link.peer_id = pid
        s.bucket = self.node.gate.new_bucket()
        if hs.peer_role == "observer":
            s.state = OBSERVER
            self.node.observers.add(link)
            return
        existing = self.node.outbox.links.get(pid)
        if existing is not None and existing is not link and _incarnation(hs.peer_record) == _incarnation(
                getattr(getattr(getattr(existing, "session", None), "handshake", None), "peer_record", None)):
            # Two nodes dialled each other at once: both keep the link dialled by the
            # smaller node id, so they agree on one.  (A link from a new incarnation of the
            # node, which ``duplicate`` let through because it proved the same key, is its
            # restart: it replaces the old one below.)
            this_dialer = self.node.node_id if hs.outbound else pid
            if this_dialer != min(self.node.node_id, pid):
                s.state = CLOSED
                link.close("duplicate link")
                return
        s.state = MEMBER
        self.node.state.before_rejoin()
        old = self.node.outbox.add_link(pid, link)
        if old is not None:
            old.close("replaced by a newer link")
        if self.node.dispatcher.reading_paused:
            link.pause_reading()
        self.claim_origin(pid, hs.peer_record)  # its ids are its own, from now on
        self.apply(self.node.membership.link_ready(pid, hs.peer_record, time.monotonic()))
        self.link_changed(pid, True)
        self.send_gossip()
        # A newcomer gets our digests at once, so it catches up without waiting a tick.
        link.send_frame(single_frame(*self.node.state.digest_message()))

    def on_message(self, link: Any, sender: str | None, kind: int, m: Any) -> None:
        now = time.monotonic()
        if kind == schema.KIND_EVENT:
            self.node.gate.sink.on_event(m)
        elif kind == schema.KIND_BUS_EVENT:
            self.accept_bus_event(m)
        elif kind == schema.KIND_HEARTBEAT:
            self.node.state.touch()
            self.apply(self.node.membership.on_heartbeat(m, now))
            if "heartbeat" in self.node.event_handlers:
                self.node.dispatcher.deliver(
                    {"type": "heartbeat", "source_node": m.node_id, "timestamp": iso_from_epoch(m.sent_at),
                     "data": {"node_id": m.node_id, "status": m.status, "recursion_depth": m.recursion_depth,
                              "entropy_level": m.entropy_level}})
        elif kind == schema.KIND_LEAVE:
            self.apply(self.node.membership.on_leave(m.node_id))
        elif kind == schema.KIND_GOSSIP:
            bus = link.shared_bus
            if bus and sender is not None:  # a bus sender's own record (its frame is key-signed)
                for rec in m.nodes:
                    if isinstance(rec, dict) and rec.get("node_id") == sender:
                        self.claim_origin(sender, rec)
            self.apply(self.node.membership.on_gossip(m, sender, now, learn=bus, dial=self.node.ws is not None))
            if not bus:
                self.expect_upto(sender, m)
        elif kind == schema.KIND_STATE_DELTA:
            self.node.state.apply_entries(m.entries)
        elif kind == schema.KIND_STATE_DIGEST:
            self.reply(link, sender, self.node.state.on_digest(sender, m))
        elif kind == schema.KIND_REPAIR_REQUEST:
            self.repair_request(sender, m)
        elif kind == schema.KIND_REPAIR_GONE:
            w = self.node.gate.dedupe.window(m.origin)
            if w is not None:
                w.give_up(list(m.seqs))
        elif kind == schema.KIND_STATE_REQUEST:
            self.reply(link, sender, self.node.state.on_request(m, sender))
        elif kind == schema.KIND_CLOCK_SKEW:
            self.node.state.on_clock_skew(sender, m)
        elif kind == schema.KIND_ORIGIN_END:
            self.on_origin_end(m)
        elif kind == schema.KIND_PING:
            self.apply(self.node.membership.on_ping(m, sender, now))
        elif kind == schema.KIND_PING_REQ:
            self.apply(self.node.membership.on_ping_req(m, sender, now))
        elif kind == schema.KIND_ACK:
            self.apply(self.node.membership.on_ack(m, sender, now))
        elif kind == schema.KIND_CATCHUP_REQUEST:
            self.node.catchup.on_request(link, sender, m)
        elif kind == schema.KIND_CATCHUP_BATCH:
            self.node.catchup.on_batch(sender, m)

    def reply(self, link: Any, to: str | None, msgs: list[tuple[int, Any]]) -> None:
        """Answer a peer.  An answer of several messages (a state repair: chunks of about
        256 KiB, up to the whole state for a late joiner) goes out paced, each chunk once
        the link has room, so it never overflows the link's outbox; while one is on its
        way to a link, another many-chunk answer to it is skipped (the next anti-entropy
        round asks again for whatever is still missing)."""
        if len(msgs) == 1:
            self._reply_one(link, to, msgs[0])
        elif not msgs or (link, to) in self.replying:
            return
        elif len(self.replying) >= MAX_PACED_REPLIES or (link.shared_bus and to not in self.node.nodes):
            # Bounded work per node; on a bus, whole-state answers only for members we list
            # (an insider can name any sender in its frames).
            self.node.counts["state_replies_deferred"] += 1
        else:
            task = asyncio.ensure_future(self._paced_reply(link, to, msgs))
            self.replying[link, to] = task
            task.add_done_callback(functools.partial(self._replied, (link, to)))

    def _replied(self, key: Any, _task: Any) -> None:
        self.replying.pop(key, None)

    @staticmethod
    def _reply_one(link: Any, to: str | None, msg: tuple[int, Any]) -> None:
        if link.shared_bus and to is not None:
            link.send_direct(to, msg[0], 0, b"", msg[1])
        else:
            link.send_frame(single_frame(*msg))

    async def _paced_reply(self, link: Any, to: str | None, msgs: list[tuple[int, Any]]) -> None:
        try:
            for msg in msgs:
                while (getattr(link, "paused", False) or getattr(link, "congested", False)
                       or getattr(link, "outbox_bytes", 0) > REPLY_PACE_BYTES
                       or getattr(link, "pending_bytes", 0) > REPLY_PACE_BYTES):
                    if getattr(link, "closed", False) or not self.node.running:
                        return
                    await asyncio.sleep(0.005)
                if getattr(link, "closed", False) or not self.node.running:
                    return
                self._reply_one(link, to, msg)
                await asyncio.sleep(0)
        except Exception:  # a callback must not die on one bad link
            log.exception("state reply to %s failed", to or getattr(link, "name", "?"))

    def on_query(self, link: Any, q: Any) -> None:
        answer_query(self.node, link, q)

    def relay(self, target: str, came_from: Any, m: Any) -> bool:
        return self.node.outbox.forward(target, came_from, m.kind, m.etype, m.target, m.msg_id, m.payload)

    def apply(self, effects: list[tuple[Any, ...]]) -> None:
        """Carry out membership effects."""
        for e in effects:
            if e[0] == "joined":
                node = e[1]
                log.info("node %s (%s) joined", node.node_id, node.name)
                origin = node.metadata.get("origin") if isinstance(node.metadata, dict) else None
                if isinstance(origin, str):
                    self.origin_names[origin] = node.node_id
                    while len(self.origin_names) > MAX_ORIGIN_NAMES:
                        del self.origin_names[next(iter(self.origin_names))]
                self.node.dispatcher.announce({"type": EventType.NODE_REGISTER.value, "source_node": node.node_id,
                                          "timestamp": datetime.now().isoformat(), "data": node.to_dict()})
                self.node.tasks.node_joined(node.node_id)
            elif e[0] == "lost":
                nid, reason = e[1], e[2]
                log.info("node %s removed (%s)", nid, reason)
                # Declared gone: its id may now be taken by a new key, its origins by a new process.
                self.node.key_pins.release(nid)
                self.node.gate.sink.release(nid)
                self.origin_ended(nid)
                link = self.node.outbox.links.get(nid)
                if link is not None:
                    self.node.outbox.remove_link(nid, link)
                    link.close(f"peer {reason}")
                if self.node.ws is not None:
                    self.node.ws.forget(nid)
                self.node.tasks.node_removed(nid, reason)  # worker loss: only this node's own decision
                self.node.dispatcher.announce({"type": EventType.NODE_UNREGISTER.value, "source_node": nid,
                                          "timestamp": datetime.now().isoformat(),
                                          "data": {"node_id": nid, "reason": reason}})
            elif e[0] == "dial" and self.node.ws is not None:
                self.node.ws.dial(e[1], expected_id=e[2])
            elif e[0] == "ping":
                self.probe(e[1], e[2], e[3])
            elif e[0] == "ping_req":
                self.node.outbox.send(e[1], schema.KIND_PING_REQ, 0, b"", schema.PingReq(e[2], e[3]))
            elif e[0] == "ack":
                self.node.outbox.send(e[1], schema.KIND_ACK, 0, b"", schema.Ack(e[2], e[3]))
            elif e[0] == "suspect":
                self.node.counts["suspected"] += 1
                timeout = self.node.membership.suspicion_timeout
                log.info("node %s suspected (its link closed): probing it for %.1f s", e[1], timeout)
                # judged when its time is up, not at the next sweep tick (up to 0.5 s later)
                due = time.monotonic() + timeout + SUSPICION_SLACK
                asyncio.get_running_loop().call_later(timeout + SUSPICION_SLACK, self.judge_suspects, due)
            elif e[0] == "refuted":
                self.node.counts["suspicions_refuted"] += 1
                log.info("node %s is alive (%s)", e[1], e[2])

    def judge_suspects(self, due: float) -> None:
        """A suspicion's time is up: sweep now.  Not when this timer itself ran late (our
        loop was blocked, and the answers may be waiting unread): the sweep loop, which
        moves the clocks on by our own stall first, decides then."""
        now = time.monotonic()
        if self.node.running and now - due < SUSPICION_SLACK + 0.1:
            self.apply(self.node.membership.sweep(now))

    def probe(self, target: str, nonce: int, any_route: bool) -> None:
        """Ping ``target``: over a bus that reaches it (``any_route`` False: the direct
        probe of a suspect whose link closed), or by whatever route the outbox has."""
        ping = schema.Ping(nonce, self.node.node_id)
        if any_route:
            self.node.outbox.send(target, schema.KIND_PING, 0, b"", ping)
            return
        for bus in self.node.outbox.bus_links:
            if bus.can_reach(target):
                bus.send_direct(target, schema.KIND_PING, 0, b"", ping)

    # -- internals -----------------------------------------------------------------

    def origin_ended(self, nid: str) -> None:
        """A node is gone: tell the others the last sequence of it we saw.  Its final
        events may have reached some of us and not others (a process killed with
        unsent data); a node that never saw those sequences would otherwise never know
        they existed.  With this it sees the gap, tries to repair it, and counts it."""
        for origin, owner in list(self.origin_names.items()):
            if owner != nid:
                continue
            w = self.node.gate.dedupe.window(origin)
            if w is not None and w.high > 0:
                self.broadcast(schema.KIND_ORIGIN_END, schema.OriginEnd(origin, w.high))

    def on_origin_end(self, m: schema.OriginEnd) -> None:
        """A peer says a node is gone and names the last sequence of its origin it saw.
        Kept as a claim, and taken only once that origin's node has been absent here
        for the whole repair budget (REPAIR_ATTEMPTS intervals): a node that is alive,
        or comes back in time, sends or repairs its own sequence, so a member cannot
        make us give up on sequences a live node has not sent yet."""
        if m.origin == self.node.local_node.metadata.get("origin"):
            return  # about us: we are alive
        claim = self.origin_ends.get(m.origin)
        if claim is None:
            self.origin_ends[m.origin] = [m.high, time.monotonic() + REPAIR_INTERVAL * REPAIR_ATTEMPTS]
            while len(self.origin_ends) > MAX_ORIGIN_NAMES:
                del self.origin_ends[next(iter(self.origin_ends))]
        elif m.high > claim[0]:
            claim[0] = m.high

    def apply_origin_ends(self, now: float) -> None:
        """Claims whose time has come: an origin still absent gets its tail expected and,
        as it has had its repair budget, given up (counted lost) at the next tick."""
        if not self.origin_ends:
            return
        members = {n.metadata.get("origin") for n in self.node.nodes.values()}
        for origin, (high, at) in list(self.origin_ends.items()):
            if origin in members:
                del self.origin_ends[origin]  # alive (or back): its own sequence speaks for it
            elif now >= at:
                del self.origin_ends[origin]
                w = self.node.gate.dedupe.window(origin)
                if w is not None and high > w.high:
                    w.expect(min(high, w.high + MAX_REPAIR_SEQS * REPAIR_BATCH))
                    self.repairs[origin] = [now - REPAIR_DELAY, 0.0, REPAIR_ATTEMPTS, w.missing]

    def send_gossip(self) -> None:
        md = self.node.local_node.metadata
        md["links"] = sorted(self.node.outbox.links)
        md["seq"] = self.node.sender.seq  # broadcast up to here: a receiver sees a gap at the end
        self.node.membership.sign_local()  # the endpoint claim, signed (once per endpoint)
        records = [n.to_dict() for n in self.node.nodes.values() if n.websocket_endpoint or n is self.node.local_node]
        self.broadcast(schema.KIND_GOSSIP, schema.Gossip(records))

    def accept_bus_event(self, ev: schema.Event) -> None:
        et = _EVENT_TYPES.get(ev.event_type)
        if et is None:
            self.node.counts["bad_messages"] += 1
            return
        if ev.event_type in ("node_register", "node_unregister") and not (
                isinstance(ev.data, dict) and ev.data.get("node_id") == ev.source_node):
            self.node.gate.sink.reserved_refused += 1  # a node announces only itself (as on the mesh path)
            return
        self.node.event_bus.accept_remote(RitualEvent(ev.event_id, et, ev.source_node, ev.target_node, ev.timestamp,
                                                 ev.data, ev.metadata or {}, ev.priority, ev.ttl))

    async def heartbeat_loop(self) -> None:
        interval = self.node.config.heartbeat_interval
        while True:
            self.broadcast(schema.KIND_HEARTBEAT, self.node.membership.heartbeat(time.time()))
            for link in list(self.node.outbox.links.values()):
                ping = getattr(link, "ping", None)  # links that can measure their round trip
                if ping is not None:
                    ping()
            if self.node.outbox.links or self.node.outbox.bus_links:
                self.send_gossip()
            if self.node.redis is not None:
                self.node.redis.heartbeat()
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))

    def trim_retransmit(self, now: float) -> None:
        """Keep the retransmit buffer (what this node broadcast, for gap repair) within
        ``retransmit_buffer_bytes`` and ``retransmit_window`` seconds; oldest first.
        Ages come from marks (time, next sequence) taken at each tick."""
        sender, cfg = self.node.sender, self.node.config
        retx, marks = sender.retx, self.retx_marks
        marks.append((now, sender.retx_base + len(retx)))
        while marks and now - marks[0][0] > cfg.retransmit_window:
            upto = marks.popleft()[1]  # everything sent before this mark is too old
            while retx and sender.retx_base < upto:
                sender.retx_bytes -= len(retx.popleft())
                sender.retx_base += 1
        while retx and sender.retx_bytes > cfg.retransmit_buffer_bytes:
            sender.retx_bytes -= len(retx.popleft())
            sender.retx_base += 1

    # -- gap repair ----------------------------------------------------------------------

    def repair_tick(self, now: float) -> None:
        """Ask each origin for the sequences we are missing from it (after REPAIR_DELAY,
        every REPAIR_INTERVAL, REPAIR_ATTEMPTS times); give up on an origin that is gone."""
        self.apply_origin_ends(now)
        dedupe = self.node.gate.dedupe
        gaps = dedupe.gaps()
        if not gaps and not self.repairs:
            return
        for origin in [o for o in self.repairs if o not in gaps]:
            del self.repairs[origin]
        origins = {n.metadata.get("origin"): nid for nid, n in self.node.nodes.items() if nid != self.node.node_id}
        busy = self.node.catchup.busy  # origins being caught up from event logs: not asked here
        for origin in gaps:
            if origin in busy:
                continue
            # first noticed, last asked, unanswered asks, missing when last asked
            st = self.repairs.setdefault(origin, [now, 0.0, 0, 0])
            if now - st[0] < REPAIR_DELAY or now - st[1] < REPAIR_INTERVAL:
                continue
            w = dedupe.window(origin)
            if w is None:
                continue
            if w.missing < st[3]:
                st[2] = 0  # the last ask was answered (in part at least): not a silent origin
            seqs = w.missing_seqs(MAX_REPAIR_SEQS * REPAIR_BATCH)
            nid = origins.get(origin)
            if st[2] >= REPAIR_ATTEMPTS:
                w.give_up(seqs)  # the origin does not answer, or stayed gone
                continue
            st[1], st[2], st[3] = now, st[2] + 1, w.missing
            if nid is None:  # not a member now; after a bus outage it is back within a heartbeat or two
                continue
            for i in range(0, len(seqs), MAX_REPAIR_SEQS):
                self.node.counts["repair_requests"] += 1
                self.node.outbox.send(nid, schema.KIND_REPAIR_REQUEST, 0, b"",
                                      schema.RepairRequest(origin, seqs[i:i + MAX_REPAIR_SEQS]))

    def repair_request(self, requester: str | None, m: schema.RepairRequest) -> None:
        """A peer misses some of our broadcasts: resend what the buffer still holds."""
        sender = self.node.sender
        if requester is None or m.origin + "-" != sender.prefix:
            return
        retx, base, gone = sender.retx, sender.retx_base, []
        ob = self.node.outbox
        sent = sender.seq
        for seq in m.seqs[:MAX_REPAIR_SEQS]:
            if seq > sent:
                continue  # not sent yet: never "gone" (a peer told a wrong end of our sequence)
            i = seq - base
            if 0 <= i < len(retx):
                ev = _decode_event(retx[i])
                ob.send(requester, schema.KIND_EVENT, schema.event_type_id(ev.event_type), ev.event_id, ev)
                self.node.counts["repaired_sent"] += 1
            else:
                gone.append(seq)
        if gone:
            ob.send(requester, schema.KIND_REPAIR_GONE, 0, b"", schema.RepairGone(m.origin, gone))

    def check_losses(self) -> None:
        """Broadcast sequences given up (not repairable) since the last check: log once
        per episode (with back-off) and tell the local handlers with a ``system_alert``."""
        gaps = self.node.gate.dedupe.lost()
        for origin, missing in gaps.items():
            before = self.reported.get(origin, 0)
            if missing > before:
                self.losses(("lost", origin), logging.WARNING, "%d event(s) from origin %s lost (sequence gaps; %d "
                            "in all)", missing - before, origin, missing)
                self.node.dispatcher.announce({
                    "type": EventType.SYSTEM_ALERT.value, "source_node": self.node.node_id,
                    "timestamp": datetime.now().isoformat(),
                    "data": {"alert_level": "warning", "message": f"{missing - before} event(s) lost from origin {origin}",
                             "details": {"origin": origin, "lost": missing - before, "lost_total": missing}}})
        self.reported = gaps

    def expect_upto(self, sender: str | None, g: schema.Gossip) -> None:
        """Gossip over a link comes after every broadcast its sender made before it (one
        ordered stream): what we have not seen of its sequence up to there is missing."""
        for rec in g.nodes:
            if isinstance(rec, dict) and rec.get("node_id") == sender:
                md = rec.get("metadata")
                if isinstance(md, dict) and isinstance(md.get("origin"), str) and type(md.get("seq")) is int:
                    w = self.node.gate.dedupe.window(md["origin"])
                    if w is not None:
                        w.expect(md["seq"])
                return

    def vouch(self, now: float, late: float, tick: float) -> None:
        """Failure detection must not blame peers for our own slowness.  ``late``: how
        much later than due this tick ran (our loop was blocked, or the process stopped):
        every peer's clock moves on by as much.  A peer whose link delivered frames since
        the last tick is alive (its heartbeats may wait behind a backlog of events), and
        while we have stopped reading, silence proves nothing about the linked peers."""
        m = self.node.membership
        if late > tick:
            m.stalled(late)
        paused = self.node.dispatcher.reading_paused
        if paused:  # answers to our probes wait unread too
            m.hold_suspicions(tick)
        counts = {}
        for pid, link in self.node.outbox.links.items():
            n = getattr(link, "frames_in", None)
            counts[link] = n
            if paused or (n is not None and n != self.frames_seen.get(link, n)):
                m.alive(pid, now)
        self.frames_seen = counts

    async def sweep_loop(self) -> None:
        interval = self.node.config.heartbeat_interval
        tick = min(interval / 4, 0.5)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.vouch(now, now - last - tick, tick)
            last = now
            self.apply(self.node.membership.sweep(now))
            self.repair_tick(now)
            self.check_losses()
            self.trim_retransmit(now)
