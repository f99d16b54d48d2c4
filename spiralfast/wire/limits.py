"""Every protocol and queue limit, named once, each with the reason for its value.

Both the compiled modules and their pure-Python twins read these, so the two can
never disagree about what is "too big".
"""

from __future__ import annotations

#: Wire format version carried in the first byte of every frame.
PROTOCOL_VERSION = 1

#: Handshake protocol carried in Hello (2: the proof binds the whole transcript and
#: the node record travels only after the peer is verified).
HANDSHAKE_VERSION = 2

#: Bytes in front of every frame: version (u8) + message count (u16 LE).
FRAME_HEADER_SIZE = 3

#: Bytes in front of every message: kind, event-type id, target length, id length
#: (u8 each) + payload length (u32 LE).
MESSAGE_HEADER_SIZE = 8

#: Largest frame we accept or build.  Bounds the memory one peer can make us hold
#: for a single frame; 16 MiB is far above any batch the sender builds (see below).
MAX_FRAME_SIZE = 16 * 1024 * 1024

#: Most messages in one frame.  Keeps one frame's decode from monopolising the loop
#: and bounds the list the decoder allocates; senders flush before reaching it.
MAX_MESSAGES_PER_FRAME = 4096

#: Largest single message payload.  Larger user data is refused at send time with a
#: clear error instead of producing a frame every peer would reject.
MAX_MESSAGE_SIZE = 8 * 1024 * 1024

#: Target ids and message ids are length-prefixed with one byte.
MAX_ID_SIZE = 255

#: A sender flushes a batch once it holds this many bytes, even mid-iteration, so
#: a burst never builds a frame close to MAX_FRAME_SIZE.
FLUSH_THRESHOLD_BYTES = 256 * 1024

#: Default ring-buffer capacity (power of two): 64 Ki references = 512 KiB of slots.
DEFAULT_RING_CAPACITY = 1 << 16

#: Event ids remembered for de-duplication across routes; a relayed or dual-route
#: copy arrives within far fewer events than this.
DEDUPE_WINDOW = 1 << 16

#: Largest frame accepted from a link that has not completed the handshake: a Hello
#: or an Auth is a few hundred bytes, so 64 KiB bounds what an outsider can make us
#: buffer per connection (16 MiB per connection let 120 sockets take 1.8 GiB).
MAX_PREAUTH_FRAME_SIZE = 64 * 1024

#: Frames a connection may send before its handshake completes (a Hello and an Auth
#: need two); beyond it the connection is closed, so no outsider can flood us.
MAX_PREAUTH_FRAMES = 8

#: Connections that have not completed the handshake (TLS, HTTP upgrade, mesh handshake
#: or dashboard token), at most.  When another arrives, the oldest of the source address
#: holding the most is dropped, so a flood of idle sockets from one address evicts only
#: its own and never locks a peer from another address out.
MAX_PREAUTH_CONNECTIONS = 64

#: IPv6 sources are counted by their /64 prefix (one host can use a whole /64), IPv4
#: sources by their address.
PREAUTH_SOURCE_PREFIX_V6 = 64

#: File descriptors kept free under RLIMIT_NOFILE: new connections are refused
#: (not accepted and spun on) when fewer are left.
FD_HEADROOM = 64

#: Nesting depth of a payload's containers that the decoders accept; deeper input is
#: a malformed message (a FrameError), never a RecursionError.
MAX_NESTING_DEPTH = 64

#: Largest state entry (key, value, metadata) that may be written: it must fit in one
#: message with room to spare, so a value that could never be sent is refused at
#: ``update_local_state`` instead of breaking the links that try to ship it.
MAX_STATE_ENTRY_SIZE = 4 * 1024 * 1024

#: State deltas, snapshots and repairs are cut into messages of about this many bytes
#: (a chunk of 1,000 entries of 10 KB each once made a 10 MB message no peer accepts).
STATE_CHUNK_BYTES = 256 * 1024

#: Sequences remembered per origin for de-duplication (a power of two): a copy over a
#: slower path (Redis behind WebSocket) is caught while it is fewer than this many of
#: that origin's events late.  8 KiB per origin.
SEQ_WINDOW = 1 << 16

#: Origins whose sequence windows are kept; beyond it the oldest is forgotten.
MAX_ORIGINS = 4096

#: Bus senders whose rate-limit buckets are kept (``rate_limit`` on a Redis or NATS
#: link is per sender); beyond it the oldest bucket is forgotten.
MAX_BUS_RATE_SENDERS = 4096

#: Longest a receiver holds back its acks of one bus sender that is over its rate: well
#: under links.bus.flow.ACK_STALL_TIMEOUT, after which a sender stops waiting for a silent receiver.
MAX_ACK_HOLD = 1.5


def too_large(what: str, size: int, limit: int) -> str:
    """The error text for ``size`` bytes over ``limit``: both figures, in bytes and MiB
    (``message payload of 10,485,799 bytes (10.0 MiB) exceeds the limit of 8,388,608
    bytes (8.0 MiB) per message``)."""
    mib = 1024 * 1024
    return (f"{what} of {size:,} bytes ({size / mib:.1f} MiB) exceeds the limit of {limit:,} bytes "
            f"({limit / mib:.1f} MiB) per {what.split()[0]}")


__all__ = [
    "PROTOCOL_VERSION", "HANDSHAKE_VERSION", "FRAME_HEADER_SIZE", "MESSAGE_HEADER_SIZE",
    "MAX_FRAME_SIZE", "MAX_MESSAGES_PER_FRAME", "MAX_MESSAGE_SIZE", "MAX_ID_SIZE",
    "FLUSH_THRESHOLD_BYTES", "DEFAULT_RING_CAPACITY", "DEDUPE_WINDOW", "MAX_PREAUTH_FRAME_SIZE",
    "MAX_PREAUTH_FRAMES", "MAX_PREAUTH_CONNECTIONS", "PREAUTH_SOURCE_PREFIX_V6", "FD_HEADROOM",
    "MAX_NESTING_DEPTH", "MAX_STATE_ENTRY_SIZE", "STATE_CHUNK_BYTES", "SEQ_WINDOW", "MAX_ORIGINS",
    "MAX_BUS_RATE_SENDERS", "MAX_ACK_HOLD", "too_large",
]
