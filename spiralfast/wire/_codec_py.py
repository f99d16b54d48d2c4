"""Pure-Python twin of ``spiralfast.wire._codec``: byte-identical frames, identical errors.

Frame layout (all integers little-endian)::

    frame   := version:u8  count:u16  message{count}
    message := kind:u8  etype:u8  tlen:u8  ilen:u8  plen:u32
               target[tlen]  msg_id[ilen]  payload[plen]

The per-message header lets a node route (target), filter (kind, etype) and
dedupe (msg_id) a message without decoding its msgspec payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, TypeAlias

import msgspec

from ..errors import FrameError
from .limits import (
    FRAME_HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_ID_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_MESSAGES_PER_FRAME,
    MESSAGE_HEADER_SIZE,
    PROTOCOL_VERSION,
    too_large,
)

_FRAME_HDR = struct.Struct("<BH")
_MSG_HDR = struct.Struct("<BBBBI")

COMPILED = False

#: A target or message id: str (written as UTF-8) or a bytes-like object.
WireId: TypeAlias = str | bytes | bytearray | memoryview


class Message:
    """One message of a frame: routing header plus the still-encoded payload."""

    __slots__ = ("kind", "etype", "target", "msg_id", "payload")

    def __init__(self, kind: int, etype: int, target: bytes, msg_id: bytes, payload: bytes) -> None:
        self.kind = kind
        self.etype = etype
        self.target = target
        self.msg_id = msg_id
        self.payload = payload

    def as_tuple(self) -> tuple[int, int, bytes, bytes, bytes]:
        return (self.kind, self.etype, self.target, self.msg_id, self.payload)

    def __eq__(self, other: object) -> bool:
        as_tuple = getattr(other, "as_tuple", None)
        if as_tuple is None:
            return NotImplemented
        return bool(self.as_tuple() == as_tuple())

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return (
            f"Message(kind={self.kind}, etype={self.etype}, target={self.target!r}, "
            f"msg_id={self.msg_id!r}, payload=<{len(self.payload)} bytes>)"
        )


def _id_bytes(value: object, what: str) -> bytes:
    """A target or message id as bytes: a ``str`` as UTF-8, a bytes-like object
    (``bytes``, ``bytearray``, ``memoryview``...) as its bytes; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    try:
        return memoryview(value).tobytes()  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be str or a bytes-like object, not {type(value).__name__}") from None


def _check_header(kind: int, etype: int, target: bytes, msg_id: bytes) -> None:
    if not 0 <= kind <= 255 or not 0 <= etype <= 255:
        raise FrameError(f"kind and etype must fit in a byte (got {kind}, {etype})")
    if len(target) > MAX_ID_SIZE or len(msg_id) > MAX_ID_SIZE:
        raise FrameError(f"target and message id are limited to {MAX_ID_SIZE} bytes")


class FrameWriter:
    """Builds one frame from many messages; payload objects are msgspec-encoded in place."""

    __slots__ = ("_buf", "_count", "_encode_into")

    def __init__(self, encoder: Any = None) -> None:
        enc = encoder if encoder is not None else msgspec.msgpack.Encoder()
        self._encode_into = enc.encode_into
        self._buf = bytearray(_FRAME_HDR.pack(PROTOCOL_VERSION, 0))
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return len(self._buf)

    @property
    def full(self) -> bool:
        return self._count >= MAX_MESSAGES_PER_FRAME

    def _begin(self, kind: int, etype: int, target: WireId, msg_id: WireId) -> int:
        if target.__class__ is not bytes:  # str inline: the common case costs no call
            target = target.encode() if target.__class__ is str else _id_bytes(target, "target")
        if msg_id.__class__ is not bytes:
            msg_id = msg_id.encode() if msg_id.__class__ is str else _id_bytes(msg_id, "message id")
        if self._count >= MAX_MESSAGES_PER_FRAME:
            raise FrameError(f"a frame holds at most {MAX_MESSAGES_PER_FRAME} messages")
        _check_header(kind, etype, target, msg_id)
        buf = self._buf
        start = len(buf)
        buf += _MSG_HDR.pack(kind, etype, len(target), len(msg_id), 0)
        buf += target
        buf += msg_id
        return start

    def _end(self, start: int, payload_start: int) -> None:
        buf = self._buf
        plen = len(buf) - payload_start
        if plen > MAX_MESSAGE_SIZE or len(buf) > MAX_FRAME_SIZE:
            size = len(buf)
            del buf[start:]
            raise FrameError(too_large("message payload", plen, MAX_MESSAGE_SIZE) if plen > MAX_MESSAGE_SIZE
                             else too_large("frame", size, MAX_FRAME_SIZE))
        struct.pack_into("<I", buf, start + 4, plen)
        self._count += 1

    def add(self, kind: int, etype: int, target: WireId, msg_id: WireId, obj: Any) -> None:
        """Append a message whose payload is ``obj`` encoded by the writer's encoder."""
        start = self._begin(kind, etype, target, msg_id)
        buf = self._buf
        payload_start = len(buf)
        try:
            self._encode_into(obj, buf, payload_start)
        except BaseException:
            del buf[start:]
            raise
        self._end(start, payload_start)

    def add_raw(self, kind: int, etype: int, target: WireId, msg_id: WireId, payload: Any) -> None:
        """Append a message whose payload is already encoded (forwarding)."""
        start = self._begin(kind, etype, target, msg_id)
        buf = self._buf
        payload_start = len(buf)
        buf += payload
        self._end(start, payload_start)

    def finish(self) -> bytes:
        """Return the frame built so far and start a new, empty one."""
        buf = self._buf
        struct.pack_into("<H", buf, 1, self._count)
        out = bytes(buf)
        del buf[FRAME_HEADER_SIZE:]
        self._count = 0
        return out

    def clear(self) -> None:
        del self._buf[FRAME_HEADER_SIZE:]
        self._count = 0


