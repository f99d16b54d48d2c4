"""Command line: ``spiralfast`` / ``spiralcodex`` / ``python -m spiralfast``.

``mesh start`` runs a node in the foreground; ``mesh status|nodes|events|publish``
inspect a running node over its own port as an observer (never a mesh member).
Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import typer

from .errors import ConfigError, LinkError, SpiralError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="spiralfast mesh node and tools.")
mesh_app = typer.Typer(no_args_is_help=True, help="Run or inspect a mesh node.")
ritual_app = typer.Typer(no_args_is_help=True, help="The old spiralcodex entry point.")
app.add_typer(mesh_app, name="mesh")
app.add_typer(ritual_app, name="ritual")

NODE_HELP = "WebSocket URL of the node to inspect."
DEFAULT_NODE = "ws://127.0.0.1:8765"


def _fail(msg: str, code: int = 1) -> None:
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _console() -> Any:
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty())


def _run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro_fn())
    except ImportError:  # pragma: no cover
        return asyncio.run(coro_fn())


def _emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")
    sys.stdout.flush()


# -- running a node --------------------------------------------------------------------


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":

        class _Json(logging.Formatter):
            def format(self, r: logging.LogRecord) -> str:
                return json.dumps(
                    {"ts": r.created, "level": r.levelname, "logger": r.name, "msg": r.getMessage()}
                )

        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level.upper())
    except ValueError:
        _fail(f"unknown log level {level!r}", 2)
    if root.level > logging.DEBUG:
        # picows logs every accepted connection at INFO; that is debug detail here.
        logging.getLogger("picows").setLevel(logging.WARNING)


def _start_node(
    port: int, host: str, redis: str | None, no_redis: bool, peer: list[str], node_id: str | None,
    name: str, token: str | None, log_level: str, log_format: str, heartbeat_interval: float,
) -> None:
    from .config import MeshConfig
    from .core import MeshCore

    _setup_logging(log_level, log_format)
    try:
        kw: dict[str, Any] = {}
        if redis:
            kw["redis_url"] = redis
        cfg = MeshConfig(
            node_id=node_id, mesh_name=name, websocket_port=port, websocket_host=host,
            enable_redis=not no_redis, peers=list(peer), auth_token=token,
            heartbeat_interval=heartbeat_interval, **kw,
        )
    except ConfigError as exc:
        _fail(str(exc), 2)

    async def main() -> int:
        core = MeshCore(cfg)
        await core.start()
        if not cfg.enable_websocket:
            await core.stop()
            sys.stderr.write(f"error: cannot listen on {host}:{port} (port in use or not permitted)\n")
            return 1
        redis_state = "connected " + cfg.redis_url if core.redis is not None else "off"
        print(f"spiralfast node {core.node_id}", flush=True)
        print(f"  mesh      {cfg.mesh_name}", flush=True)
        print(f"  websocket {core.local_node.websocket_endpoint}", flush=True)
        print(f"  redis     {redis_state}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await core.stop()
        print("stopped", flush=True)
        return 0

    code = _run(main)
    raise typer.Exit(code)


def _start_options() -> dict[str, Any]:
    return {}


@mesh_app.command("start")
def mesh_start(
    port: int = typer.Option(8765, help="WebSocket port."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    redis: str | None = typer.Option(None, "--redis", help="Redis URL (default redis://localhost:6379)."),
    no_redis: bool = typer.Option(False, "--no-redis", help="Run without Redis."),
    peer: list[str] = typer.Option([], "--peer", help="ws:// URL of a node to join (repeatable)."),
    node_id: str | None = typer.Option(None, "--node-id", help="Node id (default: a new uuid4)."),
    name: str = typer.Option("spiral_codex_mesh", "--name", help="Mesh name."),
    token: str | None = typer.Option(None, "--token", help="Shared mesh secret."),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format", help="text or json."),
    heartbeat_interval: float = typer.Option(30.0, "--heartbeat-interval", help="Seconds."),
) -> None:
    """Run a node in the foreground until SIGINT/SIGTERM."""
    _start_node(port, host, redis, no_redis, peer, node_id, name, token, log_level, log_format, heartbeat_interval)


@ritual_app.command("start")
def ritual_start(
    mesh: bool = typer.Option(False, "--mesh", help="Start the mesh node (the old way)."),
    port: int = typer.Option(8765),
    host: str = typer.Option("127.0.0.1"),
    redis: str | None = typer.Option(None, "--redis"),
    no_redis: bool = typer.Option(False, "--no-redis"),
    peer: list[str] = typer.Option([], "--peer"),
    node_id: str | None = typer.Option(None, "--node-id"),
    name: str = typer.Option("spiral_codex_mesh", "--name"),
    token: str | None = typer.Option(None, "--token"),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format"),
    heartbeat_interval: float = typer.Option(30.0, "--heartbeat-interval"),
) -> None:
    """Start the same node as ``mesh start`` (needs --mesh)."""
    if not mesh:
        _fail("only 'ritual start --mesh' is supported", 2)
    _start_node(port, host, redis, no_redis, peer, node_id, name, token, log_level, log_format, heartbeat_interval)


# -- inspecting a node -----------------------------------------------------------------


def _with_client(node: str, token: str | None, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``fn(client)`` against ``node``; ``SPIRALFAST_CAFILE`` names a CA bundle for wss://."""
    from .client import ObserverClient

    if not (node.startswith("ws://") or node.startswith("wss://")):
        _fail(f"bad node URL {node!r} (expected ws://host:port)", 2)

    async def main() -> Any:
        client = await ObserverClient.connect(node, token, cafile=os.environ.get("SPIRALFAST_CAFILE"))
        try:
            return await fn(client)
        finally:
            client.close()

    try:
        return _run(main)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except LinkError as exc:
        _fail(str(exc))
    except SpiralError as exc:
        _fail(str(exc))
    except TimeoutError:
        _fail(f"node at {node} did not answer in time")
    except OSError as exc:
        _fail(f"cannot reach node at {node}: {exc}")


