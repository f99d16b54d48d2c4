"""spiralfast.wire.signing: a node's own Ed25519 key, its file, and canonical self-record bytes."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from spiralfast.wire.signing import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeKey, self_record_bytes, verify

from .twins import Twins, twins_fixture  # noqa: F401 - the fixture ``twins``


def test_sign_verify_roundtrip_and_refusals() -> None:
    key = NodeKey.generate()
    assert isinstance(key.public, bytes) and len(key.public) == PUBLIC_KEY_SIZE
    sig = key.sign(b"frame")
    assert len(sig) == SIGNATURE_SIZE
    assert verify(key.public, b"frame", sig)
    assert verify(key.public, memoryview(b"frame"), sig)
    # Refusals: other data, other key, altered signature, malformed inputs: False, never raises.
    assert not verify(key.public, b"frame2", sig)
    assert not verify(NodeKey.generate().public, b"frame", sig)
    assert not verify(key.public, b"frame", bytes([sig[0] ^ 1]) + sig[1:])
    assert not verify(key.public, b"frame", sig[:-1])
    assert not verify(key.public[:-1], b"frame", sig)
    assert not verify(b"\xff" * 32, b"frame", sig)
    assert not verify(None, b"frame", sig)  # type: ignore[arg-type]
    assert not verify(key.public, b"frame", "x" * 64)  # type: ignore[arg-type]


def test_repr_does_not_show_private_key() -> None:
    key = NodeKey.generate()
    assert key.seed().hex() not in repr(key)


def test_load_or_create_persists_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "n1.key"
    first = NodeKey.load_or_create(path)
    assert path.exists()
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = NodeKey.load_or_create(path)
    assert again.public == first.public
    assert verify(first.public, b"x", again.sign(b"x"))
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_load_or_create_tightens_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "n1.key"
    key = NodeKey.load_or_create(path)
    os.chmod(path, 0o644)
    assert NodeKey.load_or_create(path).public == key.public
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("content", [b"garbage", b"spiralfast-ed25519-v1\nzz\n",
                                     b"spiralfast-ed25519-v1\nabcd\n"])
def test_load_refuses_a_file_that_is_not_a_key_and_keeps_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "n1.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="n1.key"):
        NodeKey.load_or_create(path)
    assert path.read_bytes() == content  # never overwritten


def test_self_record_bytes_canonical_and_selective() -> None:
    a = {"node_id": "n1", "incarnation": 5, "websocket_endpoint": "ws://h:1", "name": "x",
         "capabilities": ["b", "a"], "public_key": b"\x01\x02", "last_seen": 99, "state": "up"}
    b = {"last_seen": 1, "capabilities": ["b", "a"], "name": "x", "public_key": b"\x01\x02",
         "websocket_endpoint": "ws://h:1", "incarnation": 5, "node_id": "n1"}
    assert self_record_bytes(a) == self_record_bytes(b)  # order and receiver-side fields ignored
    assert b"last_seen" not in self_record_bytes(a)
    assert self_record_bytes(a) != self_record_bytes({**a, "websocket_endpoint": "ws://evil:1"})
    key = NodeKey.generate()
    sig = key.sign(self_record_bytes(a))
    assert verify(key.public, self_record_bytes(b), sig)
    assert not verify(key.public, self_record_bytes({**a, "incarnation": 6}), sig)


# -- bus frames signed by their sender's key (busauth) ----------------------------------

CH = b"chan:sf:mesh"


def _sealer(node: str, key: NodeKey | None = None, pins: Any = None, **kw: Any) -> Any:
    from spiralfast.wire.sealing import BusSealer, KeyPins

    key = key or NodeKey.generate()
    return BusSealer(node, "mesh", "tok", node_key=key, pins=pins if pins is not None else KeyPins(node, key.public), **kw)


def test_bus_frames_key_signed_pinned_and_refused_otherwise() -> None:
    from spiralfast.errors import AuthError
    from spiralfast.wire.sealing import BusSealer

    a_key = NodeKey.generate()
    a, rx = _sealer("A", a_key), _sealer("R")
    assert rx.open(CH, a.seal(CH, 1, b"frame"))[::2] == ("A", memoryview(b"frame"))  # the legitimate path
    # Another key naming A: refused, counted, and A's pin (and replay state) untouched.
    impostor = _sealer("A")
    with pytest.raises(AuthError, match="another key"):
        rx.open(CH, impostor.seal(CH, 2, b"forged"))
    # The token alone (no key): refused.
    with pytest.raises(AuthError, match="not signed"):
        rx.open(CH, BusSealer("A", "mesh", "tok").seal(CH, 3, b"forged"))
    # A signature that does not verify (a byte of the frame changed after signing: the MAC
    # is recomputed by an insider holding the token, the key signature cannot be).
    f = bytearray(a.seal(CH, 4, b"frame"))
    f[-1] ^= 1
    with pytest.raises(AuthError):
        rx.open(CH, bytes(f))
    assert rx.stats["key_mismatch"] == 1 and rx.stats["key_unsigned"] == 1
    assert bytes(rx.open(CH, a.seal(CH, 5, b"still A"))[2]) == b"still A"  # A still heard
    # A declared gone: a restart with a new key is accepted.
    rx.pins.release("A")
    assert bytes(rx.open(CH, _sealer("A").seal(CH, 1, b"new A"))[2]) == b"new A"


def test_a_key_signature_binds_the_channel_and_header_beyond_the_token() -> None:
    """An insider holding the token re-computes the MAC of A's frame after changing its
    header (its counter) or channel: the MAC passes, A's key signature does not."""
    import hashlib
    import hmac

    from spiralfast.errors import AuthError
    from spiralfast.wire.sealing import TAG_SIZE

    a, rx = _sealer("A"), _sealer("R")
    sealed = bytearray(a.seal(CH, 1, b"frame"))
    n = sealed[1]
    end = 2 + n + 24
    sealed[2 + n + 8] ^= 1  # another counter
    body = end + TAG_SIZE
    sealed[end:body] = hmac.new(rx.key, CH + b"\0\1" + bytes(sealed[1:end]) + bytes(sealed[body + 96:]),
                                hashlib.sha256).digest()[:TAG_SIZE]
    with pytest.raises(AuthError, match="key signature"):
        rx.open(CH, bytes(sealed))
    assert rx.stats["key_forged"] == 1 and rx.stats["forged"] == 0


