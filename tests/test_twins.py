"""Every compiled/pure pair (codec, ring, receive and send paths, RitualEvent) on the
same inputs, misuse included: the one fixture, ``twins`` (tests/twins.py), hands each
test both implementations, and the outcomes (result bytes or exception type) must match.

On the pure-Python run (SPIRALFAST_PUREPYTHON=1) the pure twin is compared with itself,
so the suite still runs; under CI=true a compiled module that does not import fails the
fixture (and tests/test_build.py asserts that the extensions loaded).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import datetime
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from spiralfast import EventType
from spiralfast.wire import _ring_py

from .twins import WIRE_PAIRS, Twins, load_twins, twins_fixture  # noqa: F401 - the fixture ``twins``


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        r = fn()
    except Exception as exc:  # the type must match between twins; messages may differ
        return "raises", type(exc).__name__
    if isinstance(r, (bytes, bytearray, memoryview)):
        return "bytes", bytes(r)
    if isinstance(r, list) and r and hasattr(r[0], "as_tuple"):
        return "messages", [m.as_tuple() for m in r]
    return "value", r if isinstance(r, (int, str, float, bool, type(None), list, tuple, dict)) else type(r).__name__


def _writer_raw(m: ModuleType, payload: Any) -> Any:
    w = m.FrameWriter()
    w.add_raw(3, 1, b"t", b"id", payload)
    return w.finish()


def _writer_ids(m: ModuleType, target: Any, msg_id: Any) -> Any:
    w = m.FrameWriter()
    w.add_raw(3, 1, target, msg_id, b"payload")
    frame = w.finish()
    assert m.decode_frame(frame)[0].as_tuple() == (3, 1, _as_bytes(target), _as_bytes(msg_id), b"payload")
    return frame


def _as_bytes(x: Any) -> bytes:
    return x.encode() if isinstance(x, str) else memoryview(x).tobytes()


def _writer(m: ModuleType, kind: int, target: Any, msg_id: Any, obj: Any) -> Any:
    w = m.FrameWriter()
    w.add(kind, 1, target, msg_id, obj)
    return w.finish()


class _D:
    def __init__(self, ring: Any) -> None:
        self.handlers: dict[str, list[Any]] = {}
        self.recent: list[Any] = []
        self.spill: list[Any] = []
        self.inbox = ring
        self.observers: set[Any] = set()
        self.sample_latency = None


CASES: dict[str, list[tuple[str, Callable[[ModuleType], Any]]]] = {
    "codec": [
        ("add_raw bytes", lambda m: _writer_raw(m, b"abc")),
        ("add_raw bytearray", lambda m: _writer_raw(m, bytearray(b"abc"))),
        ("add_raw memoryview slice", lambda m: _writer_raw(m, memoryview(b"abcdef")[1:4])),
        ("add_raw str", lambda m: _writer_raw(m, "abc")),
        ("add_raw None", lambda m: _writer_raw(m, None)),
        ("add_raw over the limit", lambda m: _writer_raw(m, b"x" * (9 * 1024 * 1024))),
        # Ids: str as UTF-8, any bytes-like object as its bytes (a bytearray target was
        # once read as if it were bytes by the compiled writer: wrong bytes), else TypeError.
        ("add_raw bytearray target", lambda m: _writer_ids(m, bytearray(b"tgt"), b"id")),
        ("add_raw bytearray id", lambda m: _writer_ids(m, b"tgt", bytearray(b"id"))),
        ("add_raw memoryview target", lambda m: _writer_ids(m, memoryview(b"xtgtx")[1:4], b"id")),
        ("add_raw strided memoryview target", lambda m: _writer_ids(m, memoryview(b"t.g.t.")[::2], b"id")),
        ("add_raw empty bytearray target", lambda m: _writer_ids(m, bytearray(), bytearray(b"i"))),
        ("add_raw bytearray target over 255", lambda m: _writer_ids(m, bytearray(300), b"id")),
        ("add_raw int target", lambda m: _writer_ids(m, 7, b"id")),
        ("add_raw None target", lambda m: _writer_ids(m, None, b"id")),
        ("add_raw None id", lambda m: _writer_ids(m, b"t", None)),
        ("add_raw list id", lambda m: _writer_ids(m, b"t", [1, 2])),
        ("add bytearray ids", lambda m: _writer(m, 3, bytearray(b"tgt"), bytearray(b"i"), {"a": 1})),
        ("writer reused after a bad id", lambda m: (lambda w: (
            outcome(lambda: w.add_raw(3, 1, 5, b"i", b"x")), w.count, w.add_raw(3, 1, bytearray(b"t"), b"i", b"p"),
            w.finish()))(m.FrameWriter())),
        ("add str target", lambda m: _writer(m, 3, "tgt", b"i", {"a": 1})),
        ("add target over 255", lambda m: _writer(m, 3, "t" * 300, b"i", {"a": 1})),
        ("add kind over a byte", lambda m: _writer(m, 300, b"", b"i", 1)),
        ("add unencodable", lambda m: _writer(m, 3, b"", b"i", object())),
        ("decode None", lambda m: m.decode_frame(None)),
        ("decode str", lambda m: m.decode_frame("abc")),
        ("decode empty", lambda m: m.decode_frame(b"")),
        ("decode truncated", lambda m: m.decode_frame(b"\x01\x01\x00\x03")),
        ("decode bad version", lambda m: m.decode_frame(b"\x09\x00\x00")),
        ("decode round trip", lambda m: m.decode_frame(_writer(m, 3, b"x", b"y", [1, 2]))),
    ],
    "ring": [
        ("capacity 0", lambda m: m.Ring(0)),
        ("capacity -1", lambda m: m.Ring(-1)),
        ("capacity str", lambda m: m.Ring("x")),
        ("pop empty", lambda m: m.Ring(4).pop()),
        ("bad policy", lambda m: m.Ring(4, overflow="zzz")),
        ("pop_many negative", lambda m: m.Ring(4).pop_many(-1)),
        # One ring for all three pushes: the third meets a full ring and is rejected.
        ("reject when full", lambda m: (lambda r: [r.push(i) for i in range(3)])(m.Ring(2, overflow="reject"))),
        ("reject keeps what it holds", lambda m: (lambda r: (
            [r.push(i) for i in range(2)], outcome(lambda: r.push(2)), len(r), r.rejected, r.pop_many(10)
        ))(m.Ring(2, overflow="reject"))),
        ("push_threadsafe when full", lambda m: (lambda r: (
            [r.push(i) for i in range(2)], outcome(lambda: r.push_threadsafe(2)), r.rejected, r.pop_many(10)
        ))(m.Ring(2, overflow="drop_oldest"))),
        ("drop oldest", lambda m: (lambda r: ([r.push(i) for i in range(5)], r.pop_many(10))[1])(
            m.Ring(2, overflow="drop_oldest"))),
    ],
    "fastpath": [
        ("dedupe window 0", lambda m: m.Dedupe(0)),
        ("first_time None", lambda m: m.Dedupe(4).first_time(None)),
        ("first_time str", lambda m: m.Dedupe(4).first_time("x")),
        ("first_time bytearray", lambda m: m.Dedupe(4).first_time(bytearray(b"x"))),
        ("first_time window", lambda m: (lambda d: [d.first_time(b"%d" % (i % 3)) for i in range(8)])(m.Dedupe(2))),
        ("first_time ids", lambda m: (lambda d: [d.first_time(x) for x in (
            b"a-1", b"a-1", b"a-3", b"a-2", b"a-2", b"a-01", b"a-01", b"-5", b"-5", b"a-b-7", b"a-b-7",
            b"o-" + b"9" * 18, b"o-" + b"9" * 18, b"o-99999999999999999", b"o-99999999999999999",
            b"a-70000", b"a-3", b"a-4465", b"a-4464", b"x-0", b"x-0")])(m.Dedupe(4))),
        ("iso NaN", lambda m: m.iso_from_epoch(float("nan"))),
        ("iso str", lambda m: m.iso_from_epoch("x")),
        ("iso out of range", lambda m: m.iso_from_epoch(1e20)),
        ("iso value", lambda m: m.iso_from_epoch(1700000000.123456)),
        ("sink without dedupe", lambda m: m.EventSink(_D(_ring_py.Ring(4)), b"me", None)),
        ("sink receives str", lambda m: m.EventSink(_D(_ring_py.Ring(4)), b"me", m.Dedupe(4)).receive("x", True)),
        ("sink receives junk", lambda m: m.EventSink(_D(_ring_py.Ring(4)), b"me", m.Dedupe(4)).receive(b"\x01\xff", True)),
    ],
    "event": [
        ("timestamp str", lambda m: m.RitualEvent("id", EventType.CUSTOM, "s", None, "yesterday", {}, {})),
        ("to_dict", lambda m: m.RitualEvent("id", EventType.CUSTOM, "s", None, 1700000000.0, {"a": 1}, {}).to_dict()),
        ("from_dict missing", lambda m: m.RitualEvent.from_dict({"x": 1})),
        ("from_dict round trip", lambda m: m.RitualEvent.from_dict(m.RitualEvent(
            "id", EventType.CUSTOM, "s", "t", datetime(2024, 1, 2, 3, 4, 5), {"a": 1}, {"m": 2}, 7, 3).to_dict()
        ).to_dict()),
    ],
}


@pytest.mark.parametrize("twins", WIRE_PAIRS, indirect=True)
def test_twins_agree_on_every_case(twins: Twins) -> None:
    for label, case in CASES[twins.name]:
        a, b = outcome(lambda case=case: case(twins.compiled)), outcome(lambda case=case: case(twins.pure))
        assert a == b, f"{twins.name}: {label}: compiled {a} != pure {b}"


@pytest.mark.parametrize("twins", ["codec"], indirect=True)
def test_a_bytearray_target_writes_its_bytes(twins: Twins) -> None:
    """The compiled writer once wrote the bytearray object's memory for a bytearray target."""
    for m in twins.both:
        w = m.FrameWriter()
        w.add_raw(3, 1, bytearray(b"node-b"), bytearray(b"id-1"), b"\x01")
        w.add(3, 1, bytearray(b"node-c"), memoryview(b"id-2"), 5)
        msgs = m.decode_frame(w.finish())
        assert [(x.target, x.msg_id) for x in msgs] == [(b"node-b", b"id-1"), (b"node-c", b"id-2")]
        with pytest.raises(TypeError, match="target must be str or a bytes-like object, not int"):
            w.add_raw(3, 1, 12, b"i", b"x")
        with pytest.raises(TypeError, match="message id must be str or a bytes-like object, not NoneType"):
            w.add(3, 1, b"t", None, 1)
        assert w.count == 0 and w.finish() == b"\x01\x00\x00"  # nothing half-written


