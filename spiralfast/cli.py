"""Command line: ``spiralfast`` / ``spiralcodex`` / ``python -m spiralfast``.

``mesh start`` runs a node in the foreground; ``mesh status|nodes|events|publish|state``
inspect a running node over its own port as an observer (never a mesh member);
``config show`` prints the effective configuration and where each value came from.
Node settings come in layers (see :mod:`spiralfast.settings`): defaults < TOML file <
``SPIRALFAST_*`` environment variables < flags.

Errors, usage errors included, are one line on stderr (``error: ...``) and a non-zero
exit (2 for usage and configuration errors, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import typer

from . import safetext, settings
from ._version import __version__
from .cli_history import mesh_history
from .cli_tasks import mesh_submit, mesh_tasks
from .errors import AuthError, ConfigError, HandshakeError, LinkError, ProtocolError, SpiralError
from .nodestate import node_state as status_label

# Plain (click-style) help: compact at 80 columns, greppable, no boxes.
app = typer.Typer(no_args_is_help=True, add_completion=True, help="spiralfast mesh node and tools.",
                  rich_markup_mode=None)
mesh_app = typer.Typer(no_args_is_help=True, help="Run or inspect a mesh node.", rich_markup_mode=None)
ritual_app = typer.Typer(no_args_is_help=True, help="The old spiralcodex entry point.", rich_markup_mode=None)
config_app = typer.Typer(no_args_is_help=True, help="Show the node configuration.", rich_markup_mode=None)
app.add_typer(mesh_app, name="mesh")
app.add_typer(ritual_app, name="ritual")
app.add_typer(config_app, name="config")

NODE_HELP = ("WebSocket URL of the node to inspect (default: from the config file, else ws://127.0.0.1:8765); "
             "a node without WebSocket links answers on its --observer-port.")
TOKEN_HELP = "Shared mesh secret of the node (default: auth_token from the config file or environment)."
CAFILE_HELP = ("CA bundle to check a wss:// node's certificate against (default: ssl_cafile from the config "
               "file, or SPIRALFAST_CAFILE).")
JSON_HELP = "Machine-readable output (JSON) on stdout."
TIMEOUT_HELP = "Seconds to wait for the node to answer."
CONFIG_HELP = "TOML configuration file (default: ./spiralfast.toml when it exists; env SPIRALFAST_CONFIG)."
DEFAULT_NODE = "ws://127.0.0.1:8765"
#: Seconds ``mesh start`` waits for a clean stop after SIGINT/SIGTERM before it gives up.
STOP_TIMEOUT = 15.0


class CliError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def _fail(msg: str, code: int = 1) -> typer.Exit:
    # Secrets masked; control characters (from a node's answer, a URL) shown as escapes.
    msg = "\n".join(safetext.clean(line) for line in safetext.mask_secrets(msg).split("\n"))
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def reason(exc: BaseException) -> str:
    """A non-empty, one-line reason for ``exc`` (its message, else its type and cause)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        text = f"{exc.reason}" + (f" ({exc.library})" if getattr(exc, "library", None) else "")
    if not text:
        text = type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        if cause is not None and cause is not exc:
            text += f": {reason(cause)}"
    return text


def _console() -> Any:
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty())


def _run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    # Only uvloop's own absence falls back: an ImportError raised *inside* the node (a
    # missing optional dependency) must not run the whole node a second time.
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())


def _emit_json(obj: Any) -> None:
    # Exact JSON (C0 escaped by orjson; DEL, C1 and bidi controls as \u escapes: same values).
    sys.stdout.write(safetext.json_safe(orjson.dumps(obj, default=str).decode()) + "\n")
    sys.stdout.flush()


def _build_info() -> str:
    """``compiled`` or ``pure Python (why)``: what the hot paths really run on."""
    from . import _native, codec, event, fastpath, ring

    if all(m.COMPILED for m in (codec, ring, fastpath, event)):
        return "compiled"
    if _native.PUREPYTHON_REQUESTED:
        return "pure Python (SPIRALFAST_PUREPYTHON=1)"
    return "pure Python (compiled extensions unavailable)"


