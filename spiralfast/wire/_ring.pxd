# Declarations of the compiled ring, so other compiled units call it directly.

cdef class Ring:
    cdef list _slots
    cdef Py_ssize_t _head
    cdef Py_ssize_t _tail
    cdef Py_ssize_t _mask
    cdef readonly Py_ssize_t capacity
    cdef int _policy
    cdef readonly str overflow
    cdef readonly Py_ssize_t pushed
    cdef readonly Py_ssize_t popped
    cdef readonly Py_ssize_t dropped
    cdef readonly Py_ssize_t rejected
    cdef object _waiter
    cdef object _space_waiter
    cdef object _loop
    cdef bint _waiting

    cpdef Py_ssize_t qsize(self)
    cpdef bint empty(self)
    cpdef bint full(self)
    cpdef bint push(self, object item) except -1
    cpdef object pop(self)
    cpdef list pop_many(self, Py_ssize_t limit=*)
    cpdef object peek(self)
    cpdef bint push_threadsafe(self, object item) except -1
