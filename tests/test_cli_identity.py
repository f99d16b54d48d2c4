"""A node's identity across restarts, duplicate ids, and the CLI papercuts of issue 24,
with the installed CLI run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port
from .procs import NodeProc
from .test_cli import cli
from .waiting import wait_until_sync

pytestmark = pytest.mark.timeout(240)


class Node:
    """``spiralfast mesh start`` without --node-id (unless given), in its own data
    directory; returns once the whole banner is out."""

    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(self.port), "--no-redis",
                     "--heartbeat-interval", "0.3", "--log-level", "warning", "--data-dir", str(data_dir), *extra]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1"))
        self.banner: dict[str, str] = {}
        self.node_id = ""
        assert self.proc.stdout is not None
        wait_until_sync(self._banner_line, "the node printed its whole banner (its config line)", timeout=60,
                        interval=0)

    def _banner_line(self) -> bool:
        """Read one banner line; true once it is the last (config) line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"node exited ({self.proc.wait()}): {err}")
        if line.startswith("spiralfast ") and " node " in line:
            self.node_id = line.split(" node ", 1)[1].strip()
            return False
        key, _, rest = line.strip().partition(" ")
        self.banner[key] = rest.strip()
        return key == "config"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def start_fails(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A ``mesh start`` expected to exit by itself."""
    return cli("mesh", "start", "--no-redis", "--heartbeat-interval", "0.3", "--log-level", "warning", *args,
               timeout=timeout)


def status(url: str) -> dict[str, Any]:
    r = cli("mesh", "status", "--node", url, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def db_files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if p.name.endswith(".db")}


# -- a stable identity ----------------------------------------------------------------------


def test_a_restart_keeps_the_id_and_the_event_log_and_node_id_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Node(data)
    try:
        node_id = first.node_id
        id_file = data / f"node_id.{first.port}"
        assert id_file.read_text().strip() == node_id
        assert id_file.stat().st_mode & 0o777 == 0o600
        assert first.banner["identity"].startswith("new, kept in")
        assert first.banner["persistence"] == f"on: {data / (node_id + '.db')}"
        assert status(first.url)["node_id"] == node_id
    finally:
        assert first.stop() == 0
    files = db_files(data)
    assert files == {f"{node_id}.db"}

    again = Node(data, port=first.port)
    try:
        assert again.node_id == node_id  # the same node ...
        assert again.banner["identity"] == f"kept in {id_file}"
        assert status(again.url)["node_id"] == node_id
    finally:
        assert again.stop() == 0
    assert db_files(data) == files  # ... with the same event log: no new file

    other = Node(data, "--node-id", "explicit-1")
    try:
        assert other.node_id == "explicit-1"
        assert other.banner["identity"] == "node_id from flag --node-id"
    finally:
        assert other.stop() == 0
    assert id_file.read_text().strip() == node_id  # untouched by --node-id
    env_node = cli("config", "show", "--json", "--data-dir", str(data))
    assert json.loads(env_node.stdout)["settings"]["data_dir"]["value"] == str(data)


def test_no_db_keeps_the_id_when_it_can_else_a_fresh_one_with_a_note(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a = Node(data, "--no-db")
    a.stop()
    b = Node(data, "--no-db", port=a.port)
    try:
        assert b.node_id == a.node_id and b.banner["persistence"] == "off"
        assert db_files(data) == set()
    finally:
        b.stop()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    c = Node(blocker / "data", "--no-db")
    try:
        assert c.node_id and c.banner["identity"].startswith("new at each start")
    finally:
        c.stop()
    assert c.proc.stderr is not None
    warning = c.proc.stderr.read()
    assert "cannot keep this node's id" in warning and "Traceback" not in warning


@pytest.mark.parametrize("content", [b"", b"two words\n", b"\xff\xfe\x00", b"x" * 300])
def test_a_corrupt_id_file_is_one_error_line(tmp_path: Path, content: bytes) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    id_file = data / f"node_id.{port}"
    id_file.write_bytes(content)
    r = start_fails("--data-dir", str(data), "--port", str(port))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert error_lines(r.stderr) == [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(error_lines(r.stderr)) == 1 and "is corrupt" in r.stderr and str(id_file) in r.stderr
    assert id_file.read_bytes() == content  # nothing lost


def test_an_unreadable_id_file_is_one_error_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    (data / f"node_id.{port}").mkdir(parents=True)  # unreadable as a file, even for root
    r = start_fails("--data-dir", str(data), "--port", str(port))
    assert r.returncode == 1 and len(error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr
    assert "cannot read node id file" in r.stderr


# -- one live node per id ---------------------------------------------------------------------


def test_one_data_dir_two_ports_are_two_nodes_and_one_id_runs_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Node(data)
    try:
        # The README's two-node example: another port in the same (default) data directory
        # is another node, with an id of its own kept for that port.
        second = Node(data, "--peer", first.url)
        try:
            assert second.node_id != first.node_id
            assert (data / f"node_id.{second.port}").read_text().strip() == second.node_id
            assert status(second.url)["node_id"] == second.node_id
        finally:
            assert second.stop() == 0
        # The same id in the same data directory is refused, naming the live holder.
        r = start_fails("--data-dir", str(data), "--node-id", first.node_id, "--port", str(free_port()))
        assert r.returncode == 1, r.stderr
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert f"node id {first.node_id} is already held by a live node (pid {first.proc.pid} at {first.url})" \
            in lines[0] and "--data-dir" in lines[0]
        assert first.alive() and status(first.url)["node_id"] == first.node_id
        # a start refused before it began (its port is taken) leaves no data directory behind
        fresh = tmp_path / "fresh"
        r3 = start_fails("--data-dir", str(fresh), "--port", str(first.port))
        assert r3.returncode == 1 and "cannot listen" in r3.stderr and not fresh.exists()
    finally:
        assert first.stop() == 0
    after = Node(data, port=first.port)  # the lock went with the process
    try:
        assert after.node_id == first.node_id
    finally:
        after.stop()


def _websocket_url(proc: subprocess.Popen[str]) -> str:
    """The ws:// URL from a starting node's banner (``websocket   ws://host:port ...``)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().startswith("websocket "):
            return line.split()[1]
    raise AssertionError("no websocket line in the banner")


def test_two_first_starts_at_once_agree_on_one_id_and_one_runs(tmp_path: Path) -> None:
    # Nodes on no fixed port (port 0) share the data directory's one id file: two first
    # starts at once race to make it, agree on its id, and only one of them runs.
    data = tmp_path / "data"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", "0", "--no-redis", "--log-level",
         "warning", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    ) for _ in range(2)]
    try:
        loser = wait_until_sync(lambda: [p for p in procs if p.poll() is not None], "one start refused",
                                timeout=60)
        assert len(loser) == 1 and loser[0].returncode == 1
        err = loser[0].stderr.read() if loser[0].stderr else ""
        node_id = (data / "node_id").read_text().strip()
        assert error_lines(err) and error_lines(err)[0].startswith(f"error: node id {node_id} is already held")
        winner = procs[1 - procs.index(loser[0])]
        url = _websocket_url(winner)
        assert wait_until_sync(lambda: cli("mesh", "status", "--node", url, "--json").returncode == 0,
                               "the winner answers mesh status", timeout=60)
        assert status(url)["node_id"] == node_id and winner.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(20)


