"""Redis transport: frames over pub/sub, published in one pipeline per loop tick.

Channels (``C`` = ``ritual_channel``):
- ``C:sf``: spiralfast broadcast frames (heartbeats, events, state, gossip);
- ``C:sf:<node_id>``: spiralfast frames for one node;
- ``C`` and ``node_<id>``: the old JSON envelope, for ``spiralcodex.mesh`` nodes.

Every Redis payload on the ``:sf`` channels is ``len(u8) + sender id + frame`` so a
node drops its own echoes.  JSON that spiralfast itself publishes carries
``"_sf": 1`` so other spiralfast nodes (which get the frame) ignore the copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from .. import schema
from .._aio import cancel_all
from .._log import RateLimitedLog
from ..codec import FrameWriter

if TYPE_CHECKING:
    from ..core import MeshCore

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
#: A receiver whose acks stop advancing this long is ignored until it acks again
#: (failure detection removes it soon after), so one dead node cannot stall us.
ACK_STALL_TIMEOUT = 3.0
_OFF = struct.Struct("<Q")
#: Pipelines in flight at once: a fast publisher paces itself on Redis' replies.
MAX_INFLIGHT_PIPELINES = 4
CONNECT_TIMEOUT = 2.0
RECONNECT_MAX = 5.0


class _RedisSession:
    """Stands in for a handshake session: Redis peers are trusted by channel."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.state = "ready"
        self.role = "node"
        self.peer_id: str | None = None
        self.outbound = False

    def close(self) -> None:
        pass


