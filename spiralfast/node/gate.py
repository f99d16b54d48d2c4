"""The gate: every inbound message, from every transport, passes ``Gate.admit``.

It knows the session state of the link a message came on and decides, per message:
``DELIVER`` (to the dispatcher, membership or state sync), ``RELAY`` (to the target's
link), ``ANSWER`` (handshake, observer queries) or ``REFUSE`` (counted; repeat
offenders closed).  Nothing but the handshake passes before a link is authenticated.
The rules are the table in DESIGN-NOTES.md, as the pure function
:func:`spiralfast.protocol.admission.admit` (its sans-I/O half, with the session
states, the verdicts and the token bucket); this module is the I/O half.
tests/test_gate.py and tests/protocol/test_admission.py check them row by row.

The receive hot path stays compiled: frames from authenticated member links go to
``EventSink.receive``, which delivers events itself and hands every other message
back here.  Frames from links that are not members never reach the sink (so an
outsider cannot even touch the de-duplication window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from .._log import RateLimitedLog
from ..errors import AuthError, FrameError
from ..links.base import BusLink, Opener, ReplayCheck
from ..protocol.admission import SessionState, TokenBucket, Verdict, admit
from ..protocol.handshake import Handshake
from ..wire import schema
from ..wire.codec import decode_frame, decode_payload
from ..wire.fastpath import Dedupe, EventSink
from ..wire.limits import MAX_BUS_RATE_SENDERS, MAX_PREAUTH_FRAME_SIZE, MAX_PREAUTH_FRAMES
from .dispatch import TURN_BUDGET

__all__ = ["ANSWER", "CLOSED", "DELIVER", "HANDSHAKE", "MEMBER", "OBSERVER", "REFUSE", "RELAY", "Gate", "Session",
           "TokenBucket", "admit"]

log = logging.getLogger("spiralfast.node.gate")

#: The verdicts and session states (:mod:`spiralfast.protocol.admission`), by their old names.
DELIVER, RELAY, ANSWER, REFUSE = Verdict.DELIVER, Verdict.RELAY, Verdict.ANSWER, Verdict.REFUSE
HANDSHAKE, MEMBER, OBSERVER, CLOSED = (SessionState.HANDSHAKE, SessionState.MEMBER, SessionState.OBSERVER,
                                       SessionState.CLOSED)

#: Frame or payload errors tolerated from one link before it is closed as hostile.
MAX_LINK_ERRORS = 3
#: Control messages (acks, joins, leave notices) per second from one bus sender, and its burst
#: (a sender acks at most every 256 KiB it reads, or every 50 ms).
BUS_CONTROL_RATE, BUS_CONTROL_BURST = 1000.0, 2000


class Session:
    """What the node knows about one link: its handshake, role and peer."""

    __slots__ = ("state", "handshake", "peer_id", "frames", "errors", "opened", "bucket", "timer")

    def __init__(self, handshake: Handshake | None, now: float, state: SessionState = SessionState.HANDSHAKE) -> None:
        self.state: SessionState = state
        self.handshake = handshake
        self.peer_id: str | None = None
        self.frames = 0  # frames received before authentication
        self.errors = 0
        self.opened = now
        self.bucket: TokenBucket | None = None
        self.timer: asyncio.TimerHandle | None = None


class Gate:
    """The receive side of one node.

    :param node_id: this node.
    :param dispatcher: where member events go (through the compiled sink).
    :param on_handshake: ``(link, kind, obj)`` for handshake messages.
    :param on_message: ``(link, sender, kind, obj)`` for admitted member messages.
    :param on_query: ``(link, query)`` for admitted queries.
    :param relay: ``(target, came_from, message) -> bool``.
    """

    def __init__(self, node_id: str, dispatcher: Any, *, on_handshake: Callable[..., None],
                 on_message: Callable[..., None], on_query: Callable[..., None], relay: Callable[..., bool],
                 rate_limit: float | None = None, rate_burst: int = 10_000,
                 resume: Callable[[Any], None] | None = None) -> None:
        self.node_id = node_id
        self._me = node_id.encode()
        self.dedupe = Dedupe()
        self.sink = EventSink(dispatcher, self._me, self.dedupe)
        self.on_handshake = on_handshake
        self.on_message = on_message
        self.on_query = on_query
        self.relay = relay
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.resume = resume or (lambda link: link.resume_reading())
        self.dispatcher = dispatcher
        self._errlog = RateLimitedLog(log)
        self.stats = {
            "frames_in": 0, "messages_in": 0, "bytes_in": 0, "duplicates": 0, "frame_errors": 0,
            "refused": 0, "preauth_refused": 0, "gate_errors": 0, "rate_limited": 0,
            # the same refusals by who went over: member links, bus senders, observers
            "rate_limited_members": 0, "rate_limited_bus": 0, "rate_limited_observers": 0,
            # messages carrying another node's ids or source (not from their origin)
            "impersonation_refused": 0,
        }
        #: ``node_id -> bool``: this node has a link of its own to that node (set by the node).
        self.is_linked: Callable[[str], bool] = lambda node_id: False
        #: Per sender on a shared bus (one link, many senders): its token bucket.
        self.bus_buckets: dict[str, TokenBucket] = {}
        #: Per sender on a shared bus: its control messages' bucket (``bus_payload``).
        self.bus_control_buckets: dict[str, TokenBucket] = {}

    # -- frames ----------------------------------------------------------------------

    def on_frame(self, link: Any, data: Any, sender: str | None = None) -> None:
        """One frame from ``link`` (for a bus, ``sender`` is the frame's authenticated
        sender).  Never raises: whatever goes wrong is counted and logged."""
        st = self.stats
        st["bytes_in"] += len(data)
        s = link.session
        try:
            if s.state == MEMBER:
                self._member_frame(link, s, data, sender or s.peer_id)
            else:
                self._guest_frame(link, s, data)
        except FrameError as exc:
            self.link_error(link, exc)
        except Exception as exc:  # a bug or hostile input must never take the link down
            st["gate_errors"] += 1
            self._errlog(("gate", type(exc).__name__), logging.ERROR, "error handling a message from %s: %r",
                         _name(link), exc, exc_info=True)

    def _guest_frame(self, link: Any, s: Session, data: Any) -> None:
        """A link that is not (yet) a member: only the handshake, or observer queries."""
        st = self.stats
        s.frames += 1
        if s.state == HANDSHAKE and (len(data) > MAX_PREAUTH_FRAME_SIZE or s.frames > MAX_PREAUTH_FRAMES):
            st["preauth_refused"] += 1
            link.close("too much data before the handshake completed")
            return
        msgs = decode_frame(data)
        st["frames_in"] += 1
        st["messages_in"] += len(msgs)
        for m in msgs:
            verdict = admit(s.state, m.kind, targeted_elsewhere=bool(m.target) and m.target != self._me)
            if verdict != ANSWER:
                st["refused"] += 1
                if s.state == HANDSHAKE:
                    st["preauth_refused"] += 1
                self.link_error(link, FrameError(f"message kind {m.kind} not allowed ({s.state})"))
                if s.state == HANDSHAKE:
                    link.close("message before the handshake completed")
                return
            obj = decode_payload(m.kind, m.payload)
            if s.state == HANDSHAKE:
                self.on_handshake(link, m.kind, obj)
                if link.session.state == CLOSED:
                    return
            else:
                self.on_query(link, obj)

    def _new_turn(self) -> None:
        self.sink.turn_deadline = 0.0

    def _member_frame(self, link: Any, s: Session, data: Any, sender: str | None) -> None:
        st = self.stats
        sink = self.sink
        deadline = sink.turn_deadline
        if not deadline:  # the first frame of this loop turn: handlers get TURN_BUDGET
            deadline = sink.turn_deadline = time.monotonic() + TURN_BUDGET
            try:
                asyncio.get_running_loop().call_soon(self._new_turn)
            except RuntimeError:  # no loop (a test feeding frames by hand): every frame is a turn
                sink.turn_deadline = 0.0
        rest = sink.receive(data, True, sender)
        if time.monotonic() > deadline:
            self.dispatcher.defer()  # plain handlers held the loop long enough: queue the rest
        n = sink.last_messages
        st["frames_in"] += 1
        st["messages_in"] += n
        if sink.duplicates:
            st["duplicates"] += sink.duplicates
            sink.duplicates = 0
        if sink.bad_events:
            bad, sink.bad_events = sink.bad_events, 0
            self.link_error(link, FrameError(f"{bad} malformed event payload(s)"))
        if sink.foreign:
            self._foreign(link, sender, sink.foreign)
            sink.foreign = 0
        if sink.relayed:
            self._relayed(link, sender, sink.relayed)
        bus = link.shared_bus
        me = self._me
        for m in rest:
            try:
                target = m.target
                if target and target != me:
                    if admit(MEMBER, m.kind, targeted_elsewhere=True, bus=bus) == RELAY:
                        if m.msg_id and not self.dedupe.first_time(m.msg_id):
                            st["duplicates"] += 1
                        else:
                            self.relay(target.decode(errors="replace"), link, m)
                    else:
                        st["refused"] += 1
                    continue
                obj = decode_payload(m.kind, m.payload)
                about = getattr(obj, "node_id", None) if m.kind in (schema.KIND_HEARTBEAT, schema.KIND_LEAVE) else None
                verdict = admit(MEMBER, m.kind, bus=bus, about=about, sender=sender)
                if verdict == DELIVER:
                    self.on_message(link, sender, m.kind, obj)
                elif verdict == ANSWER:
                    self.on_query(link, obj)
                else:
                    st["refused"] += 1
                    self._errlog(("refused", _name(link), m.kind), logging.WARNING,
                                 "refused message kind %s from %s", m.kind, _name(link))
            except FrameError as exc:
                self.link_error(link, exc)
            except Exception as exc:
                st["gate_errors"] += 1
                self._errlog(("gate", _name(link)), logging.ERROR, "error handling a message from %s: %r",
                             _name(link), exc, exc_info=True)
        if n and self.rate_limit is not None:
            if bus:
                self._bus_rate(link, sender, n)
            elif s.bucket is not None:
                wait = s.bucket.take(n, time.monotonic())
                if wait:
                    self.count_rate_limited("members")
                    link.pause_reading()
                    asyncio.get_running_loop().call_later(min(wait, 5.0), self._resume_if_member, link)

    def _foreign(self, link: Any, sender: str | None, n: int) -> None:
        """Messages that claimed another node's ids or source: refused and counted."""
        self.stats["impersonation_refused"] += n
        self.stats["refused"] += n
        self._errlog(("impersonation", _name(link)), logging.WARNING,
                     "refused %d message(s) from %s carrying another node's event ids or source", n,
                     sender or _name(link))

    def _relayed(self, link: Any, sender: str | None, msgs: list[Any]) -> None:
        """Messages for this node whose ids belong to another node than the link's: a
        neighbour relays them when their origin has no link to us.  Accepted only on a
        WebSocket link, only when the origin is not linked to us itself (it would have
        sent them itself) and, for events, only with the origin as their source."""
        owners = self.sink.owners
        is_linked = self.is_linked
        for m in msgs:
            owner = owners.get(bytes(m.msg_id[:12]), "")
            if link.shared_bus or not owner or is_linked(owner):
                self._foreign(link, sender, 1)
                continue
            try:
                obj = decode_payload(m.kind, m.payload)
                if m.kind == schema.KIND_EVENT and getattr(obj, "source_node", None) != owner:
                    self._foreign(link, sender, 1)
                    continue
                if not self.dedupe.first_time(bytes(m.msg_id)):
                    self.stats["duplicates"] += 1
                    continue
                if admit(MEMBER, m.kind, bus=False, sender=owner) == DELIVER:
                    self.on_message(link, owner, m.kind, obj)
                else:
                    self.stats["refused"] += 1
            except FrameError as exc:
                self.link_error(link, exc)

    def count_rate_limited(self, who: str) -> None:
        """One rate-limit refusal (``who``: members, bus or observers): counted in
        ``rate_limited`` (the metric ``spiralfast_rate_limited_total``) and by kind."""
        st = self.stats
        st["rate_limited"] += 1
        st["rate_limited_" + who] += 1

    def over_rate(self, link: Any, n: int = 1) -> bool:
        """An observer's write: True (counted) when it is over its rate limit."""
        s = getattr(link, "session", None)
        bucket = s.bucket if s is not None else None
        if bucket is None or not bucket.take(n, time.monotonic()):
            return False
        bucket.refund(n)  # a refused write costs nothing: the observer may retry once repaid
        self.count_rate_limited("observers")
        return True

    def _bus_rate(self, link: Any, sender: str | None, n: int) -> None:
        """A bus is one link for many senders, and its reading cannot be paused for one
        of them: a sender over its rate is slowed through the bus's own flow control
        instead (our acks of its frames are held back, so it waits for us)."""
        if sender is None or self.rate_limit is None:
            return
        now = time.monotonic()
        bucket = self.bus_buckets.get(sender)
        if bucket is None:
            if len(self.bus_buckets) >= MAX_BUS_RATE_SENDERS:
                del self.bus_buckets[next(iter(self.bus_buckets))]
            bucket = self.bus_buckets[sender] = TokenBucket(self.rate_limit, self.rate_burst, now)
        wait = bucket.take(n, now)
        if wait:
            self.count_rate_limited("bus")
            if isinstance(link, BusLink):
                link.hold_acks(sender, wait)

    def messages(self, link: Any, sender: str, msgs: list[tuple[int, Any]]) -> None:
        """Already-decoded messages from a bus (the old JSON format, via its codec)."""
        for kind, obj in msgs:
            try:
                about = getattr(obj, "node_id", None) if kind in (schema.KIND_HEARTBEAT, schema.KIND_LEAVE) else None
                if admit(link.session.state, kind, bus=True, about=about, sender=sender) != DELIVER:
                    self.stats["refused"] += 1
                    continue
                if kind == schema.KIND_EVENT and not self.dedupe.first_time(obj.event_id.encode()):
                    self.stats["duplicates"] += 1
                    continue
                self.on_message(link, sender, kind, obj)
            except Exception as exc:
                self.stats["gate_errors"] += 1
                self._errlog(("gate", _name(link)), logging.ERROR, "error handling a message from %s: %r",
                             _name(link), exc, exc_info=True)

    def link_error(self, link: Any, exc: Exception) -> None:
        self.stats["frame_errors"] += 1
        s = link.session
        s.errors += 1
        name = _name(link)
        # Members are few and named; outsiders are many: one key for all of them.
        key = ("frame", name) if s.state == MEMBER else ("frame", "guest", type(exc).__name__)
        self._errlog(key, logging.WARNING, "bad frame from %s: %s", name, str(exc)[:200])
        if s.errors >= MAX_LINK_ERRORS and not link.shared_bus:
            link.close(f"too many protocol errors ({exc})")

    def _resume_if_member(self, link: Any) -> None:
        if link.session.state == MEMBER:
            self.resume(link)

    def new_bucket(self) -> TokenBucket | None:
        if self.rate_limit is None:
            return None
        return TokenBucket(self.rate_limit, self.rate_burst, time.monotonic())

    # -- bus frames (links) -------------------------------------------------------------
    # Every sealed payload of a bus link (Redis, NATS) is opened here, never in the
    # transport: refusals counted (the gate's and the link's), control messages
    # rate-limited per sender, data frames delivered through ``on_frame`` (where the
    # sender's rate limit holds its acks back).  ``links.base.BusLink`` is the link's side.

    def bus_payload(self, link: BusLink, channel: str, data: bytes, control: bool = False) -> None:
        """A sealed payload off a bus: opened with the link's sealer; a data frame goes to
        ``link.bus_frame`` and, if it says so, ``on_frame``; a control message (acks, joins,
        leave notices) is decoded and handed to ``link.on_control``."""
        try:
            sender, offset, body = (link.control_sealer if control else link.sealer).open(channel.encode(), data)
        except (AuthError, FrameError) as exc:
            self._bus_refused(link, exc, "")
            return
        if control:
            self._bus_control(link, sender, body)
        elif link.bus_frame(channel, sender, offset, body):
            self.on_frame(link, body, sender)
            link.bus_delivered(sender, offset)

    def bus_replayed(self, link: BusLink, channel: str, data: bytes, opener: Opener, check: ReplayCheck) -> None:
        """A payload the bus kept (a catch-up), opened with the catch-up's ``opener``; the
        link's ``check`` refuses stale ones (counted) and delivers the rest."""
        try:
            sender, _, body = opener.open(channel.encode(), data)
        except (AuthError, FrameError) as exc:
            self._bus_refused(link, exc, "stream ")
            return
        if sender != link.node_id and not check(sender, body):
            self.stats["refused"] += 1

    def _bus_refused(self, link: BusLink, exc: Exception, what: str) -> None:
        self.stats["refused"] += 1
        link.stats["refused"] += 1
        self._errlog(("bus-refused", link.transport, type(exc).__name__), logging.WARNING,
                     "refused a %s %sframe: %s", link.transport, what, exc)

    def _bus_control(self, link: BusLink, sender: str, body: memoryview) -> None:
        if sender == link.node_id:
            return
        now = time.monotonic()
        buckets = self.bus_control_buckets
        bucket = buckets.get(sender)
        if bucket is None:
            if len(buckets) >= MAX_BUS_RATE_SENDERS:
                del buckets[next(iter(buckets))]
            bucket = buckets[sender] = TokenBucket(BUS_CONTROL_RATE, BUS_CONTROL_BURST, now)
        if bucket.take(1, now):
            bucket.tokens += 1  # a refused message costs nothing
            self.stats["refused"] += 1
            self.count_rate_limited("bus")
            return
        try:
            message = msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            self.stats["frame_errors"] += 1
            link.stats["bad"] += 1
            self._errlog(("bus-control", link.transport), logging.WARNING,
                         "ignoring a malformed %s control message from %s", link.transport, sender[:64])
            return
        link.on_control(sender, message)


def _name(link: Any) -> str:
    s = getattr(link, "session", None)
    if s is not None and s.peer_id:
        return str(s.peer_id)
    return str(getattr(link, "name", "?"))
