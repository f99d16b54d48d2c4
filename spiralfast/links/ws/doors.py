"""The side doors of the WebSocket port: every accepted connection is a ``Door`` until
it is settled (an authenticated link, an admitted dashboard, or closed), and which
``Host`` and ``Origin`` headers the port answers (``Origins``).

At most ``MAX_PREAUTH_CONNECTIONS`` doors may be open at once; when a new one finds them
full, the oldest door of the source address holding the most is closed, so a flood from
one address evicts only its own sockets.  New connections are refused while fewer than
``FD_HEADROOM`` file descriptors are left (open doors counted).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..._log import RateLimitedLog
from ...wire.limits import FD_HEADROOM, MAX_PREAUTH_CONNECTIONS, PREAUTH_SOURCE_PREFIX_V6
from .settings import LiveConnection, WSSettings
from .sockets import tls_reason

if TYPE_CHECKING:
    from .link import WSLink

#: A connection's transport (before TLS, or the TLS one after it).
Conn = asyncio.Transport

#: Host names every node answers to (besides IP literals, its own host and allowed_hosts).
LOCAL_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1", "ip6-localhost"})


def _split_host(value: str) -> str:
    """The host part of a ``Host`` header or an origin's netloc, lower case, no brackets."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Origins:
    """Which ``Host`` and ``Origin`` headers the port answers (DNS rebinding and
    cross-site pages).

    A ``Host`` is allowed when it is an IP literal (a rebinding attack always carries the
    attacker's DNS name), a localhost name, the node's own listen host or machine name,
    or listed in ``allowed_hosts`` (``"*"``: any).  An ``Origin`` (browsers send one on
    every WebSocket upgrade; the CLI and peers send none and are not asked for one) is
    allowed when it is the page's own origin (its host and port are the request's
    ``Host``), or listed in ``allowed_origins`` (``"*"``: any).
    """

    def __init__(self, settings: WSSettings) -> None:
        names = set(LOCAL_NAMES)
        names.add(_split_host(settings.host))
        try:
            names.add(socket.gethostname().lower())
        except OSError:
            pass
        extra = [h.strip().lower() for h in settings.allowed_hosts if h.strip()]
        self.any_host = "*" in extra
        names.update(_split_host(h) for h in extra if h != "*")
        self.hosts = frozenset(names)
        origins = [o.strip().lower().rstrip("/") for o in settings.allowed_origins if o.strip()]
        self.any_origin = "*" in origins
        self.origins = frozenset(o for o in origins if o != "*")

    def host_ok(self, host: str | None) -> bool:
        if self.any_host or host is None:  # HTTP/1.0 without Host: no browser sends that
            return True
        name = _split_host(host)
        return name in self.hosts or _ip_literal(name)

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any_origin:
            return True
        o = origin.strip().lower().rstrip("/")
        if o in self.origins:
            return True
        try:
            parts = urlsplit(o)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
            return False  # "null" (a sandboxed frame, a file) included
        return parts.netloc == host.strip().lower()


def source_key(peer: Sequence[object]) -> str:
    """The source a connection counts against: its IPv4 address, or its IPv6 /64."""
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return "?"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr), PREAUTH_SOURCE_PREFIX_V6), strict=False))
    return str(addr)


class Door:
    """One accepted connection until it is settled (see the module docstring)."""

    __slots__ = ("tr", "source", "since", "link", "live", "tls", "name")

    def __init__(self, tr: Conn, source: str, name: str, tls: bool) -> None:
        self.tr = tr
        self.source = source
        self.name = name
        self.since = time.monotonic()
        self.link: WSLink | None = None
        self.live: LiveConnection | None = None  # a dashboard connection (the live feed's client)
        self.tls = tls  # its TLS handshake is under way

    def settled(self) -> bool:
        try:
            if self.tr.is_closing():
                return True
        except Exception:
            return True
        link = self.link
        if link is not None:
            return link.closed or link._state() in ("member", "observer")
        live = self.live
        return live is not None and (live.admitted or live.closed)

    def evict(self, reason: str) -> None:
        if self.link is not None and not self.link.closed:
            self.link.close(reason)
        elif self.live is not None:
            self.live.close(reason)
        else:
            try:
                self.tr.abort()
            except Exception:
                pass


