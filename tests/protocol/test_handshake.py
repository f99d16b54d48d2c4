"""The joining handshake (``spiralfast.protocol.handshake``), sans-I/O: two ``Handshake``
objects exchange messages in memory (no sockets, no clock, no event loop)."""

from __future__ import annotations

from typing import Any

import pytest

from spiralfast.errors import AuthError, HandshakeError
from spiralfast.protocol.handshake import NONCE_SIZE, Handshake, HandshakeState, auth_proof
from spiralfast.wire import schema as K
from spiralfast.wire.limits import HANDSHAKE_VERSION
from spiralfast.wire.signing import NodeKey

H = HandshakeState


def _run(a: Handshake, b: Handshake, *, tamper: Any = None) -> list[tuple[str, int]]:
    """Carry messages between ``a`` (dialler) and ``b`` until both are quiet; returns
    (sender, kind) of every message.  ``tamper(kind, obj)`` may replace a message."""
    sent: list[tuple[str, int]] = []
    inflight = [(a, m) for m in a.start()] + [(b, m) for m in b.start()]
    while inflight:
        src, (kind, obj) = inflight.pop(0)
        sent.append((src.node_id, kind))
        if tamper is not None:
            obj = tamper(kind, obj)
        dst = b if src is a else a
        inflight += [(dst, m) for m in dst.receive(kind, obj)]
    return sent


def _pair(token_a: str | None = "tok", token_b: str | None = "tok", **kw: Any) -> tuple[Handshake, Handshake]:
    a = Handshake("A", "m", token_a, outbound=True, record={"node_id": "A"}, **kw.pop("a", {}))
    b = Handshake("B", "m", token_b, outbound=False, record={"node_id": "B"}, **kw.pop("b", {}))
    return a, b


def test_the_dialler_proves_first_and_both_become_ready() -> None:
    a, b = _pair()
    sent = _run(a, b)
    assert sent == [("A", K.KIND_HELLO), ("B", K.KIND_HELLO), ("A", K.KIND_AUTH), ("B", K.KIND_AUTH)]
    assert a.state is H.READY and b.state is H.READY and a.state == "ready"
    assert (a.peer_id, b.peer_id) == ("B", "A") and a.peer_record == {"node_id": "B"}
    assert a.error is None and b.error is None


def test_the_record_may_be_a_function_called_once_the_peer_is_verified() -> None:
    calls: list[int] = []

    def record() -> dict[str, Any]:
        calls.append(1)
        return {"node_id": "A", "n": len(calls)}

    a = Handshake("A", "m", "tok", outbound=True, record=record)
    b = Handshake("B", "m", "tok", outbound=False)
    a.start()
    assert calls == []  # nothing travels before the peer's Hello
    _run(a, b)
    assert calls == [1] and b.peer_record == {"node_id": "A", "n": 1}


@pytest.mark.parametrize("tokens", [("tok", "other"), (None, "tok"), ("tok", None)])
def test_mismatched_tokens_admit_neither_side(tokens: tuple[str | None, str | None]) -> None:
    a, b = _pair(*tokens)
    _run(a, b)
    assert H.READY not in (a.state, b.state)
    assert isinstance(a.error or b.error, AuthError)


def test_no_token_on_either_side_joins_with_empty_proofs() -> None:
    a, b = _pair(None, None)
    _run(a, b)
    assert a.state is H.READY and b.state is H.READY


@pytest.mark.parametrize(("hello", "why"), [
    (K.Hello("X", "other", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "node"), "wrong mesh name"),
    (K.Hello("X", "m", HANDSHAKE_VERSION + 99, b"n" * NONCE_SIZE, "node"), "unsupported protocol"),
    (K.Hello("X", "m", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "mallory"), "unknown role"),
    (K.Hello("B", "m", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "node"), "duplicate node id"),
    (K.Hello("", "m", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "node"), "bad or duplicate"),
    (K.Hello("X", "m", HANDSHAKE_VERSION, b"short", "node"), "bad nonce"),
])
def test_a_bad_hello_is_refused_with_a_reason(hello: K.Hello, why: str) -> None:
    b = Handshake("B", "m", "tok", outbound=False)
    b.start()
    out = b.receive(K.KIND_HELLO, hello)
    assert b.state is H.FAILED and isinstance(b.error, HandshakeError) and why in str(b.error)
    assert [k for k, _ in out] == [K.KIND_REJECT] and why in out[0][1].reason
    assert b.receive(K.KIND_HELLO, hello) == []  # a failed handshake says nothing more


def test_a_replayed_own_nonce_is_refused() -> None:
    b = Handshake("B", "m", "tok", outbound=False, nonce=b"x" * NONCE_SIZE)
    b.receive(K.KIND_HELLO, K.Hello("X", "m", HANDSHAKE_VERSION, b"x" * NONCE_SIZE, "node"))
    assert b.state is H.FAILED and "nonce" in str(b.error)


def test_roles_a_dialler_reaches_only_nodes_and_observers_accept_nothing() -> None:
    a = Handshake("A", "m", None, outbound=True)
    a.receive(K.KIND_HELLO, K.Hello("B", "m", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "observer"))
    assert a.state is H.FAILED and "not a node" in str(a.error)
    o = Handshake("O", "m", None, outbound=False, role="observer")
    o.receive(K.KIND_HELLO, K.Hello("B", "m", HANDSHAKE_VERSION, b"n" * NONCE_SIZE, "node"))
    assert o.state is H.FAILED and "observers do not accept" in str(o.error)


