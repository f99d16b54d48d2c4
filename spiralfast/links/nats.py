"""NATS transport: batched frames over core NATS, optionally kept in JetStream.

Subjects (``M`` = the mesh name, escaped to a subject token: meshes sharing a NATS
never see each other's frames):
- ``spiralfast.M.bcast``: broadcast frames (heartbeats, events, state, gossip);
- ``spiralfast.M.node.<node_id>``: frames for one node (direct messages, repairs);
- ``spiralfast.M.members``: the bus membership: flow-control acks, joins (answered
  at once by every member with its record: busflow.py) and leave notices, which tell
  the others who reads its own subject (``can_reach``).

Every payload is sealed by ``busauth.BusSealer`` exactly as on Redis (sender, and with
a mesh token a MAC and a replay counter); this link only moves payloads and the
node's gate decides what they may do.  Sequences, de-duplication and gap repair are
the node's (frames go through ``host.frame_received``), so a reconnect to another
server of a cluster (nats-py fails over by itself) loses nothing the senders' retransmit
buffers still hold.

With ``stream=True`` the broadcast subject is also captured by a JetStream stream
(limits: max age, max bytes).  After a reconnect the node reads the stream from
shortly before the last broadcast it received, holding live frames meanwhile, and
feeds the events (only events: old heartbeats or gossip must not revive anyone)
through the normal receive path, whose per-origin windows make delivery exactly
once.  DESIGN-NOTES.md, "NATS".
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from .. import schema
from .._aio import cancel_all
from .._log import RateLimitedLog
from ..busauth import BusSealer, bus_identity
from ..codec import FrameWriter, decode_frame
from ..errors import AuthError, FrameError
from .busflow import BusFlow

log = logging.getLogger("spiralfast.nats")

#: Frames held while NATS is away or slow; beyond it the oldest are dropped (counted).
MAX_PENDING_FRAMES = 10_000
#: Bytes queued for NATS beyond which senders wait.
MAX_PENDING_BYTES = 16 * 1024 * 1024
#: Flow control, as on Redis: receivers ack the sender's running byte offset; a
#: sender whose slowest live receiver lags more than MAX_LAG_BYTES waits (NATS cuts
#: off a slow consumer, and nats-py drops beyond a subscription's pending limits).
MAX_LAG_BYTES = 4 * 1024 * 1024
RESUME_LAG_BYTES = 1024 * 1024
ACK_EVERY_BYTES = 256 * 1024
ACK_INTERVAL = 0.05
CONNECT_TIMEOUT = 2
#: Seconds before dialling the same server again (another server of the list is tried at once).
RECONNECT_WAIT: Any = 0.25  # nats-py annotates it int; a float works
RECONNECT_MAX = 1.0  # a first connect retried at most once a second (as the Redis link)
#: Live frames held while catching up from the stream (each authenticated first), at
#: most this many and this many bytes; beyond either the oldest held frames are dropped
#: (counted, ``held_dropped``): the node's gap repair asks their senders again.
MAX_HELD_FRAMES = 50_000
MAX_HELD_BYTES = 64 * 1024 * 1024
#: Catch-up reads the stream from this long before the last broadcast received.
CATCHUP_MARGIN = 2.0
#: A catch-up never takes longer than this (live frames are held meanwhile).
CATCHUP_TIMEOUT = 20.0


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_SEALED_SENT = struct.Struct("<Q")  # busauth: flag, sender length, sender, epoch, counter, *sent ms*


def mask_url(text: str) -> str:
    """``text`` with the secrets of every URL in it masked (``safetext.mask_secrets``)."""
    from ..safetext import mask_secrets

    return mask_secrets(text)


def _sealed_sent(data: bytes) -> float:
    """The send time (seconds) in a sealed frame's header (one ``open`` accepted)."""
    return _SEALED_SENT.unpack_from(data, 2 + data[1] + 16)[0] / 1000.0


def subject_token(name: str) -> str:
    """``name`` as one subject token (and a valid stream name): letters, digits, ``_``
    and ``-`` stay, every other byte becomes ``~xx`` (so distinct names stay distinct)."""
    out = []
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            out.append(ch)
        else:
            out.extend(f"~{b:02x}" for b in ch.encode())
    return "".join(out) or "~"


