"""Command line: ``spiralfast`` / ``spiralcodex`` / ``python -m spiralfast``.

``mesh start`` runs a node in the foreground; ``mesh status|nodes|events|publish|state``
inspect a running node over its own port as an observer (never a mesh member);
``config show`` prints the effective configuration and where each value came from.
Node settings come in layers (see :mod:`spiralfast.node.settings`): defaults < TOML file <
``SPIRALFAST_*`` environment variables < flags.

Errors, usage errors included, are one line on stderr (``error: ...``) and a non-zero
exit (2 for usage and configuration errors, 1 otherwise), never a traceback.

This module holds the command tree: the typer apps, the root options, the registration of
the commands (each defined in a module of its own: :mod:`.node`, :mod:`.inspect`,
:mod:`.history`, :mod:`.tasks`, :mod:`.settings`, :mod:`.bench`) and :func:`main`.  The
command modules import :mod:`.common` and never this module.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from .._version import __version__
from ..errors import ConfigError, SpiralError
from . import bench, history, inspect, node, settings, tasks
from .common import _build_info, _fail, _one_line, reason

if TYPE_CHECKING:
    from typer import _click

# Plain (click-style) help: compact at 80 columns, greppable, no boxes.
app = typer.Typer(no_args_is_help=True, add_completion=True, help="spiralfast mesh node and tools.",
                  rich_markup_mode=None)
mesh_app = typer.Typer(no_args_is_help=True, help="Run or inspect a mesh node.", rich_markup_mode=None)
ritual_app = typer.Typer(no_args_is_help=True, help="The old spiralcodex entry point.", rich_markup_mode=None)
config_app = typer.Typer(no_args_is_help=True, help="Show the node configuration.", rich_markup_mode=None)
app.add_typer(mesh_app, name="mesh")
app.add_typer(ritual_app, name="ritual")
app.add_typer(config_app, name="config")


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


# -- the commands, in the order of the help ------------------------------------------------

mesh_app.command("start")(node.mesh_start)
ritual_app.command("start")(node.ritual_start)
config_app.command("show")(settings.config_show)
mesh_app.command("status")(inspect.mesh_status)
mesh_app.command("nodes")(inspect.mesh_nodes)
mesh_app.command("events")(inspect.mesh_events)
mesh_app.command("publish")(inspect.mesh_publish)
mesh_app.command("state")(inspect.mesh_state)
mesh_app.command("history")(history.mesh_history)
mesh_app.command("tasks")(tasks.mesh_tasks)
mesh_app.command("submit")(tasks.mesh_submit)
app.command("bench")(bench.bench)


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


def _tidy_help(cmd: _click.Command) -> None:
    """Flags show no type in help (no ``--json <bool>``); recurse into groups."""
    from typer import _click

    help_opt = cmd.get_help_option(_click.Context(cmd))
    for p in [*getattr(cmd, "params", []), help_opt]:
        if p is not None and getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    for sub in getattr(cmd, "commands", {}).values():
        _tidy_help(sub)


# -- entry point -----------------------------------------------------------------------


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
