"""MeshCore: one mesh node (SPEC.md: MeshCore).

It owns the router, the transports, membership (heartbeats, failure detection,
gossip), the EventBus, the registry and the state synchroniser of the node.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import schema
from ._aio import cancel_all
from ._log import RateLimitedLog
from ._version import __version__
from .bus import EventBus
from .config import MeshConfig
from .errors import RingFull
from .fastpath import EventSender, iso_from_epoch
from .limits import DEFAULT_RING_CAPACITY, FLUSH_THRESHOLD_BYTES
from .observe import envelope
from .peer import PeerSession
from .registry import MeshRegistry
from .ring import Ring
from .router import YIELD_EVERY, Router
from .sync import StateSynchronizer
from .types import EventType, MeshNode, NodeStatus, RitualEvent

log = logging.getLogger("spiralfast.core")

#: Events kept for ``mesh events`` (CLI, dashboard).
RECENT_EVENTS = 1000
#: Handler-queue fill at which the node stops reading from its links (TCP then
#: pushes back on the senders) and the fill at which it reads again.  The gap is
#: larger than one frame's messages, so a frame in flight always fits.
INBOX_HIGH_WATER = DEFAULT_RING_CAPACITY // 2
INBOX_LOW_WATER = DEFAULT_RING_CAPACITY // 8
#: State entries per delta message (keeps one message well under MAX_MESSAGE_SIZE
#: for typical values).
STATE_DELTA_CHUNK = 1000
#: Failure detection: a node silent this many heartbeat intervals is removed.
SILENCE_FACTOR = 3

EnvelopeHandler = Callable[[dict[str, Any]], Any]
_EVENT_TYPES = {e.value: e for e in EventType}
#: Stands in ``observers`` while event listeners exist (so the hot paths notify them).
_LISTENERS = object()


_iso = iso_from_epoch
_Event = schema.Event
_KIND_EVENT = schema.KIND_EVENT
_now = time.time
_ETYPE_IDS = schema.EVENT_TYPE_IDS


class MeshCore:
    """A node of the mesh.

    :param config: the node's ``MeshConfig``.
    :param loopback: a ``spiralfast.testing.LoopbackHub`` joining in-process nodes
        into one mesh (opt-in; nodes without one only use their configured links).
    """

    def __init__(self, config: MeshConfig | None = None, *, loopback: Any = None) -> None:
        self.config = config if config is not None else MeshConfig()
        self.node_id: str = self.config.node_id or str(uuid.uuid4())
        self.nodes: dict[str, MeshNode] = {}
        self._event_handlers: dict[str, list[EnvelopeHandler]] = {}
        self.running = False
        self.local_node = MeshNode(
            node_id=self.node_id,
            name="codex_node_" + self.node_id[:8],
            status=NodeStatus.INITIALIZING,
            capabilities=list(self.config.capabilities),
            recursion_depth=0,
            entropy_level=0.0,
            last_heartbeat=datetime.now(),
            metadata={"mesh_version": __version__, "mesh_name": self.config.mesh_name, "implementation": "spiralfast"},
            websocket_endpoint=None,
        )
        self.event_bus = EventBus(self.node_id)
        self.registry = MeshRegistry(self.node_id)
        self.state = StateSynchronizer(self.node_id, self)
        self.loopback = loopback
        self.start_time: float | None = None
        self.counters: dict[str, int] = {
            "events_in": 0, "events_out": 0, "handler_errors": 0, "handshake_failures": 0,
            "auth_failures": 0, "rejected_by_peer": 0, "bad_messages": 0, "dropped_events": 0, "spilled_events": 0,
        }
        self.recent_events: deque[Any] = deque(maxlen=RECENT_EVENTS)  # Event structs or envelopes
        self.sessions: dict[Any, PeerSession] = {}
        self.observers: set[Any] = set()
        self.ws: Any = None
        self.redis: Any = None
        self._inbox = Ring(DEFAULT_RING_CAPACITY, overflow="reject")
        self._tasks: list[asyncio.Task[Any]] = []
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._errlog = RateLimitedLog(log)
        self._lock = asyncio.Lock()
        self._reading_paused = False
        self._pending_state: list[schema.StateEntry] = []
        self._spill: deque[dict[str, Any]] = deque()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        from .tasks import TaskManager

        self.tasks = TaskManager(self)
        self.eventlog: Any = None  # an EventLog while persistence is on
        self.router = Router(self.node_id, self._deliver, self)  # last: its sink reads the above
        self._sender = EventSender(self, self._prefix, schema.EVENT_TYPE_IDS, FLUSH_THRESHOLD_BYTES, YIELD_EVERY)

    @property
    def event_handlers(self) -> dict[str, list[EnvelopeHandler]]:
        """Event type -> handlers (SPEC.md).  Assigning a new dict is supported."""
        return self._event_handlers

    @event_handlers.setter
    def event_handlers(self, value: dict[str, list[EnvelopeHandler]]) -> None:
        self._event_handlers = value
        router = self.__dict__.get("router")
        if router is not None and router.sink is not None:
            router.sink.handlers = value  # the receive path caches the dict

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Bring up everything the config enables.  Idempotent.

        An unreachable Redis or an unbindable WebSocket port logs one warning,
        turns that feature off in ``config`` and the node carries on without it.
        Raises ``ConfigError`` for invalid settings.
        """
        async with self._lock:
            if self.running:
                return
            cfg = self.config
            cfg.validate()
            self.registry.heartbeat_timeout = SILENCE_FACTOR * cfg.heartbeat_interval
            self.state.sync_interval = cfg.sync_interval
            self.running = True
            self.start_time = time.monotonic()
            self.event_bus._mesh_send = self._send_bus_event
            self.event_bus._backpressure = self.router.backpressure
            self.state._emit = self._emit_state_entry
            await self.event_bus.start()
            await self.state.start()
            self._tasks.append(asyncio.ensure_future(self._process_inbox()))
            if cfg.enable_websocket:
                from .links.ws import WebSocketTransport

                self.ws = WebSocketTransport(self)
                try:
                    await self.ws.start()
                    self.local_node.websocket_endpoint = self.ws.endpoint
                except OSError as exc:
                    log.warning(
                        "WebSocket port %s:%s unavailable (%s); running without WebSocket",
                        cfg.websocket_host, cfg.websocket_port, exc,
                    )
                    cfg.enable_websocket = False
                    self.ws = None
            if cfg.enable_redis:
                from .links.redis import RedisTransport

                self.redis = RedisTransport(self)
                self._sender.redis = self.redis
                if not await self.redis.start():
                    cfg.enable_redis = False  # until Redis appears; the transport keeps trying
            self.local_node.status = NodeStatus.ACTIVE
            self.local_node.last_heartbeat = datetime.now()
            self.nodes[self.node_id] = self.local_node
            self.registry.register_node(self.local_node)
            self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
            self._tasks.append(asyncio.ensure_future(self._sweep_loop()))
            if self.loopback is not None:
                self.loopback.attach(self)
            if self.ws is not None:
                for url in cfg.peers:
                    self.ws.dial(url, permanent=True)
            elif cfg.peers:
                log.warning("peers %s ignored: WebSocket is disabled", cfg.peers)
            if self.redis is not None and self.redis.connected:
                self.redis.announce()
            if cfg.persistence_path or cfg.persistence_url:
                from .eventlog import EventLog

                self.eventlog = EventLog(self)
                await self.eventlog.start()
                self.add_event_listener(self.eventlog.record)
            await self.tasks.start()
            log.info("node %s started (mesh %r)", self.node_id, cfg.mesh_name)

    async def stop(self) -> None:
        """Announce departure, stop every task and close every connection.  Idempotent."""
        async with self._lock:
            if not self.running:
                return
            await self.tasks.stop()
            leave = schema.Leave(self.node_id, "stop")
            self.router.broadcast(schema.KIND_LEAVE, 0, b"", leave)
            self.router.flush()
            if self.redis is not None:
                await self.redis.announce_leave()
            self.running = False
            await cancel_all(self._tasks)
            self._tasks.clear()
            if self.loopback is not None:
                self.loopback.detach(self)
            if self.ws is not None:
                await self.ws.stop()
                self.ws = None
            if self.redis is not None:
                await self.redis.stop()
                self.redis = None
                self._sender.redis = None
            for session in list(self.sessions.values()):
                session.close()
            self.sessions.clear()
            self.observers.clear()
            self.router.links.clear()
            await self.event_bus.stop()
            await self.state.stop()
            self.event_bus._mesh_send = None
            self.state._emit = None
            self.local_node.status = NodeStatus.DISCONNECTED
            if self.eventlog is not None:
                self.remove_event_listener(self.eventlog.record)
                await self.eventlog.stop()
                self.eventlog = None
            for nid in [n for n in self.nodes if n != self.node_id]:
                self.nodes.pop(nid, None)
                self.registry.unregister_node(nid)
            log.info("node %s stopped", self.node_id)

    # -- public API ----------------------------------------------------------------

    def register_event_handler(self, event_type: str | EventType, handler: EnvelopeHandler) -> None:
        """``handler(envelope)`` (plain or coroutine function) for events of the type."""
        key = event_type.value if isinstance(event_type, EventType) else str(event_type)
        self.event_handlers.setdefault(key, []).append(handler)

    async def register_node(self, node: MeshNode) -> None:
        """Add ``node`` to ``nodes`` and the registry; announce ``node_register``."""
        self.nodes[node.node_id] = node
        self.registry.register_node(node)
        await self.broadcast_event(EventType.NODE_REGISTER.value, node.to_dict())

    async def unregister_node(self, node_id: str) -> None:
        """Remove a node; announce ``node_unregister``."""
        self.nodes.pop(node_id, None)
        self.registry.unregister_node(node_id)
        await self.broadcast_event(EventType.NODE_UNREGISTER.value, {"node_id": node_id})

    async def broadcast_event(self, event_type: str | EventType, data: Any) -> None:
        """Deliver to ``event_type`` handlers on every other node of the mesh."""
        et: str = event_type.value if isinstance(event_type, EventType) else event_type
        if self._sender.broadcast(et, data):  # True: a peer is slow, or time to yield
            await self.router.wait_writable()

    async def send_to_node(self, target_node_id: str, event_type: str | EventType, data: Any) -> bool:
        """Deliver to one node.  False (and a warning) when the node is unknown."""
        et = event_type.value if isinstance(event_type, EventType) else event_type
        if target_node_id not in self.nodes:
            log.warning("send_to_node: unknown node %s", target_node_id)
            return False
        eid = self._sender.next_id()
        ev = schema.Event(eid, et, self.node_id, time.time(), data, target_node_id)
        self.counters["events_out"] += 1
        self.recent_events.append(ev)
        if self.observers:
            self._push_observers(ev)
        if target_node_id == self.node_id:
            self._enqueue_envelope(self._envelope(ev))
            return True
        if self.redis is not None and self.redis.is_legacy(target_node_id):
            await self.redis.send_legacy(target_node_id, self._envelope(ev))
            return True
        ok = self.router.send(target_node_id, schema.KIND_EVENT, schema.event_type_id(et), eid, ev)
        if not ok:
            log.warning("send_to_node: no route to %s", target_node_id)
        await self.router.backpressure()
        return ok

    def add_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(envelope)`` is called, on the loop, for every event this node sends or
        receives, membership changes included (persistence, dashboards)."""
        self._listeners.append(fn)
        self.observers.add(_LISTENERS)  # makes the hot paths call _push_observers

    def remove_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)
        if not self._listeners:
            self.observers.discard(_LISTENERS)

    def _notify(self, env: dict[str, Any]) -> None:
        for fn in list(self._listeners):
            try:
                fn(env)
            except Exception:
                self._errlog(("listener", repr(fn)), logging.ERROR, "event listener %r failed", fn, exc_info=True)

    # -- services: tasks (spiralfast.tasks) and the event log (spiralfast.eventlog) --

    def register_task_handler(self, task_type: str, handler: Callable[[Any], Any], *, capacity: int = 64) -> None:
        """Serve ``task_type`` on this node with at most ``capacity`` running at once."""
        self.tasks.register(task_type, handler, capacity=capacity)

    async def submit_task(self, task_type: str, payload: Any, *, timeout: float = 30.0, retries: int = 2,
                          target_node: str | None = None) -> Any:
        """Run one task on the best node serving ``task_type``; returns its result."""
        return await self.tasks.submit(task_type, payload, timeout=timeout, retries=retries, target_node=target_node)

    def map_tasks(self, task_type: str, payloads: Any, *, concurrency: int = 256) -> Any:
        """Async iterator of results, in submission order."""
        return self.tasks.map(task_type, payloads, concurrency=concurrency)

    def history(self, since: Any = None, until: Any = None, types: Any = None, source: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Stored event envelopes, newest last ([] without persistence)."""
        return self.eventlog.history(since, until, types, source, limit) if self.eventlog is not None else []

    async def replay(self, since: Any, types: Any = None) -> int:
        """Re-deliver stored events to the local handlers; returns how many."""
        return await self.eventlog.replay(since, types) if self.eventlog is not None else 0

    def get_mesh_status(self) -> dict[str, Any]:
        nodes = list(self.nodes.values())
        n = len(nodes)
        return {
            "node_id": self.node_id,
            "status": self.local_node.status.value,
            "connected_nodes": n,
            "total_recursion_depth": sum(x.recursion_depth for x in nodes),
            "average_entropy": (sum(x.entropy_level for x in nodes) / n) if n else 0.0,
            "uptime": (time.monotonic() - self.start_time) if self.start_time is not None and self.running else 0.0,
            "mesh_name": self.config.mesh_name,
            "nodes": [x.to_dict() for x in nodes],
            "websocket_endpoint": self.local_node.websocket_endpoint,
            "redis": bool(self.redis is not None and self.redis.connected),
            "links": self.link_info(),
            "observers": len(self.observers - {_LISTENERS}),
            "followers": sum(1 for o in self.observers if getattr(o, "following", False)),
            "counters": self._counters(),
            "router": {**self.router.stats,
                       "messages_out": self.router.stats["messages_out"] + self._sender.events_out},
            "bus": self.event_bus.get_event_stats(),
            "sync": self.state.get_sync_status(),
            "tasks": self.tasks.status(),
            "persistence": self.eventlog.status() if self.eventlog is not None else None,
        }

    def _counters(self) -> dict[str, int]:
        c = dict(self.counters)
        if self.router.sink is not None:
            c["events_in"] += self.router.sink.events_in
        c["events_out"] += self._sender.events_out
        return c

    def link_info(self) -> list[dict[str, Any]]:
        out = []
        for peer, link in self.router.links.items():
            out.append({"peer": peer, "transport": getattr(link, "transport", "?"), **link.info()})
        return out

    # -- internals: local node ------------------------------------------------------

    def _local_node_record(self) -> dict[str, Any]:
        self.local_node.last_heartbeat = datetime.now()
        return self.local_node.to_dict()

    def _envelope(self, ev: schema.Event) -> dict[str, Any]:
        return envelope(ev)

    # -- internals: receiving -------------------------------------------------------

    def _deliver(self, link: Any, kind: int, m: Any, obj: Any) -> None:
        """Router callback for every message addressed to this node."""
        session = self.sessions.get(link)
        if session is None:
            return
        if session.state != "ready":
            session.on_message(kind, obj)
            return
        if session.role == "observer":
            if kind == schema.KIND_QUERY:
                self._answer_query(link, obj)
            return
        if kind == schema.KIND_EVENT:
            self._on_event(obj)
        elif kind == schema.KIND_BUS_EVENT:
            self._accept_bus_event(obj)
        elif kind == schema.KIND_HEARTBEAT:
            self.state.touch()
            self._on_heartbeat(obj)
        elif kind == schema.KIND_LEAVE:
            self._on_leave(obj.node_id)
        elif kind == schema.KIND_GOSSIP:
            self._on_gossip(obj, learn=getattr(link, "shared_bus", False))
        elif kind == schema.KIND_STATE_DELTA:
            self.state.apply_entries(obj.entries)
        elif kind == schema.KIND_STATE_DIGEST:
            self._on_state_digest(link, session, obj)
        elif kind == schema.KIND_STATE_REQUEST:
            self._on_state_request(session, obj)
        elif kind == schema.KIND_QUERY and not getattr(link, "shared_bus", False):
            self._answer_query(link, obj)
        else:
            self.counters["bad_messages"] += 1

    def _on_event(self, ev: schema.Event) -> None:
        """A mesh event for this node (the router's sink handles the hot path)."""
        sink = self.router.sink
        assert sink is not None
        sink.on_event(ev)

    def _push_observers(self, ev: Any) -> None:
        from .observe import push_event

        push_event(self, ev)

    def deliver_envelope(self, env: dict[str, Any]) -> None:
        """An event envelope from a transport that does not use frames (old JSON)."""
        self.counters["events_in"] += 1
        self.recent_events.append(env)
        if self.observers:
            self._push_observers(env)
        self._enqueue_envelope(env)

    def _enqueue_envelope(self, env: dict[str, Any]) -> None:
        """Deliver an envelope to this node's handlers (inline or via the queue)."""
        handlers = self.event_handlers.get(env["type"])
        if handlers:
            sink = self.router.sink
            assert sink is not None
            sink.dispatch(env, handlers)

    def _queue_envelope(self, env: dict[str, Any]) -> None:
        """Queue an envelope for the handler task (async handlers, or a backlog)."""
        inbox = self._inbox
        if self._spill:
            self._spill.append(env)
            return
        try:
            inbox.push(env)
        except RingFull:
            # Reading is already paused (see below); what picows had buffered before
            # the pause still arrives.  Bounded by its read buffer, so keep it.
            self._spill.append(env)
            self.counters["spilled_events"] += 1
        if not self._reading_paused and inbox.qsize() > INBOX_HIGH_WATER:
            self._set_reading(False)

    def _set_reading(self, on: bool) -> None:
        """Flow control: stop (or restart) reading from every link that can."""
        self._reading_paused = not on
        for link in list(self.router.links.values()):
            fn = getattr(link, "resume_reading" if on else "pause_reading", None)
            if fn is not None:
                fn()

    async def _process_inbox(self) -> None:
        ring = self._inbox
        while True:
            if ring.empty():
                await ring.wait_nonempty()
            spill = self._spill
            while spill and not ring.full():
                ring.push(spill.popleft())
            if self._reading_paused and not spill and ring.qsize() < INBOX_LOW_WATER:
                self._set_reading(True)
            handlers_by_type = self._event_handlers
            for env in ring.pop_many(INBOX_LOW_WATER):
                for h in handlers_by_type.get(env["type"], ()):
                    try:
                        r = h(env)
                        if r is not None and inspect.isawaitable(r):
                            await r
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self._handler_failed(h, env)

    def _handler_failed(self, h: Any, env: dict[str, Any]) -> None:
        self.counters["handler_errors"] += 1
        self._errlog(
            ("handler", getattr(h, "__qualname__", repr(h))), logging.ERROR,
            "event handler %r failed on %s", h, env.get("event_id"), exc_info=True,
        )

    def _spawn(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.append(task)

        def done(t: asyncio.Task[Any]) -> None:
            if t in self._tasks:
                self._tasks.remove(t)
            if not t.cancelled() and t.exception() is not None:
                self.counters["handler_errors"] += 1
                log.error("event handler coroutine failed", exc_info=t.exception())

        task.add_done_callback(done)

    def _accept_bus_event(self, ev: schema.Event) -> None:
        et = _EVENT_TYPES.get(ev.event_type)
        if et is None:
            self.counters["bad_messages"] += 1
            return
        self.event_bus._accept_remote(
            RitualEvent(ev.event_id, et, ev.source_node, ev.target_node, ev.timestamp, ev.data,
                        ev.metadata or {}, ev.priority, ev.ttl)
        )

    def _send_bus_event(self, ev: RitualEvent) -> None:
        s = schema.Event(
            ev.event_id, ev.event_type.value, ev.source_node, ev.epoch, ev.data, ev.target_node,
            ev.priority, ev.ttl, ev.metadata or None,
        )
        etype = schema.event_type_id(s.event_type)
        if ev.target_node is None:
            self.router.broadcast(schema.KIND_BUS_EVENT, etype, ev.event_id, s)
        elif not self.router.send(ev.target_node, schema.KIND_BUS_EVENT, etype, ev.event_id, s):
            self.event_bus.dropped += 1
            log.warning("bus event %s: no route to node %s", ev.event_id, ev.target_node)

    # -- internals: membership ------------------------------------------------------

    def link_up(self, link: Any, outbound: bool) -> PeerSession:
        """A transport opened ``link``: start its handshake."""
        session = PeerSession(self, link, outbound)
        self.sessions[link] = session
        session.start()
        return session

    def link_down(self, link: Any) -> None:
        """A transport lost ``link``.  The node stays until silent or it left."""
        session = self.sessions.pop(link, None)
        self.observers.discard(link)
        if session is None:
            return
        session.close()
        if session.peer_id is not None:
            self.router.remove_link(session.peer_id, link)

    def _session_ready(self, session: PeerSession) -> None:
        link = session.link
        if session.role == "observer":
            self.observers.add(link)
            return
        pid = session.peer_id
        assert pid is not None
        existing = self.router.links.get(pid)
        if existing is not None and existing is not link:
            # Two nodes dialled each other at once: both sides keep the link dialled
            # by the smaller node id, so they agree on one.
            this_dialer = self.node_id if session.outbound else pid
            if this_dialer != min(self.node_id, pid):
                link.close("duplicate link")
                return
        link.peer_id = pid
        link.member = True  # lets the router take the fused event path for it
        self.state.before_rejoin()
        self.router.add_link(pid, link)
        self._node_seen(session.peer_node or {"node_id": pid})
        self._send_gossip()
        # A newcomer gets our digests at once, so it catches up without waiting a tick.
        self.router.send_link(link, schema.KIND_STATE_DIGEST, schema.StateDigest(self.state.digests(), True, self.state.collected_upto))

    def _node_seen(self, record: dict[str, Any]) -> MeshNode | None:
        nid = record.get("node_id")
        if not nid or nid == self.node_id:
            return None
        node = self.nodes.get(nid)
        if node is None:
            try:
                node = MeshNode.from_dict(record)
            except (KeyError, TypeError, ValueError):
                self.counters["bad_messages"] += 1
                return None
            node.last_heartbeat = datetime.now()
            self.nodes[nid] = node
            self.registry.register_node(node)
            log.info("node %s (%s) joined", nid, node.name)
            env = {"type": EventType.NODE_REGISTER.value, "source_node": nid,
                   "timestamp": datetime.now().isoformat(), "data": node.to_dict()}
            if self._listeners:
                self._notify(env)
            self._enqueue_envelope(env)
        else:
            node.last_heartbeat = datetime.now()
            ep = record.get("websocket_endpoint")
            if ep:
                node.websocket_endpoint = ep
        return node

    def _on_heartbeat(self, hb: schema.Heartbeat) -> None:
        node = self.nodes.get(hb.node_id)
        if node is None:
            node = self._node_seen({"node_id": hb.node_id, "name": "codex_node_" + hb.node_id[:8], "status": hb.status})
            if node is None:
                return
        self.registry.update_node_heartbeat(
            hb.node_id,
            {"status": hb.status, "recursion_depth": hb.recursion_depth, "entropy_level": hb.entropy_level},
        )
        node.last_heartbeat = datetime.now()
        if "heartbeat" in self.event_handlers:
            self._enqueue_envelope(
                {"type": "heartbeat", "source_node": hb.node_id, "timestamp": _iso(hb.sent_at),
                 "data": {"node_id": hb.node_id, "status": hb.status, "recursion_depth": hb.recursion_depth,
                          "entropy_level": hb.entropy_level}}
            )

    def _on_leave(self, node_id: str) -> None:
        self._remove_node(node_id, "left")
        link = self.router.links.get(node_id)
        if link is not None:
            self.router.remove_link(node_id, link)
        if self.ws is not None:
            self.ws.forget(node_id)

    def node_lost(self, node_id: str, reason: str) -> None:
        """A transport learned that ``node_id`` is gone (e.g. an old node's unregister)."""
        self._remove_node(node_id, reason)

    def _remove_node(self, node_id: str, reason: str) -> None:
        if node_id == self.node_id or self.nodes.pop(node_id, None) is None:
            return
        self.registry.unregister_node(node_id)
        log.info("node %s removed (%s)", node_id, reason)
        env = {"type": EventType.NODE_UNREGISTER.value, "source_node": node_id,
               "timestamp": datetime.now().isoformat(), "data": {"node_id": node_id, "reason": reason}}
        if self._listeners:
            self._notify(env)
        self._enqueue_envelope(env)

    def _send_gossip(self) -> None:
        records = [n.to_dict() for n in self.nodes.values() if n.websocket_endpoint]
        self.router.broadcast(schema.KIND_GOSSIP, 0, b"", schema.Gossip(records))

    def _on_gossip(self, g: schema.Gossip, learn: bool = False) -> None:
        """Dial endpoints we have no link to.  ``learn``: the gossip came over a shared
        bus (Redis), where there is no handshake, so it is how nodes become known."""
        for rec in g.nodes:
            if not isinstance(rec, dict):
                continue
            if learn:
                self._node_seen(rec)
            nid = rec.get("node_id")
            ep = rec.get("websocket_endpoint")
            if not nid or nid == self.node_id:
                continue
            if self.ws is not None and ep and nid not in self.router.links:
                self.ws.dial(ep, expected_id=nid)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            ln = self.local_node
            ln.last_heartbeat = datetime.now()
            hb = schema.Heartbeat(self.node_id, ln.status.value, ln.recursion_depth, ln.entropy_level, time.time())
            self.router.broadcast(schema.KIND_HEARTBEAT, 0, b"", hb)
            if self.router.links:
                self._send_gossip()
            if self.redis is not None:
                self.redis.heartbeat()
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))

    async def _sweep_loop(self) -> None:
        interval = self.config.heartbeat_interval
        limit = SILENCE_FACTOR * interval
        while True:
            await asyncio.sleep(min(interval / 2, 5.0))
            now = datetime.now()
            for nid, node in list(self.nodes.items()):
                if nid != self.node_id and (now - node.last_heartbeat).total_seconds() > limit:
                    self._remove_node(nid, "silent")
                    link = self.router.links.get(nid)
                    if link is not None:
                        link.close("peer silent")
                    if self.ws is not None:
                        self.ws.forget(nid)

    # -- internals: state sync ------------------------------------------------------

    def _emit_state_entry(self, entry: schema.StateEntry) -> None:
        # Changes of one loop iteration travel together as one delta (per chunk).
        pending = self._pending_state
        pending.append(entry)
        if len(pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush_state)

    def _flush_state(self) -> None:
        pending, self._pending_state = self._pending_state, []
        for i in range(0, len(pending), STATE_DELTA_CHUNK):
            self.router.broadcast(schema.KIND_STATE_DELTA, 0, b"", schema.StateDelta(pending[i : i + STATE_DELTA_CHUNK]))

    def _send_state_digest(self) -> None:
        self.router.broadcast(schema.KIND_STATE_DIGEST, 0, b"", schema.StateDigest(self.state.digests(), True, self.state.collected_upto))

    def _on_state_digest(self, link: Any, session: PeerSession, d: schema.StateDigest) -> None:
        self.state.check_resync(d.collected_upto)
        self.state.touch()
        mine = self.state.digests()
        differ = [c for c, h in d.digests.items() if mine.get(c, "0") != h and self.state.is_shared(c)]
        differ += [c for c in mine if c not in d.digests and mine[c] != "0"]
        if differ:
            self.state.stats["repairs"] += 1
            req = schema.StateRequest(self.state.clocks_for(sorted(set(differ))))
            self.router.send_link(link, schema.KIND_STATE_REQUEST, req)
        elif d.reply:
            self.state.sync_status = self.state.sync_status.__class__.SYNCED
            self.state.last_sync = datetime.now()
            if session.peer_id:
                self.state.node_states[session.peer_id] = {"digests": d.digests, "seen": datetime.now().isoformat()}

    def _on_state_request(self, session: PeerSession, req: schema.StateRequest) -> None:
        entries = self.state.entries_newer_than(req.categories)
        link = session.link
        for i in range(0, len(entries), STATE_DELTA_CHUNK):
            self.router.send_link(link, schema.KIND_STATE_DELTA, schema.StateDelta(entries[i : i + STATE_DELTA_CHUNK]))
        # Ask back, so entries only the requester has reach us too.
        mine = self.state.clocks_for(list(req.categories))
        if any(k not in mine.get(c, {}) or mine[c][k] < v for c, kv in req.categories.items() for k, v in kv.items()):
            self.router.send_link(link, schema.KIND_STATE_REQUEST, schema.StateRequest(mine))

    # -- internals: observers (CLI / dashboard) -------------------------------------

    def _answer_query(self, link: Any, q: schema.Query) -> None:
        from .observe import answer_query

        answer_query(self, link, q)
