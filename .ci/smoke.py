"""Smoke test of an installed spiralfast (the release wheel, in a fresh venv).

Run with the venv's python from outside the source tree: ``python .ci/smoke.py``.
Checks that the package comes from site-packages with every compiled extension loaded
(not the pure-Python twins), then starts a node on a free port and a second one joining
it, reads ``spiralfast mesh status --json`` from the first, and stops both with SIGINT
(exit code 0 expected).  Exit status 0 when all holds; one line per failure otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

DEADLINE = 30.0  # seconds for a node to start, and for the two to see each other
EXTENSIONS = ["wire._codec", "wire._ring", "wire._fastpath", "wire._event", "links.ws._wslistener"]


def fail(msg: str) -> None:
    print(f"smoke: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_install() -> None:
    import spiralfast

    where = os.path.dirname(os.path.abspath(spiralfast.__file__))
    if "site-packages" not in where.split(os.sep):
        fail(f"spiralfast imported from {where}, not from the installed wheel")
    for name in EXTENSIONS:
        mod = importlib.import_module(f"spiralfast.{name}")
        path = getattr(mod, "__file__", "") or ""
        if not path.endswith(".so") or not getattr(mod, "COMPILED", True):
            fail(f"spiralfast.{name} is not the compiled extension ({path})")
    from spiralfast.links import ws
    from spiralfast.wire import codec, event, fastpath, ring

    for mod in (codec, ring, fastpath, event):
        if not mod.COMPILED:
            fail(f"{mod.__name__} runs on its pure-Python twin")
    if not ws.LISTENER_COMPILED:
        fail("the WebSocket listener runs on its pure-Python twin")
    print(f"smoke: spiralfast {spiralfast.__version__} from {where}, {len(EXTENSIONS)} compiled extensions loaded")


def cli() -> list[str]:
    exe = shutil.which("spiralfast", path=os.path.dirname(sys.executable))
    if exe is None:
        fail(f"no spiralfast console script next to {sys.executable}")
    return [exe]


def start(node_id: str, port: int, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*cli(), "mesh", "start", "--port", str(port), "--no-redis", "--node-id", node_id,
         "--heartbeat-interval", "1", "--log-level", "warning", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            fail(f"node {node_id} exited ({proc.wait()}): {proc.stderr.read() if proc.stderr else ''}")
        if line.strip().startswith("websocket"):
            return proc
    proc.kill()
    fail(f"node {node_id} printed no websocket line within {DEADLINE}s")
    raise AssertionError  # unreachable


def stop(proc: subprocess.Popen[str], node_id: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fail(f"node {node_id} did not stop within 15 s of SIGINT")
        if rc != 0:
            fail(f"node {node_id} exited {rc} on SIGINT: {proc.stderr.read() if proc.stderr else ''}")


def check_mesh() -> None:
    version = subprocess.run([*cli(), "--version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0 or "(compiled," not in version.stdout:
        fail(f"spiralfast --version: {version.stdout.strip()} {version.stderr.strip()}")
    print(f"smoke: {version.stdout.strip()}")
    data = tempfile.mkdtemp(prefix="spiralfast-smoke-")
    env = dict(os.environ, XDG_DATA_HOME=data, PYTHONUNBUFFERED="1")
    pa, pb = free_port(), free_port()
    a = start("smoke-a", pa, env)
    b = None
    try:
        b = start("smoke-b", pb, env, "--peer", f"ws://127.0.0.1:{pa}")
        deadline = time.monotonic() + DEADLINE
        while True:  # smoke-a lists smoke-b once the join is through
            r = subprocess.run([*cli(), "mesh", "nodes", "--node", f"ws://127.0.0.1:{pa}", "--json"],
                               capture_output=True, text=True, timeout=60, env=env)
            if r.returncode != 0:
                fail(f"mesh nodes exited {r.returncode}: {r.stderr.strip()}")
            ids = {n.get("node_id") for n in json.loads(r.stdout)}
            if "smoke-b" in ids or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if "smoke-b" not in ids:
            fail(f"smoke-a does not list smoke-b within {DEADLINE}s: {sorted(map(str, ids))}")
        r = subprocess.run([*cli(), "mesh", "status", "--node", f"ws://127.0.0.1:{pa}", "--json"],
                           capture_output=True, text=True, timeout=60, env=env)
        if r.returncode != 0:
            fail(f"mesh status exited {r.returncode}: {r.stderr.strip()}")
        st = json.loads(r.stdout)
        if st.get("status") != "active" or not isinstance(st.get("connected_nodes"), int) \
                or st["connected_nodes"] < 1:
            fail(f"mesh status --json of smoke-a: {st}")
        print(f"smoke: mesh status --json: status={st['status']} connected_nodes={st['connected_nodes']}, "
              f"nodes {sorted(map(str, ids))}")
    finally:
        if b is not None:
            stop(b, "smoke-b")
        stop(a, "smoke-a")
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    if os.path.exists(os.path.join(os.getcwd(), "spiralfast", "__init__.py")):
        fail("run from outside the source tree, or the tree is imported instead of the wheel")
    check_install()
    check_mesh()
    print("smoke: OK")


if __name__ == "__main__":
    main()
