"""Layered node configuration for the command line.

Every :class:`~spiralfast.node.config.MeshConfig` field can be set in four layers, each
overriding the one before it:

1. the field's default;
2. a TOML file: ``--config PATH``, or ``spiralfast.toml`` in the working directory;
3. ``SPIRALFAST_<FIELD>`` environment variables (``SPIRALFAST_WEBSOCKET_PORT=8766``);
4. command-line flags (``--websocket-port 8766``, or its short form ``--port``).

The fields are read from the dataclass with :func:`dataclasses.fields`, so a field
added to ``MeshConfig`` is reachable in every layer without touching this module.
Besides the ``MeshConfig`` fields, ``log_level`` and ``log_format`` can be set in the
same layers.

:func:`resolve` returns the effective configuration together with the source of every
value, which ``spiralfast config show`` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import safetext
from ..errors import ConfigError
from .config import MeshConfig

#: Environment variables start with this.
ENV_PREFIX = "SPIRALFAST_"
#: The file read from the working directory when ``--config`` is not given.
DEFAULT_FILE = "spiralfast.toml"
#: ``--config`` can also come from this variable.
CONFIG_ENV = ENV_PREFIX + "CONFIG"

#: Settings of the command line itself (not of ``MeshConfig``), with their defaults.
#: ``data_dir`` (None: :func:`default_data_dir`) holds the node's id file and its default
#: event log.
CLI_SETTINGS: dict[str, Any] = {"log_level": "info", "log_format": "text", "data_dir": None}
#: Help texts of the ``CLI_SETTINGS`` (``config show --toml`` writes them as comments).
CLI_HELP: dict[str, str] = {
    "log_level": "debug, info, warning, error or critical.",
    "log_format": "text or json (JSON lines carry node_id).",
    "data_dir": "the node's data directory: its id (file node_id.<port>, or node_id on no fixed port) "
                "and its default event log (default $XDG_DATA_HOME/spiralfast, ~/.local/share/spiralfast).",
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")

#: Short flag names and extra environment names for common fields: field -> aliases.
#: The first alias is the short flag (``--port``); every alias is also accepted as an
#: environment variable (``SPIRALFAST_PORT``), below the field's own name.
ALIASES: dict[str, tuple[str, ...]] = {
    "websocket_port": ("port",),
    "websocket_host": ("host",),
    "redis_url": ("redis",),
    "nats_url": ("nats",),
    "peers": ("peer",),
    "mesh_name": ("name",),
    "auth_token": ("token",),
    "ssl_certfile": ("certfile",),
    "ssl_keyfile": ("keyfile",),
    "ssl_cafile": ("cafile",),
    "capabilities": ("capability",),
    "shared_categories": ("shared_category",),
    "persistence_path": ("db",),
}

#: Help for the fields the MeshConfig docstring does not describe (the original ten).
#: A new field is described by its ``:param:`` entry in that docstring.
FIELD_HELP: dict[str, str] = {
    "mesh_name": "mesh name; nodes of different meshes refuse each other.",
    "websocket_port": "WebSocket port to listen on (0: any free port).",
    "redis_url": "Redis URL (redis://, rediss:// or unix://).",
    "heartbeat_interval": "seconds between heartbeats; a peer silent for 3 of them is removed.",
    "sync_interval": "seconds between state anti-entropy rounds.",
    "max_recursion_depth": "deepest recursion an event may carry.",
    "enable_redis": "use Redis (without a reachable Redis the node runs on WebSocket alone).",
    "enable_websocket": "listen for and dial WebSocket peers.",
    "ritual_channel": "Redis channel of the old JSON format.",
}

#: Fields holding file names: relative paths in a TOML file are taken relative to it.
PATH_FIELDS = frozenset({"ssl_certfile", "ssl_keyfile", "ssl_cafile", "persistence_path", "data_dir"})
#: Fields never printed in clear.
SECRET_FIELDS = frozenset({"auth_token"})
#: Secrets embedded in URLs (``redis://user:password@host``) are masked too.

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_WORDS = ("mesh", "all")

#: A flag value meaning "set this optional setting to None" (``--no-db``); a flag whose
#: value is ``None`` was not given.
NONE: Any = type("_NoneSetting", (), {"__repr__": lambda self: "NONE"})()


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is parsed: its name, kind and help text.

    ``kind`` is one of ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"list"``
    (repeatable; comma-separated in the environment), ``"interop"`` (true, false or
    auto) or ``"str_or_list"`` (one word such as ``all``, or a list).
    """

    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The long flag, e.g. ``--websocket-port``."""
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> list[str]:
        """The command-line flags: ``["--websocket-port", "--port"]``; a boolean has one
        ``--x/--no-x`` pair (``--enable-redis/--no-redis`` for ``enable_*`` fields)."""
        if self.kind == "bool":
            if self.name.startswith("enable_"):
                base = self.name[len("enable_"):].replace("_", "-")
                return [f"--enable-{base}/--no-{base}"]
            base = self.name.replace("_", "-")
            return [f"--{base}/--no-{base}"]
        return [self.flag] + ["--" + a.replace("_", "-") for a in self.aliases]

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``SPIRALFAST_WEBSOCKET_PORT``."""
        return ENV_PREFIX + self.name.upper()