# -- the reject path of a ring, the same ring reused after it ---------------------------------

def _bus(ring: Any) -> SimpleNamespace:
    """Just what ``publish_nowait`` and ``dispatch_loop`` read of an EventBus."""
    bus = SimpleNamespace(_mesh_send=None, _prefix="n-", _seq=itertools.count(1), node_id="n",
                          event_queue=ring, published=0, running=True, subscribers={},
                          event_history=[], max_history=3, delivered=0, expired=0, dropped=0,
                          failed=[])
    bus._handler_failed = lambda h, ev: bus.failed.append(ev.event_id)
    return bus


def _event_run(event: ModuleType, ring_mod: ModuleType) -> list[Any]:
    """Publish into a two-slot rejecting ring until it refuses, drain it with the bus
    loop, then fill the same ring again (a foreign item, an expired event, a refusal)
    and drain it once more: every step's outcome."""
    ring = ring_mod.Ring(2, overflow="reject")
    bus = _bus(ring)
    out: list[Any] = []
    got: list[Any] = []

    def publish(data: Any, priority: int = 5, ttl: Any = None) -> Any:
        return event.publish_nowait(bus, EventType.CUSTOM, data, None, priority, ttl, {})

    def handler(ev: Any) -> None:
        got.append(ev.event_id)
        if ev.data.get("boom"):
            raise RuntimeError("handler failure")
        if ev.data.get("last"):
            bus.running = False

    bus.subscribers[EventType.CUSTOM] = [handler]

    async def drain() -> None:
        """Run the bus loop until the ring is empty, then stop it with one more event."""
        bus.running = True
        task = asyncio.ensure_future(event.dispatch_loop(bus))
        for _ in range(100):
            await asyncio.sleep(0)
            if ring.empty():
                break
        out.append(("drained", list(got), len(ring)))
        out.append(publish({"last": True}))  # wakes the waiting loop, which stops
        await asyncio.wait_for(task, 5)

    async def scenario() -> None:  # one event loop: the ring binds to it
        out.append([publish({"i": i}) for i in range(3)])  # the third meets the full ring: None
        out.append((bus.published, ring.rejected, len(ring)))
        ring.pop()  # room for one more
        out.append([publish({"boom": True}, priority=9), publish({"late": 1})])  # the second: refused
        await drain()  # priority order within the backlog; the failing handler is isolated
        out.append(publish({"expired": 1}, ttl=0))  # the same ring, reused
        ring.push("not an event")  # a foreign item: dropped and counted, the loop keeps going
        out.append(publish({"i": 9}))  # the ring is full again: refused
        with pytest.raises(Exception) as exc:
            ring.push("one too many")
        out.append((type(exc.value).__name__, ring.rejected, bus.published))
        await drain()

    asyncio.run(scenario())
    out.append((got, bus.failed, bus.delivered, bus.expired, bus.dropped, bus.published, ring.rejected,
                [e.event_id for e in bus.event_history], len(ring)))
    return out


