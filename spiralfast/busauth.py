"""Sealed frames on a shared bus (Redis, NATS), who sent them and proof of it: a re-export.

The code lives in :mod:`spiralfast.wire.sealing` (the wire layer, see docs/architecture.md);
this module keeps the import path ``spiralfast.busauth`` working for users and tools.
"""

from __future__ import annotations

from .wire.sealing import *  # noqa: F403
from .wire.sealing import (
    FLAG_KEY,
    FLAG_MAC,
    KEY_BLOCK,
    MAX_SENDERS,
    OWN_ECHOES,
    REPLAY_WINDOW,
    TAG_SIZE,
    BusSealer,
    KeyPins,
    bus_identity,
)
from .wire.signing import derive_key

__all__ = [
    "TAG_SIZE", "MAX_SENDERS", "REPLAY_WINDOW", "FLAG_MAC", "FLAG_KEY", "KEY_BLOCK", "OWN_ECHOES",
    "KeyPins", "BusSealer", "bus_identity", "derive_key",
]