@dataclass
class Resolved:
    """The outcome of :func:`resolve`."""

    config: MeshConfig
    #: setting name -> its value (MeshConfig fields and ``CLI_SETTINGS``).
    values: dict[str, Any]
    #: setting name -> ``"default"``, ``"file PATH"``, ``"env NAME"`` or ``"flag --x"``.
    sources: dict[str, str]
    #: the TOML file read, if any.
    file: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def log_level(self) -> str:
        return str(self.values["log_level"])

    @property
    def log_format(self) -> str:
        return str(self.values["log_format"])

    @property
    def data_dir(self) -> str:
        """The node's data directory (absolute)."""
        return str(self.values["data_dir"])

    def show(self) -> list[tuple[str, str, str]]:
        """``(name, value as text, source)`` rows with secrets masked."""
        return [(n, display_value(n, v), self.sources[n]) for n, v in self.values.items()]


def _field_help() -> dict[str, str]:
    """``:param name: text`` entries of the MeshConfig docstring, one line each."""
    doc = MeshConfig.__doc__ or ""
    out: dict[str, str] = {}
    for m in re.finditer(r":param ([\w /]+?):(.*?)(?=\n\s*:param |\Z)", doc, re.S):
        text = " ".join(m.group(2).split()).replace("``", "")
        for name in m.group(1).split("/"):
            out[name.strip()] = text
    return out


