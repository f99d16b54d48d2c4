"""Reliability of broadcasts, sans-I/O: gap repair, retransmit trimming, origin-end.

Every node numbers its broadcasts (``<origin>-<sequence>``, one gapless sequence per
origin).  Receivers keep, per origin, a window of the sequences seen (the compiled
``Dedupe`` of :mod:`spiralfast.wire.fastpath`; :class:`DedupeWindows` is the facade
these rules need of it) and so notice gaps.  The rules here decide, given the time
``now`` (monotonic seconds, passed in):

- **gap repair** (:meth:`Reliability.repair_tick`): after ``REPAIR_DELAY`` (a copy may
  be on a slower path), every ``REPAIR_INTERVAL``, at most ``REPAIR_ATTEMPTS`` times, ask
  the origin's node for what is missing (:class:`AskRepair`, at most
  ``MAX_REPAIR_SEQS`` sequences each, ``REPAIR_BATCH`` asks per round); an origin that
  never answers has its gap given up (counted lost);
- **answering a repair** (:func:`answer_repair`): resend what the retransmit buffer
  still holds, and name the rest gone;
- **retransmit trimming** (:class:`RetransmitTrimmer`): the buffer of what this node
  broadcast keeps at most ``retransmit_buffer_bytes`` and ``retransmit_window`` seconds;
- **origin-end** (:meth:`Reliability.origin_ended`, :meth:`Reliability.on_origin_end`):
  when a node is gone, the others are told the last sequence of its origin we saw, so a
  node that missed its final events sees the gap; a claim is taken only once that origin
  has been absent for the whole repair budget (a live node speaks for itself);
- **losses** (:meth:`Reliability.losses`): sequences given up since the last check.

The node's host (:mod:`spiralfast.node.host`) carries out the effects (sending,
logging, alerts).  Nothing here reads a clock or touches a socket.  The receive hot
path stays compiled: these rules run once per sweep tick, never per event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "MAX_ORIGIN_NAMES", "MAX_REPAIR_SEQS", "REPAIR_ATTEMPTS", "REPAIR_BATCH", "REPAIR_DELAY", "REPAIR_INTERVAL",
    "AnnounceEnd", "AskRepair", "DedupeWindows", "LossReport", "Member", "Reliability", "RepairAnswer", "RetransmitBuffer",
    "RetransmitTrimmer", "SeqWindow", "answer_repair",
]

#: Gap repair: wait this long before asking (a copy may be on a slower path), ask at most
#: this often, this many times, for at most this many sequences at once.
REPAIR_DELAY = 0.5
REPAIR_INTERVAL = 1.0
REPAIR_ATTEMPTS = 5
MAX_REPAIR_SEQS = 4096
#: Requests (of MAX_REPAIR_SEQS each) sent to one origin per round: a long gap (a peer
#: paused for seconds) is repaired while the origin still holds it.
REPAIR_BATCH = 16
#: Origins whose node names are remembered (the dedupe windows keep at most 4,096 origins).
MAX_ORIGIN_NAMES = 8192


class SeqWindow(Protocol):
    """The sequences seen from one origin (a window of the compiled ``Dedupe``)."""

    @property
    def high(self) -> int: ...

    @property
    def missing(self) -> int: ...

    def missing_seqs(self, limit: int) -> list[int]: ...

    def give_up(self, seqs: list[int]) -> None: ...

    def expect(self, seq: int) -> None: ...


class DedupeWindows(Protocol):
    """What the rules need of the de-duplication windows (``fastpath.Dedupe``)."""

    def first_time(self, msg_id: bytes) -> bool: ...

    def gaps(self) -> dict[str, int]: ...

    def lost(self) -> dict[str, int]: ...

    def window(self, origin: str) -> Any: ...  # a SeqWindow, or None (compiled: untyped)


class Member(Protocol):
    """A node record as the rules read it (``records.MeshNode``): its metadata names its origin."""

    @property
    def metadata(self) -> dict[str, Any]: ...


class RetransmitBuffer(Protocol):
    """This node's broadcasts kept for repair (``fastpath.EventSender``): ``retx`` holds
    the encoded events from sequence ``retx_base`` on, ``retx_bytes`` their size."""

    retx: deque[bytes]
    retx_base: int
    retx_bytes: int


@dataclass(frozen=True, slots=True)
class AskRepair:
    """Send ``RepairRequest(origin, seqs)`` to ``node_id``."""

    node_id: str
    origin: str
    seqs: list[int]


@dataclass(frozen=True, slots=True)
class AnnounceEnd:
    """Broadcast ``OriginEnd(origin, high)``: the last sequence of a gone node's origin we saw."""

    origin: str
    high: int


