"""The old persistence API's records and the backend ABC (``spiralcodex.persistence``'s types).

:class:`AgentRecord`, :class:`RitualEventRecord` and :class:`SystemMetricRecord` are the
rows of ``agents``, ``ritual_events`` and ``system_metrics`` with the old field names;
:class:`PersistenceBackend` is what a backend (SQLite, JSON files:
:mod:`spiralfast.store.persistence_backends`) offers the manager.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def dumps(obj: Any) -> str:
    """JSON text of a metadata or configuration value (anything else as ``str``)."""
    return json.dumps(obj, default=str)


def loads(text: str | None) -> Any:
    """A stored JSON value ({} for none; text that is not JSON as is)."""
    if text is None or text == "":
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_dt(value: Any) -> datetime:
    """A stored time (ISO text) as a ``datetime`` (now, when it is not one)."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now()


# -- records (the old record types) ----------------------------------------------------


@dataclass(init=False)
class AgentRecord:
    """One row of ``agents``: the old record, fields in the old order.

    ``agent_type`` (the name spiralfast's earlier releases used) is an alias of
    ``type``: a read/write property, and accepted as a keyword by the constructor
    and by :meth:`from_dict`.

    :raises TypeError: no type (or two different ones), or no status.
    """

    agent_id: str
    name: str
    type: str
    status: str
    recursion_depth: int
    entropy_level: float
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def __init__(
        self,
        agent_id: str,
        name: str,
        type: str | None = None,
        status: str | None = None,
        recursion_depth: int = 0,
        entropy_level: float = 0.5,
        metadata: dict[str, Any] | None = None,
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
        *,
        agent_type: str | None = None,
    ) -> None:
        if type is None:
            type = agent_type
        elif agent_type is not None and agent_type != type:
            raise TypeError(f"AgentRecord: type={type!r} and agent_type={agent_type!r} disagree (agent_type is "
                            "the other name of type: give one)")
        if type is None:
            raise TypeError("AgentRecord: missing the agent's type (type=..., or agent_type=...)")
        if status is None:
            raise TypeError("AgentRecord: missing the agent's status")
        now = datetime.now()
        self.agent_id = agent_id
        self.name = name
        self.type = type
        self.status = status
        self.recursion_depth = recursion_depth
        self.entropy_level = entropy_level
        self.metadata = metadata if metadata is not None else {}
        self.created_at = created_at if created_at is not None else now
        self.updated_at = updated_at if updated_at is not None else now

    @property
    def agent_type(self) -> str:
        """The agent's type (alias of :attr:`type`)."""
        return self.type

    @agent_type.setter
    def agent_type(self, value: str) -> None:
        self.type = value

    def to_dict(self) -> dict[str, Any]:
        """The old dict shape: the fields in order, times as ISO text."""
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["updated_at"] = self.updated_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentRecord:
        """A record from :meth:`to_dict`'s shape (``agent_type`` is read for ``type`` too;
        missing numbers and times take the defaults).

        :raises KeyError: no ``agent_id``, ``name`` or ``status``.
        :raises TypeError: no type.
        """
        return cls(
            str(d["agent_id"]), str(d["name"]), d.get("type", d.get("agent_type")), str(d["status"]),
            int(d.get("recursion_depth") or 0),
            float(d["entropy_level"]) if d.get("entropy_level") is not None else 0.5,
            loads(d["metadata"]) if isinstance(d.get("metadata"), str) else (d.get("metadata") or {}),
            parse_dt(d["created_at"]) if d.get("created_at") is not None else None,
            parse_dt(d["updated_at"]) if d.get("updated_at") is not None else None,
        )


@dataclass
class RitualEventRecord:
    """One row of ``ritual_events``."""

    event_id: str
    timestamp: datetime
    event_type: str
    description: str
    agent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: str = "INFO"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RitualEventRecord:
        """A record from :meth:`to_dict`'s shape."""
        return cls(str(d["event_id"]), parse_dt(d["timestamp"]), str(d["event_type"]), str(d["description"]),
                   d.get("agent_id"), d.get("metadata") or {}, d.get("severity") or "INFO")


@dataclass
class SystemMetricRecord:
    """One row of ``system_metrics``."""

    metric_id: str
    timestamp: datetime
    metric_name: str
    metric_value: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SystemMetricRecord:
        """A record from :meth:`to_dict`'s shape."""
        return cls(str(d["metric_id"]), parse_dt(d["timestamp"]), str(d["metric_name"]), float(d["metric_value"]),
                   d.get("metadata") or {})


# -- backends --------------------------------------------------------------------------


class PersistenceBackend(ABC):
    """What a storage backend offers ``PersistenceManager``."""

    @abstractmethod
    def save_agent(self, agent: AgentRecord) -> bool: ...

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    @abstractmethod
    def get_all_agents(self) -> list[AgentRecord]: ...

    @abstractmethod
    def delete_agent(self, agent_id: str) -> bool: ...

    @abstractmethod
    def save_ritual_event(self, event: RitualEventRecord) -> bool: ...

    @abstractmethod
    def get_ritual_events(self, limit: int = 100, event_type: str | None = None,
                          since: datetime | None = None) -> list[RitualEventRecord]: ...

    @abstractmethod
    def save_system_metric(self, metric: SystemMetricRecord) -> bool: ...

    @abstractmethod
    def get_system_metrics(self, metric_name: str | None = None, since: datetime | None = None,
                           limit: int = 1000) -> list[SystemMetricRecord]: ...

    @abstractmethod
    def get_config(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set_config(self, key: str, value: Any, description: str | None = None) -> bool: ...

    @abstractmethod
    def cleanup_old_data(self, days_to_keep: int = 30) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release the backend's resources (idempotent)."""


__all__ = ["AgentRecord", "PersistenceBackend", "RitualEventRecord", "SystemMetricRecord", "dumps", "loads",
           "parse_dt"]
