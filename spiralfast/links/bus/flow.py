"""What the two bus links (Redis, NATS) share: direct messages batched per loop
iteration into one frame per target, sealed publishing with a running byte offset,
and pacing on the slowest live receiver's acks.

Each frame a bus link publishes carries the sender's running byte offset; receivers
ack the offset they have processed.  A sender whose slowest live receiver lags more
than ``max_lag_bytes``, or whose own queue is long, tells the node it is not
writable (senders wait) until the lag is under ``resume_lag_bytes``.  A receiver
whose acks stop advancing for ``ACK_STALL_TIMEOUT`` is ignored until it acks again,
so one dead node cannot stall the mesh.

Meeting on a bus: once its subscriptions are in place a node announces itself (its
gossip) and says ``join`` on the control channel; every member hearing a join answers
the joiner at once, directly, with its own record (at most ``JOIN_ANSWERS_PER_SECOND``
answers a second, one per joiner every ``JOIN_ANSWER_GAP``).  Two nodes started in the
same second know each other within a round trip instead of at the next heartbeat.
The join is said again after ``JOIN_REPEAT`` (in a NATS cluster a new subscription
reaches the other servers a moment later).

Trust: payloads are opened by the node's gate (``LinkHost.bus_payload``), never here;
the gate calls back ``bus_frame``/``bus_delivered`` around a data frame's delivery and
``on_control`` for a control message (``links.base.BusLink``).

Rate limits ride on the same acks: a sender over this node's ``rate_limit`` gets its
acks held back (``hold_acks``, at most ``MAX_ACK_HOLD`` at a time, well under
``ACK_STALL_TIMEOUT``), so its lag grows and it waits; nothing it sent is dropped.
"""

from __future__ import annotations

import asyncio
import time

from ...wire import schema
from ...wire.codec import FrameWriter
from ...wire.limits import MAX_ACK_HOLD
from ...wire.sealing import BusSealer
from ..base import LinkHost, LinkInfo, LinkSession

#: A message id on the wire (``FrameWriter.add``).
MsgId = str | bytes | bytearray | memoryview

ACK_STALL_TIMEOUT = 3.0
#: Joins answered per second at most (over all joiners), and per joiner at most once in
#: this many seconds: an outsider naming many senders cannot make us publish much.
JOIN_ANSWERS_PER_SECOND = 50
JOIN_ANSWER_GAP = 0.25
#: The joiner says ``join`` again this long after the first time.
JOIN_REPEAT = 0.5
#: Joiners remembered for JOIN_ANSWER_GAP.
MAX_JOINERS = 4096


