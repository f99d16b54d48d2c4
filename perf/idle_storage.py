"""What an idle node at the default settings writes to its event log, projected to a day.

Starts NODES real node processes (``spiralfast mesh start``, default 2, the second one
joined to the first with ``--peer``) at the defaults: persistence on (SQLite,
``persist_events="mesh"``, ``sync_interval`` 10 s, ``persist_max_bytes`` 1 GiB,
``persist_metrics_retention_hours`` 24), Redis at its default URL when it answers.  Only
what the measurement needs is set: a port, a node id, the database path (``--db``, in a
temporary directory), a mesh name of its own (so nodes of other runs on a shared Redis
stay apart) and ``XDG_DATA_HOME`` (a temporary directory).

After a warm-up (WARMUP seconds: the start-up and the first full metric sample, which a
day has once) it measures node A's event log over MINUTES minutes:

- ``wal appended``: bytes appended to the WAL, i.e. everything the log wrote (each commit
  writes whole pages; a checkpoint copies them into the database later).  Read from the
  WAL file's size; if the WAL was reset (a checkpoint) meanwhile, it says so.
- ``file growth``: growth of the database file plus its WAL (storage).
- ``process write_bytes``: what the kernel counted for node A's process (``/proc/PID/io``;
  includes anything else the process wrote to disk).
- rows added to ``system_metrics``, ``mesh_event_batches`` and ``ritual_events``.

Each is projected to a day (x 86400 / seconds measured).  A day also holds 24 full metric
samples (one an hour) and 24 hourly retention passes that delete a day-old one, which a
run shorter than an hour does not contain: ``with 24 full samples`` adds 2 x 24 times what
the WAL grew during the warm-up (node A's start-up sample plus the join, so an upper bound).

Usage: python perf/idle_storage.py [--minutes 3] [--nodes 2] [--warmup 25] [--no-redis]
       [--pythonpath DIR]  (run the nodes from another source tree, e.g. an older commit
       exported with ``git archive``; not run in CI)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DAY = 86400.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(node_id: str, db: Path, mesh: str, data_home: str, peers: list[str], no_redis: bool,
               pythonpath: str | None) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    args = [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(port), "--node-id", node_id,
            "--db", str(db), "--name", mesh, "--log-level", "warning"]
    for p in peers:
        args += ["--peer", p]
    if no_redis:
        args.append("--no-redis")
    env = dict(os.environ, PYTHONUNBUFFERED="1", XDG_DATA_HOME=data_home)
    for k in list(env):
        if k.startswith("SPIRALFAST_") and k != "SPIRALFAST_PUREPYTHON":
            del env[k]  # the defaults, not this shell's settings
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=data_home)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node {node_id} exited: {proc.stderr.read() if proc.stderr else ''}")
        if line.strip().startswith("websocket"):
            return proc, port
    raise RuntimeError(f"node {node_id} did not start")


def snapshot(db: Path, pid: int, since_rowid: int = 0) -> dict[str, Any]:
    wal = Path(str(db) + "-wal")
    out: dict[str, Any] = {"t": time.monotonic(), "db": db.stat().st_size if db.exists() else 0,
                           "wal": wal.stat().st_size if wal.exists() else 0, "salt": None, "write_bytes": None}
    if wal.exists():
        with wal.open("rb") as f:
            head = f.read(32)
        out["salt"] = head[16:24].hex() if len(head) >= 24 else None
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            k, _, v = line.partition(":")
            if k == "write_bytes":
                out["write_bytes"] = int(v)
    except OSError:
        pass
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        for table in ("system_metrics", "mesh_event_batches", "ritual_events"):
            try:
                out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.OperationalError:
                out[table] = 0
        try:
            out["metric_rowid"] = conn.execute("SELECT coalesce(max(rowid), 0) FROM system_metrics").fetchone()[0]
            out["metric_names"] = sorted({r[0] for r in conn.execute(
                "SELECT metric_name FROM system_metrics WHERE rowid > ?", (since_rowid,))})
        except sqlite3.OperationalError:
            out["metric_rowid"], out["metric_names"] = 0, []
        try:
            out["metric_bytes"] = conn.execute(
                "SELECT coalesce(sum(length(metric_id) + length(timestamp) + length(metric_name) + 8 "
                "+ coalesce(length(metadata), 0)), 0) FROM system_metrics").fetchone()[0]
            out["full_sample_rows"] = conn.execute(
                "SELECT count(*) FROM system_metrics WHERE timestamp = (SELECT min(timestamp) FROM system_metrics)"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            out["metric_bytes"] = out["full_sample_rows"] = 0
    finally:
        conn.close()
    return out


def mb(x: float) -> str:
    return f"{x / 1e6:.2f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=25.0, help="seconds before measuring (default 25)")
    ap.add_argument("--no-redis", action="store_true", help="start the nodes with --no-redis")
    ap.add_argument("--pythonpath", default=None, help="run the nodes from this source tree")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="spiralfast-idle-")
    run = uuid.uuid4().hex[:8]
    mesh = "idle_" + run  # node ids and mesh of this run's own: other runs on one Redis stay apart
    procs: list[subprocess.Popen[str]] = []
    db = Path(tmp) / "A.db"
    try:
        pa, port = start_node(f"A-{run}", db, mesh, tmp, [], a.no_redis, a.pythonpath)
        procs.append(pa)
        s_start = snapshot(db, pa.pid)
        for i in range(1, a.nodes):
            p, _ = start_node(f"N{i}-{run}", Path(tmp) / f"N{i}.db", mesh, tmp, [f"ws://127.0.0.1:{port}"], a.no_redis,
                              a.pythonpath)
            procs.append(p)
        time.sleep(a.warmup)  # the start-up and the first full sample (a day has one start)
        s0 = snapshot(db, pa.pid)
        time.sleep(a.minutes * 60)
        s1 = snapshot(db, pa.pid, s0["metric_rowid"])
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a node exited during the run: {p.stderr.read() if p.stderr else ''}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    secs = s1["t"] - s0["t"]
    per_day = DAY / secs
    wal_ok = s0["salt"] == s1["salt"] and s1["wal"] >= s0["wal"]
    wal_appended = (s1["wal"] - s0["wal"]) if wal_ok else None
    growth = (s1["db"] + s1["wal"]) - (s0["db"] + s0["wal"])
    wb = (s1["write_bytes"] - s0["write_bytes"]) if s0["write_bytes"] is not None else None
    rows = {t: s1[t] - s0[t] for t in ("system_metrics", "mesh_event_batches", "ritual_events")}
    # A day's 24 full samples and 24 retention passes: each at most what the warm-up (the
    # start-up sample and the join) appended to the WAL.
    full_rows = int(s0["full_sample_rows"] or 0)
    startup = s0["wal"] - s_start["wal"] if s0["salt"] == s_start["salt"] else 0
    full_day = 2 * 24 * startup
    result = {
        "nodes": a.nodes, "seconds": round(secs, 1), "redis": not a.no_redis, "pythonpath": a.pythonpath,
        "wal_appended_bytes": wal_appended, "file_growth_bytes": growth, "process_write_bytes": wb,
        "rows_added": rows,
        "per_day": {
            "wal_appended": None if wal_appended is None else round(wal_appended * per_day),
            "wal_appended_plus_24_full_samples": None if wal_appended is None else round(wal_appended * per_day
                                                                                           + full_day),
            "file_growth": round(growth * per_day),
            "process_write_bytes": None if wb is None else round(wb * per_day),
            "metric_rows": round(rows["system_metrics"] * per_day),
        },
        "metrics_changed": s1["metric_names"], "full_sample_rows": full_rows, "warmup_wal_appended_bytes": startup,
        "db_bytes_end": s1["db"], "wal_bytes_end": s1["wal"],
    }
    d = result["per_day"]
    print(f"node A's event log, {a.nodes} idle node(s) at the defaults, {secs:.0f} s measured:")
    print(f"  wal appended        {wal_appended if wal_appended is not None else 'n/a (WAL reset)'} bytes"
          f"  -> {mb(d['wal_appended']) if d['wal_appended'] is not None else 'n/a'} / day"
          f" ({mb(d['wal_appended_plus_24_full_samples']) if d['wal_appended'] is not None else 'n/a'}"
          f" with 24 full samples)")
    print(f"  file growth         {growth} bytes  -> {mb(d['file_growth'])} / day")
    if wb is not None:
        print(f"  process write_bytes {wb} bytes  -> {mb(d['process_write_bytes'])} / day")
    print(f"  rows added          {rows}  -> {d['metric_rows']} metric rows / day")
    print(f"  metrics stored      {', '.join(s1['metric_names']) or '-'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