def _version_callback(value: bool) -> None:
    if value:
        print(f"spiralfast {__version__} ({_build_info()}, Python {sys.version.split()[0]})")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """spiralfast mesh node and tools."""


# -- node settings as flags --------------------------------------------------------------

#: Flags of ``mesh start`` / ``ritual start`` / ``config show`` that are not settings.
_NOT_SETTINGS = ("config", "no_db", "mesh", "as_json", "as_toml")


def _metavar(spec: settings.FieldSpec) -> str:
    n = spec.name
    if spec.kind == "interop":
        return "auto|true|false"
    if n == "persist_events":
        return "mesh|all|TYPE,..."
    if n.endswith("_url") or n == "peers":
        return "URL"
    if n.endswith(("file", "path")):
        return "PATH"
    if n.endswith("port"):
        return "PORT"
    if spec.kind == "list":
        return "NAME"
    if spec.kind == "float":
        return "NUMBER" if n.startswith("rate") or n.endswith(("days", "hours")) else "SECONDS"
    if spec.kind == "int":
        return "BYTES" if n.endswith(("size", "bytes")) else "N"
    return "TEXT"


def _sentence(text: str) -> str:
    """Capitalise a help text's first word, unless it is a literal (``ws://``, ``node_id``)."""
    text = text.strip()
    first = text.split(" ", 1)[0]
    if not text or not first.isalpha() or not first.islower():
        return text
    return text[:1].upper() + text[1:]


def _setting_params() -> tuple[list[inspect.Parameter], dict[str, str]]:
    """One flag per MeshConfig field (from :func:`settings.field_specs`), plus
    ``--config``, ``--no-db``, ``--log-level``, ``--log-format`` and ``--data-dir``."""
    params: list[inspect.Parameter] = []
    flag_names: dict[str, str] = {}
    kw = inspect.Parameter.KEYWORD_ONLY
    for spec in settings.field_specs():
        names = spec.flags
        help_text = _sentence(spec.help)
        ann: Any
        if spec.kind == "bool":
            opt = typer.Option(None, *names, help=help_text, show_default=False)
            ann = bool | None
            flag_names[spec.name] = names[0]
        else:
            if spec.kind in ("list", "str_or_list"):
                ann = list[str] | None
                help_text += " Repeatable; commas separate values."
            elif spec.kind == "int":
                ann = int | None
            elif spec.kind == "float":
                ann = float | None
            else:
                ann = str | None
            opt = typer.Option(None, *names, help=help_text, metavar=_metavar(spec), show_default=False)
            flag_names[spec.name] = "/".join(names)
        params.append(inspect.Parameter(spec.name, kw, default=opt, annotation=ann))
    params += [
        inspect.Parameter("no_db", kw, annotation=bool, default=typer.Option(
            False, "--no-db", help="Turn persistence off (whatever the file or environment say).")),
        inspect.Parameter("log_level", kw, annotation=str | None, default=typer.Option(
            None, "--log-level", metavar="LEVEL", show_default=False,
            help="debug, info, warning, error or critical (default info).")),
        inspect.Parameter("log_format", kw, annotation=str | None, default=typer.Option(
            None, "--log-format", metavar="FORMAT", show_default=False,
            help="text or json (JSON lines carry node_id; default text).")),
        inspect.Parameter("data_dir", kw, annotation=str | None, default=typer.Option(
            None, "--data-dir", metavar="PATH", show_default=False,
            help="The node's data directory: without --node-id the node keeps its id there (file node_id.<port>, or node_id "
                 "for a node on no fixed port, made on the first start) and its default event log <node id>.db; one running node per id "
                 "and directory (default $XDG_DATA_HOME/spiralfast, i.e. ~/.local/share/spiralfast; "
                 "env SPIRALFAST_DATA_DIR).")),
        inspect.Parameter("config", kw, annotation=str | None, default=typer.Option(
            None, "--config", "-c", metavar="PATH", show_default=False, help=CONFIG_HELP)),
    ]
    return params, flag_names


