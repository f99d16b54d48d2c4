# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled frame codec.  Behaviour and bytes are identical to ``_codec_py``.

See ``spiralfast/wire/_codec_py.py`` for the frame layout.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t

import msgspec
cimport cython

from spiralfast.errors import FrameError
from spiralfast.wire import limits as _limits

COMPILED = True

cdef Py_ssize_t PROTOCOL_VERSION = _limits.PROTOCOL_VERSION
cdef Py_ssize_t FRAME_HEADER_SIZE = _limits.FRAME_HEADER_SIZE
cdef Py_ssize_t MESSAGE_HEADER_SIZE = _limits.MESSAGE_HEADER_SIZE
cdef Py_ssize_t MAX_FRAME_SIZE = _limits.MAX_FRAME_SIZE
cdef Py_ssize_t MAX_MESSAGES_PER_FRAME = _limits.MAX_MESSAGES_PER_FRAME
cdef Py_ssize_t MAX_MESSAGE_SIZE = _limits.MAX_MESSAGE_SIZE
cdef Py_ssize_t MAX_ID_SIZE = _limits.MAX_ID_SIZE


cdef inline void _put_u32(char* p, uint32_t v) noexcept:
    p[0] = <char>(v & 0xFF)
    p[1] = <char>((v >> 8) & 0xFF)
    p[2] = <char>((v >> 16) & 0xFF)
    p[3] = <char>((v >> 24) & 0xFF)


cdef inline uint32_t _get_u32(const uint8_t* p) noexcept:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef bytes _id_bytes(object value, str what):
    """A target or message id that is neither ``str`` nor ``bytes``: a bytes-like object
    (``bytearray``, ``memoryview``...) as its bytes; anything else is a TypeError."""
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be str or a bytes-like object, not {type(value).__name__}") from None


# Fields are bytes and ints only, so a Message can never be part of a cycle:
# skipping GC tracking and reusing freed objects makes decode allocation cheap.
@cython.no_gc
@cython.freelist(512)
cdef class Message:
    """One message of a frame: routing header plus the still-encoded payload."""

    def __init__(self, int kind, int etype, bytes target, bytes msg_id, bytes payload):
        self.kind = kind
        self.etype = etype
        self.target = target
        self.msg_id = msg_id
        self.payload = payload

    def as_tuple(self):
        return (self.kind, self.etype, self.target, self.msg_id, self.payload)

    def __eq__(self, other):
        as_tuple = getattr(other, "as_tuple", None)
        if as_tuple is None:
            return NotImplemented
        return self.as_tuple() == as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def __repr__(self):
        return (
            f"Message(kind={self.kind}, etype={self.etype}, target={self.target!r}, "
            f"msg_id={self.msg_id!r}, payload=<{len(self.payload)} bytes>)"
        )


cdef inline Message _new_message(int kind, int etype, bytes target, bytes msg_id, bytes payload):
    # Bypass __init__ argument parsing on the hot decode path.
    cdef Message m = Message.__new__(Message)
    m.kind = kind
    m.etype = etype
    m.target = target
    m.msg_id = msg_id
    m.payload = payload
    return m


