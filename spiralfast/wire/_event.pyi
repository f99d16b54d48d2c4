from datetime import datetime
from typing import Any

COMPILED: bool

class RitualEvent:
    event_id: str
    event_type: Any
    source_node: str
    target_node: str | None
    data: Any
    metadata: Any
    priority: int
    ttl: int | float | None
    _ts: float
    _dt: datetime | None
    def __init__(
        self, event_id: str, event_type: Any, source_node: str, target_node: str | None,
        timestamp: datetime | float, data: Any, metadata: Any, priority: int = 5, ttl: int | float | None = None,
    ) -> None: ...
    @property
    def timestamp(self) -> datetime: ...
    @timestamp.setter
    def timestamp(self, value: datetime) -> None: ...
    @property
    def epoch(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RitualEvent: ...

def publish_nowait(bus: Any, event_type: Any, data: Any, target_node: Any, priority: Any, ttl: Any,
                   metadata: Any) -> str | None: ...
async def dispatch_loop(bus: Any) -> None: ...
