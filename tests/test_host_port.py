"""``NodeHost`` over a fake node (the ``HostNode`` port of ``spiralfast.ports.node``):
constructible and drivable without a ``MeshCore`` and without an event loop.  The host
carries out the decisions of the sans-I/O parts: membership effects, gap repair answers,
origin-end and loss reports."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import msgspec

from spiralfast.enums import NodeStatus
from spiralfast.node.host import NodeHost
from spiralfast.node.registry import MeshRegistry
from spiralfast.protocol.membership import Joined, Lost, Membership, SendAck
from spiralfast.protocol.reliability import MAX_REPAIR_SEQS, REPAIR_ATTEMPTS, REPAIR_INTERVAL
from spiralfast.records import MeshNode
from spiralfast.wire import schema
from spiralfast.wire._fastpath_py import Dedupe

OWN = "oooooooooooos"
PEER_ORIGIN = "ppppppppppppps"


class Recorder:
    """Records calls: ``rec.calls`` of (name, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


class Outbox(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, Any] = {}
        self.bus_links: list[Any] = []

    def send(self, target: str, kind: int, etype: int, msg_id: Any, obj: Any) -> bool:
        self.calls.append(("send", (target, kind, obj)))
        return True

    def broadcast(self, kind: int, etype: int, msg_id: Any, obj: Any) -> None:
        self.calls.append(("broadcast", (kind, obj)))

    def add_link(self, peer_id: str, link: Any) -> Any:
        old, self.links[peer_id] = self.links.get(peer_id), link
        return old

    def remove_link(self, peer_id: str, link: Any) -> None:
        if self.links.get(peer_id) is link:
            del self.links[peer_id]

    def link_paused(self, link: Any) -> None: ...

    def link_resumed(self, link: Any) -> None: ...

    def forward(self, *args: Any) -> bool:
        return True


class Dispatcher(Recorder):
    reading_paused = False
    handlers: dict[str, list[Any]] = {}

    def deliver(self, env: dict[str, Any]) -> None:
        self.calls.append(("deliver", (env,)))

    def announce(self, env: dict[str, Any]) -> None:
        self.calls.append(("announce", (env,)))

    def queue(self, env: dict[str, Any]) -> None: ...

    def handler_failed(self, h: Any, env: dict[str, Any]) -> None: ...


class Sink(Recorder):
    reserved_refused = 0

    def claim(self, origin: str, node: str) -> None:
        self.calls.append(("claim", (origin, node)))

    def release(self, node: str) -> None:
        self.calls.append(("release", (node,)))

    def on_event(self, ev: Any) -> None: ...


class Link(Recorder):
    shared_bus = False

    def close(self, reason: str = "") -> None:
        self.calls.append(("close", (reason,)))


class FakeNode:
    """Just the ``HostNode`` port: no MeshCore."""

    def __init__(self) -> None:
        self.node_id = "me"
        self.running = True
        self.id_taken: str | None = None
        self.counts: dict[str, int] = {k: 0 for k in (
            "repair_requests", "repaired_sent", "suspected", "suspicions_refuted", "bad_messages",
            "state_replies_deferred", "duplicate_ids", "impostors_refused", "handshake_failures",
            "auth_failures", "rejected_by_peer")}
        self.local_node = MeshNode("me", "me", NodeStatus.ACTIVE, [], 0, 0.0, datetime.now(), {"origin": OWN})
        self.links: set[Any] = set()
        self.observers: set[Any] = set()
        self.link_listeners: list[Any] = []
        self.ws: Any = None
        self.redis: Any = None
        self.config = SimpleNamespace(mesh_name="m", auth_token=None, handshake_timeout=5.0, heartbeat_interval=10.0,
                                      retransmit_window=60.0, retransmit_buffer_bytes=1 << 20, enable_redis=False)
        self.key = None
        self.key_pins = Recorder()
        self.key_pins.release = lambda nid: self.key_pins.calls.append(("release", (nid,)))  # type: ignore[attr-defined]
        self.registry = MeshRegistry("me")
        self.membership = Membership(self.local_node, self.registry, 10.0, 3.0)
        self.nodes = self.registry.nodes
        self.event_handlers: dict[str, Any] = {}
        self.outbox = Outbox()
        self.dispatcher = Dispatcher()
        self.state = Recorder()
        self.event_bus = Recorder()
        self.gate = SimpleNamespace(sink=Sink(), dedupe=Dedupe(), new_bucket=lambda: None)
        self.sender = SimpleNamespace(retx=deque(), retx_base=1, retx_bytes=0, seq=0, prefix=OWN + "-")
        self.catchup = SimpleNamespace(busy=set())
        self.tasks = Recorder()
        self.tasks.node_joined = lambda nid: self.tasks.calls.append(("joined", (nid,)))  # type: ignore[attr-defined]
        self.tasks.node_removed = lambda nid, why: self.tasks.calls.append(("removed", (nid, why)))  # type: ignore[attr-defined]
        self.membership.join_local()


def _host() -> tuple[NodeHost, FakeNode]:
    node = FakeNode()
    return NodeHost(node), node  # type: ignore[arg-type]


def test_a_joined_node_is_announced_and_its_origin_named() -> None:
    host, node = _host()
    peer = MeshNode("p", "peer", NodeStatus.ACTIVE, [], 0, 0.0, datetime.now(), {"origin": PEER_ORIGIN})
    host.apply([Joined(peer)])
    assert host.origin_names == {PEER_ORIGIN: "p"}
    (name, (env,)), = node.dispatcher.calls
    assert name == "announce" and env["type"] == "node_register" and env["source_node"] == "p"
    assert node.tasks.calls == [("joined", ("p",))]


def test_a_lost_node_is_closed_released_announced_and_its_origin_end_told() -> None:
    host, node = _host()
    peer = MeshNode("p", "peer", NodeStatus.ACTIVE, [], 0, 0.0, datetime.now(), {"origin": PEER_ORIGIN})
    host.apply([Joined(peer)])
    for seq in (1, 2, 3):
        node.gate.dedupe.first_time(f"{PEER_ORIGIN}-{seq}".encode())
    link = Link()
    node.outbox.links["p"] = link
    host.apply([Lost("p", "left")])
    assert link.calls == [("close", ("peer left",))] and "p" not in node.outbox.links
    assert node.key_pins.calls == [("release", ("p",))] and node.gate.sink.calls == [("release", ("p",))]
    assert node.outbox.calls == [("broadcast", (schema.KIND_ORIGIN_END, schema.OriginEnd(PEER_ORIGIN, 3)))]
    assert node.dispatcher.calls[-1][1][0]["data"] == {"node_id": "p", "reason": "left"}
    assert node.tasks.calls[-1] == ("removed", ("p", "left"))


def test_acks_go_out_through_the_outbox() -> None:
    host, node = _host()
    host.apply([SendAck("p", "q", 7)])
    assert node.outbox.calls == [("send", ("p", schema.KIND_ACK, schema.Ack("q", 7)))]


def test_a_repair_request_resends_what_the_buffer_holds_and_names_the_rest_gone() -> None:
    host, node = _host()
    s = node.sender
    for seq in range(1, 11):  # sent 1..10, the buffer holds 4..10
        ev = schema.Event(f"{OWN}-{seq}", "t", "me", 1.0, {"i": seq})
        if seq >= 4:
            s.retx.append(msgspec.msgpack.encode(ev))
    s.retx_base, s.seq = 4, 10
    host.repair_request("p", schema.RepairRequest(OWN, [2, 5, 10, 11]))
    sent = node.outbox.calls
    assert [(c[1][0], c[1][1]) for c in sent] == [("p", schema.KIND_EVENT)] * 2 + [("p", schema.KIND_REPAIR_GONE)]
    assert [c[1][2].event_id for c in sent[:2]] == [f"{OWN}-5", f"{OWN}-10"]
    assert sent[2][1][2] == schema.RepairGone(OWN, [2]) and node.counts["repaired_sent"] == 2
    node.outbox.calls.clear()
    host.repair_request("p", schema.RepairRequest("another-s", [5]))  # not our origin: nothing
    host.repair_request(None, schema.RepairRequest(OWN, [5]))  # no authenticated sender: nothing
    assert node.outbox.calls == []


def test_a_gap_is_asked_of_its_origin_then_given_up_and_alerted() -> None:
    host, node = _host()
    node.membership.link_ready("p", {"metadata": {"origin": PEER_ORIGIN}}, 0.0)
    for seq in (1, 4):
        node.gate.dedupe.first_time(f"{PEER_ORIGIN}-{seq}".encode())
    now = 1000.0
    host.repair_tick(now)
    now += 1.0
    for _ in range(REPAIR_ATTEMPTS + 1):
        host.repair_tick(now)
        now += REPAIR_INTERVAL
    asks = [c for c in node.outbox.calls if c[1][1] == schema.KIND_REPAIR_REQUEST]
    assert len(asks) == REPAIR_ATTEMPTS == node.counts["repair_requests"]
    assert asks[0][1][0] == "p" and asks[0][1][2] == schema.RepairRequest(PEER_ORIGIN, [2, 3])
    host.check_losses()
    alert = node.dispatcher.calls[-1][1][0]
    assert alert["type"] == "system_alert" and alert["data"]["details"] == {
        "origin": PEER_ORIGIN, "lost": 2, "lost_total": 2}
    n = len(node.dispatcher.calls)
    host.check_losses()
    assert len(node.dispatcher.calls) == n  # once per episode


def test_origin_end_messages_and_retransmit_trimming() -> None:
    host, node = _host()
    host.on_message(Link(), "q", schema.KIND_ORIGIN_END, schema.OriginEnd(OWN, 99))  # about us: ignored
    assert host.origin_ends == {}
    host.on_message(Link(), "q", schema.KIND_ORIGIN_END, schema.OriginEnd(PEER_ORIGIN, 9))
    assert list(host.origin_ends) == [PEER_ORIGIN]
    s = node.sender
    s.retx.extend(b"x" * 100 for _ in range(MAX_REPAIR_SEQS))
    s.retx_bytes = 100 * MAX_REPAIR_SEQS
    node.config.retransmit_buffer_bytes = 1000
    host.trim_retransmit(0.0)
    assert len(s.retx) == 10 and s.retx_base == MAX_REPAIR_SEQS - 9 and s.retx_bytes == 1000
