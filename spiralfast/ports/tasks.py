"""The port the task subsystem (:mod:`spiralfast.tasks`) needs from a node.

Everything the task manager does to the world goes through :class:`TaskPort`: its own
id and heartbeat interval, sending to one node and broadcasting, subscribing to the
task protocol's event types, the members it knows (with their gossiped metadata and
the capabilities they are indexed under), this node's own metadata (which travels in
handshakes and gossip), and the peers it has a direct link to.  The node implements it
with a small adapter (``spiralfast.node.taskport.NodeTaskPort``); tests implement it
with a fake (``tests/test_task_port.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

#: A handler of received events: ``handler(envelope)``, where the envelope is a dict
#: with at least ``"source_node"`` (the sender's id) and ``"data"`` (what it sent).
EnvelopeHandler = Callable[[dict[str, Any]], object]


class TaskPort(Protocol):
    """What the task manager uses of a node."""

    @property
    def node_id(self) -> str:
        """This node's id."""
        ...

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats (paces load adverts and the housekeeping tick)."""
        ...

    @property
    def local_metadata(self) -> MutableMapping[str, Any]:
        """This node's own metadata (sent in handshakes and gossip); the manager keeps
        its offers under ``"tasks"``."""
        ...

    def subscribe(self, event_type: str, handler: EnvelopeHandler) -> None:
        """Call ``handler`` for every received event of ``event_type`` (once, however
        often it is subscribed)."""
        ...

    async def send(self, node_id: str, event_type: str, data: Any) -> bool:
        """Deliver one event to ``node_id``; False when there is no route.  May raise
        for data that cannot be encoded or is too large."""
        ...

    async def broadcast(self, event_type: str, data: Any) -> None:
        """Deliver one event to every other member."""
        ...

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a member of the mesh as this node sees it."""
        ...

    def member_metadata(self) -> list[tuple[str, Mapping[str, Any]]]:
        """Every member (this node included) with its gossiped metadata, a snapshot."""
        ...

    def metadata_of(self, node_id: str) -> Mapping[str, Any] | None:
        """A member's metadata; None for an unknown node (or metadata that is not a mapping)."""
        ...

    def members_with_capability(self, capability: str) -> Iterable[str]:
        """Ids of the members indexed under ``capability``."""
        ...

    def add_capabilities(self, node_id: str, names: Sequence[str]) -> None:
        """Append the ``names`` a member's record lacks to its capabilities, and re-index
        the record (always for this node once it is a member; for a peer when something
        was added)."""
        ...

    def linked_peers(self) -> set[str] | None:
        """Ids of the peers this node has an open direct link to, or None when that
        cannot be told."""
        ...
