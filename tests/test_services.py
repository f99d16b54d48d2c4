"""The suite keeps to itself (tests/services.py, tests/conftest.py): its own Redis, NATS and
PostgreSQL database unless an environment variable names one, the default local Redis out
of reach, and the chaos suite's network namespaces only when asked for."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from . import conftest, services
from .chaos import conftest as chaos_conftest
from .conftest import require


def test_the_suites_redis_is_its_own_unless_named_and_node_processes_inherit_it() -> None:
    svc = services.redis()
    require(svc.available, svc.missing)
    assert os.environ[services.REDIS_ENV] == svc.url
    if svc.own:  # started here: a redis-server child of this process, answering, without persistence
        assert svc.proc is not None and svc.proc.poll() is None
        with socket.create_connection(("127.0.0.1", urlparse(svc.url).port or 0), timeout=5) as s:
            s.sendall(b"CONFIG GET save\r\n")
            reply = s.recv(200)
        assert reply.startswith(b"*2") and b"save" in reply and b"$0\r\n" in reply, reply
    out = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{services.REDIS_ENV}'])"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == svc.url


def test_the_default_local_redis_is_kept_out_of_reach() -> None:
    import redis.asyncio as aioredis

    svc = services.redis()
    require(svc.available, svc.missing)
    # positive: the suite's Redis is reached as given
    ok = aioredis.from_url(svc.url)
    kw = ok.connection_pool.connection_kwargs
    u = urlparse(svc.url)
    assert (kw["host"], kw["port"]) == (u.hostname, u.port or 6379)

    async def ping() -> bool:
        try:
            return bool(await asyncio.wait_for(ok.ping(), 5))
        finally:
            await ok.aclose()

    assert asyncio.run(ping())
    if conftest._foreign_redis("redis://localhost:6379") is False:
        pytest.skip(f"{services.REDIS_ENV} names the default local Redis: the tests may use it")
    me = os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]
    try:
        for url in ("redis://localhost:6379", "redis://127.0.0.1:6379/3", "redis://127.0.0.1"):
            r = aioredis.from_url(url)
            assert r.connection_pool.connection_kwargs["port"] == 1, url  # a closed port
            assert me in conftest.FOREIGN_REDIS[url]
        assert not conftest._foreign_redis("redis://127.0.0.1:6380/0")  # another port: as given
        assert not conftest._foreign_redis("redis://10.0.0.1:6379/0")  # another host: as given
    finally:  # not a leak of a real test: keep it out of the end-of-run list
        for url in ("redis://localhost:6379", "redis://127.0.0.1:6379/3", "redis://127.0.0.1"):
            conftest.FOREIGN_REDIS.pop(url, None)


def test_a_started_server_goes_when_stopped_and_leaves_no_folder() -> None:
    svc = services._start_redis()
    require(svc.available, svc.missing)
    assert svc.proc is not None and svc.tmpdir and os.path.isdir(svc.tmpdir)
    assert os.path.basename(svc.tmpdir).startswith(f"spiralfast-test-redis-{os.getpid()}-")
    services._stop_proc(svc.proc)
    assert svc.proc.poll() is not None
    shutil.rmtree(svc.tmpdir)


def test_a_killed_sessions_database_is_dropped_by_the_next() -> None:
    svc = services.postgres()
    require(svc.available, svc.missing)
    if not svc.own:
        pytest.skip(f"{services.PG_ENV} names the database: nothing is created or dropped")
    import asyncpg

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now: a session that was killed
    stale = f"spiralfast_test_{dead.pid}_deadbeef"
    alive = f"spiralfast_test_{os.getpid()}_0a11ve00"  # a live session's (ours): kept

    async def sql(*stmts: str) -> list[str]:
        conn = await asyncpg.connect(f"{services.PG_SERVER}/postgres", timeout=5)
        try:
            for s in stmts:
                await conn.execute(s)
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'spiralfast_test_%'")
            return [r["datname"] for r in rows]
        finally:
            await conn.close()

    names = services._run_async(lambda: sql(f'CREATE DATABASE "{stale}"', f'CREATE DATABASE "{alive}"'))
    assert stale in names and alive in names
    new = services._create_pg()
    try:
        assert new.available, new.missing
        names = services._run_async(lambda: sql())
        assert stale not in names and alive in names and new.url.rsplit("/", 1)[1] in names
    finally:
        for fn in new.cleanup:
            fn()
        names = services._run_async(lambda: sql(f'DROP DATABASE IF EXISTS "{alive}"'))
    assert new.url.rsplit("/", 1)[1] not in names and alive not in names


@pytest.mark.parametrize(
    ("ci", "env", "runs"),
    [
        (False, {}, False),
        (False, {"SPIRALFAST_CHAOS": "1"}, True),
        (True, {}, True),
        (True, {"SPIRALFAST_SKIP_CHAOS": "1"}, False),
        (False, {"SPIRALFAST_CHAOS": "1", "SPIRALFAST_SKIP_CHAOS": "1"}, False),
    ],
)
def test_chaos_namespaces_only_when_asked(monkeypatch: pytest.MonkeyPatch, ci: bool, env: dict[str, str],
                                          runs: bool) -> None:
    monkeypatch.setattr(chaos_conftest, "IN_CI", ci)
    for k in ("SPIRALFAST_CHAOS", "SPIRALFAST_SKIP_CHAOS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reason = chaos_conftest.netns_skip_reason()
    assert (reason == "") == runs
    if not runs:  # the reason names the variable that changes it
        assert ("SPIRALFAST_SKIP_CHAOS" in reason) if "SPIRALFAST_SKIP_CHAOS" in env else ("SPIRALFAST_CHAOS=1" in reason)


def test_nodes_without_a_data_dir_write_under_the_suites_own_data_home() -> None:
    # A node started by a test without --data-dir or --db keeps its id and event log in the
    # default data directory: that must be a folder of the suite's own, never the user's.
    import json
    import subprocess
    import sys
    import tempfile

    home = os.environ.get("XDG_DATA_HOME", "")
    assert home.startswith(tempfile.gettempdir()) and "spiralfast-test-home-" in home
    out = subprocess.run([sys.executable, "-m", "spiralfast", "config", "show", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["settings"]["data_dir"]["value"] == os.path.join(home, "spiralfast")
