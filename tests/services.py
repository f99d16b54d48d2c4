"""The Redis, NATS and PostgreSQL the suite talks to: its own unless told otherwise.

By default each is the suite's own, created the first time a test module asks for it
(so ``pytest tests/test_codec.py`` starts nothing) and removed when the session ends:

- Redis: ``redis-server`` on a free loopback port, no persistence, in a temporary folder;
- NATS: ``nats-server -js`` on a free loopback port, its JetStream store in a temporary folder;
- PostgreSQL: a database ``spiralfast_test_<random>`` created in the local server
  (``postgresql://postgres@127.0.0.1:5432``, trust authentication) and dropped at the end.

An environment variable points the suite at a service instead (used as given, nothing
created or dropped there): ``SPIRALFAST_TEST_REDIS_URL``, ``SPIRALFAST_TEST_NATS_URL``,
``SPIRALFAST_TEST_PG`` (a database URL).  Once resolved, the URL is also put in that
variable, so node processes the tests start inherit it.

A service that cannot be had (binary or server missing) is reported by ``missing``;
tests call ``require(svc.available, svc.missing)``: a failure in CI, a skip elsewhere.
Servers are started with a parent-death signal, so even a ``kill -9`` of pytest leaves
none behind; SIGTERM stops them and drops the database before the process ends.  What a
killed session left (its database, its temporary folders, named after its pid) is removed
by the next session.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REDIS_ENV = "SPIRALFAST_TEST_REDIS_URL"
NATS_ENV = "SPIRALFAST_TEST_NATS_URL"
PG_ENV = "SPIRALFAST_TEST_PG"
#: The local PostgreSQL server the suite creates its database in when ``SPIRALFAST_TEST_PG`` is unset.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
#: Where a service that cannot be had "is": nothing listens on port 1.
_NOWHERE = {"redis": "redis://127.0.0.1:1/0", "nats": "nats://127.0.0.1:1", "pg": f"{PG_SERVER}/unavailable"}
_START_TIMEOUT = 15.0


@dataclass
class Service:
    kind: str
    url: str
    missing: str = ""  #: why it cannot be had ("" when it can)
    own: bool = False  #: started (or created) by this session
    proc: subprocess.Popen[bytes] | None = None
    tmpdir: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return not self.missing


_lock = threading.RLock()  # re-entrant: the SIGTERM handler may run while get() holds it
_FROM_MAIN_THREAD = True
_services: dict[str, Service] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prefix(kind: str) -> str:
    return f"spiralfast-test-{kind}-{os.getpid()}-"


def _remove_dead_folders() -> None:
    """Temporary folders of sessions whose process is gone (killed before cleaning up)."""
    for kind in ("redis", "nats", "jetstream"):
        for path in glob.glob(os.path.join(tempfile.gettempdir(), f"spiralfast-test-{kind}-*-*")):
            pid = os.path.basename(path).split("-")[3]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: only set from the main thread.
    if sys.platform.startswith("linux") and _FROM_MAIN_THREAD:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort; the session's own cleanup still runs
            pass
    os.setpgrp()  # out of the terminal's process group: Ctrl-C reaches pytest, which stops us in order


def _spawn(kind: str, args: list[str], ready: Callable[[int], bool], port_flag: str) -> Service:
    """Start ``args + [port_flag, <free port>]`` until ``ready(port)`` (three tries: a
    free port may be taken between choosing and binding it)."""
    global _FROM_MAIN_THREAD
    _FROM_MAIN_THREAD = threading.current_thread() is threading.main_thread()
    _remove_dead_folders()
    tmp = tempfile.mkdtemp(prefix=_prefix(kind))
    last = ""
    for _ in range(3):
        port = free_port()
        log = open(os.path.join(tmp, "server.log"), "ab")  # noqa: SIM115 - kept open for the child
        try:
            proc = subprocess.Popen([*args, port_flag, str(port)], cwd=tmp, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            log.close()
        # Start-up polling, not a test's wait (so not tests/waiting.py): a server that
        # exits or does not answer by the deadline is retried on another port, and only
        # the third failure is reported (as "missing" by the caller).
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if ready(port):
                svc = Service(kind, "", own=True, proc=proc, tmpdir=tmp)
                svc.url = f"{kind}://127.0.0.1:{port}" + ("/0" if kind == "redis" else "")
                return svc
            time.sleep(0.05)  # poll interval (the condition and the deadline are around it)
        _stop_proc(proc)
        with open(os.path.join(tmp, "server.log"), "rb") as f:
            last = f.read()[-400:].decode(errors="replace").strip()
    shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"{args[0]} did not start: {last}")


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _nats_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


def nats_server_binary() -> str | None:
    """``nats-server`` on PATH, or Debian's /usr/sbin/nats-server (not on a user's PATH)."""
    exe = shutil.which("nats-server")
    if exe is None and os.access("/usr/sbin/nats-server", os.X_OK):
        exe = "/usr/sbin/nats-server"
    return exe


def _start_redis() -> Service:
    exe = shutil.which("redis-server")
    if exe is None:
        return Service("redis", _NOWHERE["redis"],
                       missing=f"the redis-server binary (or {REDIS_ENV} naming a Redis the tests may use)")
    return _spawn("redis", [exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--protected-mode", "no", "--daemonize", "no"], _redis_answers, "--port")


def _start_nats() -> Service:
    exe = nats_server_binary()
    if exe is None:
        return Service("nats", _NOWHERE["nats"],
                       missing=f"the nats-server binary (or {NATS_ENV} naming a NATS server the tests may use)")
    store = tempfile.mkdtemp(prefix=_prefix("jetstream"))
    try:
        svc = _spawn("nats", [exe, "-a", "127.0.0.1", "-js", "-sd", store], _nats_answers, "-p")
    except BaseException:
        shutil.rmtree(store, ignore_errors=True)
        raise
    svc.cleanup.append(lambda: shutil.rmtree(store, ignore_errors=True))
    return svc


def _run_async(coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine to completion on a loop of its own, in a thread (callable from
    inside a running event loop as well as at import time)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(coro_fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=run, name="spiralfast-test-pg")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _create_pg() -> Service:
    try:
        import asyncpg
    except ImportError:
        return Service("pg", _NOWHERE["pg"], missing="asyncpg (pip install -e '.[test]')")
    name = f"spiralfast_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=3)
        try:
            # databases of sessions killed before dropping theirs (the server is local: pids are ours)
            for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'spiralfast\\_test\\_%'"):
                parts = row["datname"].split("_")
                if len(parts) == 4 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        _run_async(create)
    except Exception as exc:  # noqa: BLE001 - any failure means: no database of our own
        return Service("pg", _NOWHERE["pg"], missing=(
            f"a PostgreSQL server at {PG_SERVER} letting user postgres create a database without a "
            f"password ({type(exc).__name__}: {exc}; or {PG_ENV} naming a database the tests may use)"))

    async def drop() -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=3)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    svc = Service("pg", f"{PG_SERVER}/{name}", own=True)
    svc.cleanup.append(lambda: _run_async(drop))
    return svc


_STARTERS: dict[str, tuple[str, Callable[[], Service]]] = {
    "redis": (REDIS_ENV, _start_redis),
    "nats": (NATS_ENV, _start_nats),
    "pg": (PG_ENV, _create_pg),
}


def get(kind: str) -> Service:
    """The suite's ``kind`` service ("redis", "nats" or "pg"), started on first use."""
    with _lock:
        svc = _services.get(kind)
        if svc is None:
            env, start = _STARTERS[kind]
            given = os.environ.get(env, "").strip()
            if given:
                svc = Service(kind, given)
            else:
                try:
                    svc = start()
                except (OSError, RuntimeError) as exc:  # the binary is there but no server came up
                    svc = Service(kind, _NOWHERE[kind], missing=f"a {kind} server of the suite's own ({exc})")
            if svc.available:
                os.environ[env] = svc.url  # node processes started by the tests inherit it
            _services[kind] = svc
        return svc


def redis() -> Service:
    return get("redis")


def nats() -> Service:
    return get("nats")


def postgres() -> Service:
    return get("pg")


def started() -> list[Service]:
    """The services this session created (for the summary line)."""
    return [s for s in _services.values() if s.own]


def stop_all() -> None:
    """Stop what this session started and drop what it created; idempotent."""
    with _lock:
        items = list(_services.items())
        _services.clear()
    for kind, svc in items:
        if not svc.own:
            continue
        env = _STARTERS[kind][0]
        if os.environ.get(env) == svc.url:
            del os.environ[env]
        if svc.proc is not None:
            _stop_proc(svc.proc)
        for fn in svc.cleanup:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
                print(f"spiralfast tests: cleaning up the {kind} service failed: {exc}", file=sys.stderr)
        if svc.tmpdir:
            shutil.rmtree(svc.tmpdir, ignore_errors=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def install_sigterm_handler() -> None:
    """Clean up on SIGTERM too (``timeout``, a CI runner cancelling the job); only when
    nobody else handles it and from the main thread."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


atexit.register(stop_all)
