"""``spiralfast mesh tasks`` and ``spiralfast mesh submit``: work distribution from the
command line, through a running node (as an observer, like ``mesh status``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from .common import CliError, _console, _emit_json, _fail, _read_data, _with_client

if TYPE_CHECKING:
    from rich.table import Table

    from ..client import ObserverClient

#: Extra seconds the CLI waits for a ``submit`` reply beyond the task's own timeout
#: (retries included), so the node's TaskTimeout arrives before the CLI gives up.
SUBMIT_GRACE = 5.0


def mesh_tasks(
    node: str | None = typer.Option(None, "--node", metavar="URL", show_default=False,
                                    help="Node to ask (default ws://127.0.0.1:8765)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    token: str | None = typer.Option(None, "--token", metavar="SECRET", show_default=False,
                                     help="The mesh's shared token, when it has one."),
    cafile: str | None = typer.Option(None, "--cafile", metavar="PATH", show_default=False,
                                      envvar="SPIRALFAST_CAFILE", help="CA file for wss:// nodes."),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", help="Give up after this long."),
) -> None:
    """Task types offered per node (capacity, load), and what this node ran and submitted
    (in flight, done, failed, retried, p50/p99 latency)."""
    st = _with_client(node, token, lambda c: c.query("tasks"), cafile, timeout)
    if as_json:
        _emit_json(st)
        return
    for table in tasks_tables(st):
        _console().print(table)


def tasks_tables(st: dict[str, Any]) -> list[Table]:
    """Rich tables for a ``TaskManager.status()`` dict: offers per node, then this
    node's served and submitted counts (empty sections are left out)."""
    from rich.table import Table

    from ..safetext import markup  # node ids and task types are chosen by members

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    out: list[Table] = []
    offers = Table(title="task types per node (as this node sees them)")
    for col in ("node", "task type", "capacity", "load", "in flight from here", "done", "failed", "p50 ms",
                "p99 ms"):
        offers.add_column(col)
    for nid, types in sorted((st.get("nodes") or {}).items()):
        for ttype, o in sorted(types.items()):
            offers.add_row(markup(nid), markup(ttype), str(o.get("capacity")), str(o.get("load")), str(o.get("in_flight")),
                           str(o.get("done", "-")), str(o.get("failed", "-")), ms(o.get("p50_ms")),
                           ms(o.get("p99_ms")))
    out.append(offers)
    if st.get("offered"):
        served = Table(title="served by this node")
        for col in ("task type", "capacity", "running", "queued", "done", "failed", "p50 ms", "p99 ms"):
            served.add_column(col)
        for ttype, o in sorted(st["offered"].items()):
            served.add_row(markup(ttype), str(o["capacity"]), str(o["running"]), str(o["queued"]), str(o["done"]),
                           str(o["failed"]), ms(o["p50_ms"]), ms(o["p99_ms"]))
        out.append(served)
    if st.get("submitted"):
        sub = Table(title="submitted by this node")
        for col in ("task type", "in flight", "waiting", "done", "failed", "retried", "timeouts", "p50 ms", "p99 ms"):
            sub.add_column(col)
        for ttype, o in sorted(st["submitted"].items()):
            sub.add_row(markup(ttype), str(o["in_flight"]), str(o["waiting"]), str(o["done"]), str(o["failed"]),
                        str(o["retried"]), str(o["timeouts"]), ms(o["p50_ms"]), ms(o["p99_ms"]))
        out.append(sub)
    refused = {k: st.get(k) or 0 for k in ("results_refused", "types_refused", "busy_refused", "late_replies")}
    if any(refused[k] for k in ("results_refused", "types_refused", "busy_refused")):
        ref = Table(title="refused by this node (members limited to their own affairs)")
        for col in ("results from a node not given the task", "task-type lists over the bound",
                    "tasks over a submitter's queue bound", "late replies"):
            ref.add_column(col)
        ref.add_row(*(str(v) for v in refused.values()))
        out.append(ref)
    return out


def mesh_submit(
    task_type: str = typer.Argument(..., metavar="TYPE", help="Task type some node serves."),
    payload: str = typer.Argument(..., metavar="PAYLOAD_JSON",
                                  help="The handler's argument as JSON; '-' reads stdin, '@PATH' a file."),
    timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS", help="Seconds per attempt."),
    node: str | None = typer.Option(None, "--node", metavar="URL", show_default=False,
                                    help="Node that submits it (default ws://127.0.0.1:8765)."),
    as_json: bool = typer.Option(False, "--json", help="Print the reply (result, elapsed_ms) as JSON."),
    token: str | None = typer.Option(None, "--token", metavar="SECRET", show_default=False,
                                     help="The mesh's shared token, when it has one."),
    cafile: str | None = typer.Option(None, "--cafile", metavar="PATH", show_default=False,
                                      envvar="SPIRALFAST_CAFILE", help="CA file for wss:// nodes."),
) -> None:
    """Run one task on the mesh (from that node) and print its result as JSON."""
    if not task_type.strip():
        raise _fail("task TYPE must not be empty", 2)
    if timeout <= 0:
        raise _fail(f"--timeout must be a positive number of seconds, got {timeout}", 2)
    try:
        data = _read_data(payload)
    except CliError as exc:
        raise _fail(str(exc), exc.code) from None
    wait = timeout * 3 + SUBMIT_GRACE  # the node's default: 2 retries

    async def ask(c: ObserverClient) -> Any:
        return await c.query("submit", timeout=wait, type=task_type, payload=data, timeout_s=timeout)

    res = _with_client(node, token, ask, cafile, wait)
    if as_json:
        _emit_json(res)
    else:
        _emit_json(res.get("result") if isinstance(res, dict) else res)
