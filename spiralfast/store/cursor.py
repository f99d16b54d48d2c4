"""The durable delivery cursor's rules (sans-I/O: no asyncio, no clock of its own).

Per broadcast origin (``<12 hex>s``; every broadcast id is ``<origin>-<seq>``) the
cursor keeps ``done``, the last sequence such that every sequence from the first one
seen up to it has been handed to the handlers, and ``ahead``, the sequences handed
above it out of order (a gap being repaired), at most :data:`MAX_AHEAD` of them: past
that the oldest hole is skipped (gap repair has counted it lost by then).  The event
log's writer thread feeds it the ids of each batch it commits and stores the rows it
changed in the same transaction (``delivery_cursor``), so the stored cursor is exact on
a clean stop and at most one batch interval behind after a kill -9.

:func:`is_redelivery` is the rule that marks catch-up events after an unclean stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

#: Out-of-order sequences kept above ``done`` per origin before the oldest hole is skipped.
MAX_AHEAD = 4096
#: Origins kept (the dedupe windows keep at most 4,096; the oldest-updated go first).
MAX_ORIGINS = 4096
#: The meta row's key in ``delivery_cursor``: ``done`` 1 after a clean stop, ``at`` the
#: wall time of the last write (the node was alive then).
META = ""


def parse_id(event_id: Any) -> tuple[str, int] | None:
    """``(origin, seq)`` of a broadcast id ``<origin>s-<seq>``, else None."""
    if not isinstance(event_id, str):
        return None
    origin, dash, seq = event_id.rpartition("-")
    if not dash or not origin.endswith("s") or not seq.isdigit() or len(seq) > 17:
        return None
    return origin, int(seq)


class Cursor:
    """Per-origin progress (see the module docstring).  ``skip``: origins never kept
    (this node's own, which it never receives)."""

    def __init__(self, skip: Iterable[str] = ()) -> None:
        self.done: dict[str, int] = {}
        self.ahead: dict[str, set[int]] = {}
        self.at: dict[str, float] = {}  # origin -> wall time it last moved (from the caller)
        self.dirty: set[str] = set()
        self.skip = set(skip)

    def note(self, event_id: Any, now: float) -> None:
        p = parse_id(event_id)
        if p is not None:
            self.note_seq(p[0], p[1], now)

    def note_seq(self, origin: str, seq: int, now: float) -> None:
        """Sequence ``seq`` of ``origin`` was handed to the handlers."""
        if origin in self.skip:
            return
        done = self.done.get(origin)
        if done is None:
            if len(self.done) >= MAX_ORIGINS:
                oldest = min(self.at, key=self.at.__getitem__)
                self.forget(oldest)
            self.done[origin] = seq  # counted from where we joined
        elif seq <= done:
            return
        elif seq == done + 1:
            done = seq
            ahead = self.ahead.get(origin)
            while ahead and done + 1 in ahead:
                done += 1
                ahead.discard(done)
            self.done[origin] = done
        else:
            ahead = self.ahead.setdefault(origin, set())
            ahead.add(seq)
            if len(ahead) > MAX_AHEAD:  # the oldest hole is lost: skip it
                done = min(ahead)
                ahead.discard(done)
                while done + 1 in ahead:
                    done += 1
                    ahead.discard(done)
                self.done[origin] = done
        self.at[origin] = now
        self.dirty.add(origin)

    def note_ids(self, ids: Iterable[Any], now: float) -> None:
        """Many event ids at once (a batch), in any order: grouped by origin and sorted,
        and a run that continues ``done`` without a hole moves it in one step."""
        by: dict[str, list[int]] = {}
        for eid in ids:
            if type(eid) is not str:
                continue
            origin, dash, seq = eid.rpartition("-")
            if dash and origin.endswith("s") and seq.isdigit() and len(seq) <= 17:
                got = by.get(origin)
                if got is None:
                    by[origin] = [int(seq)]
                else:
                    got.append(int(seq))
        for origin, seqs in by.items():
            seqs.sort()
            done = self.done.get(origin)
            if (done is not None and seqs[0] == done + 1 and seqs[-1] - seqs[0] + 1 == len(seqs)
                    and not self.ahead.get(origin) and origin not in self.skip):
                self.done[origin] = seqs[-1]  # the common case: the next run, in order, no hole
                self.at[origin] = now
                self.dirty.add(origin)
                continue
            for s in seqs:
                self.note_seq(origin, s, now)

    def forget(self, origin: str) -> None:
        self.done.pop(origin, None)
        self.ahead.pop(origin, None)
        self.at.pop(origin, None)
        self.dirty.discard(origin)

    def take(self) -> list[tuple[str, int, str, float]]:
        """The rows changed since the last ``take``: ``(origin, done, ahead json, at)``."""
        rows = [(o, self.done[o], json.dumps(sorted(self.ahead.get(o, ()))), self.at.get(o, 0.0))
                for o in self.dirty if o in self.done]
        self.dirty.clear()
        return rows

    def load(self, rows: Iterable[tuple[str, int, str, float]]) -> None:
        """Rows as stored (the meta row is skipped)."""
        for origin, done, ahead, at in rows:
            if origin == META or origin in self.skip:
                continue
            self.done[origin] = int(done)
            try:
                seqs = {int(s) for s in json.loads(ahead or "[]") if int(s) > int(done)}
            except (ValueError, TypeError):
                seqs = set()
            if seqs:
                self.ahead[origin] = seqs
            self.at[origin] = float(at)

    def wants(self) -> dict[str, int]:
        """What to ask for on return: ``{origin: sequences after this one}``."""
        return dict(self.done)

    def handled(self, origin: str, seq: int) -> bool:
        """Was ``seq`` of ``origin`` already handed to the handlers (by the cursor)?"""
        done = self.done.get(origin)
        return done is not None and (seq <= done or seq in self.ahead.get(origin, ()))


def is_redelivery(event_ts: float, clean: bool, alive_at: float, interval: float, margin: float) -> bool:
    """After an unclean stop (kill -9) the cursor may be up to one ``interval`` behind
    what the handlers had finished: an event the origin stamped before the node was last
    known alive (``alive_at``, written with every batch) plus that interval and a clock
    ``margin`` may have been handled before: it is marked ``redelivered``.  After a clean
    stop the cursor is exact: nothing is."""
    return not clean and event_ts <= alive_at + interval + margin
