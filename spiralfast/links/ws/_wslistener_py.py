"""Pure-Python twin of ``_wslistener``: the picows listener of one WebSocket link.

It hands each whole binary frame to ``on_frame(link, view)`` (the view is valid during
the call only) and everything else (pings, pongs, fragments, close, flow control) to
the link (``ListenerLink``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from picows import WSFrame, WSListener, WSMsgType, WSTransport

COMPILED = False


class ListenerLink(Protocol):
    """What the listener calls on its link (``ws.link.WSLink``)."""

    def connected(self, transport: WSTransport) -> None: ...

    def disconnected(self) -> None: ...

    def pong(self, payload: bytes) -> None: ...

    def ping_received(self, payload: bytes) -> None: ...

    def fragment(self, msg_type: WSMsgType, data: bytes, fin: bool) -> None: ...

    def bad_frame(self, msg_type: WSMsgType) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class MeshListener(WSListener):
    def __init__(self, link: ListenerLink, on_frame: Callable[..., None]) -> None:
        super().__init__()
        self.link = link
        self._on_frame = on_frame

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.link.connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
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
            self.link.fragment(t, frame.get_payload_as_bytes(), frame.fin)
        else:
            self.link.bad_frame(t)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.link.disconnected()

    def pause_writing(self) -> None:
        self.link.pause()

    def resume_writing(self) -> None:
        self.link.resume()