@pytest.mark.parametrize("twins", ["event"], indirect=True)
def test_event_twins_agree_through_a_rejecting_ring(twins: Twins) -> None:
    rings = load_twins("ring")
    runs = {(e.__name__, r.__name__): _event_run(e, r) for e in twins.both for r in rings.both}
    first = next(iter(runs.values()))
    for key, run in runs.items():
        assert run == first, key
    assert first[:3] == [["n-1", "n-2", None], (2, 1, 2), ["n-4", None]]
    assert first[3] == ("drained", ["n-4", "n-2"], 0) and first[4] == "n-6"
    assert first[5:8] == ["n-7", None, ("RingFull", 4, 5)]
    assert first[8] == ("drained", ["n-4", "n-2", "n-6"], 0) and first[9] == "n-9"
    got, failed, delivered, expired, dropped, published, rejected, history, left = first[10]
    assert got == ["n-4", "n-2", "n-6", "n-9"] and failed == ["n-4"]
    assert (delivered, expired, dropped, published, rejected, left) == (4, 1, 1, 6, 4, 0)
    assert history == ["n-2", "n-6", "n-9"]  # bounded by max_history


@pytest.mark.parametrize("twins", ["event"], indirect=True)
def test_ritual_event_twins_agree(twins: Twins) -> None:
    seen = []
    for m in twins.both:
        E = m.RitualEvent
        a = E("id", EventType.CUSTOM, "n", None, 1700000000.5, {"d": 1}, None, 3, 0.5)
        b = E("id", EventType.CUSTOM, "n", None, datetime.fromtimestamp(1700000000.5), {"d": 1}, {}, 3, 0.5)
        eq = (a == b, a != b)
        a.metadata["x"] = 1
        d = b.to_dict()
        seen.append((eq, a == b, repr(b), d, E.from_dict(d) == b, outcome(lambda a=a: hash(a)), a.epoch))
    assert all(s == seen[0] for s in seen) and seen[0][0] == (True, False) and seen[0][1] is False