cdef class FrameWriter:
    """Builds one frame from many messages; payload objects are msgspec-encoded in place."""

    def __init__(self, encoder=None):
        enc = encoder if encoder is not None else msgspec.msgpack.Encoder()
        self._encode_into = enc.encode_into
        self._buf = bytearray(FRAME_HEADER_SIZE)
        PyByteArray_AS_STRING(self._buf)[0] = <char>PROTOCOL_VERSION
        self._count = 0

    @property
    def count(self):
        return self._count

    @property
    def nbytes(self):
        return PyByteArray_GET_SIZE(self._buf)

    @property
    def full(self):
        return self._count >= MAX_MESSAGES_PER_FRAME

    cdef Py_ssize_t _begin(self, int kind, int etype, object target, object msg_id) except -1:
        cdef Py_ssize_t tlen, ilen, start
        cdef char* p
        cdef const char* tptr
        cdef const char* iptr
        if self._count >= MAX_MESSAGES_PER_FRAME:
            raise FrameError(f"a frame holds at most {MAX_MESSAGES_PER_FRAME} messages")
        if not 0 <= kind <= 255 or not 0 <= etype <= 255:
            raise FrameError(f"kind and etype must fit in a byte (got {kind}, {etype})")
        # str ids are read through their cached UTF-8 form: no temporary bytes.  Other
        # bytes-like ids are copied to bytes first (never read as if they were bytes).
        if isinstance(target, str):
            tptr = PyUnicode_AsUTF8AndSize(target, &tlen)
        else:
            if not isinstance(target, bytes):
                target = _id_bytes(target, "target")
            tptr = <bytes>target
            tlen = PyBytes_GET_SIZE(target)
        if isinstance(msg_id, str):
            iptr = PyUnicode_AsUTF8AndSize(msg_id, &ilen)
        else:
            if not isinstance(msg_id, bytes):
                msg_id = _id_bytes(msg_id, "message id")
            iptr = <bytes>msg_id
            ilen = PyBytes_GET_SIZE(msg_id)
        if tlen > MAX_ID_SIZE or ilen > MAX_ID_SIZE:
            raise FrameError(f"target and message id are limited to {MAX_ID_SIZE} bytes")
        start = PyByteArray_GET_SIZE(self._buf)
        PyByteArray_Resize(self._buf, start + MESSAGE_HEADER_SIZE + tlen + ilen)
        p = PyByteArray_AS_STRING(self._buf) + start
        p[0] = <char>kind
        p[1] = <char>etype
        p[2] = <char>tlen
        p[3] = <char>ilen
        _put_u32(p + 4, 0)
        if tlen:
            memcpy(p + MESSAGE_HEADER_SIZE, tptr, tlen)
        if ilen:
            memcpy(p + MESSAGE_HEADER_SIZE + tlen, iptr, ilen)
        return start

    cdef int _end(self, Py_ssize_t start, Py_ssize_t payload_start) except -1:
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._buf)
        cdef Py_ssize_t plen = size - payload_start
        if plen > MAX_MESSAGE_SIZE or size > MAX_FRAME_SIZE:
            PyByteArray_Resize(self._buf, start)
            raise FrameError(_limits.too_large("message payload", plen, MAX_MESSAGE_SIZE) if plen > MAX_MESSAGE_SIZE
                             else _limits.too_large("frame", size, MAX_FRAME_SIZE))
        _put_u32(PyByteArray_AS_STRING(self._buf) + start + 4, <uint32_t>plen)
        self._count += 1
        return 0

    cpdef add(self, int kind, int etype, object target, object msg_id, object obj):
        """Append a message whose payload is ``obj`` encoded by the writer's encoder."""
        cdef Py_ssize_t start = self._begin(kind, etype, target, msg_id)
        cdef Py_ssize_t payload_start = PyByteArray_GET_SIZE(self._buf)
        try:
            self._encode_into(obj, self._buf, payload_start)
        except BaseException:
            PyByteArray_Resize(self._buf, start)
            raise
        self._end(start, payload_start)

    cpdef add_raw(self, int kind, int etype, object target, object msg_id, object payload):
        """Append a message whose payload is already encoded (forwarding)."""
        cdef Py_ssize_t start = self._begin(kind, etype, target, msg_id)
        cdef Py_ssize_t payload_start = PyByteArray_GET_SIZE(self._buf)
        cdef Py_buffer view
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            if view.len > MAX_MESSAGE_SIZE:
                PyByteArray_Resize(self._buf, start)
                raise FrameError(_limits.too_large("message payload", view.len, MAX_MESSAGE_SIZE))
            PyByteArray_Resize(self._buf, payload_start + view.len)
            memcpy(PyByteArray_AS_STRING(self._buf) + payload_start, view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        self._end(start, payload_start)

    cpdef bytes finish(self):
        """Return the frame built so far and start a new, empty one."""
        cdef char* p = PyByteArray_AS_STRING(self._buf)
        p[1] = <char>(self._count & 0xFF)
        p[2] = <char>((self._count >> 8) & 0xFF)
        out = PyBytes_FromStringAndSize(p, PyByteArray_GET_SIZE(self._buf))
        PyByteArray_Resize(self._buf, FRAME_HEADER_SIZE)
        self._count = 0
        return out

    cpdef clear(self):
        PyByteArray_Resize(self._buf, FRAME_HEADER_SIZE)
        self._count = 0


def encode_batch(messages):
    """Encode ``Message`` objects (or 5-tuples) with raw payloads into one frame."""
    cdef FrameWriter w = FrameWriter()
    for m in messages:
        t = m.as_tuple() if hasattr(m, "as_tuple") else m
        w.add_raw(t[0], t[1], t[2], t[3], t[4])
    return w.finish()


cdef Py_ssize_t validate_frame(const uint8_t* data, Py_ssize_t size, Py_ssize_t max_frame_size) except -1:
    """Check a whole frame against the layout and every limit; returns its message
    count.  Every decoder runs this first, so a malformed frame yields nothing."""
    cdef Py_ssize_t count, i, pos, end
    cdef uint32_t plen
    if size > max_frame_size:
        raise FrameError(f"frame of {size} bytes exceeds the {max_frame_size}-byte limit")
    if size < FRAME_HEADER_SIZE:
        raise FrameError("truncated frame header")
    if data[0] != PROTOCOL_VERSION:
        raise FrameError(f"unsupported frame version {data[0]}")
    count = data[1] | (data[2] << 8)
    if count > MAX_MESSAGES_PER_FRAME:
        raise FrameError(f"frame claims {count} messages (limit {MAX_MESSAGES_PER_FRAME})")
    pos = FRAME_HEADER_SIZE
    for i in range(count):
        if pos + MESSAGE_HEADER_SIZE > size:
            raise FrameError("truncated message header")
        plen = _get_u32(data + pos + 4)
        if plen > <uint32_t>MAX_MESSAGE_SIZE:
            raise FrameError(f"message of {plen} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")
        end = pos + MESSAGE_HEADER_SIZE + data[pos + 2] + data[pos + 3] + <Py_ssize_t>plen
        if end > size:
            raise FrameError("message runs past the end of the frame")
        pos = end
    if pos != size:
        raise FrameError(f"{size - pos} trailing bytes after the last message")
    return count


cdef list _decode(const uint8_t* data, Py_ssize_t size, Py_ssize_t max_frame_size):
    cdef Py_ssize_t count = validate_frame(data, size, max_frame_size)
    cdef Py_ssize_t i, pos, tlen, ilen
    cdef uint32_t plen
    cdef list out = [None] * count
    pos = FRAME_HEADER_SIZE
    for i in range(count):
        tlen = data[pos + 2]
        ilen = data[pos + 3]
        plen = _get_u32(data + pos + 4)
        pos += MESSAGE_HEADER_SIZE
        # Copies are deliberate: the caller's buffer (a picows read buffer) is only
        # valid during the callback, so nothing may keep a view into it.
        out[i] = _new_message(
            data[pos - MESSAGE_HEADER_SIZE], data[pos - MESSAGE_HEADER_SIZE + 1],
            PyBytes_FromStringAndSize(<const char*>data + pos, tlen),
            PyBytes_FromStringAndSize(<const char*>data + pos + tlen, ilen),
            PyBytes_FromStringAndSize(<const char*>data + pos + tlen + ilen, plen),
        )
        pos += tlen + ilen + <Py_ssize_t>plen
    return out


cdef list _decode_payloads(const uint8_t* data, Py_ssize_t size, object decode, Py_ssize_t max_frame_size):
    cdef Py_ssize_t count = validate_frame(data, size, max_frame_size)
    cdef Py_ssize_t i, pos
    cdef uint32_t plen
    cdef list out = [None] * count
    pos = FRAME_HEADER_SIZE
    for i in range(count):
        plen = _get_u32(data + pos + 4)
        pos += MESSAGE_HEADER_SIZE + data[pos + 2] + data[pos + 3]
        out[i] = decode(PyBytes_FromStringAndSize(<const char*>data + pos, plen))
        pos += plen
    return out


cpdef list decode_payloads(object data, object decode, Py_ssize_t max_frame_size=MAX_FRAME_SIZE):
    """``[decode(payload) for each message]`` without building ``Message`` objects,
    for a receiver that needs only the payloads.  ``FrameError`` as ``decode_frame``;
    errors raised by ``decode`` propagate."""
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except (TypeError, BufferError) as exc:
        raise FrameError("frame must be a contiguous bytes-like object") from exc
    try:
        return _decode_payloads(<const uint8_t*>view.buf, view.len, decode, max_frame_size)
    finally:
        PyBuffer_Release(&view)


cpdef list decode_frame(object data, Py_ssize_t max_frame_size=MAX_FRAME_SIZE):
    """Split one frame into messages.  Raises ``FrameError`` on any malformed input."""
    cdef Py_buffer view
    if isinstance(data, bytes):
        return _decode(<const uint8_t*><char*>data, len(<bytes>data), max_frame_size)
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except (TypeError, BufferError) as exc:
        raise FrameError("frame must be a contiguous bytes-like object") from exc
    try:
        return _decode(<const uint8_t*>view.buf, view.len, max_frame_size)
    finally:
        PyBuffer_Release(&view)


cdef class Decoder:
    """Sans-I/O frame decoder: ``feed(frame)`` returns the frame's messages."""

    def __init__(self, Py_ssize_t max_frame_size=MAX_FRAME_SIZE):
        self.max_frame_size = max_frame_size
        self.frames = 0
        self.messages = 0
        self.errors = 0

    cpdef list feed(self, object data):
        cdef list msgs
        try:
            msgs = decode_frame(data, self.max_frame_size)
        except FrameError:
            self.errors += 1
            raise
        self.frames += 1
        self.messages += len(msgs)
        return msgs
