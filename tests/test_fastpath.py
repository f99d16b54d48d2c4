"""The receive fast path: ISO formatting, and EventSink compiled vs pure twin."""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralfast.errors import FrameError
from spiralfast.node.dispatch import Dispatcher
from spiralfast.wire import _codec_py, _fastpath_py, schema
from spiralfast.wire.fastpath import iso_from_epoch
from spiralfast.wire.ring import Ring

from .twins import Twins, twins_fixture  # noqa: F401 - the fixture ``twins``

#: The compiled receive/send path and its twin, through the one fixture (tests/twins.py).
FASTPATH = pytest.mark.parametrize("twins", ["fastpath"], indirect=True)


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_matches_datetime_isoformat(ts: float) -> None:
    assert iso_from_epoch(ts) == datetime.fromtimestamp(ts).isoformat()


def test_now_and_whole_seconds() -> None:
    now = time.time()
    assert iso_from_epoch(now) == datetime.fromtimestamp(now).isoformat()
    assert iso_from_epoch(1700000000.0) == datetime.fromtimestamp(1700000000.0).isoformat()


# -- EventSink: compiled and pure twins behave identically ------------------------------



class FakeDispatcher(Dispatcher):
    """The real dispatcher, recording what the sink asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.recent: deque[Any] = deque(maxlen=10)  # type: ignore[assignment]
        self.inbox = Ring(16)
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.queued: list[dict[str, Any]] = []
        self.failed = 0

    def push_observers(self, ev: Any) -> None:
        pass

    def queue(self, env: dict[str, Any]) -> None:
        self.queued.append(env)

    def handler_failed(self, h: Any, env: dict[str, Any]) -> None:
        self.failed += 1

    def spawn(self, aw: Any) -> None:
        aw.close()


def _frame(msgs: list[tuple[int, bytes, bytes, Any]]) -> bytes:
    w = _codec_py.FrameWriter()
    for kind, target, mid, obj in msgs:
        if isinstance(obj, bytes):
            w.add_raw(kind, 7, target, mid, obj)
        else:
            w.add(kind, 7, target, mid, obj)
    return w.finish()


def _run(impl: Any, frames: list[bytes], member: bool = True) -> Any:
    core = FakeDispatcher()
    core.handlers["a"] = [lambda env: core.got.append(("h1", env))]

    async def ah(env: dict[str, Any]) -> None:
        core.got.append(("async", env))

    core.handlers["b"] = [ah]
    core.handlers["c"] = [lambda env: 1 / 0, lambda env: core.got.append(("h2", env))]
    sink = impl.EventSink(core, b"me", impl.Dedupe(8))
    out = []
    for f in frames:
        try:
            rest = sink.receive(f, member)
            out.append([m.as_tuple() for m in rest])
        except FrameError:
            out.append("FrameError")
    return out, core.got, core.queued, core.failed, sink.duplicates, sink.bad_events, sink.events_in


def _ev(i: int, etype: str, target: str | None = None) -> schema.Event:
    return schema.Event(f"id{i}", etype, "src", 1700000000.25 + i, {"i": i}, target)


@FASTPATH
def test_sink_twins_identical_on_mixed_frames(twins: Twins) -> None:
    frames = [
        _frame([(schema.KIND_EVENT, b"", b"id1", _ev(1, "a")), (schema.KIND_EVENT, b"", b"id2", _ev(2, "b")),
                (schema.KIND_EVENT, b"", b"id3", _ev(3, "c")), (schema.KIND_EVENT, b"", b"id1", _ev(1, "a")),
                (schema.KIND_HEARTBEAT, b"", b"", schema.Heartbeat("x", "active", 0, 0.0, 1.0)),
                (schema.KIND_EVENT, b"other", b"id9", _ev(9, "a")),
                (schema.KIND_EVENT, b"me", b"id4", _ev(4, "a", "me")),
                (schema.KIND_EVENT, b"", b"id5", b"\xc1junk"),
                (schema.KIND_EVENT, b"", b"id6", _ev(6, "nohandler"))]),
        b"\x01\x05\x00",
        b"\x02\x00\x00",
    ]
    results = [_run(impl, frames) for impl in twins.both]
    assert all(r == results[0] for r in results)
    rest, got, queued, failed, dups, bad, events_in = results[0]
    assert [g[0] for g in got] == ["h1", "async", "h2", "h1"] and failed == 1 and dups == 1 and bad == 1
    assert queued == []  # an async handler that does not suspend runs eagerly: no queue hop
    assert events_in == 5 and rest[1:] == ["FrameError", "FrameError"]
    assert [t[0] for t in rest[0]] == [schema.KIND_HEARTBEAT, schema.KIND_EVENT]  # heartbeat + forward
    assert got[3][1]["target_node"] == "me"
    assert got[0][1]["timestamp"] == datetime.fromtimestamp(1700000001.25).isoformat()


@FASTPATH
def test_non_member_links_get_no_fast_path(twins: Twins) -> None:
    frames = [_frame([(schema.KIND_EVENT, b"", b"id1", _ev(1, "a"))])]
    for impl in twins.both:
        rest, got, *_ = _run(impl, frames, member=False)
        assert got == [] and len(rest[0]) == 1


@given(st.lists(st.tuples(st.sampled_from([schema.KIND_EVENT, schema.KIND_LEAVE]), st.sampled_from([b"", b"me", b"x"]),
                          st.binary(max_size=3), st.integers(0, 5)), max_size=20),
       st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture holds no state
@FASTPATH
def test_sink_twins_identical_on_random_and_mutated_frames(twins: Twins, msgs: Any, data: st.DataObject) -> None:
    built = [(k, t, mid, _ev(i, "a") if k == schema.KIND_EVENT else schema.Leave("n")) for k, t, mid, i in msgs]
    frame = bytearray(_frame(built))
    if frame and data.draw(st.booleans()):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    results = [_run(impl, [bytes(frame)]) for impl in twins.both]
    assert all(r == results[0] for r in results)


@FASTPATH
def test_iso_twins_identical(twins: Twins) -> None:
    for ts in (0.0, 0.5, 1.0000005, 1700000000.9999996, 1700000000.123456):
        assert (twins.pure.iso_from_epoch(ts) == twins.compiled.iso_from_epoch(ts) == iso_from_epoch(ts)
                == datetime.fromtimestamp(ts).isoformat())


class _SendDispatcher:
    def __init__(self) -> None:
        self.recent: deque[Any] = deque(maxlen=10)
        self.observers: set[Any] = set()
        self.pushed: list[Any] = []

    def push_observers(self, ev: Any) -> None:
        self.pushed.append(ev)


@FASTPATH
def test_sender_twins_build_the_same_frames(twins: Twins) -> None:
    import asyncio

    impls = twins.both

    async def run(impl: Any) -> Any:
        from spiralfast.node.outbox import Outbox

        core = _SendDispatcher()
        outbox = Outbox()
        sent: list[bytes] = []

        class Link:
            errors = 0
            peer_id = "p"

            def send_frame(self, f: bytes) -> bool:
                sent.append(f)
                return True

            def close(self, reason: str = "") -> None:
                pass

        outbox.add_link("p", Link())
        s = impl.EventSender(outbox, core, "me", "pre-", schema.EVENT_TYPE_IDS, 1 << 20, 3)
        flags = [s.broadcast("custom" if i % 2 else "weird_type", {"i": i}) for i in range(7)]
        core.observers.add(object())
        flags.append(s.broadcast("custom", {"i": 7}))
        outbox.flush()
        msgs = [m for f in sent for m in _codec_py.decode_frame(f)]
        evs = [msgspec.msgpack.decode(m.payload, type=schema.Event) for m in msgs]
        shape = [(m.kind, m.etype, m.msg_id, e.event_id, e.event_type, e.source_node, e.data) for m, e in zip(msgs, evs, strict=True)]
        return flags, shape, len(core.recent), len(core.pushed), s.events_out, s.next_id()

    results = [asyncio.run(run(impl)) for impl in impls]
    assert all(r == results[0] for r in results)
    flags, shape, recent, pushed, out, nxt = results[0]
    assert flags == [False, False, True, False, False, True, False, False]  # a yield every 3rd event
    assert [x[2] for x in shape] == [f"pre-{i}".encode() for i in range(1, 9)]
    assert shape[1][1] == schema.EVENT_TYPE_IDS["custom"] and shape[0][1] == 0
    assert (recent, pushed, out, nxt) == (8, 1, 8, "prex-1")  # direct ids: their own sequence


@FASTPATH
def test_dedupe_is_per_origin_so_a_late_copy_is_caught_after_any_traffic(twins: Twins) -> None:
    """A copy arriving over a slow path after more than the old global window of other
    origins' events is still a duplicate (it once delivered 28,672 duplicates)."""
    for impl in twins.both:
        d = impl.Dedupe(1024)
        assert all(d.first_time(b"late-%d" % i) for i in range(100))
        for o in range(8):  # 8 busy origins, 20,000 events each, in between
            assert all(d.first_time(b"busy%d-%d" % (o, i)) for i in range(20_000))
        assert not any(d.first_time(b"late-%d" % i) for i in range(100))  # the late copies
        assert d.first_time(b"late-100")
        assert not d.first_time(b"busy3-5")
        d.first_time(b"w-200000")
        assert not d.first_time(b"w-1")  # older than the window: taken as seen


