"""HTTP on the mesh port: ``/health``, ``/metrics``, ``/api/*`` JSON, the dashboard
(``GET /`` and its static files) and its live feed (``/live``: :mod:`spiralfast.ops.live`).

Everything is served through picows' upgrade-response path: a request that is not a
mesh WebSocket upgrade reaches :meth:`HttpEndpoints.respond`, which answers it and
closes the connection (``Connection: close``), or, for ``/live``, upgrades it.

With ``auth_token`` set, every path needs ``Authorization: Bearer <token>`` except
``GET /health`` (which then says only ``{"status": "ok"}``) and the dashboard's static
shell (no node data in it).  A ``/live`` client sends its token as its first message.

Everything the endpoints read of the node comes through an
:class:`~spiralfast.ports.ops.HttpSource`; the server that carries them is
:mod:`spiralfast.ops.server`.
"""


from __future__ import annotations

import hmac
import logging
import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener
from prometheus_client.registry import CollectorRegistry

from ..ports.ops import HttpSource
from . import metrics
from .live import LiveDoors, LiveFeed
from .status import envelope, jsonable, nodes_table, topology

log = logging.getLogger("spiralfast.http")

#: The package that holds the dashboard's static files.
DASHBOARD_PACKAGE = "spiralfast.ops.dashboard"

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


def _static(name: str) -> bytes:
    return resources.files(DASHBOARD_PACKAGE).joinpath(name).read_bytes()


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

    def __init__(self, source: HttpSource) -> None:
        self.source = source
        self._static: dict[str, bytes] = {}
        self._registry: CollectorRegistry | None = None
        self.live = LiveFeed(source)

    @property
    def doors(self) -> LiveDoors | None:
        """The WebSocket transport serving this port (its side-door counts), or None."""
        return self.live.doors

    @doors.setter
    def doors(self, value: LiveDoors | None) -> None:
        self.live.doors = value

    @property
    def dashboards(self) -> int:
        """Dashboard pages connected to ``/live``."""
        return len(self.live.clients)

    def refusals(self) -> dict[str, int]:
        """Connections refused or closed at the port's side doors, by reason."""
        doors = self.live.doors
        return dict(doors.refusals) if doors is not None else {"live_flood": self.live.flood_closed}

    @property
    def auth_failures(self) -> int:
        """HTTP requests and dashboard connections refused for a missing or wrong token."""
        return self.live.http_refused + self.live.auth_failures

    # -- plumbing -----------------------------------------------------------------

    def _response(self, status: int, body: bytes, ctype: str,
                  extra: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
        headers = {"Content-Type": ctype, **SECURITY_HEADERS, **(extra or {})}
        if status == 200:
            resp = WSUpgradeResponse.create_ok_response(body, headers)
        else:
            resp = WSUpgradeResponse.create_error_response(status, body, headers)
        return WSUpgradeResponseWithListener(resp, None)

    def _json(self, obj: Any, status: int = 200,
              extra: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
        return self._response(status, orjson.dumps(jsonable(obj)), "application/json", extra)

    def authorized(self, request: WSUpgradeRequest) -> bool:
        token = self.source.auth_token
        if not token:
            return True
        got = request.headers.get("Authorization") or ""
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    def static(self, path: str, host: str | None = None) -> WSUpgradeResponseWithListener:
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

    def respond(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        """The answer to one request that is not a mesh WebSocket upgrade."""
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

    def _route(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        try:
            path, query = _split_target(request.path)
        except ValueError:  # more than MAX_QUERY_FIELDS parameters
            path = request.path.decode("latin-1", errors="replace").partition("?")[0]
            return self._json({"error": f"more than {MAX_QUERY_FIELDS} query parameters", "path": path}, 400)
        source = self.source
        if path in STATIC:
            return self.static(path, request.headers.get("Host"))
        if path == "/health":
            if source.auth_token and not self.authorized(request):
                return self._json({"status": "ok"})
            return self._json({"status": "ok" if source.running else "stopping", "node_id": source.node_id})
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
        source = self.source
        check_params(path, query)
        if path == "/api/status":
            return source.status()
        if path == "/api/nodes":
            return nodes_table(source)
        if path == "/api/events":
            return recent_events(source, query)
        if path == "/api/topology":
            return topology(source)
        return self.live.snapshot()

    def metrics(self) -> WSUpgradeResponseWithListener:
        """``GET /metrics``: the Prometheus text exposition."""
        if self._registry is None:
            self._registry = metrics.registry_for(self.source, self)
        body, ctype = metrics.render(self._registry)
        return self._response(200, body, ctype)


def recent_events(source: HttpSource, query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``/api/events?count=N&type=T&type=U`` (``type=T,U`` works too), newest last.
    Raises :class:`BadQuery` for a bad ``count`` or ``type``."""
    count, types = events_params(query)
    out: list[dict[str, Any]] = []
    for ev in reversed(list(source.recent_events())):
        t = ev["type"] if isinstance(ev, dict) else ev.event_type
        if types and t not in types:
            continue
        out.append(envelope(ev))
        if len(out) >= count:
            break
    out.reverse()
    return out

