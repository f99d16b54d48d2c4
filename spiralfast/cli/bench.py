"""``spiralfast bench``: the two-process benchmark from the command line (events/s, then
p50/p99 latency).  The benchmark itself is :mod:`spiralfast.benchmark`."""

from __future__ import annotations

import typer

from .. import safetext
from ..errors import ConfigError, SpiralError
from .common import _emit_json, _fail, _json_opt, _quiet_transport_logs, reason


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
    from ..benchmark import run_bench

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
