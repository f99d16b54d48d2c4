"""Prometheus metrics for one node (``GET /metrics``).

A custom ``prometheus_client`` collector reads the node's own counters at scrape
time, through a :class:`~spiralfast.ports.ops.MetricsSource` (``get_mesh_status()``, the
state's key counts, the latency histogram): nothing is counted twice and the hot paths
make no metric calls.  Per-peer series are bounded: the busiest
``MAX_PEER_LABELS`` links get their own ``peer`` label, the rest are summed under
``peer="_other"``.

Event latency is a histogram fed by sampling (one event in ``LATENCY_SAMPLE_EVERY``)
into a :class:`LatencyHistogram` that the node keeps (``MetricsSource.latency``); the
collector only reads it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .._version import __version__
from ..ports.ops import MetricsSource

#: Links that get their own ``peer`` label; the rest are summed as ``_other`` (OTHER_PEER).
MAX_PEER_LABELS = 64
#: The receive path samples one event in this many for the latency histogram.
LATENCY_SAMPLE_EVERY = 64
#: Histogram bucket bounds for event latency (seconds).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
OTHER_PEER = "_other"
#: State categories that get their own ``category`` label (the largest; the rest are
#: summed under ``category="_other"``).
MAX_CATEGORY_LABELS = 64
#: Task types that get their own ``type`` label (sorted by name; the rest are left out).
MAX_TYPE_LABELS = 64

PREFIX = "spiralfast"


class LatencyHistogram:
    """Fixed-bucket histogram the receive path feeds with sampled latencies.

    ``observe(seconds)`` is a bisect and two additions; call it for one event in
    ``LATENCY_SAMPLE_EVERY`` with ``time.time() - event.timestamp``.
    """

    __slots__ = ("bounds", "counts", "sum", "count", "_lock")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # last: +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        if seconds < 0.0:  # clocks of two machines disagree: count it as immediate
            seconds = 0.0
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((_fmt_bound(bound), float(acc)))
        out.append(("+Inf", float(self.count)))
        return out


def _fmt_bound(b: float) -> str:
    return repr(float(b))


def _compiled() -> bool:
    try:
        from ..wire import codec, fastpath

        return bool(codec.COMPILED and fastpath.COMPILED)
    except Exception:  # pragma: no cover - import trouble shows elsewhere
        return False


def bounded_peers(links: list[dict[str, Any]], limit: int = MAX_PEER_LABELS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``links`` into those that get a ``peer`` label (busiest first) and the rest."""
    if len(links) <= limit:
        return links, []
    ranked = sorted(links, key=lambda lk: -(int(lk.get("bytes_out") or 0) + int(lk.get("bytes_in") or 0)))
    return ranked[:limit], ranked[limit:]


def peer_label(link: dict[str, Any]) -> str:
    """A link's ``peer`` label: the peer's node id, or ``_<transport>`` for a shared bus."""
    peer = link.get("peer")
    return str(peer) if peer is not None else f"_{link.get('transport', 'bus')}"


def _num(v: Any) -> float:
    try:
        return float(v or 0)
    except (TypeError, ValueError):
        return 0.0


class HttpFigures(Protocol):
    """The HTTP side of a node's port (``spiralfast.ops.http.HttpEndpoints``)."""

    @property
    def auth_failures(self) -> int:
        """HTTP requests and dashboard connections refused for a missing or wrong token."""
        ...

    @property
    def dashboards(self) -> int:
        """Dashboard pages connected to ``/live``."""
        ...

    def refusals(self) -> dict[str, int]:
        """Connections refused or closed at the port's side doors, by reason."""
        ...