class _Inbox(SimpleNamespace):
    """A dispatcher whose ``queue`` is the node's: into the inbox ring, spilling what it rejects."""

    def queue(self, env: dict[str, Any]) -> None:
        if self.spill:
            self.spill.append(env["event_id"])
            return
        try:
            self.inbox.push(env["event_id"])
        except Exception as exc:  # RingFull from either ring
            self.rejections.append(type(exc).__name__)
            self.spill.append(env["event_id"])

    def defer(self) -> None:
        pass

    def push_observers(self, ev: Any) -> None:
        pass

    def handler_failed(self, h: Any, env: dict[str, Any]) -> None:
        self.failed += 1

    def spawn(self, aw: Any) -> None:
        aw.close()


def _sink_run(fp: ModuleType, ring_mod: ModuleType) -> list[Any]:
    from spiralfast import schema
    from spiralfast.wire import _codec_py

    ring = ring_mod.Ring(2, overflow="reject")
    got: list[str] = []
    d = _Inbox(handlers={"a": [lambda env: got.append(env["event_id"])]}, recent=[], observers=set(),
               spill=[], inbox=ring, sample_latency=None, rejections=[], failed=0)
    sink = fp.EventSink(d, b"me", fp.Dedupe(64))

    def frame(*ids: int) -> bytes:
        w = _codec_py.FrameWriter()
        for i in ids:
            w.add(schema.KIND_EVENT, 0, b"", b"o-%d" % i, schema.Event(f"o-{i}", "a", "src", 1.0 + i, None, None))
        return w.finish()

    out: list[Any] = []
    sink.receive(frame(1, 2), True)  # an idle inbox: delivered inline
    out.append(list(got))
    ring.push("backlog")  # something queued ahead: the next ones queue behind it
    sink.receive(frame(3, 4, 5), True)  # 3 fits, 4 is rejected (spilled), 5 follows the spill
    out.append((ring.pop_many(), list(d.spill), list(d.rejections), ring.rejected))
    d.spill.clear()
    sink.receive(frame(6, 4), True)  # the same ring, emptied: inline again; 4 is a duplicate
    out.append((list(got), sink.duplicates))
    ring.push("backlog")
    ring.push("full")
    sink.receive(frame(7), True)  # a full ring rejects at once
    out.append((ring.pop_many(), list(d.spill), list(d.rejections), ring.rejected, len(ring)))
    d.spill.clear()
    sink.receive(frame(8), True)
    out.append((list(got), sink.events_in, sink.duplicates, d.failed))
    return out