class DoorKeeper:
    """The door bookkeeping of ``WebSocketTransport`` (a mixin: the transport provides
    ``links``, ``settings``, ``errlog`` and the counters)."""

    links: set[WSLink]
    settings: WSSettings
    errlog: RateLimitedLog
    doors: dict[Conn, Door]
    by_source: dict[str, dict[Conn, Door]]
    refusals: dict[str, int]
    refused_connections: int
    fd_limit: int
    _fd_base: int
    _swept: float

    def _in_use(self) -> int:
        """Descriptors this transport holds, at most: its links and its doors (a door that
        became a link counts twice, which errs on the side of the reserve)."""
        return len(self.links) + len(self.doors)

    def _drop(self, door: Door) -> None:
        self.doors.pop(door.tr, None)
        group = self.by_source.get(door.source)
        if group is not None:
            group.pop(door.tr, None)
            if not group:
                del self.by_source[door.source]

    def _sweep(self) -> None:
        """Forget settled doors (at most twice a second: an O(doors) pass)."""
        now = time.monotonic()
        if now - self._swept < 0.5:
            return
        self._swept = now
        for d in [d for d in self.doors.values() if d.settled()]:
            self._drop(d)

    def open_door(self, tr: Conn, tls: bool) -> Door | None:
        """A connection was accepted (``tr``: its transport, before TLS if any): count it
        as a door, closing one of the source holding the most if they are full; None (and
        the connection aborted) when too few file descriptors are left."""
        try:
            peer = tr.get_extra_info("peername")
        except Exception:
            peer = None
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.doors) >= MAX_PREAUTH_CONNECTIONS:
            self._sweep()
        if self._fd_base + self._in_use() + FD_HEADROOM >= self.fd_limit:
            self._sweep()
            if self._fd_base + self._in_use() + FD_HEADROOM >= self.fd_limit:
                self.refused_connections += 1
                self.refusals["fd_reserve"] += 1
                self.errlog("fds", logging.WARNING, "refusing connections: near the file descriptor limit (%d)",
                            self.fd_limit)
                tr.abort()
                return None
        door = Door(tr, source_key(peer) if peer else "?", name, tls)
        while len(self.doors) >= MAX_PREAUTH_CONNECTIONS and self._evict_for(door):
            pass
        self.doors[tr] = door
        self.by_source.setdefault(door.source, {})[tr] = door
        return door

    def _evict_for(self, new: Door) -> bool:
        """The doors are full: free one, the oldest of the source holding the most (the
        newcomer counting for its own source).  False when there is nothing to free."""
        top_source: str | None = None
        top = 0
        for source, group in self.by_source.items():
            n = len(group) + (source == new.source)
            if n > top:
                top_source, top = source, n
        if top_source is None:
            return False
        group = self.by_source[top_source]
        victim = min(group.values(), key=lambda d: d.since)
        self._drop(victim)
        if victim.settled():
            return True  # it had already gone: a slot freed, nobody evicted
        self.refused_connections += 1
        self.refusals["handshake_evicted"] += 1
        self.errlog(("doors", top_source), logging.WARNING,
                    "too many connections mid-handshake; closing the oldest of %s (the source holding the "
                    "most: %d)", top_source, top)
        victim.evict("too many unauthenticated connections from its address")
        return True

    def rekey_door(self, old: Conn, new: Conn) -> None:
        """A door's TLS handshake completed: its connection now speaks through ``new``."""
        door = self.doors.get(old)
        if door is not None:
            self._drop(door)
            door.tr = new
            door.tls = False
            self.doors[new] = door
            self.by_source.setdefault(door.source, {})[new] = door

    def close_door(self, tr: Conn) -> None:
        door = self.doors.get(tr)
        if door is not None:
            self._drop(door)

    def tls_failed(self, door: Door, exc: BaseException | None) -> None:
        """A TLS handshake from a connection failed or timed out: counted, one line at most
        now and then (never a traceback)."""
        self._drop(door)
        timed_out = isinstance(exc, (TimeoutError, ConnectionAbortedError)) and "longer than" in str(exc)
        self.refusals["tls_timeout" if timed_out else "tls_failed"] += 1
        if timed_out:
            self.errlog("tls-slow", logging.INFO, "TLS handshake from %s not completed within %.1f s (counted as "
                        "tls_timeout)", door.name, self.settings.handshake_timeout)
            return
        why = exc.__name__ if isinstance(exc, type) else tls_reason(exc) if exc is not None else "closed"
        self.errlog("tls-in", logging.WARNING, "TLS handshake from %s failed (%s): a peer that refuses our "
                    "certificate ends it so; its ssl_cafile (--cafile) must name the CA that signed ours",
                    door.name, why)

    def attach_live(self, tr: Conn, client: LiveConnection) -> None:
        """A dashboard connection upgraded on ``tr``: its door settles once it is admitted."""
        door = self.doors.get(tr)
        if door is not None:
            door.live = client
