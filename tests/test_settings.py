"""Layered configuration (spiralfast.node.settings), the logging helpers and compat's logger
aliases: in-process unit tests, no nodes."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import pytest

from spiralfast._log import BackoffLog, JsonFormatter, RateLimitedLog, setup_logging
from spiralfast.errors import ConfigError
from spiralfast.node import settings
from spiralfast.node.config import MeshConfig


def test_every_meshconfig_field_is_a_setting_with_help() -> None:
    specs = settings.specs_by_name()
    assert set(specs) == {f.name for f in dataclasses.fields(MeshConfig)}
    for s in specs.values():
        assert s.help and "``" not in s.help, s.name
        assert s.env == "SPIRALFAST_" + s.name.upper()


def test_layers_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text('websocket_port = 9001\nmesh_name = "filemesh"\nheartbeat_interval = 2\n'
                 'peers = ["ws://10.0.0.1:8765"]\n[log]\nformat = "json"\n')
    env = {"SPIRALFAST_MESH_NAME": "envmesh", "SPIRALFAST_SYNC_INTERVAL": "3.5"}
    r = settings.resolve({"mesh_name": "flagmesh"}, str(f), env=env, cwd=str(tmp_path))
    c = r.config
    assert c.websocket_port == 9001 and r.sources["websocket_port"] == f"file {f}"
    assert c.mesh_name == "flagmesh" and r.sources["mesh_name"].startswith("flag")
    assert c.sync_interval == 3.5 and r.sources["sync_interval"] == "env SPIRALFAST_SYNC_INTERVAL"
    assert c.heartbeat_interval == 2.0 and isinstance(c.heartbeat_interval, float)
    assert c.peers == ["ws://10.0.0.1:8765"]
    assert c.max_frame_size == MeshConfig().max_frame_size and r.sources["max_frame_size"] == "default"
    assert r.log_format == "json" and r.log_level == "info"
    # the environment beats the file
    r2 = settings.resolve({}, str(f), env=env)
    assert r2.config.mesh_name == "envmesh"


def test_default_file_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / "spiralfast.toml").write_text("[mesh]\nnode-id = 'from-cwd'\n")
    r = settings.resolve({}, env={}, cwd=str(tmp_path))
    assert r.config.node_id == "from-cwd" and r.file and r.file.endswith("spiralfast.toml")
    r3 = settings.resolve({}, env={"SPIRALFAST_CONFIG": str(tmp_path / "spiralfast.toml")}, cwd="/")
    assert r3.config.node_id == "from-cwd"


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("enable_redis", "false", False),
        ("enable_redis", "1", True),
        ("peers", "ws://a:1, ws://b:2", ["ws://a:1", "ws://b:2"]),
        ("peers", '["ws://a:1"]', ["ws://a:1"]),
        ("capabilities", "x,y", ["x", "y"]),
        ("shared_categories", "agents", ["agents"]),
        ("interop", "auto", "auto"),
        ("interop", "off", False),
        ("persist_events", "all", "all"),
        ("persist_events", "a,b", ["a", "b"]),
        ("rate_limit", "", None),
        ("rate_limit", "100", 100.0),
        ("auth_token", "s3cret", "s3cret"),
        ("nats_url", "nats://a:4222,nats://b:4222", ["nats://a:4222", "nats://b:4222"]),
    ],
)
def test_environment_values_parse(name: str, raw: str, expected: object) -> None:
    r = settings.resolve({}, env={"SPIRALFAST_" + name.upper(): raw}, cwd="/nonexistent")
    assert r.values[name] == expected
    assert getattr(r.config, name) == expected or name == "shared_categories"


def test_aliases_and_cafile_variable() -> None:
    r = settings.resolve({}, env={"SPIRALFAST_CAFILE": "/ca.pem", "SPIRALFAST_PORT": "9100"}, cwd="/nonexistent")
    assert r.config.ssl_cafile == "/ca.pem" and r.sources["ssl_cafile"] == "env SPIRALFAST_CAFILE"
    assert r.config.websocket_port == 9100
    # the field's own name wins over its alias
    r2 = settings.resolve({}, env={"SPIRALFAST_CAFILE": "/a", "SPIRALFAST_SSL_CAFILE": "/b"}, cwd="/nonexistent")
    assert r2.config.ssl_cafile == "/b"


def test_errors_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SPIRALFAST_WEBSOCKET_PORT"):
        settings.resolve({}, env={"SPIRALFAST_WEBSOCKET_PORT": "abc"}, cwd="/nonexistent")
    with pytest.raises(ConfigError, match=r"websocket_port.*env SPIRALFAST_WEBSOCKET_PORT"):
        settings.resolve({}, env={"SPIRALFAST_WEBSOCKET_PORT": "99999"}, cwd="/nonexistent")
    bad = tmp_path / "bad.toml"
    bad.write_text("websocket_prot = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'websocket_port'"):
        settings.resolve({}, str(bad), env={})
    bad.write_text("this is not toml = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings.resolve({}, str(bad), env={})
    with pytest.raises(ConfigError, match="not found"):
        settings.resolve({}, str(tmp_path / "missing.toml"), env={})
    with pytest.raises(ConfigError, match="log format must be text or json"):
        settings.resolve({"log_format": "xml"}, env={}, cwd="/nonexistent")
    with pytest.raises(ConfigError, match="log level"):
        settings.resolve({}, env={"SPIRALFAST_LOG_LEVEL": "loud"}, cwd="/nonexistent")


def test_misspelt_environment_variable_is_warned_about() -> None:
    env = {"SPIRALFAST_WEBSOCKET_PROT": "1", "SPIRALFAST_PUREPYTHON": "1", "SPIRALFAST_TEST_REDIS_URL": "x"}
    r = settings.resolve({}, env=env, cwd="/nonexistent")
    assert len(r.warnings) == 1 and "SPIRALFAST_WEBSOCKET_PORT" in r.warnings[0]


def test_relative_paths_in_file_are_relative_to_it(tmp_path: Path) -> None:
    f = tmp_path / "conf" / "n.toml"
    f.parent.mkdir()
    f.write_text('ssl_certfile = "tls/cert.pem"\nssl_keyfile = "tls/key.pem"\n')
    r = settings.resolve({}, str(f), env={})
    assert r.config.ssl_certfile == str(tmp_path / "conf" / "tls" / "cert.pem")


def test_show_masks_secrets() -> None:
    r = settings.resolve({"auth_token": "s3cret", "redis_url": "redis://u:pw@h:6379"}, env={}, cwd="/nonexistent")
    shown = {n: (v, s) for n, v, s in r.show()}
    assert shown["auth_token"][0] == "********" and "s3cret" not in repr(r.show())
    assert shown["redis_url"][0] == "redis://u:****@h:6379"
    assert settings.jsonable_value("auth_token", "s3cret") == "********"


def test_none_sentinel_clears_a_setting(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text('persistence_path = "/tmp/x.db"\n')
    r = settings.resolve({"persistence_path": settings.NONE}, str(f), env={}, flag_names={"persistence_path": "--no-db"})
    assert r.config.persistence_path is None and r.sources["persistence_path"] == "flag --no-db"


def test_toml_output_round_trips(tmp_path: Path) -> None:
    r = settings.resolve({"websocket_port": 9100, "peers": ["ws://a:1", "ws://b:2"], "auth_token": "s3cret",
                          "enable_redis": False, "heartbeat_interval": 2.5, "log_format": "json",
                          "persist_events": ["x", "y"], "redis_url": "redis://u:pw@h:1"},
                         env={}, cwd="/nonexistent")
    text = settings.to_toml(r)
    assert "s3cret" not in text and ":pw@" not in text
    f = tmp_path / "out.toml"
    f.write_text(text)
    back = settings.resolve({}, str(f), env={})
    for name in ("websocket_port", "peers", "enable_redis", "heartbeat_interval", "persist_events", "log_format"):
        assert back.values[name] == r.values[name], name
    assert back.config.auth_token is None and back.config.redis_url == MeshConfig().redis_url


# -- logging ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _capture() -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    lg = logging.getLogger(f"test.backoff.{id(lines)}")
    lg.handlers[:] = [H()]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg, lines


def test_backoff_log_first_then_exponential_with_count() -> None:
    lg, lines = _capture()
    clock = _Clock()
    b = BackoffLog(lg, initial=1.0, maximum=8.0, clock=clock)
    # a condition repeating 10 times a second for 60 s
    for _ in range(600):
        b("redis", logging.WARNING, "Redis down: %s", "refused")
        clock.t += 0.1
    assert lines[0] == "Redis down: refused"
    # 1, 2, 4, 8, 8, 8 ... seconds apart: far fewer lines than occurrences
    assert 6 <= len(lines) <= 12, lines
    assert "more since the last report" in lines[1] and "600" not in lines[0]
    assert b.count("redis") == 600
    # every occurrence is accounted for in the lines' counts
    counted = 1 + sum(int(x.split("(")[1].split()[0]) for x in lines[1:])
    assert counted <= 600 and 600 - counted < 90
    # cleared: the next occurrence is "first" again
    assert b.clear("redis", logging.INFO, "Redis is back")
    assert "Redis is back (after 600 occurrences" in lines[-1]
    b("redis", logging.WARNING, "Redis down: %s", "again")
    assert lines[-1] == "Redis down: again"


def test_backoff_log_forgets_after_quiet_and_bounds_keys() -> None:
    lg, lines = _capture()
    clock = _Clock()
    b = RateLimitedLog(lg, clock=clock)  # the old name, same helper
    b("k", logging.WARNING, "x")
    b("k", logging.WARNING, "x")
    assert len(lines) == 1
    clock.t += 3600
    b("k", logging.WARNING, "x")
    assert len(lines) == 2 and lines[-1] == "x"
    for i in range(20_000):
        b(("peer", i), logging.DEBUG, "p")
    assert len(b._entries) <= 10_000


def test_json_log_lines_carry_node_id() -> None:
    buf = io.StringIO()
    fmt = setup_logging("info", "json", stream=buf)
    try:
        assert isinstance(fmt, JsonFormatter)
        fmt.node_id = "node-7"
        logging.getLogger("spiralfast.test").warning("hello %s", "world")
        logging.getLogger("spiralfast.test").info("other", extra={"node_id": "n2"})
        recs = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert recs[0]["node_id"] == "node-7" and recs[0]["msg"] == "hello world" and recs[0]["level"] == "WARNING"
        assert recs[1]["node_id"] == "n2"
        from spiralfast._log import NodeLogAdapter

        lg = NodeLogAdapter(logging.getLogger("spiralfast.test"), "n3")
        BackoffLog(lg)("k", logging.WARNING, "via %s", "adapter")
        last = json.loads(buf.getvalue().splitlines()[-1])
        assert last["node_id"] == "n3" and last["msg"] == "via adapter"
        with pytest.raises(ValueError, match="text or json"):
            setup_logging("info", "xml")
    finally:
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)


def test_compat_install_aliases_logger_names() -> None:
    from spiralfast import compat

    compat.install()
    try:
        old = logging.getLogger("spiralcodex.mesh")
        assert old is logging.getLogger("spiralfast")
        before = old.level
        old.setLevel(logging.DEBUG)
        assert logging.getLogger("spiralfast.node.core").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("spiralcodex.mesh.something").parent is logging.getLogger("spiralfast")
        import spiralcodex.mesh  # type: ignore[import-not-found]

        assert spiralcodex.mesh.MeshCore.__module__.startswith("spiralfast")
        old.setLevel(before)
    finally:
        compat.uninstall()
    assert logging.getLogger("spiralcodex.mesh") is not logging.getLogger("spiralfast")
