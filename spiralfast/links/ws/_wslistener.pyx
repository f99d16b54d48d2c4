# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled picows listener: feeds the router straight from the frame's memoryview.

The memoryview points into picows' read buffer and is only valid during this
callback; the decoder copies what it keeps, so no view outlives the call.
"""

from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType

COMPILED = True


cdef class MeshListener(WSListener):
    cdef public object link
    cdef object _on_frame

    def __init__(self, link, on_frame):
        self.link = link
        self._on_frame = on_frame

    cpdef on_ws_connected(self, WSTransport transport):
        self.link.connected(transport)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType t = frame.msg_type
        if t == WSMsgType.BINARY and frame.fin:
            self._on_frame(self.link, frame.get_payload_as_memoryview())
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif t == WSMsgType.PONG:
            self.link.pong(frame.get_payload_as_bytes())
        elif t == WSMsgType.PING:
            self.link.ping_received(frame.get_payload_as_bytes())
        elif t == WSMsgType.BINARY or t == WSMsgType.CONTINUATION:
            # A piece of a message over 64 KiB: rare, so the link reassembles it in Python.
            self.link.fragment(t, frame.get_payload_as_bytes(), frame.fin)
        else:
            self.link.bad_frame(t)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.link.disconnected()

    cpdef pause_writing(self):
        self.link.pause()

    cpdef resume_writing(self):
        self.link.resume()
