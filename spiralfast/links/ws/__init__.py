"""WebSocket transport (picows): the node's server with its side doors, its outbound
dialers, and links that move frames between a picows transport and the node.

- ``transport.py``: ``WebSocketTransport`` (server, doors, dialers; a ``links.base.Dialer``);
- ``link.py``: ``WSLink``, one connection (a ``Link`` and a ``Pinger``), and ``send_frame``;
- ``doors.py``: connections until they are settled, and the ``Host``/``Origin`` rules;
- ``dial.py``: keeping links to endpoints;
- ``sockets.py``: the listening socket, accept errors, TLS failures, descriptor limits;
- ``_wslistener`` (compiled, twin ``_wslistener_py``): the picows listener on the hot path.
"""

from __future__ import annotations

from .dial import BACKOFF_JITTER, GOSSIP_DIAL_CONCURRENCY, REFUSED_BACKOFF_INITIAL
from .doors import Door, Origins, source_key
from .link import LISTENER_COMPILED, MAX_OUTBOX_BYTES, WS_FRAME_LIMIT, MeshListener, WSLink, send_frame
from .settings import WSSettings
from .sockets import tls_reason
from .transport import WebSocketTransport

__all__ = [
    "BACKOFF_JITTER", "GOSSIP_DIAL_CONCURRENCY", "LISTENER_COMPILED", "MAX_OUTBOX_BYTES", "REFUSED_BACKOFF_INITIAL",
    "WS_FRAME_LIMIT", "Door", "MeshListener", "Origins", "WSLink", "WSSettings", "WebSocketTransport", "send_frame",
    "source_key", "tls_reason",
]
