"""The joining handshake, sans-I/O: messages in, messages out, no sockets or clocks.

Both sides open with ``Hello`` (node id, mesh name, protocol version, a fresh nonce,
role), which carries nothing else: the node record travels only after the peer has
proved the token.  Then the dialling side proves first::

    dialler -> Auth(proof("dial"), record)      listener verifies, then
    listener -> Auth(proof("listen"), record)   dialler verifies; both are ready.

A proof is ``HMAC-SHA256(token, label | direction | both nonces | both ids | both
roles)``: it binds the whole transcript, so a proof computed on one connection is
worthless on another (no reflection: the listener proves only after the dialler has,
and never in the dialler's direction), and a captured handshake cannot be replayed
(fresh nonces).  Without a token the same messages flow with empty proofs.

The token proves membership only.  A node also proves *which* member it is: its
``Auth`` carries its Ed25519 public key and its signature of the same transcript
(``key_transcript``), checked by the receiver (``peer_key`` then holds the proven
key).  The node keeping a link to a node id thus knows the key behind it, and a
newcomer claiming that id and incarnation must prove the same key to replace it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ..errors import AuthError, HandshakeError
from ..wire import schema
from ..wire.limits import HANDSHAKE_VERSION
from ..wire.signing import NodeKey, derive_key, verify  # derive_key: PBKDF2 over the mesh token

NONCE_SIZE = 16  # 128 bits: never repeats in practice
#: The roles a peer may claim; anything else is refused.
ROLES = ("node", "observer")
_LABEL = b"spiralfast-handshake-v2\0"
_KEY_LABEL = b"spiralfast-node-key-v1\0"


class HandshakeState(StrEnum):
    """Where one side's handshake stands (equal to its old string: ``state == "ready"``)."""

    HELLO = "hello"  # waiting for the peer's Hello
    AUTH = "auth"  # waiting for its proof
    READY = "ready"
    FAILED = "failed"  # ``error`` says why


def auth_proof(token: str, direction: bytes, dialler_nonce: bytes, listener_nonce: bytes,
               dialler_id: str, listener_id: str, dialler_role: str, listener_role: str) -> bytes:
    """The proof one side sends (``direction``: b"dial" or b"listen")."""
    msg = b"\0".join([
        _LABEL, direction, dialler_nonce, listener_nonce, dialler_id.encode(), listener_id.encode(),
        dialler_role.encode(), listener_role.encode(),
    ])
    return hmac.new(derive_key(token, "handshake"), msg, hashlib.sha256).digest()


def key_transcript(direction: bytes, dialler_nonce: bytes, listener_nonce: bytes, dialler_id: str,
                   listener_id: str, dialler_role: str, listener_role: str, public: bytes) -> bytes:
    """What a node signs with its own key in its ``Auth`` (both nonces: never replayable)."""
    return b"\0".join([
        _KEY_LABEL, direction, dialler_nonce, listener_nonce, dialler_id.encode(), listener_id.encode(),
        dialler_role.encode(), listener_role.encode(), public,
    ])


