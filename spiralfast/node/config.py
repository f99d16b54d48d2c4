"""MeshConfig: the node's settings, validated at construction and again at start()."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError

#: MeshNode.capabilities of the old library, the default.
DEFAULT_CAPABILITIES = ("ritual_processing", "agent_hosting", "state_sync")


@dataclass
class MeshConfig:
    """Settings of one mesh node.

    The first ten fields and their defaults are those of ``spiralcodex.mesh``.

    :param node_id: this node's id; None generates a uuid4 string.
    :param websocket_host: interface to listen on; loopback unless asked otherwise.
    :param peers: ``ws://``/``wss://`` URLs of nodes to join.
    :param auth_token: shared mesh secret; peers must prove they know it (HMAC).
    :param shared_categories: state categories synchronised across nodes (None = all).
    :param interop: the old JSON format on ``ritual_channel`` / ``node_<id>``: ``"auto"``
        (JSON copies only while an old node was heard within 3 heartbeat intervals),
        True (always) or False (never).  With ``auth_token`` set, ``"auto"`` means off.
    :param max_frame_size: largest WebSocket frame accepted from a peer (bytes).
    :param handshake_timeout: seconds a peer has to complete the handshake.
    :param suspicion_timeout: seconds a peer whose link its side closed (a killed process), and
        that is heard on no other route, has to answer indirect probes before it is removed,
        whatever ``heartbeat_interval`` is (a slow or paused peer is judged by heartbeats).
    :param tombstone_ttl: seconds a delete is remembered before it is collected.
    :param max_clock_offset: seconds a remote state timestamp may be ahead of ours.
    :param ssl_certfile: serve ``wss://`` with this certificate chain (PEM; needs ssl_keyfile).
    :param ssl_keyfile: the private key of ssl_certfile (PEM).
    :param ssl_cafile: CA bundle that ``wss://`` peers' certificates are checked
        against (None: the system's CAs).
    :param capabilities: what this node offers (``MeshNode.capabilities``); task types it
        serves are added to it.
    :param rate_limit: events per second accepted from one peer link or observer (None:
        unlimited).  A member over it is slowed, never dropped.
    :param rate_burst: events one peer link or observer may send at once above rate_limit
        before it is slowed (used only with rate_limit).
    :param retransmit_buffer_bytes: bytes of its own sent events this node keeps for gap
        repair.
    :param retransmit_window: seconds this node keeps its own sent events for gap repair.
    :param persistence_path: SQLite file the node persists mesh events to (None: off).
    :param persistence_url: ``postgresql://`` URL instead of a SQLite file.
    :param persist_events: ``"mesh"`` (membership, status, alerts, errors), ``"all"``, or
        a list of event types persisted in addition to the mesh ones.
    :param persist_retention_days: stored events older than this are removed.
    :param persist_max_bytes: size cap of the event log in bytes (default 1 GiB); past it
        the oldest events are removed first (counted as ``capped``).  SQLite: the file and
        its WAL, checked after every write; PostgreSQL: an estimate of the live rows' bytes
        (tables and indexes), checked every 30 s.
    :param persist_metrics_retention_hours: the node's own metric samples
        (``system_metrics``: changed values only, all of them once an hour) older than this
        are removed.
    :param nats_url: NATS server URL, or a list of a cluster's URLs (None: no NATS link).
    :param enable_nats: use the NATS link when ``nats_url`` is set.
    :param nats_stream: also keep broadcasts in a JetStream stream for catch-up.
    :param nats_stream_max_age: seconds the stream keeps a broadcast (the oldest go first).
        A node away longer than this catches up on what is left and counts the rest lost.
    :param nats_stream_max_bytes: bytes the stream keeps (the oldest broadcasts go first).
    :param observer_port: with enable_websocket off (a node on Redis or NATS alone), still
        listen on this port of websocket_host for the CLI, the dashboard and the HTTP API
        (observers only, with the token as on the mesh port; peers are refused); 0: any free
        port; None: no port at all.
    :param key_path: file of the node's own Ed25519 key (created 0600 if missing), which
        proves on every link and bus frame that the node speaks for itself; None: a new
        key at each start (the CLI keeps it in the data directory as <node id>.key).
    :param sign_bus_frames: sign every Redis/NATS frame batch with the node's key and
        refuse frames not signed by the key pinned to their sender (off: membership only).
    :param catch_up: a node returning with its event log (a delivery cursor) asks its peers for what it missed.
    :param allowed_hosts: ``Host`` names the port answers besides IP literals, localhost,
        the listen host and the machine's name (DNS rebinding); ``*`` allows any.
    :param allowed_origins: browser origins (``https://ops.example:443``) allowed to open
        WebSockets besides the page's own (same-origin); ``*`` allows any.
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
    interop: bool | str = "auto"
    max_frame_size: int = 16 * 1024 * 1024
    handshake_timeout: float = 5.0
    suspicion_timeout: float = 3.0
    tombstone_ttl: float = 24 * 3600.0
    max_clock_offset: float = 60.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cafile: str | None = None
    capabilities: list[str] = field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    rate_limit: float | None = None
    rate_burst: int = 10_000
    retransmit_buffer_bytes: int = 64 * 1024 * 1024
    retransmit_window: float = 60.0
    persistence_path: str | None = None
    persistence_url: str | None = None
    persist_events: str | list[str] = "mesh"
    persist_retention_days: float = 30.0
    persist_max_bytes: int = 1 << 30
    persist_metrics_retention_hours: float = 24.0
    nats_url: str | list[str] | None = None
    enable_nats: bool = True
    nats_stream: bool = False
    nats_stream_max_age: float = 3600.0
    nats_stream_max_bytes: int = 256 * 1024 * 1024
    observer_port: int | None = None
    key_path: str | None = None
    sign_bus_frames: bool = True
    catch_up: bool = True
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """Every field, with the token and the secrets in URLs masked (``safetext``)."""
        from dataclasses import fields

        from ..safetext import mask_secrets

        shown = [f"{f.name}=" + ("'********'" if f.name == "auth_token" and self.auth_token is not None
                                 else mask_secrets(repr(getattr(self, f.name)))) for f in fields(self)]
        return f"MeshConfig({', '.join(shown)})"

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
        if self.interop not in (True, False, "auto"):
            raise ConfigError(f"interop must be True, False or 'auto', got {self.interop!r}")
        if isinstance(self.capabilities, str) or not all(isinstance(c, str) and c for c in self.capabilities):
            raise ConfigError(f"capabilities must be a list of names, got {self.capabilities!r}")
        self.capabilities = list(self.capabilities)
        if self.rate_limit is not None:
            _check_positive("rate_limit", self.rate_limit, "events per second")
        _check_int("rate_burst", self.rate_burst, 1, 1 << 30)
        _check_int("retransmit_buffer_bytes", self.retransmit_buffer_bytes, 0, 1 << 40)
        _check_positive("retransmit_window", self.retransmit_window)
        if self.persistence_url is not None and not str(self.persistence_url).startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"persistence_url must be a postgresql:// URL, got {self.persistence_url!r}")
        if not (self.persist_events in ("mesh", "all") or (
            isinstance(self.persist_events, (list, tuple)) and all(isinstance(t, str) for t in self.persist_events)
        )):
            raise ConfigError(f"persist_events must be 'mesh', 'all' or a list of event types, got {self.persist_events!r}")
        _check_positive("persist_retention_days", self.persist_retention_days, "days")
        _check_int("persist_max_bytes", self.persist_max_bytes, 1 << 20, 1 << 50)
        _check_positive("persist_metrics_retention_hours", self.persist_metrics_retention_hours, "hours")
        if self.nats_url is not None:
            urls = [self.nats_url] if isinstance(self.nats_url, str) else self.nats_url
            if not isinstance(urls, (list, tuple)) or not urls or not all(isinstance(u, str) for u in urls):
                raise ConfigError(f"nats_url must be a nats:// URL or a list of them, got {self.nats_url!r}")
            # each entry may itself be a comma-separated list (as the NATS link reads it)
            servers = [s.strip() for u in urls for s in u.split(",") if s.strip()]
            if not servers:
                raise ConfigError(f"nats_url must be a nats:// URL or a list of them, got {self.nats_url!r}")
            for s in servers:
                u = urlparse(s)
                try:
                    port_ok = u.port is None or u.port > 0
                except ValueError:  # not a number, or out of range
                    port_ok = False
                # the scheme as written (urlparse lower-cases it; NATS clients do not)
                if not (s.split("://", 1)[0] in ("nats", "tls", "ws", "wss") and "://" in s and u.hostname
                        and port_ok):
                    import re  # the password of a URL is never echoed

                    shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1****@", s)
                    raise ConfigError(f"nats_url: {shown!r} is not a NATS URL (nats://, tls://, ws:// or wss:// "
                                      "with a host and a port 1-65535)")
        _check_positive("nats_stream_max_age", self.nats_stream_max_age)
        _check_int("nats_stream_max_bytes", self.nats_stream_max_bytes, 1024, 1 << 50)
        if self.observer_port is not None:
            _check_int("observer_port", self.observer_port, 0, 65535)
        _check_positive("handshake_timeout", self.handshake_timeout)
        for name in ("allowed_hosts", "allowed_origins"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) and v.strip() for v in value):
                raise ConfigError(f"{name} must be a list of non-empty strings, got {value!r}")
        _check_positive("suspicion_timeout", self.suspicion_timeout)  # finite, > 0
        _check_positive("tombstone_ttl", self.tombstone_ttl)
        _check_positive("max_clock_offset", self.max_clock_offset)
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("ssl_certfile and ssl_keyfile go together")

    def interop_mode(self) -> bool | str:
        """The effective interop setting: with a token, only an explicit True is on."""
        if self.auth_token and self.interop != True:  # noqa: E712 (True, not truthy)
            return False
        return self.interop


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_positive(name: str, value: Any, unit: str = "seconds") -> None:
    """A positive, finite number (``inf`` and ``nan`` are refused alike)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive, finite number of {unit}, got {value!r}")
