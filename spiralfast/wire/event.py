"""``RitualEvent`` and the EventBus hot path (compiled, or the pure twin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._native import load

_impl = load("wire._event", "wire._event_py")

COMPILED: bool = _impl.COMPILED
if TYPE_CHECKING:  # the twin's annotations: the same API as the compiled module's .pyi
    from ._event_py import RitualEvent, dispatch_loop, publish_nowait
else:
    RitualEvent = _impl.RitualEvent
    publish_nowait = _impl.publish_nowait
    dispatch_loop = _impl.dispatch_loop

__all__ = ["COMPILED", "RitualEvent", "publish_nowait", "dispatch_loop"]
