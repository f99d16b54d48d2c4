"""The WebSocket transport's settings, and the small typed surfaces it is given by the
node: the HTTP responder for plain requests on its port and the server factory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import picows

#: What picows' server factory returns for one upgrade request.
Upgrade = picows.WSListener | picows.WSUpgradeResponseWithListener | None


@dataclass
class WSSettings:
    """What the WebSocket transport needs to know (from ``MeshConfig``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_frame_size: int = 16 * 1024 * 1024  # largest reassembled mesh frame
    handshake_timeout: float = 5.0
    heartbeat_interval: float = 30.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cafile: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # added to the defaults (see Origins)
    allowed_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: object) -> WSSettings:
        c = getattr  # the node's MeshConfig, read by name (this layer does not import the node's)
        return cls(c(cfg, "websocket_host"), c(cfg, "websocket_port"), c(cfg, "max_frame_size"),
                   c(cfg, "handshake_timeout"), c(cfg, "heartbeat_interval"), c(cfg, "ssl_certfile"),
                   c(cfg, "ssl_keyfile"), c(cfg, "ssl_cafile"),
                   tuple(c(cfg, "allowed_hosts", None) or ()), tuple(c(cfg, "allowed_origins", None) or ()))


class LiveConnection(Protocol):
    """A dashboard connection on the port (``ops``' live feed), until it is admitted."""

    admitted: bool
    closed: bool

    def close(self, reason: str = "") -> None: ...


class HttpResponder(Protocol):
    """Answers plain HTTP requests (and dashboard upgrades) on the port."""

    doors: object

    def respond(self, request: picows.WSUpgradeRequest) -> Upgrade: ...


#: Builds the server: picows' ``ws_create_server`` arguments, plus ``doors`` (the transport).
ServeFn = Callable[..., Awaitable[asyncio.Server]]
