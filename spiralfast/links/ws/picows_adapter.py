"""picows' private names, in one place.

The node serves its port with picows' own server protocol, built by hand, so that a
thin first reader (:class:`spiralfast.ops.server.HeadShim`) can count each connection
from accept, run TLS with the node's handshake timeout and answer ``HEAD``, then hand
the stream to picows.  picows offers no public way to do that: its public
``ws_create_server`` builds the protocol itself.  So this module, and only this module,
uses three private names of picows:

- ``picows.picows.WSProtocol`` constructed with 15 positional arguments (the list
  ``picows.api.ws_create_server`` passes it);
- ``picows.picows._parse_http_request`` (the request-head parser, for ``HEAD``);
- the ``picows`` logger naming of ``picows.api._resolve_logger`` (rebuilt here from its
  documented behaviour: ``logger_name`` "x" logs as ``picows.x``).

They are used only when the installed picows is a version in :data:`TESTED_VERSIONS`
(``tests/test_picows_contract.py`` fails loudly when what we rely on changes) and
``SPIRALFAST_PICOWS_PUBLIC`` is not set.  Otherwise the node serves through picows'
public ``ws_create_server`` (:func:`create_public_server`): HTTP, the dashboard and mesh
WebSockets all work, but ``HEAD`` is not answered and connections are counted from
their request rather than from accept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import picows
from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows import ws_create_server as _public_ws_create_server  # bound now: a test may patch picows'

#: picows releases whose private names above were checked (tests/test_picows_contract.py).
TESTED_VERSIONS = frozenset({"2.3.1"})
#: Set (to anything but "" or "0") to serve through picows' public API whatever its version.
FORCE_PUBLIC_ENV = "SPIRALFAST_PICOWS_PUBLIC"
#: The parameters of ``WSProtocol.__init__`` we pass, in order (checked by the contract test).
WSPROTOCOL_PARAMS = (
    "host_port", "ws_path", "is_client_side", "ws_listener_factory", "logger", "disconnect_on_exception",
    "websocket_handshake_timeout", "enable_auto_ping", "auto_ping_idle_timeout", "auto_ping_reply_timeout",
    "auto_ping_strategy", "enable_auto_pong", "max_frame_size", "extra_headers", "read_buffer_init_size",
)
#: The listener factory picows calls with each parsed request.
ListenerFactory = Callable[[WSUpgradeRequest], Any]

log = logging.getLogger("spiralfast.ops.picows")
_warned = False


def installed_version() -> str:
    return str(getattr(picows, "__version__", "?"))


def _private_names() -> tuple[Any, Any] | None:
    try:
        from picows.picows import WSProtocol, _parse_http_request  # type: ignore[attr-defined]
    except ImportError:
        return None
    return WSProtocol, _parse_http_request


def private_path() -> bool:
    """Whether the private path is used: a tested picows, its names present, not forced off."""
    if os.environ.get(FORCE_PUBLIC_ENV, "") not in ("", "0"):
        return False
    return installed_version() in TESTED_VERSIONS and _private_names() is not None


def server_logger(logger_name: str | logging.Logger | None) -> logging.Logger:
    """picows' logger for ``logger_name``, named as its public ``logger_name`` argument says."""
    if isinstance(logger_name, logging.Logger):
        return logger_name
    return logging.getLogger(f"picows.{logger_name if logger_name is not None else 'server'}")


def server_protocol(factory: ListenerFactory, *, logger: logging.Logger,
                    handshake_timeout: float | None, max_frame_size: int,
                    read_buffer_init_size: int) -> asyncio.BufferedProtocol:
    """picows' server-side protocol for one connection (the private path).  No auto ping,
    no auto pong: the link answers pings itself (a guest's count as pre-auth frames)."""
    names = _private_names()
    if names is None:  # pragma: no cover - private_path() said yes
        raise RuntimeError(f"picows {installed_version()} has no WSProtocol: use the public path")
    ws_protocol = names[0]
    proto: asyncio.BufferedProtocol = ws_protocol(
        None, None, False, factory, logger,
        True,  # disconnect_on_exception
        handshake_timeout,
        False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto ping
        False,  # no auto pong
        max_frame_size, None, read_buffer_init_size,
    )
    return proto


def parse_request(raw: bytes) -> WSUpgradeRequest:
    """A request head (``GET ...`` up to, not including, the blank line) as picows parses it."""
    names = _private_names()
    if names is None:  # pragma: no cover - private_path() said yes
        raise RuntimeError(f"picows {installed_version()} has no request parser")
    req: WSUpgradeRequest = names[1](raw)
    return req


async def create_public_server(factory: ListenerFactory, *, logger_name: str | None,
                               handshake_timeout: float | None, max_frame_size: int,
                               read_buffer_init_size: int, ssl_ctx: ssl.SSLContext | None = None,
                               **kwargs: Any) -> asyncio.Server:
    """The fallback: picows' public ``ws_create_server`` with the same listener factory and
    limits (TLS, if any, by the server with ``handshake_timeout``)."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("picows %s: serving through its public API (tested: %s); HEAD requests are not answered "
                    "and connections are counted from their request", installed_version(),
                    ", ".join(sorted(TESTED_VERSIONS)))
    if ssl_ctx is not None:
        kwargs.update(ssl=ssl_ctx, ssl_handshake_timeout=handshake_timeout or 5.0)
    server: asyncio.Server = await _public_ws_create_server(
        factory, websocket_handshake_timeout=handshake_timeout, logger_name=logger_name,
        enable_auto_ping=False, enable_auto_pong=False, max_frame_size=max_frame_size,
        read_buffer_init_size=read_buffer_init_size, **kwargs)
    return server
