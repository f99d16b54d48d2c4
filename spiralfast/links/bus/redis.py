"""Redis transport: frames over pub/sub, published in one pipeline per loop tick.

Channels (``C`` = ``ritual_channel``, ``M`` = the mesh name: meshes sharing a Redis
never see each other's frames; on a database other than 0, ``M`` is ``db<n>:<mesh name>``,
because pub/sub ignores the database number: nodes on ``/0`` and ``/3`` are two meshes,
as their keys would be.  Database 0 keeps the plain names earlier releases use):
- ``C:sf:M``: spiralfast broadcast frames (heartbeats, events, state, gossip);
- ``C:sf:M:<node_id>``: spiralfast frames for one node (in ``M`` and ``<node_id>``,
  ``%`` and ``:`` are escaped as ``%25`` and ``%3a``, and a node id ``ack`` as ``%61ck``:
  no mesh/node name pair can name another pair's channel - ``channel_part``);
- ``C:sf:M:ack``: flow-control acks, and joins (answered at once by every member
  with its record: links/bus/flow.py);
- ``C`` and ``node_<id>``: the old JSON format, for ``spiralcodex.mesh`` nodes (only
  when interop is on: ``"auto"`` publishes JSON copies only while an old node was
  heard within 3 heartbeat intervals).  These are the old library's names, whatever the
  database: old nodes hear each other across databases, and so do we with them.

Every payload on the spiralfast channels is sealed by ``busauth.BusSealer``: it names
its sender and, with a mesh token, carries a MAC and a replay counter.  This link
only moves payloads: the node's gate opens them (``LinkHost.bus_payload``) and decides
what they may do, calling back ``bus_frame`` and ``on_control``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from ... import legacy
from ..._aio import cancel_all
from ..._log import RateLimitedLog
from ...errors import FrameError
from ...wire.sealing import BusSealer, bus_identity
from ..base import ControlMessage, LinkHost, LinkInfo, LinkSession, Record
from .flow import BusFlow

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from ...wire.schema import Event

log = logging.getLogger("spiralfast.redis")

#: Frames held while Redis is away; beyond it the oldest are dropped (counted).
MAX_PENDING_FRAMES = 10_000
#: Bytes queued for Redis beyond which senders wait (Redis slower than us).
MAX_PENDING_BYTES = 16 * 1024 * 1024
#: Flow control.  Each frame carries the sender's running byte offset; receivers ack
#: the offset they have processed.  A sender whose slowest live receiver lags more
#: than MAX_LAG_BYTES waits (its own echo counts too), keeping every subscriber well under Redis' pub/sub
#: output-buffer limits (8 MiB soft / 32 MiB hard by default).
MAX_LAG_BYTES = 2 * 1024 * 1024
RESUME_LAG_BYTES = 512 * 1024
ACK_EVERY_BYTES = 256 * 1024
ACK_INTERVAL = 0.05
#: Pipelines in flight at once: a fast publisher paces itself on Redis' replies.
MAX_INFLIGHT_PIPELINES = 4
CONNECT_TIMEOUT = 2.0
#: Reconnect back-off ceiling (seconds): one attempt a second per node while Redis is
#: away is cheap, and the mesh heals within about a second of Redis coming back.
RECONNECT_MAX = 1.0


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")

#: An old-format node counts as present this many heartbeat intervals after it was heard.
LEGACY_PRESENCE = 3


@dataclass
class RedisSettings:
    """What the Redis transport needs to know (from ``MeshConfig``)."""

    node_id: str
    url: str = "redis://localhost:6379"
    channel: str = "spiral_ritual_events"
    mesh_name: str = "spiral_codex_mesh"
    token: str | None = None
    interop: bool | str = "auto"
    heartbeat_interval: float = 30.0
    replay_window: float = 120.0

    @property
    def display_url(self) -> str:
        """The URL with its secrets masked (``safetext.mask_secrets``), for logs."""
        from ...safetext import mask_secrets

        return mask_secrets(self.url)

    @property
    def db(self) -> int:
        """The database number the URL names (``/3``, ``?db=3``); 0 when it names none."""
        return redis_db(self.url)

    @property
    def scope(self) -> str:
        """What follows ``C:sf:`` in the channel names: the mesh name, after ``db<n>:``
        on a database other than 0."""
        db = self.db
        mesh = channel_part(self.mesh_name)
        return mesh if db == 0 else f"db{db}:{mesh}"

    @classmethod
    def from_config(cls, cfg: object, node_id: str) -> RedisSettings:
        c = getattr  # the node's MeshConfig, read by name (this layer does not import the node's)
        return cls(node_id, c(cfg, "redis_url"), c(cfg, "ritual_channel"), c(cfg, "mesh_name"), c(cfg, "auth_token"),
                   c(cfg, "interop_mode")(), c(cfg, "heartbeat_interval"), 60.0 + c(cfg, "max_clock_offset"))


class RedisTransport(BusFlow):
    """The node's link to a Redis bus (one ``Link`` for every peer behind it)."""

    transport = "redis"
    shared_bus = True
    outbound = True
    max_pending_frames, max_pending_bytes = MAX_PENDING_FRAMES, MAX_PENDING_BYTES
    max_lag_bytes, resume_lag_bytes, ack_every_bytes = MAX_LAG_BYTES, RESUME_LAG_BYTES, ACK_EVERY_BYTES
    own_echo = True  # Redis delivers our own frames back to us: our reader paces us too

    def __init__(self, host: LinkHost, settings: RedisSettings) -> None:
        self.host = host
        self.settings = st = settings
        self.node_id = st.node_id
        self.session: LinkSession | None = None
        self.channel = st.channel
        base = f"{st.channel}:sf:{st.scope}"
        self.base = base
        self.sf_channel = base
        self.my_channel = f"{base}:{node_part(st.node_id)}"
        self.ack_channel = f"{base}:ack"
        self.legacy_direct = f"node_{st.node_id}"
        self.sealer = BusSealer(st.node_id, st.mesh_name, st.token, st.replay_window, **bus_identity(host))
        self.control_sealer = self.sealer  # the ack channel keeps its own replay state in the one sealer
        self.client: Redis | None = None
        self.pubsub: PubSub | None = None
        self.connected = False
        self.ever_connected = False
        self.peer_id: str | None = None
        self.name = "redis"
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.tx_offset = 0  # bytes of spiralfast frames we have published
        self.ack_counter = 0
        self.acked: dict[str, int] = {}  # receiver -> our offset it has processed
        self.ack_progress: dict[str, float] = {}  # receiver -> when its ack last advanced
        self.rx_offsets: dict[str, int] = {}  # sender -> its offset we have processed
        self.ack_sent: dict[str, int] = {}
        self.congested = False
        self.ack_holds: dict[str, float] = {}  # sender -> until when its acks wait (rate limit)
        self.join_answered: dict[str, float] = {}  # joiner -> when we last answered it
        self.join_window: list[float] = [0.0, 0]  # (start of this second, answers in it)
        self._direct = {}  # node id -> FrameWriter for its channel
        self._direct_scheduled = False
        self.legacy_nodes: dict[str, float] = {}  # old-format node -> monotonic time last heard
        self.sf_nodes: set[str] = set()
        self._flush_scheduled = False
        self._sem = asyncio.Semaphore(MAX_INFLIGHT_PIPELINES)
        self._tasks: list[asyncio.Task[None]] = []
        self.errlog = RateLimitedLog(log)
        self.stopping = False
        self.stats = {"published": 0, "pipelines": 0, "received": 0, "bad": 0, "refused": 0, "dropped": 0,
                      "reconnects": 0, "paced": 0, "acks_sent": 0, "direct": 0, "legacy_out": 0, "joins_sent": 0,
                      "joins_answered": 0, "joins_unanswered": 0}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> bool:
        """Connect; False (one warning) if Redis is unreachable.  Either way a
        background task keeps the subscription alive and connects as soon as Redis
        appears (re-enabling ``config.enable_redis``)."""
        import redis.asyncio as aioredis

        st = self.settings
        self.client = aioredis.from_url(
            st.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None, health_check_interval=0,
        )
        if st.db:
            log.info("Redis database %d: mesh %r uses channels %s* (pub/sub ignores the database number, so "
                     "the channel names carry it; nodes on other databases are other meshes)", st.db,
                     st.mesh_name, self.base)
        ok = await self._ping()
        if not ok:
            self.errlog("down", logging.WARNING,
                        "Redis at %s unreachable; running without Redis (will connect when it appears)",
                        st.display_url)
        self.connected = ok
        self.ever_connected = ok
        if ok:
            self.host.bus_up(self)
            self.announce()
        self._tasks.append(asyncio.ensure_future(self._reader()))
        self._tasks.append(asyncio.ensure_future(self._ack_loop()))
        return ok

    def _redis(self) -> Redis:
        """The client (made by ``start``)."""
        if self.client is None:
            raise ConnectionError("Redis link not started")
        return self.client

    async def _ping(self) -> bool:
        try:
            await asyncio.wait_for(self._redis().ping(), CONNECT_TIMEOUT)
            return True
        except Exception:
            return False

    async def stop(self) -> None:
        if self.legacy_on():
            self._queue(self.channel, legacy.encode("node_unregister", self.node_id, {"node_id": self.node_id}))
        await self._flush_now()
        self.stopping = True
        # redis-py (and wait_for in 3.11) can swallow a cancellation: cancel again if need be.
        for _ in range(3):
            pending = [t for t in self._tasks if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=2.0)
        await cancel_all([t for t in self._tasks if t.done()])
        self.host.bus_down(self)
        try:
            if self.pubsub is not None:
                await self.pubsub.aclose()
            await self._redis().aclose()
        except Exception:
            pass
        self.connected = False

    def close(self, reason: str = "") -> None:
        """A bus stays open: one bad sender must not cut us off from the others."""
        self.errlog("close", logging.WARNING, "ignoring request to close the Redis link: %s", reason)

    def pause_reading(self) -> None:
        """Pub/sub cannot be paused without losing messages; receivers ack instead."""

    def resume_reading(self) -> None:
        pass

    def info(self) -> LinkInfo:
        return {"state": "open" if self.connected else "down", **self.stats, "auth": dict(self.sealer.stats)}

    # -- the old format ------------------------------------------------------------

    def legacy_on(self) -> bool:
        """Publish old-format copies now? (True; "auto": while an old node is present.)"""
        mode = self.settings.interop
        if mode is True:
            return True
        if mode is False or not self.legacy_nodes:
            return False
        horizon = time.monotonic() - LEGACY_PRESENCE * self.settings.heartbeat_interval
        for nid, at in list(self.legacy_nodes.items()):
            if at < horizon:
                del self.legacy_nodes[nid]
        return bool(self.legacy_nodes)

    # -- sending -------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        self._send_sf(self.sf_channel, frame)
        return True

    def _direct_channel(self, target: str) -> str:
        return f"{self.base}:{node_part(target)}"

    def _queue(self, channel: str, payload: bytes) -> None:
        if not self.ever_connected:
            return  # nobody on Redis has heard of us yet: nothing worth keeping
        if len(self.pending) >= MAX_PENDING_FRAMES and not self.connected:
            # Redis is away: keep the newest, count what is dropped.  (While it is up,
            # a long queue makes senders wait instead; see _send_sf.)
            self.pending_bytes -= len(self.pending[0][1])
            del self.pending[0]
            self.stats["dropped"] += 1
        self.pending.append((channel, payload))
        self.pending_bytes += len(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_scheduled = False
        if self.pending:
            t = asyncio.ensure_future(self._flush_now())
            self._tasks.append(t)
            t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _flush_now(self) -> None:
        if not self.pending or self.client is None:
            return
        async with self._sem:
            batch, self.pending = self.pending, []
            self.pending_bytes = 0
            if not batch:
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                for ch, payload in batch:
                    pipe.publish(ch, payload)
                await pipe.execute()
                self.stats["pipelines"] += 1
                self.stats["published"] += len(batch)
                if self.congested:
                    self._recheck()
            except Exception as exc:
                self.errlog("down", logging.WARNING, "Redis publish failed (%s); will retry", exc)
                self.stats["dropped"] += max(0, len(batch) - MAX_PENDING_FRAMES)
                self.pending[:0] = batch[-MAX_PENDING_FRAMES:]
                self.pending_bytes = sum(len(p) for _, p in self.pending)
                await asyncio.sleep(0.2)
                # While Redis is away the reader's reconnect loop (with its backoff) owns
                # the retries: it flushes what is pending once connected again.
                if self.pending and self.connected and not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._spawn_flush)

    def announce(self) -> None:
        """Old-format nodes learn us from a node_register (spiralfast nodes from gossip)."""
        if self.legacy_on() or self.settings.interop is True:
            self._queue(self.channel, legacy.encode("node_register", self.node_id, self.host.local_record()))

    def heartbeat(self) -> None:
        if self.legacy_on():
            rec = self.host.local_record()
            self._queue(self.channel, legacy.encode("heartbeat", self.node_id, {
                k: rec.get(k) for k in ("node_id", "status", "recursion_depth", "entropy_level")}))

    def legacy_broadcast(self, ev: Event) -> None:
        if (self.legacy_nodes or self.settings.interop is True) and self.legacy_on():
            self.stats["legacy_out"] += 1
            self._queue(self.channel, legacy.encode(ev.event_type, self.node_id, ev.data, event_id=ev.event_id))

    def is_legacy(self, node_id: str) -> bool:
        return node_id in self.legacy_nodes and node_id not in self.sf_nodes

    def send_legacy(self, node_id: str, env: Record) -> None:
        self._queue(f"node_{node_id}", legacy.encode(env["type"], self.node_id, env.get("data"), node_id,
                                                      env.get("event_id"), env.get("timestamp")))

    # -- receiving -----------------------------------------------------------------

    async def _reader(self) -> None:
        delay = 0.1
        while not self.stopping:
            try:
                if not self.connected:
                    if not await self._ping():
                        raise ConnectionError("Redis unreachable")
                    if not self.ever_connected:
                        self.ever_connected = True
                        log.info("Redis at %s is reachable now; connected", self.settings.display_url)
                # Subscribe confirmations are read: the one for our own channel says every
                # channel is in place, and that is when we join (links/bus/flow.py).
                self.pubsub = self._redis().pubsub(ignore_subscribe_messages=False)
                chans = [self.sf_channel, self.my_channel, self.ack_channel]
                if self.settings.interop is not False:
                    chans += [self.channel, self.legacy_direct]
                await self.pubsub.subscribe(*chans)
                if not self.connected:
                    self.stats["reconnects"] += 1
                    self.errlog.clear("down", logging.INFO, "Redis at %s reachable again",
                                      self.settings.display_url)
                    self.connected = True
                    self.host.bus_up(self)
                    self.announce()
                    if self.pending and not self._flush_scheduled:
                        self._flush_scheduled = True
                        asyncio.get_running_loop().call_soon(self._spawn_flush)
                delay = 0.1
                async for msg in self.pubsub.listen():
                    kind = msg.get("type")
                    if kind != "message":
                        if kind == "subscribe" and _text(msg.get("channel")) == self.my_channel:
                            self._join()
                        continue
                    try:
                        self._on_message(msg["channel"], msg["data"])
                    except Exception as exc:  # one bad message must never cost the subscription
                        self._bad(f"error handling a message: {exc!r}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.ever_connected:
                    self.errlog("down", logging.WARNING, "Redis connection lost or unreachable (%s); reconnecting", exc)
                else:  # never reached since start: the same condition start() reported
                    self.errlog("down", logging.WARNING, "Redis at %s still unreachable; retrying",
                                self.settings.display_url)
                if self.connected:
                    self.connected = False
                    self.host.bus_down(self)
                self.connected = False
                try:
                    if self.pubsub is not None:
                        await self.pubsub.aclose()
                except Exception:
                    pass
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, RECONNECT_MAX)

    def _on_message(self, channel: bytes | str, data: bytes) -> None:
        self.stats["received"] += 1
        ch = channel.decode() if isinstance(channel, bytes) else channel
        if ch in (self.sf_channel, self.my_channel):
            self.host.bus_payload(self, ch, data)  # the gate opens it: bus_frame, then delivery
        elif ch == self.ack_channel:
            self.host.bus_payload(self, ch, data, True)  # the gate opens it: on_control
        else:
            self._on_legacy(data)

    def on_control(self, sender: str, message: ControlMessage) -> None:
        """An ack or a join on the ack channel, opened by the gate (never our own)."""
        if message.get(0) == "join":  # an int key: never a node id
            return self._on_join(sender)
        mine = message.get(self.node_id)
        if not isinstance(mine, int) or sender == self.node_id:
            return
        self._acked(sender, mine)

    def _send_acks(self) -> None:
        todo = self._ackable()
        if not todo or not self.connected:
            return
        self.ack_sent.update(todo)
        self.stats["acks_sent"] += 1
        self._publish_ctl(todo)

    def _publish_join(self) -> None:
        self._publish_ctl({0: "join"})

    def _publish_ctl(self, obj: object) -> None:
        """Acks and joins on the ack channel, sealed with their own counter."""
        self.ack_counter += 1
        payload = self.sealer.seal(self.ack_channel.encode(), self.ack_counter, msgspec.msgpack.encode(obj))
        # Acks bypass the data outbox: they must not queue behind the data they pace.
        t = asyncio.ensure_future(self._publish_now(self.ack_channel, payload))
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _publish_now(self, channel: str, payload: bytes) -> None:
        try:
            await self._redis().publish(channel, payload)
        except Exception:
            pass

    async def _ack_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(ACK_INTERVAL)
            self._send_acks()
            if self.congested:
                self._recheck()

    def bus_frame(self, channel: str, sender: str, offset: int, frame: memoryview) -> bool:
        """A data frame the gate opened: True to deliver it (then ``bus_delivered``)."""
        if sender == self.node_id:
            # Our own echo: nothing to deliver, but our subscription must keep up with
            # it too (Redis cuts off any subscriber that lags), so it paces us as well.
            self.acked[sender] = offset
            self.ack_progress[sender] = time.monotonic()
            if self.congested:
                self._recheck()
            return False
        self.sf_nodes.add(sender)
        return True

    def _on_legacy(self, data: bytes) -> None:
        try:
            decoded = legacy.decode(data)
        except FrameError as exc:
            return self._bad(str(exc))
        if decoded is None:
            return
        sender, msgs = decoded
        if sender == self.node_id:
            return
        self.legacy_nodes[sender] = time.monotonic()
        self.host.messages_received(self, sender, msgs)

    def _bad(self, why: str) -> None:
        self.stats["bad"] += 1
        self.errlog(("bad", why[:40]), logging.WARNING, "ignoring malformed Redis message: %s", why)


def _text(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def channel_part(name: str) -> str:
    """``name`` as one part of a channel name: ``%`` and ``:`` escaped (``%25``, ``%3a``), so
    distinct names stay distinct and none adds a part (mesh ``m:x`` is not node ``x`` of mesh
    ``m``).  Names without either keep the plain channel names of earlier releases."""
    if "%" not in name and ":" not in name:
        return name
    return name.replace("%", "%25").replace(":", "%3a")


def node_part(node_id: str) -> str:
    """A node id as the last part of its direct channel: ``channel_part``, and the id
    ``ack`` escaped too (``%61ck``) so that no node's channel is the mesh's ack channel."""
    part = channel_part(node_id)
    return "%61ck" if part == "ack" else part


def redis_db(url: str) -> int:
    """The database number of a Redis URL, read as redis-py reads it; 0 when it names none."""
    from redis.connection import parse_url

    try:
        return int(parse_url(url).get("db") or 0)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return 0
