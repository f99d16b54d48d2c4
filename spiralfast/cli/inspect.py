"""Inspecting a running node as an observer (never a mesh member): ``mesh status``
(``--watch``: the live view of :mod:`spiralfast.cli.hud`), ``mesh nodes``, ``mesh events``
(``--follow``: reconnecting with back-off), ``mesh publish`` and ``mesh state``.

Everything a member chose (ids, names, event types, data) is printed through
:mod:`spiralfast.safetext`: control characters as escapes, rich markup as text.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson
import typer

from .. import safetext
from ..errors import AuthError, HandshakeError, LinkError
from ..protocol.states import node_state as status_label
from .common import (
    CliError,
    _cafile_opt,
    _console,
    _emit_json,
    _fail,
    _inspect_defaults,
    _json_opt,
    _node_opt,
    _note,
    _read_data,
        _timeout_opt,
    _token_opt,
    _with_client,
    reason,
    split_types,
)

if TYPE_CHECKING:
    from rich.table import Table

    from ..client import ObserverClient


def _status_table(st: dict[str, Any]) -> Table:
    from rich.table import Table

    mk = safetext.markup  # everything a member chose: no control characters, markup shown as text
    t = Table(title=f"node {mk(st['node_id'])}")
    t.add_column("field")
    t.add_column("value")
    for k in ("status", "mesh_name", "connected_nodes", "uptime", "total_recursion_depth", "average_entropy",
              "websocket_endpoint", "redis", "nats"):
        v = st.get(k)
        t.add_row(k, f"{v:.1f}" if isinstance(v, float) else mk(safetext.mask_secrets(v)))
    c = st.get("counters", {})
    r = st.get("router", {})
    t.add_row("events in/out", f"{c.get('events_in', 0)}/{c.get('events_out', 0)}")
    t.add_row("frames in/out", f"{r.get('frames_in', 0)}/{r.get('frames_out', 0)}")
    t.add_row("links", ", ".join(f"{mk(str(lk.get('peer') or lk.get('transport') or '?')[:8])}({mk(lk.get('state'))})"
                                 for lk in st.get("links", [])) or "-")
    sync = st.get("sync", {})
    t.add_row("sync", mk(f"{sync.get('sync_status')} v{sync.get('state_version')} items={sync.get('total_items')}"))
    return t


def _nodes_table(nodes: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    t = Table(title="mesh nodes")
    for col in ("node_id", "name", "status", "capabilities", "endpoint", "last seen (s)"):
        t.add_column(col)
    mk = safetext.markup  # names, capabilities, endpoints: chosen by members
    for n in nodes:
        t.add_row(
            mk(n["node_id"]) + (" *" if n.get("local") else ""), mk(n["name"]), mk(status_label(n)),
            mk(",".join(str(c) for c in n["capabilities"])), mk(n.get("websocket_endpoint") or "-"),
            f"{n['seconds_since_heartbeat']:.1f}",
        )
    return t


def mesh_status(
    node: str | None = _node_opt(),
    as_json: bool = _json_opt("Machine-readable output; with --watch, one JSON object per refresh."),
    token: str | None = _token_opt(),
    cafile: str | None = _cafile_opt(),
    timeout: float = _timeout_opt(),
    watch: bool = typer.Option(False, "--watch", help="Live view, refreshed every --interval seconds."),
    interval: float = typer.Option(1.0, "--interval", metavar="SECONDS", min=0.05, help="Refresh period of --watch."),
    iterations: int = typer.Option(0, "--iterations", min=0, hidden=True, help="Stop --watch after N refreshes."),
) -> None:
    """The node's get_mesh_status(), plus link and rate figures."""
    if not watch:
        st = _with_client(node, token, lambda c: c.query("status"), cafile, timeout)
        if as_json:
            _emit_json(st)
        else:
            from .hud import links_table

            _console().print(_status_table(st))
            _console().print(links_table(st))
        return
    if as_json:

        async def json_lines(c: ObserverClient) -> None:
            n = 0
            while True:
                _emit_json(await c.query("status"))
                n += 1
                if iterations and n >= iterations:
                    return
                await asyncio.sleep(interval)

        _with_client(node, token, json_lines, cafile, timeout)
        return
    from .hud import run_hud

    _with_client(node, token, lambda c: run_hud(c, _console(), iterations, interval=interval), cafile, timeout)


