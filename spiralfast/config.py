"""MeshConfig: the node's settings, validated at construction and again at start()."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError


@dataclass
class MeshConfig:
    """Settings of one mesh node.

    The first ten fields and their defaults are those of ``spiralcodex.mesh``.

    :param node_id: this node's id; None generates a uuid4 string.
    :param websocket_host: interface to listen on; loopback unless asked otherwise.
    :param peers: ``ws://``/``wss://`` URLs of nodes to join.
    :param auth_token: shared mesh secret; peers must prove they know it (HMAC).
    :param shared_categories: state categories synchronised across nodes (None = all).
    :param interop: speak the old JSON format on ``ritual_channel`` / ``node_<id>``.
    :param max_frame_size: largest WebSocket frame accepted from a peer (bytes).
    :param outbox_capacity: queued frames per link before the slow-peer policy applies.
    :param handshake_timeout: seconds a peer has to complete the handshake.
    :param tombstone_ttl: seconds a delete is remembered before it is collected.
    :param max_clock_offset: seconds a remote state timestamp may be ahead of ours.
    :param ssl_certfile / ssl_keyfile: serve ``wss://`` with these files.
    :param ssl_cafile: CA bundle that ``wss://`` peers' certificates are checked
        against (None: the system's CAs).
    """

    node_id: str | None = None
    mesh_name: str = "spiral_codex_mesh"
    websocket_port: int = 8765
    redis_url: str = "redis://localhost:6379"
    heartbeat_interval: float = 30.0
    sync_interval: float = 10.0
    max_recursion_depth: int = 42
    enable_redis: bool = True
    enable_websocket: bool = True
    ritual_channel: str = "spiral_ritual_events"
    websocket_host: str = "127.0.0.1"
    peers: list[str] = field(default_factory=list)
    auth_token: str | None = None
    shared_categories: Iterable[str] | None = None
    interop: bool = True
    max_frame_size: int = 16 * 1024 * 1024
    outbox_capacity: int = 4096
    handshake_timeout: float = 5.0
    tombstone_ttl: float = 24 * 3600.0
    max_clock_offset: float = 60.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cafile: str | None = None

    def __post_init__(self) -> None:
        if self.peers is None:
            self.peers = []
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) naming the first invalid field."""
        if self.node_id is not None and (not isinstance(self.node_id, str) or not self.node_id.strip()):
            raise ConfigError(f"node_id must be a non-empty string or None, got {self.node_id!r}")
        if self.node_id is not None and len(self.node_id.encode()) > 200:
            raise ConfigError("node_id must be at most 200 bytes")
        if not isinstance(self.mesh_name, str) or not self.mesh_name:
            raise ConfigError(f"mesh_name must be a non-empty string, got {self.mesh_name!r}")
        _check_int("websocket_port", self.websocket_port, 0, 65535)
        _check_positive("heartbeat_interval", self.heartbeat_interval)
        _check_positive("sync_interval", self.sync_interval)
        _check_int("max_recursion_depth", self.max_recursion_depth, 0, 1 << 30)
        if not isinstance(self.ritual_channel, str) or not self.ritual_channel:
            raise ConfigError(f"ritual_channel must be a non-empty string, got {self.ritual_channel!r}")
        if not isinstance(self.websocket_host, str) or not self.websocket_host:
            raise ConfigError(f"websocket_host must be a host name or address, got {self.websocket_host!r}")
        if self.enable_redis:
            u = urlparse(str(self.redis_url))
            if u.scheme not in ("redis", "rediss", "unix") or (u.scheme != "unix" and not u.hostname):
                raise ConfigError(f"redis_url must be redis://, rediss:// or unix://, got {self.redis_url!r}")
        if isinstance(self.peers, str) or not isinstance(self.peers, (list, tuple)):
            raise ConfigError(f"peers must be a list of ws:// or wss:// URLs, got {self.peers!r}")
        for p in self.peers:
            u = urlparse(str(p))
            try:
                port_ok = u.port is None or 0 < u.port < 65536
            except ValueError:
                port_ok = False
            if u.scheme not in ("ws", "wss") or not u.hostname or not port_ok:
                raise ConfigError(f"peers entry must be a ws:// or wss:// URL, got {p!r}")
        if self.auth_token is not None and (not isinstance(self.auth_token, str) or not self.auth_token):
            raise ConfigError("auth_token must be a non-empty string or None")
        if self.shared_categories is not None:
            if isinstance(self.shared_categories, str):
                raise ConfigError("shared_categories must be an iterable of names, not one string")
            self.shared_categories = [str(c) for c in self.shared_categories]
        _check_int("max_frame_size", self.max_frame_size, 1024, 1 << 30)
        _check_int("outbox_capacity", self.outbox_capacity, 1, 1 << 24)
        _check_positive("handshake_timeout", self.handshake_timeout)
        _check_positive("tombstone_ttl", self.tombstone_ttl)
        _check_positive("max_clock_offset", self.max_clock_offset)
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("ssl_certfile and ssl_keyfile go together")

    def resolved_node_id(self) -> str:
        return self.node_id or str(uuid.uuid4())


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