class Handshake:
    """One side of one link's handshake.

    ``state``: a :class:`HandshakeState`: ``HELLO`` (waiting for the peer's Hello),
    ``AUTH`` (waiting for its proof), ``READY`` or ``FAILED`` (``error`` says why).  ``receive`` returns the
    messages to send, as ``(kind, struct)`` pairs.

    :param outbound: this side dialled.
    :param role: this side's role (``"node"``; the CLI and dashboard are ``"observer"``).
    :param record: this side's node record (or a function making it), sent once the peer
        is verified (nodes only).
    :param node_key: this node's own key: its ``Auth`` proves it (``peer_key`` on the
        other side).
    """

    def __init__(self, node_id: str, mesh_name: str, token: str | None, *, outbound: bool,
                 role: str = "node", record: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                 nonce: bytes | None = None, node_key: NodeKey | None = None) -> None:
        self.node_id = node_id
        self.mesh_name = mesh_name
        self.token = token
        self.outbound = outbound
        self.role = role
        self.record = record
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self.state = HandshakeState.HELLO
        self.error: Exception | None = None
        self.peer_id: str | None = None
        self.peer_role = "node"
        self.peer_nonce = b""
        self.peer_record: dict[str, Any] | None = None
        self.node_key = node_key
        #: The peer's Ed25519 public key, once it proved it (None: it sent none).
        self.peer_key: bytes | None = None

    # -- protocol ------------------------------------------------------------------

    def start(self) -> list[tuple[int, Any]]:
        return [(schema.KIND_HELLO, schema.Hello(self.node_id, self.mesh_name, HANDSHAKE_VERSION, self.nonce, self.role))]

    def receive(self, kind: int, obj: Any) -> list[tuple[int, Any]]:
        """Feed one message of the handshake; anything else before ``ready`` fails it."""
        if self.state in (HandshakeState.READY, HandshakeState.FAILED):
            return []
        if kind == schema.KIND_REJECT:
            err = AuthError if "token" in obj.reason else HandshakeError
            self.error = err(f"refused by peer: {obj.reason}")
            self.state = HandshakeState.FAILED
            return []
        if self.state == HandshakeState.HELLO and kind == schema.KIND_HELLO:
            return self._on_hello(obj)
        if self.state == HandshakeState.AUTH and kind == schema.KIND_AUTH:
            return self._on_auth(obj)
        return self._fail(HandshakeError(f"message kind {kind} before the handshake completed"))

    def _on_hello(self, h: schema.Hello) -> list[tuple[int, Any]]:
        if h.mesh_name != self.mesh_name:
            return self._fail(HandshakeError(f"wrong mesh name {h.mesh_name[:64]!r}"))
        if h.protocol != HANDSHAKE_VERSION:
            return self._fail(HandshakeError(f"unsupported protocol version {h.protocol}"))
        if h.role not in ROLES:
            return self._fail(HandshakeError(f"unknown role {h.role[:32]!r}"))
        if self.outbound and h.role != "node":
            return self._fail(HandshakeError("dialled a node that is not a node"))
        if not self.outbound and self.role == "observer":
            return self._fail(HandshakeError("observers do not accept connections"))
        if not h.node_id or (h.node_id == self.node_id):
            return self._fail(HandshakeError(f"bad or duplicate node id {h.node_id[:64]!r}"))
        if len(h.nonce) != NONCE_SIZE or h.nonce == self.nonce:
            return self._fail(HandshakeError("bad nonce"))
        self.peer_id, self.peer_nonce, self.peer_role = h.node_id, h.nonce, h.role
        self.state = HandshakeState.AUTH
        if self.outbound:  # the dialling side proves first
            return [(schema.KIND_AUTH, self._auth(b"dial"))]
        return []

    def _on_auth(self, a: schema.Auth) -> list[tuple[int, Any]]:
        theirs = b"listen" if self.outbound else b"dial"
        if not self.token and a.proof:
            return self._fail(AuthError("the peer uses a token and this node has none (not the same mesh)"))
        if self.token and not a.proof:
            return self._fail(AuthError("this mesh requires a token (none given)"))
        if self.token and not hmac.compare_digest(self._proof(theirs), a.proof):
            return self._fail(AuthError("wrong token"))
        self.peer_record = a.node if isinstance(a.node, dict) else None
        if a.key or a.sig:
            if not verify(a.key, self._transcript(theirs, a.key, peer=True), a.sig):
                return self._fail(AuthError("bad node key signature (the peer does not hold the key it names)"))
            md = self.peer_record.get("metadata") if self.peer_record is not None else None
            named = md.get("public_key") if isinstance(md, dict) else None
            if named is not None and named != a.key.hex():
                return self._fail(AuthError("the peer's record names another key than the one it proved"))
            self.peer_key = a.key
        self.state = HandshakeState.READY
        if not self.outbound:
            return [(schema.KIND_AUTH, self._auth(b"listen"))]
        return []

    def _auth(self, direction: bytes) -> schema.Auth:
        if self.node_key is None or self.role != "node":
            return schema.Auth(self._proof(direction), self._record())
        pub = self.node_key.public
        sig = self.node_key.sign(self._transcript(direction, pub, peer=False))
        return schema.Auth(self._proof(direction), self._record(), pub, sig)

    def _transcript(self, direction: bytes, public: bytes, *, peer: bool) -> bytes:
        """The key transcript of ``direction`` (signed by us, or by the peer: ``peer``)."""
        assert self.peer_id is not None
        if self.outbound:
            return key_transcript(direction, self.nonce, self.peer_nonce, self.node_id, self.peer_id,
                                  self.role, self.peer_role, public)
        return key_transcript(direction, self.peer_nonce, self.nonce, self.peer_id, self.node_id,
                              self.peer_role, self.role, public)

    def _record(self) -> dict[str, Any] | None:
        if self.role != "node":
            return None
        return self.record() if callable(self.record) else self.record

    def _proof(self, direction: bytes) -> bytes:
        if not self.token:
            return b""
        assert self.peer_id is not None
        if self.outbound:
            return auth_proof(self.token, direction, self.nonce, self.peer_nonce, self.node_id, self.peer_id,
                              self.role, self.peer_role)
        return auth_proof(self.token, direction, self.peer_nonce, self.nonce, self.peer_id, self.node_id,
                          self.peer_role, self.role)

    def fail(self, exc: Exception) -> list[tuple[int, Any]]:
        """Refuse the peer (the shell's own reasons, e.g. a duplicate node id)."""
        return self._fail(exc)

    def _fail(self, exc: Exception) -> list[tuple[int, Any]]:
        self.error = exc
        self.state = HandshakeState.FAILED
        return [(schema.KIND_REJECT, schema.Reject(str(exc)))]

    def expire(self) -> list[tuple[int, Any]]:
        """The shell's handshake timer ran out."""
        if self.state in (HandshakeState.READY, HandshakeState.FAILED):
            return []
        return self._fail(HandshakeError("handshake not completed in time"))