def server_list(url: str | list[str] | tuple[str, ...]) -> list[str]:
    """A URL, a comma-separated string of them, or a list: the servers, in order."""
    items = [url] if isinstance(url, str) else list(url)
    return [u.strip() for item in items for u in item.split(",") if u.strip()]


@dataclass
class NatsSettings:
    """What the NATS transport needs to know (from ``MeshConfig``)."""

    node_id: str
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    mesh_name: str = "spiral_codex_mesh"
    token: str | None = None
    heartbeat_interval: float = 30.0
    replay_window: float = 120.0
    stream: bool = False
    stream_max_age: float = 3600.0  # seconds a broadcast stays in the stream
    stream_max_bytes: int = 256 * 1024 * 1024
    prefix: str = "spiralfast"
    ssl_cafile: str | None = None  # CA bundle for tls:// servers (None: the system CAs)

    @classmethod
    def from_config(cls, cfg: Any, node_id: str) -> NatsSettings:
        return cls(node_id, server_list(cfg.nats_url), cfg.mesh_name, cfg.auth_token, cfg.heartbeat_interval,
                   60.0 + cfg.max_clock_offset, bool(cfg.nats_stream),
                   float(cfg.nats_stream_max_age), int(cfg.nats_stream_max_bytes),
                   ssl_cafile=getattr(cfg, "ssl_cafile", None))

    @property
    def wants_tls(self) -> bool:
        return any(u.startswith("tls://") for u in self.servers)

    @property
    def display_servers(self) -> str:
        return mask_url(", ".join(self.servers))


_CLIENT: Any = None


def _client_class() -> Any:
    """nats-py's client, delivering our subscriptions' messages inline.

    nats-py hands each message to a per-subscription task through a queue (a Msg
    object and a task switch per message); for the three subjects we read, its reader
    calls us directly instead (``sf_inline``: sid -> (subject, handler)), which keeps
    order and lets TCP push back on a slow node.  Anything else (JetStream, headers)
    takes nats-py's own path.

    It also holds nats-py to a ``tls://`` URL: nats-py upgrades to TLS only when the
    server's INFO demands it, so a plain server (or a man in the middle) would get our
    credentials in clear text.  For a ``tls://`` server the upgrade is forced, and a
    server that offers no TLS at all is refused before anything is sent."""
    global _CLIENT
    if _CLIENT is None:
        from nats.aio.client import Client
        from nats.errors import Error as NatsError

        class InlineClient(Client):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.sf_inline: dict[int, tuple[str, Any]] | None = {} if hasattr(Client, "_process_msg") else None

            async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
                srv = getattr(self, "_current_server", None)
                if initial_connection and srv is not None and srv.uri.scheme == "tls":
                    if not (info.get("tls_required") or info.get("tls_available")):
                        raise NatsError(f"nats: tls:// URL, but the server at {srv.uri.hostname}:{srv.uri.port} "
                                        "offers no TLS; refusing to connect in plain text")
                    info["tls_required"] = True  # nats-py upgrades only when told to
                await super()._process_info(info, initial_connection)

            async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                                   headers: bytes) -> None:
                h = self.sf_inline.get(sid) if self.sf_inline is not None else None
                if h is None or headers:
                    return await super()._process_msg(sid, subject, reply, data, headers)
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                h[1](h[0], data)

        _CLIENT = InlineClient
    return _CLIENT


