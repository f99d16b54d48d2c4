"""Every compiled/pure pair (codec, ring, receive and send paths, RitualEvent) on the
same inputs, misuse included: one fixture, ``twins``, hands each test both
implementations, and the outcomes (result bytes or exception type) must match.

Without the compiled build (SPIRALFAST_PUREPYTHON=1, or no compiler) the pure twin is
compared with itself, so the suite still runs; the compiled CI run asserts that the
extensions loaded (tests/test_build.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from types import ModuleType
from typing import Any

import pytest

from spiralfast import EventType, _codec_py, _event_py, _fastpath_py, _ring_py
from spiralfast._native import PUREPYTHON_REQUESTED

try:
    from spiralfast import _codec, _event, _fastpath, _ring

    COMPILED: dict[str, ModuleType] = {"codec": _codec, "ring": _ring, "fastpath": _fastpath, "event": _event}
except ImportError:  # pragma: no cover - no compiler
    COMPILED = {}
PURE = {"codec": _codec_py, "ring": _ring_py, "fastpath": _fastpath_py, "event": _event_py}


@pytest.fixture(params=["codec", "ring", "fastpath", "event"])
def twins(request: pytest.FixtureRequest) -> tuple[str, ModuleType, ModuleType]:
    name = request.param
    compiled = COMPILED.get(name) if not PUREPYTHON_REQUESTED else None
    return name, compiled or PURE[name], PURE[name]


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


def test_twins_agree_on_every_case(twins: tuple[str, ModuleType, ModuleType]) -> None:
    name, compiled, pure = twins
    for label, case in CASES[name]:
        a, b = outcome(lambda case=case: case(compiled)), outcome(lambda case=case: case(pure))
        assert a == b, f"{name}: {label}: compiled {a} != pure {b}"
