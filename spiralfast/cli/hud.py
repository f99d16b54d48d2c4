"""``mesh status --watch``: a live terminal view (rich Live), refreshed every second.

Shows the node's rates, the nodes it knows, its links with their analytics (RTT,
throughput in and out, drops, gaps) and the mesh topology as this node knows it
(``hud_config.show_network_topology`` in the old library's words).

:data:`hud_config` is the old library's ``spiralcodex.hud.hud_config`` (after
:func:`spiralfast.compat.install`, ``from spiralcodex.hud import hud_config`` is this
object): ``mesh_enabled = False`` leaves out the mesh panel (the nodes, links and
topology: only the node's own line is shown), ``show_network_topology = False`` the
topology section.  Both are read at every refresh.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.states import node_state, state_kind
from ..safetext import markup

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table
    from rich.tree import Tree

    from ..client import ObserverClient


@dataclass
class HUDConfig:
    """What the HUD shows (the old ``spiralcodex.hud`` settings)."""

    #: The mesh panel: nodes, links and topology.  False: the node's own line only.
    mesh_enabled: bool = True
    #: The topology section (under the mesh panel).
    show_network_topology: bool = True


#: The settings every :func:`render` (and so ``mesh status --watch``) uses unless given others.
hud_config = HUDConfig()

#: Counters the HUD turns into rates, and where they live in ``get_mesh_status()``.
RATE_KEYS = {
    "events_in": ("counters", "events_in"),
    "events_out": ("counters", "events_out"),
    "frames_in": ("router", "frames_in"),
    "frames_out": ("router", "frames_out"),
}
LINK_RATE_KEYS = ("bytes_out", "bytes_in", "frames_out", "frames_in")


def link_key(lk: dict[str, Any]) -> str:
    peer = lk.get("peer")
    return str(peer) if peer is not None else f"_{lk.get('transport', 'bus')}"


def topology_from_status(st: dict[str, Any]) -> dict[str, Any]:
    """Node ids and links (sorted id pairs) as the inspected node knows them: its own
    links, plus the ``links`` each node's record carries in its metadata.  As on the
    dashboard, a link is drawn only between two live nodes (see :mod:`spiralfast.protocol.states`): a
    suspected or disconnected node is listed, never shown linked."""
    local = str(st.get("node_id"))
    known = {str(n.get("node_id")) for n in st.get("nodes") or []}
    known.add(local)
    live = {local} | {str(n.get("node_id")) for n in st.get("nodes") or []
                      if state_kind(node_state(n)) == "live"}
    pairs: set[tuple[str, str]] = set()

    def add(a: str, b: str) -> None:
        if a != b and a in live and b in live:
            pairs.add((a, b) if a < b else (b, a))

    for lk in st.get("links") or []:
        if lk.get("peer") is not None:
            add(local, str(lk["peer"]))
    for n in st.get("nodes") or []:
        md = n.get("metadata") or {}
        peers = md.get("links") if isinstance(md, dict) else None
        if isinstance(peers, (list, tuple)):
            for p in peers:
                add(str(n.get("node_id")), str(p))
    return {"local": local, "nodes": sorted(known), "links": sorted(pairs)}


def status_label(n: dict[str, Any]) -> str:
    """A node's state as every view shows it (:func:`spiralfast.protocol.states.node_state`): its status,
    or ``suspected`` while a node whose link its side closed is being probed (removed
    unless it answers)."""
    return node_state(n) if n.get("status") is not None or n.get("suspect") else "?"


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if v < 1024:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"


def links_table(st: dict[str, Any], link_rates: dict[str, dict[str, float]] | None = None) -> Table:
    """Link analytics: RTT, throughput (per second when ``link_rates`` is given, else
    totals), frames, drops and gaps, one row per link."""
    from rich.table import Table

    per_s = link_rates is not None
    lt = Table(title="links")
    cols = ["peer", "transport", "state", "RTT"]
    cols += ["out/s", "in/s", "frames out/s"] if per_s else ["bytes out", "bytes in", "frames out"]
    cols += ["dropped", "gaps"]
    for col in cols:
        lt.add_column(col, justify="left" if col in ("peer", "transport", "state") else "right")
    for lk in st.get("links", []):
        key = link_key(lk)
        rtt = lk.get("rtt_ms")
        gaps = lk.get("gaps", lk.get("lost"))
        row = [markup(key), markup(lk.get("transport", "?")), markup(lk.get("state")),
               f"{float(rtt):.2f} ms" if isinstance(rtt, (int, float)) else "-"]
        if link_rates is not None:
            lr = link_rates.get(key, {})
            row += [
                _bytes(lr["bytes_out"]) + "/s" if "bytes_out" in lr else "-",
                _bytes(lr["bytes_in"]) + "/s" if "bytes_in" in lr else "-",
                _rate(lr["frames_out"]) if "frames_out" in lr else "-",
            ]
        else:
            row += [
                _bytes(lk["bytes_out"]) if "bytes_out" in lk else "-",
                _bytes(lk["bytes_in"]) if "bytes_in" in lk else "-",
                str(lk.get("frames_out", "-")),
            ]
        row += [str(lk.get("dropped_frames", 0)), "-" if gaps is None else str(gaps)]
        lt.add_row(*row)
    return lt


def render(
    st: dict[str, Any],
    nodes: list[dict[str, Any]],
    rates: dict[str, float],
    link_rates: dict[str, dict[str, float]] | None = None,
    show_topology: bool = True,
    config: HUDConfig | None = None,
) -> Group:
    """The HUD's view of one status.  ``show_topology=False`` or ``config`` (default:
    :data:`hud_config`) with ``show_network_topology`` False leaves the topology out;
    ``mesh_enabled`` False leaves out the nodes, the links and the topology."""
    from rich.console import Group
    from rich.table import Table
    from rich.tree import Tree

    head = Table(title=f"spiralfast {markup(st['node_id'])}  ({markup(st['status'])}, up {st['uptime']:.0f}s)")
    for col in ("events in/s", "events out/s", "frames in/s", "frames out/s", "sync", "redis", "nats"):
        head.add_column(col)
    sync = st.get("sync", {})
    head.add_row(
        _rate(rates["events_in"]), _rate(rates["events_out"]), _rate(rates["frames_in"]),
        _rate(rates["frames_out"]), f"{sync.get('sync_status')} v{sync.get('state_version')}",
        "on" if st.get("redis") else "off", "on" if st.get("nats") else "off",
    )
    nt = Table(title="nodes")
    for col in ("node_id", "name", "status", "last seen (s)"):
        nt.add_column(col)
    for n in nodes:
        nt.add_row(markup(n["node_id"]), markup(n["name"]), markup(status_label(n)),
                   f"{n['seconds_since_heartbeat']:.1f}")
    cfg = config if config is not None else hud_config
    if not cfg.mesh_enabled:
        return Group(head)
    lt = links_table(st, link_rates)
    parts: list[Table | Tree] = [head, nt, lt]
    if show_topology and cfg.show_network_topology:
        topo = topology_from_status(st)
        tree = Tree(f"topology: {len(topo['nodes'])} nodes, {len(topo['links'])} links")
        adj: dict[str, list[str]] = {n: [] for n in topo["nodes"]}
        for a, b in topo["links"]:
            adj[a].append(b)
            adj[b].append(a)
        for n in topo["nodes"]:
            label = f"[bold]{markup(n)}[/bold] (this node)" if n == topo["local"] else markup(n)
            branch = tree.add(label)
            for peer in sorted(adj[n]):
                branch.add(f"── {markup(peer)}")
            if not adj[n]:
                branch.add("[dim](no known links)[/dim]")
        parts.append(tree)
    return Group(*parts)


def _get(st: dict[str, Any], where: tuple[str, str]) -> float:
    return float((st.get(where[0]) or {}).get(where[1]) or 0)


async def run_hud(
    client: ObserverClient, console: Console, iterations: int = 0, show_topology: bool = True, interval: float = 1.0,
    config: HUDConfig | None = None,
) -> None:
    """Query ``client`` and redraw on ``console`` every ``interval`` seconds (``iterations``
    times, 0: until cancelled); what is shown follows ``config`` (default :data:`hud_config`)."""
    from rich.live import Live

    prev: dict[str, float] | None = None
    prev_links: dict[str, dict[str, Any]] = {}
    prev_t = time.monotonic()
    n = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            st = await client.query("status")
            nodes = await client.query("nodes")
            now = time.monotonic()
            cur = {k: _get(st, where) for k, where in RATE_KEYS.items()}
            dt = max(now - prev_t, 1e-6)
            rates = {k: (cur[k] - prev[k]) / dt if prev else 0.0 for k in cur}
            links = {link_key(lk): lk for lk in st.get("links", [])}
            link_rates: dict[str, dict[str, float]] = {}
            for key, lk in links.items():
                old = prev_links.get(key)
                if old is None:
                    continue
                link_rates[key] = {
                    k: max(0.0, (float(lk.get(k) or 0) - float(old.get(k) or 0)) / dt)
                    for k in LINK_RATE_KEYS if k in lk
                }
            prev, prev_t, prev_links = cur, now, links
            live.update(render(st, nodes, rates, link_rates, show_topology, config), refresh=True)
            n += 1
            if iterations and n >= iterations:
                return
            await asyncio.sleep(interval)
