"""Test helpers for the NATS link: nats-server processes of our own (one, or a
cluster on loopback ports), a TCP proxy that can cut a node off its server, and the
NATS URL the suite uses (its own server, or ``SPIRALFAST_TEST_NATS_URL``: tests/services.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

from . import services
from .conftest import free_port, require
from .waiting import wait_until_async, wait_until_sync

NATS_URL = services.nats().url
NATS_SERVER = services.nats_server_binary()


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


def nats_or_fail(url: str = NATS_URL) -> str:
    """The suite's NATS server; skipped locally, a failure in CI, when it does not answer."""
    from urllib.parse import urlparse

    if url == NATS_URL:
        require(services.nats().available, services.nats().missing)
    u = urlparse(url)
    require(_answers(u.port or 4222, u.hostname or "127.0.0.1"), f"a NATS server at {url}")
    return url


class NatsCluster:
    """``n`` nats-server processes routed into one cluster (``n == 1``: a lone server),
    each with ``-js`` and a store of its own when ``jetstream``."""

    def __init__(self, n: int = 3, jetstream: bool = False, ports: list[int] | None = None) -> None:
        require(NATS_SERVER is not None, "nats-server")
        self.n = n
        self.jetstream = jetstream
        self.ports = ports or [free_port() for _ in range(n)]
        self.cports = [free_port() for _ in range(n)]
        self.dir = tempfile.mkdtemp(prefix="spiralfast-nats-")
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.name = f"c{os.getpid()}"
        for i in range(n):
            self.start(i)
        self.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self, i: int) -> None:
        assert NATS_SERVER is not None
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.ports[i]), "-n", f"s{i}"]
        if self.n > 1:
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cports) if j != i)
            args += ["--cluster", f"nats://127.0.0.1:{self.cports[i]}", "--routes", routes,
                     "--cluster_name", self.name]
        if self.jetstream:
            args += ["-js", "-sd", os.path.join(self.dir, f"s{i}")]
        self.procs[i] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self.ports[i]
        wait_until_sync(lambda: _answers(port), f"nats-server on port {port} answered", timeout=10, interval=0.05)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until a message published on the first server reaches the last one."""
        if self.n < 2:
            return

        async def probe() -> None:
            import nats

            a = await nats.connect(self.urls[0])
            b = await nats.connect(self.urls[-1])
            sub = await b.subscribe("probe")
            await b.flush()

            async def reached() -> bool:
                await a.publish("probe", b"x")
                try:
                    await sub.next_msg(timeout=0.2)
                except Exception:  # no message yet (a timeout): publish again
                    return False
                return True

            try:
                await wait_until_async(reached, "a message published on the first NATS server reached the last one "
                                       "(the cluster formed)", timeout=timeout, interval=0)
            finally:
                await a.close()
                await b.close()

        asyncio.run(probe())

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(5)

    def close(self) -> None:
        for i in range(self.n):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpProxy:
    """A loopback TCP forwarder to ``target`` (host, port), run on the caller's event
    loop: ``cut()`` drops every connection and refuses new ones, ``restore()`` listens
    again on the same port.  Cuts a node off its NATS server without touching either."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        # connections first: since Python 3.12, wait_closed() waits for them to end
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.transport.abort()
            return
        self.writers.update((w, uw))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.writers.difference_update((w, uw))


def stream_cleanup(url: str, mesh: str) -> Any:
    """Delete the JetStream stream of mesh ``mesh`` (tests share the suite's server)."""
    from spiralfast.links.bus.nats import subject_token

    async def run() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(f"spiralfast_{subject_token(mesh)}")
        except Exception:
            pass
        finally:
            await nc.close()

    return run()
