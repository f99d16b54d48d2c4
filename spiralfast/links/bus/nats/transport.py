"""NATS transport: batched frames over core NATS, optionally kept in JetStream.

Subjects (``M`` = the mesh name, escaped to a subject token: meshes sharing a NATS
never see each other's frames):
- ``spiralfast.M.bcast``: broadcast frames (heartbeats, events, state, gossip);
- ``spiralfast.M.node.<node_id>``: frames for one node (direct messages, repairs);
- ``spiralfast.M.members``: the bus membership: flow-control acks, joins (answered
  at once by every member with its record: links/bus/flow.py) and leave notices, which tell
  the others who reads its own subject (``can_reach``).

Every payload is sealed by ``busauth.BusSealer`` exactly as on Redis (sender, and with
a mesh token a MAC and a replay counter); this link only moves payloads and the
node's gate opens them (``LinkHost.bus_payload``) and decides what they may do.  Sequences, de-duplication and gap repair are
the node's (frames go through ``host.frame_received``), so a reconnect to another
server of a cluster (nats-py fails over by itself) loses nothing the senders' retransmit
buffers still hold.

With ``stream=True`` the broadcast subject is also captured by a JetStream stream
(limits: max age, max bytes).  After a reconnect the node reads the stream from
shortly before the last broadcast it received, holding live frames meanwhile, and
feeds the events (only events: old heartbeats or gossip must not revive anyone)
through the normal receive path, whose per-origin windows make delivery exactly
once (``catchup.py``).  nats-py is used through one adapter (``client.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque

import msgspec

from ...._aio import cancel_all
from ...._log import RateLimitedLog
from ....wire.sealing import BusSealer, bus_identity
from ...base import ControlMessage, LinkHost, LinkInfo, LinkSession
from ..flow import BusFlow
from .catchup import CATCHUP_MARGIN, CatchUpMixin
from .client import NatsClient, Writer, mask_url, write_line
from .settings import NatsSettings, subject_token

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
RECONNECT_WAIT = 0.25  # nats-py annotates it int; a float works
RECONNECT_MAX = 1.0  # a first connect retried at most once a second (as the Redis link)


class NatsTransport(CatchUpMixin, BusFlow):
    """The node's link to a NATS bus (one ``Link`` for every peer behind it)."""

    transport = "nats"
    shared_bus = True
    outbound = True
    max_pending_frames, max_pending_bytes = MAX_PENDING_FRAMES, MAX_PENDING_BYTES
    max_lag_bytes, resume_lag_bytes, ack_every_bytes = MAX_LAG_BYTES, RESUME_LAG_BYTES, ACK_EVERY_BYTES

    settings: NatsSettings

    def __init__(self, host: LinkHost, settings: NatsSettings) -> None:
        self.host = host
        self.settings = st = settings
        self.node_id = st.node_id
        self.session: LinkSession | None = None
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
        self.control_sealer = self.msealer
        self.client: NatsClient | None = None
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
        self._direct = {}
        self._direct_scheduled = False
        self.sf_nodes: set[str] = set()
        self._flush_scheduled = False
        self._flushing = False
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.errlog = RateLimitedLog(log)
        self.stopping = False
        self.last_rx_wall = 0.0  # wall time of the last broadcast frame received live
        self.down_since: float | None = None
        self.held = None  # live broadcasts held during a catch-up (catchup.py)
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
        client = NatsClient()
        tls = None
        if st.wants_tls:  # verified against ssl_cafile, else the system CAs
            try:
                tls = ssl.create_default_context(cafile=st.ssl_cafile)
            except (OSError, ssl.SSLError) as exc:
                self.errlog("tls", logging.ERROR, "NATS: cannot load the CA bundle %s: %s", st.ssl_cafile, exc)
                return False
        try:
            # With endless reconnects nats-py never gives up on a first connect either: bound it.
            await asyncio.wait_for(client.connect(
                st.servers, tls=tls, wants_tls=st.wants_tls, name=f"spiralfast {st.node_id}",
                connect_timeout=CONNECT_TIMEOUT, reconnect_time_wait=RECONNECT_WAIT,
                pending_size=MAX_PENDING_BYTES * 2, error_cb=self._error_cb,
                disconnected_cb=self._disconnected_cb, reconnected_cb=self._reconnected_cb,
            ), CONNECT_TIMEOUT + 1.0)
        except Exception:
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except Exception:
                pass
            return False
        self.client = client
        try:
            for subject in (self.bcast, self.my_subject, self.members):
                await client.subscribe(subject, self._on_data)
            if self.stream_on:
                await self._ensure_stream()
            # The server has our subscriptions before anyone answers our join.
            await asyncio.wait_for(client.flush(CONNECT_TIMEOUT), CONNECT_TIMEOUT + 0.5)
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
        while not self.stopping and self.client is None:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RECONNECT_MAX)
            if await self._connect():
                self.errlog.clear("down", logging.INFO, "NATS at %s reachable; connected to %s",
                                  self.settings.display_servers, self.info().get("server"))

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
        nc, self.client = self.client, None
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

    def info(self) -> LinkInfo:
        server = None
        if self.client is not None and self.connected:
            try:
                server = self.client.server()
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
        nc = self.client
        writer = nc.writer() if nc is not None else None  # None: nats-py's public path (client.py)
        if writer is None or nc is None:
            return False
        if len(payload) > nc.max_payload:
            self.stats["too_large"] += 1
            self.errlog("too_large", logging.WARNING, "a frame of %d bytes is over the NATS server's max_payload; "
                        "dropped", len(payload))
            return True
        unsent = write_line(writer, subject, payload)
        self.stats["published"] += 1
        if unsent > MAX_PENDING_BYTES and not self._draining:
            self._draining = True  # the server reads slower than we write: senders wait
            if not self.congested:
                self._set_congested(True)
            t = asyncio.ensure_future(self._drain(writer))
            self._tasks.append(t)
            t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return True

    async def _drain(self, writer: Writer) -> None:
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
        nc = self.client
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

    def _publish_ctl(self, obj: object) -> None:
        """Acks and notices on the membership subject: never queued behind the data they pace."""
        if self.client is None or not self.connected:
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
            assert self.client is not None
            await self.client.publish(subject, payload)
        except Exception:
            pass

    # -- receiving -----------------------------------------------------------------

    def _link(self) -> NatsTransport:
        return self

    def _on_data(self, subject: str, data: bytes) -> None:
        try:
            self.stats["received"] += 1
            # The gate opens it: bus_frame (then delivery) for a frame, on_control for the rest.
            self.host.bus_payload(self, subject, data, subject == self.members)
        except Exception as exc:  # one bad message must never cost the subscription
            self._bad(f"error handling a message: {exc!r}")

    def bus_frame(self, channel: str, sender: str, offset: int, frame: memoryview) -> bool:
        """A data frame the gate opened: True to deliver it now (then ``bus_delivered``);
        a broadcast during a catch-up is held for after it."""
        if sender == self.node_id:
            return False
        if channel == self.bcast:
            if self.held is not None:
                self._hold(sender, offset, frame)
                return False
            self.last_rx_wall = time.time()
        self.sf_nodes.add(sender)
        return True

    def _deliver(self, subject: str, sender: str, offset: int, frame: memoryview) -> None:
        """A held broadcast, after the catch-up (opened by the gate when it came)."""
        if sender == self.node_id:
            return
        if subject == self.bcast:
            self.last_rx_wall = time.time()
        self.sf_nodes.add(sender)
        self.host.frame_received(self, frame, sender)
        self._note_received(sender, offset)

    def on_control(self, sender: str, message: ControlMessage) -> None:
        """An ack, a join or a leave notice on the membership subject, opened by the gate."""
        if message.get("bye"):
            self.sf_nodes.discard(sender)
            self.acked.pop(sender, None)
            return
        if message.get("join"):
            return self._on_join(sender)
        acks = message.get("acks")
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

