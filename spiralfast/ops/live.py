"""The dashboard's live feed (``/live``, JSON over WebSocket).

The feed computes one snapshot per second while at least one client is connected,
encodes it once and sends it to every client: rates, not events, so the page costs
the node the same at 10 events/s or 1M events/s.

With ``auth_token`` set, a client sends ``{"token": "..."}`` as its first message (the
browser cannot set headers on a WebSocket).  Every frame a dashboard connection sends
is counted, pings included: the page sends its token and nothing else, so past
``LIVE_MAX_FRAMES`` the connection is closed and counted
(``side_door_refused_total{reason="live_flood"}``), like a guest on the mesh path.

Everything the feed reads of the node comes through an
:class:`~spiralfast.ports.ops.HttpSource`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any, Protocol

import orjson
import picows
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from .._log import RateLimitedLog
from ..ports.ops import HttpSource
from ..protocol.states import node_state, node_states
from ..wire.limits import MAX_PREAUTH_FRAMES
from .metrics import peer_label
from .status import envelope, jsonable, nodes_table, topology

log = logging.getLogger("spiralfast.http")

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




class LiveDoors(Protocol):
    """The WebSocket transport serving the port (``links.ws.WebSocketTransport``), as the feed sees it."""

    refusals: dict[str, int]

    def attach_live(self, tr: Any, client: Any) -> None: ...

    def close_door(self, tr: Any) -> None: ...


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
    data = orjson.dumps(jsonable(env.get("data"))).decode()
    if len(data) > DATA_PREVIEW:
        data = data[: DATA_PREVIEW - 1] + "…"
    out = {"type": env.get("type"), "source_node": env.get("source_node"), "timestamp": env.get("timestamp"),
           "data": data}
    if env.get("target_node"):
        out["target_node"] = env["target_node"]
    return out


class LiveFeed:
    """Snapshots for the dashboard, one per ``LIVE_INTERVAL``, while anyone watches."""

    def __init__(self, source: HttpSource) -> None:
        self.source = source
        self.clients: set[LiveClient] = set()
        self.pending: set[LiveClient] = set()
        self.task: asyncio.Task[None] | None = None
        self.history: deque[list[float]] = deque(maxlen=LIVE_HISTORY)
        self.errlog = RateLimitedLog(log)
        self.auth_failures = 0  # dashboard connections refused for a wrong token
        self.http_refused = 0  # HTTP requests refused for a missing or wrong token
        self.flood_closed = 0  # dashboard connections closed for sending too many frames
        self.doors: LiveDoors | None = None  # the WebSocket transport (links.ws.WebSocketTransport), once serving
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

    def accept(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        """Answer a request for ``/live``: upgraded to a :class:`LiveClient`, or refused."""
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
        if not self.source.running:
            return False
        return bool(self.clients) or time.monotonic() - self.last_client < LIVE_LINGER

    async def _loop(self) -> None:
        try:
            while self._wanted():
                await asyncio.sleep(LIVE_INTERVAL)
                if not self._wanted():
                    break
                if not self.clients:  # nobody watching: keep the chart's history only
                    self._sample(self.source.status())
                    continue
                payload = self.snapshot_bytes()
                for c in list(self.clients):
                    c.send(payload)
        except Exception:
            self.errlog(("live-loop",), logging.ERROR, "dashboard feed failed", exc_info=True)
        finally:
            if not self.source.running:
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
        recent = list(self.source.recent_events())
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
        source = self.source
        st = source.status()
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
        recent = [_preview(envelope(e)) for e in list(source.recent_events())[-RECENT_SHOWN:]]
        recent.reverse()
        table = nodes_table(source)
        nodes = []
        for n in table:
            d = {k: n.get(k) for k in ("node_id", "name", "status", "capabilities", "websocket_endpoint",
                                       "seconds_since_heartbeat", "local", "last_heartbeat")}
            d["suspect"] = n.get("suspect") is True
            d["state"] = node_state(n)
            nodes.append(d)
        snap: dict[str, Any] = jsonable({
            "t": time.time(),
            "node_id": source.node_id,
            "mesh_name": st.get("mesh_name"),
            "status": st.get("status"),
            "uptime": st.get("uptime"),
            "redis": st.get("redis"),
            "nats": st.get("nats"),
            "interval": LIVE_INTERVAL,
            "nodes": nodes,
            "topology": topology(source, st.get("links") or [], table),
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
                "keys": {str(c): n for c, n in source.state_key_counts().items()},
            },
            "recent": recent,
            "tasks": st.get("tasks") or None,
            "persistence": st.get("persistence"),
            "observers": st.get("observers"),
        })
        return snap


class LiveClient(picows.WSListener):
    """One dashboard connection: authenticates (if the node has a token), then receives snapshots."""

    def __init__(self, feed: LiveFeed) -> None:
        super().__init__()
        self.feed = feed
        self.transport: picows.WSTransport | None = None
        self.admitted = False
        self.closed = False
        self.frames = 0
        self.since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        doors = self.feed.doors
        if doors is not None:
            doors.attach_live(transport.underlying_transport, self)
        if not self.feed.source.auth_token:
            self.admitted = True
            self.feed.admit(self)
            return
        self.feed.pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(LIVE_AUTH_TIMEOUT, self._auth_timeout)
        self.send(orjson.dumps({"auth": "required"}))

    def _auth_timeout(self) -> None:
        if not self.admitted:
            self.close("authentication timeout")

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
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
        expected = self.feed.source.auth_token or ""
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

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
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

    def close(self, reason: str, code: picows.WSCloseCode | None = None) -> None:
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
