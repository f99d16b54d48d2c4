"""The sans-I/O protocol: frame codec (compiled or pure twin) plus payload coding.

``FrameWriter`` / ``encode_batch`` turn messages into one frame, ``Decoder.feed`` /
``decode_frame`` turn a frame back into ``Message`` objects whose payloads stay
encoded until ``decode_payload`` is called for the kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import FrameError
from . import schema
from ._native import load

_impl = load("wire._codec", "wire._codec_py")

COMPILED: bool = _impl.COMPILED
if TYPE_CHECKING:  # the twin's annotations: the same API as the compiled module's .pyi
    from ._codec_py import Decoder, FrameWriter, Message, decode_frame, decode_payloads, encode_batch
else:
    Message = _impl.Message
    FrameWriter = _impl.FrameWriter
    Decoder = _impl.Decoder
    decode_frame = _impl.decode_frame
    decode_payloads = _impl.decode_payloads
    encode_batch = _impl.encode_batch

#: One reused msgpack decoder per message kind (kind byte -> Struct type).
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(typ) for kind, typ in schema.KIND_TYPES.items()
}


def decode_payload(kind: int, payload: Any) -> Any:
    """Decode one message payload for its kind; ``FrameError`` if it does not fit."""
    dec = _DECODERS.get(kind)
    if dec is None:
        raise FrameError(f"unknown message kind {kind}")
    try:
        return dec.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8
        raise FrameError(f"bad payload for message kind {kind}: {exc}") from exc


def decode_messages(data: Any) -> list[tuple[Any, Any]]:
    """Decode a frame and every payload in it: ``[(message, struct), ...]``."""
    return [(m, decode_payload(m.kind, m.payload)) for m in decode_frame(data)]


__all__ = [
    "COMPILED",
    "Message",
    "FrameWriter",
    "Decoder",
    "decode_frame",
    "decode_payloads",
    "encode_batch",
    "decode_payload",
    "decode_messages",
]