class BusFlow:
    """Mixin for a bus ``Link``.  The link provides ``host``, ``node_id``, ``sealer``, ``control_sealer``,
    ``stats``, ``connected``, ``sf_nodes``, ``pending`` / ``pending_bytes`` and the
    flow-control state (``tx_offset``, ``acked``, ``ack_progress``, ``rx_offsets``,
    ``ack_sent``, ``ack_holds``, ``join_answered``, ``join_window``, ``stopping``, ``congested``, ``_direct``, ``_direct_scheduled``), plus
    ``_direct_channel(target)``, ``_queue(channel, payload)`` and ``_send_acks()``."""

    #: Limits (the link sets its own).
    max_pending_frames = 10_000
    max_pending_bytes = 16 * 1024 * 1024
    max_lag_bytes = 2 * 1024 * 1024
    resume_lag_bytes = 512 * 1024
    ack_every_bytes = 256 * 1024
    #: Whether our own echo paces us (Redis delivers our frames back to us; NATS does not).
    own_echo = False

    host: LinkHost
    node_id: str
    sealer: BusSealer
    control_sealer: BusSealer
    stats: dict[str, int]
    connected: bool
    sf_nodes: set[str]
    pending: list[tuple[str, bytes]]
    pending_bytes: int
    tx_offset: int
    acked: dict[str, int]
    ack_progress: dict[str, float]
    rx_offsets: dict[str, int]
    ack_sent: dict[str, int]
    ack_holds: dict[str, float]
    join_answered: dict[str, float]
    join_window: list[float]
    stopping: bool
    congested: bool
    _direct: dict[str, FrameWriter]
    _direct_scheduled: bool

    #: What makes the mixin a ``Link`` (each bus link sets or defines them).
    transport: str
    name: str
    outbound: bool
    shared_bus: bool
    peer_id: str | None
    session: LinkSession | None

    def send_frame(self, frame: bytes) -> bool:
        raise NotImplementedError

    def close(self, reason: str = "") -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def info(self) -> LinkInfo:
        raise NotImplementedError

    def _direct_channel(self, target: str) -> str:
        raise NotImplementedError

    def _queue(self, channel: str, payload: bytes) -> None:
        raise NotImplementedError

    def _send_acks(self) -> None:
        raise NotImplementedError

    def _publish_join(self) -> None:
        """Say ``join`` on the link's control channel (sealed like the acks)."""
        raise NotImplementedError

    # -- meeting ---------------------------------------------------------------------

    def _join(self, again: bool = True) -> None:
        """Our subscriptions are in place: announce us (gossip) and ask the members
        to answer with their records; said once more after JOIN_REPEAT."""
        if not self.connected or self.stopping:
            return
        self.host.bus_up(self)  # (again) on the bus, and our gossip out
        self._publish_join()
        self.stats["joins_sent"] += 1
        if again:
            asyncio.get_running_loop().call_later(JOIN_REPEAT, self._join, False)

    def _on_join(self, sender: str) -> None:
        """A node joined the bus: answer it at once, directly, with our own record."""
        if sender == self.node_id:
            return
        now = time.monotonic()
        answered = self.join_answered
        last = answered.get(sender)
        if last is not None and now - last < JOIN_ANSWER_GAP:
            return
        window = self.join_window
        if now - window[0] >= 1.0:
            window[0], window[1] = now, 0
        if window[1] >= JOIN_ANSWERS_PER_SECOND:
            self.stats["joins_unanswered"] += 1
            return
        window[1] += 1
        answered.pop(sender, None)
        answered[sender] = now
        while len(answered) > MAX_JOINERS:
            del answered[next(iter(answered))]
        self.sf_nodes.add(sender)  # it reads its own channel
        self.stats["joins_answered"] += 1
        self._add_direct(sender, schema.KIND_GOSSIP, 0, b"", schema.Gossip([self.host.local_record()]))

    # -- sending -------------------------------------------------------------------

    def can_reach(self, node_id: str) -> bool:
        """True for spiralfast nodes heard on the bus: they read their own channel."""
        return self.connected and node_id in self.sf_nodes

    def send_direct(self, target: str, kind: int, etype: int, msg_id: MsgId, obj: object) -> None:
        """Queue a message for one node's channel; batched per loop iteration."""
        self.stats["direct"] += 1
        self._add_direct(target, kind, etype, msg_id, obj)

    def _add_direct(self, target: str, kind: int, etype: int, msg_id: MsgId, obj: object) -> None:
        w = self._direct.get(target)
        if w is None:
            w = self._direct[target] = FrameWriter()
        if w.full:
            self._flush_direct()
        w.add(kind, etype, target, msg_id, obj)
        if not self._direct_scheduled:
            self._direct_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_direct)

    def _flush_direct(self) -> None:
        self._direct_scheduled = False
        for target, w in self._direct.items():
            if w.count:
                self._send_sf(self._direct_channel(target), w.finish())

    def _send_sf(self, channel: str, frame: bytes) -> None:
        self.tx_offset += len(frame)
        self._queue(channel, self.sealer.seal(channel.encode(), self.tx_offset, frame))
        if not self.congested and (
            self.pending_bytes > self.max_pending_bytes
            or len(self.pending) > self.max_pending_frames // 2
            or self._max_lag() > self.max_lag_bytes
        ):
            self._set_congested(True)

    # -- flow control ----------------------------------------------------------------

    def _max_lag(self) -> int:
        now = time.monotonic()
        knows = self.host.knows
        me = self.node_id if self.own_echo else None
        lag = 0
        for r, off in self.acked.items():
            if (r == me or knows(r)) and now - self.ack_progress.get(r, 0.0) < ACK_STALL_TIMEOUT:
                lag = max(lag, self.tx_offset - off)
        return lag

    def _set_congested(self, on: bool) -> None:
        self.congested = on
        if on:
            self.stats["paced"] += 1
        self.host.writable_changed(self, not on)

    def _recheck(self) -> None:
        if (
            self.congested
            and self.pending_bytes < self.max_pending_bytes // 2
            and len(self.pending) < self.max_pending_frames // 4
            and self._max_lag() < self.resume_lag_bytes
        ):
            self._set_congested(False)

    def bus_delivered(self, sender: str, offset: int) -> None:
        """The gate delivered a frame of ``sender``'s up to ``offset``: ack it in time."""
        self._note_received(sender, offset)

    def _note_received(self, sender: str, offset: int) -> None:
        self.rx_offsets[sender] = offset
        if offset - self.ack_sent.get(sender, 0) >= self.ack_every_bytes and not self._ack_held(sender):
            self._send_acks()

    def hold_acks(self, sender: str, seconds: float) -> None:
        """``sender`` is over our rate limit: ack none of its frames for ``seconds``
        (at most ``MAX_ACK_HOLD``), so its flow control slows it down."""
        holds = self.ack_holds
        if not self._ack_held(sender):
            # First ack what came before, so the sender counts us (a sender paces only on
            # receivers that have acked) and sees its lag grow from there.
            self.rx_offsets.setdefault(sender, 0)
            self._send_acks()
        holds[sender] = max(holds.get(sender, 0.0), time.monotonic() + min(seconds, MAX_ACK_HOLD))

    def _ack_held(self, sender: str) -> bool:
        holds = self.ack_holds
        if not holds:
            return False
        until = holds.get(sender)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del holds[sender]
        return False

    def _ackable(self) -> dict[str, int]:
        """The offsets to ack now: those that moved, except senders whose acks are held."""
        return {s: o for s, o in self.rx_offsets.items() if o != self.ack_sent.get(s) and not self._ack_held(s)}

    def _acked(self, sender: str, offset: object) -> None:
        """A receiver's ack of our offset (already authenticated and decoded)."""
        if isinstance(offset, int) and offset > self.acked.get(sender, -1):
            self.acked[sender] = offset
            self.ack_progress[sender] = time.monotonic()
            if self.congested:
                self._recheck()
