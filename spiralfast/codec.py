"""The frame codec (compiled or pure twin) plus payload coding: a re-export.

The code lives in :mod:`spiralfast.wire.codec` (the wire layer, see docs/architecture.md);
this module keeps the import path ``spiralfast.codec`` working for users and tools.
"""

from __future__ import annotations

from .wire.codec import *  # noqa: F403
from .wire.codec import (
    COMPILED,
    Decoder,
    FrameWriter,
    Message,
    decode_frame,
    decode_messages,
    decode_payload,
    decode_payloads,
    encode_batch,
)

__all__ = [
    "COMPILED", "Message", "FrameWriter", "Decoder", "decode_frame", "decode_payloads",
    "encode_batch", "decode_payload", "decode_messages",
]
