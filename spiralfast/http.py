"""HTTP on the mesh port: ``/health``, ``/metrics``, ``/api/*`` JSON, the dashboard
(``GET /`` and its static files) and its live feed (``/live``, JSON over WebSocket).

Everything is served through picows' upgrade-response path: a request that is not a
mesh WebSocket upgrade reaches :meth:`HttpEndpoints.respond`, which answers it and
closes the connection (``Connection: close``), or, for ``/live``, upgrades it.

With ``auth_token`` set, every path needs ``Authorization: Bearer <token>`` except
``GET /health`` (which then says only ``{"status": "ok"}``) and the dashboard's static
shell (no node data in it).  The browser cannot set headers on a WebSocket, so a
``/live`` client sends ``{"token": "..."}`` as its first message instead.  Every frame
a dashboard connection sends is counted, pings included: the page sends its token and
nothing else, so past ``LIVE_MAX_FRAMES`` the connection is closed and counted
(``side_door_refused_total{reason="live_flood"}``), like a guest on the mesh path.

The live feed computes one snapshot per second while at least one client is
connected, encodes it once and sends it to every client: rates, not events, so the
page costs the node the same at 10 events/s or 1M events/s.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import deque
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import picows
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from ._log import RateLimitedLog
from .limits import MAX_PREAUTH_FRAMES
from .metrics import peer_label
from .nodestate import node_state, node_states, state_kind
from .observe import _jsonable, envelope, link_info, nodes_table

if TYPE_CHECKING:
    from .core import MeshCore

log = logging.getLogger("spiralfast.http")

#: Static files of the dashboard: URL path -> (package file, content type).
STATIC: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
#: The page may load only its own files and talk only to its own node.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_HOST_OK = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
#: /api/events: default and largest ``count``.
EVENTS_DEFAULT = 100
EVENTS_MAX = 1000
#: Most query parameters a request may carry (more is answered 400).
MAX_QUERY_FIELDS = 64
#: Query parameters each ``/api/*`` path accepts; any other is answered 400, never ignored.
API_PARAMS: dict[str, tuple[str, ...]] = {
    "/api/status": (),
    "/api/nodes": (),
    "/api/events": ("count", "type"),
    "/api/topology": (),
    "/api/snapshot": (),
}
#: Live feed: seconds between snapshots (never faster than 1/s), samples of history kept.
LIVE_INTERVAL = 1.0
LIVE_HISTORY = 60
#: Seconds the feed keeps sampling rates after the last page left, so that a page
#: opened again (or reloaded) shows the last minute at once.
LIVE_LINGER = 600.0
#: Live feed: most clients at once, seconds a client has to authenticate, largest
#: message a client may send, and the send buffer beyond which a slow client skips a tick.
LIVE_MAX_CLIENTS = 64
#: ... of which at most this many may be waiting to authenticate (oldest dropped first).
LIVE_MAX_PENDING = 8
LIVE_AUTH_TIMEOUT = 10.0
LIVE_MAX_MESSAGE = 4096
LIVE_MAX_BUFFERED = 4 * 1024 * 1024
#: Frames a dashboard connection may send in all (pings, pongs and close included): the
#: page sends one, its token; past this it is closed and counted (``live_flood``), so an
#: outsider cannot spin the node with frames (15.5 M pings in 8 s were once accepted).
LIVE_MAX_FRAMES = MAX_PREAUTH_FRAMES
#: Recent events shown, and the longest data preview (characters).
RECENT_SHOWN = 25
DATA_PREVIEW = 240


def _static(name: str) -> bytes:
    return resources.files("spiralfast.dashboard").joinpath(name).read_bytes()


def _split_target(target: bytes) -> tuple[str, dict[str, list[str]]]:
    raw = target.decode("latin-1", errors="replace")
    path, _, query = raw.partition("?")
    # blank values are kept so that ``count=`` is refused rather than silently ignored
    return path, parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS) if query else {}


class BadQuery(ValueError):
    """A query parameter of an ``/api/*`` request that cannot be honoured (answered 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def check_params(path: str, query: dict[str, list[str]]) -> None:
    """Refuse a parameter ``path`` does not take (a typo must not pass as the default)."""
    accepted = API_PARAMS.get(path, ())
    for name in query:
        if name not in accepted:
            takes = ", ".join(accepted) if accepted else "no query parameters"
            raise BadQuery(name, f"unknown query parameter {name!r} for {path} (it takes {takes})")


def events_params(query: dict[str, list[str]]) -> tuple[int, set[str]]:
    """``count`` and ``type`` of ``/api/events``; :class:`BadQuery` for a bad one."""
    counts = query.get("count")
    count = EVENTS_DEFAULT
    if counts is not None:
        if len(counts) != 1:
            raise BadQuery("count", "count given more than once")
        raw = counts[0].strip()
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise BadQuery("count", f"count must be a whole number from 1 to {EVENTS_MAX}, got {counts[0]!r}")
        count = int(raw)
        if not 1 <= count <= EVENTS_MAX:
            raise BadQuery("count", f"count must be from 1 to {EVENTS_MAX}, got {count}")
    types: set[str] = set()
    for v in query.get("type", []):
        names = {t.strip() for t in v.split(",") if t.strip()}
        if not names:
            raise BadQuery("type", "type must name at least one event type (type=T, type=T,U or type=T&type=U)")
        types |= names
    return count, types


class HttpEndpoints:
    """One per node; ``respond(request)`` answers every non-mesh request."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        self._static: dict[str, bytes] = {}
        self._registry: Any = None
        self.live = LiveFeed(core)

    @property
    def doors(self) -> Any:
        """The WebSocket transport serving this port (its side-door counts), or None."""
        return self.live.doors

    @doors.setter
    def doors(self, value: Any) -> None:
        self.live.doors = value

    def refusals(self) -> dict[str, int]:
        """Connections refused or closed at the port's side doors, by reason."""
        doors = self.live.doors
        return dict(doors.refusals) if doors is not None else {"live_flood": self.live.flood_closed}

    @property
    def auth_failures(self) -> int:
        """HTTP requests and dashboard connections refused for a missing or wrong token."""
        return self.live.http_refused + self.live.auth_failures

    # -- plumbing -----------------------------------------------------------------

    def _response(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> Any:
        headers = {"Content-Type": ctype, **SECURITY_HEADERS, **(extra or {})}
        if status == 200:
            resp = WSUpgradeResponse.create_ok_response(body, headers)
        else:
            resp = WSUpgradeResponse.create_error_response(status, body, headers)
        return WSUpgradeResponseWithListener(resp, None)

    def _json(self, obj: Any, status: int = 200, extra: dict[str, str] | None = None) -> Any:
        return self._response(status, orjson.dumps(_jsonable(obj)), "application/json", extra)

    def authorized(self, request: Any) -> bool:
        token = self.core.config.auth_token
        if not token:
            return True
        got = request.headers.get("Authorization") or ""
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    def static(self, path: str, host: str | None = None) -> Any:
        name, ctype = STATIC[path]
        body = self._static.get(name)
        if body is None:
            body = self._static[name] = _static(name)
        extra = None
        if host and _HOST_OK.fullmatch(host):
            # the page's own WebSocket, spelled out for browsers that do not count ws: as 'self'
            csp = SECURITY_HEADERS["Content-Security-Policy"].replace(
                "connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}")
            extra = {"Content-Security-Policy": csp}
        return self._response(200, body, ctype, extra)

    # -- routing --------------------------------------------------------------------

    def respond(self, request: Any) -> Any:
        try:
            out = self._route(request)
        except Exception:
            self.live.errlog(("http-error",), logging.ERROR, "HTTP %r failed", request.path, exc_info=True)
            return self._json({"error": "internal error"}, 500)
        if getattr(request, "method", b"GET") == b"HEAD":
            resp = out.response
            if resp.body:  # HEAD: the GET answer's headers, without its body
                resp.headers["Content-Length"] = str(len(resp.body))
                resp.body = None
        return out

    def _route(self, request: Any) -> Any:
        try:
            path, query = _split_target(request.path)
        except ValueError:  # more than MAX_QUERY_FIELDS parameters
            path = request.path.decode("latin-1", errors="replace").partition("?")[0]
            return self._json({"error": f"more than {MAX_QUERY_FIELDS} query parameters", "path": path}, 400)
        core = self.core
        if path in STATIC:
            return self.static(path, request.headers.get("Host"))
        if path == "/health":
            if core.config.auth_token and not self.authorized(request):
                return self._json({"status": "ok"})
            return self._json({"status": "ok" if core.running else "stopping", "node_id": core.node_id})
        if path == "/live":
            return self.live.accept(request)
        if not self.authorized(request):
            self.live.http_refused += 1
            self.live.errlog(("http-auth",), logging.INFO, "HTTP %s refused: missing or wrong token", path)
            return self._json({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="spiralfast"'})
        if path == "/metrics":
            return self.metrics()
        if path in API_PARAMS:
            try:
                return self._json(self.api(path, query))
            except BadQuery as e:
                return self._json({"error": str(e), "parameter": e.parameter, "path": path}, 400)
        return self._json({"error": "not found", "path": path}, 404)

    def api(self, path: str, query: dict[str, list[str]]) -> Any:
        """The JSON answer of ``/api/<path>``; :class:`BadQuery` for a bad query."""
        core = self.core
        check_params(path, query)
        if path == "/api/status":
            return core.get_mesh_status()
        if path == "/api/nodes":
            return nodes_table(core)
        if path == "/api/events":
            return recent_events(core, query)
        if path == "/api/topology":
            return topology(core)
        return self.live.snapshot()

    def metrics(self) -> Any:
        from . import metrics

        if self._registry is None:
            self._registry = metrics.registry_for(self.core, self)
        body, ctype = metrics.render(self._registry)
        return self._response(200, body, ctype)


def recent_events(core: MeshCore, query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``/api/events?count=N&type=T&type=U`` (``type=T,U`` works too), newest last.
    Raises :class:`BadQuery` for a bad ``count`` or ``type``."""
    count, types = events_params(query)
    out: list[dict[str, Any]] = []
    for ev in reversed(list(core.recent_events)):
        t = ev["type"] if isinstance(ev, dict) else ev.event_type
        if types and t not in types:
            continue
        out.append(envelope(ev))
        if len(out) >= count:
            break
    out.reverse()
    return out


def topology(core: MeshCore, links: list[dict[str, Any]] | None = None,
             table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The mesh as this node knows it: the nodes of its node table with their status
    (``NodeStatus`` value, as ``/api/nodes``) and their one ``state`` (:func:`node_state`:
    ``suspected`` for a suspected node), and links as sorted id pairs.

    Links are this node's own open links (from its router) and the ``links`` list in
    each node's record metadata (gossiped).  ``links`` holds only links between two live
    nodes; ``suspect_links`` those with a suspected end (and no down one); a link to a
    disconnected node, to a node in a state this version does not know, or to a node no
    longer in the table, is not listed at all, so a removed node takes its links with it.
    ``table`` is the ``nodes_table`` to describe (the live feed passes the one it shows).
    """
    if table is None:
        table = nodes_table(core)
    status = {str(n["node_id"]): str(n.get("status")) for n in table}
    state = {str(n["node_id"]): node_state(n) for n in table}
    kinds = {nid: state_kind(st) for nid, st in state.items()}
    live: set[tuple[str, str]] = set()
    suspect: set[tuple[str, str]] = set()

    def add(a: str, b: str) -> None:
        if a == b or a not in kinds or b not in kinds:
            return
        pair = (a, b) if a < b else (b, a)
        ends = {kinds[a], kinds[b]}
        if ends == {"live"}:
            live.add(pair)
        elif ends <= {"live", "suspect"}:
            suspect.add(pair)

    if links is None:
        links = link_info(core)
    for lk in links:
        peer = lk.get("peer")
        if peer is not None and lk.get("state") not in ("closed", "down"):  # bus links have no single peer
            add(core.node_id, str(peer))
    records = {core.node_id: core.local_node, **core.nodes}
    for node in records.values():
        md = node.metadata if isinstance(node.metadata, dict) else {}
        peers = md.get("links")
        if isinstance(peers, (list, tuple)):
            for peer in peers:
                add(node.node_id, peer if isinstance(peer, str) else str(peer))
    return {
        "local": core.node_id,
        "nodes": sorted(status),
        "status": dict(sorted(status.items())),
        "state": dict(sorted(state.items())),
        "links": [list(p) for p in sorted(live)],
        "suspect_links": [list(p) for p in sorted(suspect)],
    }


def _event_time(ev: Any) -> float | None:
    if isinstance(ev, dict):
        ts = ev.get("timestamp")
        if isinstance(ts, (int, float)):
            return float(ts)
        if isinstance(ts, str):
            try:
                return datetime.fromisoformat(ts).timestamp()
            except ValueError:
                return None
        return None
    ts = getattr(ev, "timestamp", None)
    return float(ts) if isinstance(ts, (int, float)) else None


def _preview(env: dict[str, Any]) -> dict[str, Any]:
    data = orjson.dumps(_jsonable(env.get("data"))).decode()
    if len(data) > DATA_PREVIEW:
        data = data[: DATA_PREVIEW - 1] + "…"
    out = {"type": env.get("type"), "source_node": env.get("source_node"), "timestamp": env.get("timestamp"),
           "data": data}
    if env.get("target_node"):
        out["target_node"] = env["target_node"]
    return out


class LiveFeed:
    """Snapshots for the dashboard, one per ``LIVE_INTERVAL``, while anyone watches."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        self.clients: set[LiveClient] = set()
        self.pending: set[LiveClient] = set()
        self.task: asyncio.Task[None] | None = None
        self.history: deque[list[float]] = deque(maxlen=LIVE_HISTORY)
        self.errlog = RateLimitedLog(log)
        self.auth_failures = 0  # dashboard connections refused for a wrong token
        self.http_refused = 0  # HTTP requests refused for a missing or wrong token
        self.flood_closed = 0  # dashboard connections closed for sending too many frames
        self.doors: Any = None  # the WebSocket transport (links.ws.WebSocketTransport), once serving
        self.last_client = 0.0  # when the last page left (monotonic)
        self._prev: dict[str, Any] | None = None
        self._prev_t = 0.0
        self._prev_wall = 0.0
        self._rates: dict[str, Any] = {"in": 0.0, "out": 0.0, "forwarded": 0.0}
        self._link_rates: dict[str, dict[str, float]] = {}
        self._by_type: dict[str, float] = {}
        self._payload: bytes | None = None  # the last encoded snapshot, and when (monotonic)
        self._payload_t = 0.0

    # -- connections ------------------------------------------------------------------

    def accept(self, request: Any) -> Any:
        if (request.headers.get("Upgrade") or "").lower() != "websocket":
            body = orjson.dumps({"error": "/live is a WebSocket endpoint"})
            resp = WSUpgradeResponse.create_error_response(400, body, {"Content-Type": "application/json"})
            return WSUpgradeResponseWithListener(resp, None)
        if len(self.pending) >= LIVE_MAX_PENDING:
            oldest = min(self.pending, key=lambda c: c.since)  # unauthenticated: the oldest goes first
            oldest.close("too many unauthenticated dashboard connections")
        if len(self.clients) + len(self.pending) >= LIVE_MAX_CLIENTS:
            body = orjson.dumps({"error": "too many dashboard connections"})
            resp = WSUpgradeResponse.create_error_response(503, body, {"Content-Type": "application/json"})
            return WSUpgradeResponseWithListener(resp, None)
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(), LiveClient(self))

    def admit(self, client: LiveClient) -> None:
        self.pending.discard(client)
        if self.doors is not None and client.transport is not None:
            self.doors.close_door(client.transport.underlying_transport)  # through its door
        self.clients.add(client)
        client.send(self.snapshot_bytes(max_age=LIVE_INTERVAL / 4))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._loop())

    def drop(self, client: LiveClient) -> None:
        self.pending.discard(client)
        if client in self.clients:
            self.clients.discard(client)
            self.last_client = time.monotonic()

    def _wanted(self) -> bool:
        if not self.core.running:
            return False
        return bool(self.clients) or time.monotonic() - self.last_client < LIVE_LINGER

    async def _loop(self) -> None:
        try:
            while self._wanted():
                await asyncio.sleep(LIVE_INTERVAL)
                if not self._wanted():
                    break
                if not self.clients:  # nobody watching: keep the chart's history only
                    self._sample(self.core.get_mesh_status())
                    continue
                payload = self.snapshot_bytes()
                for c in list(self.clients):
                    c.send(payload)
        except Exception:
            self.errlog(("live-loop",), logging.ERROR, "dashboard feed failed", exc_info=True)
        finally:
            if not self.core.running:
                for c in list(self.clients | self.pending):
                    c.close("node stopping")

    # -- snapshots --------------------------------------------------------------------

    def snapshot_bytes(self, max_age: float = 0.0) -> bytes:
        """The encoded snapshot; one computed less than ``max_age`` seconds ago is reused
        (a page that connects gets the feed's last one, so reconnecting in a loop cannot
        make the node compute a snapshot per connection)."""
        now = time.monotonic()
        if self._payload is not None and now - self._payload_t < max_age:
            return self._payload
        payload = orjson.dumps(self.snapshot())
        self._payload, self._payload_t = payload, now
        return payload

    def _sample(self, st: dict[str, Any]) -> None:
        """Rates since the previous sample (at most one per ``LIVE_INTERVAL``/2)."""
        now = time.monotonic()
        wall = time.time()
        if self._prev is not None and now - self._prev_t < LIVE_INTERVAL / 2:
            return
        c = st.get("counters") or {}
        r = st.get("router") or {}
        cur: dict[str, Any] = {
            "in": int(c.get("events_in") or 0),
            "out": int(c.get("events_out") or 0),
            "forwarded": int(r.get("forwarded") or 0),
            "links": {peer_label(lk): lk for lk in st.get("links") or []},
        }
        prev = self._prev
        if prev is not None:
            dt = max(now - self._prev_t, 1e-6)
            rates = {k: max(0.0, (cur[k] - prev[k]) / dt) for k in ("in", "out", "forwarded")}
            self._rates = rates
            self.history.append([round(wall, 3), round(rates["in"], 1), round(rates["out"], 1)])
            lr: dict[str, dict[str, float]] = {}
            for peer, lk in cur["links"].items():
                old = prev["links"].get(peer)
                if old is None:
                    continue
                lr[peer] = {
                    k: max(0.0, (float(lk.get(k) or 0) - float(old.get(k) or 0)) / dt)
                    for k in ("bytes_out", "bytes_in", "frames_out", "frames_in")
                }
            self._link_rates = lr
            self._by_type = self._type_rates(self._prev_wall, dt, rates["in"] + rates["out"])
        self._prev, self._prev_t, self._prev_wall = cur, now, wall

    def _type_rates(self, since: float, dt: float, total_rate: float) -> dict[str, float]:
        """Events/s by type over the last interval, from the node's recent-events window
        (scaled to the measured total when the window holds less than the interval)."""
        recent = list(self.core.recent_events)
        counts: dict[str, int] = {}
        n = 0
        oldest_in_window = None
        for ev in reversed(recent):
            ts = _event_time(ev)
            if ts is None:
                continue
            if ts < since:
                oldest_in_window = ts
                break
            t = ev["type"] if isinstance(ev, dict) else ev.event_type
            counts[t] = counts.get(t, 0) + 1
            n += 1
        if not n:
            return {}
        seen_rate = n / dt
        scale = 1.0
        if oldest_in_window is None and total_rate > seen_rate:
            scale = total_rate / seen_rate  # the window overflowed: shares, scaled to the total
        return {t: round(k / dt * scale, 1) for t, k in sorted(counts.items(), key=lambda kv: -kv[1])[:20]}

    def _health(self, st: dict[str, Any]) -> dict[str, int]:
        c = st.get("counters") or {}
        r = st.get("router") or {}
        bus = st.get("bus") or {}
        dropped = sum(int(c.get(k) or 0) for k in ("dropped_events", "refused_messages", "preauth_refused"))
        dropped += int(r.get("unroutable") or 0) + int(bus.get("dropped") or 0)
        dropped += sum(int(lk.get("dropped_frames") or 0) for lk in st.get("links") or [])
        return {
            "dropped": dropped,
            "lost": int(c.get("events_lost") or c.get("lost") or 0),
            "handler_errors": int(c.get("handler_errors") or 0) + int(bus.get("handler_errors") or 0),
            "auth_failures": int(c.get("auth_failures") or 0) + self.auth_failures + self.http_refused,
            "bad_messages": int(c.get("bad_messages") or 0) + int(r.get("frame_errors") or 0),
        }

    def snapshot(self) -> dict[str, Any]:
        core = self.core
        st = core.get_mesh_status()
        self._sample(st)
        sync = st.get("sync") or {}
        links = []
        for lk in st.get("links") or []:
            peer = peer_label(lk)
            rates = self._link_rates.get(peer, {})
            rtt = lk.get("rtt_ms")
            links.append({
                "peer": peer,
                "transport": lk.get("transport"),
                "state": lk.get("state"),
                "direction": lk.get("direction"),
                "endpoint": lk.get("endpoint"),
                "rtt_ms": float(rtt) if isinstance(rtt, (int, float)) else None,
                "bytes_out_s": round(rates.get("bytes_out", 0.0), 1),
                "bytes_in_s": round(rates.get("bytes_in", 0.0), 1) if "bytes_in" in lk else None,
                "frames_out_s": round(rates.get("frames_out", 0.0), 1),
                "bytes_out": lk.get("bytes_out"),
                "bytes_in": lk.get("bytes_in"),
                "dropped_frames": lk.get("dropped_frames", 0),
                "gaps": lk.get("gaps", lk.get("lost")),
            })
        recent = [_preview(envelope(e)) for e in list(core.recent_events)[-RECENT_SHOWN:]]
        recent.reverse()
        table = nodes_table(core)
        nodes = []
        for n in table:
            d = {k: n.get(k) for k in ("node_id", "name", "status", "capabilities", "websocket_endpoint",
                                       "seconds_since_heartbeat", "local", "last_heartbeat")}
            d["suspect"] = n.get("suspect") is True
            d["state"] = node_state(n)
            nodes.append(d)
        return _jsonable({
            "t": time.time(),
            "node_id": core.node_id,
            "mesh_name": st.get("mesh_name"),
            "status": st.get("status"),
            "uptime": st.get("uptime"),
            "redis": st.get("redis"),
            "nats": st.get("nats"),
            "interval": LIVE_INTERVAL,
            "nodes": nodes,
            "topology": topology(core, st.get("links") or [], table),
            "node_states": node_states(),
            "links": links,
            "rates": dict(self._rates),
            "history": list(self.history),
            "by_type": self._by_type,
            "counters": st.get("counters"),
            "health": self._health(st),
            "router": st.get("router"),
            "sync": {
                "sync_status": sync.get("sync_status"),
                "state_version": sync.get("state_version"),
                "total_items": sync.get("total_items"),
                "last_sync": sync.get("last_sync"),
                "repairs": sync.get("repairs"),
                "keys": {str(c): len(v) for c, v in core.state.sync_categories.items()},
            },
            "recent": recent,
            "tasks": st.get("tasks") or None,
            "persistence": st.get("persistence"),
            "observers": st.get("observers"),
        })


class LiveClient(picows.WSListener):  # type: ignore[misc]
    """One dashboard connection: authenticates (if the node has a token), then receives snapshots."""

    def __init__(self, feed: LiveFeed) -> None:
        super().__init__()
        self.feed = feed
        self.transport: Any = None
        self.admitted = False
        self.closed = False
        self.frames = 0
        self.since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport
        doors = self.feed.doors
        if doors is not None:
            doors.attach_live(transport.underlying_transport, self)
        if not self.feed.core.config.auth_token:
            self.admitted = True
            self.feed.admit(self)
            return
        self.feed.pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(LIVE_AUTH_TIMEOUT, self._auth_timeout)
        self.send(orjson.dumps({"auth": "required"}))

    def _auth_timeout(self) -> None:
        if not self.admitted:
            self.close("authentication timeout")

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if self.closed:
            return  # what picows had buffered before we closed: not parsed further
        self.frames += 1
        if self.frames > LIVE_MAX_FRAMES:
            feed = self.feed
            feed.flood_closed += 1
            if feed.doors is not None:
                feed.doors.refusals["live_flood"] += 1
            feed.errlog(("live-flood",), logging.WARNING, "dashboard connection closed: more than %d frames "
                        "(the page sends one)", LIVE_MAX_FRAMES)
            self.close("too many frames", picows.WSCloseCode.POLICY_VIOLATION)
            return
        mt = frame.msg_type
        if mt == picows.WSMsgType.CLOSE:
            self.closed = True
            self.feed.drop(self)
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if mt == picows.WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())  # counted above, like every frame
            return
        if mt not in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            return  # pong/continuation: the page sends neither
        if frame.payload_size > LIVE_MAX_MESSAGE:
            self.close("message too large")
            return
        if self.admitted:
            return  # nothing to ask for yet; snapshots come on their own
        try:
            msg = orjson.loads(frame.get_payload_as_bytes())
            token = msg.get("token") if isinstance(msg, dict) else None
        except orjson.JSONDecodeError:
            token = None
        expected = self.feed.core.config.auth_token or ""
        if isinstance(token, str) and hmac.compare_digest(token.encode(), expected.encode()):
            self.admitted = True
            if self._timer is not None:
                self._timer.cancel()
            self.feed.admit(self)
            return
        self.feed.auth_failures += 1
        self.feed.errlog(("live-auth",), logging.INFO, "dashboard connection refused: wrong token")
        self.send(orjson.dumps({"error": "unauthorized"}))
        self.close("unauthorized", picows.WSCloseCode.POLICY_VIOLATION)

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.feed.drop(self)

    def send(self, payload: bytes) -> None:
        tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        try:
            if tr.underlying_transport.get_write_buffer_size() > LIVE_MAX_BUFFERED:
                return  # a slow browser skips a tick rather than growing our memory
        except Exception:
            pass
        tr.send(picows.WSMsgType.TEXT, payload)

    def close(self, reason: str, code: Any = None) -> None:
        tr = self.transport
        self.closed = True
        self.feed.drop(self)
        if tr is None or tr.is_disconnected:
            return
        try:  # stop reading at once: a flood's buffered frames are not parsed
            tr.underlying_transport.pause_reading()
        except Exception:
            pass
        try:
            tr.send_close(code if code is not None else picows.WSCloseCode.GOING_AWAY, reason.encode()[:120])
        finally:
            tr.disconnect()


# -- HEAD: picows parses only GET, so a thin first reader answers HEAD itself ---------

#: Largest HEAD request head accepted (bytes).
HEAD_MAX = 8192


class HeadShim(asyncio.BufferedProtocol):
    """The first reader of each connection.

    picows refuses any method but GET with a 400 before the listener factory runs, so
    ``HEAD /health`` (load balancers, uptime checks) cannot reach :meth:`HttpEndpoints.respond`.
    This reads the first bytes of a connection: a ``HEAD`` request it answers with the
    headers the factory gives the same GET; anything else it hands to picows' protocol
    (``transport.set_protocol``) together with the bytes read so far, and steps aside,
    so a mesh link pays for it once, at connect.
    """

    def __init__(self, inner: Any, factory: Any, doors: Any = None) -> None:
        self.inner = inner
        self.factory = factory
        self.doors = doors  # counts the connection as a door (links.ws.WebSocketTransport.open_door)
        self.tr: Any = None
        self.buf = bytearray()
        self.mem = bytearray(HEAD_MAX)
        self.head = False
        self.refused = True  # until connection_made: nothing reaches picows' protocol before it

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        if self.doors is not None and self.doors.open_door(transport, False) is None:
            return  # aborted: near the descriptor limit
        self.refused = False
        self.inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.mem)

    def buffer_updated(self, nbytes: int) -> None:
        if self.refused:
            return
        self.buf += self.mem[:nbytes]
        if not self.head:
            if len(self.buf) < 5 and b"HEAD ".startswith(bytes(self.buf)):
                return  # not enough to tell yet
            if not self.buf.startswith(b"HEAD "):
                self._hand_over()
                return
            self.head = True
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self._answer(bytes(self.buf[:end]))
        elif len(self.buf) >= HEAD_MAX:
            self.tr.close()

    def _hand_over(self) -> None:
        data, self.buf = bytes(self.buf), bytearray()
        self.tr.set_protocol(self.inner)
        inner = self.inner
        while data:
            mv = inner.get_buffer(len(data))
            k = min(len(mv), len(data))
            mv[:k] = data[:k]
            data = data[k:]
            inner.buffer_updated(k)

    def _answer(self, raw: bytes) -> None:
        from picows.picows import _parse_http_request  # type: ignore[attr-defined]

        try:
            req = _parse_http_request(b"GET" + raw[4:])
            req.method = b"HEAD"
            out = self.factory(req)
        except Exception:
            out = None
        if isinstance(out, WSUpgradeResponseWithListener) and out.listener is None:
            resp = out.response
        else:
            resp = WSUpgradeResponse.create_error_response(405, None, {"Allow": "GET"})
        if resp.body or "Content-Length" not in resp.headers:
            resp.headers["Content-Length"] = str(len(resp.body or b""))
        resp.body = None
        resp.headers["Connection"] = "close"
        self.tr.write(bytes(resp.to_bytes()))
        self.tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.doors is not None:
            self.doors.close_door(self.tr)
        if not self.refused:
            self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class TlsDoor(asyncio.Protocol):
    """The first protocol of a ``wss://`` connection: counts it as a door from accept
    (so sockets that never finish TLS count against the handshake cap and the descriptor
    reserve), then runs the TLS handshake with ``handshake_timeout`` (not asyncio's 60 s)
    and hands the decrypted stream to its :class:`HeadShim`.  A failed or timed-out
    handshake is counted and logged in one rate-limited line, never a traceback."""

    def __init__(self, shim: HeadShim, doors: Any, timeout: float) -> None:
        self.shim = shim
        self.doors = doors
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None
        self.tr: Any = None

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        door = self.doors.open_door(transport, True)
        if door is None:
            return
        transport.pause_reading()  # the ClientHello waits for the TLS layer
        self.task = asyncio.ensure_future(self._handshake(transport, door))

    async def _handshake(self, transport: Any, door: Any) -> None:
        import aiofastnet

        doors = self.doors
        try:
            tls = await aiofastnet.start_tls(asyncio.get_running_loop(), transport, self.shim, doors.ssl_ctx,
                                             server_side=True, ssl_handshake_timeout=self.timeout)
        except asyncio.CancelledError:
            doors.close_door(transport)
            transport.abort()
            raise
        except Exception as exc:  # ssl.SSLError, ConnectionError, the timeout: all the peer's doing
            doors.tls_failed(door, exc)
            transport.abort()
            return
        if tls.is_closing() or tls.get_extra_info("socket") is None:
            doors.close_door(transport)  # gone while its handshake completed (closed or evicted)
            tls.abort()
            return
        doors.rekey_door(transport, tls)
        self.shim.connection_made(tls)

    def data_received(self, data: bytes) -> None:
        pass  # nothing arrives before start_tls takes the transport (reading is paused)

    def connection_lost(self, exc: Exception | None) -> None:
        self.doors.close_door(self.tr)


async def ws_create_server(
    factory: Any,
    host: Any = None,
    port: Any = None,
    *,
    max_frame_size: int = 10 * 1024 * 1024,
    websocket_handshake_timeout: float | None = 5,
    logger_name: Any = None,
    read_buffer_init_size: int = 16 * 1024,
    doors: Any = None,
    **kwargs: Any,
) -> Any:
    """``picows.ws_create_server`` (same arguments and listener factory) whose connections
    also answer ``HEAD`` (see :class:`HeadShim`).  Built from picows' own protocol class,
    so it is tested against the installed picows (tests/test_http.py).

    ``doors`` (the node's ``links.ws.WebSocketTransport``) counts every connection from
    accept (``open_door``) and, when its ``ssl_ctx`` is set, serves TLS through
    :class:`TlsDoor` with ``websocket_handshake_timeout`` as the TLS handshake timeout."""
    from picows import api as picows_api
    from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    logger = picows_api._resolve_logger(logger_name, "server")

    def protocol() -> Any:
        inner = WSProtocol(
            None, None, False, factory, logger,
            True,  # disconnect_on_exception
            websocket_handshake_timeout,
            False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto ping
            False,  # no auto pong: the link answers pings itself (a guest's count as pre-auth frames)
            max_frame_size, None, read_buffer_init_size,
        )
        tls = doors is not None and doors.ssl_ctx is not None
        shim = HeadShim(inner, factory, None if tls else doors)
        if tls:
            return TlsDoor(shim, doors, websocket_handshake_timeout or 5.0)
        return shim

    if picows_api._HAS_AIOFASTNET:
        import aiofastnet

        return await aiofastnet.create_server(loop, protocol, host=host, port=port, **kwargs)
    return await loop.create_server(protocol, host=host, port=port, **kwargs)