def encode_batch(messages: Iterable[Any]) -> bytes:
    """Encode ``Message`` objects (or 5-tuples) with raw payloads into one frame."""
    w = FrameWriter()
    for m in messages:
        t = m.as_tuple() if hasattr(m, "as_tuple") else m
        w.add_raw(t[0], t[1], t[2], t[3], t[4])
    return w.finish()


def decode_frame(data: Any, max_frame_size: int = MAX_FRAME_SIZE) -> list[Message]:
    """Split one frame into messages.  Raises ``FrameError`` on any malformed input."""
    try:
        mv = memoryview(data)
    except TypeError as exc:
        raise FrameError("frame must be a bytes-like object") from exc
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    size = mv.nbytes
    if size > max_frame_size:
        raise FrameError(f"frame of {size} bytes exceeds the {max_frame_size}-byte limit")
    if size < FRAME_HEADER_SIZE:
        raise FrameError("truncated frame header")
    version, count = _FRAME_HDR.unpack_from(mv, 0)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"unsupported frame version {version}")
    if count > MAX_MESSAGES_PER_FRAME:
        raise FrameError(f"frame claims {count} messages (limit {MAX_MESSAGES_PER_FRAME})")
    out: list[Message] = []
    pos = FRAME_HEADER_SIZE
    for _ in range(count):
        if pos + MESSAGE_HEADER_SIZE > size:
            raise FrameError("truncated message header")
        kind, etype, tlen, ilen, plen = _MSG_HDR.unpack_from(mv, pos)
        if plen > MAX_MESSAGE_SIZE:
            raise FrameError(f"message of {plen} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")
        pos += MESSAGE_HEADER_SIZE
        end = pos + tlen + ilen + plen
        if end > size:
            raise FrameError("message runs past the end of the frame")
        target = bytes(mv[pos : pos + tlen])
        pos += tlen
        msg_id = bytes(mv[pos : pos + ilen])
        pos += ilen
        payload = bytes(mv[pos:end])
        pos = end
        out.append(Message(kind, etype, target, msg_id, payload))
    if pos != size:
        raise FrameError(f"{size - pos} trailing bytes after the last message")
    return out


def decode_payloads(data: Any, decode: Any, max_frame_size: int = MAX_FRAME_SIZE) -> list[Any]:
    """``[decode(payload) for each message]`` without exposing ``Message`` objects,
    for a receiver that needs only the payloads.  ``FrameError`` as ``decode_frame``;
    errors raised by ``decode`` propagate."""
    return [decode(m.payload) for m in decode_frame(data, max_frame_size)]


class Decoder:
    """Sans-I/O frame decoder: ``feed(frame)`` returns the frame's messages."""

    __slots__ = ("max_frame_size", "frames", "messages", "errors")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self.frames = 0
        self.messages = 0
        self.errors = 0

    def feed(self, data: Any) -> list[Message]:
        try:
            msgs = decode_frame(data, self.max_frame_size)
        except FrameError:
            self.errors += 1
            raise
        self.frames += 1
        self.messages += len(msgs)
        return msgs
