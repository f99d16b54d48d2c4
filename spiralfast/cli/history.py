"""``spiralfast mesh history``: stored events, from a running node (``--node``) or
straight from a store (``--db PATH`` or ``--url postgresql://...``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from .common import _emit_json, _fail, _with_client, reason, split_types

if TYPE_CHECKING:
    from ..client import ObserverClient

#: Most envelopes one ``--node`` query returns (one reply must fit a message).
NODE_HISTORY_MAX = 10_000


def mesh_history(
    since: str | None = typer.Option(None, "--since", metavar="TIME",
                                     help="From this time on: ISO time, or 30s, 10m, 2h, 1d ago."),
    until: str | None = typer.Option(None, "--until", metavar="TIME", help="Up to this time (same forms)."),
    types: list[str] = typer.Option([], "--type", metavar="TYPE",
                                    help="Only this event type (repeatable; commas separate types)."),
    source: str | None = typer.Option(None, "--source", metavar="NODE_ID", help="Only events from this node."),
    limit: int = typer.Option(1000, "--limit", min=1, metavar="N", help="The newest N events (printed oldest first)."),
    db: str | None = typer.Option(None, "--db", metavar="PATH", help="Read this SQLite file instead of asking a node."),
    url: str | None = typer.Option(None, "--url", metavar="URL",
                                   help="Read this PostgreSQL store (postgresql://...) instead of asking a node."),
    node: str | None = typer.Option(None, "--node", metavar="URL", show_default=False,
                                    help="Node to ask (default ws://127.0.0.1:8765)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON envelope per line."),
    token: str | None = typer.Option(None, "--token", metavar="SECRET", show_default=False,
                                     help="The mesh's shared token, when it has one."),
    cafile: str | None = typer.Option(None, "--cafile", metavar="PATH", show_default=False,
                                      envvar="SPIRALFAST_CAFILE", help="CA file for wss:// nodes."),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", help="Give up after this long."),
) -> None:
    """Stored events (newest last): from a running node, or a store file with --db."""
    from ..store.history import read_history
    from ..store.rows import parse_time

    types = split_types(types)
    try:
        parse_time(since)
        parse_time(until)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    if db and url:
        raise _fail("--db and --url contradict each other", 2)
    if (db or url) and node:
        raise _fail("--db/--url read a store directly; --node asks a node: give one", 2)
    if db or url:
        try:
            envs = read_history(db, url, since, until, types or None, source, limit)
        except FileNotFoundError as exc:
            raise _fail(str(exc), 1) from None
        except Exception as exc:  # noqa: BLE001 - sqlite3/asyncpg/OS errors: one line
            raise _fail(f"cannot read {db or url}: {reason(exc)}", 1) from None
    else:
        if limit > NODE_HISTORY_MAX:
            raise _fail(f"--limit above {NODE_HISTORY_MAX} needs --db (read the store directly)", 2)

        async def ask(c: ObserverClient) -> Any:
            return await c.query("history", since=since, until=until, types=types, source=source, limit=limit)

        envs = _with_client(node, token, ask, cafile, timeout)
    for env in envs:
        if as_json:
            _emit_json(env)
        else:
            sys.stdout.write(_line(env) + "\n")
    sys.stdout.flush()


def _line(env: dict[str, Any]) -> str:
    """One stored event as text: control characters (chosen by the member that sent it)
    shown as escapes (``safetext.clean``), the data as terminal-safe JSON."""
    import orjson

    from ..safetext import clean, json_safe

    tgt = f" -> {clean(env['target_node'])}" if env.get("target_node") else ""
    data = json_safe(orjson.dumps(env.get("data"), default=str).decode())
    return f"{clean(env.get('timestamp', ''))} {clean(env.get('type'))} from {clean(env.get('source_node'))}{tgt} {data}"