@dataclass(frozen=True, slots=True)
class LossReport:
    """``new`` sequences of ``origin`` were given up since the last report (``total`` in all)."""

    origin: str
    new: int
    total: int


@dataclass(frozen=True, slots=True)
class RepairAnswer:
    """The answer to a repair request: sequences to resend (the buffer holds them) and
    sequences gone (no longer held)."""

    resend: list[int]
    gone: list[int]


class _Repair:
    """One origin's repair: first noticed, last asked, unanswered asks, missing when last asked."""

    __slots__ = ("first", "asked", "attempts", "missing")

    def __init__(self, first: float, asked: float = 0.0, attempts: int = 0, missing: int = 0) -> None:
        self.first, self.asked, self.attempts, self.missing = first, asked, attempts, missing


class _EndClaim:
    """A peer's claim of the last sequence of a gone origin, and when to take it."""

    __slots__ = ("high", "at")

    def __init__(self, high: int, at: float) -> None:
        self.high, self.at = high, at


def answer_repair(seqs: Iterable[int], sent: int, base: int, held: int) -> RepairAnswer:
    """Which of ``seqs`` (asked by a peer) to resend from the retransmit buffer, which
    are gone.  ``sent``: our last broadcast sequence; ``base``: the sequence of the
    buffer's first event; ``held``: events in the buffer.  A sequence not sent yet is
    neither (a peer told a wrong end of our sequence)."""
    resend: list[int] = []
    gone: list[int] = []
    for n, seq in enumerate(seqs):
        if n >= MAX_REPAIR_SEQS:
            break
        if seq > sent:
            continue
        (resend if 0 <= seq - base < held else gone).append(seq)
    return RepairAnswer(resend, gone)


class RetransmitTrimmer:
    """Keeps the retransmit buffer within ``max_bytes`` and ``window`` seconds, oldest
    first.  Ages come from marks (time, next sequence) taken at each tick."""

    __slots__ = ("marks",)

    def __init__(self) -> None:
        self.marks: deque[tuple[float, int]] = deque()

    def trim(self, buf: RetransmitBuffer, now: float, window: float, max_bytes: int) -> int:
        """Trim ``buf`` at ``now``; returns the number of events dropped."""
        retx, marks = buf.retx, self.marks
        dropped = 0
        marks.append((now, buf.retx_base + len(retx)))
        while marks and now - marks[0][0] > window:
            upto = marks.popleft()[1]  # everything sent before this mark is too old
            while retx and buf.retx_base < upto:
                buf.retx_bytes -= len(retx.popleft())
                buf.retx_base += 1
                dropped += 1
        while retx and buf.retx_bytes > max_bytes:
            buf.retx_bytes -= len(retx.popleft())
            buf.retx_base += 1
            dropped += 1
        return dropped


