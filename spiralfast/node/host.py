"""The node's side of the seam: the ``LinkHost`` its transports call, and the
callbacks of its gate.  It carries out what the sans-I/O parts decide (handshake,
membership, reliability and state-sync effects) and runs the heartbeat and
failure-detection loops.  It sees the node only through the ``HostNode`` port
(:mod:`spiralfast.ports.node`), never ``MeshCore`` itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from datetime import datetime
from typing import Any

import msgspec

from .._log import BackoffLog
from ..links.base import BusLink, Dialer, LegacyRouter, LinkHost, Opener, Pinger, ReplayCheck
from ..ops.queries import answer_query
from ..ports.node import CatchUpPort, GatePort, HostNode, SenderPort, StateSyncPort, TaskNotices
from ..protocol.handshake import Handshake
from ..protocol.membership import (
    Dial,
    Effect,
    Joined,
    Lost,
    Refuted,
    SendAck,
    SendPing,
    SendPingReq,
    Suspected,
)
from ..protocol.reliability import (
    MAX_ORIGIN_NAMES,
    MAX_REPAIR_SEQS,
    REPAIR_ATTEMPTS,
    REPAIR_BATCH,
    REPAIR_DELAY,
    REPAIR_INTERVAL,
    Reliability,
    RetransmitTrimmer,
    answer_repair,
)
from ..records import EventType, RitualEvent
from ..wire import schema
from ..wire.fastpath import iso_from_epoch
from .gate import CLOSED, MEMBER, Session
from .joining import Joining
from .outbox import single_frame

__all__ = ["MAX_ORIGIN_NAMES", "MAX_PACED_REPLIES", "MAX_REPAIR_SEQS", "REPAIR_ATTEMPTS", "REPAIR_BATCH",
           "REPAIR_DELAY", "REPAIR_INTERVAL", "REPLY_PACE_BYTES", "SUSPICION_SLACK", "NodeHost"]

log = logging.getLogger("spiralfast.node.core")

_EVENT_TYPES = {e.value: e for e in EventType}
_decode_event = msgspec.msgpack.Decoder(schema.Event).decode
#: A paced state reply waits while the link holds more than this many unsent bytes.
REPLY_PACE_BYTES = 4 * 1024 * 1024
#: Many-chunk state answers on their way at once, over all links (more wait for the next round).
MAX_PACED_REPLIES = 8
#: A suspect is judged this long after its suspicion timeout (timers of the loop run a little early or late).
SUSPICION_SLACK = 0.02


class NodeHost(Joining, LinkHost):
    """``LinkHost`` of one node (see ``spiralfast.links.base``); its handshake half
    is :class:`~spiralfast.node.joining.Joining`.

    :param node: the node, through the ``HostNode`` port.
    """

    def __init__(self, node: HostNode) -> None:
        self.node = node
        # The parts that exist before the host (the others are read when used).
        self.config = node.config
        self.membership = membership = node.membership
        self.outbox = node.outbox
        self.dispatcher = node.dispatcher
        self.counts = node.counts
        self.nodes = node.nodes
        self.local_node = node.local_node
        # Endpoints are signed by the node they name, and gossiped ones dialled only then
        # (issue 23 #7): our own claim signed with our key, others' checked against the
        # key pinned to their node id (bus pins; else the key of their own record).
        key, pins = getattr(node, "key", None), getattr(node, "key_pins", None)
        if key is not None:
            membership.enable_signed_endpoints(key.sign, self.config.mesh_name,
                                               pins.get if pins is not None else None)
        #: Refused handshakes: logged once per peer and reason, then rarely.
        self.refusals = BackoffLog(log, initial=60.0, maximum=3600.0)
        #: Lost events (sequence gaps), logged with back-off.
        self.losses = BackoffLog(log, initial=10.0, maximum=600.0)
        self._rel: Reliability | None = None  # made at first use (the gate's windows come after us)
        self.trimmer = RetransmitTrimmer()
        #: (first, latest) monotonic time a member refused this node's id as taken.
        self.id_refused: tuple[float, float] = (0.0, float("-inf"))
        self.replying: dict[Any, asyncio.Task[None]] = {}  # (link, peer) -> paced state reply on its way
        self.frames_seen: dict[Any, Any] = {}  # member link -> frames it had delivered at the last sweep

    # -- the parts made after the host --------------------------------------------------

    @property
    def gate(self) -> GatePort:
        return self.node.gate

    @property
    def sender(self) -> SenderPort:
        return self.node.sender

    @property
    def catchup(self) -> CatchUpPort:
        return self.node.catchup

    @property
    def state(self) -> StateSyncPort:
        return self.node.state

    @property
    def tasks(self) -> TaskNotices:
        return self.node.tasks

    @property
    def rel(self) -> Reliability:
        """Gap repair, origin-end and loss reports (``protocol.reliability``)."""
        rel = self._rel
        if rel is None:
            origin = self.local_node.metadata.get("origin")
            rel = self._rel = Reliability(self.gate.dedupe, origin if isinstance(origin, str) else None)
        return rel

    @property
    def origin_names(self) -> dict[str, str]:
        """Broadcast origin -> the node (one per incarnation) it belongs to, for operators."""
        return self.rel.origin_names

    @property
    def origin_ends(self) -> dict[str, Any]:
        """origin -> a peer's claim of its last sequence (``OriginEnd``), not yet taken."""
        return self.rel.origin_ends

    # -- LinkHost ------------------------------------------------------------------------

    def broadcast(self, kind: int, obj: Any) -> None:
        self.outbox.broadcast(kind, 0, b"", obj)

    def link_opened(self, link: Any, outbound: bool) -> None:
        """A transport opened ``link``: start its handshake."""
        node, cfg = self.node, self.config
        hs = Handshake(node.node_id, cfg.mesh_name, cfg.auth_token, outbound=outbound,
                       record=self.membership.local_record, node_key=node.key)
        link.session = Session(hs, time.monotonic())
        node.links.add(link)
        for kind, obj in hs.start():
            link.send_frame(single_frame(kind, obj))
        loop = asyncio.get_running_loop()
        link.session.timer = loop.call_later(cfg.handshake_timeout, self.handshake_expired, link)

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
        if was == MEMBER and s.peer_id is not None and self.outbox.links.get(s.peer_id) is link:
            self.outbox.remove_link(s.peer_id, link)
            by_peer = bool(getattr(link, "closed_by_peer", False)) and self.node.running
            self.apply(self.membership.link_lost(s.peer_id, time.monotonic(), by_peer=by_peer))
            self.link_changed(s.peer_id, False)

    def frame_received(self, link: Any, data: Any, sender: str | None = None) -> None:
        self.gate.on_frame(link, data, sender)

    def messages_received(self, link: Any, sender: str, msgs: Any) -> None:
        self.gate.messages(link, sender, msgs)

    def bus_payload(self, link: BusLink, channel: str, data: bytes, control: bool = False) -> None:
        """A sealed bus payload: the gate opens it (``Gate.bus_payload``)."""
        self.gate.bus_payload(link, channel, data, control)

    def bus_replayed(self, link: BusLink, channel: str, data: bytes, opener: Opener, check: ReplayCheck) -> None:
        """A sealed payload the bus kept (a catch-up): the gate opens it (``Gate.bus_replayed``)."""
        self.gate.bus_replayed(link, channel, data, opener, check)

    def writable_changed(self, link: Any, writable: bool) -> None:
        (self.outbox.link_resumed if writable else self.outbox.link_paused)(link)

    def bus_up(self, link: Any) -> None:
        """A bus link (Redis, NATS) is (again) connected: its frames are authenticated
        per frame, and nodes on it learn us from our gossip."""
        if link.session is None:
            link.session = Session(None, time.monotonic(), MEMBER)
        if link not in self.outbox.bus_links:
            self.outbox.bus_links.append(link)
        if link.transport == "redis":
            self.config.enable_redis = True
        self.send_gossip()

    def bus_down(self, link: Any) -> None:
        if link in self.outbox.bus_links:
            self.outbox.bus_links.remove(link)
        self.outbox.link_resumed(link)

    def claim_origin(self, node_id: str, record: Any) -> None:
        """``node_id``'s own record (from its authenticated handshake, or its key-signed bus
        frame) names its broadcast origin: ids of that origin are accepted from it alone."""
        md = record.get("metadata") if isinstance(record, dict) else None
        origin = md.get("origin") if isinstance(md, dict) else None
        if isinstance(origin, str) and origin:
            self.gate.sink.claim(origin, node_id)

    def local_record(self) -> dict[str, Any]:
        return self.membership.local_record()

    def knows(self, node_id: str) -> bool:
        return node_id in self.nodes

    def linked(self, node_id: str) -> bool:
        return node_id in self.outbox.links

    # -- the gate's callbacks: member messages ------------------------------------------

    def on_message(self, link: Any, sender: str | None, kind: int, m: Any) -> None:
        now = time.monotonic()
        ms = self.membership
        if kind == schema.KIND_EVENT:
            self.gate.sink.on_event(m)
        elif kind == schema.KIND_BUS_EVENT:
            self.accept_bus_event(m)
        elif kind == schema.KIND_HEARTBEAT:
            self.state.touch()
            self.apply(ms.on_heartbeat(m, now))
            if "heartbeat" in self.node.event_handlers:
                self.dispatcher.deliver(
                    {"type": "heartbeat", "source_node": m.node_id, "timestamp": iso_from_epoch(m.sent_at),
                     "data": {"node_id": m.node_id, "status": m.status, "recursion_depth": m.recursion_depth,
                              "entropy_level": m.entropy_level}})
        elif kind == schema.KIND_LEAVE:
            self.apply(ms.on_leave(m.node_id))
        elif kind == schema.KIND_GOSSIP:
            bus = link.shared_bus
            if bus and sender is not None:  # a bus sender's own record (its frame is key-signed)
                for rec in m.nodes:
                    if isinstance(rec, dict) and rec.get("node_id") == sender:
                        self.claim_origin(sender, rec)
            self.apply(ms.on_gossip(m, sender, now, learn=bus, dial=self.node.ws is not None))
            if not bus:
                self.rel.expect_upto(sender, m.nodes)
        elif kind == schema.KIND_STATE_DELTA:
            self.state.apply_entries(m.entries)
        elif kind == schema.KIND_STATE_DIGEST:
            self.reply(link, sender, self.state.on_digest(sender, m))
        elif kind == schema.KIND_REPAIR_REQUEST:
            self.repair_request(sender, m)
        elif kind == schema.KIND_REPAIR_GONE:
            self.rel.on_repair_gone(m.origin, m.seqs)
        elif kind == schema.KIND_STATE_REQUEST:
            self.reply(link, sender, self.state.on_request(m, sender))
        elif kind == schema.KIND_CLOCK_SKEW:
            self.state.on_clock_skew(sender, m)
        elif kind == schema.KIND_ORIGIN_END:
            self.rel.on_origin_end(m.origin, m.high, now)
        elif kind == schema.KIND_PING:
            self.apply(ms.on_ping(m, sender, now))
        elif kind == schema.KIND_PING_REQ:
            self.apply(ms.on_ping_req(m, sender, now))
        elif kind == schema.KIND_ACK:
            self.apply(ms.on_ack(m, sender, now))
        elif kind == schema.KIND_CATCHUP_REQUEST:
            self.catchup.on_request(link, sender, m)
        elif kind == schema.KIND_CATCHUP_BATCH:
            self.catchup.on_batch(sender, m)

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
        elif len(self.replying) >= MAX_PACED_REPLIES or (link.shared_bus and to not in self.nodes):
            # Bounded work per node; on a bus, whole-state answers only for members we list
            # (an insider can name any sender in its frames).
            self.counts["state_replies_deferred"] += 1
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
        answer_query(self.node.ops, link, q)

    def relay(self, target: str, came_from: Any, m: Any) -> bool:
        return self.outbox.forward(target, came_from, m.kind, m.etype, m.target, m.msg_id, m.payload)

    # -- membership effects -------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        """Carry out membership effects (``protocol.membership``)."""
        for e in effects:
            match e:
                case Joined(node=node):
                    log.info("node %s (%s) joined", node.node_id, node.name)
                    origin = node.metadata.get("origin") if isinstance(node.metadata, dict) else None
                    if isinstance(origin, str):
                        self.rel.origin_joined(origin, node.node_id)
                    self.dispatcher.announce({"type": EventType.NODE_REGISTER.value, "source_node": node.node_id,
                                              "timestamp": datetime.now().isoformat(), "data": node.to_dict()})
                    self.tasks.node_joined(node.node_id)
                case Lost(node_id=nid, reason=reason):
                    self.node_lost(nid, reason)
                case Dial(endpoint=endpoint, node_id=nid):
                    ws = self.node.ws
                    if isinstance(ws, Dialer):
                        ws.dial(endpoint, expected_id=nid)
                case SendPing(node_id=target, nonce=nonce, any_route=any_route):
                    self.probe(target, nonce, any_route)
                case SendPingReq(helper=helper, target=target, nonce=nonce):
                    self.outbox.send(helper, schema.KIND_PING_REQ, 0, b"", schema.PingReq(target, nonce))
                case SendAck(to=to, node_id=nid, nonce=nonce):
                    self.outbox.send(to, schema.KIND_ACK, 0, b"", schema.Ack(nid, nonce))
                case Suspected(node_id=nid):
                    self.counts["suspected"] += 1
                    timeout = self.membership.suspicion_timeout
                    log.info("node %s suspected (its link closed): probing it for %.1f s", nid, timeout)
                    # judged when its time is up, not at the next sweep tick (up to 0.5 s later)
                    due = time.monotonic() + timeout + SUSPICION_SLACK
                    asyncio.get_running_loop().call_later(timeout + SUSPICION_SLACK, self.judge_suspects, due)
                case Refuted(node_id=nid, how=how):
                    self.counts["suspicions_refuted"] += 1
                    log.info("node %s is alive (%s)", nid, how)

    def node_lost(self, nid: str, reason: str) -> None:
        """Membership removed ``nid``: close its link, stop dialling it, tell the others
        the end of its sequence, and announce ``node_unregister``."""
        node = self.node
        log.info("node %s removed (%s)", nid, reason)
        # Declared gone: its id may now be taken by a new key, its origins by a new process.
        node.key_pins.release(nid)
        self.gate.sink.release(nid)
        self.origin_ended(nid)
        link = self.outbox.links.get(nid)
        if link is not None:
            self.outbox.remove_link(nid, link)
            link.close(f"peer {reason}")
        if isinstance(node.ws, Dialer):
            node.ws.forget(nid)
        self.tasks.node_removed(nid, reason)  # worker loss: only this node's own decision
        self.dispatcher.announce({"type": EventType.NODE_UNREGISTER.value, "source_node": nid,
                                  "timestamp": datetime.now().isoformat(),
                                  "data": {"node_id": nid, "reason": reason}})

    def judge_suspects(self, due: float) -> None:
        """A suspicion's time is up: sweep now.  Not when this timer itself ran late (our
        loop was blocked, and the answers may be waiting unread): the sweep loop, which
        moves the clocks on by our own stall first, decides then."""
        now = time.monotonic()
        if self.node.running and now - due < SUSPICION_SLACK + 0.1:
            self.apply(self.membership.sweep(now))

    def probe(self, target: str, nonce: int, any_route: bool) -> None:
        """Ping ``target``: over a bus that reaches it (``any_route`` False: the direct
        probe of a suspect whose link closed), or by whatever route the outbox has."""
        ping = schema.Ping(nonce, self.node.node_id)
        if any_route:
            self.outbox.send(target, schema.KIND_PING, 0, b"", ping)
            return
        for bus in self.outbox.bus_links:
            if bus.can_reach(target):
                bus.send_direct(target, schema.KIND_PING, 0, b"", ping)

    # -- reliability (the rules are protocol.reliability) --------------------------------

    def origin_ended(self, nid: str) -> None:
        """A node is gone: tell the others the last sequence of it we saw, so a node that
        missed its final events sees the gap, tries to repair it, and counts it."""
        for end in self.rel.origin_ended(nid):
            self.broadcast(schema.KIND_ORIGIN_END, schema.OriginEnd(end.origin, end.high))

    def repair_tick(self, now: float) -> None:
        """Ask each origin for the sequences we are missing from it; give up on an origin
        that is gone (``Reliability.repair_tick``)."""
        for ask in self.rel.repair_tick(now, self.nodes, self.node.node_id, self.catchup.busy):
            self.counts["repair_requests"] += 1
            self.outbox.send(ask.node_id, schema.KIND_REPAIR_REQUEST, 0, b"",
                             schema.RepairRequest(ask.origin, ask.seqs))

    def repair_request(self, requester: str | None, m: schema.RepairRequest) -> None:
        """A peer misses some of our broadcasts: resend what the buffer still holds."""
        sender = self.sender
        if requester is None or m.origin + "-" != sender.prefix:
            return
        retx, base = sender.retx, sender.retx_base
        answer = answer_repair(m.seqs, sender.seq, base, len(retx))
        ob = self.outbox
        for seq in answer.resend:
            ev = _decode_event(retx[seq - base])
            ob.send(requester, schema.KIND_EVENT, schema.event_type_id(ev.event_type), ev.event_id, ev)
            self.counts["repaired_sent"] += 1
        if answer.gone:
            ob.send(requester, schema.KIND_REPAIR_GONE, 0, b"", schema.RepairGone(m.origin, answer.gone))

    def check_losses(self) -> None:
        """Broadcast sequences given up (not repairable) since the last check: log once
        per episode (with back-off) and tell the local handlers with a ``system_alert``."""
        for r in self.rel.losses():
            self.losses(("lost", r.origin), logging.WARNING, "%d event(s) from origin %s lost (sequence gaps; %d "
                        "in all)", r.new, r.origin, r.total)
            self.dispatcher.announce({
                "type": EventType.SYSTEM_ALERT.value, "source_node": self.node.node_id,
                "timestamp": datetime.now().isoformat(),
                "data": {"alert_level": "warning", "message": f"{r.new} event(s) lost from origin {r.origin}",
                         "details": {"origin": r.origin, "lost": r.new, "lost_total": r.total}}})

    def trim_retransmit(self, now: float) -> None:
        """Keep the retransmit buffer within ``retransmit_buffer_bytes`` and
        ``retransmit_window`` seconds (``RetransmitTrimmer``)."""
        cfg = self.config
        self.trimmer.trim(self.sender, now, cfg.retransmit_window, cfg.retransmit_buffer_bytes)

    # -- gossip, bus events, loops -------------------------------------------------------

    def send_gossip(self) -> None:
        local = self.local_node
        md = local.metadata
        md["links"] = sorted(self.outbox.links)
        md["seq"] = self.sender.seq  # broadcast up to here: a receiver sees a gap at the end
        self.membership.sign_local()  # the endpoint claim, signed (once per endpoint)
        records = [n.to_dict() for n in self.nodes.values() if n.websocket_endpoint or n is local]
        self.broadcast(schema.KIND_GOSSIP, schema.Gossip(records))

    def accept_bus_event(self, ev: schema.Event) -> None:
        et = _EVENT_TYPES.get(ev.event_type)
        if et is None:
            self.counts["bad_messages"] += 1
            return
        if ev.event_type in ("node_register", "node_unregister") and not (
                isinstance(ev.data, dict) and ev.data.get("node_id") == ev.source_node):
            self.gate.sink.reserved_refused += 1  # a node announces only itself (as on the mesh path)
            return
        self.node.event_bus.accept_remote(RitualEvent(ev.event_id, et, ev.source_node, ev.target_node, ev.timestamp,
                                                      ev.data, ev.metadata or {}, ev.priority, ev.ttl))

    async def heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        ob = self.outbox
        while True:
            self.broadcast(schema.KIND_HEARTBEAT, self.membership.heartbeat(time.time()))
            for link in list(ob.links.values()):
                if isinstance(link, Pinger):  # links that can measure their round trip
                    link.ping()
            if ob.links or ob.bus_links:
                self.send_gossip()
            redis = self.node.redis
            if isinstance(redis, LegacyRouter):  # the old format's heartbeat (Redis only)
                redis.heartbeat()
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))

    def vouch(self, now: float, late: float, tick: float) -> None:
        """Failure detection must not blame peers for our own slowness.  ``late``: how
        much later than due this tick ran (our loop was blocked, or the process stopped):
        every peer's clock moves on by as much.  A peer whose link delivered frames since
        the last tick is alive (its heartbeats may wait behind a backlog of events), and
        while we have stopped reading, silence proves nothing about the linked peers."""
        m = self.membership
        if late > tick:
            m.stalled(late)
        paused = self.dispatcher.reading_paused
        if paused:  # answers to our probes wait unread too
            m.hold_suspicions(tick)
        counts = {}
        for pid, link in self.outbox.links.items():
            n = getattr(link, "frames_in", None)
            counts[link] = n
            if paused or (n is not None and n != self.frames_seen.get(link, n)):
                m.alive(pid, now)
        self.frames_seen = counts

    async def sweep_loop(self) -> None:
        interval = self.config.heartbeat_interval
        tick = min(interval / 4, 0.5)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.vouch(now, now - last - tick, tick)
            last = now
            self.apply(self.membership.sweep(now))
            self.repair_tick(now)
            self.check_losses()
            self.trim_retransmit(now)
