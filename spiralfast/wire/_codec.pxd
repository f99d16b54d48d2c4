from libc.stdint cimport uint8_t

# Declarations of the compiled frame codec, for cimport by other compiled units
# (the picows listener feeds the decoder without Python-level calls).

cdef class Message:
    cdef public int kind
    cdef public int etype
    cdef public bytes target
    cdef public bytes msg_id
    cdef public bytes payload


cdef class FrameWriter:
    cdef bytearray _buf
    cdef Py_ssize_t _count
    cdef object _encode_into

    cdef Py_ssize_t _begin(self, int kind, int etype, object target, object msg_id) except -1
    cdef int _end(self, Py_ssize_t start, Py_ssize_t payload_start) except -1
    cpdef add(self, int kind, int etype, object target, object msg_id, object obj)
    cpdef add_raw(self, int kind, int etype, object target, object msg_id, object payload)
    cpdef bytes finish(self)
    cpdef clear(self)


cdef class Decoder:
    cdef public Py_ssize_t max_frame_size
    cdef public Py_ssize_t frames
    cdef public Py_ssize_t messages
    cdef public Py_ssize_t errors

    cpdef list feed(self, object data)


cpdef list decode_frame(object data, Py_ssize_t max_frame_size=*)
cpdef list decode_payloads(object data, object decode, Py_ssize_t max_frame_size=*)
cdef Py_ssize_t validate_frame(const uint8_t* data, Py_ssize_t size, Py_ssize_t max_frame_size) except -1