class Reliability:
    """Gap repair, origin-end and loss reports of one node, over its dedupe windows.

    :param dedupe: the node's de-duplication windows (the compiled ``Dedupe``).
    :param own_origin: this node's broadcast origin (claims about it are ignored).
    """

    def __init__(self, dedupe: DedupeWindows, own_origin: str | None = None) -> None:
        self.dedupe = dedupe
        self.own_origin = own_origin
        #: origin -> its repair in progress
        self.repairs: dict[str, _Repair] = {}
        #: origin -> the claim of its last sequence (``OriginEnd``), taken at ``at``
        self.origin_ends: dict[str, _EndClaim] = {}
        #: Broadcast origin -> the node (one per incarnation) it belongs to, for operators.
        self.origin_names: dict[str, str] = {}
        #: Lost sequences per origin reported so far.
        self.reported: dict[str, int] = {}

    # -- origins -------------------------------------------------------------------

    def origin_joined(self, origin: str, node_id: str) -> None:
        """``node_id`` broadcasts as ``origin`` (remembered, bounded, for operators and origin-end)."""
        names = self.origin_names
        names[origin] = node_id
        while len(names) > MAX_ORIGIN_NAMES:
            del names[next(iter(names))]

    def origin_ended(self, node_id: str) -> list[AnnounceEnd]:
        """``node_id`` is gone: what to tell the others of its origins (the last sequence
        of each we saw).  Its final events may have reached some of us and not others;
        a node that never saw those sequences would otherwise never know they existed."""
        out: list[AnnounceEnd] = []
        for origin, owner in list(self.origin_names.items()):
            if owner != node_id:
                continue
            w = self.dedupe.window(origin)
            if w is not None and w.high > 0:
                out.append(AnnounceEnd(origin, w.high))
        return out

    def on_origin_end(self, origin: str, high: int, now: float) -> bool:
        """A peer says ``origin``'s node is gone and ``high`` was its last sequence.  Kept
        as a claim, taken only once the origin has been absent here for the whole repair
        budget (REPAIR_ATTEMPTS intervals).  False: ignored (about us)."""
        if origin == self.own_origin:
            return False  # about us: we are alive
        claim = self.origin_ends.get(origin)
        if claim is None:
            self.origin_ends[origin] = _EndClaim(high, now + REPAIR_INTERVAL * REPAIR_ATTEMPTS)
            while len(self.origin_ends) > MAX_ORIGIN_NAMES:
                del self.origin_ends[next(iter(self.origin_ends))]
        elif high > claim.high:
            claim.high = high
        return True

    def apply_origin_ends(self, now: float, member_origins: Container[Any]) -> None:
        """Claims whose time has come: an origin still absent (not in ``member_origins``)
        gets its tail expected and, as it has had its repair budget, given up at the next
        tick; a member's origin speaks for itself (the claim is dropped)."""
        if not self.origin_ends:
            return
        for origin, claim in list(self.origin_ends.items()):
            if origin in member_origins:
                del self.origin_ends[origin]  # alive (or back): its own sequence speaks for it
            elif now >= claim.at:
                del self.origin_ends[origin]
                w = self.dedupe.window(origin)
                if w is not None and claim.high > w.high:
                    w.expect(min(claim.high, w.high + MAX_REPAIR_SEQS * REPAIR_BATCH))
                    self.repairs[origin] = _Repair(now - REPAIR_DELAY, 0.0, REPAIR_ATTEMPTS, w.missing)

    def expect_upto(self, sender: str | None, records: Iterable[Any]) -> None:
        """Gossip over a link comes after every broadcast its sender made before it (one
        ordered stream): what we have not seen of its sequence up to there is missing."""
        for rec in records:
            if isinstance(rec, dict) and rec.get("node_id") == sender:
                md = rec.get("metadata")
                if isinstance(md, dict) and isinstance(md.get("origin"), str) and type(md.get("seq")) is int:
                    w = self.dedupe.window(md["origin"])
                    if w is not None:
                        w.expect(md["seq"])
                return

    def on_repair_gone(self, origin: str, seqs: Iterable[int]) -> None:
        """The origin no longer holds ``seqs``: they are lost."""
        w = self.dedupe.window(origin)
        if w is not None:
            w.give_up(list(seqs))

    # -- gap repair ----------------------------------------------------------------

    def repair_tick(self, now: float, members: Mapping[str, Member], me: str,
                    busy: Container[str] = ()) -> list[AskRepair]:
        """Ask each origin for the sequences we are missing from it (after REPAIR_DELAY,
        every REPAIR_INTERVAL, REPAIR_ATTEMPTS times); give up on an origin that is gone.

        :param members: the node table (node id -> record with ``metadata["origin"]``).
        :param me: this node's id (never asked).
        :param busy: origins being caught up from event logs: not asked here.
        """
        if self.origin_ends:
            self.apply_origin_ends(now, {n.metadata.get("origin") for n in members.values()})
        gaps = self.dedupe.gaps()
        if not gaps and not self.repairs:
            return []
        for origin in [o for o in self.repairs if o not in gaps]:
            del self.repairs[origin]
        origins = {n.metadata.get("origin"): nid for nid, n in members.items() if nid != me}
        asks: list[AskRepair] = []
        for origin in gaps:
            if origin in busy:
                continue
            st = self.repairs.get(origin)
            if st is None:
                st = self.repairs[origin] = _Repair(now)
            if now - st.first < REPAIR_DELAY or now - st.asked < REPAIR_INTERVAL:
                continue
            w = self.dedupe.window(origin)
            if w is None:
                continue
            if w.missing < st.missing:
                st.attempts = 0  # the last ask was answered (in part at least): not a silent origin
            seqs = w.missing_seqs(MAX_REPAIR_SEQS * REPAIR_BATCH)
            if st.attempts >= REPAIR_ATTEMPTS:
                w.give_up(seqs)  # the origin does not answer, or stayed gone
                continue
            st.asked, st.attempts, st.missing = now, st.attempts + 1, w.missing
            nid = origins.get(origin)
            if nid is None:  # not a member now; after a bus outage it is back within a heartbeat or two
                continue
            for i in range(0, len(seqs), MAX_REPAIR_SEQS):
                asks.append(AskRepair(nid, origin, seqs[i:i + MAX_REPAIR_SEQS]))
        return asks

    def losses(self) -> list[LossReport]:
        """Sequences given up (not repairable) since the last call, per origin."""
        lost = self.dedupe.lost()
        out = [LossReport(origin, total - self.reported.get(origin, 0), total)
               for origin, total in lost.items() if total > self.reported.get(origin, 0)]
        self.reported = lost
        return out
