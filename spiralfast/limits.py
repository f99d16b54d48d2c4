"""Every protocol and queue limit, named once: a re-export.

The code lives in :mod:`spiralfast.wire.limits` (the wire layer, see docs/architecture.md);
this module keeps the import path ``spiralfast.limits`` working for users and tools.
"""

from __future__ import annotations

from .wire.limits import *  # noqa: F403
from .wire.limits import (
    DEDUPE_WINDOW,
    DEFAULT_RING_CAPACITY,
    FD_HEADROOM,
    FLUSH_THRESHOLD_BYTES,
    FRAME_HEADER_SIZE,
    HANDSHAKE_VERSION,
    MAX_ACK_HOLD,
    MAX_BUS_RATE_SENDERS,
    MAX_FRAME_SIZE,
    MAX_ID_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_MESSAGES_PER_FRAME,
    MAX_NESTING_DEPTH,
    MAX_ORIGINS,
    MAX_PREAUTH_CONNECTIONS,
    MAX_PREAUTH_FRAME_SIZE,
    MAX_PREAUTH_FRAMES,
    MAX_STATE_ENTRY_SIZE,
    MESSAGE_HEADER_SIZE,
    PREAUTH_SOURCE_PREFIX_V6,
    PROTOCOL_VERSION,
    SEQ_WINDOW,
    STATE_CHUNK_BYTES,
    too_large,
)

__all__ = [
    "PROTOCOL_VERSION", "HANDSHAKE_VERSION", "FRAME_HEADER_SIZE", "MESSAGE_HEADER_SIZE",
    "MAX_FRAME_SIZE", "MAX_MESSAGES_PER_FRAME", "MAX_MESSAGE_SIZE", "MAX_ID_SIZE",
    "FLUSH_THRESHOLD_BYTES", "DEFAULT_RING_CAPACITY", "DEDUPE_WINDOW", "MAX_PREAUTH_FRAME_SIZE",
    "MAX_PREAUTH_FRAMES", "MAX_PREAUTH_CONNECTIONS", "PREAUTH_SOURCE_PREFIX_V6", "FD_HEADROOM",
    "MAX_NESTING_DEPTH", "MAX_STATE_ENTRY_SIZE", "STATE_CHUNK_BYTES", "SEQ_WINDOW", "MAX_ORIGINS",
    "MAX_BUS_RATE_SENDERS", "MAX_ACK_HOLD", "too_large",
]
