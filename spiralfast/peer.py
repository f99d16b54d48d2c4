"""Per-link session: the joining handshake and the peer's identity.

Both sides send ``Hello`` (node id, mesh name, protocol version, a fresh nonce,
and the node record).  With a shared token each side then proves knowledge of it
with ``HMAC(token, "spiralfast-auth" | peer_nonce | own_nonce | own_id)``: the
proof covers the other side's fresh nonce, so a captured handshake cannot be
replayed.  Nothing but ``Hello``/``Auth`` is accepted before the session is ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from typing import TYPE_CHECKING, Any

from . import schema
from .errors import AuthError, HandshakeError
from .limits import PROTOCOL_VERSION

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.peer")

NONCE_SIZE = 16  # 128 bits: never repeats in practice


def auth_proof(token: str, peer_nonce: bytes, own_nonce: bytes, own_id: str) -> bytes:
    msg = b"spiralfast-auth\0" + peer_nonce + own_nonce + own_id.encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).digest()


class PeerSession:
    """Handshake state of one link.  ``state``: hello -> auth -> ready | closed."""

    def __init__(self, core: MeshCore, link: Any, outbound: bool) -> None:
        self.core = core
        self.link = link
        self.outbound = outbound
        self.state = "hello"
        self.nonce = os.urandom(NONCE_SIZE)
        self.peer_nonce = b""
        self.peer_id: str | None = None
        self.role = "node"
        self.peer_node: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        core = self.core
        hello = schema.Hello(
            node_id=core.node_id,
            mesh_name=core.config.mesh_name,
            protocol=PROTOCOL_VERSION,
            nonce=self.nonce,
            role="node",
            node=core._local_node_record(),
        )
        core.router.send_link(self.link, schema.KIND_HELLO, hello)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(core.config.handshake_timeout, self._timeout)

    def _timeout(self) -> None:
        if self.state != "ready":
            self.fail(HandshakeError("handshake not completed in time"))

    def fail(self, exc: Exception) -> None:
        self.core.counters["handshake_failures"] += 1
        log.warning("refusing peer %s: %s", self.peer_id or getattr(self.link, "name", "?"), exc)
        if self.state != "closed":
            try:
                self.core.router.send_link(self.link, schema.KIND_REJECT, schema.Reject(str(exc)))
            except Exception:
                pass
        self.close()
        self.link.close(str(exc))

    def close(self) -> None:
        self.state = "closed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_message(self, kind: int, obj: Any) -> None:
        """Handle a handshake message; anything else before ``ready`` is refused."""
        core = self.core
        token = core.config.auth_token
        if kind == schema.KIND_REJECT:
            log.warning("peer refused us: %s", obj.reason)
            core.counters["rejected_by_peer"] += 1
            self.close()
            self.link.close(f"refused by peer: {obj.reason}")
            return
        if self.state == "hello" and kind == schema.KIND_HELLO:
            if obj.mesh_name != core.config.mesh_name:
                return self.fail(HandshakeError(f"wrong mesh name {obj.mesh_name!r}"))
            if obj.protocol != PROTOCOL_VERSION:
                return self.fail(HandshakeError(f"unsupported protocol version {obj.protocol}"))
            if obj.role == "node" and (not obj.node_id or obj.node_id == core.node_id):
                return self.fail(HandshakeError(f"bad or duplicate node id {obj.node_id!r}"))
            if len(obj.nonce) != NONCE_SIZE:
                return self.fail(HandshakeError("bad nonce"))
            self.peer_id, self.peer_nonce, self.role = obj.node_id, obj.nonce, obj.role
            self.peer_node = obj.node
            if token:
                proof = auth_proof(token, self.peer_nonce, self.nonce, core.node_id)
                core.router.send_link(self.link, schema.KIND_AUTH, schema.Auth(proof))
                self.state = "auth"
            else:
                self._ready()
            return
        if self.state == "auth" and kind == schema.KIND_AUTH:
            assert token and self.peer_id is not None
            expected = auth_proof(token, self.nonce, self.peer_nonce, self.peer_id)
            if not hmac.compare_digest(expected, obj.proof):
                core.counters["auth_failures"] += 1
                return self.fail(AuthError("wrong auth token"))
            self._ready()
            return
        self.fail(HandshakeError(f"message kind {kind} before the handshake completed"))

    def _ready(self) -> None:
        self.state = "ready"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.core._session_ready(self)
