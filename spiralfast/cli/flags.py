"""Node settings as command-line flags: one flag per :class:`~spiralfast.node.config.MeshConfig`
field (from :func:`spiralfast.node.settings.field_specs`), shared by ``mesh start``,
``ritual start`` and ``config show``, and their values turned into a resolved configuration
(defaults < TOML file < ``SPIRALFAST_*`` environment variables < flags).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import ConfigError
from ..node import settings
from .common import CONFIG_HELP, CliError

F = TypeVar("F", bound=Callable[..., Any])

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
        ann: object
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


def _with_setting_flags(extra: list[inspect.Parameter] | None = None) -> Callable[[F], F]:
    """Give ``fn(**kw)`` a signature with every setting flag (plus ``extra`` first), so a
    field added to MeshConfig gets its flag without a change here."""

    def deco(fn: F) -> F:
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