def test_epoch_ceiling_refuses_an_extreme_epoch_and_never_locks_out() -> None:
    from spiralfast.errors import AuthError

    key = NodeKey.generate()
    rx = _sealer("R")
    liar = _sealer("A", key, epoch_ms=(1 << 64) - 1)
    with pytest.raises(AuthError, match="epoch"):
        rx.open(CH, liar.seal(CH, 1, b"x"))
    assert rx.stats["future_epoch"] == 1
    real = _sealer("A", key)  # the real node (same key), and after a restart (a later epoch)
    assert bytes(rx.open(CH, real.seal(CH, 1, b"ok"))[2]) == b"ok"
    restarted = _sealer("A", key, epoch_ms=real.epoch + 1)
    assert bytes(rx.open(CH, restarted.seal(CH, 1, b"again"))[2]) == b"again"
    # Unsigned meshes (sign_bus_frames off) get the ceiling too.
    from spiralfast.wire.sealing import BusSealer

    plain_rx, plain = BusSealer("R", "mesh", "tok", sign=False), BusSealer("A", "mesh", "tok", epoch_ms=(1 << 64) - 1)
    with pytest.raises(AuthError, match="epoch"):
        plain_rx.open(CH, plain.seal(CH, 1, b"x"))


def test_handshake_proves_the_node_key() -> None:
    from spiralfast.protocol.handshake import Handshake
    from spiralfast.wire import schema

    ka, kb = NodeKey.generate(), NodeKey.generate()
    a = Handshake("A", "m", "t", outbound=True, record={"node_id": "A", "metadata": {"public_key": ka.public.hex()}},
                  node_key=ka)
    b = Handshake("B", "m", "t", outbound=False, record={"node_id": "B"}, node_key=kb)
    out_a, out_b = a.start(), b.start()
    replies = b.receive(*out_a[0]) + []
    auth_a = a.receive(*out_b[0])
    assert replies == [] and auth_a[0][0] == schema.KIND_AUTH
    auth_b = b.receive(*auth_a[0])
    assert b.state == "ready" and b.peer_key == ka.public
    a.receive(*auth_b[0])
    assert a.state == "ready" and a.peer_key == kb.public
    # A signature made for another connection (other nonces) or by another key is refused.
    c = Handshake("C", "m", "t", outbound=False, record={"node_id": "C"}, node_key=NodeKey.generate())
    c.start()
    c.receive(*out_a[0])
    forged = schema.Auth(auth_a[0][1].proof, auth_a[0][1].node, ka.public, auth_a[0][1].sig)
    c.receive(schema.KIND_AUTH, forged)
    assert c.state == "failed"  # the token proof is bound to the nonces too; so is the key signature
    d = Handshake("B", "m", "t", outbound=False, record={"node_id": "B"}, node_key=kb, nonce=b.nonce)
    d.start()
    d.receive(*out_a[0])
    wrong = schema.Auth(auth_a[0][1].proof, auth_a[0][1].node, kb.public, auth_a[0][1].sig)
    d.receive(schema.KIND_AUTH, wrong)
    assert d.state == "failed" and "key" in str(d.error)