def test_a_duplicate_id_dialling_the_live_node_exits_nonzero(tmp_path: Path) -> None:
    live = Node(tmp_path / "a", "--node-id", "dup-1")
    try:
        ok = Node(tmp_path / "b", "--node-id", "other-1", "--peer", live.url)  # the positive path: it joins
        try:
            wait_until_sync(lambda: len(status(live.url)["links"]) == 1, "link to other-1", timeout=30)
        finally:
            ok.stop()
        r = start_fails("--data-dir", str(tmp_path / "c"), "--node-id", "dup-1", "--port", str(free_port()),
                        "--peer", live.url)
        assert r.returncode == 1
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert lines[0].startswith("error: node id dup-1 is already held by a live node") and live.url in lines[0]
        assert live.alive() and status(live.url)["node_id"] == "dup-1"
    finally:
        assert live.stop() == 0


def test_a_duplicate_id_refused_by_a_member_exits_nonzero(tmp_path: Path) -> None:
    """Through a third node: it refuses the twin while the original's link is up; the
    twin exits once that has lasted longer than a dead twin's stale link could (the
    silence limit, 3 heartbeats of 0.3 s, one heartbeat and the suspicion timeout)."""
    live = Node(tmp_path / "a", "--node-id", "dup-2")
    hub = Node(tmp_path / "h", "--node-id", "hub-2", "--peer", live.url)
    try:
        wait_until_sync(lambda: {n["node_id"] for n in json.loads(cli("mesh", "nodes", "--node", hub.url, "--json").stdout)}
                        == {"dup-2", "hub-2"}, "hub linked to dup-2", timeout=30)
        r = start_fails("--data-dir", str(tmp_path / "c"), "--node-id", "dup-2", "--port", str(free_port()),
                        "--peer", hub.url, timeout=120)
        assert r.returncode == 1
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert lines[0].startswith("error: node id dup-2 is already held by a live node")
        assert "already in the mesh" in lines[0]
        assert live.alive() and hub.alive()
        assert {n["node_id"] for n in json.loads(cli("mesh", "nodes", "--node", hub.url, "--json").stdout)} \
            == {"dup-2", "hub-2"}
    finally:
        hub.stop()
        live.stop()