class MeshCollector(Collector):
    """Reads one node's figures at scrape time."""

    def __init__(self, source: MetricsSource, http: HttpFigures | None = None) -> None:
        self.source = source
        self.http = http
        self.compiled = _compiled()

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: the node's figures are only read at scrape time

    def collect(self) -> Iterator[Metric]:
        source, http = self.source, self.http
        st = source.status()
        c: dict[str, Any] = st.get("counters") or {}
        router: dict[str, Any] = st.get("router") or {}
        bus: dict[str, Any] = st.get("bus") or {}
        sync: dict[str, Any] = st.get("sync") or {}
        links: list[dict[str, Any]] = st.get("links") or []
        p = PREFIX

        def counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
            return CounterMetricFamily(f"{p}_{name}", doc, value=_num(value))

        yield counter("events_sent_total", "Events this node originated (broadcast or sent).", c.get("events_out"))
        yield counter("events_received_total", "Events delivered to this node.", c.get("events_in"))
        yield counter("events_forwarded_total", "Messages this node forwarded for others.", router.get("forwarded"))

        dropped = CounterMetricFamily(f"{p}_events_dropped_total", "Events dropped, by reason.", labels=["reason"])
        reasons = {
            "queue_full": c.get("dropped_events"),
            "unroutable": router.get("unroutable"),
            "slow_peer": sum(_num(lk.get("dropped_frames")) for lk in links),
            "bus_dropped": bus.get("dropped"),
            "bus_expired": bus.get("expired"),
        }
        for key, reason in (("refused_messages", "refused"), ("preauth_refused", "preauth_refused"),
                            ("gate_errors", "gate_error"), ("unauthenticated", "unauthenticated"),
                            ("wrong_mesh", "wrong_mesh"), ("replayed", "replayed"),
                            ("impersonation_refused", "impersonation"), ("impostors_refused", "impostor"),
                            ("bus_key_refused", "bus_key"), ("bus_future_epoch", "future_epoch")):
            if key in c:
                reasons[reason] = c[key]
        for reason, v in reasons.items():
            dropped.add_metric([reason], _num(v))
        yield dropped

        yield counter("duplicates_total", "Messages that arrived again by another path (deduplicated, not delivered twice).",
                      router.get("duplicates"))
        if "rate_limited" in c:
            yield counter("rate_limited_total", "Times a peer or observer went over its rate limit.",
                          c.get("rate_limited"))

        lost = c.get("events_lost", c.get("lost", 0))
        delivery = st.get("delivery")
        if isinstance(delivery, dict) and "lost" in delivery:
            lv = delivery["lost"]
            lost = sum(_num(x) for x in lv.values()) if isinstance(lv, dict) else lv
        yield counter("events_lost_total", "Events found missing (gaps) that could not be repaired.", lost)
        if isinstance(delivery, dict) and isinstance(delivery.get("by_node"), dict):
            by_node = CounterMetricFamily(f"{p}_events_lost_by_node_total",
                                          "Events that could not be repaired, by the node that sent them.",
                                          labels=["node"])
            for node, v in sorted(delivery["by_node"].items())[:MAX_PEER_LABELS]:
                if isinstance(v, dict) and _num(v.get("lost")):
                    by_node.add_metric([str(node)], _num(v.get("lost")))
            yield by_node
        yield counter("handler_errors_total", "Event handlers that raised (mesh and bus).",
                      _num(c.get("handler_errors")) + _num(bus.get("handler_errors")))
        http_refused = http.auth_failures if http is not None else 0
        yield counter("auth_failures_total", "Peers, observers and HTTP clients refused for a missing or wrong token.",
                      _num(c.get("auth_failures")) + _num(http_refused))
        yield counter("handshake_failures_total", "Handshakes that failed for any reason.", c.get("handshake_failures"))
        if http is not None:
            side = CounterMetricFamily(f"{p}_side_door_refused_total",
                                       "Connections refused or closed before authentication at the port, by reason.",
                                       labels=["reason"])
            for reason, v in sorted(http.refusals().items()):
                side.add_metric([reason], _num(v))
            yield side
        yield counter("bad_messages_total", "Malformed or unexpected messages.",
                      _num(c.get("bad_messages")) + _num(router.get("frame_errors")))
        yield counter("frames_received_total", "Frames read from all links.", router.get("frames_in"))
        yield counter("frames_sent_total", "Frames written to all links.", router.get("frames_out"))
        yield counter("bytes_received_total", "Bytes read from all links.", router.get("bytes_in"))
        yield counter("bytes_sent_total", "Bytes written to all links.", router.get("bytes_out"))

        nodes_by_status: dict[str, int] = {}
        for n in st.get("nodes") or []:
            s = str(n.get("status", "unknown"))
            nodes_by_status[s] = nodes_by_status.get(s, 0) + 1
        g = GaugeMetricFamily(f"{p}_nodes", "Nodes this node knows (itself included), by status.", labels=["status"])
        for s in ("active", "initializing", "degraded", "offline"):
            nodes_by_status.setdefault(s, 0)
        for s, n in sorted(nodes_by_status.items()):
            g.add_metric([s], n)
        yield g

        g = GaugeMetricFamily(f"{p}_links", "Open links to peer nodes, by transport.", labels=["transport"])
        by_t: dict[str, int] = {}
        for lk in links:
            t = str(lk.get("transport", "unknown"))
            by_t[t] = by_t.get(t, 0) + 1
        for t, n in sorted(by_t.items()):
            g.add_metric([t], n)
        yield g
        yield GaugeMetricFamily(f"{p}_observers", "Observers connected (CLI).", value=_num(st.get("observers")))
        if http is not None:
            yield GaugeMetricFamily(f"{p}_dashboards", "Dashboard pages connected to /live.",
                                    value=float(http.dashboards))

        named, rest = bounded_peers(links)
        sent = CounterMetricFamily(f"{p}_link_bytes_sent_total", "Bytes sent on the link to a peer.", labels=["peer"])
        recv = CounterMetricFamily(f"{p}_link_bytes_received_total", "Bytes received on the link from a peer.",
                                   labels=["peer"])
        frames = CounterMetricFamily(f"{p}_link_frames_sent_total", "Frames sent on the link to a peer.", labels=["peer"])
        ldrop = CounterMetricFamily(f"{p}_link_dropped_frames_total", "Frames dropped on the link to a slow peer.",
                                    labels=["peer"])
        lgaps = CounterMetricFamily(f"{p}_link_gaps_total", "Sequence gaps detected on a link.", labels=["peer"])
        rtt = GaugeMetricFamily(f"{p}_link_rtt_seconds", "Last measured round-trip time to a peer.", labels=["peer"])
        groups: list[tuple[str, list[dict[str, Any]]]] = [(peer_label(lk), [lk]) for lk in named]
        if rest:
            groups.append((OTHER_PEER, rest))
        for peer, lks in groups:
            sent.add_metric([peer], sum(_num(lk.get("bytes_out")) for lk in lks))
            recv.add_metric([peer], sum(_num(lk.get("bytes_in")) for lk in lks))
            frames.add_metric([peer], sum(_num(lk.get("frames_out")) for lk in lks))
            ldrop.add_metric([peer], sum(_num(lk.get("dropped_frames")) for lk in lks))
            lgaps.add_metric([peer], sum(_num(lk.get("gaps", lk.get("lost"))) for lk in lks))
            rtts = [float(lk["rtt_ms"]) / 1000.0 for lk in lks if lk.get("rtt_ms") is not None]
            if rtts:
                rtt.add_metric([peer], max(rtts))
        yield sent
        yield recv
        yield frames
        yield ldrop
        yield lgaps
        yield rtt

        keys = GaugeMetricFamily(f"{p}_state_keys", "Live keys in the synchronised state, by category.",
                                 labels=["category"])
        cats = sorted(((str(cat), n) for cat, n in source.state_key_counts().items()), key=lambda kv: -kv[1])
        for cat, n in cats[:MAX_CATEGORY_LABELS]:
            keys.add_metric([cat], n)
        if len(cats) > MAX_CATEGORY_LABELS:
            keys.add_metric([OTHER_PEER], sum(n for _, n in cats[MAX_CATEGORY_LABELS:]))
        yield keys
        yield GaugeMetricFamily(f"{p}_state_version", "This node's state version (local changes).",
                                value=_num(sync.get("state_version")))
        yield counter("state_repairs_total", "Anti-entropy repairs this node asked for.", sync.get("repairs"))
        in_sync = GaugeMetricFamily(f"{p}_state_in_sync", "1 when the state is in sync with the peers (status synced).")
        in_sync.add_metric([], 1.0 if sync.get("sync_status") == "synced" else 0.0)
        yield in_sync

        yield from _task_metrics(st.get("tasks"))
        yield from _persistence_metrics(st.get("persistence"))

        hist = source.latency
        h = HistogramMetricFamily(f"{p}_event_latency_seconds",
                                  f"Origin timestamp to delivery, sampled (1 event in {LATENCY_SAMPLE_EVERY}).")
        if hist is not None:
            h.add_metric([], hist.cumulative(), sum_value=hist.sum)
        else:
            h.add_metric([], [(_fmt_bound(b), 0.0) for b in LATENCY_BUCKETS] + [("+Inf", 0.0)], sum_value=0.0)
        yield h

        yield GaugeMetricFamily(f"{p}_uptime_seconds", "Seconds since the node started.", value=_num(st.get("uptime")))
        info = GaugeMetricFamily(f"{p}_build_info", "Build of this node (value 1).", labels=["version", "compiled"])
        info.add_metric([__version__, "true" if self.compiled else "false"], 1.0)
        yield info