def mesh_nodes(
    node: str | None = _node_opt(),
    as_json: bool = _json_opt(),
    token: str | None = _token_opt(),
    cafile: str | None = _cafile_opt(),
    timeout: float = _timeout_opt(),
) -> None:
    """One row per node the inspected node knows."""
    nodes = _with_client(node, token, lambda c: c.query("nodes"), cafile, timeout)
    if as_json:
        _emit_json(nodes)
    else:
        _console().print(_nodes_table(nodes))


def _event_line(env: dict[str, Any]) -> str:
    """One event as a line of text: every part (chosen by the member that sent it) with its
    control characters shown as escapes - an ESC sequence or OSC 52 is printed, not run."""
    c = safetext.clean
    ts = c(str(env.get("timestamp", ""))[11:23])
    tgt = f" -> {c(env['target_node'])}" if env.get("target_node") else ""
    data = safetext.json_safe(orjson.dumps(env.get("data"), default=str).decode())
    return f"{ts} {c(env.get('type'))} from {c(env.get('source_node'))}{tgt} {data}"


def mesh_events(
    node: str | None = _node_opt(),
    as_json: bool = _json_opt("One JSON envelope per line."),
    token: str | None = _token_opt(),
    cafile: str | None = _cafile_opt(),
    timeout: float = _timeout_opt(),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="After the recent events, keep printing new ones; when the node goes away "
                                     "(a restart), reconnect with back-off until Ctrl-C."),
    types: list[str] = typer.Option([], "--type", metavar="TYPE",
                                    help="Only this event type (repeatable; commas separate types)."),
    count: int | None = typer.Option(None, "--count", metavar="N", show_default=False,
                                     help="Without --follow: recent events to show (default 50). "
                                          "With --follow: stop after N new events (default: never)."),
    recent: int = typer.Option(10, "--recent", min=0, metavar="N",
                               help="With --follow: recent events shown first (0: none)."),
) -> None:
    """Recent events, then (with --follow) new ones as they happen."""
    types = split_types(types)
    if count is not None and count < 1:
        raise _fail(f"--count must be at least 1, got {count}", 2)
    node, token, cafile = _inspect_defaults(node, token, cafile)
    printed: dict[object, None] = {}  # keys of the envelopes printed lately (insertion-ordered, bounded)

    def out(env: dict[str, Any]) -> bool:
        """Print ``env`` unless it was printed already (the recent ones overlap the
        stream, and a reconnect's recent ones what came before); True if printed."""
        key = env.get("event_id") or (env.get("type"), env.get("source_node"), env.get("timestamp"),
                                      env.get("target_node"))
        if key in printed:
            return False
        printed[key] = None
        if len(printed) > FOLLOW_DEDUP:
            del printed[next(iter(printed))]
        if as_json:
            _emit_json(env)
        else:
            sys.stdout.write(_event_line(env) + "\n")
            sys.stdout.flush()
        return True

    async def run(c: ObserverClient) -> None:
        if not follow:
            for env in await c.query("events", count=count or 50, types=types):
                out(env)
            return
        seen = 0
        lost_at: float | None = None
        try:
            while True:
                try:
                    # Subscribe first, then fetch the recent ones: nothing falls between the
                    # two, and an event in both is printed once.  After a reconnect the recent
                    # ones cover what happened while we were away (the new incarnation's).
                    await c.subscribe(types)
                    backfill = recent if lost_at is None else max(recent, FOLLOW_BACKFILL)
                    if backfill:
                        for env in await c.query("events", count=backfill, types=types):
                            # after a reconnect, what was not printed yet is new to the user
                            if out(env) and lost_at is not None:
                                seen += 1
                                if count and seen >= count:
                                    return
                    if lost_at is not None:
                        _note(f"reconnected to {node} after {time.monotonic() - lost_at:.1f}s")
                        lost_at = None
                    while True:
                        if out(await c.next_event()):
                            seen += 1
                            if count and seen >= count:
                                return
                except (LinkError, TimeoutError, OSError) as exc:
                    c.close()
                    lost_at = lost_at or time.monotonic()
                    _note(f"lost the node at {node} ({reason(exc)}); reconnecting (Ctrl-C to stop)")
                    c = await _reconnect(node, token, cafile, timeout)
        finally:
            c.close()

    _with_client(node, token, run, cafile, timeout)


