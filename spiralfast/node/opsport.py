"""The node's side of the operations ports (:mod:`spiralfast.ports.ops`): what status,
metrics, HTTP, the live feed and the observer queries (:mod:`spiralfast.ops`) may read
or change of a node (``MeshCore``), and nothing more."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..ports.ops import HttpSource, LatencySamples, LinkView, QueryHost, Reply, Traffic
from ..records import MeshNode

if TYPE_CHECKING:
    from ..ops.metrics import LatencyHistogram
    from ..protocol.membership import Membership
    from ..tasks import TaskManager
    from ..wire.fastpath import EventSender
    from .bus import EventBus
    from .config import MeshConfig
    from .dispatch import Dispatcher
    from .gate import Gate
    from .host import NodeHost
    from .outbox import Outbox
    from .registry import MeshRegistry
    from .sync import StateSynchronizer


class OpsNode(Protocol):
    """What the adapter reads of the node (``MeshCore`` has it)."""

    @property
    def node_id(self) -> str: ...
    @property
    def config(self) -> MeshConfig: ...
    @property
    def running(self) -> bool: ...
    @property
    def start_time(self) -> float | None: ...
    @property
    def local_node(self) -> MeshNode: ...
    @property
    def nodes(self) -> dict[str, MeshNode]: ...
    @property
    def counts(self) -> dict[str, int]: ...
    @property
    def membership(self) -> Membership: ...
    @property
    def redis(self) -> Any: ...  # the Redis transport (``connected``), or None
    @property
    def nats(self) -> Any: ...  # the NATS transport (``connected``), or None
    @property
    def outbox(self) -> Outbox: ...
    @property
    def observers(self) -> set[Any]: ...
    @property
    def gate(self) -> Gate: ...
    @property
    def sender(self) -> EventSender: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def registry(self) -> MeshRegistry: ...
    @property
    def host(self) -> NodeHost: ...
    @property
    def event_bus(self) -> EventBus: ...
    @property
    def state(self) -> StateSynchronizer: ...
    @property
    def tasks(self) -> TaskManager: ...
    @property
    def eventlog(self) -> Any: ...  # an EventLog while persistence is on, else None
    @property
    def latency(self) -> LatencyHistogram: ...
    @property
    def recent_events(self) -> deque[Any]: ...

    def get_mesh_status(self) -> dict[str, Any]: ...

    async def send_to_node(self, target_node_id: str, event_type: str, data: Any) -> bool: ...

    async def broadcast_event(self, event_type: str, data: Any) -> None: ...


class NodeOps:
    """:class:`~spiralfast.ports.ops.HttpSource` and :class:`~spiralfast.ports.ops.QueryHost`
    over a node (so also ``StatusSource`` and ``MetricsSource``)."""

    __slots__ = ("_node",)

    def __init__(self, node: OpsNode) -> None:
        self._node = node

    # -- StatusSource ------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def mesh_name(self) -> str:
        return self._node.config.mesh_name

    @property
    def running(self) -> bool:
        return self._node.running

    @property
    def local_node(self) -> MeshNode:
        return self._node.local_node

    @property
    def nodes(self) -> Mapping[str, MeshNode]:
        return self._node.nodes

    @property
    def counts(self) -> MutableMapping[str, int]:
        return self._node.counts

    def is_suspect(self, node_id: str) -> bool:
        return bool(self._node.membership.is_suspect(node_id))

    def uptime(self) -> float:
        node = self._node
        return (time.monotonic() - node.start_time) if node.start_time is not None and node.running else 0.0

    def redis_connected(self) -> bool:
        redis = self._node.redis
        return bool(redis is not None and redis.connected)

    def nats_connected(self) -> bool:
        nats = self._node.nats
        return bool(nats is not None and nats.connected)

    def peer_links(self) -> Mapping[str, LinkView]:
        return self._node.outbox.links

    def bus_links(self) -> Sequence[LinkView]:
        return self._node.outbox.bus_links

    def observer_links(self) -> Iterable[object]:
        return self._node.observers

    def gate_stats(self) -> Mapping[str, int]:
        return self._node.gate.stats

    def router_stats(self) -> Mapping[str, int]:
        return self._node.outbox.stats

    def traffic(self) -> Traffic:
        node = self._node
        sink, d = node.gate.sink, node.dispatcher
        return Traffic(events_in=sink.events_in, events_out=node.sender.events_out,
                       handler_errors=d.handler_errors, spilled_events=d.spilled,
                       reserved_refused=sink.reserved_refused,
                       capabilities_refused=node.registry.capabilities_refused)

    def lost(self) -> Mapping[str, int]:
        return self._node.gate.dedupe.lost()

    def missing(self) -> Mapping[str, int]:
        return self._node.gate.dedupe.gaps()

    def origin_names(self) -> Mapping[str, str]:
        return self._node.host.origin_names

    def bus_stats(self) -> dict[str, Any]:
        return self._node.event_bus.get_event_stats()

    def sync_status(self) -> dict[str, Any]:
        return self._node.state.get_sync_status()

    def tasks_status(self) -> dict[str, Any]:
        return self._node.tasks.status()

    def persistence_status(self) -> dict[str, Any] | None:
        eventlog = self._node.eventlog
        return eventlog.status() if eventlog is not None else None

    # -- MetricsSource / HttpSource -----------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._node.get_mesh_status()

    def state_key_counts(self) -> Mapping[str, int]:
        return {str(cat): len(entries) for cat, entries in self._node.state.sync_categories.items()}

    @property
    def latency(self) -> LatencySamples | None:
        return self._node.latency

    @property
    def auth_token(self) -> str | None:
        return self._node.config.auth_token

    def recent_events(self) -> Sequence[Any]:
        return self._node.recent_events

    # -- QueryHost ----------------------------------------------------------------------

    def over_rate(self, link: object) -> bool:
        return bool(self._node.gate.over_rate(link))

    def get_state(self, category: str | None, key: str | None) -> Any:
        return self._node.state.get_local_state(category, key)

    def set_state(self, category: str, key: str, value: Any) -> int:
        state = self._node.state
        state.update_local_state(category, key, value)
        return int(state.state_version)

    def delete_state(self, category: str, key: str) -> bool:
        return bool(self._node.state.delete_local_state(category, key))

    def answer_history(self, args: dict[str, Any], reply: Reply) -> None:
        from ..store.history import answer_history

        answer_history(self._node, args, reply)

    def submit_task(self, args: dict[str, Any], reply: Reply) -> None:
        self._node.tasks.answer_submit(args, reply)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._node.dispatcher.spawn(coro)

    async def send_to_node(self, target: str, event_type: str, data: Any) -> bool:
        return await self._node.send_to_node(target, event_type, data)

    async def broadcast_event(self, event_type: str, data: Any) -> None:
        await self._node.broadcast_event(event_type, data)


if TYPE_CHECKING:  # mypy checks the adapter against the ports it is given as

    def _implements(ops: NodeOps) -> tuple[HttpSource, QueryHost]:
        return ops, ops