@pytest.mark.parametrize("twins", ["fastpath"], indirect=True)
def test_sink_twins_agree_through_a_rejecting_inbox(twins: Twins) -> None:
    rings = load_twins("ring")
    runs = {(f.__name__, r.__name__): _sink_run(f, r) for f in twins.both for r in rings.both}
    first = next(iter(runs.values()))
    for key, run in runs.items():
        assert run == first, key
    assert first[0] == ["o-1", "o-2"]
    assert first[1] == (["backlog", "o-3"], ["o-4", "o-5"], ["RingFull"], 1)
    assert first[2] == (["o-1", "o-2", "o-6"], 1)
    assert first[3] == (["backlog", "full"], ["o-7"], ["RingFull", "RingFull"], 2, 0)
    assert first[4] == (["o-1", "o-2", "o-6", "o-8"], 8, 1, 0)


def test_every_pair_loads_through_the_fixture(twins: Twins) -> None:
    """Each pair imports, and (unless the pure run asked for the twins) the compiled
    module is the compiled one: under CI=true a missing build fails here."""
    assert twins.pure.COMPILED is False
    assert twins.compiled.COMPILED is twins.distinct


def test_a_missing_compiled_module_fails_under_ci_and_never_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import twins as fixture_module

    monkeypatch.setitem(fixture_module.PAIRS, "unbuilt", ("spiralfast.wire._unbuilt", "spiralfast.wire._codec_py"))
    monkeypatch.setattr(fixture_module, "PUREPYTHON_REQUESTED", False)
    monkeypatch.setattr(fixture_module, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        load_twins("unbuilt")
    monkeypatch.setattr(fixture_module, "IN_CI", False)  # a developer's machine: the twin, with a warning
    with pytest.warns(UserWarning, match="not built"):
        unbuilt = load_twins("unbuilt")
    assert unbuilt.compiled is unbuilt.pure and unbuilt.both == (unbuilt.pure,)