def test_a_twin_through_a_member_exits_at_once_at_the_default_heartbeat(tmp_path: Path) -> None:
    """At the default heartbeat (30 s) the member's refusal is decisive: the link it holds
    for the id proved another key (a restart of the same node would prove the same key,
    kept with its id), so the twin stops without waiting out heartbeats (it used to take
    3 + 1 heartbeats and the suspicion timeout: 124 s)."""
    hb = ("--heartbeat-interval", "30")
    live = Node(tmp_path / "a", "--node-id", "dup-3", *hb)
    hub = Node(tmp_path / "h", "--node-id", "hub-3", "--peer", live.url, *hb)
    try:
        wait_until_sync(lambda: {n["node_id"] for n in json.loads(cli("mesh", "nodes", "--node", hub.url, "--json").stdout)}
                        == {"dup-3", "hub-3"}, "hub linked to dup-3", timeout=30)
        t0 = time.monotonic()
        r = start_fails("--data-dir", str(tmp_path / "c"), "--node-id", "dup-3", "--port", str(free_port()),
                        "--peer", hub.url, *hb, timeout=120)
        took = time.monotonic() - t0
        assert r.returncode == 1, r.stderr
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert lines[0].startswith("error: node id dup-3 is already held by a live node") and "another key" in lines[0]
        # Far below one heartbeat interval: the bound is the behaviour (no heartbeat waited for).
        assert took < 30, took
        assert live.alive() and hub.alive()
    finally:
        hub.stop()
        live.stop()


def test_the_same_key_replaces_a_lingering_link_without_exiting(tmp_path: Path) -> None:
    """A node whose old process is frozen (its link still open at the member) comes back
    with the same id and the same key (kept in its data directory): the member takes the
    new link instead of refusing it, and the node runs on."""
    import shutil

    hb = ("--heartbeat-interval", "30")  # the frozen link lingers at the hub (3 x 30 s of silence)
    hub = Node(tmp_path / "h", "--node-id", "hub-4", *hb)
    old = Node(tmp_path / "b", "--node-id", "same-4", "--peer", hub.url, *hb)
    new: Node | None = None
    try:
        wait_until_sync(lambda: {n["node_id"] for n in json.loads(cli("mesh", "nodes", "--node", hub.url, "--json").stdout)}
                        == {"hub-4", "same-4"}, "hub linked to same-4", timeout=30)
        shutil.copytree(tmp_path / "b", tmp_path / "b2", ignore=shutil.ignore_patterns("*.lock", "*.db*"))
        assert (tmp_path / "b2" / "same-4.key").exists()
        old.proc.send_signal(signal.SIGSTOP)  # frozen: its link stays open at the hub
        new = Node(tmp_path / "b2", "--node-id", "same-4", "--peer", hub.url, *hb)

        def hub_sees_new() -> bool:
            nodes = json.loads(cli("mesh", "nodes", "--node", hub.url, "--json").stdout)
            return any(n["node_id"] == "same-4" and n.get("websocket_endpoint") == new.url for n in nodes)  # type: ignore[union-attr]

        wait_until_sync(hub_sees_new, timeout=60, what="the hub took the new process's link for same-4")
        assert new.alive() and status(new.url)["node_id"] == "same-4"
    finally:
        old.proc.send_signal(signal.SIGCONT)
        old.stop()
        if new is not None:
            new.stop()
        hub.stop()


