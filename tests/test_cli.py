"""The installed console scripts, run as subprocesses against real nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .conftest import free_port
from .procs import NodeProc

pytestmark = pytest.mark.timeout(120)

BIN = os.path.dirname(sys.executable)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(BIN, "spiralfast")
    cmd = [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "spiralfast", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, NO_COLOR="1"))


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[NodeProc, NodeProc]]:
    a = NodeProc("A")
    b = NodeProc("B", "--peer", a.url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = cli("mesh", "nodes", "--node", a.url, "--json")
        if r.returncode == 0 and len(json.loads(r.stdout)) == 2:
            break
        time.sleep(0.2)
    yield a, b
    a.stop()
    b.stop()


def test_console_scripts_exist() -> None:
    for name in ("spiralfast", "spiralcodex"):
        assert shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", "")), name
    r = subprocess.run([sys.executable, "-m", "spiralfast", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "mesh" in r.stdout


def test_status_and_nodes_json(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    st = json.loads(cli("mesh", "status", "--node", a.url, "--json").stdout)
    assert st["node_id"] == "A" and st["connected_nodes"] == 2 and st["status"] == "active"
    assert {"uptime", "mesh_name", "nodes", "links"} <= set(st)
    nodes = json.loads(cli("mesh", "nodes", "--node", b.url, "--json").stdout)
    assert {n["node_id"] for n in nodes} == {"A", "B"}
    assert all("seconds_since_heartbeat" in n and "capabilities" in n for n in nodes)
    human = cli("mesh", "nodes", "--node", a.url)
    assert human.returncode == 0 and "codex_node_B" in human.stdout


def test_events_follow_and_publish(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    exe = [sys.executable, "-m", "spiralfast"]
    follower = subprocess.Popen(
        [*exe, "mesh", "events", "--follow", "--count", "2", "--json", "--type", "cli_evt", "--node", b.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while json.loads(cli("mesh", "status", "--node", b.url, "--json").stdout)["followers"] < 1:
        assert time.monotonic() < deadline, "follower never subscribed"
        time.sleep(0.1)
    assert cli("mesh", "publish", "other_evt", "{}", "--node", a.url).returncode == 0
    r1 = cli("mesh", "publish", "cli_evt", '{"n": 1}', "--node", a.url, "--json")
    assert r1.returncode == 0 and json.loads(r1.stdout)["sent"] is True
    r2 = cli("mesh", "publish", "cli_evt", '{"n": 2}', "--node", a.url, "--target", "B")
    assert r2.returncode == 0 and "to B" in r2.stdout
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [e["data"]["n"] for e in lines] == [1, 2] and lines[1]["target_node"] == "B"
    assert all(e["type"] == "cli_evt" and e["source_node"] == "A" for e in lines)
    recent = cli("mesh", "events", "--node", b.url, "--json", "--count", "10", "--type", "cli_evt")
    assert [json.loads(x)["data"]["n"] for x in recent.stdout.splitlines()] == [1, 2]


def test_hud_renders_once_without_terminal(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    r = cli("mesh", "status", "--watch", "--iterations", "1", "--node", a.url)
    assert r.returncode == 0, r.stderr
    assert "nodes" in r.stdout and "codex_node_B" in r.stdout and "links" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mesh", "status", "--node", "ws://127.0.0.1:1"], "cannot reach"),
        (["mesh", "status", "--node", "http://nope"], "bad node URL"),
        (["mesh", "publish", "x", "{not json", "--node", "ws://127.0.0.1:1"], "not valid JSON"),
        (["mesh", "start", "--port", "99999", "--no-redis"], "websocket_port"),
    ],
)
def test_errors_are_one_line_without_traceback(args: list[str], needle: str) -> None:
    r = cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1


def test_port_in_use_and_wrong_token(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    r = cli("mesh", "start", "--port", str(a.port), "--no-redis", "--log-level", "error")
    assert r.returncode != 0 and "cannot listen" in r.stderr and "Traceback" not in r.stderr
    t = NodeProc("T", "--token", "sekret")
    try:
        bad = cli("mesh", "status", "--node", t.url, "--token", "wrong")
        assert bad.returncode != 0 and "Traceback" not in bad.stderr and "error:" in bad.stderr
        missing = cli("mesh", "status", "--node", t.url)
        assert missing.returncode != 0 and "Traceback" not in missing.stderr
        ok = cli("mesh", "status", "--node", t.url, "--token", "sekret", "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["node_id"] == "T"
    finally:
        t.stop()


def test_sigint_exits_zero_and_ritual_start() -> None:
    n = NodeProc("S")
    assert n.sigint() == 0
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "ritual", "start", "--mesh", "--port", str(port), "--no-redis"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert p.stdout is not None
        banner = [p.stdout.readline() for _ in range(4)]
        assert any(f"ws://127.0.0.1:{port}" in line for line in banner)
        p.send_signal(2)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_bench_prints_rate_and_latency() -> None:
    r = cli("bench", "--events", "20000", "--rate", "5000", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["delivered"] == 20000 and res["lost"] == 0 and res["events_per_s"] > 0
    assert res["p99_ms"] >= res["p50_ms"] > 0 and res["latency_lost"] == 0