def test_an_observer_joins_and_sends_no_record() -> None:
    a = Handshake("O", "m", "tok", outbound=True, role="observer", record={"node_id": "O"})
    b = Handshake("B", "m", "tok", outbound=False, record={"node_id": "B"})
    _run(a, b)
    assert a.state is H.READY and b.state is H.READY
    assert b.peer_role == "observer" and b.peer_record is None


def test_anything_but_the_handshake_before_ready_fails_it() -> None:
    b = Handshake("B", "m", "tok", outbound=False)
    out = b.receive(K.KIND_EVENT, None)
    assert b.state is H.FAILED and "before the handshake completed" in str(b.error)
    assert [k for k, _ in out] == [K.KIND_REJECT]
    a = Handshake("A", "m", "tok", outbound=True)
    a.receive(K.KIND_AUTH, K.Auth(b"p" * 32))  # a proof before any Hello
    assert a.state is H.FAILED


def test_a_reject_from_the_peer_fails_with_its_reason() -> None:
    a = Handshake("A", "m", "tok", outbound=True)
    assert a.receive(K.KIND_REJECT, K.Reject("wrong token")) == []
    assert a.state is H.FAILED and isinstance(a.error, AuthError) and "refused by peer" in str(a.error)
    c = Handshake("C", "m", "tok", outbound=True)
    c.receive(K.KIND_REJECT, K.Reject("node id 'C' is already in the mesh"))
    assert type(c.error) is HandshakeError


def test_the_shell_may_fail_or_expire_a_handshake() -> None:
    a = Handshake("A", "m", "tok", outbound=True)
    out = a.expire()
    assert a.state is H.FAILED and "not completed in time" in str(a.error)
    assert [k for k, _ in out] == [K.KIND_REJECT]
    assert a.expire() == []  # once
    r, s = _pair()
    _run(r, s)
    assert s.expire() == [] and s.state is H.READY  # a finished handshake never expires
    b = Handshake("B", "m", "tok", outbound=False)
    out = b.fail(HandshakeError("duplicate"))
    assert b.state is H.FAILED and out[0][1].reason == "duplicate"


def test_a_proof_is_bound_to_its_transcript() -> None:
    args = ("tok", b"dial", b"1" * 16, b"2" * 16, "A", "B", "node", "node")
    p = auth_proof(*args)
    assert len(p) == 32 and auth_proof(*args) == p
    for i, other in ((1, b"listen"), (2, b"3" * 16), (4, "C"), (6, "observer"), (0, "tok2")):
        changed = list(args)
        changed[i] = other
        assert auth_proof(*changed) != p, i


def test_a_proof_captured_on_one_connection_fails_on_another() -> None:
    captured: list[Any] = []

    def keep(kind: int, obj: Any) -> Any:
        if kind == K.KIND_AUTH:
            captured.append(obj)
        return obj

    a, b = _pair()
    _run(a, b, tamper=keep)
    replay = captured[0]  # A's proof, for A's and B's nonces of that connection
    b2 = Handshake("B", "m", "tok", outbound=False)
    b2.start()
    b2.receive(K.KIND_HELLO, K.Hello("A", "m", HANDSHAKE_VERSION, b"z" * NONCE_SIZE, "node"))
    out = b2.receive(K.KIND_AUTH, replay)
    assert b2.state is H.FAILED and "wrong token" in str(b2.error) and out[0][0] == K.KIND_REJECT


# -- node keys -----------------------------------------------------------------------------


def test_node_keys_are_proven_both_ways() -> None:
    ka, kb = NodeKey.generate(), NodeKey.generate()
    a, b = _pair(a={"node_key": ka}, b={"node_key": kb})
    _run(a, b)
    assert a.state is H.READY and b.state is H.READY
    assert a.peer_key == kb.public and b.peer_key == ka.public


def test_a_node_without_a_key_proves_none() -> None:
    a, b = _pair(b={"node_key": NodeKey.generate()})
    _run(a, b)
    assert a.state is H.READY and b.peer_key is None and a.peer_key is not None


def test_a_signature_by_another_key_fails() -> None:
    ka, other = NodeKey.generate(), NodeKey.generate()

    def swap_key(kind: int, obj: Any) -> Any:
        if kind == K.KIND_AUTH and obj.key == ka.public:
            return K.Auth(obj.proof, obj.node, other.public, obj.sig)  # claims a key it does not hold
        return obj

    a, b = _pair(a={"node_key": ka})
    _run(a, b, tamper=swap_key)
    assert b.state is H.FAILED and isinstance(b.error, AuthError) and "signature" in str(b.error)


def test_a_record_naming_another_key_than_the_proven_one_fails() -> None:
    ka = NodeKey.generate()
    a = Handshake("A", "m", "tok", outbound=True, node_key=ka,
                  record={"node_id": "A", "metadata": {"public_key": NodeKey.generate().public.hex()}})
    b = Handshake("B", "m", "tok", outbound=False, record={"node_id": "B"})
    _run(a, b)
    assert b.state is H.FAILED and "names another key" in str(b.error)