# -- sequence ids only from their origin (EventSink, both twins) -------------------------

def _sink_run(impl: Any) -> tuple[Any, ...]:
    from spiralfast.wire import _codec_py, schema
    from tests.test_fastpath import FakeDispatcher

    core = FakeDispatcher()
    core.handlers["e"] = [lambda env: core.got.append(("h", env))]
    sink = impl.EventSink(core, b"me", impl.Dedupe(64))
    sink.claim("aaaaaaaaaaaas", "A")

    def frame(*evs: tuple[str, str, bytes]) -> bytes:
        w = _codec_py.FrameWriter()
        for eid, src, target in evs:
            w.add(schema.KIND_EVENT, 0, target, eid.encode(), schema.Event(eid, "e", src, 1.0, None, None))
        return w.finish()

    out = []
    out.append(len(sink.receive(frame(("aaaaaaaaaaaas-1", "A", b"")), True, "A")))  # A's own: delivered
    out.append(len(sink.receive(frame(("aaaaaaaaaaaas-2", "A", b""), ("aaaaaaaaaaaas-3", "M", b""),
                                      ("bbbbbbbbbbbbs-1", "A", b"")), True, "M")))  # all three refused
    out.append(sink.foreign)
    out.append(len(sink.receive(frame(("aaaaaaaaaaaas-2", "A", b"")), True, "A")))  # A's seq 2 not taken
    sink.receive(frame(("aaaaaaaaaaaax-1", "A", b"me")), True, "B")  # for us, relayed by B
    out.append([m.msg_id for m in sink.relayed])
    out.append(sink.receive(frame(("bbbbbbbbbbbbs-2", "M", b"")), True, "M") == [])  # M's own origin
    sink.release("A")
    out.append(sorted(sink.owners.values()))
    # A made-up origin per message: at most MAX_FIRST_USES taken, then refused.
    before = sink.foreign
    sink.receive(frame(*[(f"{i:012x}s-1", "M", b"") for i in range(20)]), True, "M")
    out.append(sink.foreign - before)
    got = [(tag, env["source_node"], env["event_id"]) for tag, env in core.got]
    return (*out, got, sink.duplicates)


@pytest.mark.parametrize("twins", ["fastpath"], indirect=True)
def test_sequence_ids_accepted_only_from_their_origin_twins_identical(twins: Twins) -> None:
    results = [_sink_run(impl) for impl in twins.both]
    r = results[0]
    assert r[0] == 0 and r[1] == 0 and r[2] == 3 and r[3] == 0
    assert r[4] == [b"aaaaaaaaaaaax-1"]
    assert r[-2][:3] == [("h", "A", "aaaaaaaaaaaas-1"), ("h", "A", "aaaaaaaaaaaas-2"), ("h", "M", "bbbbbbbbbbbbs-2")]
    assert len(r[-2]) == 3 + 7
    assert r[7] == 20 - 7  # M already owns one origin: 7 more first uses, then refused
    assert all(x == r for x in results[1:]), results
