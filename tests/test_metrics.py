"""``GET /metrics`` on real nodes: parsed with prometheus_client's own parser, and
its counters move as events flow."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spiralfast import MeshConfig, MeshCore
from spiralfast.ops.metrics import (
    MAX_PEER_LABELS,
    OTHER_PEER,
    LatencyHistogram,
    _persistence_metrics,
    _task_metrics,
    bounded_peers,
)

from .waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, url, token)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(node: MeshCore, token: str | None = None) -> tuple[Samples, dict[str, str]]:
    status, headers, body = await get(f"http://127.0.0.1:{node.config.websocket_port}/metrics", token)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(body.decode()):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def peers(node: MeshCore) -> set[str]:
    return {str(lk["peer"]) for lk in node.get_mesh_status()["links"] if lk.get("peer") is not None}


def cfg(node_id: str, **kw: Any) -> MeshConfig:
    return MeshConfig(node_id=node_id, websocket_port=0, enable_redis=False, heartbeat_interval=0.3, **kw)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MeshCore, MeshCore]]:
    a = MeshCore(cfg("m-a"))
    await a.start()
    b = MeshCore(cfg("m-b", peers=[f"ws://127.0.0.1:{a.config.websocket_port}"]))
    await b.start()
    try:
        await wait_until(lambda: "m-b" in peers(a) and "m-a" in peers(b), '"m-b" in peers(a) and "m-a" in peers(b)')
        yield a, b
    finally:
        await b.stop()
        await a.stop()


EXPECTED = {
    "spiralfast_events_sent": "counter",
    "spiralfast_events_received": "counter",
    "spiralfast_events_forwarded": "counter",
    "spiralfast_events_dropped": "counter",
    "spiralfast_events_lost": "counter",
    "spiralfast_events_lost_by_node": "counter",
    "spiralfast_handler_errors": "counter",
    "spiralfast_nodes": "gauge",
    "spiralfast_links": "gauge",
    "spiralfast_link_bytes_sent": "counter",
    "spiralfast_link_bytes_received": "counter",
    "spiralfast_link_rtt_seconds": "gauge",
    "spiralfast_auth_failures": "counter",
    "spiralfast_state_keys": "gauge",
    "spiralfast_state_version": "gauge",
    "spiralfast_event_latency_seconds": "histogram",
    "spiralfast_uptime_seconds": "gauge",
    "spiralfast_build_info": "gauge",
}


async def test_metrics_parse_and_move(pair: tuple[MeshCore, MeshCore]) -> None:
    a, b = pair
    before_a, types = await scrape(a)
    before_b, _ = await scrape(b)
    for name, kind in EXPECTED.items():
        assert types.get(name) == kind, (name, types.get(name))
    assert val(before_a, "spiralfast_nodes", status="active") == 2
    assert val(before_a, "spiralfast_links", transport="websocket") == 1
    info = [k for k in before_a if k[0] == "spiralfast_build_info"]
    assert len(info) == 1 and dict(info[0][1])["compiled"] in ("true", "false")
    assert val(before_a, "spiralfast_uptime_seconds") > 0
    for reason in ("queue_full", "unroutable", "slow_peer"):
        assert val(before_a, "spiralfast_events_dropped_total", reason=reason) == 0
    # Two nodes, one link: every message has one path, so nothing arrives twice.
    assert val(before_a, "spiralfast_duplicates_total") == 0

    n = 500
    before_in = a.get_mesh_status()["counters"]["events_in"]
    for i in range(n):
        await b.broadcast_event("metric_test", {"i": i})
    await wait_until(lambda: a.get_mesh_status()["counters"]["events_in"] >= before_in + n, 'a.get_mesh_status()["counters"]["events_in"] >= before_in + n')
    b.state.update_local_state("agents", "a1", {"status": "busy"})
    await wait_until(lambda: a.state.get_local_state("agents", "a1") is not None, 'a.state.get_local_state("agents", "a1") is not None')

    after_a, _ = await scrape(a)
    after_b, _ = await scrape(b)
    recv = "spiralfast_events_received_total"
    sent = "spiralfast_events_sent_total"
    # (the node's own services, e.g. task offers, may add a few events of their own)
    assert val(after_a, recv) - val(before_a, recv) >= n
    assert val(after_b, sent) - val(before_b, sent) >= n
    bytes_sent = "spiralfast_link_bytes_sent_total"
    assert val(after_b, bytes_sent, peer="m-a") > val(before_b, bytes_sent, peer="m-a")
    assert val(after_a, "spiralfast_state_keys", category="agents") == 1
    assert val(after_a, "spiralfast_duplicates_total") == 0  # 500 events, each delivered once
    assert val(after_a, "spiralfast_duplicates_total") == a.get_mesh_status()["router"]["duplicates"]
    assert val(after_b, "spiralfast_state_version") > val(before_b, "spiralfast_state_version")
    assert val(after_a, "spiralfast_uptime_seconds") >= val(before_a, "spiralfast_uptime_seconds")
    # the histogram is well formed (cumulative buckets, +Inf == count)
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in after_a.items() if k[0] == "spiralfast_event_latency_seconds_bucket"
    )
    assert buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == val(after_a, "spiralfast_event_latency_seconds_count")


async def test_metrics_need_the_token() -> None:
    a = MeshCore(cfg("m-t", auth_token="s3cret"))
    await a.start()
    try:
        url = f"http://127.0.0.1:{a.config.websocket_port}/metrics"
        status, headers, _ = await get(url)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert (await get(url, "wrong"))[0] == 401
        samples, _ = await scrape(a, "s3cret")
        assert val(samples, "spiralfast_nodes", status="active") == 1
    finally:
        await a.stop()


def test_peer_labels_are_bounded() -> None:
    links = [{"peer": f"p{i}", "bytes_out": i, "bytes_in": 0} for i in range(MAX_PEER_LABELS + 36)]
    named, rest = bounded_peers(links)
    assert len(named) == MAX_PEER_LABELS and len(rest) == 36
    assert {lk["peer"] for lk in named} == {f"p{i}" for i in range(36, MAX_PEER_LABELS + 36)}  # the busiest
    assert OTHER_PEER.startswith("_")


def test_latency_histogram() -> None:
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for s in (0.0005, 0.002, 0.002, 0.05, 3.0, -1.0):
        h.observe(s)
    assert h.cumulative() == [("0.001", 2.0), ("0.01", 4.0), ("0.1", 5.0), ("+Inf", 6.0)]
    assert h.count == 6 and abs(h.sum - 3.0545) < 1e-9


def test_task_and_persistence_metrics() -> None:
    tasks = {
        "offered": {"resize": {"capacity": 4, "running": 2, "queued": 1, "done": 10, "failed": 1, "p50_ms": 1.0,
                               "p99_ms": 3.0}},
        "submitted": {"resize": {"submitted": 12, "in_flight": 1, "waiting": 1, "done": 9, "failed": 1, "retried": 2,
                                 "timeouts": 0, "p50_ms": 1.0, "p99_ms": 4.0}},
        "nodes": {}, "late_replies": 0,
    }
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in _task_metrics(tasks) for s in f.samples}
    assert got[("spiralfast_tasks_served_total", (("outcome", "done"), ("type", "resize")))] == 10
    assert got[("spiralfast_tasks_running", (("type", "resize"),))] == 2
    assert got[("spiralfast_tasks_submitted_total", (("type", "resize"),))] == 12
    assert got[("spiralfast_tasks_in_flight", (("type", "resize"),))] == 2
    assert got[("spiralfast_tasks_finished_total", (("outcome", "timeout"), ("type", "resize")))] == 0
    assert list(_persistence_metrics(None)) == []
    pers = {"written": 5, "dropped": 0, "pending": 2, "stall_seconds": 0.5, "error": None}
    names = {s.name: s.value for f in _persistence_metrics(pers) for s in f.samples}
    assert names["spiralfast_persist_written_total"] == 5 and names["spiralfast_persist_ok"] == 1


async def test_category_labels_are_bounded() -> None:
    from spiralfast.ops.metrics import MAX_CATEGORY_LABELS

    a = MeshCore(cfg("m-cat"))
    await a.start()
    try:
        for i in range(MAX_CATEGORY_LABELS + 10):
            a.state.update_local_state(f"cat{i:03d}", "k", i)
        samples, _ = await scrape(a)
        cats = {dict(k[1])["category"]: v for k, v in samples.items() if k[0] == "spiralfast_state_keys"}
        assert len(cats) == MAX_CATEGORY_LABELS + 1 and OTHER_PEER in cats
        assert sum(cats.values()) == sum(len(v) for v in a.state.sync_categories.values())
    finally:
        await a.stop()
