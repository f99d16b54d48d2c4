"""The delivery cursor's rules (spiralfast/store/cursor.py): no event loop, the clock passed in."""

from __future__ import annotations

import json

from spiralfast.store.cursor import MAX_AHEAD, Cursor, is_redelivery, parse_id

ORIGIN = "0123456789abs"


def test_parse_id_takes_broadcast_ids_only() -> None:
    assert parse_id(f"{ORIGIN}-42") == (ORIGIN, 42)
    assert parse_id("0123456789abx-42") is None  # a direct message's sequence
    assert parse_id("plain-uuid") is None
    assert parse_id(f"{ORIGIN}-") is None
    assert parse_id(f"{ORIGIN}-1e3") is None
    assert parse_id(f"{ORIGIN}-" + "9" * 18) is None
    assert parse_id(None) is None
    assert parse_id(42) is None


def test_in_order_moves_done_and_marks_dirty() -> None:
    c = Cursor()
    for seq in range(5, 11):
        c.note(f"{ORIGIN}-{seq}", now=100.0 + seq)
    assert c.done == {ORIGIN: 10}  # counted from the first seen (joined at 5)
    rows = c.take()
    assert rows == [(ORIGIN, 10, "[]", 110.0)]
    assert c.take() == []  # nothing changed since
    c.note(f"{ORIGIN}-9", now=200.0)  # older: nothing to do
    assert c.take() == []


def test_out_of_order_waits_for_the_hole() -> None:
    c = Cursor()
    c.note(f"{ORIGIN}-1", 1.0)
    c.note(f"{ORIGIN}-3", 2.0)
    c.note(f"{ORIGIN}-4", 3.0)
    assert c.done[ORIGIN] == 1
    assert c.handled(ORIGIN, 3) and c.handled(ORIGIN, 1) and not c.handled(ORIGIN, 2)
    origin, done, ahead, _ = c.take()[0]
    assert (origin, done, json.loads(ahead)) == (ORIGIN, 1, [3, 4])
    c.note(f"{ORIGIN}-2", 4.0)  # the hole is filled: done jumps over what was ahead
    assert c.done[ORIGIN] == 4 and not c.ahead[ORIGIN]


def test_a_hole_that_never_fills_is_skipped_past_the_bound() -> None:
    c = Cursor()
    c.note(f"{ORIGIN}-1", 0.0)
    for seq in range(3, 3 + MAX_AHEAD + 1):
        c.note(f"{ORIGIN}-{seq}", 0.0)
    assert c.done[ORIGIN] == 2 + MAX_AHEAD + 1  # 2 given up, everything above it contiguous
    assert not c.ahead[ORIGIN]


def test_own_origin_is_skipped() -> None:
    c = Cursor(skip=[ORIGIN])
    c.note(f"{ORIGIN}-1", 0.0)
    assert c.done == {} and c.take() == []


def test_load_round_trip_and_wants() -> None:
    c = Cursor()
    c.note(f"{ORIGIN}-7", 5.0)
    c.note(f"{ORIGIN}-9", 6.0)
    rows = c.take() + [("", 1, "[]", 9.0)]  # the meta row is skipped
    d = Cursor()
    d.load(rows)
    assert d.wants() == {ORIGIN: 7}
    assert d.handled(ORIGIN, 9) and not d.handled(ORIGIN, 8)
    d.load([("bad0s", 3, "not json", 1.0)])  # a damaged ahead list loses only that list
    assert d.wants()["bad0s"] == 3


def test_redelivery_rule() -> None:
    # A clean stop: the cursor is exact, nothing is a redelivery.
    assert not is_redelivery(99.0, clean=True, alive_at=100.0, interval=0.1, margin=1.0)
    # Unclean: what was stamped up to the last alive time plus interval and margin may have been handled.
    assert is_redelivery(101.0, clean=False, alive_at=100.0, interval=0.1, margin=1.0)
    assert not is_redelivery(101.2, clean=False, alive_at=100.0, interval=0.1, margin=1.0)


def test_catchup_messages_are_member_only_and_range_checked() -> None:
    import msgspec
    import pytest

    from spiralfast.node import gate
    from spiralfast.wire import schema

    for kind in (schema.KIND_CATCHUP_REQUEST, schema.KIND_CATCHUP_BATCH):
        assert gate.admit(gate.MEMBER, kind) == gate.DELIVER
        assert gate.admit(gate.MEMBER, kind, bus=True) == gate.DELIVER
        assert gate.admit(gate.HANDSHAKE, kind) == gate.REFUSE
        assert gate.admit(gate.OBSERVER, kind) == gate.REFUSE
    dec = msgspec.msgpack.Decoder(schema.CatchUpRequest).decode
    enc = msgspec.msgpack.encode
    ok = dec(enc([{ORIGIN: 5}, 1.0, 4096, 0, 1]))  # the positive path
    assert ok.origins == {ORIGIN: 5} and ok.max_bytes == 4096
    for bad in ([{ORIGIN: -1}, 1.0, 4096], [{ORIGIN: 5}, -1.0, 4096], [{ORIGIN: 5}, 1.0, 1 << 40],
                [{"x" * 65: 5}, 1.0, 4096], [{ORIGIN: 5}, 1.0, 4096, -3]):
        with pytest.raises(msgspec.ValidationError):
            dec(enc(bad))
    too_many = {f"{i:012x}s": 1 for i in range(schema.MAX_CATCHUP_ORIGINS + 1)}
    with pytest.raises(msgspec.ValidationError):
        dec(enc([too_many, 1.0, 4096]))


def test_note_ids_matches_one_by_one() -> None:
    import random

    rng = random.Random(7)
    for trial in range(50):
        ids = [f"{ORIGIN}-{s}" for s in range(1, 200)] + [f"bbbbbbbbbbbbs-{s}" for s in range(5, 90)]
        ids += ["plain-id", f"{ORIGIN[:-1]}x-3", None]  # ignored: not broadcast ids
        if trial % 2:
            del ids[rng.randrange(0, 150)]  # a hole
        rng.shuffle(ids)
        one, many = Cursor(), Cursor()
        for part in (ids[:100], ids[100:]):  # two batches
            for origin, seq in sorted(p for p in map(parse_id, part) if p is not None):  # a batch: sorted
                one.note_seq(origin, seq, 1.0)
            many.note_ids(part, 1.0)
            assert (one.done, one.ahead) == (many.done, many.ahead)
        assert sorted(one.take()) == sorted(many.take())