class NatsTransport(BusFlow):
    """The node's link to a NATS bus (one ``Link`` for every peer behind it)."""

    transport = "nats"
    shared_bus = True
    outbound = True
    max_pending_frames, max_pending_bytes = MAX_PENDING_FRAMES, MAX_PENDING_BYTES
    max_lag_bytes, resume_lag_bytes, ack_every_bytes = MAX_LAG_BYTES, RESUME_LAG_BYTES, ACK_EVERY_BYTES

    def __init__(self, host: Any, settings: NatsSettings) -> None:
        self.host = host
        self.settings = st = settings
        self.node_id = st.node_id
        self.session: Any = None
        self.peer_id: str | None = None
        self.name = "nats"
        base = f"{st.prefix}.{subject_token(st.mesh_name)}"
        self.base = base
        self.bcast = f"{base}.bcast"
        self.direct_prefix = f"{base}.node."
        self.my_subject = self.direct_prefix + subject_token(st.node_id)
        self.members = f"{base}.members"
        self.stream_name = f"{st.prefix}_{subject_token(st.mesh_name)}"
        self.sealer = BusSealer(st.node_id, st.mesh_name, st.token, st.replay_window, **bus_identity(host))
        # Acks and leave notices count on their own (their own replay state on both sides).
        self.msealer = BusSealer(st.node_id, st.mesh_name, st.token, st.replay_window, **bus_identity(host))
        self.nc: Any = None
        self.connected = False
        self.ever_connected = False
        self.stream_on = st.stream
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.tx_offset = 0
        self.ctl_counter = 0
        self.acked: dict[str, int] = {}
        self.ack_progress: dict[str, float] = {}
        self.rx_offsets: dict[str, int] = {}
        self.ack_sent: dict[str, int] = {}
        self.congested = False
        self.ack_holds: dict[str, float] = {}  # sender -> until when its acks wait (rate limit)
        self.join_answered: dict[str, float] = {}  # joiner -> when we last answered it
        self.join_window: list[float] = [0.0, 0]  # (start of this second, answers in it)
        self._direct: dict[str, Any] = {}
        self._direct_scheduled = False
        self.sf_nodes: set[str] = set()
        self._flush_scheduled = False
        self._flushing = False
        self._draining = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self.errlog = RateLimitedLog(log)
        self.stopping = False
        self.last_rx_wall = 0.0  # wall time of the last broadcast frame received live
        self.down_since: float | None = None
        # Live broadcasts held during a catch-up, already authenticated: (sender, offset, frame, size).
        self.held: deque[tuple[str, int, memoryview, int]] | None = None
        self.held_bytes = 0
        self.stats = {"published": 0, "received": 0, "bad": 0, "refused": 0, "dropped": 0, "reconnects": 0,
                      "paced": 0, "acks_sent": 0, "direct": 0, "too_large": 0, "slow_consumer": 0,
                      "catchups": 0, "caught_up_frames": 0, "caught_up_events": 0, "held_dropped": 0,
                      "stream_refused": 0, "joins_sent": 0, "joins_answered": 0, "joins_unanswered": 0}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> bool:
        """Connect; False (one warning) if no server answers.  Either way the node goes
        on: a background task connects as soon as a server appears."""
        ok = await self._connect()
        if not ok:
            self.errlog("down", logging.WARNING, "NATS at %s unreachable; running without NATS (will connect when "
                        "it appears)", self.settings.display_servers)
            self._tasks.append(asyncio.ensure_future(self._connect_loop()))
        self._tasks.append(asyncio.ensure_future(self._ack_loop()))
        return ok

    async def _connect(self) -> bool:
        st = self.settings
        nc = _client_class()()
        tls: dict[str, Any] = {}
        if st.wants_tls:  # verified against ssl_cafile, else the system CAs
            try:
                tls["tls"] = ssl.create_default_context(cafile=st.ssl_cafile)
            except (OSError, ssl.SSLError) as exc:
                self.errlog("tls", logging.ERROR, "NATS: cannot load the CA bundle %s: %s", st.ssl_cafile, exc)
                return False
        try:
            # With endless reconnects nats-py never gives up on a first connect either: bound it.
            await asyncio.wait_for(nc.connect(
                st.servers, name=f"spiralfast {st.node_id}", connect_timeout=CONNECT_TIMEOUT,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT, dont_randomize=True,
                ping_interval=5, max_outstanding_pings=2, no_echo=True, pending_size=MAX_PENDING_BYTES * 2,
                error_cb=self._error_cb, disconnected_cb=self._disconnected_cb, reconnected_cb=self._reconnected_cb,
                **tls,
            ), CONNECT_TIMEOUT + 1.0)
        except Exception:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                pass
            return False
        self.nc = nc
        try:
            self._subs = []
            for subject in (self.bcast, self.my_subject, self.members):
                sub = await nc.subscribe(subject, cb=self._on_msg, pending_msgs_limit=1_000_000,
                                         pending_bytes_limit=512 * 1024 * 1024)
                self._subs.append(sub)
                inline = getattr(nc, "sf_inline", None)
                if inline is not None:
                    inline[sub._id] = (subject, self._on_data)
            if self.stream_on:
                await self._ensure_stream()
            # The server has our subscriptions before anyone answers our join.
            await asyncio.wait_for(nc.flush(CONNECT_TIMEOUT), CONNECT_TIMEOUT + 0.5)
        except Exception as exc:
            self.errlog("down", logging.WARNING, "NATS subscribe failed (%s); will retry", mask_url(str(exc)))
            await self._close_nc()
            return False
        self.connected = self.ever_connected = True
        self.last_rx_wall = time.time()
        self._join()  # on the bus: our gossip out, and the members' records asked for
        self._kick()
        return True

    async def _connect_loop(self) -> None:
        delay = 0.1
        while not self.stopping and self.nc is None:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RECONNECT_MAX)
            if await self._connect():
                self.errlog.clear("down", logging.INFO, "NATS at %s reachable; connected to %s",
                                  self.settings.display_servers, self.info().get("server"))

    async def _ensure_stream(self) -> None:
        from nats.js import api

        st = self.settings
        js = self.nc.jetstream()
        cfg = api.StreamConfig(name=self.stream_name, subjects=[self.bcast], max_age=st.stream_max_age,
                               max_bytes=st.stream_max_bytes, storage=api.StorageType.FILE,
                               discard=api.DiscardPolicy.OLD, num_replicas=1)
        try:
            await asyncio.wait_for(js.add_stream(cfg), 5.0)
        except Exception as exc:
            try:  # made by another node with other limits: use it as it is
                await asyncio.wait_for(js.stream_info(self.stream_name), 5.0)
            except Exception:
                log.warning("JetStream stream %s unavailable (%s); running without catch-up", self.stream_name,
                            mask_url(str(exc)))
                self.stream_on = False

    async def stop(self) -> None:
        if self.connected:
            self._publish_ctl({"bye": True})
        await self._flush_now()
        self.stopping = True
        await cancel_all(self._tasks)
        self.host.bus_down(self)
        await self._close_nc()
        self.connected = False

    async def _close_nc(self) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.flush(1), 1.5)
        except Exception:
            pass
        try:
            await asyncio.wait_for(nc.close(), 3.0)
        except Exception:
            pass

    def close(self, reason: str = "") -> None:
        """A bus stays open: one bad sender must not cut us off from the others."""
        self.errlog("close", logging.WARNING, "ignoring request to close the NATS link: %s", reason)

    def pause_reading(self) -> None:
        """Core NATS cannot be paused without losing messages; receivers ack instead."""

    def resume_reading(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        server = None
        if self.nc is not None and self.connected:
            try:
                u = self.nc.connected_url
                server = f"{u.hostname}:{u.port}" if u is not None else None
            except Exception:
                server = None
        return {"state": "open" if self.connected else "down", "server": server, "stream": self.stream_on,
                **self.stats, "auth": {k: v + self.msealer.stats[k] for k, v in self.sealer.stats.items()}}

    def heartbeat(self) -> None:
        """Nothing to add: heartbeats and gossip ride on the broadcast subject."""

    # -- nats-py callbacks ---------------------------------------------------------

    async def _error_cb(self, exc: Exception) -> None:
        name = type(exc).__name__
        if "SlowConsumer" in name:
            self.stats["slow_consumer"] += 1
        elif isinstance(exc, OSError) and not self.connected:
            return  # a server refusing us while we reconnect: the "down" warning said it
        self.errlog(("error", name), logging.WARNING, "NATS: %s", mask_url(str(exc)) or name)

    async def _disconnected_cb(self) -> None:
        if self.stopping or not self.connected:
            return
        self.connected = False
        self.down_since = time.monotonic()
        self.errlog("down", logging.WARNING, "NATS connection lost; reconnecting (servers %s)",
                    self.settings.display_servers)
        self.host.bus_down(self)
        if self.congested:
            self._set_congested(False)

    async def _reconnected_cb(self) -> None:
        if self.stopping:
            return
        self.stats["reconnects"] += 1
        self.connected = True
        self.down_since = None
        self.errlog.clear("down", logging.INFO, "NATS reconnected (%s)", self.info().get("server"))
        if self.stream_on and self.held is None:
            self.held = deque()  # from now on live broadcasts wait for the catch-up
            self.held_bytes = 0
            t = asyncio.ensure_future(self._catch_up(self.last_rx_wall - CATCHUP_MARGIN))
            self._tasks.append(t)
            t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        self._join()
        self._kick()

    async def stream_catch_up(self, since: float) -> None:
        """Catch up from the stream since ``since`` (wall time) now (a node returning
        with a delivery cursor: ``catchup.py``), holding live broadcasts meanwhile as a
        reconnect does; returns when done.  Nothing when the stream is off or a
        catch-up is already on its way."""
        if not self.stream_on or self.held is not None or not self.connected:
            return
        self.held = deque()
        self.held_bytes = 0
        await self._catch_up(since)

    # -- sending -------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        self._send_sf(self.bcast, frame)
        return True

    def _direct_channel(self, target: str) -> str:
        return self.direct_prefix + subject_token(target)

    def _queue(self, subject: str, payload: bytes) -> None:
        if not self.ever_connected:
            return  # nobody on NATS has heard of us yet
        if len(self.pending) >= MAX_PENDING_FRAMES and not self.connected:
            self.pending_bytes -= len(self.pending[0][1])
            del self.pending[0]
            self.stats["dropped"] += 1
        if not self.pending and not self._flushing and self.connected and self._write_now(subject, payload):
            return
        self.pending.append((subject, payload))
        self.pending_bytes += len(payload)
        self._kick()

    def _write_now(self, subject: str, payload: bytes) -> bool:
        """The fast path: straight onto the connection's socket, in this loop iteration
        (nats-py's publish costs a task switch to its flusher; at 10k events/s those
        hops were most of the latency).  Only while nats-py holds nothing unwritten, so
        order is kept; False (the caller queues) whenever that cannot be vouched for."""
        nc = self.nc
        writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        if writer is None or nc._pending or not nc.is_connected:
            return False
        if len(payload) > nc.max_payload:
            self.stats["too_large"] += 1
            self.errlog("too_large", logging.WARNING, "a frame of %d bytes is over the NATS server's max_payload; "
                        "dropped", len(payload))
            return True
        writer.writelines((b"PUB %s %d\r\n" % (subject.encode(), len(payload)), payload, b"\r\n"))
        self.stats["published"] += 1
        if writer.transport.get_write_buffer_size() > MAX_PENDING_BYTES and not self._draining:
            self._draining = True  # the server reads slower than we write: senders wait
            if not self.congested:
                self._set_congested(True)
            t = asyncio.ensure_future(self._drain(writer))
            self._tasks.append(t)
            t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return True

    async def _drain(self, writer: Any) -> None:
        try:
            await writer.drain()
        except Exception:
            pass
        finally:
            self._draining = False
            if self.congested:
                self._recheck()

    def _kick(self) -> None:
        if self.pending and not self._flush_scheduled and not self._flushing:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_scheduled = False
        if self.pending and self.connected:
            t = asyncio.ensure_future(self._flush_now())
            self._tasks.append(t)
            t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _flush_now(self) -> None:
        """Publish what is queued, in order (one flusher at a time)."""
        nc = self.nc
        if not self.pending or nc is None or self._flushing:
            return
        self._flushing = True
        try:
            while self.pending and self.connected:
                batch, self.pending = self.pending, []
                self.pending_bytes = 0
                publish = nc.publish
                i = 0
                try:
                    for i, (subject, payload) in enumerate(batch):  # noqa: B007
                        if not self._write_now(subject, payload):
                            await publish(subject, payload)
                            self.stats["published"] += 1
                        while self._draining and self.connected:
                            await asyncio.sleep(0.002)  # the socket drains: wait, keeping the order
                except Exception as exc:
                    name = type(exc).__name__
                    if name == "MaxPayloadError":
                        self.stats["too_large"] += 1
                        self.errlog("too_large", logging.WARNING, "a frame of %d bytes is over the NATS server's "
                                    "max_payload; dropped", len(batch[i][1]))
                        i += 1
                    else:
                        self.errlog("down", logging.WARNING, "NATS publish failed (%s); will retry",
                                    mask_url(str(exc)))
                    rest = batch[i:]
                    self.pending[:0] = rest
                    self.pending_bytes = sum(len(p) for _, p in self.pending)
                    if name != "MaxPayloadError":
                        await asyncio.sleep(0.1)
                    continue
                if self.congested:
                    self._recheck()
        finally:
            self._flushing = False
        if self.pending and self.connected:
            self._kick()

    def _publish_ctl(self, obj: dict[str, Any]) -> None:
        """Acks and notices on the membership subject: never queued behind the data they pace."""
        if self.nc is None or not self.connected:
            return
        self.ctl_counter += 1
        payload = self.msealer.seal(self.members.encode(), self.ctl_counter, msgspec.msgpack.encode(obj))
        if self._write_now(self.members, payload):
            return
        t = asyncio.ensure_future(self._publish_now(self.members, payload))
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _publish_join(self) -> None:
        self._publish_ctl({"join": 1})

    async def _publish_now(self, subject: str, payload: bytes) -> None:
        try:
            await self.nc.publish(subject, payload)
        except Exception:
            pass

    # -- receiving -----------------------------------------------------------------

    async def _on_msg(self, msg: Any) -> None:
        self._on_data(msg.subject, msg.data)

    def _on_data(self, subject: str, data: bytes) -> None:
        try:
            self.stats["received"] += 1
            if subject == self.members:
                self._on_ctl(data)
            elif self.held is not None and subject == self.bcast:
                self._hold(data)
            else:
                self._on_frame(subject, data)
        except Exception as exc:  # one bad message must never cost the subscription
            self._bad(f"error handling a message: {exc!r}")

    def _open(self, sealer: BusSealer, subject: str, data: bytes) -> tuple[str, int, memoryview] | None:
        try:
            return sealer.open(subject.encode(), data)
        except (AuthError, FrameError) as exc:
            self.stats["refused"] += 1
            self.errlog(("refused", type(exc).__name__), logging.WARNING, "refused a NATS frame: %s", exc)
            return None

    def _hold(self, data: bytes) -> None:
        """A live broadcast during a catch-up: authenticated now (an outsider's bytes are
        never held), delivered after it.  Bounded in frames and bytes: beyond either, the
        oldest held frames are dropped (counted) and the node's gap repair asks again."""
        opened = self._open(self.sealer, self.bcast, data)
        if opened is None or opened[0] == self.node_id:
            return
        held = self.held
        assert held is not None
        held.append((*opened, len(data)))
        self.held_bytes += len(data)
        while held and (self.held_bytes > MAX_HELD_BYTES or len(held) > MAX_HELD_FRAMES):
            self.held_bytes -= held.popleft()[3]
            self.stats["held_dropped"] += 1

    def _on_frame(self, subject: str, data: bytes) -> None:
        opened = self._open(self.sealer, subject, data)
        if opened is None:
            return
        self._deliver(subject, *opened)

    def _deliver(self, subject: str, sender: str, offset: int, frame: memoryview) -> None:
        if sender == self.node_id:
            return
        if subject == self.bcast:
            self.last_rx_wall = time.time()
        self.sf_nodes.add(sender)
        self.host.frame_received(self, frame, sender)
        self._note_received(sender, offset)

    def _on_ctl(self, data: bytes) -> None:
        opened = self._open(self.msealer, self.members, data)
        if opened is None:
            return
        sender, _, body = opened
        if sender == self.node_id:
            return
        try:
            obj = msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, ValueError, RecursionError):
            return self._bad("malformed membership message")
        if not isinstance(obj, dict):
            return self._bad("malformed membership message")
        if obj.get("bye"):
            self.sf_nodes.discard(sender)
            self.acked.pop(sender, None)
            return
        if obj.get("join"):
            return self._on_join(sender)
        acks = obj.get("acks")
        self._acked(sender, acks.get(self.node_id) if isinstance(acks, dict) else None)

    def _send_acks(self) -> None:
        todo = self._ackable()
        if not todo or not self.connected:
            return
        self.ack_sent.update(todo)
        self.stats["acks_sent"] += 1
        self._publish_ctl({"acks": todo})

    async def _ack_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(ACK_INTERVAL)
            self._send_acks()
            if self.congested:
                self._recheck()

    def _bad(self, why: str) -> None:
        self.stats["bad"] += 1
        self.errlog(("bad", why[:40]), logging.WARNING, "ignoring malformed NATS message: %s", why)

    # -- JetStream catch-up --------------------------------------------------------

    async def _catch_up(self, since: float) -> None:
        """Deliver the broadcasts kept in the stream since ``since`` (wall time), then
        the live frames held meanwhile.  Copies we already had are dropped by the
        per-origin windows, so each event is delivered once."""
        from nats.js import api

        self.stats["catchups"] += 1
        # Its own replay state and a window as long as the stream keeps frames: old
        # frames are expected here; the MAC still proves who sent them.  Each frame must
        # also have been stored (the stream's timestamp) within the live replay window of
        # its send time, and sent no earlier than ``since`` minus that window (``_replayed``).
        opener = BusSealer(self.node_id, self.settings.mesh_name, self.settings.token,
                           self.settings.stream_max_age + self.settings.replay_window,
                           **bus_identity(self.host, fresh_pins=True))
        sub = None
        try:
            js = self.nc.jetstream()
            info = await asyncio.wait_for(js.stream_info(self.stream_name), 5.0)
            last = info.state.last_seq
            start = datetime.fromtimestamp(max(since, 0.0), UTC)
            if last:
                cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=start)
                sub = await js.subscribe(self.bcast, stream=self.stream_name, ordered_consumer=True, config=cfg)
                deadline = time.monotonic() + CATCHUP_TIMEOUT
                first = True
                while time.monotonic() < deadline:
                    try:
                        msg = await sub.next_msg(timeout=1.0 if first else 2.0)
                    except TimeoutError:
                        break  # nothing (more) since then
                    except Exception as exc:
                        if "Timeout" in type(exc).__name__:
                            break
                        raise
                    first = False
                    md = msg.metadata
                    self._replayed(opener, msg.data, md.timestamp.timestamp(), since)
                    if md.sequence.stream >= last or md.num_pending == 0:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errlog(("catchup", type(exc).__name__), logging.WARNING,
                        "JetStream catch-up failed (%s); gaps are repaired from the senders", exc)
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass
            self._release_held()

    def _replayed(self, opener: BusSealer, data: bytes, stored: float, since: float) -> None:
        """One frame from the stream: authenticated, then only its events delivered.

        ``stored`` is when the stream kept it (JetStream's timestamp).  A sender's frame
        reaches the stream as it reaches live receivers, so one stored later than the live
        replay window after its send time was published again by someone else (a captured
        frame): refused, as the live path would have refused it then."""
        try:
            sender, _, frame = opener.open(self.bcast.encode(), data)
        except (AuthError, FrameError) as exc:
            self.stats["refused"] += 1
            self.errlog(("refused", type(exc).__name__), logging.WARNING, "refused a stream frame: %s", exc)
            return
        if sender == self.node_id:
            return
        window = self.settings.replay_window
        sent = _sealed_sent(data)
        if abs(stored - sent) > window or sent < since - window:
            self.stats["refused"] += 1
            self.stats["stream_refused"] += 1
            self.errlog("stream_stale", logging.WARNING, "refused a stream frame from %s: sent %.0fs from when the "
                        "stream stored it, or before the catch-up window (a replayed frame)", sender[:64],
                        abs(stored - sent) if abs(stored - sent) > window else since - sent)
            return
        try:
            msgs = [m for m in decode_frame(frame) if m.kind == schema.KIND_EVENT and not m.target]
        except FrameError as exc:
            return self._bad(f"stream frame: {exc}")
        if not msgs:
            return
        w = FrameWriter()
        for m in msgs:
            w.add_raw(m.kind, m.etype, m.target, m.msg_id, m.payload)
        self.stats["caught_up_frames"] += 1
        self.stats["caught_up_events"] += len(msgs)
        self.host.frame_received(self, w.finish(), sender)

    def _release_held(self) -> None:
        held, self.held = self.held, None
        self.held_bytes = 0
        for sender, offset, frame, _ in held or ():
            try:
                self._deliver(self.bcast, sender, offset, frame)
            except Exception as exc:
                self._bad(f"error handling a message: {exc!r}")