def _kind(hint: Any) -> tuple[str, bool]:
    """Map a type hint to (kind, optional)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _kind(rest[0])[0], optional
        names = {typing.get_origin(a) or a for a in rest}
        if names == {bool, str}:
            return "interop", optional
        if str in names and (list in names or Iterable in names):
            return "str_or_list", optional
        if names <= {int, float}:
            return "float", optional
        return "str", optional
    if origin in (list, tuple, Iterable) or hint in (list, tuple):
        return "list", False
    if hint is bool:
        return "bool", False
    if hint is int:
        return "int", False
    if hint is float:
        return "float", False
    return "str", False


def field_specs() -> list[FieldSpec]:
    """One :class:`FieldSpec` per MeshConfig field, in declaration order."""
    hints = typing.get_type_hints(MeshConfig)
    helps = _field_help()
    specs = []
    for f in dataclasses.fields(MeshConfig):
        kind, optional = _kind(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every MeshConfig field has a default
            default = None
        help_text = helps.get(f.name) or FIELD_HELP.get(f.name) or f"MeshConfig.{f.name}."
        specs.append(FieldSpec(f.name, kind, optional or default is None, default, help_text,
                               ALIASES.get(f.name, ())))
    return specs


def specs_by_name() -> dict[str, FieldSpec]:
    return {s.name: s for s in field_specs()}


def display_value(name: str, value: Any) -> str:
    """A value as ``config show`` prints it: secrets masked, lists comma-joined."""
    if value is None:
        return "-"
    if name in SECRET_FIELDS:
        return "********"
    if isinstance(value, (list, tuple)):
        return ",".join(safetext.mask_secrets(v) for v in value) or "(empty)"
    if isinstance(value, str):
        return safetext.mask_secrets(value)
    return str(value)


def jsonable_value(name: str, value: Any) -> Any:
    """A value for ``config show --json``: secrets masked, everything else as is."""
    if value is None:
        return None
    if name in SECRET_FIELDS:
        return "********"
    if isinstance(value, str):
        return safetext.mask_secrets(value)
    if isinstance(value, (list, tuple)):
        return [jsonable_value(name, v) for v in value]
    return value


def parse_text(spec: FieldSpec, raw: str, origin: str) -> Any:
    """Parse one text value (environment variable or flag) for ``spec``.

    Raises ``ConfigError`` naming ``origin`` and the expected form.
    """
    text = raw.strip()
    if spec.optional and text.lower() in ("", "none", "null"):
        return None
    kind = spec.kind
    try:
        if kind == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            return int(text.replace("_", ""))
        if kind == "float":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if kind == "interop":
            low = text.lower()
            if low == "auto":
                return "auto"
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected auto, true or false")
        if kind == "list":
            return split_list(text)
        if kind == "str_or_list":
            items = split_list(text)
            # One of the words a str-or-list field takes ("mesh", "all") stays a word.
            if len(items) == 1 and items[0] in _WORDS:
                return items[0]
            return items
    except ValueError as exc:
        raise ConfigError(f"{origin}: {raw!r} is not a valid {spec.name} ({exc})") from None
    if not text:
        raise ConfigError(f"{origin}: {spec.name} must not be empty")
    return text


def split_list(text: str) -> list[str]:
    """``a,b , c`` -> ``["a", "b", "c"]``; a JSON-style ``["a", "b"]`` works too."""
    text = text.strip()
    if text.startswith("["):
        try:
            val = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"bad list: {exc}") from None
        if not isinstance(val, list):
            raise ValueError("expected a list")
        return [str(v) for v in val]
    return [p.strip() for p in text.split(",") if p.strip()]


def _normalise_key(key: str) -> str:
    return key.strip().replace("-", "_").lower()


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML file into ``{setting: value}``; keys may use ``-`` or ``_``.

    Top-level keys are settings; a ``[mesh]`` table holds settings too and a ``[log]``
    table may hold ``level`` and ``format``.  Unknown keys are a ``ConfigError`` with a
    suggestion.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    specs = specs_by_name()
    known = set(specs) | set(CLI_SETTINGS)
    alias_of = {a: s.name for s in specs.values() for a in s.aliases}
    flat: dict[str, Any] = {}

    def take(key: str, value: Any, where: str) -> None:
        k = _normalise_key(key)
        k = alias_of.get(k, k)
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {path}: unknown setting {where}{key!r}{hint}")
        flat[k] = value

    for key, value in data.items():
        nk = _normalise_key(key)
        if nk == "mesh" and isinstance(value, dict):
            for k2, v2 in value.items():
                take(k2, v2, "mesh.")
        elif nk == "log" and isinstance(value, dict):
            for k2, v2 in value.items():
                n2 = _normalise_key(k2)
                if n2 not in ("level", "format"):
                    raise ConfigError(f"config file {path}: unknown setting log.{k2!r} (level or format)")
                flat["log_" + n2] = v2
        else:
            take(key, value, "")
    base = os.path.dirname(os.path.abspath(path))
    for k in PATH_FIELDS & set(flat):
        v = flat[k]
        if isinstance(v, str) and v and not os.path.isabs(v):
            flat[k] = os.path.normpath(os.path.join(base, os.path.expanduser(v)))
    for k, v in flat.items():
        spec = specs.get(k)
        if spec is not None and spec.kind == "float" and isinstance(v, int) and not isinstance(v, bool):
            flat[k] = float(v)
        elif spec is not None and spec.kind == "float" and isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"config file {path}: {k} = {v!r} is not a valid {k} (expected a finite number)")
    return flat


def read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """``{setting: (value, variable name)}`` from ``SPIRALFAST_*`` variables.

    A field's own name (``SPIRALFAST_SSL_CAFILE``) wins over its alias
    (``SPIRALFAST_CAFILE``).  Variables that name no setting are ignored (other
    ``SPIRALFAST_*`` variables such as ``SPIRALFAST_PUREPYTHON`` exist).
    """
    out: dict[str, tuple[Any, str]] = {}
    for spec in field_specs():
        for name in [spec.env] + [ENV_PREFIX + a.upper() for a in spec.aliases]:
            if name in env:
                out[spec.name] = (parse_text(spec, env[name], f"environment variable {name}"), name)
                break
    for key in CLI_SETTINGS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            out[key] = (env[name].strip(), name)
    return out


def resolve(
    flags: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Resolved:
    """Merge defaults < file < environment < ``flags`` and build the ``MeshConfig``.

    ``flags`` maps setting names to values given on the command line (``None`` values
    mean "not given" and are skipped); ``flag_names`` maps a setting to the flag that
    set it, for the source column.  ``config_path`` (or ``SPIRALFAST_CONFIG``) names the
    TOML file; without it ``spiralfast.toml`` in ``cwd`` is read when it exists.
    Raises ``ConfigError`` for unreadable files, unknown keys and invalid values, always
    saying where the bad value came from.
    """
    env = os.environ if env is None else env
    specs = field_specs()
    values: dict[str, Any] = {s.name: s.default for s in specs}
    values.update(CLI_SETTINGS)
    sources = dict.fromkeys(values, "default")
    path = config_path or env.get(CONFIG_ENV) or None
    if path is None:
        candidate = os.path.join(cwd or os.getcwd(), DEFAULT_FILE)
        if os.path.isfile(candidate):
            path = candidate
    if path is not None:
        path = os.path.expanduser(path)
        for k, v in read_file(path).items():
            values[k] = v
            sources[k] = f"file {path}"
    for k, (v, name) in read_env(env).items():
        values[k] = v
        sources[k] = f"env {name}"
    warnings = unknown_env_warnings(env)
    for k, v in (flags or {}).items():
        if v is None:
            continue
        if k not in values:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = None if v is NONE else v
        sources[k] = "flag " + ((flag_names or {}).get(k) or "--" + k.replace("_", "-"))
    level = str(values["log_level"]).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{_where(sources, 'log_level')}: log level must be one of "
                          f"{', '.join(LOG_LEVELS)}, got {values['log_level']!r}")
    fmt = str(values["log_format"]).lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{_where(sources, 'log_format')}: log format must be text or json, "
                          f"got {values['log_format']!r}")
    values["log_level"], values["log_format"] = level, fmt
    values["data_dir"] = _data_dir(values["data_dir"], sources, env)
    kw = {s.name: values[s.name] for s in specs}
    if isinstance(kw.get("peers"), tuple):
        kw["peers"] = list(kw["peers"])
    try:
        cfg = MeshConfig(**kw)
    except ConfigError as exc:
        raise ConfigError(_blame(str(exc), sources)) from None
    except TypeError as exc:  # a value of the wrong shape from a TOML file
        raise ConfigError(f"invalid configuration: {exc}") from None
    return Resolved(cfg, values, sources, path, warnings)


def _data_dir(value: Any, sources: dict[str, str], env: Mapping[str, str]) -> str:
    """The data directory as an absolute path; the default is the user's data directory
    (``$SPIRALCODEX_DATA_DIR``, else ``$XDG_DATA_HOME/spiralfast``)."""
    if value is None:
        if env.get("SPIRALCODEX_DATA_DIR"):
            sources["data_dir"] = "env SPIRALCODEX_DATA_DIR"
            value = env["SPIRALCODEX_DATA_DIR"]
        else:
            base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
            value = os.path.join(base, "spiralfast")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_where(sources, 'data_dir')}: data_dir must be a directory name, got {value!r}")
    return os.path.abspath(os.path.expanduser(value.strip()))


def unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    """Warnings for ``SPIRALFAST_*`` variables that look like a misspelt setting
    (``SPIRALFAST_WEBSOCKET_PROT``).  Variables that resemble no setting are left alone:
    other ``SPIRALFAST_*`` variables exist (``SPIRALFAST_PUREPYTHON``, test switches)."""
    known = {n.upper() for n in CLI_SETTINGS} | {"CONFIG", "DEBUG", "PUREPYTHON", "ANNOTATE"}
    for spec in field_specs():
        known.add(spec.name.upper())
        known.update(a.upper() for a in spec.aliases)
    out = []
    for name in sorted(env):
        rest = name[len(ENV_PREFIX):]
        if not name.startswith(ENV_PREFIX) or rest in known:
            continue
        close = difflib.get_close_matches(rest, sorted(known), n=1, cutoff=0.85)
        if close:
            out.append(f"environment variable {name} is not a setting "
                       f"(did you mean {ENV_PREFIX}{close[0]}?); ignored")
    return out


def _where(sources: Mapping[str, str], name: str) -> str:
    src = sources.get(name, "default")
    return f"{name} (from {src})" if src != "default" else name


def _blame(msg: str, sources: Mapping[str, str]) -> str:
    """Append where the field a MeshConfig error names was set."""
    for name, src in sources.items():
        if src != "default" and re.search(rf"\b{re.escape(name)}\b", msg):
            return f"{msg} (set by {src})"
    return msg


def env_documentation() -> list[tuple[str, str, str]]:
    """``(setting, environment variable(s), flag(s))`` rows, for the docs and ``--help``."""
    rows = []
    for s in field_specs():
        envs = ", ".join([s.env] + [ENV_PREFIX + a.upper() for a in s.aliases])
        flags = ", ".join(s.flags)
        rows.append((s.name, envs, flags))
    for k in CLI_SETTINGS:
        rows.append((k, ENV_PREFIX + k.upper(), "--" + k.replace("_", "-")))
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def to_toml(res: Resolved) -> str:
    """The settings of ``res`` as a TOML configuration file (what :func:`read_file` reads).

    Settings left at their default are written commented out, as are unset optional
    ones; secrets are never written (their line stays commented, with a placeholder).
    """
    lines = ["# spiralfast node configuration (spiralfast config show --toml)",
             "# Lines starting with '#' are defaults or unset; uncomment to change them.", ""]
    for s in field_specs():
        value = res.values[s.name]
        lines.append(f"# {s.help}")
        if s.name in SECRET_FIELDS:
            lines.append(f'# {s.name} = "..."    # better: {s.env} in the environment')
        elif value is None:
            lines.append(f"# {s.name} =")
        elif any(isinstance(v, str) and safetext.mask_secrets(v) != v
                 for v in (value if isinstance(value, list) else [value])):
            lines.append(f"# {s.name} = {_toml_value(jsonable_value(s.name, value))}"
                         f"    # password masked: better {s.env} in the environment")
        elif res.sources[s.name] == "default":
            lines.append(f"# {s.name} = {_toml_value(value)}")
        else:
            lines.append(f"{s.name} = {_toml_value(value)}")
        lines.append("")
    lines.append(f"# {CLI_HELP['data_dir']}")
    prefix = "# " if res.sources["data_dir"] == "default" else ""
    lines.append(f"{prefix}data_dir = {_toml_value(res.values['data_dir'])}")
    lines.append("")
    lines.append("[log]")
    for key in ("log_level", "log_format"):
        value = res.values[key]
        prefix = "# " if res.sources[key] == "default" else ""
        lines.append(f"{prefix}{key[len('log_'):]} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
