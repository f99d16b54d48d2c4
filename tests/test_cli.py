"""The installed console scripts, run as subprocesses against real nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import free_port, require
from .procs import NodeProc
from .waiting import wait_until_sync

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

    def both() -> bool:
        r = cli("mesh", "nodes", "--node", a.url, "--json")
        return r.returncode == 0 and len(json.loads(r.stdout)) == 2

    wait_until_sync(both, "A lists A and B", interval=0.2)
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
    wait_until_sync(lambda: json.loads(cli("mesh", "status", "--node", b.url, "--json").stdout)["followers"] >= 1,
                    "the follower subscribed on B", interval=0.1)
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


# -- issue 14: operator experience -------------------------------------------------------


def cli_env(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, stdin: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(BIN, "spiralfast")
    cmd = [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "spiralfast", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin, cwd=cwd,
                          env=dict(os.environ, NO_COLOR="1", **(env or {})))


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one stderr line, an ``error:`` with a reason."""
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 3, r.stderr
    assert "Traceback" not in r.stderr and "╭" not in r.stderr
    return lines[0]


def test_version() -> None:
    from spiralfast import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"spiralfast {__version__}")
    assert "compiled" in r.stdout or "pure Python" in r.stdout


def test_shell_completion() -> None:
    r = cli("completion", "bash")
    assert r.returncode == 0 and "_SPIRALFAST_COMPLETE" in r.stdout and "complete" in r.stdout
    exe = os.path.join(BIN, "spiralfast")
    require(os.path.exists(exe), "the installed console script (pip install -e .)")
    env = dict(os.environ, _SPIRALFAST_COMPLETE="complete_bash", COMP_WORDS="spiralfast me", COMP_CWORD="1")
    done = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=30)
    assert "mesh" in done.stdout.split()
    env.update(COMP_WORDS="spiralfast mesh st", COMP_CWORD="2")
    done = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=30)
    assert {"start", "status", "state"} <= set(done.stdout.split())
    assert one_error_line(cli("completion", "tcsh"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mesh", "nosuch"], "No such command"),
        (["mesh", "status", "--bogus"], "--bogus"),
        (["bench", "--events", "0"], "--events"),
        (["bench", "--events", "-5"], "--events"),
        (["bench", "--rate", "-1"], "--rate"),
        (["bench", "--transport", "carrier-pigeon"], "ws, redis or nats"),
        (["bench", "--transport", "nats", "--nats", "foo"], "nats_url"),
        (["mesh", "start", "--no-redis", "--log-format", "xml"], "text or json"),
        (["mesh", "start", "--no-redis", "--log-level", "loud"], "log level"),
        (["mesh", "start", "--no-redis", "--port", "abc"], "--port"),
        (["mesh", "start", "--no-redis", "--heartbeat-interval", "-1"], "heartbeat_interval"),
        (["mesh", "start", "--no-redis", "--peer", "http://x"], "peers"),
        (["mesh", "start", "--redis", "redis://h:1", "--no-redis"], "contradict"),
        (["mesh", "start", "--no-redis", "--certfile", "/nonexistent.pem", "--keyfile", "/nonexistent.key"],
         "/nonexistent"),
        (["mesh", "start", "--no-redis", "--certfile", "/nonexistent.pem"], "ssl_keyfile"),
        (["mesh", "publish", "", "--node", "ws://127.0.0.1:1"], "must not be empty"),
        (["mesh", "publish", "  ", "--node", "ws://127.0.0.1:1"], "must not be empty"),
        (["mesh", "publish", "x", "@/nonexistent.json", "--node", "ws://127.0.0.1:1"], "cannot read data file"),
        (["mesh", "status", "--node", "ws://127.0.0.1:1", "--timeout", "0"], "--timeout"),
        (["mesh", "events", "--count", "-1"], "--count"),
        (["config", "show", "--websocket-port", "70000"], "websocket_port"),
    ],
)
def test_usage_and_config_errors_are_one_line(args: list[str], needle: str) -> None:
    r = cli(*args)
    line = one_error_line(r)
    assert needle in line
    assert r.returncode == 2


