"""The receive and send hot paths (compiled, or the pure twin): a re-export.

The code lives in :mod:`spiralfast.wire.fastpath` (the wire layer, see docs/architecture.md);
this module keeps the import path ``spiralfast.fastpath`` working for users and tools.
"""

from __future__ import annotations

from .wire.fastpath import *  # noqa: F403
from .wire.fastpath import (
    COMPILED,
    Dedupe,
    EventSender,
    EventSink,
    iso_from_epoch,
)

__all__ = [
    "COMPILED", "Dedupe", "EventSender", "EventSink", "iso_from_epoch",
]
