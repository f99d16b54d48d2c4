"""What every command of the command line shares: one-line errors, output (JSON and
terminal text, escaped through :mod:`spiralfast.safetext`), the event loop, the options of
the inspection commands and the observer connection to a running node.

This module imports no command module: the command modules import it, and
:mod:`spiralfast.cli.app` imports them to register their commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson
import typer

from .. import safetext
from ..errors import AuthError, ConfigError, HandshakeError, LinkError, ProtocolError, SpiralError
from ..node import settings

if TYPE_CHECKING:
    from rich.console import Console

    from ..client import ObserverClient

T = TypeVar("T")

NODE_HELP = ("WebSocket URL of the node to inspect (default: from the config file, else ws://127.0.0.1:8765); "
             "a node without WebSocket links answers on its --observer-port.")
TOKEN_HELP = "Shared mesh secret of the node (default: auth_token from the config file or environment)."
CAFILE_HELP = ("CA bundle to check a wss:// node's certificate against (default: ssl_cafile from the config "
               "file, or SPIRALFAST_CAFILE).")
JSON_HELP = "Machine-readable output (JSON) on stdout."
TIMEOUT_HELP = "Seconds to wait for the node to answer."
CONFIG_HELP = "TOML configuration file (default: ./spiralfast.toml when it exists; env SPIRALFAST_CONFIG)."
DEFAULT_NODE = "ws://127.0.0.1:8765"


class CliError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def _fail(msg: str, code: int = 1) -> NoReturn:
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


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _note(msg: str) -> None:
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()


def _console() -> Console:
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty())


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # Only uvloop's own absence falls back: an ImportError raised *inside* the node (a
    # missing optional dependency) must not run the whole node a second time.
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro_fn())
    result: T = uvloop.run(coro_fn())
    return result


def _emit_json(obj: object) -> None:
    # Exact JSON (C0 escaped by orjson; DEL, C1 and bidi controls as \u escapes: same values).
    sys.stdout.write(safetext.json_safe(orjson.dumps(obj, default=str).decode()) + "\n")
    sys.stdout.flush()


def _build_info() -> str:
    """``compiled`` or ``pure Python (why)``: what the hot paths really run on."""
    from ..wire import _native, codec, event, fastpath, ring

    if all(m.COMPILED for m in (codec, ring, fastpath, event)):
        return "compiled"
    if _native.PUREPYTHON_REQUESTED:
        return "pure Python (SPIRALFAST_PUREPYTHON=1)"
    return "pure Python (compiled extensions unavailable)"


def _quiet_transport_logs() -> None:
    """The TLS and WebSocket layers log whole tracebacks for a failed connect; the CLI
    reports the reason itself, in one line."""
    for name in ("asyncio", "picows"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.CRITICAL + 1)
        lg.propagate = False


def split_types(types: list[str]) -> list[str]:
    """``--type a,b --type c`` -> ``["a", "b", "c"]`` (as the HTTP API reads commas)."""
    out = [t.strip() for v in types for t in v.split(",") if t.strip()]
    if types and not out:
        raise _fail("--type needs an event type name", 2)
    return out


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


# -- options shared by the inspection commands -------------------------------------------


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


# -- the observer connection to a running node -------------------------------------------


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


def _with_client(node: str | None, token: str | None, fn: Callable[[ObserverClient], Awaitable[T]],
                 cafile: str | None = None, timeout: float = 10.0) -> T:
    """Run ``fn(client)`` against ``node``; every failure ends in one line with a reason."""
    from ..client import ObserverClient

    node, token, cafile = _inspect_defaults(node, token, cafile)
    if not (node.startswith("ws://") or node.startswith("wss://")):
        raise _fail(f"bad node URL {node!r} (expected ws://host:port or wss://host:port)", 2)
    if timeout <= 0:
        raise _fail(f"--timeout must be a positive number of seconds, got {timeout}", 2)
    _quiet_transport_logs()

    async def main() -> T:
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
