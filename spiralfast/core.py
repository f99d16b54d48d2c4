"""MeshCore: one mesh node (SPEC.md: MeshCore), the asyncio shell around sans-I/O parts.

- links (``links/``) are given this node as their ``LinkHost`` and nothing else;
- every inbound message passes the ``Gate``, which decides what it may do;
- ``Handshake``, ``Membership`` and the state-sync protocol take messages (and a
  monotonic ``now``) and return effects, which this shell carries out;
- the ``Dispatcher`` delivers to handlers, the ``Outbox`` sends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import schema
from ._aio import cancel_all
from ._log import BackoffLog
from ._version import __version__
from .bus import EventBus
from .config import MeshConfig
from .dispatch import Dispatcher, EnvelopeHandler
from .fastpath import EventSender, iso_from_epoch
from .gate import CLOSED, HANDSHAKE, MEMBER, OBSERVER, Gate, Session
from .handshake import Handshake
from .limits import FLUSH_THRESHOLD_BYTES
from .membership import Membership
from .observe import answer_query, envelope, mesh_status, node_counters, push_follow
from .outbox import YIELD_EVERY, Outbox, single_frame
from .registry import MeshRegistry
from .sync import StateSynchronizer
from .types import EventType, MeshNode, NodeStatus, RitualEvent

log = logging.getLogger("spiralfast.core")

_EVENT_TYPES = {e.value: e for e in EventType}


class MeshCore:
    """A node of the mesh.

    :param config: the node's ``MeshConfig``.
    :param loopback: a ``spiralfast.testing.LoopbackHub`` joining in-process nodes
        into one mesh (opt-in; nodes without one only use their configured links).
    """

    def __init__(self, config: MeshConfig | None = None, *, loopback: Any = None) -> None:
        self.config = cfg = config if config is not None else MeshConfig()
        self.node_id: str = cfg.node_id or str(uuid.uuid4())
        self.running = False
        self.local_node = MeshNode(
            node_id=self.node_id, name="codex_node_" + self.node_id[:8], status=NodeStatus.INITIALIZING,
            capabilities=list(cfg.capabilities), recursion_depth=0, entropy_level=0.0,
            last_heartbeat=datetime.now(),
            metadata={"mesh_version": __version__, "mesh_name": cfg.mesh_name, "implementation": "spiralfast"},
            websocket_endpoint=None,
        )
        self.event_bus = EventBus(self.node_id)
        self.registry = MeshRegistry(self.node_id)
        self.membership = Membership(self.local_node, self.registry, cfg.heartbeat_interval)
        self.nodes: dict[str, MeshNode] = self.registry.nodes  # one table: the registry's
        self.state = StateSynchronizer(self.node_id, self)
        self.loopback = loopback
        self.start_time: float | None = None
        self.counts: dict[str, int] = {"handshake_failures": 0, "auth_failures": 0, "rejected_by_peer": 0,
                                         "bad_messages": 0, "dropped_events": 0}
        self.dispatcher = Dispatcher(self._set_reading)
        self.dispatcher.push_follow = push_follow(self)
        self.recent_events = self.dispatcher.recent
        self.observers = self.dispatcher.observers
        self.outbox = Outbox()
        self.gate = Gate(self.node_id, self.dispatcher, on_handshake=self._on_handshake, on_message=self._on_message,
                         on_query=self._on_query, relay=self._relay, rate_limit=cfg.rate_limit,
                         rate_burst=cfg.rate_burst, resume=self._resume_link)
        self.dispatcher.deliver_to = self.gate.sink.dispatch
        self.sender = EventSender(self.outbox, self.dispatcher, self.node_id, uuid.uuid4().hex[:12] + "-",
                                  schema.EVENT_TYPE_IDS, FLUSH_THRESHOLD_BYTES, YIELD_EVERY)
        self.links: set[Any] = set()  # every open link, any state
        self.ws: Any = None
        self.redis: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._lock = asyncio.Lock()
        self._refusals = BackoffLog(log, initial=60.0, maximum=3600.0)
        from .tasks import TaskManager

        self.tasks = TaskManager(self)
        self.eventlog: Any = None  # an EventLog while persistence is on

    @property
    def counters(self) -> dict[str, int]:
        """Every counter of the node, read from its parts (``get_mesh_status()["counters"]``)."""
        return node_counters(self)

    @property
    def event_handlers(self) -> dict[str, list[EnvelopeHandler]]:
        """Event type -> handlers (SPEC.md).  Assigning a new dict is supported."""
        return self.dispatcher.handlers

    @event_handlers.setter
    def event_handlers(self, value: dict[str, list[EnvelopeHandler]]) -> None:
        self.dispatcher.handlers = self.gate.sink.handlers = value

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
            from .links import start_links

            cfg = self.config
            cfg.validate()
            self.membership.heartbeat_interval = cfg.heartbeat_interval
            self.registry.heartbeat_timeout = self.membership.silence_limit
            self.state.sync_interval = cfg.sync_interval
            self.running = True
            self.start_time = time.monotonic()
            self.event_bus.bind_mesh(self._send_bus_event, self.outbox.backpressure)
            self.state.broadcast = self._broadcast
            await self.event_bus.start()
            await self.state.start()
            self._tasks.append(asyncio.ensure_future(self.dispatcher.run()))
            self.membership.join_local()
            await start_links(self)
            self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
            self._tasks.append(asyncio.ensure_future(self._sweep_loop()))
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
            from .links import stop_links

            await self.tasks.stop()
            self._broadcast(schema.KIND_LEAVE, schema.Leave(self.node_id, "stop"))
            self.outbox.flush()
            self.running = False
            await stop_links(self)
            await cancel_all(self._tasks)
            self._tasks.clear()
            self.dispatcher.cancel()
            for link in list(self.links):
                link.close("node stopping")
            self.links.clear()
            self.outbox.clear()
            await self.event_bus.stop()
            await self.state.stop()
            self.event_bus.bind_mesh(None)
            self.state.broadcast = None
            self.membership.leave_local()
            if self.eventlog is not None:
                self.remove_event_listener(self.eventlog.record)
                await self.eventlog.stop()
                self.eventlog = None
            log.info("node %s stopped", self.node_id)

    # -- public API ----------------------------------------------------------------

    def register_event_handler(self, event_type: str | EventType, handler: EnvelopeHandler) -> None:
        """``handler(envelope)`` (plain or coroutine function) for events of the type."""
        key = event_type.value if isinstance(event_type, EventType) else str(event_type)
        self.event_handlers.setdefault(key, []).append(handler)

    async def register_node(self, node: MeshNode) -> None:
        """Add ``node`` to ``nodes`` and the registry; announce ``node_register``."""
        self.registry.register_node(node)
        await self.broadcast_event(EventType.NODE_REGISTER.value, node.to_dict())

    async def unregister_node(self, node_id: str) -> None:
        """Remove a node; announce ``node_unregister``."""
        self.registry.unregister_node(node_id)
        await self.broadcast_event(EventType.NODE_UNREGISTER.value, {"node_id": node_id})

    async def broadcast_event(self, event_type: str | EventType, data: Any) -> None:
        """Deliver to ``event_type`` handlers on every other node of the mesh."""
        et: str = event_type.value if isinstance(event_type, EventType) else event_type
        if self.sender.broadcast(et, data):  # True: a peer is slow, or time to yield
            await self.outbox.wait_writable()

    async def send_to_node(self, target_node_id: str, event_type: str | EventType, data: Any) -> bool:
        """Deliver to one node.  False (and a warning) when the node is unknown."""
        et = event_type.value if isinstance(event_type, EventType) else event_type
        if target_node_id not in self.nodes:
            log.warning("send_to_node: unknown node %s", target_node_id)
            return False
        eid = self.sender.next_id()
        ev = schema.Event(eid, et, self.node_id, time.time(), data, target_node_id)
        self.sender.events_out += 1
        self.recent_events.append(ev)
        if self.observers:
            self.dispatcher.push_observers(ev)
        if target_node_id == self.node_id:
            self.dispatcher.deliver(envelope(ev))
            return True
        if self.redis is not None and self.redis.is_legacy(target_node_id):
            self.redis.send_legacy(target_node_id, envelope(ev))
            return True
        ok = self.outbox.send(target_node_id, schema.KIND_EVENT, schema.event_type_id(et), eid, ev)
        if not ok:
            log.warning("send_to_node: no route to %s", target_node_id)
        await self.outbox.backpressure()
        return ok

    def get_mesh_status(self) -> dict[str, Any]:
        """SPEC fields, plus links, counters, router, bus, sync, tasks and persistence."""
        return mesh_status(self)

    def add_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(envelope)`` is called, on the loop, for every event this node sends or
        receives, membership changes included (persistence, dashboards)."""
        self.dispatcher.add_listener(fn)

    def remove_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.dispatcher.remove_listener(fn)

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

    # -- LinkHost: what transports call ----------------------------------------------

    def link_opened(self, link: Any, outbound: bool) -> None:
        """A transport opened ``link``: start its handshake."""
        hs = Handshake(self.node_id, self.config.mesh_name, self.config.auth_token, outbound=outbound,
                       record=self.membership.local_record())
        link.session = Session(hs, time.monotonic())
        self.links.add(link)
        for kind, obj in hs.start():
            link.send_frame(single_frame(kind, obj))
        loop = asyncio.get_running_loop()
        link.session.timer = loop.call_later(self.config.handshake_timeout, self._handshake_expired, link)

    def link_closed(self, link: Any) -> None:
        """A transport lost ``link``.  Its node stays until silent or gone."""
        self.links.discard(link)
        self.observers.discard(link)
        s = getattr(link, "session", None)
        if s is None:
            return
        was, s.state = s.state, CLOSED
        if s.timer is not None:
            s.timer.cancel()
        if was == MEMBER and s.peer_id is not None and self.outbox.links.get(s.peer_id) is link:
            self.outbox.remove_link(s.peer_id, link)
            self.membership.link_lost(s.peer_id)

    def frame_received(self, link: Any, data: Any, sender: str | None = None) -> None:
        self.gate.on_frame(link, data, sender)

    def messages_received(self, link: Any, sender: str, msgs: list[tuple[int, Any]]) -> None:
        self.gate.messages(link, sender, msgs)

    def writable_changed(self, link: Any, writable: bool) -> None:
        (self.outbox.link_resumed if writable else self.outbox.link_paused)(link)

    def bus_up(self, link: Any) -> None:
        """A bus link (Redis, NATS) is (again) connected: its frames are authenticated
        per frame, and nodes on it learn us from our gossip."""
        if link.session is None:
            link.session = Session(None, time.monotonic(), MEMBER)
        if link not in self.outbox.bus_links:
            self.outbox.bus_links.append(link)
        if link.transport == "redis":
            self.config.enable_redis = True
        self._send_gossip()

    def bus_down(self, link: Any) -> None:
        if link in self.outbox.bus_links:
            self.outbox.bus_links.remove(link)
        self.outbox.link_resumed(link)

    def local_record(self) -> dict[str, Any]:
        return self.membership.local_record()

    def knows(self, node_id: str) -> bool:
        return node_id in self.nodes

    def linked(self, node_id: str) -> bool:
        return node_id in self.outbox.links

    # -- the gate's callbacks --------------------------------------------------------

    def _on_handshake(self, link: Any, kind: int, obj: Any) -> None:
        s = link.session
        hs = s.handshake
        for k, o in hs.receive(kind, obj):
            link.send_frame(single_frame(k, o))
        if hs.state == "failed":
            self._refuse(link, hs.error)
        elif hs.state == "ready":
            self._session_ready(link, s, hs)

    def _refuse(self, link: Any, exc: Any) -> None:
        s = link.session
        if "refused by peer" in str(exc):
            self.counts["rejected_by_peer"] += 1
        elif "token" in str(exc):
            self.counts["auth_failures"] += 1
        self.counts["handshake_failures"] += 1
        self._refusals(("refused", getattr(link, "name", "?"), str(exc)[:60]), logging.WARNING,
                       "handshake with %s failed: %s", getattr(link, "name", "?"), exc)
        s.state = CLOSED
        link.close(str(exc))

    def _handshake_expired(self, link: Any) -> None:
        s = link.session
        if s.state == HANDSHAKE:
            for k, o in s.handshake.expire():
                link.send_frame(single_frame(k, o))
            self._refuse(link, s.handshake.error)

    def _session_ready(self, link: Any, s: Session, hs: Handshake) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        pid = hs.peer_id
        assert pid is not None
        s.peer_id = link.peer_id = pid
        s.bucket = self.gate.new_bucket()
        if hs.peer_role == "observer":
            s.state = OBSERVER
            self.observers.add(link)
            return
        existing = self.outbox.links.get(pid)
        if existing is not None and existing is not link:
            # Two nodes dialled each other at once: both keep the link dialled by the
            # smaller node id, so they agree on one.
            this_dialer = self.node_id if hs.outbound else pid
            if this_dialer != min(self.node_id, pid):
                s.state = CLOSED
                link.close("duplicate link")
                return
        s.state = MEMBER
        self.state.before_rejoin()
        old = self.outbox.add_link(pid, link)
        if old is not None:
            old.close("replaced by a newer link")
        if self.dispatcher.reading_paused:
            link.pause_reading()
        self._apply(self.membership.link_ready(pid, hs.peer_record, time.monotonic()))
        self._send_gossip()
        # A newcomer gets our digests at once, so it catches up without waiting a tick.
        link.send_frame(single_frame(*self.state.digest_message()))

    def _on_message(self, link: Any, sender: str | None, kind: int, m: Any) -> None:
        now = time.monotonic()
        if kind == schema.KIND_EVENT:
            self.gate.sink.on_event(m)
        elif kind == schema.KIND_BUS_EVENT:
            self._accept_bus_event(m)
        elif kind == schema.KIND_HEARTBEAT:
            self.state.touch()
            self._apply(self.membership.on_heartbeat(m, now))
            if "heartbeat" in self.event_handlers:
                self.dispatcher.deliver(
                    {"type": "heartbeat", "source_node": m.node_id, "timestamp": iso_from_epoch(m.sent_at),
                     "data": {"node_id": m.node_id, "status": m.status, "recursion_depth": m.recursion_depth,
                              "entropy_level": m.entropy_level}})
        elif kind == schema.KIND_LEAVE:
            self._apply(self.membership.on_leave(m.node_id))
        elif kind == schema.KIND_GOSSIP:
            bus = link.shared_bus
            self._apply(self.membership.on_gossip(m, sender, now, learn=bus, dial=self.ws is not None))
        elif kind == schema.KIND_STATE_DELTA:
            self.state.apply_entries(m.entries)
        elif kind == schema.KIND_STATE_DIGEST:
            self._reply(link, sender, self.state.on_digest(sender, m))
        elif kind == schema.KIND_STATE_REQUEST:
            self._reply(link, sender, self.state.on_request(m))

    def _reply(self, link: Any, to: str | None, msgs: list[tuple[int, Any]]) -> None:
        for kind, obj in msgs:
            if link.shared_bus and to is not None:
                link.send_direct(to, kind, 0, b"", obj)
            else:
                link.send_frame(single_frame(kind, obj))

    def _on_query(self, link: Any, q: Any) -> None:
        answer_query(self, link, q)

    def _relay(self, target: str, came_from: Any, m: Any) -> bool:
        return self.outbox.forward(target, came_from, m.kind, m.etype, m.target, m.msg_id, m.payload)

    def _apply(self, effects: list[tuple[Any, ...]]) -> None:
        """Carry out membership effects."""
        for e in effects:
            if e[0] == "joined":
                node = e[1]
                log.info("node %s (%s) joined", node.node_id, node.name)
                self.dispatcher.announce({"type": EventType.NODE_REGISTER.value, "source_node": node.node_id,
                                          "timestamp": datetime.now().isoformat(), "data": node.to_dict()})
            elif e[0] == "lost":
                nid, reason = e[1], e[2]
                log.info("node %s removed (%s)", nid, reason)
                link = self.outbox.links.get(nid)
                if link is not None:
                    self.outbox.remove_link(nid, link)
                    link.close(f"peer {reason}")
                if self.ws is not None:
                    self.ws.forget(nid)
                self.dispatcher.announce({"type": EventType.NODE_UNREGISTER.value, "source_node": nid,
                                          "timestamp": datetime.now().isoformat(),
                                          "data": {"node_id": nid, "reason": reason}})
            elif e[0] == "dial" and self.ws is not None:
                self.ws.dial(e[1], expected_id=e[2])

    # -- internals -----------------------------------------------------------------

    def _broadcast(self, kind: int, obj: Any) -> None:
        self.outbox.broadcast(kind, 0, b"", obj)

    def _send_gossip(self) -> None:
        self.local_node.metadata["links"] = sorted(self.outbox.links)
        records = [n.to_dict() for n in self.nodes.values() if n.websocket_endpoint or n is self.local_node]
        self._broadcast(schema.KIND_GOSSIP, schema.Gossip(records))

    def _set_reading(self, on: bool) -> None:
        """Flow control: stop (or restart) reading from every member link."""
        for link in list(self.outbox.links.values()):
            (link.resume_reading if on else link.pause_reading)()

    def _resume_link(self, link: Any) -> None:
        if not self.dispatcher.reading_paused:
            link.resume_reading()

    def _accept_bus_event(self, ev: schema.Event) -> None:
        et = _EVENT_TYPES.get(ev.event_type)
        if et is None:
            self.counts["bad_messages"] += 1
            return
        self.event_bus.accept_remote(RitualEvent(ev.event_id, et, ev.source_node, ev.target_node, ev.timestamp,
                                                 ev.data, ev.metadata or {}, ev.priority, ev.ttl))

    def _send_bus_event(self, ev: RitualEvent) -> None:
        s = schema.Event(ev.event_id, ev.event_type.value, ev.source_node, ev.epoch, ev.data, ev.target_node,
                         ev.priority, ev.ttl, ev.metadata or None)
        etype = schema.event_type_id(s.event_type)
        if ev.target_node is None:
            self.outbox.broadcast(schema.KIND_BUS_EVENT, etype, ev.event_id, s)
        elif not self.outbox.send(ev.target_node, schema.KIND_BUS_EVENT, etype, ev.event_id, s):
            self.event_bus.dropped += 1
            log.warning("bus event %s: no route to node %s", ev.event_id, ev.target_node)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            self._broadcast(schema.KIND_HEARTBEAT, self.membership.heartbeat(time.time()))
            if self.outbox.links or self.outbox.bus_links:
                self._send_gossip()
            if self.redis is not None:
                self.redis.heartbeat()
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))

    async def _sweep_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(min(interval / 4, 2.0))
            self._apply(self.membership.sweep(time.monotonic()))