#: ``mesh events --follow``: envelopes remembered to print each once, recent ones asked
#: for after a reconnect, and the reconnect back-off (first, longest delay in seconds).
FOLLOW_DEDUP = 10_000
FOLLOW_BACKFILL = 100
FOLLOW_RETRY = (0.2, 5.0)


async def _reconnect(node: str, token: str | None, cafile: str | None, timeout: float) -> ObserverClient:
    """A new observer connection to ``node``, retried with back-off until it answers.
    A refusal that a retry cannot fix (the token) ends the command."""
    from ..client import ObserverClient

    delay, longest = FOLLOW_RETRY
    while True:
        await asyncio.sleep(delay * (0.75 + random.random() / 2))
        try:
            client = await ObserverClient.connect(node, token, timeout=min(timeout, 10.0), cafile=cafile)
        except AuthError:
            raise
        except (LinkError, HandshakeError, TimeoutError, OSError):
            delay = min(delay * 2, longest)
            continue
        client.default_timeout = timeout
        return client


def mesh_publish(
    event_type: str = typer.Argument(..., metavar="TYPE", help="Event type (non-empty)."),
    data: str = typer.Argument("{}", metavar="[DATA_JSON]",
                               help="Event data as JSON; '-' reads it from stdin, '@PATH' from a file."),
    node: str | None = _node_opt(),
    target: str | None = typer.Option(None, "--target", metavar="NODE_ID", help="Send to this node id only."),
    as_json: bool = _json_opt(),
    token: str | None = _token_opt(),
    cafile: str | None = _cafile_opt(),
    timeout: float = _timeout_opt(),
) -> None:
    """Broadcast (or send with --target) one event from the node."""
    if not event_type.strip():
        raise _fail("event TYPE must not be empty", 2)
    if target is not None and not target.strip():
        raise _fail("--target must not be empty", 2)
    try:
        payload = _read_data(data)
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    res = _with_client(node, token, lambda c: c.query("publish", type=event_type, data=payload, target=target),
                       cafile, timeout)
    if as_json:
        _emit_json(res)
    else:
        print(f"published {safetext.clean(event_type)}" + (f" to {safetext.clean(target)}" if target else " to the mesh"))


def mesh_state(
    category: str | None = typer.Argument(None, help="State category (all of them when left out)."),
    key: str | None = typer.Argument(None, help="Key in the category (the whole category when left out)."),
    node: str | None = _node_opt(),
    set_value: str | None = typer.Option(None, "--set", metavar="JSON",
                                         help="Store this value at CATEGORY KEY ('-': stdin, '@PATH': a file)."),
    delete: bool = typer.Option(False, "--delete", help="Delete CATEGORY KEY."),
    as_json: bool = _json_opt(),
    token: str | None = _token_opt(),
    cafile: str | None = _cafile_opt(),
    timeout: float = _timeout_opt(),
) -> None:
    """Show (or --set / --delete) the node's synchronised state.

    A CATEGORY or KEY that does not exist is an error (exit 1).
    """
    if (set_value is not None or delete) and (category is None or key is None):
        raise _fail("--set and --delete need CATEGORY and KEY", 2)
    if set_value is not None and delete:
        raise _fail("--set and --delete exclude each other", 2)
    if set_value is not None:
        try:
            value = _read_data(set_value)
        except CliError as exc:
            raise _fail(str(exc).replace("DATA_JSON", "--set value"), exc.code) from None
        res = _with_client(node, token, lambda c: c.query("state_set", category=category, key=key, value=value),
                           cafile, timeout)
    elif delete:
        res = _with_client(node, token, lambda c: c.query("state_delete", category=category, key=key),
                           cafile, timeout)
        if isinstance(res, dict) and res.get("deleted") is False:
            raise _fail(f"no key {key!r} in category {category!r}")
    else:

        async def get(c: ObserverClient) -> Any:
            val = await c.query("state", category=category, key=key)
            if val is None and category is not None:
                cat = await c.query("state", category=category) if key is not None else None
                if cat is None:
                    raise CliError(f"no state category {category!r}")
                if key not in cat:
                    raise CliError(f"no key {key!r} in category {category!r}")
            return val

        res = _with_client(node, token, get, cafile, timeout)
    if as_json or not sys.stdout.isatty():
        _emit_json(res)
    else:
        _console().print_json(safetext.json_safe(orjson.dumps(res, default=str).decode()))
