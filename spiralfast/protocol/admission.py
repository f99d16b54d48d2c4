"""Admission, sans-I/O: which inbound message a link may send, by its session state.

The gate (:mod:`spiralfast.node.gate`, the I/O half) asks :func:`admit` about every
message that does not take the compiled receive path, and acts on the :class:`Verdict`:
``DELIVER`` (to the dispatcher, membership or state sync), ``RELAY`` (to the target's
link), ``ANSWER`` (handshake, observer queries) or ``REFUSE`` (counted; repeat
offenders closed).  Nothing but the handshake passes before a link is authenticated.
The rules are the table in DESIGN-NOTES.md (see docs/architecture.md), and
tests/test_gate.py and tests/protocol/test_admission.py check them row by row.

:class:`TokenBucket` is the rate limit of one member link, one bus sender or one
observer; it takes the time as an argument (``now``), never reads a clock.

Both enums are ``StrEnum``: a state or verdict compares equal to its old string
(``SessionState.MEMBER == "member"``), which links and status views still show.
"""

from __future__ import annotations

from enum import StrEnum

from ..wire import schema

__all__ = [
    "HANDSHAKE_KINDS", "MEMBER_KINDS", "SessionState", "TokenBucket", "Verdict", "admit",
]


class SessionState(StrEnum):
    """Where a link stands: shaking hands, an authenticated member, an observer (the
    CLI, the dashboard), or closed."""

    HANDSHAKE = "handshake"
    MEMBER = "member"
    OBSERVER = "observer"
    CLOSED = "closed"


class Verdict(StrEnum):
    """What the gate does with one message."""

    DELIVER = "deliver"
    RELAY = "relay"
    ANSWER = "answer"
    REFUSE = "refuse"


#: The messages of the handshake (the only ones a link may send before it).
HANDSHAKE_KINDS = frozenset((schema.KIND_HELLO, schema.KIND_AUTH, schema.KIND_REJECT))
#: The messages a member may deliver (heartbeats and leaves only about itself).
MEMBER_KINDS = frozenset((
    schema.KIND_EVENT, schema.KIND_BUS_EVENT, schema.KIND_HEARTBEAT, schema.KIND_LEAVE, schema.KIND_GOSSIP,
    schema.KIND_STATE_DELTA, schema.KIND_STATE_DIGEST, schema.KIND_STATE_REQUEST,
    schema.KIND_REPAIR_REQUEST, schema.KIND_REPAIR_GONE, schema.KIND_CLOCK_SKEW,
    schema.KIND_ORIGIN_END, schema.KIND_PING, schema.KIND_PING_REQ, schema.KIND_ACK,
    schema.KIND_CATCHUP_REQUEST, schema.KIND_CATCHUP_BATCH,
))
_SELF_ONLY = frozenset((schema.KIND_HEARTBEAT, schema.KIND_LEAVE))


def admit(state: str, kind: int, *, targeted_elsewhere: bool = False, bus: bool = False,
          about: str | None = None, sender: str | None = None) -> Verdict:
    """The gate's rule table (DESIGN-NOTES.md), as one pure function.

    :param state: the session state of the link the message came on (a
        :class:`SessionState`, or its string value).
    :param kind: the message kind (``schema.KIND_*``).
    :param targeted_elsewhere: the message's header names another node.
    :param bus: the link is a shared bus (Redis, NATS): many senders, no handshake.
    :param about: the node a heartbeat or leave speaks for.
    :param sender: the authenticated node the message came from.
    """
    if state == SessionState.HANDSHAKE:
        return Verdict.ANSWER if kind in HANDSHAKE_KINDS and not targeted_elsewhere else Verdict.REFUSE
    if state == SessionState.OBSERVER:
        return Verdict.ANSWER if kind == schema.KIND_QUERY and not targeted_elsewhere else Verdict.REFUSE
    if state != SessionState.MEMBER:
        return Verdict.REFUSE
    if targeted_elsewhere:
        return Verdict.REFUSE if bus else Verdict.RELAY
    if kind in _SELF_ONLY:
        return Verdict.DELIVER if about is not None and about == sender else Verdict.REFUSE
    if kind in MEMBER_KINDS:
        return Verdict.DELIVER
    if kind == schema.KIND_QUERY:
        return Verdict.REFUSE if bus else Verdict.ANSWER
    return Verdict.REFUSE


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (full at ``now``)."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, float(burst), float(burst), now

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens at ``now``; returns 0.0, or the seconds until the debt is repaid."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - n
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self, n: int) -> None:
        """Give back ``n`` tokens taken for something that was then refused."""
        self.tokens += n
