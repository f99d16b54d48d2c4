"""Dialling: the WebSocket transport keeps links to the endpoints it is asked to
(configured peers forever, gossiped ones while their node is known), with backoff and
jitter, and at most ``GOSSIP_DIAL_CONCURRENCY`` gossiped endpoints being connected to
at once."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time

import picows

from ..._log import RateLimitedLog
from ..base import LinkHost
from .link import WS_FRAME_LIMIT, MeshListener, WSLink
from .settings import WSSettings
from .sockets import tls_reason

#: Reconnect backoff: first delay, cap, and jitter fraction.
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.5
#: A peer that refused our handshake is retried with this backoff (it will most
#: likely refuse again until an operator fixes the token or mesh name).
REFUSED_BACKOFF_INITIAL = 0.5
REFUSED_BACKOFF_MAX = 60.0
#: Gossiped endpoints (not configured peers) being connected to at once; beyond, dials
#: wait their turn, and at most GOSSIP_DIAL_QUEUE more are kept (others are refused and
#: counted): a member gossiping thousands of endpoints opens a handful of connections.
GOSSIP_DIAL_CONCURRENCY = 8
GOSSIP_DIAL_QUEUE = 56


class Dialling:
    """The dialling half of ``WebSocketTransport`` (a mixin; the node sees it as a
    ``links.base.Dialer``)."""

    host: LinkHost
    settings: WSSettings
    errlog: RateLimitedLog
    endpoint: str | None
    observers_only: bool
    running: bool
    dialers: dict[str, asyncio.Task[None]]
    expected: dict[str, str]
    learned_at: dict[str, float]
    gossip_dials: set[str]
    gossip_dials_refused: int
    tls_failures: int
    _dial_slots: asyncio.Semaphore | None

    def _outbound_link(self, url: str) -> WSLink:
        raise NotImplementedError

    def dial(self, url: str, permanent: bool = False, expected_id: str | None = None) -> None:
        """Keep a link to ``url``: permanent peers forever, gossiped ones while known."""
        if url == self.endpoint or self.observers_only:
            return
        if expected_id is not None:
            self.expected[url] = expected_id
            self.learned_at[url] = time.monotonic()
        task = self.dialers.get(url)
        if task is not None and not task.done():
            return
        if not permanent:
            if len(self.gossip_dials) >= GOSSIP_DIAL_CONCURRENCY + GOSSIP_DIAL_QUEUE:
                self.gossip_dials_refused += 1
                self.errlog(("dial-cap",), logging.WARNING, "gossip named more endpoints than %d dials at once "
                            "and %d waiting: %s not dialled (%d so far)", GOSSIP_DIAL_CONCURRENCY,
                            GOSSIP_DIAL_QUEUE, url[:200], self.gossip_dials_refused)
                return
            self.gossip_dials.add(url)
        task = self.dialers[url] = asyncio.ensure_future(self._dial_loop(url, permanent))
        if not permanent:
            task.add_done_callback(lambda _t: self._gossip_dial_done(url))

    def _gossip_dial_done(self, url: str) -> None:
        self.gossip_dials.discard(url)

    def forget(self, node_id: str) -> None:
        """Stop redialling a gossiped endpoint of a node that is gone."""
        for url, nid in list(self.expected.items()):
            if nid == node_id:
                del self.expected[url]
                self.learned_at.pop(url, None)

    def _wanted(self, url: str, permanent: bool) -> bool:
        if not self.running:
            return False
        if permanent:
            return True
        nid = self.expected.get(url)
        if nid is None:
            return False
        # Wanted while the node is known, or was named by gossip recently enough
        # that it may still be alive (failure detection has not ruled it out).
        window = 3 * self.settings.heartbeat_interval
        return self.host.knows(nid) or time.monotonic() - self.learned_at.get(url, 0.0) < window

    async def _dial_loop(self, url: str, permanent: bool) -> None:
        delay = BACKOFF_INITIAL
        st = self.settings
        while self._wanted(url, permanent):
            nid = self.expected.get(url)
            if nid is not None and self.host.linked(nid):
                if not permanent:
                    return
                await asyncio.sleep(st.heartbeat_interval / 2)
                continue
            link = self._outbound_link(url)
            slots = None
            if not permanent:  # a gossiped endpoint: one of GOSSIP_DIAL_CONCURRENCY connect attempts
                if self._dial_slots is None:
                    self._dial_slots = asyncio.Semaphore(GOSSIP_DIAL_CONCURRENCY)
                slots = self._dial_slots
                await slots.acquire()
            try:
                ssl_ctx = None
                if url.startswith("wss://"):
                    ssl_ctx = ssl.create_default_context(cafile=st.ssl_cafile)
                await picows.ws_connect(
                    lambda link=link: MeshListener(link, WSLink.received),
                    url,
                    max_frame_size=WS_FRAME_LIMIT,
                    websocket_handshake_timeout=st.handshake_timeout,
                    enable_auto_pong=False,  # the link answers pings itself
                    ssl_context=ssl_ctx,
                    logger_name="spiralfast.ws.client",
                )
            except asyncio.CancelledError:
                if slots is not None:
                    slots.release()
                raise
            except Exception as exc:
                if slots is not None:
                    slots.release()
                if isinstance(exc, ssl.SSLError):
                    # Its certificate refused (or no TLS there): an operator must act, and
                    # retrying quickly changes nothing.
                    self.tls_failures += 1
                    self.errlog(("tls", url), logging.WARNING, "cannot reach %s: %s", url, tls_reason(exc))
                    delay = min(max(delay, REFUSED_BACKOFF_INITIAL) * 2, REFUSED_BACKOFF_MAX)
                else:
                    self.errlog(("dial", url), logging.INFO, "cannot reach %s: %s", url, exc)
                    delay = min(delay * 2, BACKOFF_MAX)
                await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
                continue
            if slots is not None:
                slots.release()
            await link.disconnected_event.wait()
            peer = link.peer_id
            if peer is not None:
                delay = BACKOFF_INITIAL
                # Who answers at this URL: while we are linked to it some other way (its own
                # dial won the duplicate-link rule) we wait instead of dialling again and again.
                self.expected[url] = peer
                self.learned_at[url] = time.monotonic()
            else:  # refused (token, mesh name) or timed out: back off, up to REFUSED_BACKOFF_MAX
                delay = min(max(delay, REFUSED_BACKOFF_INITIAL) * 2, REFUSED_BACKOFF_MAX)
            await asyncio.sleep(delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
