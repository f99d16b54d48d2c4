"""Frames on a shared bus (Redis, NATS), sans-I/O: who sent them, and proof of it.

Anyone who can publish on the bus can put bytes on our channels, so every frame
carries its sender and, with a mesh token, a MAC::

    flag u8 (0 plain, 1 signed) | sender length u8 | sender | epoch u64 | counter u64
    | sent ms u64 | [16-byte HMAC-SHA256 tag, signed only] | frame

The tag covers the channel, the header and the frame, under a key derived from the
token *and the mesh name* (PBKDF2, so a captured frame does not let anyone test token
guesses fast), so frames of another mesh (or another token) fail it.
Replays are refused: per sender, a counter (its running byte offset) is accepted
once, within its epoch (its start time in ms): pipelines in flight at once may reach
Redis out of order, so a sliding window of recent counters is kept (as IPsec does),
and anything older than the window, or from an older epoch, is refused.  A frame
must also be sent within ``window`` seconds of our clock.  A node without a token accepts only
plain frames; a node with one, only signed ones.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections import OrderedDict, deque

from .errors import AuthError, FrameError
from .handshake import derive_key

_HDR = struct.Struct("<QQQ")  # epoch, counter, sent ms
TAG_SIZE = 16
#: Senders whose replay state we keep; beyond it the least recently heard is forgotten.
MAX_SENDERS = 10_000
#: Counters remembered per sender: reordering among the pipelines in flight stays
#: far inside it (4 pipelines of at most a few thousand frames).
REPLAY_WINDOW = 4096


class _Replay:
    __slots__ = ("epoch", "floor", "seen", "order")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.floor = -1  # every counter <= floor is refused
        self.seen: set[int] = set()
        self.order: deque[int] = deque()

    def accept(self, epoch: int, counter: int) -> bool:
        if epoch != self.epoch:
            if epoch < self.epoch:
                return False
            self.__init__(epoch)  # type: ignore[misc]  # the sender restarted
        if counter <= self.floor or counter in self.seen:
            return False
        self.seen.add(counter)
        self.order.append(counter)
        if len(self.order) > REPLAY_WINDOW:
            old = self.order.popleft()
            self.seen.discard(old)
            self.floor = max(self.floor, old)
        return True


class BusSealer:
    """Seals our frames and opens (verifies) everyone else's, for one bus link.

    :param window: seconds a frame's send time may differ from our clock.
    """

    def __init__(self, node_id: str, mesh_name: str, token: str | None, window: float = 120.0,
                 epoch_ms: int | None = None) -> None:
        self.node_id = node_id
        self._sender = node_id.encode()
        self._prefix = bytes([len(self._sender)]) + self._sender
        self.key = derive_key(token, "bus\0" + mesh_name) if token else None
        self.window_ms = int(window * 1000)
        self.epoch = epoch_ms if epoch_ms is not None else int(time.time() * 1000)
        self._seen: OrderedDict[tuple[str, bytes], _Replay] = OrderedDict()
        self.stats = {"unsigned": 0, "forged": 0, "replayed": 0, "malformed": 0, "stale": 0}

    def seal(self, channel: bytes, counter: int, frame: bytes) -> bytes:
        hdr = self._prefix + _HDR.pack(self.epoch, counter, int(time.time() * 1000))
        if self.key is None:
            return b"\0" + hdr + frame
        tag = hmac.new(self.key, channel + b"\0\1" + hdr + frame, hashlib.sha256).digest()[:TAG_SIZE]
        return b"\1" + hdr + tag + frame

    def open(self, channel: bytes, data: bytes) -> tuple[str, int, memoryview]:
        """Returns ``(sender, counter, frame)``; raises ``AuthError`` (unsigned, forged,
        replayed or stale) or ``FrameError`` (malformed).  Our own echo comes back
        with sender == our id (not checked for replay)."""
        view = memoryview(data)
        if len(view) < 2 + _HDR.size:
            self.stats["malformed"] += 1
            raise FrameError("truncated bus frame")
        flag, n = view[0], view[1]
        end = 2 + n + _HDR.size
        if flag not in (0, 1) or len(view) < end + (TAG_SIZE if flag else 0):
            self.stats["malformed"] += 1
            raise FrameError("malformed bus frame header")
        sender_b = bytes(view[2 : 2 + n])
        epoch, counter, sent = _HDR.unpack_from(view, 2 + n)
        if (flag == 1) != (self.key is not None):
            self.stats["unsigned" if self.key is not None else "forged"] += 1
            raise AuthError("unsigned frame on a token-protected mesh" if self.key is not None
                            else "signed frame from another mesh (no token here)")
        body = end
        if self.key is not None:
            tag = bytes(view[end : end + TAG_SIZE])
            body = end + TAG_SIZE
            want = hmac.new(self.key, channel + b"\0\1" + bytes(view[1:end]) + bytes(view[body:]),
                            hashlib.sha256).digest()[:TAG_SIZE]
            if not hmac.compare_digest(tag, want):
                self.stats["forged"] += 1
                raise AuthError("bad frame tag (wrong token or another mesh)")
        try:
            sender = sender_b.decode()
        except UnicodeDecodeError:
            self.stats["malformed"] += 1
            raise FrameError("bad sender id") from None
        self._check_fresh(sender, channel, epoch, counter, sent)  # our own echo too: a replay of it is refused
        return sender, counter, view[body:]

    def _check_fresh(self, sender: str, channel: bytes, epoch: int, counter: int, sent: int) -> None:
        now = int(time.time() * 1000)
        if abs(now - sent) > self.window_ms:
            self.stats["stale"] += 1
            raise AuthError(f"frame sent {abs(now - sent) / 1000:.0f}s from our clock (replayed, or a skewed clock)")
        key = (sender, channel if channel.endswith(b":ack") else b"")
        r = self._seen.get(key)
        if r is None:
            r = self._seen[key] = _Replay(epoch)
        if not r.accept(epoch, counter):
            self.stats["replayed"] += 1
            raise AuthError("replayed frame")
        self._seen.move_to_end(key)
        if len(self._seen) > MAX_SENDERS:
            self._seen.popitem(last=False)