def _bounded_types(d: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(d, dict):
        return []
    items = [(str(k), v) for k, v in d.items() if isinstance(v, dict)]
    return sorted(items)[:MAX_TYPE_LABELS]


def _task_metrics(tasks: Any) -> Iterator[Metric]:
    """Tasks this node serves (``offered``) and submits (``submitted``), per task type."""
    p = PREFIX
    if not isinstance(tasks, dict):
        tasks = {}
    served = CounterMetricFamily(f"{p}_tasks_served_total", "Tasks this node ran, by type and outcome.",
                                 labels=["type", "outcome"])
    running = GaugeMetricFamily(f"{p}_tasks_running", "Tasks running on this node, by type.", labels=["type"])
    queued = GaugeMetricFamily(f"{p}_tasks_queued", "Tasks queued on this node, by type.", labels=["type"])
    for t, o in _bounded_types(tasks.get("offered")):
        served.add_metric([t, "done"], _num(o.get("done")))
        served.add_metric([t, "failed"], _num(o.get("failed")))
        running.add_metric([t], _num(o.get("running")))
        queued.add_metric([t], _num(o.get("queued")))
    submitted = CounterMetricFamily(f"{p}_tasks_submitted_total", "Tasks this node submitted, by type.",
                                    labels=["type"])
    finished = CounterMetricFamily(f"{p}_tasks_finished_total", "Tasks this node submitted that finished, by outcome.",
                                   labels=["type", "outcome"])
    retried = CounterMetricFamily(f"{p}_tasks_retried_total", "Task retries, by type.", labels=["type"])
    inflight = GaugeMetricFamily(f"{p}_tasks_in_flight", "Submitted tasks not finished yet, by type.", labels=["type"])
    for t, sub in _bounded_types(tasks.get("submitted")):
        submitted.add_metric([t], _num(sub.get("submitted")))
        for outcome, key in (("done", "done"), ("failed", "failed"), ("timeout", "timeouts")):
            finished.add_metric([t, outcome], _num(sub.get(key)))
        retried.add_metric([t], _num(sub.get("retried")))
        inflight.add_metric([t], _num(sub.get("in_flight")) + _num(sub.get("waiting")))
    yield from (served, running, queued, submitted, finished, retried, inflight)


def _persistence_metrics(pers: Any) -> Iterator[Metric]:
    """The event log's figures, when persistence is on."""
    if not isinstance(pers, dict):
        return
    p = PREFIX
    yield CounterMetricFamily(f"{p}_persist_written_total", "Events written to the store.",
                              value=_num(pers.get("written")))
    yield CounterMetricFamily(f"{p}_persist_dropped_total", "Events the store could not take.",
                              value=_num(pers.get("dropped")))
    yield GaugeMetricFamily(f"{p}_persist_pending", "Events waiting to be written.", value=_num(pers.get("pending")))
    yield CounterMetricFamily(f"{p}_persist_capped_total",
                              "Stored events removed (oldest first) to keep the event log under persist_max_bytes.",
                              value=_num(pers.get("capped")))
    yield CounterMetricFamily(f"{p}_persist_purged_total",
                              "Stored rows removed by retention (persist_retention_days, "
                              "persist_metrics_retention_hours).", value=_num(pers.get("purged")))
    yield GaugeMetricFamily(f"{p}_persist_size_bytes",
                            "Size of the event log at the last cap check (SQLite: file and WAL; PostgreSQL: estimate).",
                            value=_num(pers.get("size_bytes")))
    if pers.get("max_bytes") is not None:
        yield GaugeMetricFamily(f"{p}_persist_max_bytes", "The event log's size cap (persist_max_bytes).",
                                value=_num(pers.get("max_bytes")))
    yield CounterMetricFamily(f"{p}_persist_stall_seconds_total", "Seconds the writer held back the node.",
                              value=_num(pers.get("stall_seconds")))
    up = GaugeMetricFamily(f"{p}_persist_ok", "1 while the store works (0 after an error).")
    up.add_metric([], 0.0 if pers.get("error") else 1.0)
    yield up


def registry_for(source: MetricsSource, http: HttpFigures | None = None) -> CollectorRegistry:
    """A registry of its own per node (several nodes may share one process).  ``http``:
    the node's HTTP endpoints, whose token refusals count as auth failures."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MeshCollector(source, http))
    return reg


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition and its content type."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
