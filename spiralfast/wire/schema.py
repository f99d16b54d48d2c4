"""Wire message schemas (msgspec Structs) and the message-kind registry.

The frame header's ``kind`` byte is the union tag: it selects the Struct type a
payload decodes to, so a node can filter by kind without touching the payload.
Hot structs are ``array_like`` (no field names on the wire) and ``gc=False``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

#: Seconds since the epoch that ``datetime.fromtimestamp`` can represent (up to the
#: year 9999).  Anything else from the network is a malformed message, refused at
#: decode time rather than failing later in a handler or a formatter.
EpochSeconds = Annotated[float, msgspec.Meta(ge=0.0, le=253402300799.0)]
#: Hybrid logical clock values: non-negative 64-bit.
HlcValue = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
#: A wall-clock reading in milliseconds since the epoch (0: none), up to the year 9999.
WallMs = Annotated[int, msgspec.Meta(ge=0, le=253402300799000)]
#: A broadcast sequence number.
SeqNo = Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))]
#: A failure-detection probe's nonce (random, non-zero).
ProbeNonce = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
#: A node id on the wire (MeshConfig allows at most 200 bytes).
NodeIdStr = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]

# -- message kinds (frame header byte) -----------------------------------------
KIND_HELLO = 1  # handshake opener: identity, mesh name, nonce
KIND_AUTH = 2  # handshake proof over both nonces
KIND_EVENT = 3  # MeshCore.broadcast_event / send_to_node
KIND_BUS_EVENT = 4  # EventBus.publish on a mesh-bound bus
KIND_HEARTBEAT = 5
KIND_LEAVE = 6
KIND_GOSSIP = 7  # the nodes (and endpoints) a node knows
KIND_STATE_DELTA = 8
KIND_STATE_DIGEST = 9
KIND_STATE_REQUEST = 10
KIND_QUERY = 11  # observer (CLI/dashboard) request
KIND_REPLY = 12
KIND_REJECT = 13  # handshake refused, with a reason
KIND_REPAIR_REQUEST = 14  # gap repair: the sequences of an origin a node is missing
KIND_REPAIR_GONE = 15  # gap repair: those no longer in the origin's retransmit buffer
KIND_CLOCK_SKEW = 16  # state sync: "your clock is ahead of mine beyond max_clock_offset"
KIND_ORIGIN_END = 17  # gap repair: "a node left; the last sequence of its origin I saw is ..."
KIND_PING = 18  # failure detection: "answer if you are alive" (a probe of a suspected node)
KIND_PING_REQ = 19  # failure detection: "probe this node for me" (SWIM's indirect probe)
KIND_ACK = 20  # failure detection: "this node answered", the reply to a Ping (passed on to a PingReq's asker)
KIND_CATCHUP_REQUEST = 21  # catch-up after a restart: "send me what you logged of these origins since"
KIND_CATCHUP_BATCH = 22  # catch-up: events from the event log, byte-bounded, one batch per request


class Hello(msgspec.Struct, array_like=True, gc=False):
    node_id: str
    mesh_name: str
    protocol: int
    nonce: bytes
    role: str = "node"  # "node" or "observer" (CLI, dashboard: never a mesh member)


class Auth(msgspec.Struct, array_like=True, gc=False):
    proof: bytes
    node: dict[str, Any] | None = None  # the sender's node record, sent once the peer is verified
    key: bytes = b""  # the sender's Ed25519 public key (nodes; spiralfast.wire.signing)
    sig: bytes = b""  # its signature of the handshake transcript (handshake.key_transcript)


class Reject(msgspec.Struct, array_like=True, gc=False):
    reason: str


class Event(msgspec.Struct, array_like=True, gc=False):
    event_id: str
    event_type: str
    source_node: str
    timestamp: EpochSeconds
    data: Any = None
    target_node: str | None = None
    priority: int = 5
    ttl: float | None = None
    metadata: dict[str, Any] | None = None


class Heartbeat(msgspec.Struct, array_like=True, gc=False):
    node_id: str
    status: str
    recursion_depth: int
    entropy_level: float
    sent_at: EpochSeconds


class Leave(msgspec.Struct, array_like=True, gc=False):
    node_id: str
    reason: str = "stop"


class Gossip(msgspec.Struct, array_like=True, gc=False):
    nodes: list[dict[str, Any]]


class StateEntry(msgspec.Struct, array_like=True, gc=False):
    category: str
    key: str
    value: Any
    hlc: HlcValue  # hybrid logical clock: (wall ms << 16) | logical counter
    node: str  # writer, the tie-break
    version: int
    deleted: bool = False
    metadata: dict[str, Any] | None = None


class StateDelta(msgspec.Struct, array_like=True, gc=False):
    entries: list[StateEntry]


class StateDigest(msgspec.Struct, array_like=True, gc=False):
    digests: dict[str, str]  # category -> hash of (key, hlc, node, deleted)
    reply: bool = True
    collected_upto: int = 0  # highest HLC of a tombstone the sender has collected
    now_ms: WallMs = 0  # the sender's state clock (wall ms, corrected), for skew detection; 0 = unknown


class StateRequest(msgspec.Struct, array_like=True, gc=False):
    categories: dict[str, dict[str, list[Any]]]  # category -> {key: [hlc, node]} known


class Query(msgspec.Struct, array_like=True, gc=False):
    qid: int
    what: str
    args: dict[str, Any] = {}


class Reply(msgspec.Struct, array_like=True, gc=False):
    qid: int
    ok: bool
    data: Any = None


class RepairRequest(msgspec.Struct, array_like=True, gc=False):
    origin: str  # the broadcast origin ("<12 hex>s") whose sequences are missing
    seqs: list[int]


class RepairGone(msgspec.Struct, array_like=True, gc=False):
    origin: str
    seqs: list[int]  # not in the retransmit buffer any more: lost for good


class OriginEnd(msgspec.Struct, array_like=True, gc=False):
    origin: str  # the broadcast origin of a node that left, died or was cut off
    high: SeqNo  # the highest sequence of it the sender saw


class Ping(msgspec.Struct, array_like=True, gc=False):
    nonce: ProbeNonce
    reply_to: NodeIdStr  # who gets the Ack (the prober; a relayed Ping's sender is the relay)


class PingReq(msgspec.Struct, array_like=True, gc=False):
    target: NodeIdStr  # the suspected node the receiver is asked to probe
    nonce: ProbeNonce  # the asker's nonce, echoed in the Ack passed back


class Ack(msgspec.Struct, array_like=True, gc=False):
    node_id: NodeIdStr  # the node that answered a Ping (alive)
    nonce: ProbeNonce


class ClockSkew(msgspec.Struct, array_like=True, gc=False):
    now_ms: WallMs  # the sender's state clock when it saw the receiver's clock ahead
    max_offset_ms: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]  # the sender's max_clock_offset


#: Catch-up: at most this many origins in one request, this many bytes in one answer.
MAX_CATCHUP_ORIGINS = 4096
MAX_CATCHUP_BYTES = 4 * 1024 * 1024


class CatchUpRequest(msgspec.Struct, array_like=True, gc=False):
    origins: Annotated[dict[Annotated[str, msgspec.Meta(min_length=2, max_length=64)], SeqNo],
                       msgspec.Meta(max_length=MAX_CATCHUP_ORIGINS)]  # origin -> the last sequence handled
    since: EpochSeconds  # read the event log from this wall time
    max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_CATCHUP_BYTES)]
    key: Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))] = 0  # where the last answer stopped (0: the start)
    rid: Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))] = 0  # the asker's request number, echoed


class CatchUpBatch(msgspec.Struct, array_like=True, gc=False):
    rid: Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))]
    events: list[Event]
    key: Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))] = 0  # the next request's key
    more: bool = False  # the log holds more after ``key``
    holds: bool = True  # False: the answering node does not keep every event (nothing to give)


KIND_TYPES: dict[int, type[msgspec.Struct]] = {
    KIND_HELLO: Hello,
    KIND_AUTH: Auth,
    KIND_EVENT: Event,
    KIND_BUS_EVENT: Event,
    KIND_HEARTBEAT: Heartbeat,
    KIND_LEAVE: Leave,
    KIND_GOSSIP: Gossip,
    KIND_STATE_DELTA: StateDelta,
    KIND_STATE_DIGEST: StateDigest,
    KIND_STATE_REQUEST: StateRequest,
    KIND_QUERY: Query,
    KIND_REPLY: Reply,
    KIND_REJECT: Reject,
    KIND_REPAIR_REQUEST: RepairRequest,
    KIND_REPAIR_GONE: RepairGone,
    KIND_CLOCK_SKEW: ClockSkew,
    KIND_ORIGIN_END: OriginEnd,
    KIND_PING: Ping,
    KIND_PING_REQ: PingReq,
    KIND_ACK: Ack,
    KIND_CATCHUP_REQUEST: CatchUpRequest,
    KIND_CATCHUP_BATCH: CatchUpBatch,
}

#: Event-type ids for the frame header (0 = a type outside EventType, e.g. "custom_x").
EVENT_TYPE_IDS: dict[str, int] = {
    name: i + 1
    for i, name in enumerate(
        [
            "node_register", "node_unregister", "heartbeat", "node_status_change",
            "agent_spawn", "agent_terminate", "agent_message", "agent_state_change",
            "ritual_start", "ritual_end", "ritual_cycle", "ritual_recursion",
            "system_alert", "system_metric", "system_error", "custom",
        ]
    )
}


def event_type_id(event_type: str) -> int:
    return EVENT_TYPE_IDS.get(event_type, 0)


__all__ = [
    "EpochSeconds", "HlcValue", "WallMs", "SeqNo", "ProbeNonce", "NodeIdStr", "KIND_HELLO",
    "KIND_AUTH", "KIND_EVENT", "KIND_BUS_EVENT", "KIND_HEARTBEAT", "KIND_LEAVE", "KIND_GOSSIP",
    "KIND_STATE_DELTA", "KIND_STATE_DIGEST", "KIND_STATE_REQUEST", "KIND_QUERY", "KIND_REPLY",
    "KIND_REJECT", "KIND_REPAIR_REQUEST", "KIND_REPAIR_GONE", "KIND_CLOCK_SKEW", "KIND_ORIGIN_END",
    "KIND_PING", "KIND_PING_REQ", "KIND_ACK", "KIND_CATCHUP_REQUEST", "KIND_CATCHUP_BATCH",
    "Hello", "Auth", "Reject", "Event", "Heartbeat", "Leave", "Gossip", "StateEntry", "StateDelta",
    "StateDigest", "StateRequest", "Query", "Reply", "RepairRequest", "RepairGone", "OriginEnd",
    "Ping", "PingReq", "Ack", "ClockSkew", "MAX_CATCHUP_ORIGINS", "MAX_CATCHUP_BYTES",
    "CatchUpRequest", "CatchUpBatch", "KIND_TYPES", "EVENT_TYPE_IDS", "event_type_id",
]
