"""The node's side of :class:`spiralfast.ports.tasks.TaskPort`: what the task manager
(:mod:`spiralfast.tasks`) may use of a node (``MeshCore``), and nothing more."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from ..ports.tasks import EnvelopeHandler
from ..records import MeshNode
from .config import MeshConfig
from .outbox import Outbox
from .registry import MeshRegistry


class TaskHost(Protocol):
    """What the adapter reads of the node (``MeshCore`` has it)."""

    node_id: str
    config: MeshConfig
    local_node: MeshNode
    nodes: dict[str, MeshNode]
    registry: MeshRegistry
    outbox: Outbox

    @property
    def event_handlers(self) -> dict[str, list[Any]]: ...

    def register_event_handler(self, event_type: str, handler: EnvelopeHandler) -> None: ...

    async def send_to_node(self, target_node_id: str, event_type: str, data: Any) -> bool: ...

    async def broadcast_event(self, event_type: str, data: Any) -> None: ...


class NodeTaskPort:
    """:class:`~spiralfast.ports.tasks.TaskPort` over a node."""

    __slots__ = ("_node",)

    def __init__(self, node: TaskHost) -> None:
        self._node = node

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def heartbeat_interval(self) -> float:
        return float(self._node.config.heartbeat_interval)

    @property
    def local_metadata(self) -> MutableMapping[str, Any]:
        return self._node.local_node.metadata

    def subscribe(self, event_type: str, handler: EnvelopeHandler) -> None:
        node = self._node
        if handler not in node.event_handlers.get(event_type, ()):
            node.register_event_handler(event_type, handler)

    async def send(self, node_id: str, event_type: str, data: Any) -> bool:
        return await self._node.send_to_node(node_id, event_type, data)

    async def broadcast(self, event_type: str, data: Any) -> None:
        await self._node.broadcast_event(event_type, data)

    def is_member(self, node_id: str) -> bool:
        return node_id in self._node.nodes

    def member_metadata(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [(nid, n.metadata) for nid, n in list(self._node.nodes.items())]

    def metadata_of(self, node_id: str) -> Mapping[str, Any] | None:
        n = self._node.nodes.get(node_id)
        md = n.metadata if n is not None else None
        return md if isinstance(md, dict) else None

    def members_with_capability(self, capability: str) -> Iterable[str]:
        return self._node.registry.node_capabilities.get(capability, ())

    def add_capabilities(self, node_id: str, names: Sequence[str]) -> None:
        node = self._node
        local = node_id == node.node_id
        rec = node.local_node if local else node.nodes.get(node_id)
        if rec is None:
            return
        have = set(rec.capabilities)
        new = [k for k in names if k not in have]
        rec.capabilities.extend(new)
        if (local or new) and node_id in node.registry.nodes:
            node.registry.register_node(rec)  # re-indexed (and bounded) by the registry

    def linked_peers(self) -> set[str] | None:
        try:
            return {peer for peer, link in self._node.outbox.links.items()
                    if peer and link.info().get("state") != "closed"}
        except Exception:
            return None
