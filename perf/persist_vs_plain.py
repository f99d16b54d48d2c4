"""Persistence cost, two processes, same run.

A sender process broadcasts EVENTS events as fast as the public API allows to a
receiver process whose handler counts them.  The receiver runs without persistence
(``plain``), with ``persist_events="all"`` into SQLite (``sqlite``) and, when PostgreSQL
answers, into PostgreSQL (``postgresql``, batches written with COPY).  Rounds alternate
the modes, so the noisy shared machine affects them alike.

For each run:
- receive rate: events / (last - first event seen by the handler);
- write rate: events / (first event seen -> every event committed), persisting runs;
- the writer alone: EventLog.record() of EVENTS envelopes on an idle node until committed.

``+struct`` runs hand the receive path's wire event to ``EventLog.record_event`` instead
of an envelope to an event listener (what the core would do; simulated here).

Usage: python perf/persist_vs_plain.py [EVENTS] [ROUNDS]   (default 300,000, 2; not run in CI)
Environment: SPIRALFAST_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test);
MODES=plain,sqlite,... to choose the runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

from spiralfast.node.config import MeshConfig
from spiralfast.node.core import MeshCore

PG = os.environ.get("SPIRALFAST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
#: Tolerant failure detection: a receiver busy writing must not be taken for dead.
HEARTBEAT = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _cfg(mode: str, where: str, **kw: Any) -> MeshConfig:
    cfg = MeshConfig(enable_redis=False, heartbeat_interval=HEARTBEAT, **kw)
    if mode == "sqlite":
        cfg.persistence_path = where
        cfg.persist_events = "all"
    elif mode == "postgresql":
        cfg.persistence_url = where
        cfg.persist_events = "all"
    return cfg


async def receiver(mode: str, port: int, n: int, where: str) -> None:
    struct = mode.endswith("+struct")
    mode = mode.removesuffix("+struct")
    core = MeshCore(_cfg(mode, where, node_id="rx", websocket_port=port))
    seen = 0
    first = last = 0.0
    done = asyncio.Event()

    def handler(env: dict[str, Any]) -> None:
        nonlocal seen, first, last
        seen += 1
        if seen == 1:
            first = time.perf_counter()
        if seen == n:
            last = time.perf_counter()
            done.set()

    core.register_event_handler("bench", handler)
    await core.start()
    if struct:
        # What the core gains by handing the hot paths' wire event to the event log
        # (EventLog.record_event) instead of building an envelope for a listener:
        # simulated by pointing the dispatcher's observer hook at record_event.
        core.dispatcher.push_observers = core.eventlog.record_event  # type: ignore[attr-defined]
    print("READY", flush=True)
    await done.wait()
    res: dict[str, Any] = {"received": seen, "rx_elapsed": last - first}
    if core.eventlog is not None:
        while core.eventlog.status()["written"] < core.eventlog.status()["recorded"]:
            await asyncio.sleep(0.005)
        res["write_elapsed"] = time.perf_counter() - first
        res["persistence"] = core.eventlog.status()
    print("RESULT " + json.dumps(res), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await core.stop()


def _read_result(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        if not line or line.startswith("RESULT "):
            return line


async def sender(port: int, n: int, child: subprocess.Popen[str]) -> str:
    """Send, then stay in the mesh until the receiver reports (what is still queued
    here when the sending loop ends must reach it)."""
    core = MeshCore(_cfg("plain", "", node_id="tx-" + uuid.uuid4().hex[:6], websocket_port=0,
                         peers=[f"ws://127.0.0.1:{port}"]))
    await core.start()
    while "rx" not in core.nodes:
        await asyncio.sleep(0.01)
    for i in range(n):
        await core.broadcast_event("bench", {"i": i})
    line = await asyncio.get_running_loop().run_in_executor(None, _read_result, child)
    await core.stop()
    return line


def one_run(mode: str, n: int, where: str) -> dict[str, Any]:
    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "rx", mode, str(port), str(n), where],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("READY")
        line = _run(sender(port, n, child))
        if not line:
            raise RuntimeError(f"receiver ({mode}) reported nothing")
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    res: dict[str, Any] = json.loads(line[7:])
    return res


async def writer_alone(mode: str, n: int, where: str) -> float:
    """Events/s of the event log alone: record() n envelopes, wait until committed."""
    from spiralfast.store.eventlog import EventLog

    core = MeshCore(_cfg(mode, where, node_id="w", enable_websocket=False))
    elog = EventLog(core)
    await elog.start()
    ts = datetime.now().isoformat()
    envs = [{"type": "bench", "source_node": "tx", "timestamp": ts, "data": {"i": i}, "event_id": f"tx-{i}"}
            for i in range(n)]
    t0 = time.perf_counter()
    for env in envs:
        elog.record(env)
    await elog._sync_async()
    while elog.status()["written"] < n:
        await asyncio.sleep(0.001)
    dt = time.perf_counter() - t0
    await elog.stop()
    return n / dt


def _pg_ok() -> bool:
    async def go() -> bool:
        try:
            import asyncpg

            conn = await asyncpg.connect(PG, timeout=3)
        except Exception:  # noqa: BLE001
            return False
        await conn.close()
        return True

    return bool(asyncio.run(go()))


def _drop_schema(schema: str) -> None:
    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(go())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    modes = ["plain", "sqlite", "sqlite+struct"] + (["postgresql", "postgresql+struct"] if _pg_ok() else [])
    if os.environ.get("MODES"):
        modes = os.environ["MODES"].split(",")
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n} rounds={rounds} modes={modes}")
    tmp = tempfile.mkdtemp(prefix="persist-perf-")
    schemas: list[str] = []
    try:
        for r in range(rounds):
            plain = 0.0
            for mode in modes:
                if mode.startswith("sqlite"):
                    where = os.path.join(tmp, f"r{r}-{mode}.db")
                elif mode.startswith("postgresql"):
                    schemas.append("sf_perf_" + uuid.uuid4().hex[:8])
                    where = f"{PG}?schema={schemas[-1]}"
                else:
                    where = ""
                res = one_run(mode, n, where)
                rx = res["received"] / res["rx_elapsed"]
                line = f"round {r + 1} {mode:<17}: receive {rx:>9,.0f} events/s"
                if mode == "plain":
                    plain = rx
                else:
                    wr = res["received"] / res["write_elapsed"]
                    st = res["persistence"]
                    line += (f" ({rx / plain:.0%} of plain)  written {wr:>9,.0f} events/s"
                             f"  stalls={st['stalls']} ({st['stall_seconds']} s) dropped={st['dropped']}")
                print(line, flush=True)
        for mode in [m for m in modes if m in ("sqlite", "postgresql")]:
            where = os.path.join(tmp, "alone.db") if mode == "sqlite" else f"{PG}?schema=sf_perf_alone_{uuid.uuid4().hex[:6]}"
            if mode == "postgresql":
                schemas.append(where.rsplit("=", 1)[1])
            rate = _run(writer_alone(mode, n, where))
            print(f"writer alone {mode:<10}: {rate:>9,.0f} events/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for s in schemas:
            _drop_schema(s)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rx":
        _run(receiver(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
    else:
        main()
