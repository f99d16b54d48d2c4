"""Work distribution: task handlers, submission, load balancing, failover.

(Interface fixed by the core; the implementation is being built for issue 17.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import MeshCore


class TaskManager:
    """One per MeshCore (``mesh.tasks``).  Uses only the mesh's public API."""

    def __init__(self, mesh: MeshCore) -> None:
        self.mesh = mesh

    def register(self, task_type: str, handler: Callable[[Any], Any], *, capacity: int = 64) -> None:
        raise NotImplementedError

    async def submit(self, task_type: str, payload: Any, *, timeout: float = 30.0, retries: int = 2,
                     target_node: str | None = None) -> Any:
        raise NotImplementedError

    def map(self, task_type: str, payloads: Iterable[Any], *, concurrency: int = 256) -> AsyncIterator[Any]:
        raise NotImplementedError

    async def start(self) -> None:
        """Called by ``MeshCore.start()`` once the links are up."""

    async def stop(self) -> None:
        """Called by ``MeshCore.stop()`` before the links close."""

    def status(self) -> dict[str, Any]:
        return {}
