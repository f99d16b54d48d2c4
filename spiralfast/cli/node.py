"""``spiralfast mesh start`` (and the old ``ritual start --mesh``): a node in the foreground.

Checks what can fail before anything starts (TLS files, the port), gives the node its
identity (:mod:`spiralfast.cli.identity`: the id kept in the data directory, and a lock),
starts :class:`~spiralfast.node.core.MeshCore`, prints a banner read from the running node,
and stops it cleanly on SIGINT/SIGTERM (or when the mesh says another live process holds
its id).  The CLI is an entry point: this is the one place it builds a node.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from .. import safetext
from .._version import __version__
from ..errors import SpiralError
from ..node import settings
from . import identity
from .common import CliError, _build_info, _fail, _one_line, _run, reason
from .flags import _resolve, _with_setting_flags

if TYPE_CHECKING:
    from ..node.config import MeshConfig
    from ..node.core import MeshCore

#: Seconds ``mesh start`` waits for a clean stop after SIGINT/SIGTERM before it gives up.
STOP_TIMEOUT = 15.0


def _check_tls(cfg: MeshConfig) -> None:
    """Refuse unusable TLS files before anything starts, saying which and why."""
    if cfg.ssl_certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
        except FileNotFoundError as exc:
            raise CliError(f"TLS: cannot read {exc.filename or cfg.ssl_certfile}: no such file", 2) from None
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"TLS: certificate {cfg.ssl_certfile} / key {cfg.ssl_keyfile} unusable: "
                           f"{reason(exc)}", 2) from None
    if cfg.ssl_cafile:
        try:
            ssl.create_default_context(cafile=cfg.ssl_cafile)
        except FileNotFoundError:
            raise CliError(f"TLS: cannot read CA file {cfg.ssl_cafile}: no such file", 2) from None
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"TLS: CA file {cfg.ssl_cafile} unusable: {reason(exc)}", 2) from None


def _check_port(host: str, port: int) -> None:
    """Fail at once, before the node logs anything, when the port cannot be bound."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host}:{port}: {reason(exc)}") from None
    for family, stype, proto, _, addr in infos:
        with socket.socket(family, stype, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                why = "port already in use" if exc.errno in (98, 48) else reason(exc)
                raise CliError(f"cannot listen on {host}:{port}: {why}") from None


def _banner(core: MeshCore, res: settings.Resolved, ident: identity.Identity | None = None) -> list[str]:
    """What really started: every line is read from the running node, not the config."""
    cfg = core.config
    rows: list[tuple[str, str]] = []
    auth = "token required" if cfg.auth_token else "no token: anyone who can connect may join"
    rows.append(("mesh", f"{cfg.mesh_name}; {auth}"))
    if core.ws is not None:
        ep = core.local_node.websocket_endpoint or ""
        tls = f"TLS on, certificate {cfg.ssl_certfile}" if ep.startswith("wss://") else "TLS off"
        rows.append(("websocket", f"{ep} ({tls})"))
    elif getattr(core, "observer_ws", None) is not None:
        rows.append(("websocket", f"off; observers (CLI, dashboard, HTTP) on {core.observer_ws.endpoint}"))
    else:
        rows.append(("websocket", "off (no CLI or HTTP access to this node: --observer-port PORT gives one)"))
    if cfg.peers:
        verify = f"verified against {cfg.ssl_cafile}" if cfg.ssl_cafile else "verified against the system CAs"
        tls_peers = any(p.startswith("wss://") for p in cfg.peers)
        rows.append(("peers", ", ".join(safetext.mask_secrets(p) for p in cfg.peers) + " (dialling" + (f"; wss:// {verify}" if tls_peers else "")
                     + ")"))
    redis = core.redis
    if redis is not None and getattr(redis, "connected", False):
        rows.append(("redis", f"connected {settings.display_value('redis_url', cfg.redis_url)}"))
    elif redis is not None:
        rows.append(("redis", f"NOT connected: {settings.display_value('redis_url', cfg.redis_url)} "
                              "unreachable (retrying in the background)"))
    else:
        rows.append(("redis", "off"))
    nats = getattr(core, "nats", None)
    if cfg.nats_url:
        if nats is not None and getattr(nats, "connected", False):
            reached = nats.info().get("server") if hasattr(nats, "info") else None
            rows.append(("nats", f"connected {reached or settings.display_value('nats_url', cfg.nats_url)}"))
        elif nats is not None:
            rows.append(("nats", f"NOT connected: {settings.display_value('nats_url', cfg.nats_url)}"))
        else:
            rows.append(("nats", "off" if not cfg.enable_nats else "not started"))
    try:
        links = core.get_mesh_status().get("links") or []
    except Exception:  # the banner never stops a node that started
        links = []
    kinds = sorted({str(lk.get("transport") or "?") for lk in links if isinstance(lk, dict)})
    rows.append(("links", f"{len(links)} open" + (f" ({', '.join(kinds)})" if kinds else "")))
    eventlog = getattr(core, "eventlog", None)
    if eventlog is not None:
        where = cfg.persistence_url and settings.display_value("persistence_url", cfg.persistence_url)
        error = getattr(eventlog, "error", None)
        if error:  # the store as the running node found it, not as configured
            rows.append(("persistence", f"NOT writing: {where or cfg.persistence_path}: {error} (the node runs "
                                        "on; events are counted as dropped and it keeps retrying)"))
        else:
            rows.append(("persistence", f"on: {where or cfg.persistence_path}"))
    elif cfg.persistence_path or cfg.persistence_url:
        rows.append(("persistence", "NOT running"))
    else:
        rows.append(("persistence", "off"))
    rows.append(("build", _build_info()))
    if ident is not None:
        rows.append(("identity", _identity_row(ident, res)))
    rows.append(("config", res.file or "no file (defaults, environment and flags)"))
    return [f"spiralfast {__version__} node {core.node_id}"] + [f"  {k:<12}{v}" for k, v in rows]


def _identity_row(ident: identity.Identity, res: settings.Resolved) -> str:
    """Where the node id came from, so a restart's id is no surprise."""
    if ident.origin == "setting":
        return f"node_id from {res.sources.get('node_id', 'the settings')}"
    if ident.origin == "file":
        return f"kept in {ident.path}"
    if ident.origin == "new":
        return f"new, kept in {ident.path} (the same id at the next start)"
    return "new at each start (not kept: see the warning above)"


def _writable_dir(path: Path) -> bool:
    """Whether files can be made in directory ``path`` (made now if missing)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _start_node(kw: dict[str, Any]) -> None:
    from .._log import setup_logging
    from ..node.core import MeshCore

    try:
        res = _resolve(kw)
        cfg = res.config
        formatter = setup_logging(res.log_level, res.log_format)
        for w in res.warnings:
            logging.getLogger("spiralfast.cli").warning("%s", w)
        _check_tls(cfg)
        if cfg.enable_websocket:
            _check_port(cfg.websocket_host, cfg.websocket_port)
        # One identity per data directory and port (only once the checks above passed, so a
        # start refused for them leaves nothing behind): without node_id the node takes the
        # id kept there for its port, and a lock says whether a live node already holds it.
        data_dir = Path(res.data_dir)
        slot = str(cfg.websocket_port) if cfg.enable_websocket and cfg.websocket_port else None
        ident = identity.establish(cfg.node_id, data_dir, slot)
        cfg.node_id = ident.node_id
        lock = identity.NodeLock.acquire(data_dir, ident.node_id, ident.path)
        if cfg.key_path is None and ident.origin != "fresh" and _writable_dir(data_dir):
            # the node's own Ed25519 key, kept 0600 beside its identity (a node whose id is new
            # at each start, or whose data directory cannot be written, gets a key per start)
            cfg.key_path = str(data_dir / f"{identity.safe_name(ident.node_id)}.key")
        if ident.note:
            logging.getLogger("spiralfast.cli").warning("%s", ident.note)
        if not kw.get("no_db") and cfg.persistence_path is None and cfg.persistence_url is None:
            # The node keeps its mesh events by default: a file named after its id in its
            # data directory (--db PATH elsewhere, --no-db for none).
            cfg.persistence_path = str(data_dir / f"{identity.safe_name(ident.node_id)}.db")
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    except identity.IdentityError as exc:
        raise _fail(str(exc), 1) from None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None

    async def main() -> int:
        want_ws = cfg.enable_websocket
        # Signals first: a SIGINT that arrives while the banner is printed stops cleanly.
        # A plain handler that wakes the loop itself, not loop.add_signal_handler: under
        # load uvloop sometimes lost that dispatch while Redis was reconnecting (SIGINT
        # caught, the node ran on).  The tick bounds how long a caught signal can wait
        # for the interpreter to run its handler.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if stop.is_set():  # a second signal while stopping: leave now
                os.write(2, b"error: second signal while stopping; exiting without a clean stop\n")
                os._exit(130)
            loop.call_soon_threadsafe(stop.set)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.5)

        ticker = asyncio.ensure_future(tick())
        core = MeshCore(cfg)
        if hasattr(formatter, "node_id"):
            formatter.node_id = core.node_id
        try:
            await core.start()
        except (SpiralError, OSError) as exc:
            await core.stop()
            sys.stderr.write(f"error: node did not start: {reason(exc)}\n")
            return 1
        if want_ws and core.ws is None:
            await core.stop()
            sys.stderr.write(f"error: cannot listen on {cfg.websocket_host}:{cfg.websocket_port} "
                             "(port in use or not permitted)\n")
            return 1
        if lock is not None:
            lock.describe(core.local_node.websocket_endpoint or (f"nats {settings.display_value('nats_url', cfg.nats_url)}"
                                                                  if cfg.nats_url else None))
        for line in _banner(core, res, ident):
            print(line, flush=True)

        async def id_watch() -> None:
            # The mesh says another live process holds this id (see NodeHost.id_conflict).
            while core.id_taken is None:
                await asyncio.sleep(0.1)

        stopping = asyncio.ensure_future(stop.wait())
        watching = asyncio.ensure_future(id_watch())
        await asyncio.wait((stopping, watching), return_when=asyncio.FIRST_COMPLETED)
        for t in (stopping, watching):
            t.cancel()
        ticker.cancel()
        taken = core.id_taken
        try:
            await asyncio.wait_for(core.stop(), STOP_TIMEOUT)
        except TimeoutError:
            sys.stderr.write(f"error: node did not stop within {STOP_TIMEOUT:g}s; exiting without a clean stop\n")
            return 1
        if taken is not None:
            sys.stderr.write(f"error: node id {core.node_id} is already held by a live node ({_one_line(taken)}); "
                             "give this node its own --node-id or --data-dir\n")
            sys.stderr.flush()
            return 1
        print("stopped", flush=True)
        return 0

    raise typer.Exit(_run(main))


@_with_setting_flags()
def mesh_start(**kw: Any) -> None:
    """Run a node in the foreground until SIGINT/SIGTERM.

    Every setting can also come from the TOML file (--config, or ./spiralfast.toml)
    and from SPIRALFAST_<SETTING> environment variables; flags win.  See
    'spiralfast config show' for the effective values and their sources.
    """
    _start_node(kw)


@_with_setting_flags([inspect.Parameter(
    "mesh", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--mesh", help="Start the mesh node (the old way; required)."),
)])
def ritual_start(**kw: Any) -> None:
    """Start the same node as 'mesh start' (needs --mesh)."""
    if not kw.get("mesh"):
        raise _fail("only 'ritual start --mesh' is supported", 2)
    _start_node(kw)