@FASTPATH
def test_broadcast_gaps_are_counted_per_origin_and_filled_by_late_copies(twins: Twins) -> None:
    for impl in twins.both:
        d = impl.Dedupe(16)
        for i in (7, 8, 11, 12):  # joined at 7 (not a gap), then 9 and 10 missing
            d.first_time(b"abcdef123456s-%d" % i)
        for i in (1, 5, 9):  # direct messages ("x"): their sequence is shared by every target
            d.first_time(b"abcdef123456x-%d" % i)
        assert d.gaps() == {"abcdef123456s": 2}
        d.first_time(b"abcdef123456s-9")  # arrived late over another path
        assert d.gaps() == {"abcdef123456s": 1}


@FASTPATH
def test_direct_ids_have_their_own_sequence(twins: Twins) -> None:
    from spiralfast.node.outbox import Outbox

    for impl in twins.both:
        s = impl.EventSender(Outbox(), _SendDispatcher(), "me", "abcdef123456s-", schema.EVENT_TYPE_IDS, 1 << 20, 8)
        assert [s.next_id(), s.next_id()] == ["abcdef123456x-1", "abcdef123456x-2"] and s.seq == 0


@FASTPATH
def test_retransmit_buffer_holds_each_broadcast_payload_as_sent(twins: Twins) -> None:
    import asyncio

    from spiralfast.node.outbox import Outbox

    async def run(impl: Any, writer: Any) -> list[bytes]:
        ob = Outbox()
        ob.bcast = writer
        s = impl.EventSender(ob, _SendDispatcher(), "me", "abcdef123456s-", schema.EVENT_TYPE_IDS, 1 << 20, 64)
        for i in range(3):
            s.broadcast("custom", {"i": i, "x": "y" * i})
        frame = ob.bcast.finish()
        assert list(s.retx) == [m.payload for m in _codec_py.decode_frame(frame)]
        return list(s.retx)

    from spiralfast.wire.codec import FrameWriter

    asyncio.run(run(_fastpath_py, _codec_py.FrameWriter()))  # sliced from the pure writer's buffer
    for impl in twins.both:  # (payloads carry their send time, so runs differ from each other)
        assert len(asyncio.run(run(impl, FrameWriter()))) == 3


