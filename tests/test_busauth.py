"""Sealed bus frames (spiralfast/wire/sealing.py, re-exported as spiralfast.busauth), bytes in
and out: who sent them, proof of it, and no replays."""

from __future__ import annotations

import hashlib

import pytest

from spiralfast.errors import AuthError, FrameError
from spiralfast.wire.sealing import BusSealer
from spiralfast.wire.signing import derive_key

CH = b"chan:sf:mesh"


def test_round_trip_and_reordering_within_the_window() -> None:
    a, b = BusSealer("A", "mesh", "tok"), BusSealer("B", "mesh", "tok")
    frames = [a.seal(CH, c, b"f%d" % c) for c in (10, 20, 30)]
    assert b.open(CH, frames[0])[::2] == ("A", memoryview(b"f10"))
    assert bytes(b.open(CH, frames[2])[2]) == b"f30"
    assert bytes(b.open(CH, frames[1])[2]) == b"f20"  # pipelines in flight may reorder


@pytest.mark.parametrize("who", ["other node", "own echo"])
def test_replays_are_refused_own_echo_included(who: str) -> None:
    a, b = BusSealer("A", "mesh", "tok"), BusSealer("B", "mesh", "tok")
    f = a.seal(CH, 7, b"x")
    rx = b if who == "other node" else a
    rx.open(CH, f)
    with pytest.raises(AuthError, match="replayed"):
        rx.open(CH, f)
    assert rx.stats["replayed"] == 1


def test_forged_unsigned_other_mesh_and_malformed_frames_are_refused() -> None:
    a, b = BusSealer("A", "mesh", "tok"), BusSealer("B", "mesh", "tok")
    f = bytearray(a.seal(CH, 1, b"payload"))
    f[-1] ^= 1
    with pytest.raises(AuthError, match="tag"):
        b.open(CH, bytes(f))
    with pytest.raises(AuthError, match="unsigned"):
        b.open(CH, BusSealer("A", "mesh", None).seal(CH, 2, b"x"))
    with pytest.raises(AuthError, match="tag"):
        b.open(CH, BusSealer("A", "other-mesh", "tok").seal(CH, 3, b"x"))
    with pytest.raises(AuthError):
        BusSealer("C", "mesh", None).open(CH, a.seal(CH, 4, b"x"))  # no token here: signed is foreign
    with pytest.raises(FrameError):
        b.open(CH, b"\x01\x05ab")
    with pytest.raises(AuthError, match="tag"):
        b.open(b"another:channel", a.seal(CH, 5, b"x"))  # bound to its channel


def test_keys_are_stretched_not_a_single_hash() -> None:
    k = derive_key("tok", "bus\0mesh")
    assert len(k) == 32 and k != hashlib.sha256(b"tok").digest()
    assert derive_key("tok", "handshake") != k  # one key per purpose
