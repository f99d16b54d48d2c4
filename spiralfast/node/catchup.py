"""Catch-up across restarts: the asyncio side (the rules are in ``store/cursor.py``).

A node whose event log holds a delivery cursor (``delivery_cursor``, written with the
log's batches) asks, when it starts, the live peers for what it missed per origin
since the cursor.  A peer persisting all events (``persist_events="all"``) answers from
its event log, one byte-bounded :class:`schema.CatchUpBatch` per
:class:`schema.CatchUpRequest` (the asker sends the next request when an answer has
arrived: that is the pacing), over whatever link reaches the asker (WebSocket, Redis,
NATS: both kinds are member-only in the gate and range-checked at decode time).

The interleaving rule: while catching up, the node's handler queue is held, so live
events (and membership announcements) received meanwhile wait in order behind the
missed ones; missed events reach the handlers first, in each origin's order, with
``"replayed": True`` in the envelope (``"redelivered": True`` too when, after an
unclean stop, they may have been handled before: see ``cursor.is_redelivery``).  Gap
repair leaves origins being caught up alone; what is still missing afterwards is asked
of the origin as any gap is, and what nobody holds is counted lost and announced as a
``system_alert``.  Should the held queue fill up (reading from the links pauses), the
hold is let go and the rest of the catch-up interleaves with live events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..links.base import StreamCatchUp
from ..store.cursor import META, is_redelivery, parse_id
from ..wire import schema
from ..wire.fastpath import iso_from_epoch

if TYPE_CHECKING:
    from ..ports.node import CatchUpNode

log = logging.getLogger("spiralfast.node.catchup")

#: Bytes asked for per answer over a WebSocket link (the answering node caps it at
#: ``schema.MAX_CATCHUP_BYTES``), and over a bus (NATS refuses payloads over 1 MiB by default).
REQUEST_BYTES = schema.MAX_CATCHUP_BYTES
REQUEST_BYTES_BUS = 256 * 1024
#: Seconds to wait for one answer before asking the next peer.
ANSWER_TIMEOUT = 10.0
#: Seconds to wait, after start, for a first peer to ask.
PEER_WAIT = 5.0
#: Read the peer's log from this long before the cursor's time (clocks, slow paths).
SINCE_MARGIN = 10.0
#: Sequences below the cursor marked seen per recent origin when JetStream replays by time
#: (the de-duplication window's bitmap holds 65,536).
SEED_DEPTH = 65_535
#: Clock slack of the redelivery mark (cursor.is_redelivery), seconds.
REDELIVERY_MARGIN = 1.0
#: Event-log batches one answer reads at most (the answer says "more" past it).
MAX_BATCHES_READ = 64
#: Catch-up answers being read from the log at once, over all askers.
MAX_ANSWERING = 2
#: An answer waits while the link holds more than this many unsent bytes.
PACE_BYTES = 4 * 1024 * 1024
_KEY_SHIFT = 15  # key = (batch_id << 15) | index in the batch (a batch holds at most 10,000 events)

_encode = msgspec.msgpack.Encoder().encode
#: A stored batch: wire-form arrays (events) or envelope objects (membership, old rows).
_decode_stored = msgspec.json.Decoder(list[schema.Event | dict[str, Any]]).decode


class CatchUp:
    """One node's catch-up: asking on start (:meth:`prepare`, :meth:`begin`) and
    answering others (:meth:`on_request`)."""

    def __init__(self, node: CatchUpNode) -> None:
        self.node = node
        self.busy: set[str] = set()  # origins being caught up: gap repair leaves them alone
        self.clean = True
        self.alive_at = 0.0
        self.since = 0.0
        self.wants: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.hold: asyncio.Future[None] | None = None
        self.waiting: dict[int, asyncio.Future[schema.CatchUpBatch]] = {}
        self.rid = 0
        self.answering = 0
        self.stats = {"replayed": 0, "redelivered": 0, "requests": 0, "answers_sent": 0, "answered_events": 0,
                      "duplicates": 0, "done": 0, "stream": 0}
        self.started_at = 0.0
        self.finished_at = 0.0

    # -- the returning node -------------------------------------------------------

    def prepare(self) -> None:
        """Before the links start: load the cursor, seed the de-duplication windows
        from it (what was handled is never delivered again) and hold the handler queue."""
        node, el = self.node, self.node.eventlog
        if el is None or not node.config.catch_up:
            return
        try:
            rows = el.store.read_cursor()
        except Exception as exc:  # noqa: BLE001 - a damaged cursor: run on without catch-up
            log.warning("catch-up: cannot read the delivery cursor (%s); live traffic only", exc)
            return
        meta = [r for r in rows if r[0] == META]
        rows = [r for r in rows if r[0] != META]
        if not rows:
            return  # a fresh node: no history
        self.clean = bool(meta and meta[0][1])
        self.alive_at = float(meta[0][3]) if meta else max(float(r[3]) for r in rows)
        rows.sort(key=lambda r: float(r[3]))
        rows = rows[-schema.MAX_CATCHUP_ORIGINS:]  # the origins heard from last
        cur = el.cursor
        cur.load(rows)
        dedupe = node.gate.dedupe
        # What was sent while the node was down is stamped after it was last alive.
        self.since = max(0.0, self.alive_at - SINCE_MARGIN)
        cfg = node.config
        stream = bool(cfg.nats_stream and cfg.nats_url and cfg.enable_nats)
        for origin, done in cur.done.items():
            first = done
            if stream and cur.at.get(origin, 0.0) >= self.since - SINCE_MARGIN:
                # The stream replays by time, handled sequences included: the window
                # must know them all (peers' logs filter by sequence themselves).
                first = max(1, done - SEED_DEPTH)
            for seq in range(first, done + 1):
                dedupe.first_time(f"{origin}-{seq}".encode())
            for seq in sorted(cur.ahead.get(origin, ())):
                dedupe.first_time(f"{origin}-{seq}".encode())
        self.wants = cur.wants()
        self.busy = set(self.wants)
        self.started_at = time.monotonic()
        # The handler task runs this barrier first and waits in it: whatever arrives
        # meanwhile queues behind it, in order (the dispatcher keeps its queue non-empty
        # while a queued handler is awaited).
        self.hold = hold = asyncio.get_running_loop().create_future()

        async def barrier(_env: Any) -> None:
            await asyncio.shield(hold)

        node.dispatcher.queue({"type": "_sf.catchup", _rest_key(): [barrier]})
        log.info("catch-up: %d origin(s) to catch up since the cursor (%s stop)", len(self.wants),
                 "clean" if self.clean else "unclean")

    def begin(self) -> None:
        if self.wants and self.task is None:
            self.task = asyncio.ensure_future(self._run())

    def release(self) -> None:
        h, self.hold = self.hold, None
        if h is not None and not h.done():
            h.set_result(None)
        self.busy.clear()

    async def stop(self) -> None:
        t, self.task = self.task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.release()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        out["catching_up"] = bool(self.busy)
        if self.finished_at:
            out["seconds"] = round(self.finished_at - self.started_at, 3)
        return out

    async def _run(self) -> None:
        try:
            await self._catch_up()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("catch-up failed; live traffic only from here")
        finally:
            self.finished_at = time.monotonic()
            self.stats["done"] = 1
            self.release()

    def _peers(self) -> list[str]:
        node = self.node
        linked = sorted(node.outbox.links)
        rest = sorted(n for n in node.nodes if n != node.node_id and n not in node.outbox.links)
        return linked + rest

    async def _catch_up(self) -> None:
        deadline = time.monotonic() + PEER_WAIT
        nats = self.node.nats
        if isinstance(nats, StreamCatchUp) and nats.stream_on:
            # JetStream first: what the stream holds since the node was last alive comes
            # through the receive path (the seeded windows drop what was handled), queued
            # behind the barrier in stream order; peers' logs are asked for what is left.
            while not nats.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await nats.stream_catch_up(self.since)
            self.stats["stream"] = 1
        while not self._peers() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        asked: set[str] = set()
        for _ in range(8):  # peers asked, in turn, while something is missing
            peers = [p for p in self._peers() if p not in asked]
            if not peers or not self._missing():
                break
            peer = peers[0]
            asked.add(peer)
            await self._ask(peer)
        log.info("catch-up: %d event(s) replayed (%d marked redelivered) in %.2f s", self.stats["replayed"],
                 self.stats["redelivered"], time.monotonic() - self.started_at)

    def _missing(self) -> bool:
        """Something of the origins caught up may still be missing (a gap, or the end
        not known yet: the origin may have sent more)."""
        dedupe = self.node.gate.dedupe
        for origin in self.wants:
            w = dedupe.window(origin)
            if w is None or w.missing or w.high <= self.wants[origin]:
                return True
        return False

    def _request(self, peer: str, key: int) -> asyncio.Future[schema.CatchUpBatch] | None:
        """Send one request to ``peer``; the future of its answer (None: no route)."""
        self.rid += 1
        rid = self.rid
        fut: asyncio.Future[schema.CatchUpBatch] = asyncio.get_running_loop().create_future()
        budget = REQUEST_BYTES if peer in self.node.outbox.links else REQUEST_BYTES_BUS
        self.stats["requests"] += 1
        if not self.node.outbox.send(peer, schema.KIND_CATCHUP_REQUEST, 0, b"",
                                     schema.CatchUpRequest(self.wants, self.since, budget, key, rid)):
            return None
        self.waiting[rid] = fut
        fut.add_done_callback(lambda _f: self.waiting.pop(rid, None))
        return fut

    async def _ask(self, peer: str) -> None:
        """Ask ``peer`` until its log has nothing more.  The next request goes out as
        an answer arrives, before that answer's events are handed over (one request
        ahead at most: reading the log there overlaps delivering here)."""
        fut = self._request(peer, 0)
        while fut is not None and self.node.running:
            try:
                ans = await asyncio.wait_for(fut, ANSWER_TIMEOUT)
            except TimeoutError:
                log.info("catch-up: %s did not answer in %.0f s", peer, ANSWER_TIMEOUT)
                return
            if not ans.holds:
                return
            fut = self._request(peer, ans.key) if ans.more else None
            await self._deliver(ans.events)

    async def _deliver(self, events: list[schema.Event]) -> None:
        node = self.node
        d = node.dispatcher
        first_time = node.gate.dedupe.first_time
        el = node.eventlog
        for i, ev in enumerate(events):
            if i & 255 == 255:
                await asyncio.sleep(0)  # live frames are read (and held) meanwhile
                if self.hold is not None and d.reading_paused:
                    log.info("catch-up: the held queue is full; live events interleave from here")
                    h, self.hold = self.hold, None
                    if not h.done():
                        h.set_result(None)
            if parse_id(ev.event_id) is None or ev.source_node == node.node_id:
                continue
            if not first_time(ev.event_id.encode()):
                self.stats["duplicates"] += 1
                continue
            self.stats["replayed"] += 1
            if el is not None:
                el.record_event(ev)
            env: dict[str, Any] = {"type": ev.event_type, "source_node": ev.source_node,
                                   "timestamp": iso_from_epoch(ev.timestamp),
                                   "data": ev.data, "event_id": ev.event_id, "replayed": True}
            if ev.target_node is not None:
                env["target_node"] = ev.target_node
            if is_redelivery(ev.timestamp, self.clean, self.alive_at, _flush_interval(), REDELIVERY_MARGIN):
                env["redelivered"] = True
                self.stats["redelivered"] += 1
            for fn in list(d.handlers.get(ev.event_type, ())):
                try:
                    r = fn(env)
                    if r is not None and hasattr(r, "__await__"):
                        await r
                except asyncio.CancelledError:
                    raise
                except Exception:
                    d.handler_failed(fn, env)

    def on_batch(self, sender: str | None, m: schema.CatchUpBatch) -> None:
        fut = self.waiting.get(m.rid)
        if fut is not None and not fut.done():
            fut.set_result(m)

    # -- a peer answering ----------------------------------------------------------

    def on_request(self, link: Any, sender: str | None, m: schema.CatchUpRequest) -> None:
        node = self.node
        if sender is None or sender == node.node_id:
            return
        el = node.eventlog
        store = getattr(el, "store", None) if el is not None else None
        if el is None or not el._all or not hasattr(store, "_batches"):
            node.outbox.send(sender, schema.KIND_CATCHUP_BATCH, 0, b"", schema.CatchUpBatch(m.rid, [], holds=False))
            return
        if self.answering >= MAX_ANSWERING or (link is not None and link.shared_bus and sender not in node.nodes):
            return  # the asker times out and asks another peer
        self.answering += 1
        asyncio.ensure_future(self._answer(link, sender, m))

    async def _answer(self, link: Any, sender: str, m: schema.CatchUpRequest) -> None:
        node = self.node
        try:
            el = node.eventlog
            loop = asyncio.get_running_loop()
            events, key, more = await loop.run_in_executor(el._pool(), read_missed, el.store, m, sender)
            while (link is not None and not getattr(link, "shared_bus", False)
                   and (getattr(link, "outbox_bytes", 0) > PACE_BYTES or getattr(link, "paused", False))):
                if getattr(link, "closed", False) or not node.running:
                    return
                await asyncio.sleep(0.005)
            node.outbox.send(sender, schema.KIND_CATCHUP_BATCH, 0, b"", schema.CatchUpBatch(m.rid, events, key, more))
            self.stats["answers_sent"] += 1
            self.stats["answered_events"] += len(events)
        except Exception:
            log.exception("catch-up answer to %s failed", sender)
        finally:
            self.answering -= 1


def _rest_key() -> Any:
    from .dispatch import _REST

    return _REST


def _flush_interval() -> float:
    from ..store.eventlog import BATCH_MAX_AGE_S

    return BATCH_MAX_AGE_S


def _stored_event(item: Any) -> schema.Event | None:
    """A stored batch element (wire-form array, or envelope object) as a wire event."""
    try:
        if isinstance(item, schema.Event):
            return item
        if isinstance(item, list):
            return msgspec.convert(item, schema.Event)
        if isinstance(item, dict) and isinstance(item.get("event_id"), str):
            ts = datetime.fromisoformat(str(item["timestamp"])).timestamp()
            return schema.Event(item["event_id"], str(item["type"]), str(item.get("source_node")), ts,
                                item.get("data"), item.get("target_node"))
    except (msgspec.ValidationError, ValueError, TypeError, KeyError):
        return None
    return None


def read_missed(store: Any, m: schema.CatchUpRequest, asker: str) -> tuple[list[schema.Event], int, bool]:
    """On a worker thread: the events of ``m.origins`` after their sequences (and of
    origins the asker did not know), from ``m.since``, in log order, starting at
    ``m.key``, up to ``m.max_bytes`` (at least one event).  Returns ``(events, the next
    key, more after it)``."""
    budget = min(m.max_bytes, schema.MAX_CATCHUP_BYTES)
    origins = m.origins
    bid, skip = m.key >> _KEY_SHIFT, m.key & ((1 << _KEY_SHIFT) - 1)
    since = iso_from_epoch(m.since)
    out: list[schema.Event] = []
    used = 0
    after = bid - 1 if bid > 0 else None
    reads = 0
    while reads < MAX_BATCHES_READ:
        got = store._batches(since, None, None, None, True, after, 8)
        if not got:
            return out, 0, False
        for b, _, events in got:
            reads += 1
            try:
                items: list[Any] = _decode_stored(events)
            except (msgspec.ValidationError, msgspec.DecodeError):  # an odd row: element by element
                items = [_stored_event(x) for x in msgspec.json.decode(events)]
            each = len(events) // max(1, len(items)) + 8  # bytes per event, about (JSON ~ msgpack)
            start = skip if b == bid else 0
            for i in range(start, len(items)):
                item = items[i]
                if item is None:
                    continue
                ev = item if type(item) is schema.Event else _stored_event(item)
                if ev is None:
                    continue
                p = parse_id(ev.event_id)
                if p is None:
                    continue
                have = origins.get(p[0])
                if (have is not None and p[1] <= have) or ev.source_node == asker or ev.event_type.startswith("_sf."):
                    continue
                size = each
                if out and used + size > budget:
                    return out, (b << _KEY_SHIFT) | i, True
                out.append(ev)
                used += size
            after = b
            if reads >= MAX_BATCHES_READ:
                return out, (b + 1) << _KEY_SHIFT, True
    return out, ((after or 0) + 1) << _KEY_SHIFT, True