@FASTPATH
def test_a_gap_longer_than_the_window_stays_repairable_or_counted(twins: Twins) -> None:
    """A peer paused for seconds misses more than SEQ_WINDOW sequences: they stay
    missing (asked for, repairable exactly once) instead of being taken as seen, and
    what is given up is counted lost.  Both twins agree step by step."""
    from spiralfast.wire.limits import SEQ_WINDOW

    runs = []
    for impl in twins.both:
        d = impl.Dedupe(16)
        trace: list[Any] = []
        for i in range(1, 101):
            d.first_time(b"os-%d" % i)
        d.first_time(b"os-90")  # a duplicate
        d.first_time(b"os-103")  # 101, 102 missing (in the bitmap)
        gap_end = 103 + 3 * SEQ_WINDOW
        d.first_time(b"os-%d" % gap_end)  # a long pause: everything between is missing
        w = d.window("os")
        assert w.missing == 2 + 3 * SEQ_WINDOW - 1
        first = w.missing_seqs(4)
        assert first == [101, 102, 104, 105]  # oldest first, from below the bitmap too
        assert len(w.missing_seqs(10**7)) == w.missing
        assert d.first_time(b"os-101") and not d.first_time(b"os-101")  # repaired once
        assert d.first_time(b"os-5000") and not d.first_time(b"os-5000")  # from the middle
        assert not d.first_time(b"os-50")  # seen long ago: still a duplicate
        w.give_up([102, 104, 105, 5000])  # 5000 already came: not counted
        assert w.lost == 3 and not d.first_time(b"os-104")
        trace.append((w.high, w.missing, w.lost, list(w.old)))
        for s in w.missing_seqs(10**7):
            assert d.first_time(b"os-%d" % s)
        assert w.missing == 0 and w.missing_seqs(10) == [] and w.old == []
        # A tail gap no later event reveals: the origin says how far it has sent.
        w.expect(gap_end + 10)
        assert w.missing == 10 and w.missing_seqs(20) == list(range(gap_end + 1, gap_end + 11))
        assert d.first_time(b"os-%d" % (gap_end + 10)) and w.missing == 9
        w.expect(gap_end + 3)  # behind what we saw: nothing new
        assert w.missing == 9
        trace.append((w.high, w.missing, w.lost))
        fresh = impl.Dedupe(16)
        fresh.first_time(b"xs-1")
        fresh.window("xs").expect(0)
        direct = impl.Dedupe(16)
        direct.first_time(b"dx-1")
        direct.window("dx").expect(500)  # direct sequences are shared by targets: no gaps
        trace.append((direct.window("dx").missing, direct.gaps()))
        runs.append(trace)
    assert all(r == runs[0] for r in runs)


@FASTPATH
def test_missing_ranges_below_the_window_are_bounded_and_counted(twins: Twins) -> None:
    from spiralfast.wire.limits import SEQ_WINDOW

    for impl in twins.both:
        d = impl.Dedupe(16)
        seq = 0
        for _ in range(impl.MAX_OLD_RANGES + 10):  # one lost sequence every other one
            seq += 2
            d.first_time(b"os-%d" % seq)
        d.first_time(b"os-%d" % (seq + SEQ_WINDOW + 1))  # every gap slides below the bitmap
        w = d.window("os")
        assert len(w.old) <= impl.MAX_OLD_RANGES + 1
        assert w.lost > 0 and w.lost + w.missing == impl.MAX_OLD_RANGES + 9 + SEQ_WINDOW
