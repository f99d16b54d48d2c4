"""Transports.  Each implements ``spiralfast.link.Link`` and is given a
``LinkHost`` (the node) and its own settings, never the node's internals."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core import MeshCore

log = logging.getLogger("spiralfast.links")


async def start_links(node: MeshCore) -> None:
    """Bring up the transports ``node.config`` enables (SPEC: a missing Redis or an
    unbindable port warns once, turns that feature off and the node goes on)."""
    cfg = node.config
    if cfg.enable_websocket:
        from .ws import WebSocketTransport, WSSettings

        ws = WebSocketTransport(node.host, WSSettings.from_config(cfg), http=_http(node))
        try:
            await ws.start()
        except OSError as exc:
            log.warning("WebSocket port %s:%s unavailable (%s); running without WebSocket",
                        cfg.websocket_host, cfg.websocket_port, exc)
            cfg.enable_websocket = False
        else:
            node.ws = ws
            cfg.websocket_port = ws.port
            node.local_node.websocket_endpoint = ws.endpoint
    if cfg.enable_redis:
        from .redis import RedisSettings, RedisTransport

        if cfg.auth_token and cfg.interop is True:
            log.warning("interop=True with a token: the old JSON format cannot be authenticated, so anyone who can "
                        "publish on Redis channel %r or node_%s can inject events and membership changes as an "
                        "old-format node", cfg.ritual_channel, node.node_id)

        node.redis = RedisTransport(node.host, RedisSettings.from_config(cfg, node.node_id))
        node.sender.legacy = node.redis
        if not await node.redis.start():
            cfg.enable_redis = False  # until Redis appears; the transport keeps trying
    if cfg.enable_nats and cfg.nats_url:
        try:
            import nats  # noqa: F401  (nats-py: the optional dependency of this link)
        except ImportError:
            log.warning("nats_url is set but nats-py is not installed (pip install 'spiralfast[nats]'); "
                        "running without NATS")
            cfg.enable_nats = False
        else:
            from .nats import NatsSettings, NatsTransport

            node.nats = NatsTransport(node.host, NatsSettings.from_config(cfg, node.node_id))
            await node.nats.start()  # False: warned once; it connects when a server appears
    if node.loopback is not None:
        node.loopback.attach(node)
    if node.ws is not None:
        for url in cfg.peers:
            node.ws.dial(url, permanent=True)
    elif cfg.peers:
        log.warning("peers %s ignored: WebSocket is disabled", cfg.peers)


async def stop_links(node: MeshCore) -> None:
    if node.redis is not None:
        await node.redis.stop()
        node.redis = None
        node.sender.legacy = None
    if node.nats is not None:
        await node.nats.stop()
        node.nats = None
    if node.loopback is not None:
        node.loopback.detach(node)
    if node.ws is not None:
        await node.ws.stop()
        node.ws = None


def _http(node: MeshCore) -> Any:
    def make() -> Any:
        from ..http import HttpEndpoints

        return HttpEndpoints(node)
    return make
