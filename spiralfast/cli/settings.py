"""``spiralfast config show``: the effective node configuration and where each value came
from (as a table, ``--json`` or a ``--toml`` file to start from).  It takes the flags of
``mesh start`` (:mod:`spiralfast.cli.flags`)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import typer

from ..node import settings
from .common import JSON_HELP, CliError, _emit_json, _fail
from .flags import _resolve, _with_setting_flags


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
