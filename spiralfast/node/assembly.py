"""Link assembly: the node builds the transports its configuration enables.

Each transport implements ``spiralfast.links.base.Link`` and is given a ``LinkHost``
(the node's host) and its own settings, never the node's internals.  This module
sees the node through the ``AssemblyNode`` port (:mod:`spiralfast.ports.node`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ports.node import AssemblyNode
log = logging.getLogger("spiralfast.links")


async def start_links(node: AssemblyNode) -> None:
    """Bring up the transports ``node.config`` enables (the drop-in API: a missing Redis or an
    unbindable port warns once, turns that feature off and the node goes on)."""
    cfg = node.config
    if cfg.enable_websocket:
        from ..links.ws import WebSocketTransport, WSSettings

        ws = WebSocketTransport(node.host, WSSettings.from_config(cfg), http=_http(node), serve=_serve)
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
    elif cfg.observer_port is not None:
        await _start_observer_port(node)
    if node.ws is not None and cfg.observer_port is not None:
        log.info("observer_port %s not used: observers and HTTP are served on the WebSocket port %s",
                 cfg.observer_port, cfg.websocket_port)
    if cfg.enable_redis:
        from ..links.bus.redis import RedisSettings, RedisTransport

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
            from ..links.bus.nats import NatsSettings, NatsTransport

            node.nats = NatsTransport(node.host, NatsSettings.from_config(cfg, node.node_id))
            await node.nats.start()  # False: warned once; it connects when a server appears
    if node.loopback is not None:
        node.loopback.attach(node)
    if node.ws is not None:
        for url in cfg.peers:
            node.ws.dial(url, permanent=True)
    elif cfg.peers:
        log.warning("peers %s ignored: WebSocket is disabled", cfg.peers)


async def stop_links(node: AssemblyNode) -> None:
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
    if node.observer_ws is not None:
        await node.observer_ws.stop()
        node.observer_ws = None


async def _start_observer_port(node: AssemblyNode) -> None:
    """No WebSocket links, but a port for the CLI, the dashboard and the HTTP API
    (``observer_port``): observers only, authenticated as on the mesh port.  It is not
    the node's ``websocket_endpoint``: no peer is told to dial it."""
    from ..links.ws import WebSocketTransport, WSSettings

    cfg = node.config
    st = WSSettings.from_config(cfg)
    st.port = cfg.observer_port or 0
    obs = WebSocketTransport(node.host, st, http=_http(node), observers_only=True, serve=_serve)
    try:
        await obs.start()
    except OSError as exc:
        log.warning("observer port %s:%s unavailable (%s); running without one (no CLI or HTTP access)",
                    cfg.websocket_host, cfg.observer_port, exc)
        cfg.observer_port = None
        return
    node.observer_ws = obs
    cfg.observer_port = obs.port
    log.info("observers (CLI, dashboard, HTTP) on %s", obs.endpoint)


def _http(node: AssemblyNode) -> Any:
    def make() -> Any:
        from ..ops.http import HttpEndpoints

        return HttpEndpoints(node.ops)  # the node's ops port (node.opsport.NodeOps)
    return make


async def _serve(*args: Any, **kwargs: Any) -> Any:
    """The WebSocket port's server: picows' own that also answers HEAD and keeps the side doors."""
    from ..ops.server import ws_create_server

    return await ws_create_server(*args, **kwargs)
