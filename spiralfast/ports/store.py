"""The port the event store (:mod:`spiralfast.store`) needs from a node.

The event log (:class:`spiralfast.store.eventlog.EventLog`) is fed by the node: the
node calls ``record()``/``record_event()`` for every event it sends or receives.  What
the log needs back from the node is :class:`EventSource`: its id and broadcast origin
(the delivery cursor never tracks the node's own broadcasts), the persistence settings,
the handlers stored events are replayed to, and the node's figures (sampled into
``system_metrics``).  ``MeshCore`` implements it; tests implement it with a fake
(``tests/test_store_port.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

#: A handler stored events are replayed to: ``handler(envelope)``; a coroutine it
#: returns is awaited.
EnvelopeHandler = Callable[[dict[str, Any]], object]


class StoreSettings(Protocol):
    """The settings the event log reads (``MeshConfig`` has them)."""

    @property
    def persistence_path(self) -> str | None:
        """The SQLite file (None: none)."""
        ...

    @property
    def persistence_url(self) -> str | None:
        """A ``postgresql://`` URL instead of the file (None: none)."""
        ...

    @property
    def persist_events(self) -> str | Iterable[str]:
        """``"mesh"``, ``"all"``, or event types persisted besides the mesh ones."""
        ...

    @property
    def persist_retention_days(self) -> float:
        """Stored events older than this are removed."""
        ...

    @property
    def persist_max_bytes(self) -> int | None:
        """The size cap in bytes (None: no cap)."""
        ...

    @property
    def persist_metrics_retention_hours(self) -> float:
        """The node's metric samples older than this are removed."""
        ...

    @property
    def sync_interval(self) -> float:
        """Seconds between metric samples."""
        ...


class EventSource(Protocol):
    """What the event log uses of the node that feeds it."""

    @property
    def node_id(self) -> str:
        """This node's id (stored with its metric samples)."""
        ...

    @property
    def origin(self) -> str:
        """The origin of this node's broadcast ids (``<origin>-<seq>``): the delivery
        cursor skips it, the node never receives its own broadcasts."""
        ...

    @property
    def config(self) -> StoreSettings:
        """The persistence settings."""
        ...

    @property
    def event_handlers(self) -> Mapping[str, Sequence[EnvelopeHandler]]:
        """Event type -> the handlers replayed events go to."""
        ...

    def get_mesh_status(self) -> Mapping[str, object]:
        """The node's figures now (``connected_nodes``, ``uptime``, ``counters``, ...)."""
        ...


__all__ = ["EnvelopeHandler", "EventSource", "StoreSettings"]
