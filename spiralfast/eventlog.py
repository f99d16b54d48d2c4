"""The node's event log: persists mesh events (SQLite or PostgreSQL), history, replay.

(Interface fixed by the core; the implementation is being built for issue 16.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import MeshCore


class EventLog:
    """Opened by ``MeshCore.start()`` when ``persistence_path`` or ``persistence_url`` is set."""

    def __init__(self, mesh: MeshCore) -> None:
        self.mesh = mesh

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def record(self, env: dict[str, Any]) -> None:
        """Called (synchronously, on the loop) for every event envelope this node sends or receives."""

    def history(self, since: Any = None, until: Any = None, types: Any = None, source: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        return []

    async def replay(self, since: Any, types: Any = None) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {}
