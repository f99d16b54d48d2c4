"""Handshake details the mutation run (tools/mutation.sh, docs/mutation.md) found untested:
the exact bytes of the token proof and of the key transcript (a wire format: both ends
of a link must compute the same, across versions), each refusal's reason as the peer
reads it, a key without a signature, and a record that is not a dict.  In memory, no
sockets, no event loop."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from spiralfast.protocol.handshake import NONCE_SIZE, Handshake, HandshakeState, auth_proof, key_transcript
from spiralfast.wire import schema as K
from spiralfast.wire.limits import HANDSHAKE_VERSION
from spiralfast.wire.signing import NodeKey, derive_key

N1, N2 = b"\x01" * NONCE_SIZE, b"\x02" * NONCE_SIZE


def test_auth_proof_bytes() -> None:
    msg = b"spiralfast-handshake-v2\0\0dial\0" + N1 + b"\0" + N2 + b"\0A\0B\0node\0observer"
    want = hmac.new(derive_key("tok", "handshake"), msg, hashlib.sha256).digest()
    assert auth_proof("tok", b"dial", N1, N2, "A", "B", "node", "observer") == want


def test_key_transcript_bytes() -> None:
    got = key_transcript(b"listen", N1, N2, "A", "B", "node", "node", b"PUB")
    assert got == b"spiralfast-node-key-v1\0\0listen\0" + N1 + b"\0" + N2 + b"\0A\0B\0node\0node\0PUB"


def test_starting_values() -> None:
    h = Handshake("A", "m", None, outbound=True, nonce=N1)
    assert h.state is HandshakeState.HELLO and h.error is None
    assert (h.peer_id, h.peer_role, h.peer_nonce, h.peer_record, h.peer_key) == (None, "node", b"", None, None)


def hello(node_id: str = "B", mesh: str = "m", role: str = "node", nonce: bytes = N2,
          protocol: int = HANDSHAKE_VERSION) -> K.Hello:
    return K.Hello(node_id, mesh, protocol, nonce, role)


def reason(out: list[tuple[int, Any]]) -> str:
    assert len(out) == 1 and out[0][0] == K.KIND_REJECT
    return str(out[0][1].reason)


@pytest.mark.parametrize(
    ("outbound", "role", "msg", "why"),
    [
        (True, "node", hello(mesh="x" * 100), "wrong mesh name " + repr("x" * 64)),
        (True, "node", hello(role="r" * 50), "unknown role " + repr("r" * 32)),
        (True, "node", hello(role="observer"), "dialled a node that is not a node"),
        (False, "observer", hello(), "observers do not accept connections"),
        (True, "node", hello(node_id="A"), "bad or duplicate node id 'A'"),
        (True, "node", hello(nonce=N1), "bad nonce"),
    ],
)
def test_hello_refusals_say_why(outbound: bool, role: str, msg: K.Hello, why: str) -> None:
    h = Handshake("A", "m", None, outbound=outbound, role=role, nonce=N1)
    assert reason(h.receive(K.KIND_HELLO, msg)) == why


def test_a_long_node_id_is_cut_in_the_reason() -> None:
    h = Handshake("A" * 70, "m", None, outbound=True, nonce=N1)
    assert reason(h.receive(K.KIND_HELLO, hello(node_id="A" * 70))) == "bad or duplicate node id " + repr("A" * 64)


def listener_after_hello(token: str | None) -> Handshake:
    h = Handshake("B", "m", token, outbound=False, nonce=N2)
    assert h.receive(K.KIND_HELLO, hello(node_id="A", nonce=N1)) == []
    return h


@pytest.mark.parametrize(
    ("token", "proof", "why"),
    [
        (None, b"x", "the peer uses a token and this node has none (not the same mesh)"),
        ("tok", b"", "this mesh requires a token (none given)"),
        ("tok", b"x" * 32, "wrong token"),
    ],
)
def test_auth_refusals_say_why(token: str | None, proof: bytes, why: str) -> None:
    assert reason(listener_after_hello(token).receive(K.KIND_AUTH, K.Auth(proof))) == why


def test_a_key_without_a_signature_is_refused() -> None:
    h = listener_after_hello(None)
    out = h.receive(K.KIND_AUTH, K.Auth(b"", {"node_id": "A"}, NodeKey.generate().public, b""))
    assert reason(out) == "bad node key signature (the peer does not hold the key it names)"


def test_a_signed_key_without_a_record_is_accepted() -> None:
    key = NodeKey.generate()
    h = listener_after_hello(None)
    sig = key.sign(key_transcript(b"dial", N1, N2, "A", "B", "node", "node", key.public))
    h.receive(K.KIND_AUTH, K.Auth(b"", None, key.public, sig))
    assert h.state is HandshakeState.READY and h.peer_key == key.public and h.peer_record is None


def test_a_record_naming_another_key_is_refused() -> None:
    key = NodeKey.generate()
    h = listener_after_hello(None)
    sig = key.sign(key_transcript(b"dial", N1, N2, "A", "B", "node", "node", key.public))
    rec = {"node_id": "A", "metadata": {"public_key": NodeKey.generate().public.hex()}}
    assert reason(h.receive(K.KIND_AUTH, K.Auth(b"", rec, key.public, sig))) == (
        "the peer's record names another key than the one it proved")


def test_a_record_that_is_not_a_dict_is_dropped() -> None:
    h = listener_after_hello(None)
    h.receive(K.KIND_AUTH, K.Auth(b"", ["not", "a", "record"]))  # type: ignore[arg-type]
    assert h.state is HandshakeState.READY and h.peer_record is None


def test_expiry_reason() -> None:
    h = Handshake("A", "m", None, outbound=True, nonce=N1)
    assert reason(h.expire()) == "handshake not completed in time"
    assert h.expire() == []
