"""What a member (or anyone reading the node's output) can no longer do (issue 23, items
7, 9, 14 and 15), each with real processes or real services, the legitimate path shown
working first in the same test:

- #7: gossiped endpoints are dialled only when the node they name signed them, and at
  most ``GOSSIP_DIAL_CONCURRENCY`` at once (``GOSSIP_DIAL_QUEUE`` more waiting);
- #9: text a member chose (event types, node ids and names, data) reaches the operator's
  terminal inert: control characters as escapes, Rich markup shown as text;
- #14: token-less meshes ``m`` and ``m:x`` on one Redis never cross;
- #15: URL secrets masked wherever they are shown; event-log and key files are 0600.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from spiralfast import MeshConfig, MeshCore, safetext, schema
from spiralfast.links.ws import GOSSIP_DIAL_CONCURRENCY
from spiralfast.protocol.membership import endpoint_claim
from spiralfast.wire.signing import NodeKey

from . import services
from .conftest import free_port, require
from .procs import NodeProc
from .waiting import wait_until, wait_until_async

MESH = "spiral_codex_mesh"  # the default mesh name (the nodes here do not set one)


class Tail:
    """The lines a process writes to ``stream``, read by a thread (never blocks a test)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


class Listener:
    """A TCP server that accepts and holds every connection without a word (a dial to it
    waits for its WebSocket upgrade until the dialler gives up): counts connections
    open now, the most open at once, and the request paths asked for."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.paths: set[str] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)
        try:
            first = await reader.readline()
            parts = first.split()
            if len(parts) >= 2:
                self.paths.add(parts[1].decode(errors="replace"))
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _record(nid: str, endpoint: str, key: NodeKey | None, *, sign_for: str | None = None) -> dict[str, Any]:
    """A gossip record of ``nid`` at ``endpoint``: signed by ``key`` (over the claim of
    ``sign_for``'s endpoint when given: a signature moved to another endpoint), or with a
    signature of zeros when ``key`` is None."""
    public = key.public if key is not None else NodeKey.generate().public
    rec: dict[str, Any] = {"node_id": nid, "name": nid, "status": "active", "capabilities": [],
                           "recursion_depth": 0, "entropy_level": 0.0,
                           "metadata": {"incarnation": uuid.uuid4().hex[:16], "public_key": public.hex()},
                           "websocket_endpoint": endpoint}
    if key is None:
        rec["metadata"]["endpoint_sig"] = "00" * 64
    else:
        claim = dict(rec, websocket_endpoint=sign_for or endpoint)
        rec["metadata"]["endpoint_sig"] = key.sign(endpoint_claim(claim, MESH)).hex()
    return rec


async def _links_of(node: NodeProc) -> set[str]:
    st = await node.query("status")
    return {str(lk.get("peer")) for lk in st.get("links", []) if lk.get("peer")}


async def test_gossiped_endpoints_dialled_only_when_signed_by_their_node_and_within_the_cap() -> None:
    # A victim node process, a member M (in this process: it gossips what we tell it) and
    # a real node C that joins through M.
    # Its handshake timeout (60 s) outlasts the test: a held dial is never given up meanwhile,
    # so the listener's count of open connections is the victim's count of dials in flight.
    victim = NodeProc("ml-victim", "--handshake-timeout", "60", hb=0.3)
    tail = Tail(victim.proc.stderr)  # type: ignore[union-attr]
    m = MeshCore(MeshConfig(node_id="ml-member", websocket_port=free_port(), peers=[victim.url],
                            enable_redis=False, heartbeat_interval=0.3))
    forged_to, signed_to = await Listener().start(), await Listener().start()
    c: NodeProc | None = None
    try:
        await m.start()
        c = NodeProc("ml-c", "--peer", f"ws://127.0.0.1:{m.config.websocket_port}", hb=0.3)
        # The legitimate path: C and the victim are not each other's peers; each announced
        # itself (its endpoint signed by its own key), M's gossip relays those records, and
        # a gossiped, signed endpoint is dialled (by either side) and they link directly.
        await wait_until_async(lambda: _has(victim, "ml-c"), "the victim and C linked through gossiped endpoints")

        # The attack: 4,096 records in 8 gossip messages, half with forged signatures
        # (zeros, another endpoint's signature, another key than C's for C's id), half
        # validly signed by fresh keys of made-up node ids (indistinguishable from new
        # nodes: the dial cap is what bounds them).
        n = 4096
        fds_before = psutil.Process(victim.proc.pid).num_fds()  # type: ignore[union-attr]
        keys = [NodeKey.generate() for _ in range(n // 2)]
        forged = []
        for i in range(n // 2):
            ep = f"ws://127.0.0.1:{forged_to.port}/f{i}"
            if i % 3 == 0:
                forged.append(_record(f"forged-{i}", ep, None))
            elif i % 3 == 1:
                forged.append(_record(f"forged-{i}", ep, keys[i], sign_for=f"ws://127.0.0.1:{signed_to.port}/x"))
            else:  # C's id and incarnation, an endpoint of the attacker's: not C's key
                forged.append(_record("ml-c", ep, keys[i]))
        signed = [_record(f"made-up-{i}", f"ws://127.0.0.1:{signed_to.port}/s{i}", keys[i]) for i in range(n // 2)]
        per = n // 8 // 2

        async def gossip_all() -> bool:
            """One round of the 8 messages (a member may repeat its gossip); True once the
            victim logged that it refused dials beyond the cap."""
            for k in range(8):  # forged ones first in each message: processed before the signed ones
                # To the victim alone (C would dial them too, and the listeners count both).
                assert m.outbox.send("ml-victim", schema.KIND_GOSSIP, 0, b"",
                                     schema.Gossip(forged[k * per:(k + 1) * per] + signed[k * per:(k + 1) * per]))
                await asyncio.sleep(0.05)  # pacing: each message in a frame of its own
            return "not dialled" in tail.text()

        await wait_until_async(gossip_all, "the victim refused dials beyond the cap (its log)", interval=0.5)
        await wait_until(lambda: signed_to.peak >= GOSSIP_DIAL_CONCURRENCY,
                         "the victim dialled signed endpoints, up to the cap at once")
        assert signed_to.peak == GOSSIP_DIAL_CONCURRENCY, signed_to.peak  # never more at once
        # (Beyond GOSSIP_DIAL_CONCURRENCY + GOSSIP_DIAL_QUEUE dials the victim refused the rest:
        # the "not dialled" line waited for above.)
        assert signed_to.accepted < n // 2
        # Its descriptors: the dials in flight and little else (16: margin for the node's own
        # files and links opened meanwhile) - not thousands (30 such messages used to exhaust them).
        fds = psutil.Process(victim.proc.pid).num_fds()  # type: ignore[union-attr]
        assert fds <= fds_before + GOSSIP_DIAL_CONCURRENCY + 16, (fds_before, fds)
        assert forged_to.accepted == 0  # no endpoint without its node's signature
        # C is still C: the forged records for its id did not move the victim's link.
        assert "ml-c" in await _links_of(victim)
        assert victim.proc is not None and victim.proc.poll() is None
    finally:
        forged_to.close()
        signed_to.close()
        if c is not None:
            c.stop()
        await m.stop()
        victim.stop()


async def _has(node: NodeProc, peer: str) -> bool:
    return peer in await _links_of(node)


# -- #9: terminal control sequences and markup -------------------------------------------

EVIL_TYPE = "evil\x1b[2J\x1b]0;pwned\x07[bold red]type[/]"
EVIL_NAME = "[link=http://x]name[/link]\x1b]52;c;cHduZWQ=\x07"
EVIL_DATA = {"k\x1b[1A": "\x1b]52;c;Zm9v\x07[blink]v[/blink]\x9b2J"}
RAW = ("\x1b", "\x07", "\x9b")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spiralfast", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, COLUMNS="400", NO_COLOR="1"))


async def test_member_chosen_text_reaches_the_cli_inert() -> None:
    node = NodeProc("ml-inert", "--persist-events", "all", hb=0.3)
    member = MeshCore(MeshConfig(node_id="ml-evil", websocket_port=free_port(), peers=[node.url],
                                 enable_redis=False, heartbeat_interval=0.3))
    member.local_node.name = EVIL_NAME
    try:
        await member.start()
        await wait_until_async(lambda: _has(node, "ml-evil"), "the member joined")
        await member.broadcast_event("plain", {"ok": 1})  # the legitimate path first
        await member.broadcast_event(EVIL_TYPE, EVIL_DATA)

        async def got_both() -> bool:
            types = {e.get("type") for e in await node.query("events", count=50)}
            return {"plain", EVIL_TYPE} <= types

        await wait_until_async(got_both, "the node received both events")

        events = await asyncio.to_thread(_cli, "mesh", "events", "--node", node.url, "--count", "50")
        nodes = await asyncio.to_thread(_cli, "mesh", "nodes", "--node", node.url)
        for out in (events, nodes):
            assert out.returncode == 0, out.stderr
            assert not any(ch in out.stdout for ch in RAW), out.stdout
        assert " plain from ml-evil " in events.stdout  # the legitimate event as it always was
        assert "evil\\x1b[2J\\x1b]0;pwned\\x07[bold red]type[/]" in events.stdout  # escapes, shown
        assert '"\\u001b]52;c;Zm9v\\u0007[blink]v[/blink]\\u009b2J"' in events.stdout  # data: JSON escapes
        assert "[link=http://x]name[/link]\\x1b]52;c;cHduZWQ=\\x07" in nodes.stdout  # markup as text
        assert "ml-evil" in nodes.stdout

        # --json: exact JSON, the member's strings read back exactly.
        js = await asyncio.to_thread(_cli, "mesh", "events", "--node", node.url, "--count", "50", "--json")
        assert js.returncode == 0 and not any(ch in js.stdout for ch in RAW)
        envs = [orjson.loads(line) for line in js.stdout.splitlines()]
        evil = [e for e in envs if e["type"] == EVIL_TYPE]
        assert evil and evil[0]["data"] == EVIL_DATA and evil[0]["source_node"] == "ml-evil"
        nj = await asyncio.to_thread(_cli, "mesh", "nodes", "--node", node.url, "--json")
        assert any(n["name"] == EVIL_NAME for n in orjson.loads(nj.stdout))

        # mesh history: the stored events, once the event log has them.
        async def history() -> subprocess.CompletedProcess[str] | None:
            out = await asyncio.to_thread(_cli, "mesh", "history", "--node", node.url)
            return out if "pwned" in out.stdout else None

        hist = await wait_until_async(history, "mesh history lists the stored events")
        assert hist.returncode == 0 and " plain from ml-evil " in hist.stdout
        assert not any(ch in hist.stdout for ch in RAW) and "\\x1b]0;pwned\\x07[bold red]" in hist.stdout
        hj = await asyncio.to_thread(_cli, "mesh", "history", "--node", node.url, "--json")
        assert [e["data"] for e in map(orjson.loads, hj.stdout.splitlines()) if e["type"] == EVIL_TYPE] == [EVIL_DATA]
    finally:
        await member.stop()
        node.stop()


def test_history_lines_and_the_hud_show_control_characters_as_escapes() -> None:
    # The formatting functions the history command and the HUD use, on the same text.
    from rich.console import Console

    from spiralfast.cli.history import _line
    from spiralfast.cli.hud import render

    line = _line({"timestamp": "t", "type": EVIL_TYPE, "source_node": "a\x1bb", "data": EVIL_DATA})
    assert not any(ch in line for ch in RAW) and "evil\\x1b[2J" in line and "a\\x1bb" in line
    st = {"node_id": "n[bold]", "status": "active", "uptime": 1.0, "links": [{"peer": "p\x1b", "transport": "ws"}]}
    nodes = [{"node_id": "p\x1b", "name": EVIL_NAME, "status": "active", "seconds_since_heartbeat": 0.1}]
    rates = dict.fromkeys(("events_in", "events_out", "frames_in", "frames_out"), 0.0)
    con = Console(width=400, record=True, no_color=True)
    con.print(render(st, nodes, rates))
    text = con.export_text()
    assert not any(ch in text for ch in RAW)
    assert "n[bold]" in text and "[link=http://x]name[/link]\\x1b]52" in text and "p\\x1b" in text


# -- #14: meshes m and m:x on one Redis -------------------------------------------------


def _redis_url() -> str:
    svc = services.redis()
    require(svc.available, svc.missing)
    return svc.url


async def test_token_less_meshes_m_and_m_x_on_one_redis_never_cross() -> None:
    url = _redis_url()
    ch = "ml_" + uuid.uuid4().hex[:8]  # this test's own ritual channel

    def node(nid: str, mesh: str) -> MeshCore:
        return MeshCore(MeshConfig(node_id=nid, mesh_name=mesh, enable_websocket=False, redis_url=url,
                                   ritual_channel=ch, heartbeat_interval=0.3, interop=False))

    a, x = node("a", "m"), node("x", "m")  # mesh m: a and x
    b, y = node("b", "m:x"), node("y", "m:x")  # mesh m:x: its broadcasts were x's direct channel in m
    got: dict[str, list[Any]] = {n: [] for n in ("a", "x", "b", "y")}
    for core in (a, x, b, y):
        core.register_event_handler("probe", lambda env, nid=core.node_id: got[nid].append(env))
    try:
        for core in (a, x, b, y):
            await core.start()
        await wait_until(lambda: "x" in a.nodes and "a" in x.nodes and "y" in b.nodes and "b" in y.nodes,
                         "each mesh's nodes met")
        assert "b" not in a.nodes and "b" not in x.nodes and "a" not in b.nodes and "x" not in y.nodes
        # Same-mesh delivery works: a direct message a -> x, a broadcast b -> y.
        assert await a.send_to_node("x", "probe", {"from": "a"})
        await b.broadcast_event("probe", {"from": "b"})
        await wait_until(lambda: any(e["data"] == {"from": "a"} for e in got["x"]), "x got a's direct message")
        await wait_until(lambda: any(e["data"] == {"from": "b"} for e in got["y"]), "y got b's broadcast")
        # ... and nothing crossed: x (node x of mesh m) never saw mesh m:x's broadcast.
        assert not any(e["data"] == {"from": "b"} for e in got["x"] + got["a"])
        assert not any(e["data"] == {"from": "a"} for e in got["b"] + got["y"])
        assert a.redis.my_channel != b.redis.sf_channel and x.redis.my_channel != b.redis.sf_channel
    finally:
        for core in (a, x, b, y):
            await core.stop()


def test_channel_parts_are_injective() -> None:
    from spiralfast.links.bus.nats import subject_token
    from spiralfast.links.bus.redis import RedisSettings, channel_part, node_part

    names = ["m", "m:x", "m%3ax", "x", "ack", "%61ck", "a.b", "a*b", "a>b", "a b", "", ":", "%"]
    assert len({channel_part(n) for n in names}) == len(names)
    assert len({node_part(n) for n in names}) == len(names) and node_part("ack") != "ack"
    assert all(":" not in node_part(n) for n in names)
    assert len({subject_token(n) for n in names}) == len(names)
    assert not any(c in subject_token(n) for n in names for c in ".*> \t")
    # Database 0 keeps the plain names; other databases carry db<N>.
    assert RedisSettings("n", "redis://h/0", "C", "m").scope == "m"
    assert RedisSettings("n", "redis://h/3", "C", "m:x").scope == "db3:m%3ax"


# -- #15: secrets -------------------------------------------------------------------------

SECRETS = ("redispw1", "redispw2", "pgpw1", "pgssl2", "natstok1")


def _secret_urls(redis_port: int, nats_port: int) -> dict[str, str]:
    return {
        "redis": f"redis://:redispw1@127.0.0.1:{redis_port}/0?password=redispw2",
        "pg": "postgresql://u:pgpw1@127.0.0.1:1/db?sslpassword=pgssl2",
        "nats": f"nats://natstok1@127.0.0.1:{nats_port}",
    }


def test_mask_secrets_forms() -> None:
    urls = _secret_urls(6379, 4222)
    assert safetext.mask_secrets(urls["redis"]) == "redis://:****@127.0.0.1:6379/0?password=****"
    assert safetext.mask_secrets(urls["pg"]) == "postgresql://u:****@127.0.0.1:1/db?sslpassword=****"
    assert safetext.mask_secrets(urls["nats"]) == "nats://****@127.0.0.1:4222"
    # A configuration's repr (in a traceback, a debug line) shows none of them, nor the token.
    shown = repr(MeshConfig(redis_url=urls["redis"], persistence_url=urls["pg"], nats_url=urls["nats"],
                            auth_token="tokensecret9"))
    assert not [s for s in (*SECRETS, "tokensecret9") if s in shown] and "redis://:****@" in shown
    # What is not a secret stays as it is.
    for plain in ("redis://127.0.0.1:6379/0", "postgresql://u@h/db?schema=s", "ws://h:1/x", "a=b c"):
        assert safetext.mask_secrets(plain) == plain


async def test_secrets_masked_in_banner_config_show_api_status_and_logs(tmp_path: Path) -> None:
    urls = _secret_urls(free_port(), free_port())  # nothing answers there: the errors are logged too
    flags = ["--redis", urls["redis"], "--persistence-url", urls["pg"], "--nats-url", urls["nats"]]
    shown = _cli("config", "show", *flags)
    shown_json = _cli("config", "show", "--json", *flags)
    assert shown.returncode == 0 and shown_json.returncode == 0, shown.stderr + shown_json.stderr
    assert "redis://:****@" in shown.stdout and "nats://****@" in shown.stdout  # shown, masked
    node = _unstarted(NodeProc, "ml-secrets")
    # NodeProc's arguments with a Redis URL instead of --no-redis, logging at info.
    node.args = [a for a in _base_args(node) if a != "--no-redis"] + [*flags, "--log-level", "info"]
    node.start()
    tail = Tail(node.proc.stderr)  # type: ignore[union-attr]
    try:
        banner = node.read_banner()
        assert banner["redis"].startswith("NOT connected: redis://:****@")
        await wait_until(lambda: "postgresql://u:****@" in tail.text(), "the event log's failure is logged")
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/api/status", timeout=10) as resp:
            api = resp.read().decode()
        assert '"node_id":"ml-secrets"' in api
        everything = "\n".join([shown.stdout, shown.stderr, shown_json.stdout, *node.banner, api, tail.text()])
        leaked = [s for s in SECRETS if s in everything]
        assert not leaked, leaked
    finally:
        node.stop()


def _unstarted(cls: type[NodeProc], node_id: str) -> NodeProc:
    """A ``NodeProc`` set up as its constructor does, not started yet."""
    node = cls.__new__(cls)
    node.node_id, node.port = node_id, free_port()
    node.url = f"ws://127.0.0.1:{node.port}"
    node.env, node.cwd, node.banner, node.proc = {}, None, [], None
    node.args = []
    return node


def _base_args(node: NodeProc) -> list[str]:
    return [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(node.port), "--no-redis",
            "--node-id", node.node_id, "--heartbeat-interval", "0.3"]


def test_event_log_and_key_files_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: files are world-readable unless made private
    try:
        data = tmp_path / "data"
        node = NodeProc("ml-files", "--data-dir", str(data), "--db", str(tmp_path / "ev" / "events.db"))
        try:
            banner = node.read_banner()
            assert banner["persistence"].startswith("on:")
            db = tmp_path / "ev" / "events.db"
            wait_files = [db, Path(f"{db}-wal")]
            keys = list(data.rglob("*.key"))
            assert keys, list(data.rglob("*"))
            for f in [*wait_files, *keys]:
                assert f.exists(), f
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
            shm = Path(f"{db}-shm")
            if shm.exists():
                assert stat.S_IMODE(shm.stat().st_mode) == 0o600
        finally:
            node.stop()
    finally:
        os.umask(old)


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[31mb", "a\\x1b[31mb"), ("t\x1b]52;c;Zm9v\x07", "t\\x1b]52;c;Zm9v\\x07"), ("\x9b2J", "\\x9b2J"),
    ("l1\nl2\tx", "l1\\nl2\\tx"), ("\u202eevil", "\\u202eevil"), ("plain [b]", "plain [b]"),
])
def test_clean_shows_control_characters(text: str, shown: str) -> None:
    assert safetext.clean(text) == shown
    assert safetext.markup("[b]x[/b]") == "\\[b]x\\[/b]"
