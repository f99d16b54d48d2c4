"""spiralfast.signing: a node's own Ed25519 key, its file, and canonical self-record bytes."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from spiralfast.signing import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeKey, self_record_bytes, verify


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