def test_help_text_is_clean() -> None:
    """Every option has help; no literal double backticks; flags show no <bool>."""
    import typer

    from spiralfast.cli import _tidy_help, app

    root = typer.main.get_command(app)
    _tidy_help(root)
    seen = 0

    def walk(cmd: object, path: str) -> None:
        nonlocal seen
        assert "``" not in (getattr(cmd, "help", None) or ""), path
        for p in getattr(cmd, "params", []):
            if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False):
                assert p.help and "``" not in p.help, f"{path} {p.opts}"
                seen += 1
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(root, "spiralfast")
    assert seen > 60  # every MeshConfig field is an option of mesh start, ritual start and config show
    from spiralfast.node import settings

    start_help = cli("mesh", "start", "--help").stdout
    for spec in settings.field_specs():  # every MeshConfig field has its flag
        assert spec.flags[0].split("/")[0] in start_help, spec.name
    for args in (["mesh", "status", "--help"], ["mesh", "start", "--help"], ["mesh", "events", "--help"],
                 ["--help"], ["config", "show", "--help"], ["bench", "--help"]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert "<bool>" not in r.stdout and "``" not in r.stdout, args


def test_config_show_layers_and_masks_token(tmp_path: Any) -> None:
    (tmp_path / "spiralfast.toml").write_text(
        'websocket_port = 9123\nauth_token = "file-secret"\ncapabilities = ["gpu"]\n[log]\nformat = "json"\n')
    r = cli_env("config", "show", "--sync-interval", "4", env={"SPIRALFAST_MESH_NAME": "envmesh"}, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "file-secret" not in r.stdout and "********" in r.stdout
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")}
    assert "9123" in rows["websocket_port"] and "spiralfast.toml" in rows["websocket_port"]
    assert "envmesh" in rows["mesh_name"] and "env SPIRALFAST_MESH_NAME" in rows["mesh_name"]
    assert "4.0" in rows["sync_interval"] and "flag" in rows["sync_interval"]
    assert "default" in rows["heartbeat_interval"]
    j = cli_env("config", "show", "--json", "--token", "flag-secret", cwd=str(tmp_path))
    data = json.loads(j.stdout)
    assert "flag-secret" not in j.stdout and data["settings"]["auth_token"]["value"] == "********"
    assert data["settings"]["capabilities"]["value"] == ["gpu"]
    assert data["settings"]["log_format"] == {"value": "json", "source": f"file {data['file']}"}
    toml = cli_env("config", "show", "--toml", "--peer", "ws://a:1", cwd=str(tmp_path))
    assert toml.returncode == 0 and "file-secret" not in toml.stdout
    (tmp_path / "round.toml").write_text(toml.stdout)
    again = json.loads(cli_env("config", "show", "--json", "--config", str(tmp_path / "round.toml")).stdout)
    assert again["settings"]["websocket_port"]["value"] == 9123
    assert again["settings"]["peers"]["value"] == ["ws://a:1"]
    bad = cli_env("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert "not found" in one_error_line(bad)


def test_node_from_file_env_and_flags_with_truthful_banner(tmp_path: Any) -> None:
    port = free_port()
    (tmp_path / "spiralfast.toml").write_text(
        f'node_id = "F"\nwebsocket_port = {port}\nredis_url = "redis://127.0.0.1:1"\nenable_redis = true\n'
        'capabilities = ["gpu", "cpu"]\n')
    n = NodeProc("F", port=port, env={"SPIRALFAST_MESH_NAME": "envmesh"}, cwd=str(tmp_path))
    try:
        banner = n.read_banner()
        assert banner["websocket"].startswith(f"ws://127.0.0.1:{port}") and "TLS off" in banner["websocket"]
        assert banner["redis"] == "off"  # --no-redis (NodeProc) beats the file's enable_redis
        assert banner["persistence"].startswith("on") and "F.db" in banner["persistence"]  # the default log
        pure = os.environ.get("SPIRALFAST_PUREPYTHON", "") not in ("", "0")
        assert banner["build"].startswith("pure Python" if pure else "compiled")
        assert banner["config"].endswith("spiralfast.toml")
        assert "envmesh" in banner["mesh"] and "no token" in banner["mesh"]
        st = json.loads(cli("mesh", "status", "--node", n.url, "--json").stdout)
        assert st["node_id"] == "F" and st["mesh_name"] == "envmesh"
        nodes = json.loads(cli("mesh", "nodes", "--node", n.url, "--json").stdout)
        assert nodes[0]["capabilities"][:2] == ["gpu", "cpu"]
        # inspection commands find the node from the same file
        here = cli_env("mesh", "status", "--json", cwd=str(tmp_path))
        assert here.returncode == 0 and json.loads(here.stdout)["node_id"] == "F"
    finally:
        n.stop()


def test_banner_says_redis_is_not_connected_and_json_logs_carry_node_id() -> None:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(port), "--node-id", "R",
         "--redis", "redis://127.0.0.1:1", "--log-format", "json", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert p.stdout is not None
        lines = []
        while not lines or not lines[-1].strip().startswith("config"):
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            lines.append(line)
        redis_line = next(x for x in lines if x.strip().startswith("redis"))
        assert "NOT connected" in redis_line and "redis://127.0.0.1:1" in redis_line
        p.send_signal(2)
        out, err = p.communicate(timeout=60)  # a hang guard, not a timing check
        assert p.returncode == 0
        recs = [json.loads(x) for x in err.splitlines() if x.strip()]
        assert recs and all(r["node_id"] == "R" for r in recs)
        assert any("redis" in r["msg"].lower() for r in recs)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_repeated_conditions_do_not_flood_the_log() -> None:
    """An unreachable peer and an unreachable Redis for several seconds: each is logged
    when it first happens, then with back-off and a count, not once per retry."""
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "mesh", "start", "--port", str(port), "--node-id", "FLOOD",
         "--peer", "ws://127.0.0.1:1", "--redis", "redis://127.0.0.1:1", "--heartbeat-interval", "0.3",
         "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert p.stdout is not None
        while not p.stdout.readline().strip().startswith("config"):
            pass
        # A window that means time: retries happen many times a second without back-off.
        # The bound below follows from _log.BACKOFF_INITIAL (1 s, doubling): lines at about
        # 0, 1, 3 s (and 7) in a 6 s window; <= 6 is the margin (a loaded machine logs fewer).
        time.sleep(6)
        p.send_signal(2)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    peer_lines = [x for x in err.splitlines() if "ws://127.0.0.1:1" in x]
    redis_lines = [x for x in err.splitlines() if "redis" in x.lower() and "ws://127.0.0.1:1" not in x]
    assert 1 <= len(peer_lines) <= 6, err
    assert 1 <= len(redis_lines) <= 6, err
    assert all("[FLOOD]" in x for x in err.splitlines() if x.strip()), err
    assert any("more since the last report" in x for x in peer_lines + redis_lines), err


def test_port_in_use_exits_at_once_with_one_line(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    r = cli("mesh", "start", "--port", str(a.port), "--no-redis", "--log-level", "info")
    assert r.returncode == 1 and r.stdout == ""
    line = one_error_line(r)
    assert "cannot listen" in line and str(a.port) in line and "in use" in line


def test_publish_from_stdin_and_file_and_big_data(pair: tuple[NodeProc, NodeProc], tmp_path: Any) -> None:
    a, b = pair
    big = {"blob": "x" * 300_000}  # over the ~128 KiB argument limit
    r = cli_env("mesh", "publish", "stdin_evt", "-", "--node", a.url, stdin=json.dumps(big))
    assert r.returncode == 0, r.stderr
    f = tmp_path / "d.json"
    f.write_text('{"from": "file"}')
    r = cli_env("mesh", "publish", "file_evt", f"@{f}", "--node", a.url)
    assert r.returncode == 0, r.stderr
    evs = [json.loads(x) for x in cli("mesh", "events", "--node", a.url, "--json", "--type", "stdin_evt",
                                      "--type", "file_evt").stdout.splitlines()]
    assert [e["type"] for e in evs] == ["stdin_evt", "file_evt"]
    assert len(evs[0]["data"]["blob"]) == 300_000 and evs[1]["data"] == {"from": "file"}
    assert "empty" in one_error_line(cli_env("mesh", "publish", "t", "-", "--node", a.url, stdin=""))
    assert "not valid JSON" in one_error_line(cli_env("mesh", "publish", "t", "-", "--node", a.url, stdin="{"))


def test_events_follow_shows_recent_first(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    assert cli("mesh", "publish", "recent_evt", '{"n": 1}', "--node", a.url).returncode == 0
    follower = subprocess.Popen(
        [sys.executable, "-m", "spiralfast", "mesh", "events", "--follow", "--count", "1", "--json",
         "--type", "recent_evt", "--node", a.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())  # the recent one, before anything new
        assert first["data"] == {"n": 1}
        assert cli("mesh", "publish", "recent_evt", '{"n": 2}', "--node", a.url).returncode == 0
        out, err = follower.communicate(timeout=20)
        assert follower.returncode == 0, err
        assert [json.loads(x)["data"]["n"] for x in out.splitlines()] == [2]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_watch_json_prints_json_lines(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    r = cli("mesh", "status", "--watch", "--json", "--iterations", "2", "--interval", "0.1", "--node", a.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(json.loads(x)["node_id"] == "A" for x in lines)


def test_state_missing_is_an_error(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    assert cli("mesh", "state", "cli_cat", "k1", "--set", '{"v": 1}', "--node", a.url).returncode == 0
    ok = cli("mesh", "state", "cli_cat", "k1", "--node", a.url, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"v": 1}
    assert "no key 'missing'" in one_error_line(cli("mesh", "state", "cli_cat", "missing", "--node", a.url))
    assert "no state category" in one_error_line(cli("mesh", "state", "no_such_cat", "--node", a.url))
    assert cli("mesh", "state", "cli_cat", "k1", "--set", "null", "--node", a.url).returncode == 0
    null = cli("mesh", "state", "cli_cat", "k1", "--node", a.url, "--json")
    assert null.returncode == 0 and null.stdout.strip() == "null"  # present, with the value null


def test_wrong_token_missing_token_and_timeout_have_reasons() -> None:
    import socket

    t = NodeProc("T2", "--token", "sekret")
    try:
        assert "wrong token" in one_error_line(cli("mesh", "status", "--node", t.url, "--token", "wrong"))
        assert "requires a token" in one_error_line(cli("mesh", "status", "--node", t.url))
        env_ok = cli_env("mesh", "status", "--node", t.url, "--json", env={"SPIRALFAST_AUTH_TOKEN": "sekret"})
        assert env_ok.returncode == 0 and json.loads(env_ok.stdout)["node_id"] == "T2"
    finally:
        t.stop()
    with socket.socket() as silent:  # accepts TCP, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        line = one_error_line(cli("mesh", "status", "--node", f"ws://127.0.0.1:{port}", "--timeout", "1"))
        assert f"127.0.0.1:{port}" in line and "within 1s" in line


def _self_signed(tmp: Any) -> tuple[str, str]:
    from .conftest import require

    require(shutil.which("openssl") is not None, "the openssl binary (for a test certificate)")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_from_the_command_line(tmp_path: Any, pair: tuple[NodeProc, NodeProc]) -> None:
    cert, key = _self_signed(tmp_path)
    s = NodeProc("TLS-A", "--certfile", cert, "--keyfile", key, scheme="wss")
    b = None
    try:
        banner = s.read_banner()
        assert banner["websocket"].startswith("wss://127.0.0.1:") and "TLS on" in banner["websocket"]
        ok = cli("mesh", "status", "--node", s.url, "--cafile", cert, "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["node_id"] == "TLS-A"
        ok_env = cli_env("mesh", "status", "--node", s.url, "--json", env={"SPIRALFAST_CAFILE": cert})
        assert ok_env.returncode == 0, ok_env.stderr
        assert "not trusted" in one_error_line(cli("mesh", "status", "--node", s.url))
        plain = one_error_line(cli("mesh", "status", "--node", s.url.replace("wss://", "ws://"), "--timeout", "2"))
        assert "wss://" in plain and "within 2s" in plain
        # a peer dialling wss:// verifies with SPIRALFAST_CAFILE
        b = NodeProc("TLS-B", "--peer", s.url, env={"SPIRALFAST_CAFILE": cert})
        def joined() -> bool:
            r = cli("mesh", "nodes", "--node", b.url, "--json")
            return r.returncode == 0 and {n["node_id"] for n in json.loads(r.stdout)} == {"TLS-A", "TLS-B"}

        wait_until_sync(joined, "TLS-B joined TLS-A over wss:// (verified with SPIRALFAST_CAFILE)", interval=0.2)
    finally:
        if b is not None:
            b.stop()
        s.stop()
    # wss:// against a plain node: one line with a reason, no TLS traceback
    a, _ = pair
    line = one_error_line(cli("mesh", "nodes", "--node", a.url.replace("ws://", "wss://")))
    assert "TLS" in line


def test_bench_redis_down_leaves_no_process_and_parent_death_reaps_child() -> None:
    import psutil

    r = cli("bench", "--transport", "redis", "--redis", "redis://127.0.0.1:1/7", "--events", "100")
    assert "unreachable" in one_error_line(r)
    assert not [p for p in psutil.process_iter(["cmdline"]) if "redis://127.0.0.1:1/7" in " ".join(p.info["cmdline"] or [])]
    parent = subprocess.Popen([sys.executable, "-m", "spiralfast", "bench", "--events", "100000000", "--rate", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def started() -> list[Any]:
            assert parent.poll() is None, "the bench parent exited"
            return psutil.Process(parent.pid).children()  # type: ignore[no-any-return]

        children: list[Any] = wait_until_sync(started, "the bench child started", interval=0.1)
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, "bench child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_status_table_of_a_node_with_a_bus_link() -> None:
    """Review finding: ``mesh status`` (table) crashed on any node with a Redis or NATS
    link (a bus link names no single peer)."""
    from .nats_cluster import nats_or_fail

    url = nats_or_fail()
    node = NodeProc("BUS", "--nats", url, "--name", f"cli_bus_{os.getpid()}")
    try:
        wait_until_sync(lambda: json.loads(cli("mesh", "status", "--node", node.url, "--json").stdout).get("nats"),
                        "the node's NATS link is up", interval=0.2)
        r = cli("mesh", "status", "--node", node.url)
        assert r.returncode == 0, r.stderr
        assert "nats(" in r.stdout and "nats" in r.stdout
    finally:
        node.stop()
