"""Pure-Python twin of ``_wslistener``."""

from __future__ import annotations

from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

COMPILED = False


class MeshListener(WSListener):  # type: ignore[misc]
    def __init__(self, link: Any, on_frame: Any) -> None:
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