def _with_setting_flags(
    extra: list[inspect.Parameter] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give ``fn(**kw)`` a signature with every setting flag (plus ``extra`` first), so a
    field added to MeshConfig gets its flag without a change here."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        params, _ = _setting_params()
        params = list(extra or []) + params
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return deco


def _resolve(kw: dict[str, Any]) -> settings.Resolved:
    """Turn the flags of a command into a :class:`settings.Resolved` (raises CliError)."""
    specs = settings.specs_by_name()
    _, flag_names = _setting_params()
    flags: dict[str, Any] = {}
    for name, value in kw.items():
        if name in _NOT_SETTINGS or value is None:
            continue
        spec = specs.get(name)
        if spec is not None and spec.kind in ("list", "str_or_list"):
            if not value:
                continue
            flags[name] = settings.parse_text(spec, ",".join(value), f"flag {flag_names[name]}")
        elif spec is not None and spec.kind == "interop":
            flags[name] = settings.parse_text(spec, str(value), f"flag {flag_names[name]}")
        else:
            flags[name] = value
    if "redis_url" in flags and "enable_redis" not in flags:
        flags["enable_redis"] = True  # --redis URL means: use this Redis
        flag_names["enable_redis"] = flag_names["redis_url"]
    if flags.get("redis_url") is not None and flags.get("enable_redis") is False:
        raise CliError("--redis URL and --no-redis contradict each other", 2)
    if kw.get("no_db"):
        if flags.get("persistence_path") or flags.get("persistence_url"):
            raise CliError("--db/--persistence-path and --no-db contradict each other", 2)
        flags["persistence_path"] = settings.NONE
        flags["persistence_url"] = settings.NONE
        flag_names["persistence_path"] = flag_names["persistence_url"] = "--no-db"
    for k in ("log_level", "log_format", "data_dir"):
        if kw.get(k) is not None:
            flags[k] = kw[k]
    try:
        return settings.resolve(flags, kw.get("config"), flag_names=flag_names)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


# -- running a node --------------------------------------------------------------------


def _check_tls(cfg: Any) -> None:
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


def _banner(core: Any, res: settings.Resolved, ident: Any = None) -> list[str]:
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


def _identity_row(ident: Any, res: settings.Resolved) -> str:
    """Where the node id came from, so a restart's id is no surprise."""
    if ident.origin == "setting":
        return f"node_id from {res.sources.get('node_id', 'the settings')}"
    if ident.origin == "file":
        return f"kept in {ident.path}"
    if ident.origin == "new":
        return f"new, kept in {ident.path} (the same id at the next start)"
    return "new at each start (not kept: see the warning above)"


def _writable_dir(path: Any) -> bool:
    """Whether files can be made in directory ``path`` (made now if missing)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _start_node(kw: dict[str, Any]) -> None:
    from pathlib import Path

    from . import cli_identity
    from ._log import setup_logging
    from .core import MeshCore

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
        ident = cli_identity.establish(cfg.node_id, data_dir, slot)
        cfg.node_id = ident.node_id
        lock = cli_identity.NodeLock.acquire(data_dir, ident.node_id, ident.path)
        if cfg.key_path is None and ident.origin != "fresh" and _writable_dir(data_dir):
            # the node's own Ed25519 key, kept 0600 beside its identity (a node whose id is new
            # at each start, or whose data directory cannot be written, gets a key per start)
            cfg.key_path = str(data_dir / f"{cli_identity.safe_name(ident.node_id)}.key")
        if ident.note:
            logging.getLogger("spiralfast.cli").warning("%s", ident.note)
        if not kw.get("no_db") and cfg.persistence_path is None and cfg.persistence_url is None:
            # The node keeps its mesh events by default: a file named after its id in its
            # data directory (--db PATH elsewhere, --no-db for none).
            cfg.persistence_path = str(data_dir / f"{cli_identity.safe_name(ident.node_id)}.db")
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    except cli_identity.IdentityError as exc:
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

        def on_signal(signum: int, frame: Any) -> None:
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


@mesh_app.command("start")
@_with_setting_flags()
def mesh_start(**kw: Any) -> None:
    """Run a node in the foreground until SIGINT/SIGTERM.

    Every setting can also come from the TOML file (--config, or ./spiralfast.toml)
    and from SPIRALFAST_<SETTING> environment variables; flags win.  See
    'spiralfast config show' for the effective values and their sources.
    """
    _start_node(kw)


@ritual_app.command("start")
@_with_setting_flags([inspect.Parameter(
    "mesh", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--mesh", help="Start the mesh node (the old way; required)."),
)])
def ritual_start(**kw: Any) -> None:
    """Start the same node as 'mesh start' (needs --mesh)."""
    if not kw.get("mesh"):
        raise _fail("only 'ritual start --mesh' is supported", 2)
    _start_node(kw)


@config_app.command("show")
@_with_setting_flags([
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--json", help=JSON_HELP)),
    inspect.Parameter("as_toml", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--toml", help="Print the settings as a TOML file to start from "
                                                                 "(secrets commented out).")),
])
def config_show(**kw: Any) -> None:
    """Print the effective node configuration and where each value came from.

    Takes the same flags as 'mesh start'.  The token is masked.
    """
    try:
        res = _resolve(kw)
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    if kw.get("as_json"):
        _emit_json({
            "file": res.file,
            "settings": {n: {"value": settings.jsonable_value(n, v), "source": res.sources[n]}
                         for n, v in res.values.items()},
        })
        return
    if kw.get("as_toml"):
        sys.stdout.write(settings.to_toml(res))
        return
    for w in res.warnings:
        sys.stderr.write(f"warning: {w}\n")
    rows = res.show()
    w_name = max(len(n) for n, _, _ in rows)
    w_value = min(48, max(len(v) for _, v, _ in rows))
    print(f"# configuration file: {res.file or 'none'}")
    print(f"{'setting':<{w_name}}  {'value':<{w_value}}  source")
    for name, value, source in rows:
        print(f"{name:<{w_name}}  {value:<{w_value}}  {source}")


# -- inspecting a node -----------------------------------------------------------------


def _quiet_transport_logs() -> None:
    """The TLS and WebSocket layers log whole tracebacks for a failed connect; the CLI
    reports the reason itself, in one line."""
    for name in ("asyncio", "picows"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.CRITICAL + 1)
        lg.propagate = False


def _inspect_defaults(node: str | None, token: str | None, cafile: str | None) -> tuple[str, str | None, str | None]:
    """Fill --node / --token / --cafile from the config file and environment."""
    if node is not None and token is not None and cafile is not None:
        return node, token, cafile
    try:
        res = settings.resolve({})
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    cfg = res.config
    if node is None:
        host = cfg.websocket_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "wss" if cfg.ssl_certfile else "ws"
        port = cfg.observer_port if not cfg.enable_websocket and cfg.observer_port else cfg.websocket_port
        node = f"{scheme}://{host}:{port}"
    return node, token if token is not None else cfg.auth_token, cafile if cafile is not None else cfg.ssl_cafile


def _with_client(node: str | None, token: str | None, fn: Callable[[Any], Awaitable[Any]],
                 cafile: str | None = None, timeout: float = 10.0) -> Any:
    """Run ``fn(client)`` against ``node``; every failure ends in one line with a reason."""
    from .client import ObserverClient

    node, token, cafile = _inspect_defaults(node, token, cafile)
    if not (node.startswith("ws://") or node.startswith("wss://")):
        raise _fail(f"bad node URL {node!r} (expected ws://host:port or wss://host:port)", 2)
    if timeout <= 0:
        raise _fail(f"--timeout must be a positive number of seconds, got {timeout}", 2)
    _quiet_transport_logs()

    async def main() -> Any:
        client = await ObserverClient.connect(node, token, timeout=min(timeout, 10.0), cafile=cafile)
        client.default_timeout = timeout
        try:
            return await fn(client)
        finally:
            client.close()

    try:
        return _run(main)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    except AuthError as exc:
        raise _fail(f"{reason(exc)} (node {node})") from None
    except (LinkError, HandshakeError, ProtocolError, SpiralError) as exc:
        raise _fail(reason(exc)) from None
    except TimeoutError:
        raise _fail(f"node at {node} did not answer within {timeout:g}s (overloaded, or not a spiralfast node?)") \
            from None
    except ssl.SSLError as exc:
        raise _fail(f"TLS with {node} failed: {reason(exc)}") from None
    except OSError as exc:
        raise _fail(f"cannot reach node at {node}: {reason(exc)}") from None


def _status_table(st: dict[str, Any]) -> Any:
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


def _nodes_table(nodes: list[dict[str, Any]]) -> Any:
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


# Options shared by the inspection commands.
def _node_opt() -> Any:
    return typer.Option(None, "--node", metavar="URL", help=NODE_HELP, show_default=False)


def _token_opt() -> Any:
    return typer.Option(None, "--token", metavar="SECRET", help=TOKEN_HELP, show_default=False)


def _cafile_opt() -> Any:
    return typer.Option(None, "--cafile", metavar="PATH", help=CAFILE_HELP, show_default=False)


def _json_opt(help_text: str = JSON_HELP) -> Any:
    return typer.Option(False, "--json", help=help_text)


def _timeout_opt() -> Any:
    return typer.Option(10.0, "--timeout", metavar="SECONDS", help=TIMEOUT_HELP)


@mesh_app.command("status")
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

        async def json_lines(c: Any) -> None:
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


@mesh_app.command("nodes")
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


@mesh_app.command("events")
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
    printed: dict[Any, None] = {}  # keys of the envelopes printed lately (insertion-ordered, bounded)

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

    async def run(c: Any) -> None:
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


def split_types(types: list[str]) -> list[str]:
    """``--type a,b --type c`` -> ``["a", "b", "c"]`` (as the HTTP API reads commas)."""
    out = [t.strip() for v in types for t in v.split(",") if t.strip()]
    if types and not out:
        raise _fail("--type needs an event type name", 2)
    return out


def _note(msg: str) -> None:
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()


async def _reconnect(node: str, token: str | None, cafile: str | None, timeout: float) -> Any:
    """A new observer connection to ``node``, retried with back-off until it answers.
    A refusal that a retry cannot fix (the token) ends the command."""
    from .client import ObserverClient

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


def _read_data(data: str) -> Any:
    """DATA_JSON as given, ``-`` for stdin or ``@path`` for a file; parsed as JSON."""
    if data == "-":
        raw: bytes | str = sys.stdin.buffer.read()
        what = "data from stdin"
    elif data.startswith("@"):
        path = data[1:]
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read data file {path}: {exc.strerror or reason(exc)}", 2) from None
        what = f"data file {path}"
    else:
        raw, what = data, "DATA_JSON"
    if not raw.strip():
        raise CliError(f"{what} is empty (give a JSON value, e.g. '{{}}')", 2)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", 2) from None


@mesh_app.command("publish")
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


@mesh_app.command("state")
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

        async def get(c: Any) -> Any:
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


@app.command("bench")
def bench(
    transport: str = typer.Option("ws", "--transport", metavar="ws|redis|nats", help="ws, redis or nats."),
    events: int = typer.Option(200_000, "--events", min=1, metavar="N", help="Events in the throughput run."),
    rate: int = typer.Option(10_000, "--rate", min=0, metavar="N",
                             help="Events/s of the paced latency run (0: skip it)."),
    redis: str | None = typer.Option(None, "--redis", metavar="URL",
                                     help="Redis URL for --transport redis (default redis://127.0.0.1:6379/0)."),
    nats: str | None = typer.Option(None, "--nats", metavar="URL",
                                    help="NATS URL for --transport nats (default nats://127.0.0.1:4222)."),
    handler: str = typer.Option("async", "--handler", metavar="async|plain",
                                help="The receiver's handler: an async def (default) or a plain function."),
    as_json: bool = _json_opt(),
) -> None:
    """Two-process benchmark: events/s, then p50/p99 latency.

    The user's path through the public API: default settings, an async def handler (or
    --handler plain) and about 100 bytes of data per event.  Events/s from the first send
    to the last receipt as fast as the sender can go, then p50/p99 latency at a paced rate
    (like 'nats bench').  The receiver is a child process, never left behind.
    """
    from .benchmark import run_bench

    if transport not in ("ws", "redis", "nats"):
        raise _fail(f"--transport must be ws, redis or nats, got {transport!r}", 2)
    if handler not in ("async", "plain"):
        raise _fail(f"--handler must be async or plain, got {handler!r}", 2)
    _quiet_transport_logs()
    try:
        res = run_bench(transport, events, 0, redis_url=redis, handler=handler, nats_url=nats)
        if rate:
            paced = run_bench(transport, max(1, min(events, rate * 2)), rate, redis_url=redis, handler=handler,
                              nats_url=nats)
            res.update({"latency_rate": rate, "latency_events": paced["events"], "latency_lost": paced["lost"],
                        "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"]})
    except ConfigError as exc:
        raise _fail(reason(exc), 2) from None
    except (SpiralError, RuntimeError, OSError) as exc:
        raise _fail(reason(exc)) from None
    if as_json:
        _emit_json(res)
    else:
        for k, v in res.items():
            print(f"{k:>16}: {safetext.clean(safetext.mask_secrets(v))}")


@app.command("completion")
def completion(
    shell: str = typer.Argument(..., metavar="SHELL", help="bash, zsh, fish or powershell."),
) -> None:
    """Print the shell completion script for SHELL.

    For example: eval "$(spiralfast completion bash)"
    """
    from typer._completion_shared import get_completion_script

    shells = ("bash", "zsh", "fish", "powershell", "pwsh")
    if shell not in shells:
        raise _fail(f"unknown shell {shell!r} (bash, zsh, fish or powershell)", 2)
    prog = os.path.basename(sys.argv[0]) if not sys.argv[0].endswith("__main__.py") else "spiralfast"
    if prog not in ("spiralfast", "spiralcodex"):
        prog = "spiralfast"
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    script = get_completion_script(prog_name=prog, complete_var=var, shell=shell)
    sys.stdout.write(script if script.endswith("\n") else script + "\n")


# -- entry point -----------------------------------------------------------------------


def _tidy_help(cmd: Any) -> None:
    """Flags show no type in help (no ``--json <bool>``); recurse into groups."""
    from typer import _click

    help_opt = cmd.get_help_option(_click.Context(cmd))
    for p in [*getattr(cmd, "params", []), help_opt]:
        if p is not None and getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    for sub in getattr(cmd, "commands", {}).values():
        _tidy_help(sub)


mesh_app.command("history")(mesh_history)  # spiralfast/cli_history.py
mesh_app.command("tasks")(mesh_tasks)  # spiralfast/cli_tasks.py
mesh_app.command("submit")(mesh_submit)  # spiralfast/cli_tasks.py


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def main(argv: list[str] | None = None) -> None:
    """Run the command line; usage errors become one ``error:`` line and exit 2."""
    from typer import _click

    cmd = typer.main.get_command(app)
    _tidy_help(cmd)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "spiralfast"
    if prog == "__main__.py":
        prog = "python -m spiralfast"
    try:
        rv = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:
        text = exc.format_message()
        if text.strip():  # typer's rich help prints itself and leaves this empty
            sys.stdout.write(text + "\n")
        sys.exit(exc.exit_code)
    except _click.exceptions.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        sys.stderr.write(f"error: {_one_line(exc.format_message())}{where}\n")
        sys.exit(exc.exit_code)
    except _click.exceptions.ClickException as exc:
        sys.stderr.write(f"error: {_one_line(exc.format_message())}\n")
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigError as exc:
        sys.stderr.write(f"error: {reason(exc)}\n")
        sys.exit(2)
    except SpiralError as exc:
        sys.stderr.write(f"error: {reason(exc)}\n")
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("SPIRALFAST_DEBUG", "") not in ("", "0"):
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {reason(exc)} "
                         "(SPIRALFAST_DEBUG=1 shows the traceback)\n")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
