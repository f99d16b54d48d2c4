"""The operations package on its ports alone: status, the observer queries, metrics and
the HTTP endpoints built over fakes of :mod:`spiralfast.ports.ops`, without a MeshCore
(no node, no sockets, no event loop)."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from spiralfast.enums import NodeStatus
from spiralfast.ops import metrics, status
from spiralfast.ops.http import HttpEndpoints
from spiralfast.ops.metrics import LatencyHistogram
from spiralfast.ops.queries import answer_query
from spiralfast.ports.ops import HttpSource, LatencySamples, LinkView, QueryHost, Reply, StatusSource, Traffic
from spiralfast.records import MeshNode
from spiralfast.wire import schema
from spiralfast.wire.codec import decode_messages


def _node(node_id: str, st: NodeStatus = NodeStatus.ACTIVE, links: list[str] | None = None) -> MeshNode:
    return MeshNode(node_id=node_id, name=node_id, status=st, capabilities=["x"], recursion_depth=1,
                    entropy_level=0.5, last_heartbeat=datetime.now() - timedelta(seconds=2),
                    metadata={"links": links or []}, websocket_endpoint=f"ws://{node_id}:1")


class FakeLink:
    transport = "websocket"

    def __init__(self, **info: Any) -> None:
        self._info = info

    def info(self) -> dict[str, Any]:
        return dict(self._info)


class FakeBus(FakeLink):
    transport = "redis"

    def __init__(self) -> None:
        super().__init__(state="up", bytes_out=10)
        self.stats = {"refused": 2}
        self.sealer = SimpleNamespace(stats={"key_forged": 1, "future_epoch": 3})


class FakeNode:
    """A node as the ops ports see it: everything HttpSource and QueryHost ask for."""

    def __init__(self) -> None:
        self.me = _node("me", links=["p1"])
        self.table = {"me": self.me, "p1": _node("p1"), "p2": _node("p2", NodeStatus.DISCONNECTED)}
        self.links: dict[str, LinkView] = {"p1": FakeLink(state="open", bytes_out=100, bytes_in=50, rtt_ms=1.5)}
        self.buses: list[LinkView] = [FakeBus()]
        self.the_counts: dict[str, int] = {"auth_failures": 1, "dropped_events": 0}
        self.state: dict[tuple[str, str], Any] = {}
        self.version = 0
        self.events: list[Any] = [{"type": "t", "source_node": "p1", "timestamp": "2026-01-01T00:00:00",
                                   "data": {"n": 1}, "event_id": "o-1"}]
        self.published: list[tuple[str, Any]] = []
        self.spawned: list[Coroutine[Any, Any, None]] = []
        self.hist = LatencyHistogram((0.001, 0.01))
        self.hist.observe(0.005)

    # StatusSource
    node_id = "me"
    mesh_name = "test-mesh"
    running = True
    auth_token: str | None = None

    @property
    def local_node(self) -> MeshNode:
        return self.me

    @property
    def nodes(self) -> Mapping[str, MeshNode]:
        return self.table

    @property
    def counts(self) -> MutableMapping[str, int]:
        return self.the_counts

    def is_suspect(self, node_id: str) -> bool:
        return node_id == "p2"

    def uptime(self) -> float:
        return 12.5

    def redis_connected(self) -> bool:
        return True

    def nats_connected(self) -> bool:
        return False

    def peer_links(self) -> Mapping[str, LinkView]:
        return self.links

    def bus_links(self) -> Sequence[LinkView]:
        return self.buses

    def observer_links(self) -> Iterable[object]:
        return [SimpleNamespace(transport=object(), following=True), SimpleNamespace(transport=None)]

    def gate_stats(self) -> Mapping[str, int]:
        return {"refused": 4, "preauth_refused": 0, "rate_limited": 1, "gate_errors": 0, "forwarded": 7}

    def router_stats(self) -> Mapping[str, int]:
        return {"messages_out": 3, "frames_out": 9, "bytes_out": 900}

    def traffic(self) -> Traffic:
        return Traffic(events_in=20, events_out=5, handler_errors=0, spilled_events=0, reserved_refused=1,
                       capabilities_refused=0)

    def lost(self) -> Mapping[str, int]:
        return {"orig1s": 2}

    def missing(self) -> Mapping[str, int]:
        return {"orig1s": 1}

    def origin_names(self) -> Mapping[str, str]:
        return {"orig1s": "p1"}

    def bus_stats(self) -> dict[str, Any]:
        return {"dropped": 0}

    def sync_status(self) -> dict[str, Any]:
        return {"sync_status": "synced", "state_version": self.version, "repairs": 0}

    def tasks_status(self) -> dict[str, Any]:
        return {}

    def persistence_status(self) -> dict[str, Any] | None:
        return None

    # MetricsSource / HttpSource
    def status(self) -> dict[str, Any]:
        return status.mesh_status(self)

    def state_key_counts(self) -> Mapping[str, int]:
        return {"cfg": 2}

    @property
    def latency(self) -> LatencySamples | None:
        return self.hist

    def recent_events(self) -> Sequence[Any]:
        return self.events

    # QueryHost
    def over_rate(self, link: object) -> bool:
        return False

    def get_state(self, category: str | None, key: str | None) -> Any:
        return {f"{c}/{k}": v for (c, k), v in self.state.items()}

    def set_state(self, category: str, key: str, value: Any) -> int:
        self.state[(category, key)] = value
        self.version += 1
        return self.version

    def delete_state(self, category: str, key: str) -> bool:
        return self.state.pop((category, key), None) is not None

    def answer_history(self, args: dict[str, Any], reply: Reply) -> None:
        reply(True, [])

    def submit_task(self, args: dict[str, Any], reply: Reply) -> None:
        reply(False, "no tasks here")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.spawned.append(coro)

    async def send_to_node(self, target: str, event_type: str, data: Any) -> bool:
        self.published.append((event_type, data))
        return True

    async def broadcast_event(self, event_type: str, data: Any) -> None:
        self.published.append((event_type, data))


def _ports(fake: FakeNode) -> tuple[StatusSource, HttpSource, QueryHost]:
    return fake, fake, fake  # mypy checks FakeNode against each port here


def test_status_from_a_fake_source() -> None:
    st = status.mesh_status(_ports(FakeNode())[0])
    assert st["node_id"] == "me" and st["status"] == "active" and st["mesh_name"] == "test-mesh"
    assert st["connected_nodes"] == 2  # p2 is disconnected
    assert st["uptime"] == 12.5 and st["redis"] is True and st["nats"] is False
    assert [n["node_id"] for n in st["nodes"]] == ["me", "p1", "p2"]
    assert [n["suspect"] for n in st["nodes"]] == [False, False, True]
    assert st["links"] == [
        {"peer": "p1", "transport": "websocket", "state": "open", "bytes_out": 100, "bytes_in": 50, "rtt_ms": 1.5},
        {"peer": None, "transport": "redis", "state": "up", "bytes_out": 10},
    ]
    assert st["observers"] == 1 and st["followers"] == 1
    c = st["counters"]
    assert c["events_in"] == 20 and c["events_out"] == 5 and c["refused_messages"] == 4
    assert c["bus_refused"] == 2 and c["bus_key_refused"] == 1 and c["bus_future_epoch"] == 3
    assert c["events_lost"] == 2 and c["events_missing"] == 1 and c["auth_failures"] == 1
    assert st["router"]["messages_out"] == 3 + 5 and st["router"]["forwarded"] == 7
    assert st["delivery"]["by_node"] == {"p1": {"lost": 2, "missing": 1}}
    assert st["delivery"]["origins"] == {"orig1s": "p1"}
    assert st["persistence"] is None and st["sync"]["sync_status"] == "synced"
    orjson.dumps(status.jsonable(st))  # JSON-ready


def test_nodes_table_and_topology() -> None:
    fake = FakeNode()
    table = {n["node_id"]: n for n in status.nodes_table(fake)}
    assert table["me"]["local"] is True and table["p1"]["local"] is False
    assert 1.5 < table["p1"]["seconds_since_heartbeat"] < 60
    topo = status.topology(fake)
    assert topo["local"] == "me" and topo["nodes"] == ["me", "p1", "p2"]
    assert topo["links"] == [["me", "p1"]]


def test_metrics_text_from_a_fake_source() -> None:
    fake = FakeNode()
    body, ctype = metrics.render(metrics.registry_for(fake))
    assert ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert samples[("spiralfast_events_received_total", ())] == 20
    assert samples[("spiralfast_events_lost_total", ())] == 2
    assert samples[("spiralfast_state_keys", (("category", "cfg"),))] == 2
    assert samples[("spiralfast_link_bytes_sent_total", (("peer", "p1"),))] == 100
    assert samples[("spiralfast_event_latency_seconds_count", ())] == 1
    assert samples[("spiralfast_uptime_seconds", ())] == 12.5
    assert ("spiralfast_dashboards", ()) not in samples  # no HTTP side given


def _get(h: HttpEndpoints, path: bytes, token: str | None = None) -> tuple[int, Any]:
    headers = CIMultiDict({"Authorization": f"Bearer {token}"} if token else {})
    resp = h.respond(SimpleNamespace(method=b"GET", path=path, headers=headers)).response  # type: ignore[arg-type]
    body = resp.body or b""
    return resp.status, (orjson.loads(body) if resp.headers.get("Content-Type") == "application/json" else body)


def test_http_endpoints_on_a_fake_source() -> None:
    fake = FakeNode()
    h = HttpEndpoints(fake)
    code, st = _get(h, b"/api/status")
    assert code == 200 and st["node_id"] == "me" and st["counters"]["events_in"] == 20
    assert _get(h, b"/health") == (200, {"status": "ok", "node_id": "me"})
    code, evs = _get(h, b"/api/events?count=1")
    assert code == 200 and [e["event_id"] for e in evs] == ["o-1"]
    assert _get(h, b"/api/events?count=0")[0] == 400
    code, text = _get(h, b"/metrics")
    assert code == 200 and b"spiralfast_dashboards 0.0" in text
    code, snap = _get(h, b"/api/snapshot")
    assert code == 200 and snap["node_id"] == "me" and snap["sync"]["keys"] == {"cfg": 2}
    fake.auth_token = "tok"
    assert _get(h, b"/api/status")[0] == 401 and _get(h, b"/api/status", "tok")[0] == 200
    assert _get(h, b"/health") == (200, {"status": "ok"})
    assert h.auth_failures == 1


class _Sink:
    def __init__(self) -> None:
        self.replies: list[tuple[int, bool, Any]] = []

    def send_frame(self, frame: bytes) -> bool:
        for _msg, obj in decode_messages(frame):
            self.replies.append((obj.qid, obj.ok, obj.data))
        return True


def test_queries_on_a_fake_host() -> None:
    fake = FakeNode()
    link = _Sink()
    answer_query(fake, link, schema.Query(1, "ping", {}))
    answer_query(fake, link, schema.Query(2, "state_set", {"category": "c", "key": "k", "value": 5}))
    answer_query(fake, link, schema.Query(3, "state", {}))
    answer_query(fake, link, schema.Query(4, "publish", {"type": "node_register", "data": {}}))
    answer_query(fake, link, schema.Query(5, "submit", {}))
    answer_query(fake, link, schema.Query(6, "nope", {}))
    assert link.replies[0] == (1, True, {"node_id": "me"})
    assert link.replies[1] == (2, True, {"state_version": 1})
    assert link.replies[2] == (3, True, {"c/k": 5})
    assert link.replies[3][:2] == (4, False) and fake.counts["reserved_refused_observers"] == 1
    assert link.replies[4] == (5, False, "no tasks here")
    assert link.replies[5][:2] == (6, False)
    assert status.node_counters(fake)["reserved_refused"] == 2  # one from members, one from observers
    answer_query(fake, link, schema.Query(7, "publish", {"type": "hello", "data": 1}))
    assert len(fake.spawned) == 1
    fake.spawned[0].close()
