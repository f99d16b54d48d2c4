"""MeshCore: one mesh node (the drop-in API: MeshCore), the asyncio shell around sans-I/O parts.

- links (``links/``) are given this node as their ``LinkHost`` and nothing else;
- every inbound message passes the ``Gate``, which decides what it may do;
- ``Handshake``, ``Membership`` and the state-sync protocol take messages (and a
  monotonic ``now``) and return effects, which this shell carries out;
- the ``Dispatcher`` delivers to handlers, the ``Outbox`` sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .._aio import cancel_all
from .._version import __version__
from ..links.base import LegacyRouter
from ..ops.metrics import LatencyHistogram
from ..ops.queries import push_follow
from ..ops.status import envelope, mesh_status, node_counters
from ..protocol.membership import Membership
from ..records import EventType, MeshNode, NodeStatus, RitualEvent
from ..wire import schema
from ..wire.fastpath import EventSender
from ..wire.limits import FLUSH_THRESHOLD_BYTES
from ..wire.sealing import KeyPins
from ..wire.signing import NodeKey
from .bus import EventBus
from .config import MeshConfig
from .dispatch import Dispatcher, EnvelopeHandler
from .gate import Gate
from .host import NodeHost
from .opsport import NodeOps
from .outbox import YIELD_EVERY, Outbox
from .registry import MeshRegistry
from .sync import StateSynchronizer

log = logging.getLogger("spiralfast.node.core")

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
            metadata={"mesh_version": __version__, "mesh_name": cfg.mesh_name, "implementation": "spiralfast",
                      "incarnation": uuid.uuid4().hex[:16]},  # this process: tells a restart from a twin
            websocket_endpoint=None,
        )
        # The node's own Ed25519 key (spiralfast.wire.signing): proves on WebSocket handshakes
        # and bus frames that it speaks for itself; its public key travels in its record.
        self.key = NodeKey.load_or_create(Path(cfg.key_path)) if cfg.key_path else NodeKey.generate()
        self.local_node.metadata["public_key"] = self.key.public.hex()
        self.key_pins = KeyPins(self.node_id, self.key.public)  # bus senders' keys, by node id
        self.event_bus = EventBus(self.node_id)
        self.registry = MeshRegistry(self.node_id)
        self.membership = Membership(self.local_node, self.registry, cfg.heartbeat_interval, cfg.suspicion_timeout)
        self.nodes: dict[str, MeshNode] = self.registry.nodes  # one table: the registry's
        self.state = StateSynchronizer(self.node_id, self)
        self.loopback = loopback
        self.start_time: float | None = None
        self.counts: dict[str, int] = {"handshake_failures": 0, "auth_failures": 0, "rejected_by_peer": 0,
                                         "bad_messages": 0, "dropped_events": 0, "duplicate_ids": 0,
                                         "repair_requests": 0, "repaired_sent": 0, "state_replies_deferred": 0,
                                         "suspected": 0, "suspicions_refuted": 0,
                                         "impostors_refused": 0}
        self.dispatcher = Dispatcher(self._set_reading)
        self.dispatcher.push_follow = push_follow()
        self.recent_events = self.dispatcher.recent
        self.ops = NodeOps(self)  # what status, metrics, HTTP and observer queries see of this node
        self.latency = LatencyHistogram()  # event latency, origin to handler, sampled 1 in 64
        self.dispatcher.sample_latency = self.latency.observe
        self.observers = self.dispatcher.observers
        self.outbox = Outbox()
        self.host = host = NodeHost(self)
        self.gate = Gate(self.node_id, self.dispatcher, on_handshake=host.on_handshake, on_message=host.on_message,
                         on_query=host.on_query, relay=host.relay, rate_limit=cfg.rate_limit,
                         rate_burst=cfg.rate_burst, resume=self._resume_link)
        self.dispatcher.deliver_to = self.gate.sink.dispatch
        self.gate.is_linked = self.outbox.links.__contains__
        # Event ids: "<origin>-<sequence>"; broadcasts' origin ends in "s" (a gapless
        # sequence every node sees, so gaps are losses), direct messages' in "x".
        origin = uuid.uuid4().hex[:12] + "s"
        self.local_node.metadata["origin"] = origin  # peers ask this node to repair gaps in it
        self.gate.sink.claim(origin, self.node_id)  # our ids are ours alone (a copy from elsewhere is refused)
        self.sender = EventSender(self.outbox, self.dispatcher, self.node_id, origin + "-",
                                  schema.EVENT_TYPE_IDS, FLUSH_THRESHOLD_BYTES, YIELD_EVERY)
        self.links: set[Any] = set()  # every open link, any state
        self.link_listeners: list[Callable[[str, bool], None]] = []
        self.ws: Any = None
        self.redis: Any = None
        self.nats: Any = None  # links.bus.nats.NatsTransport while NATS is enabled
        self.observer_ws: Any = None  # links.ws.WebSocketTransport for observers alone (observer_port)
        self._tasks: list[asyncio.Task[Any]] = []
        self._lock = asyncio.Lock()
        from ..tasks import TaskManager
        from .taskport import NodeTaskPort

        self.tasks = TaskManager(NodeTaskPort(self))
        self.eventlog: Any = None  # an EventLog while persistence is on
        from .catchup import CatchUp

        self.catchup = CatchUp(self)  # catch-up across restarts (spiralfast/catchup.py)
        #: Why another live process holds this node's id, once the mesh says so (``mesh start`` exits).
        self.id_taken: str | None = None

    @property
    def counters(self) -> dict[str, int]:
        """Every counter of the node, read from its parts (``get_mesh_status()["counters"]``)."""
        return node_counters(self.ops)

    @property
    def origin(self) -> str:
        """The origin of this node's broadcast ids (``<origin>-<sequence>``; the event store's port)."""
        return str(self.local_node.metadata.get("origin"))

    @property
    def event_handlers(self) -> dict[str, list[EnvelopeHandler]]:
        """Event type -> handlers (the drop-in API).  Assigning a new dict is supported."""
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
            from .assembly import start_links

            cfg = self.config
            cfg.validate()
            if cfg.auth_token and len(cfg.auth_token) < 16:
                log.warning("auth_token is only %d characters: use 16 or more random ones (anyone who captures "
                            "a sealed Redis frame can test guesses offline)", len(cfg.auth_token))
            self.membership.heartbeat_interval = cfg.heartbeat_interval
            self.membership.suspicion_timeout = cfg.suspicion_timeout
            self.registry.heartbeat_timeout = self.membership.silence_limit
            self.state.sync_interval = cfg.sync_interval
            self.running = True
            self.start_time = time.monotonic()
            self.event_bus.bind_mesh(self._send_bus_event, self.outbox.backpressure)
            self.state.broadcast = self.host.broadcast
            await self.event_bus.start()
            await self.state.start()
            self._tasks.append(asyncio.ensure_future(self.dispatcher.run()))
            if cfg.persistence_path or cfg.persistence_url:  # before the links: joins are stored too
                from ..store.eventlog import EventLog

                self.eventlog = EventLog(self)
                await self.eventlog.start()
                self.dispatcher.set_event_sink(self.eventlog.record)
            self.membership.join_local()
            self.catchup.prepare()  # before the links: live events queue behind what was missed
            await start_links(self)
            self.catchup.begin()
            self._tasks.append(asyncio.ensure_future(self.host.heartbeat_loop()))
            self._tasks.append(asyncio.ensure_future(self.host.sweep_loop()))
            await self.tasks.start()
            log.info("node %s started (mesh %r)", self.node_id, cfg.mesh_name)

    async def stop(self) -> None:
        """Announce departure, stop every task and close every connection.  Idempotent."""
        async with self._lock:
            if not self.running:
                return
            from .assembly import stop_links

            await self.tasks.stop()
            await self.catchup.stop()
            self.host.broadcast(schema.KIND_LEAVE, schema.Leave(self.node_id, "stop"))
            self.outbox.flush()
            self.running = False
            await stop_links(self)
            await cancel_all(self._tasks + list(self.host.replying.values()))
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
                self.dispatcher.set_event_sink(None)
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
        if not et.startswith("_sf."):  # the mesh's own protocol events (tasks) stay internal
            self.recent_events.append(ev)
            if self.observers:
                self.dispatcher.push_observers(ev)
        if target_node_id == self.node_id:
            self.dispatcher.deliver(envelope(ev))
            return True
        if isinstance(self.redis, LegacyRouter) and self.redis.is_legacy(target_node_id) and not et.startswith("_sf."):
            self.redis.send_legacy(target_node_id, envelope(ev))
            return True
        ok = self.outbox.send(target_node_id, schema.KIND_EVENT, schema.event_type_id(et), eid, ev)
        if not ok:
            log.warning("send_to_node: no route to %s", target_node_id)
        await self.outbox.backpressure()
        return ok

    def get_mesh_status(self) -> dict[str, Any]:
        """The drop-in API's fields, plus links, counters, router, bus, sync, tasks and persistence."""
        return mesh_status(self.ops)

    def add_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(envelope)`` is called, on the loop, for every event this node sends or
        receives, membership changes included (persistence, dashboards)."""
        self.dispatcher.add_listener(fn)

    def remove_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.dispatcher.remove_listener(fn)

    def add_link_listener(self, fn: Callable[[str, bool], None]) -> None:
        """``fn(peer_id, up)`` when a direct link to a member comes up or goes down."""
        self.link_listeners.append(fn)

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

    def _set_reading(self, on: bool) -> None:
        """Flow control: stop (or restart) reading from every member link."""
        for link in list(self.outbox.links.values()):
            (link.resume_reading if on else link.pause_reading)()

    def _resume_link(self, link: Any) -> None:
        if not self.dispatcher.reading_paused:
            link.resume_reading()

    def _send_bus_event(self, ev: RitualEvent) -> None:
        s = schema.Event(ev.event_id, ev.event_type.value, ev.source_node, ev.epoch, ev.data, ev.target_node,
                         ev.priority, ev.ttl, ev.metadata or None)
        etype = schema.event_type_id(s.event_type)
        if ev.target_node is None:
            self.outbox.broadcast(schema.KIND_BUS_EVENT, etype, ev.event_id, s)
        elif not self.outbox.send(ev.target_node, schema.KIND_BUS_EVENT, etype, ev.event_id, s):
            self.event_bus.dropped += 1
            log.warning("bus event %s: no route to node %s", ev.event_id, ev.target_node)