def _status_table(st: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"node {st['node_id']}")
    t.add_column("field")
    t.add_column("value")
    for k in ("status", "mesh_name", "connected_nodes", "uptime", "total_recursion_depth", "average_entropy",
              "websocket_endpoint", "redis"):
        v = st.get(k)
        t.add_row(k, f"{v:.1f}" if isinstance(v, float) else str(v))
    c = st.get("counters", {})
    r = st.get("router", {})
    t.add_row("events in/out", f"{c.get('events_in', 0)}/{c.get('events_out', 0)}")
    t.add_row("frames in/out", f"{r.get('frames_in', 0)}/{r.get('frames_out', 0)}")
    t.add_row("links", ", ".join(f"{lk['peer'][:8]}({lk.get('state')})" for lk in st.get("links", [])) or "-")
    sync = st.get("sync", {})
    t.add_row("sync", f"{sync.get('sync_status')} v{sync.get('state_version')} items={sync.get('total_items')}")
    return t


def _nodes_table(nodes: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="mesh nodes")
    for col in ("node_id", "name", "status", "capabilities", "endpoint", "last seen (s)"):
        t.add_column(col)
    for n in nodes:
        t.add_row(
            n["node_id"] + (" *" if n.get("local") else ""), n["name"], n["status"],
            ",".join(n["capabilities"]), n.get("websocket_endpoint") or "-", f"{n['seconds_since_heartbeat']:.1f}",
        )
    return t