def test_a_twin_on_a_bus_exits_and_the_first_runs_on(tmp_path: Path) -> None:
    """Two processes with one id on Redis only (no WebSocket): the one that started later
    sees frames with its own id under another key and stops with one line."""
    from . import services

    svc = services.redis()
    from .conftest import require

    require(svc.available, "redis-server")
    mesh = f"twins-{os.getpid()}-{time.monotonic_ns()}"

    def bus_node(d: Path, port: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "spiralfast", "mesh", "start", "--no-websocket", "--redis", svc.url,
             "--name", mesh, "--node-id", "twin-5", "--observer-port", str(port), "--heartbeat-interval", "0.5",
             "--log-level", "warning", "--data-dir", str(d)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    p1, p2 = free_port(), free_port()
    first = bus_node(tmp_path / "a", p1)
    second = None
    try:
        url1 = f"ws://127.0.0.1:{p1}"
        wait_until_sync(lambda: cli("mesh", "status", "--node", url1, "--json").returncode == 0, timeout=60,
                        what="the first twin answers on its observer port")
        second = bus_node(tmp_path / "b", p2)
        rc = second.wait(60)
        err = second.stderr.read() if second.stderr else ""
        assert rc == 1, err
        lines = error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err
        assert lines[0].startswith("error: node id twin-5 is already held") and "another key" in lines[0]
        assert first.poll() is None and status(url1)["node_id"] == "twin-5"
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(20)


# -- papercuts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProc]:
    n = NodeProc("paper-1", "--persist-events", "all")
    yield n
    n.stop()


def test_type_takes_commas_in_events_and_history(node: NodeProc) -> None:
    for t in ("pc_a", "pc_b", "pc_c"):
        assert cli("mesh", "publish", t, '{"x": 1}', "--node", node.url).returncode == 0

    def types(*args: str) -> list[str]:
        r = cli(*args, "--node", node.url, "--json")
        assert r.returncode == 0, r.stderr
        return sorted(json.loads(x)["type"] for x in r.stdout.splitlines())

    assert types("mesh", "events", "--type", "pc_a") == ["pc_a"]  # the positive path
    assert types("mesh", "events", "--type", "pc_a,pc_b") == ["pc_a", "pc_b"]
    assert types("mesh", "events", "--type", "pc_a, pc_c", "--type", "pc_b") == ["pc_a", "pc_b", "pc_c"]
    wait_until_sync(lambda: types("mesh", "history", "--type", "pc_a,pc_b") == ["pc_a", "pc_b"], "history by types",
                    timeout=30)
    bad = cli("mesh", "events", "--type", ",", "--node", node.url)
    assert bad.returncode == 2 and len(error_lines(bad.stderr)) == 1 and "--type" in bad.stderr


@pytest.mark.parametrize("count", ["0", "-3"])
def test_events_count_below_one_is_an_error(node: NodeProc, count: str) -> None:
    assert cli("mesh", "publish", "pc_count", "{}", "--node", node.url).returncode == 0
    ok = cli("mesh", "events", "--count", "1", "--node", node.url, "--json")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 1
    r = cli("mesh", "events", "--count", count, "--node", node.url)
    assert r.returncode == 2 and r.stdout == ""
    assert error_lines(r.stderr) == [f"error: --count must be at least 1, got {count}"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_non_finite_float_settings_are_refused_in_every_layer(tmp_path: Path, value: str) -> None:
    ok = cli("config", "show", "--json", "--heartbeat-interval", "5")
    assert ok.returncode == 0 and json.loads(ok.stdout)["settings"]["heartbeat_interval"]["value"] == 5.0
    for args, env in (
        (["--heartbeat-interval", value], {}),
        (["--rate-limit", value], {}),
        ([], {"SPIRALFAST_SYNC_INTERVAL": value}),
    ):
        r = subprocess.run([sys.executable, "-m", "spiralfast", "config", "show", *args], capture_output=True,
                           text=True, env=dict(os.environ, **env), cwd=tmp_path, timeout=60)
        assert r.returncode == 2, (args, env, r.stdout)
        assert len(error_lines(r.stderr)) == 1 and "finite" in r.stderr and "Traceback" not in r.stderr
    toml = tmp_path / "inf.toml"
    toml.write_text(f"persist_retention_days = {value.lower().replace('infinity', 'inf')}\n")
    r = cli("config", "show", "--config", str(toml))
    assert r.returncode == 2 and len(error_lines(r.stderr)) == 1 and "finite" in r.stderr
    assert "persist_retention_days" in r.stderr


def test_the_banner_says_when_the_event_log_cannot_be_written(tmp_path: Path) -> None:
    good = Node(tmp_path / "data", "--db", str(tmp_path / "events.db"))
    try:
        assert good.banner["persistence"] == f"on: {tmp_path / 'events.db'}"
    finally:
        good.stop()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = Node(tmp_path / "data", "--db", str(blocker / "events.db"))  # a file where a directory should be
    try:
        text = bad.banner["persistence"]
        assert text.startswith(f"NOT writing: {blocker / 'events.db'}") and "on:" not in text
        st = status(bad.url)
        assert st["persistence"]["error"]  # what the running node says, as the banner
    finally:
        bad.stop()


def test_rate_limit_and_rate_burst_have_their_own_help() -> None:
    from spiralfast.node import settings

    specs = settings.specs_by_name()
    assert specs["rate_limit"].help != specs["rate_burst"].help
    helps = [s.help for s in settings.field_specs()]
    assert len(helps) == len(set(helps)), "two settings share one help text"
    r = subprocess.run([sys.executable, "-m", "spiralfast", "mesh", "start", "--help"], capture_output=True,
                       text=True, env=dict(os.environ, COLUMNS="400", NO_COLOR="1"), timeout=60)
    assert r.returncode == 0
    lines = {ln.split()[0]: " ".join(ln.split()) for ln in r.stdout.splitlines() if ln.strip().startswith("--rate")}
    assert "events one peer link" in lines["--rate-burst"].lower()
    assert "events per second" in lines["--rate-limit"].lower() and "burst" not in lines["--rate-limit"].lower()
    assert "--data-dir" in r.stdout


def test_follow_survives_a_node_restart(tmp_path: Path) -> None:
    n = NodeProc("follow-1")
    follower = subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "mesh", "events", "--follow", "--type", "pc_tick", "--count", "2",
         "--recent", "0", "--json", "--node", n.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        wait_until_sync(lambda: status(n.url)["followers"] >= 1, "follower subscribed", timeout=30)
        assert cli("mesh", "publish", "pc_tick", '{"n": 1}', "--node", n.url).returncode == 0
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["data"] == {"n": 1}
        n.stop()
        n.start()  # a new incarnation, same id and port
        wait_until_sync(lambda: status(n.url)["followers"] >= 1, timeout=60, what="follower back")
        assert cli("mesh", "publish", "pc_tick", '{"n": 2}', "--node", n.url).returncode == 0
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert [json.loads(x)["data"] for x in out.splitlines()] == [{"n": 2}]
        assert "reconnecting" in err and "reconnected" in err and "Traceback" not in err
        assert not error_lines(err)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        n.stop()
