"""Frames on a shared bus (Redis, NATS), sans-I/O: who sent them, and proof of it.

Anyone who can publish on the bus can put bytes on our channels, so every frame
carries its sender and, with a mesh token, a MAC::

    flag u8 (bit 0: MAC, bit 1: key-signed) | sender length u8 | sender | epoch u64
    | counter u64 | sent ms u64 | [16-byte HMAC-SHA256 tag, MAC only]
    | [32-byte Ed25519 public key | 64-byte signature, key-signed only] | frame

The tag covers the channel, the header and the frame, under a key derived from the
token *and the mesh name* (PBKDF2, so a captured frame does not let anyone test token
guesses fast), so frames of another mesh (or another token) fail it.
Replays are refused: per sender, a counter (its running byte offset) is accepted
once, within its epoch (its start time in ms): pipelines in flight at once may reach
Redis out of order, so a sliding window of recent counters is kept (as IPsec does),
and anything older than the window, or from an older epoch, is refused.  A frame
must also be sent within ``window`` seconds of our clock, and its epoch may not lie
further ahead of our clock than that either (the epoch ceiling: one frame with an
extreme epoch must not make every later frame of its sender look like a replay).
A node without a token accepts only plain frames; a node with one, only MAC'd ones.

The token proves only membership.  *Which* member sent a frame is proved by its own
Ed25519 key (``spiralfast.wire.signing``): each node signs the whole sealed frame (one
signature per frame batch, not per event: the header, the MAC tag, its public key and
the frame's digest, which is the MAC's full HMAC-SHA256 output, or SHA-256 without a
token) and sends its public key with it.  The
first key heard for a node id is pinned to it (:class:`KeyPins`, shared by every bus
link of the node and seeded with the node's own key); a frame naming that sender with
another key, or whose signature does not verify, is refused and counted.  A node id
is released for a new key only once the mesh has declared its holder gone (a
restart with a new key then joins) -- or at once for a restart that proves the key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ..errors import AuthError, FrameError
from .signing import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeKey, derive_key, verify

_HDR = struct.Struct("<QQQ")  # epoch, counter, sent ms
TAG_SIZE = 16
#: Senders whose replay state we keep; beyond it the least recently heard is forgotten.
MAX_SENDERS = 10_000
#: Counters remembered per sender: reordering among the pipelines in flight stays
#: far inside it (4 pipelines of at most a few thousand frames).
REPLAY_WINDOW = 4096
#: Flag bits of a sealed frame.
FLAG_MAC, FLAG_KEY = 1, 2
KEY_BLOCK = PUBLIC_KEY_SIZE + SIGNATURE_SIZE
_SIG_LABEL = b"spiralfast-bus-frame-v1\0"
#: Our own frames remembered until their echo comes back (Redis and NATS echo every
#: broadcast to its sender): beyond it the echo is simply verified.
OWN_ECHOES = 1024


class KeyPins:
    """Node id -> the Ed25519 public key it proved first (shared by a node's bus links).

    ``check(sender, public)`` is True for the pinned key (or pins a first one); another
    key is refused until ``release(sender)`` (its holder declared gone).  The node's own
    id is pinned to its own key for good.  Bounded: beyond ``limit`` ids the least
    recently heard one is forgotten (never our own).
    """

    def __init__(self, own_id: str | None = None, own_key: bytes | None = None, limit: int = MAX_SENDERS) -> None:
        self._pins: OrderedDict[str, bytes] = OrderedDict()
        self._own = own_id
        self.limit = limit
        if own_id is not None and own_key is not None:
            self._pins[own_id] = own_key

    def check(self, sender: str, public: bytes) -> bool:
        pinned = self._pins.get(sender)
        if pinned is None:
            self._pins[sender] = bytes(public)
            while len(self._pins) > self.limit:
                oldest = next(iter(self._pins))
                if oldest == self._own:
                    self._pins.move_to_end(oldest)
                    oldest = next(iter(self._pins))
                del self._pins[oldest]
            return True
        if pinned != public:
            return False
        self._pins.move_to_end(sender)
        return True

    def get(self, sender: str) -> bytes | None:
        return self._pins.get(sender)

    def release(self, sender: str) -> None:
        """The mesh declared ``sender`` gone: its id may be taken by a new key."""
        if sender != self._own:
            self._pins.pop(sender, None)

    def __len__(self) -> int:
        return len(self._pins)


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

    :param window: seconds a frame's send time may differ from our clock (and how far
        ahead of it a sender's epoch may be).
    :param node_key: this node's key: our frames are signed with it.
    :param pins: the node's :class:`KeyPins` (every frame must then be key-signed by
        the key pinned to its sender).
    :param sign: sign our frames and require others' signatures (``sign_bus_frames``).
    """

    def __init__(self, node_id: str, mesh_name: str, token: str | None, window: float = 120.0,
                 epoch_ms: int | None = None, *, node_key: NodeKey | None = None,
                 pins: KeyPins | None = None, sign: bool = True,
                 on_twin: Callable[[str], None] | None = None) -> None:
        self.node_id = node_id
        #: Called (once per frame) when another live process sends with our own node id and
        #: another key, and it started before us (or, in the same millisecond, has the lower
        #: key): we are the newcomer, and the node should stop.
        self.on_twin = on_twin
        self._sender = node_id.encode()
        self._prefix = bytes([len(self._sender)]) + self._sender
        self.key = derive_key(token, "bus\0" + mesh_name) if token else None
        self.window_ms = int(window * 1000)
        self.epoch = epoch_ms if epoch_ms is not None else int(time.time() * 1000)
        self._seen: OrderedDict[tuple[str, bytes], _Replay] = OrderedDict()
        self.stats = {"unsigned": 0, "forged": 0, "replayed": 0, "malformed": 0, "stale": 0,
                      "future_epoch": 0, "key_unsigned": 0, "key_forged": 0, "key_mismatch": 0}
        self.node_key = node_key if sign else None
        self.pins = pins if sign else None
        if self.pins is not None and node_key is not None and self.pins.get(node_id) is None:
            self.pins.check(node_id, node_key.public)
        self._flag = (FLAG_MAC if self.key is not None else 0) | (FLAG_KEY if self.node_key is not None else 0)
        self._pub = self.node_key.public if self.node_key is not None else b""
        #: What we signed lately (signed bytes -> signature): our own echo on the bus is
        #: recognised without verifying our own signature again.
        self._mine: OrderedDict[bytes, bytes] = OrderedDict()

    def seal(self, channel: bytes, counter: int, frame: bytes) -> bytes:
        hdr = self._prefix + _HDR.pack(self.epoch, counter, int(time.time() * 1000))
        flag = self._flag
        head = bytes((flag,)) + hdr
        full = None
        if self.key is not None:
            full = hmac.new(self.key, channel + b"\0\1" + hdr + frame, hashlib.sha256).digest()
            head += full[:TAG_SIZE]
        if self.node_key is None:
            return head + frame
        # One signature for the whole sealed frame (a batch of messages), over a digest of
        # it: the MAC's full HMAC-SHA256 output (collision-resistant even to members who
        # know the MAC key), so the frame is hashed once for both.
        digest = full if full is not None else hashlib.sha256(channel + b"\0\1" + hdr + frame).digest()
        signed = b"".join((_SIG_LABEL, head, self._pub, digest))
        sig = self.node_key.sign(signed)
        self._mine[signed] = sig
        if len(self._mine) > OWN_ECHOES:
            self._mine.popitem(last=False)
        return b"".join((head, self._pub, sig, frame))

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
        if flag > 3 or len(view) < end + (TAG_SIZE if flag & FLAG_MAC else 0) + (KEY_BLOCK if flag & FLAG_KEY else 0):
            self.stats["malformed"] += 1
            raise FrameError("malformed bus frame header")
        sender_b = bytes(view[2 : 2 + n])
        epoch, counter, sent = _HDR.unpack_from(view, 2 + n)
        if bool(flag & FLAG_MAC) != (self.key is not None):
            self.stats["unsigned" if self.key is not None else "forged"] += 1
            raise AuthError("unsigned frame on a token-protected mesh" if self.key is not None
                            else "signed frame from another mesh (no token here)")
        body = end
        full = None
        if self.key is not None:
            tag = bytes(view[end : end + TAG_SIZE])
            body = end + TAG_SIZE
            skip = KEY_BLOCK if flag & FLAG_KEY else 0
            full = hmac.new(self.key, channel + b"\0\1" + bytes(view[1:end]) + bytes(view[body + skip:]),
                            hashlib.sha256).digest()
            if not hmac.compare_digest(tag, full[:TAG_SIZE]):
                self.stats["forged"] += 1
                raise AuthError("bad frame tag (wrong token or another mesh)")
        try:
            sender = sender_b.decode()
        except UnicodeDecodeError:
            self.stats["malformed"] += 1
            raise FrameError("bad sender id") from None
        if flag & FLAG_KEY:
            pub = bytes(view[body : body + PUBLIC_KEY_SIZE])
            sig = bytes(view[body + PUBLIC_KEY_SIZE : body + KEY_BLOCK])
            frame_at = body + KEY_BLOCK
            if self.pins is not None:
                digest = full if full is not None else hashlib.sha256(
                    channel + b"\0\1" + bytes(view[1:end]) + bytes(view[frame_at:])).digest()
                signed = b"".join((_SIG_LABEL, view[:body], pub, digest))
                if self._mine.pop(signed, None) != sig and not verify(pub, signed, sig):
                    self.stats["key_forged"] += 1
                    raise AuthError(f"bad key signature on a frame from {sender[:64]!r}")
                self._check_epoch(sender, epoch)
                if not self.pins.check(sender, pub):
                    self.stats["key_mismatch"] += 1
                    if sender == self.node_id and self.on_twin is not None and (
                            (epoch, pub) < (self.epoch, self._pub)):
                        self.on_twin(f"a process started {max(0, self.epoch - epoch) / 1000:.1f}s before this one "
                                     "sends on the bus with this node id and another key")
                    raise AuthError(f"frame from {sender[:64]!r} signed by another key than the one pinned to "
                                    "that node id (an impostor, or a restart before its old holder was declared gone)")
            body = frame_at
        elif self.pins is not None:
            self.stats["key_unsigned"] += 1
            raise AuthError(f"frame from {sender[:64]!r} not signed by the sender's own key")
        self._check_epoch(sender, epoch)
        self._check_fresh(sender, channel, epoch, counter, sent)  # our own echo too: a replay of it is refused
        return sender, counter, view[body:]

    def _check_epoch(self, sender: str, epoch: int) -> None:
        """The epoch ceiling: a sender's epoch (its start time) may lie at most ``window``
        ahead of our clock, so no frame can move its replay state out of reach."""
        if epoch > int(time.time() * 1000) + self.window_ms:
            self.stats["future_epoch"] += 1
            raise AuthError(f"frame from {sender[:64]!r} with an epoch {epoch} ahead of our clock beyond "
                            f"{self.window_ms / 1000:.0f}s (refused: it would lock the sender out)")

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


def bus_identity(host: Any, fresh_pins: bool = False) -> dict[str, Any]:
    """The ``BusSealer`` keyword arguments of the node behind a link's host: its key, its
    shared :class:`KeyPins` (a fresh set for ``fresh_pins``: a stream catch-up, whose old
    frames may come from earlier incarnations) and ``sign_bus_frames``."""
    node = getattr(host, "node", None)
    key = getattr(node, "key", None)
    if node is None or key is None:
        return {}
    pins = KeyPins(node.node_id, key.public) if fresh_pins else node.key_pins
    return {"node_key": key, "pins": pins, "sign": bool(getattr(node.config, "sign_bus_frames", True)),
            "on_twin": None if fresh_pins else getattr(host, "twin_on_bus", None)}


__all__ = [
    "TAG_SIZE", "MAX_SENDERS", "REPLAY_WINDOW", "FLAG_MAC", "FLAG_KEY", "KEY_BLOCK", "OWN_ECHOES",
    "KeyPins", "BusSealer", "bus_identity",
]
