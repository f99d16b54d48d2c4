"""Codec: bytes in, messages out; both implementations, byte-identical."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralfast.errors import FrameError
from spiralfast.wire import _codec_py, codec, schema
from spiralfast.wire.limits import MAX_FRAME_SIZE, MAX_MESSAGES_PER_FRAME, PROTOCOL_VERSION

from .twins import Twins, codec_impl_fixture, twins_fixture  # noqa: F401 - the fixtures ``codec_impl``, ``twins``

#: The compiled codec and its twin, through the one fixture (tests/twins.py).
CODEC = pytest.mark.parametrize("twins", ["codec"], indirect=True)
#: Hypothesis reruns a test body with the same fixture value: the twins hold no state.
SAME_FIXTURE = HealthCheck.function_scoped_fixture

ids = st.binary(max_size=40)
messages = st.tuples(
    st.integers(0, 255), st.integers(0, 255), ids, ids, st.binary(max_size=300)
)
batches = st.lists(messages, max_size=40)


def test_frame_layout_is_documented_one(codec_impl: Any) -> None:
    frame = codec_impl.encode_batch([(3, 16, b"t", b"id", b"PAY")])
    assert frame == bytes([PROTOCOL_VERSION]) + struct.pack("<H", 1) + bytes([3, 16, 1, 2]) + struct.pack(
        "<I", 3
    ) + b"t" + b"id" + b"PAY"


def test_empty_frame_round_trips(codec_impl: Any) -> None:
    frame = codec_impl.FrameWriter().finish()
    assert frame == b"\x01\x00\x00"
    assert codec_impl.decode_frame(frame) == []


def test_writer_encodes_structs_in_place_and_resets(codec_impl: Any) -> None:
    w = codec_impl.FrameWriter()
    ev = schema.Event("e1", "custom", "n1", 1.5, {"k": [1, 2]}, "n2", 7, None, {"m": 1})
    w.add(schema.KIND_EVENT, schema.event_type_id("custom"), b"n2", b"e1", ev)
    assert w.count == 1
    frame = w.finish()
    assert w.count == 0 and w.nbytes == 3
    (m,) = codec_impl.decode_frame(frame)
    assert (m.kind, m.etype, m.target, m.msg_id) == (schema.KIND_EVENT, 16, b"n2", b"e1")
    assert msgspec.msgpack.decode(m.payload, type=schema.Event) == ev


def test_failed_payload_encode_leaves_writer_intact(codec_impl: Any) -> None:
    w = codec_impl.FrameWriter()
    w.add_raw(1, 0, b"", b"", b"ok")
    with pytest.raises(TypeError):
        w.add(3, 0, b"", b"x", object())
    assert w.count == 1
    assert [m.payload for m in codec_impl.decode_frame(w.finish())] == [b"ok"]


def test_limits_refused_at_send_time(codec_impl: Any) -> None:
    w = codec_impl.FrameWriter()
    with pytest.raises(FrameError):
        w.add_raw(256, 0, b"", b"", b"")
    with pytest.raises(FrameError):
        w.add_raw(1, 0, b"x" * 256, b"", b"")
    with pytest.raises(FrameError):
        w.add_raw(1, 0, b"", b"", b"x" * (9 * 1024 * 1024))
    for _ in range(MAX_MESSAGES_PER_FRAME):
        w.add_raw(1, 0, b"", b"", b"")
    assert w.full
    with pytest.raises(FrameError):
        w.add_raw(1, 0, b"", b"", b"")
    assert len(codec_impl.decode_frame(w.finish())) == MAX_MESSAGES_PER_FRAME


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01",
        b"\x02\x00\x00",  # unknown version
        b"\x01\x01\x00",  # claims a message, has none
        b"\x01\x00\x00junk",  # trailing bytes
        b"\x01\x01\x00\x01\x00\x00\x00\xff\xff\xff\x7f",  # payload length past the limit
        b"\x01\x01\x00\x01\x00\x05\x00\x01\x00\x00\x00ab",  # runs past the end
        b"\x01\xff\xff",  # more messages than allowed
    ],
)
def test_malformed_frames_raise_frame_error(codec_impl: Any, bad: bytes) -> None:
    with pytest.raises(FrameError):
        codec_impl.decode_frame(bad)
    dec = codec_impl.Decoder()
    with pytest.raises(FrameError):
        dec.feed(bad)
    assert dec.errors == 1 and dec.frames == 0


def test_oversized_frame_refused_before_parsing(codec_impl: Any) -> None:
    frame = codec_impl.encode_batch([(1, 0, b"", b"", b"x" * 100)])
    with pytest.raises(FrameError):
        codec_impl.decode_frame(frame, 50)
    assert len(codec_impl.decode_frame(frame, MAX_FRAME_SIZE)) == 1


def test_non_buffer_input_is_a_frame_error(codec_impl: Any) -> None:
    with pytest.raises(FrameError):
        codec_impl.decode_frame("text")  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        codec_impl.decode_frame(12)  # type: ignore[arg-type]


def test_accepts_memoryview_and_bytearray(codec_impl: Any) -> None:
    frame = codec_impl.encode_batch([(2, 1, b"a", b"b", b"c")])
    assert codec_impl.decode_frame(memoryview(frame)) == codec_impl.decode_frame(bytearray(frame))


# deadline=None throughout: Hypothesis' per-example time limit is a wall-clock bound that a
# loaded machine breaks; how fast the codec is, perf/ and the bench gate measure.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, SAME_FIXTURE])
@given(batches)
@CODEC
def test_round_trip_and_twins_identical(twins: Twins, batch: list[tuple[int, int, bytes, bytes, bytes]]) -> None:
    frames = {impl.COMPILED: impl.encode_batch(batch) for impl in twins.both}
    assert len(set(frames.values())) == 1, "compiled and pure frames differ"
    frame = next(iter(frames.values()))
    for impl in twins.both:
        assert [m.as_tuple() for m in impl.decode_frame(frame)] == batch


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, SAME_FIXTURE])
@given(st.binary(max_size=200))
@CODEC
def test_random_bytes_only_raise_frame_error(twins: Twins, data: bytes) -> None:
    outcomes = []
    for impl in twins.both:
        try:
            outcomes.append([m.as_tuple() for m in impl.decode_frame(data)])
        except FrameError:
            outcomes.append("FrameError")
    assert all(o == outcomes[0] for o in outcomes)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, SAME_FIXTURE])
@given(batches.filter(bool), st.data())
@CODEC
def test_mutated_frames_only_raise_frame_error(twins: Twins, batch: Any, data: st.DataObject) -> None:
    frame = bytearray(_codec_py.encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    outcomes = []
    for impl in twins.both:
        try:
            outcomes.append([m.as_tuple() for m in impl.decode_frame(bytes(frame))])
        except FrameError:
            outcomes.append("FrameError")
    assert all(o == outcomes[0] for o in outcomes)


def test_decode_payload_maps_every_failure_to_frame_error() -> None:
    with pytest.raises(FrameError):
        codec.decode_payload(250, b"\x90")
    with pytest.raises(FrameError):
        codec.decode_payload(schema.KIND_EVENT, b"\xc1")  # never-used msgpack byte
    with pytest.raises(FrameError):
        codec.decode_payload(schema.KIND_HEARTBEAT, msgspec.msgpack.encode(["x"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[SAME_FIXTURE])
@given(
    st.builds(
        schema.Event,
        event_id=st.text(max_size=20),
        event_type=st.text(max_size=20),
        source_node=st.text(max_size=20),
        timestamp=st.floats(min_value=0, max_value=253402300799.0),
        data=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=5),
        target_node=st.none() | st.text(max_size=5),
        priority=st.integers(0, 10),
        ttl=st.none() | st.floats(0, 100),
        metadata=st.none() | st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
    )
)
@CODEC
def test_event_struct_round_trips_through_a_frame(twins: Twins, ev: schema.Event) -> None:
    for impl in twins.both:
        w = impl.FrameWriter()
        w.add(schema.KIND_EVENT, 0, b"", ev.event_id.encode()[:255], ev)
        (m,) = impl.decode_frame(w.finish())
        assert codec.decode_payload(m.kind, m.payload) == ev


def test_every_kind_has_a_schema() -> None:
    kinds = {v for k, v in vars(schema).items() if k.startswith("KIND_") and isinstance(v, int)}
    assert kinds == set(schema.KIND_TYPES)


def test_str_ids_encode_like_their_utf8_bytes(codec_impl: Any) -> None:
    a = codec_impl.FrameWriter()
    a.add_raw(1, 2, "nödé", "id-ü", b"p")
    b = codec_impl.FrameWriter()
    b.add_raw(1, 2, "nödé".encode(), "id-ü".encode(), b"p")
    assert a.finish() == b.finish()


def test_invalid_utf8_in_a_payload_string_is_a_frame_error() -> None:
    # msgspec raises UnicodeDecodeError (not DecodeError) for this; found by hypothesis.
    bad = msgspec.msgpack.encode(["x"]).replace(b"x", b"\x80")
    with pytest.raises(FrameError):
        codec.decode_payload(schema.KIND_LEAVE, bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, SAME_FIXTURE])
@given(batches, st.data())
@CODEC
def test_decode_payloads_matches_decode_frame(twins: Twins, batch: Any, data: st.DataObject) -> None:
    frame = bytearray(_codec_py.encode_batch(batch))
    if frame and data.draw(st.booleans()):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    for impl in twins.both:
        try:
            expected: Any = [m.payload for m in impl.decode_frame(bytes(frame))]
        except FrameError:
            expected = "FrameError"
        try:
            got: Any = impl.decode_payloads(bytes(frame), bytes)
        except FrameError:
            got = "FrameError"
        assert got == expected


@pytest.mark.parametrize("ts", [1e17, float("nan"), float("inf"), -5.0])
def test_out_of_range_event_timestamps_are_frame_errors(ts: float) -> None:
    # A timestamp datetime cannot represent would otherwise fail later, in a handler
    # or the ISO formatter (found by hypothesis on mutated frames).
    payload = msgspec.msgpack.encode(["id", "t", "src", ts, None])
    with pytest.raises(FrameError):
        codec.decode_payload(schema.KIND_EVENT, payload)