class RedisTransport:
    transport = "redis"

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        cfg = core.config
        self.channel = cfg.ritual_channel
        self.sf_channel = f"{cfg.ritual_channel}:sf"
        self.my_channel = f"{cfg.ritual_channel}:sf:{core.node_id}"
        self.ack_channel = f"{cfg.ritual_channel}:sf:ack"
        self.legacy_direct = f"node_{core.node_id}"
        self.prefix = bytes([len(core.node_id.encode())]) + core.node_id.encode()
        self.client: Any = None
        self.pubsub: Any = None
        self.connected = False
        self.ever_connected = False
        self.peer_id: str | None = None
        self.errors = 0
        self.name = "redis"
        self.member = True  # the router's event fast path applies
        self.shared_bus = True  # no handshake: learn nodes from gossip, answer no queries
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0
        self.tx_offset = 0  # bytes of spiralfast frames we have published
        self.acked: dict[str, int] = {}  # receiver -> our offset it has processed
        self.ack_progress: dict[str, float] = {}  # receiver -> when its ack last advanced
        self.rx_offsets: dict[str, int] = {}  # sender -> its offset we have processed
        self.ack_sent: dict[str, int] = {}
        self.congested = False
        self._direct: dict[str, Any] = {}  # node id -> FrameWriter for its channel
        self._direct_scheduled = False
        self.legacy_nodes: set[str] = set()
        self.sf_nodes: set[str] = set()
        self._flush_scheduled = False
        self._sem = asyncio.Semaphore(MAX_INFLIGHT_PIPELINES)
        self._tasks: list[asyncio.Task[Any]] = []
        self.errlog = RateLimitedLog(log)
        self.stats = {"published": 0, "pipelines": 0, "received": 0, "bad": 0, "dropped": 0, "reconnects": 0,
                      "paced": 0, "acks_sent": 0, "direct": 0}
        self.session = _RedisSession(self)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> bool:
        """Connect; False (one warning) if Redis is unreachable.  Either way a
        background task keeps the subscription alive and connects as soon as Redis
        appears (re-enabling ``config.enable_redis``)."""
        import redis.asyncio as aioredis

        cfg = self.core.config
        self.client = aioredis.from_url(
            cfg.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None, health_check_interval=0,
        )
        ok = await self._ping()
        if not ok:
            log.warning("Redis at %s unreachable; running without Redis (will connect when it appears)",
                        cfg.redis_url)
        self.connected = ok
        self.ever_connected = ok
        self.core.sessions[self] = self.session  # type: ignore[assignment]
        self.core.router.extra_links.append(self)
        self._tasks.append(asyncio.ensure_future(self._reader()))
        self._tasks.append(asyncio.ensure_future(self._ack_loop()))
        return ok

    async def _ping(self) -> bool:
        try:
            await asyncio.wait_for(self.client.ping(), CONNECT_TIMEOUT)
            return True
        except Exception:
            return False

    async def stop(self) -> None:
        await self._flush_now()
        await cancel_all(self._tasks)
        if self in self.core.router.extra_links:
            self.core.router.extra_links.remove(self)
        self.core.sessions.pop(self, None)  # type: ignore[call-overload]
        try:
            if self.pubsub is not None:
                await self.pubsub.aclose()
            await self.client.aclose()
        except Exception:
            pass
        self.connected = False

    def close(self, reason: str = "") -> None:
        self.errlog("close", logging.WARNING, "ignoring request to close the Redis link: %s", reason)
        self.errors = 0

    def info(self) -> dict[str, Any]:
        return {"state": "open" if self.connected else "down", **self.stats}

    # -- sending -------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        self._send_sf(self.sf_channel, frame)
        return True

    def can_reach(self, node_id: str) -> bool:
        """True for spiralfast nodes heard on Redis: they read their own channel."""
        return self.connected and node_id in self.sf_nodes

    def send_direct(self, target: str, kind: int, etype: int, msg_id: Any, obj: Any) -> None:
        """Queue a message for one node's channel; batched per loop iteration."""
        w = self._direct.get(target)
        if w is None:
            w = self._direct[target] = FrameWriter()
        if w.full:
            self._flush_direct()
        w.add(kind, etype, target, msg_id, obj)
        self.stats["direct"] += 1
        if not self._direct_scheduled:
            self._direct_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_direct)

    def _flush_direct(self) -> None:
        self._direct_scheduled = False
        for target, w in self._direct.items():
            if w.count:
                self._send_sf(f"{self.channel}:sf:{target}", w.finish())

    def _send_sf(self, channel: str, frame: bytes) -> None:
        self.tx_offset += len(frame)
        self._queue(channel, self.prefix + _OFF.pack(self.tx_offset) + frame)
        if not self.congested and (
            self.pending_bytes > MAX_PENDING_BYTES
            or len(self.pending) > MAX_PENDING_FRAMES // 2
            or self._max_lag() > MAX_LAG_BYTES
        ):
            self._set_congested(True)

    def _max_lag(self) -> int:
        now = time.monotonic()
        nodes = self.core.nodes
        lag = 0
        for r, off in self.acked.items():
            if r in nodes and now - self.ack_progress.get(r, 0.0) < ACK_STALL_TIMEOUT:
                lag = max(lag, self.tx_offset - off)
        return lag

    def _set_congested(self, on: bool) -> None:
        self.congested = on
        if on:
            self.stats["paced"] += 1
            self.core.router.link_paused(self)
        else:
            self.core.router.link_resumed(self)

    def _recheck(self) -> None:
        if (
            self.congested
            and self.pending_bytes < MAX_PENDING_BYTES // 2
            and len(self.pending) < MAX_PENDING_FRAMES // 4
            and self._max_lag() < RESUME_LAG_BYTES
        ):
            self._set_congested(False)

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
                self.errlog("publish", logging.WARNING, "Redis publish failed (%s); will retry", exc)
                self.stats["dropped"] += max(0, len(batch) - MAX_PENDING_FRAMES)
                self.pending[:0] = batch[-MAX_PENDING_FRAMES:]
                self.pending_bytes = sum(len(p) for _, p in self.pending)
                await asyncio.sleep(0.2)
                if self.pending and not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._spawn_flush)

    def announce(self) -> None:
        rec = self.core._local_node_record()
        w_frame = self._single_frame(schema.KIND_GOSSIP, schema.Gossip([rec]))
        self._send_sf(self.sf_channel, w_frame)
        if self.core.config.interop:
            self._legacy_publish(self.channel, "node_register", rec)

    def heartbeat(self) -> None:
        if self.core.config.interop:
            ln = self.core.local_node
            self._legacy_publish(
                self.channel, "heartbeat",
                {"node_id": self.core.node_id, "status": ln.status.value,
                 "recursion_depth": ln.recursion_depth, "entropy_level": ln.entropy_level},
            )
        # Nodes that share only Redis learn our record from this.
        rec = self.core._local_node_record()
        self._send_sf(self.sf_channel, self._single_frame(schema.KIND_GOSSIP, schema.Gossip([rec])))

    async def announce_leave(self) -> None:
        if self.core.config.interop:
            self._legacy_publish(self.channel, "node_unregister", {"node_id": self.core.node_id})
        await self._flush_now()

    def _single_frame(self, kind: int, obj: Any) -> bytes:
        w = FrameWriter()
        w.add(kind, 0, b"", b"", obj)
        return bytes(w.finish())

    def _legacy_publish(self, channel: str, etype: str, data: Any, target: str | None = None,
                        event_id: str | None = None) -> None:
        env: dict[str, Any] = {
            "type": etype, "source_node": self.core.node_id,
            "timestamp": datetime.now().isoformat(), "data": data, "_sf": 1,
        }
        if target is not None:
            env["target_node"] = target
        if event_id is not None:
            env["event_id"] = event_id
        self._queue(channel, orjson.dumps(env, default=str))

    def legacy_broadcast(self, ev: schema.Event) -> None:
        if self.core.config.interop:
            self._legacy_publish(self.channel, ev.event_type, ev.data, event_id=ev.event_id)

    def is_legacy(self, node_id: str) -> bool:
        return node_id in self.legacy_nodes and node_id not in self.sf_nodes

    async def send_legacy(self, node_id: str, env: dict[str, Any]) -> None:
        env = dict(env)
        env["_sf"] = 1
        self._queue(f"node_{node_id}", orjson.dumps(env, default=str))

    # -- receiving -----------------------------------------------------------------

    async def _reader(self) -> None:
        delay = 0.1
        while True:
            try:
                if not self.connected:
                    if not await self._ping():
                        raise ConnectionError("Redis unreachable")
                    if not self.ever_connected:
                        self.ever_connected = True
                        self.core.config.enable_redis = True
                        log.info("Redis at %s is reachable now; connected", self.core.config.redis_url)
                        self.announce()
                self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                chans = [self.sf_channel, self.my_channel, self.ack_channel]
                if self.core.config.interop:
                    chans += [self.channel, self.legacy_direct]
                await self.pubsub.subscribe(*chans)
                if not self.connected:
                    self.stats["reconnects"] += 1
                    log.info("Redis reconnected")
                self.connected = True
                delay = 0.1
                async for msg in self.pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    self._on_message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("Redis connection lost (%s); reconnecting", exc)
                self.connected = False
                try:
                    if self.pubsub is not None:
                        await self.pubsub.aclose()
                except Exception:
                    pass
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, RECONNECT_MAX)

    def _on_message(self, channel: Any, data: Any) -> None:
        self.stats["received"] += 1
        ch = channel.decode() if isinstance(channel, bytes) else channel
        if ch in (self.sf_channel, self.my_channel):
            self._on_frame(data)
        elif ch == self.ack_channel:
            self._on_ack(data)
        else:
            self._on_legacy(data)

    def _on_ack(self, data: bytes) -> None:
        try:
            receiver, offsets = msgspec.msgpack.decode(data)
            mine = offsets.get(self.core.node_id) if isinstance(offsets, dict) else None
        except (msgspec.DecodeError, ValueError, TypeError):
            return self._bad("malformed ack")
        if not isinstance(mine, int) or not isinstance(receiver, str) or receiver == self.core.node_id:
            return
        if mine > self.acked.get(receiver, -1):
            self.acked[receiver] = mine
            self.ack_progress[receiver] = time.monotonic()
            if self.congested:
                self._recheck()

    def _note_received(self, sender: str, offset: int) -> None:
        self.rx_offsets[sender] = offset
        if offset - self.ack_sent.get(sender, 0) >= ACK_EVERY_BYTES:
            self._send_acks()

    def _send_acks(self) -> None:
        todo = {s: o for s, o in self.rx_offsets.items() if o != self.ack_sent.get(s)}
        if not todo or not self.connected:
            return
        self.ack_sent.update(todo)
        self.stats["acks_sent"] += 1
        payload = msgspec.msgpack.encode([self.core.node_id, todo])
        # Acks bypass the data outbox: they must not queue behind the data they pace.
        t = asyncio.ensure_future(self._publish_now(self.ack_channel, payload))
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _publish_now(self, channel: str, payload: bytes) -> None:
        try:
            await self.client.publish(channel, payload)
        except Exception:
            pass

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            self._send_acks()
            if self.congested:
                self._recheck()

    def _on_frame(self, data: bytes) -> None:
        if not data:
            return self._bad("empty frame")
        n = data[0]
        sender = data[1 : 1 + n]
        if len(data) < 1 + n + _OFF.size:
            return self._bad("truncated frame header")
        if sender == self.prefix[1:]:
            # Our own echo: nothing to deliver, but our subscription must keep up with
            # it too (Redis cuts off any subscriber that lags), so it paces us as well.
            own = self.core.node_id
            self.acked[own] = _OFF.unpack_from(data, 1 + n)[0]
            self.ack_progress[own] = time.monotonic()
            if self.congested:
                self._recheck()
            return
        try:
            sender_id = sender.decode()
        except UnicodeDecodeError:
            return self._bad("bad sender id")
        offset = _OFF.unpack_from(data, 1 + n)[0]
        n += _OFF.size
        self.sf_nodes.add(sender_id)
        # From here on a Redis frame is like any other: the router (and its compiled
        # sink) dedupes, delivers and counts it.
        self.core.router.on_frame(self, memoryview(data)[1 + n :])
        self._note_received(sender_id, offset)

    def _on_legacy(self, data: bytes) -> None:
        try:
            env = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._bad("non-JSON message on the legacy channel")
        if not isinstance(env, dict) or not isinstance(env.get("type"), str) or not isinstance(
            env.get("source_node"), str
        ):
            return self._bad("legacy message without type/source_node")
        if env.get("_sf") or env["source_node"] == self.core.node_id:
            return
        src = env["source_node"]
        core = self.core
        eid = env.get("event_id")
        if isinstance(eid, str) and not core.router.dedupe.first_time(eid.encode()):
            return
        self.legacy_nodes.add(src)
        etype = env["type"]
        data_ = env.get("data")
        if etype == "node_register" and isinstance(data_, dict):
            rec = dict(data_)
            rec.setdefault("node_id", src)
            core._node_seen(rec)
        elif etype == "heartbeat":
            core._on_heartbeat(
                schema.Heartbeat(src, str((data_ or {}).get("status", "active")),
                                 int((data_ or {}).get("recursion_depth", 0)),
                                 float((data_ or {}).get("entropy_level", 0.0)), 0.0)
            ) if isinstance(data_, dict) else core._node_seen({"node_id": src})
        elif etype == "node_unregister":
            core.node_lost(src, "left")
            self.legacy_nodes.discard(src)
            return
        else:
            if src not in core.nodes:
                core._node_seen({"node_id": src, "name": "codex_node_" + src[:8]})
        if not isinstance(env.get("timestamp"), str):
            env["timestamp"] = datetime.now().isoformat()
        core.deliver_envelope(env)

    def _bad(self, why: str) -> None:
        self.stats["bad"] += 1
        self.errlog("bad", logging.WARNING, "ignoring malformed Redis message: %s", why)
