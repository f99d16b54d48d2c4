"""``mesh status --watch``: a live terminal view (rich Live), refreshed every second."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def render(st: dict[str, Any], nodes: list[dict[str, Any]], rates: dict[str, float]) -> Any:
    from rich.console import Group
    from rich.table import Table

    head = Table(title=f"spiralfast {st['node_id']}  ({st['status']}, up {st['uptime']:.0f}s)")
    for col in ("events in/s", "events out/s", "frames in/s", "frames out/s", "sync", "redis"):
        head.add_column(col)
    sync = st.get("sync", {})
    head.add_row(
        f"{rates['events_in']:.0f}", f"{rates['events_out']:.0f}", f"{rates['frames_in']:.0f}",
        f"{rates['frames_out']:.0f}", f"{sync.get('sync_status')} v{sync.get('state_version')}",
        "on" if st.get("redis") else "off",
    )
    nt = Table(title="nodes")
    for col in ("node_id", "name", "status", "last seen (s)"):
        nt.add_column(col)
    for n in nodes:
        nt.add_row(n["node_id"], n["name"], n["status"], f"{n['seconds_since_heartbeat']:.1f}")
    lt = Table(title="links")
    for col in ("peer", "transport", "state", "frames out", "bytes out"):
        lt.add_column(col)
    for lk in st.get("links", []):
        lt.add_row(lk["peer"], lk.get("transport", "?"), str(lk.get("state")), str(lk.get("frames_out", "")),
                   str(lk.get("bytes_out", "")))
    return Group(head, nt, lt)


async def run_hud(client: Any, console: Any, iterations: int = 0) -> None:
    from rich.live import Live

    prev: dict[str, float] | None = None
    prev_t = time.monotonic()
    n = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            st = await client.query("status")
            nodes = await client.query("nodes")
            now = time.monotonic()
            cur = {
                "events_in": st["counters"]["events_in"], "events_out": st["counters"]["events_out"],
                "frames_in": st["router"]["frames_in"], "frames_out": st["router"]["frames_out"],
            }
            dt = max(now - prev_t, 1e-6)
            rates = {k: (cur[k] - prev[k]) / dt if prev else 0.0 for k in cur}
            prev, prev_t = cur, now
            live.update(render(st, nodes, rates), refresh=True)
            n += 1
            if iterations and n >= iterations:
                return
            await asyncio.sleep(1.0)
