"""The ports of the operations package (:mod:`spiralfast.ops`): what status, metrics,
HTTP and the observer queries need from a node, as small typed Protocols.

- :class:`StatusSource`: identity, members, links, observers and the parts' counters,
  read by :func:`spiralfast.ops.status.mesh_status` (``get_mesh_status()``).
- :class:`MetricsSource`: the status dict, the state's key counts and the latency
  histogram, read by the Prometheus collector (``GET /metrics``).
- :class:`HttpSource`: both of the above, the recent events and the token, for the
  HTTP endpoints and the dashboard's live feed.
- :class:`QueryHost`: what an observer's ``Query`` may ask or change (publish, state
  writes, task submission, stored history, the write rate limit).

The node implements them with one adapter (``spiralfast.node.opsport.NodeOps``); tests
implement them with fakes (``tests/test_ops_ports.py``).  No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, TypedDict

from ..records import MeshNode

#: ``reply(ok, data)``: how an answer that arrives later (history, task submission) is sent.
Reply = Callable[[bool, Any], None]


class LinkView(Protocol):
    """A link (or a bus) as status shows it: its ``info()`` dict.  The optional attributes
    ``transport``, ``stats``, ``sealer`` and ``msealer`` are read when present."""

    def info(self) -> dict[str, Any]: ...


class Traffic(TypedDict):
    """Counters kept by the node's parts other than its own ``counts``."""

    events_in: int  # events delivered to this node
    events_out: int  # events this node originated
    handler_errors: int  # handlers that raised
    spilled_events: int  # envelopes the dispatcher queued behind a suspended handler
    reserved_refused: int  # membership events about another node, sent by members
    capabilities_refused: int  # capability lists over the bound, or with bad names


class StatusSource(Protocol):
    """What ``get_mesh_status()``, the node table and the topology read of a node."""

    @property
    def node_id(self) -> str: ...

    @property
    def mesh_name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def local_node(self) -> MeshNode: ...

    @property
    def nodes(self) -> Mapping[str, MeshNode]:
        """Every node in the node table (this one included), by id."""
        ...

    @property
    def counts(self) -> MutableMapping[str, int]:
        """The node's own counters (``auth_failures``, ``dropped_events``...); ops adds
        ``reserved_refused_observers`` to it."""
        ...

    def is_suspect(self, node_id: str) -> bool: ...

    def uptime(self) -> float:
        """Seconds since the node started (0.0 when it is not running)."""
        ...

    def redis_connected(self) -> bool: ...

    def nats_connected(self) -> bool: ...

    def peer_links(self) -> Mapping[str, LinkView]:
        """The open direct links, by peer id."""
        ...

    def bus_links(self) -> Sequence[LinkView]: ...

    def observer_links(self) -> Iterable[object]:
        """Observer connections (attributes ``transport`` and ``following`` read when present)."""
        ...

    def gate_stats(self) -> Mapping[str, int]:
        """The gate's counters (``refused``, ``preauth_refused``, ``rate_limited``...)."""
        ...

    def router_stats(self) -> Mapping[str, int]:
        """The outbox's counters (``frames_out``, ``bytes_out``, ``messages_out``...)."""
        ...

    def traffic(self) -> Traffic: ...

    def lost(self) -> Mapping[str, int]:
        """Broadcast sequences given up, per origin (one per node incarnation)."""
        ...

    def missing(self) -> Mapping[str, int]:
        """Broadcast sequences not yet repaired, per origin."""
        ...

    def origin_names(self) -> Mapping[str, str]:
        """Origin (incarnation) -> node id."""
        ...

    def bus_stats(self) -> dict[str, Any]:
        """The in-process event bus's figures."""
        ...

    def sync_status(self) -> dict[str, Any]: ...

    def tasks_status(self) -> dict[str, Any]: ...

    def persistence_status(self) -> dict[str, Any] | None:
        """The event log's figures, or None without persistence."""
        ...


class LatencySamples(Protocol):
    """A fixed-bucket latency histogram (``spiralfast.ops.metrics.LatencyHistogram``)."""

    sum: float
    count: int

    def cumulative(self) -> list[tuple[str, float]]: ...


class MetricsSource(Protocol):
    """What the Prometheus collector reads of a node at scrape time."""

    def status(self) -> dict[str, Any]:
        """``get_mesh_status()``."""
        ...

    def state_key_counts(self) -> Mapping[str, int]:
        """Live keys of the synchronised state, by category."""
        ...

    @property
    def latency(self) -> LatencySamples | None: ...


class HttpSource(StatusSource, MetricsSource, Protocol):
    """What the HTTP endpoints and the dashboard's live feed read of a node."""

    @property
    def auth_token(self) -> str | None: ...

    def recent_events(self) -> Sequence[Any]:
        """The last events delivered (wire ``Event`` structs or envelope dicts), newest last."""
        ...


class QueryHost(StatusSource, Protocol):
    """What an observer's ``Query`` may read or change on a node."""

    def status(self) -> dict[str, Any]:
        """``get_mesh_status()``."""
        ...

    def recent_events(self) -> Sequence[Any]: ...

    def over_rate(self, link: object) -> bool:
        """Whether ``link`` went over its write rate limit (counted by the node)."""
        ...

    def get_state(self, category: str | None, key: str | None) -> Any: ...

    def set_state(self, category: str, key: str, value: Any) -> int:
        """Write a state entry; returns the new state version."""
        ...

    def delete_state(self, category: str, key: str) -> bool: ...

    def answer_history(self, args: dict[str, Any], reply: Reply) -> None:
        """Stored events for ``args`` (since, until, types, source, limit), by ``reply``."""
        ...

    def submit_task(self, args: dict[str, Any], reply: Reply) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the node keeps (and cancels when it stops)."""
        ...

    async def send_to_node(self, target: str, event_type: str, data: Any) -> bool: ...

    async def broadcast_event(self, event_type: str, data: Any) -> None: ...