@mesh_app.command("status")
def mesh_status(
    node: str = typer.Option(DEFAULT_NODE, "--node", help=NODE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    token: str | None = typer.Option(None, "--token"),
    watch: bool = typer.Option(False, "--watch", help="Live view, refreshed every second."),
    iterations: int = typer.Option(0, "--iterations", hidden=True, help="Stop --watch after N refreshes."),
) -> None:
    """The node's get_mesh_status(), plus link and rate figures."""
    if not watch:
        st = _with_client(node, token, lambda c: c.query("status"))
        if as_json:
            _emit_json(st)
        else:
            _console().print(_status_table(st))
        return
    from .hud import run_hud

    _with_client(node, token, lambda c: run_hud(c, _console(), iterations))


@mesh_app.command("nodes")
def mesh_nodes(
    node: str = typer.Option(DEFAULT_NODE, "--node", help=NODE_HELP),
    as_json: bool = typer.Option(False, "--json"),
    token: str | None = typer.Option(None, "--token"),
) -> None:
    """One row per node the inspected node knows."""
    nodes = _with_client(node, token, lambda c: c.query("nodes"))
    if as_json:
        _emit_json(nodes)
    else:
        _console().print(_nodes_table(nodes))


def _event_line(env: dict[str, Any]) -> str:
    ts = str(env.get("timestamp", ""))[11:23]
    tgt = f" -> {env['target_node']}" if env.get("target_node") else ""
    return f"{ts} {env.get('type')} from {env.get('source_node')}{tgt} {orjson.dumps(env.get('data'), default=str).decode()}"


@mesh_app.command("events")
def mesh_events(
    node: str = typer.Option(DEFAULT_NODE, "--node", help=NODE_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON envelope per line."),
    token: str | None = typer.Option(None, "--token"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    types: list[str] = typer.Option([], "--type", help="Only this event type (repeatable)."),
    count: int = typer.Option(0, "--count", help="Recent events to show; with --follow, stop after N new."),
) -> None:
    """Recent events, then (with --follow) new ones as they happen."""

    def out(env: dict[str, Any]) -> None:
        if as_json:
            _emit_json(env)
        else:
            sys.stdout.write(_event_line(env) + "\n")
            sys.stdout.flush()

    async def run(c: Any) -> None:
        if not follow:
            for env in await c.query("events", count=count or 50, types=types):
                out(env)
            return
        seen = 0
        async for env in c.follow(types):
            out(env)
            seen += 1
            if count and seen >= count:
                return

    _with_client(node, token, run)


@mesh_app.command("publish")
def mesh_publish(
    event_type: str = typer.Argument(..., metavar="TYPE"),
    data: str = typer.Argument("{}", metavar="[DATA_JSON]"),
    node: str = typer.Option(DEFAULT_NODE, "--node", help=NODE_HELP),
    target: str | None = typer.Option(None, "--target", help="Send to this node id only."),
    as_json: bool = typer.Option(False, "--json"),
    token: str | None = typer.Option(None, "--token"),
) -> None:
    """Broadcast (or send with --target) one event from the node."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        _fail(f"DATA_JSON is not valid JSON: {exc}", 2)
    res = _with_client(node, token, lambda c: c.query("publish", type=event_type, data=payload, target=target))
    if as_json:
        _emit_json(res)
    else:
        print(f"published {event_type}" + (f" to {target}" if target else " to the mesh"))


@mesh_app.command("state")
def mesh_state(
    category: str | None = typer.Argument(None),
    key: str | None = typer.Argument(None),
    node: str = typer.Option(DEFAULT_NODE, "--node", help=NODE_HELP),
    set_value: str | None = typer.Option(None, "--set", metavar="JSON", help="Store this value at CATEGORY KEY."),
    delete: bool = typer.Option(False, "--delete", help="Delete CATEGORY KEY."),
    as_json: bool = typer.Option(False, "--json"),
    token: str | None = typer.Option(None, "--token"),
) -> None:
    """Show (or --set / --delete) the node's synchronised state."""
    if (set_value is not None or delete) and (category is None or key is None):
        _fail("--set and --delete need CATEGORY and KEY", 2)
    if set_value is not None:
        try:
            value = orjson.loads(set_value)
        except orjson.JSONDecodeError as exc:
            _fail(f"--set value is not valid JSON: {exc}", 2)
        res = _with_client(node, token, lambda c: c.query("state_set", category=category, key=key, value=value))
    elif delete:
        res = _with_client(node, token, lambda c: c.query("state_delete", category=category, key=key))
    else:
        res = _with_client(node, token, lambda c: c.query("state", category=category, key=key))
    if as_json or not sys.stdout.isatty():
        _emit_json(res)
    else:
        _console().print_json(orjson.dumps(res, default=str).decode())


@app.command("bench")
def bench(
    transport: str = typer.Option("ws", "--transport", help="ws or redis."),
    events: int = typer.Option(200_000, "--events", help="Events in the throughput run."),
    rate: int = typer.Option(10_000, "--rate", help="Events/s of the paced latency run (0: skip it)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Two processes on this machine through the public API: events/s as fast as the
    sender can go, then p50/p99 latency at a paced rate (like ``nats bench``)."""
    from .benchmark import run_bench

    try:
        res = run_bench(transport, events, 0)
        if rate:
            paced = run_bench(transport, max(1, min(events, rate * 2)), rate)
            res.update({"latency_rate": rate, "latency_events": paced["events"], "latency_lost": paced["lost"],
                        "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"]})
    except (SpiralError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(res)
    else:
        for k, v in res.items():
            print(f"{k:>16}: {v}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()

