"""Real node processes for integration tests (the installed CLI, run as subprocesses)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from spiralfast.client import ObserverClient

from .conftest import free_port
from .waiting import wait_until_sync

#: Nodes started by the tests keep their default event log here, not in the home folder.
_DATA_HOME = tempfile.mkdtemp(prefix="spiralfast-test-data-")
atexit.register(shutil.rmtree, _DATA_HOME, True)


class NodeProc:
    """``spiralfast mesh start`` as a subprocess; returns once the banner's websocket
    line is out.  ``env`` adds environment variables, ``cwd`` sets the working directory,
    ``scheme="wss"`` for a node given --certfile/--keyfile.  ``banner`` holds the banner
    lines read so far (:meth:`read_banner` reads the rest)."""

    def __init__(self, node_id: str, *extra: str, port: int | None = None, hb: float = 0.3,
                 env: dict[str, str] | None = None, cwd: str | None = None, scheme: str = "ws") -> None:
        self.node_id = node_id
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(self.port), "--no-redis",
            "--node-id", node_id, "--heartbeat-interval", str(hb), "--log-level", "warning", *extra,
        ]
        self.env = env or {}
        self.cwd = cwd
        self.banner: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.banner = []
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", XDG_DATA_HOME=_DATA_HOME, **self.env), cwd=self.cwd,
        )
        proc = self.proc
        assert proc.stdout is not None

        def websocket_line() -> bool:
            """Read one banner line; true once it is the websocket line."""
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node {self.node_id} exited: {proc.stderr.read() if proc.stderr else ''}")
            self.banner.append(line.rstrip("\n"))
            return line.strip().startswith("websocket")

        wait_until_sync(websocket_line, f"node {self.node_id} printed its websocket banner line", timeout=20,
                        interval=0)

    def read_banner(self) -> dict[str, str]:
        """Read the rest of the banner; returns ``{first word: rest}`` of its lines."""
        assert self.proc is not None and self.proc.stdout is not None
        while not self.banner or not self.banner[-1].strip().startswith("config"):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner.append(line.rstrip("\n"))
        out = {}
        for ln in self.banner[1:]:
            key, _, rest = ln.strip().partition(" ")
            out[key] = rest.strip()
        return out

    def sigint(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(15)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def client(self, token: str | None = None) -> ObserverClient:
        return await ObserverClient.connect(self.url, token)

    async def query(self, what: str, token: str | None = None, **args: Any) -> Any:
        c = await self.client(token)
        try:
            return await c.query(what, **args)
        finally:
            c.close()

    async def node_ids(self) -> set[str]:
        return {n["node_id"] for n in await self.query("nodes")}
