"""The port state sync (:mod:`spiralfast.node.sync`) needs from a node.

A ``StateSynchronizer`` bound to a mesh reads its settings once (:class:`SyncSettings`),
checks whether a node is a member and sends one event to it (the snapshot requests and
answers of the drop-in API).  Deltas and digests travel through the ``broadcast``
callable the node sets while it runs, not through this port.

``MeshCore`` provides this port as it is (its ``config``, ``nodes`` and
``send_to_node``), so the drop-in call ``StateSynchronizer(node_id, mesh_core)`` keeps
working; tests provide a small fake (``tests/test_sync_port.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class SyncSettings(Protocol):
    """The node settings state sync reads (a ``MeshConfig`` is one)."""

    @property
    def sync_interval(self) -> float:
        """Seconds between anti-entropy rounds."""
        ...

    @property
    def shared_categories(self) -> Iterable[str] | None:
        """Categories synchronised across nodes; None: all of them."""
        ...

    @property
    def max_clock_offset(self) -> float:
        """Seconds a remote state timestamp may be ahead of ours."""
        ...

    @property
    def tombstone_ttl(self) -> float:
        """Seconds a delete is remembered before it is collected."""
        ...

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats (three without any message count as being away)."""
        ...

    @property
    def peers(self) -> Sequence[str]:
        """Peers to dial at start: a node that joins a mesh starts out syncing."""
        ...


class SyncPort(Protocol):
    """What the state synchroniser uses of a node."""

    @property
    def config(self) -> SyncSettings:
        """The node's settings (read when the synchroniser is built)."""
        ...

    @property
    def nodes(self) -> Mapping[str, object]:
        """The members this node knows, by id (only membership is asked of it)."""
        ...

    async def send_to_node(self, target_node_id: str, event_type: str, data: dict[str, Any]) -> bool:
        """Deliver one event to ``target_node_id``; False when there is no route."""
        ...
