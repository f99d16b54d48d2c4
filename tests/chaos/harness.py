"""The chaos suite's machinery, shared by ``tests/chaos`` and ``perf/chaos_figures.py``.

- ``Netns``: N Linux network namespaces joined by veth pairs to one bridge in the root
  namespace, addresses ``198.18.<k>.<i>/24`` (the benchmarking range; ``<k>`` is chosen
  free per run so concurrent runs never share a subnet).  Every name starts with
  ``sfc<pid>``; ``cleanup_leftovers()`` removes those of runs whose pid is gone.
- ``Redis``: a ``redis-server`` of the suite's own, bound to the bridge address (the
  root namespace's loopback is out of reach from the namespaces).
- ``Worker``: ``tests/chaos/worker.py`` in one namespace, driven by JSON lines.
- ``Cluster``: the five nodes, their nemeses, and the checks run after each.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from tests.waiting import wait_until_sync

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")
PREFIX = "sfc"
PORT = 8765  # every node listens on the same port: each in its own namespace
_NAME = re.compile(rf"^{PREFIX}(\d+)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def can_run() -> tuple[bool, str]:
    """(True, "") when this machine can run the chaos suite; else (False, what is missing)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return False, "Linux"
    if os.geteuid() != 0:
        return False, "root (network namespaces)"
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2)"
    if shutil.which("redis-server") is None:
        return False, "the redis-server binary"
    return True, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers() -> list[str]:
    """Remove namespaces and links named ``sfc<pid>...`` whose pid is not running (a
    crashed or killed run); processes still inside such a namespace are killed by pid."""
    removed = []
    out = _ip("netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
            removed.append(name)
    out = _ip("-o", "link", "show", check=False).stdout
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet() -> int:
    used = set(re.findall(r"inet 198\.18\.(\d+)\.", _ip("-4", "-o", "addr", check=False).stdout))
    start = os.getpid() % 200 + 1
    for k in list(range(start, 255)) + list(range(1, start)):
        if str(k) not in used:
            return k
    raise RuntimeError("no free /24 in 198.18.0.0/16")


class Netns:
    """``n`` namespaces on one bridge.  ``addr(i)`` is node i's address (i from 0)."""

    def __init__(self, n: int = 5) -> None:
        self.n = n
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = self.tag + "br"
        self.k = _free_subnet()
        self.bridge_addr = f"198.18.{self.k}.254"
        self.names = [f"{self.tag}n{i}" for i in range(n)]
        self.host_if = [f"{self.tag}h{i}" for i in range(n)]
        self.ns_if = [f"{self.tag}v{i}" for i in range(n)]
        self.up = False

    def addr(self, i: int) -> str:
        return f"198.18.{self.k}.{i + 1}"

    def create(self) -> None:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.n):
                ns, h, v = self.names[i], self.host_if[i], self.ns_if[i]
                _ip("netns", "add", ns)
                _ip("link", "add", h, "type", "veth", "peer", "name", v)
                _ip("link", "set", v, "netns", ns)
                _ip("link", "set", h, "master", self.bridge)
                _ip("link", "set", h, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", v)
                _ip("-n", ns, "link", "set", v, "up")
            self.up = True
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        for i in range(self.n):
            for p in _ip("netns", "pids", self.names[i], check=False).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", self.names[i], check=False)  # takes its veth end (and so the pair) along
            _ip("link", "del", self.host_if[i], check=False)
        _ip("link", "del", self.bridge, check=False)
        self.up = False

    def link(self, i: int, up: bool) -> None:
        """Cut (or restore) node i's only link: its veth end on the bridge.  The
        namespace keeps its address and routes, so packets vanish (a real partition),
        not a fast ENETUNREACH."""
        _ip("link", "set", self.host_if[i], "up" if up else "down")


class Redis:
    """redis-server bound to the bridge address, on a free port."""

    def __init__(self, host: str, logdir: str) -> None:
        self.host = host
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://{host}:{self.port}/0"
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--logfile", os.path.join(self.logdir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until_sync(self._answers, f"redis-server answered on {self.host}:{self.port}", timeout=10)

    def _answers(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), 0.2).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


class Worker:
    """One node: ``worker.py`` run with ``ip netns exec``.  Its pid is the Python
    process's (``ip netns exec`` execs the command), so signals reach the node."""

    def __init__(self, cluster: Cluster, i: int) -> None:
        self.cluster = cluster
        self.i = i
        self.node_id = f"chaos-{i}"
        self.proc: subprocess.Popen[str] | None = None
        self.stopped = False  # SIGSTOPped
        self.incarnations = 0
        self.log_path = os.path.join(cluster.logdir, f"{self.node_id}.log")

    def start(self) -> None:
        c = self.cluster
        peers = ",".join(f"ws://{c.ns.addr(j)}:{PORT}" for j in range(c.ns.n) if j != self.i)
        args = ["ip", "netns", "exec", c.ns.names[self.i], sys.executable, WORKER, "--node-id", self.node_id,
                "--host", c.ns.addr(self.i), "--port", str(PORT), "--mesh", c.mesh, "--channel", c.mesh + "_ch",
                "--hb", str(c.hb), "--sync", str(c.sync), "--rate", str(c.rate)]
        if not c.no_ws:
            args += ["--peers", peers]
        else:
            args += ["--no-ws"]
        if c.redis is not None:
            args += ["--redis", c.redis.url]
        self.incarnations += 1
        with open(self.log_path, "a") as log:
            log.write(f"--- incarnation {self.incarnations}\n")
            log.flush()
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         bufsize=1, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.stopped = False
        ready = self._read(20)
        assert ready.get("ready"), ready

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.node_id}: no answer within {timeout}s (log: {self.log_path})")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.node_id} exited (log: {self.log_path}):\n{self.tail()}")
                return dict(json.loads(line))

    def tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cmd(self, cmd: str, timeout: float = 15, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def report(self) -> dict[str, Any]:
        return self.cmd("report")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def sigstop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            if self.stopped:
                p.send_signal(signal.SIGCONT)
            try:
                self.cmd("quit", timeout=5)
                p.wait(5)
            except Exception:
                p.kill()
                p.wait(5)
        for f in (p.stdin, p.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None


def expand(rs: list[list[int]]) -> set[int]:
    out: set[int] = set()
    for a, b in rs:
        out.update(range(a, b + 1))
    return out


@dataclass
class Cluster:
    """Five (``ns.n``) nodes of one mesh, a Redis, and what the checks need."""

    ns: Netns
    hb: float = 0.5
    sync: float = 1.0
    rate: float = 50.0
    redis_on: bool = True
    no_ws: bool = False
    mesh: str = field(default_factory=lambda: f"chaos{os.getpid()}_{time.monotonic_ns() % 10**9}")
    logdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="spiralfast-chaos-"))
    redis: Redis | None = None
    workers: list[Worker] = field(default_factory=list)
    #: origin -> sent sequences of origins whose process is gone (killed), as last reported
    dead_sent: dict[str, set[int]] = field(default_factory=dict)

    def start(self) -> None:
        if self.redis_on:
            self.redis = Redis(self.ns.bridge_addr, self.logdir)
            self.redis.start()
        self.workers = [Worker(self, i) for i in range(self.ns.n)]
        for w in self.workers:
            w.start()
        self.wait_formed(30)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        if self.redis is not None:
            self.redis.kill()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive and not w.stopped]

    def reports(self, workers: list[Worker] | None = None) -> dict[str, dict[str, Any]]:
        return {w.node_id: w.report() for w in (workers if workers is not None else self.live())}

    def wait_formed(self, timeout: float, workers: list[Worker] | None = None) -> float:
        """Wait until every given node knows all others, links them all (WebSocket) and
        is on Redis; returns the seconds it took."""
        t0 = time.monotonic()
        ws = workers if workers is not None else self.live()
        ids = {w.node_id for w in self.workers}
        last: dict[str, Any] = {}

        def formed() -> bool:
            ok = True
            for w in ws:
                r = w.report()
                last[w.node_id] = (sorted(r["nodes"]), r["links"], r["redis"])
                if set(r["nodes"]) != ids or (not self.no_ws and len(r["links"]) != len(ids) - 1) or (
                        self.redis_on and not r["redis"]):
                    ok = False
            return ok

        wait_until_sync(formed, lambda: f"mesh formed (nodes, links, redis per node: {last})", timeout=timeout,
                        interval=0.1)
        return time.monotonic() - t0

    def traffic(self, send: bool | None = None, state: bool | None = None,
                workers: list[Worker] | None = None) -> None:
        for w in workers if workers is not None else self.live():
            if send is not None:
                w.cmd("send", on=send)
            if state is not None:
                w.cmd("state", on=state)

    def wait_converged(self, timeout: float, workers: list[Worker] | None = None) -> float | None:
        """Seconds until every given node's state digests are equal (None: not within
        ``timeout``)."""
        t0 = time.monotonic()
        ws = workers if workers is not None else self.live()
        while time.monotonic() - t0 < timeout:
            digests = [json.dumps(w.report()["digests"], sort_keys=True) for w in ws]
            if len(set(digests)) == 1:
                return time.monotonic() - t0
            time.sleep(0.05)  # poll interval: the time to converge is measured

    def wait_quiet(self, timeout: float) -> dict[str, dict[str, Any]]:
        """With sending stopped: wait until no node has gaps still being repaired and
        received counts stop changing; returns the final reports."""
        deadline = time.monotonic() + timeout
        prev: dict[str, int] | None = None
        reps = self.reports()
        while time.monotonic() < deadline:
            reps = self.reports()
            counts = {n: r["received_count"] + r["events_lost"] for n, r in reps.items()}
            if prev == counts and all(r["events_missing"] == 0 for r in reps.values()):
                return reps
            prev = counts
            time.sleep(0.6)  # the quiet period: counts unchanged across it
        return reps


@dataclass
class DeliveryResult:
    """What the exactly-once check found, summed over every (receiver, origin)."""

    lost: int = 0  # counted lost by receivers
    missing: int = 0  # sent, not received (must equal lost)
    dups: int = 0
    tail_unseen: int = 0  # a dead origin's last events that some survivors got and others did not (counted lost)
    problems: list[str] = field(default_factory=list)


def check_delivery(reps: dict[str, dict[str, Any]], *, first_seq: dict[str, int] | None = None,
                   dead: dict[str, set[int]] | None = None,
                   joined_after: dict[str, dict[str, int]] | None = None) -> DeliveryResult:
    """Exactly once, by origin and sequence, for every live receiver:

    - a live origin's ticks sent from ``first_seq[origin]`` on (from the receiver's
      ``joined_after[receiver][origin]`` for a receiver that started later) are each
      received once, or counted lost by that receiver: ``not received == counted lost``;
    - nothing is received that was not sent, and no tick is handled twice;
    - a dead origin (``dead``: the sequences it reported sending before it died): every
      sequence up to the highest *any* survivor saw is received or counted lost by each
      survivor (the survivors tell each other the last sequence they saw of an origin
      that is gone); ``tail_unseen`` counts the tail some survivors missed.
    """
    res = DeliveryResult()
    sent = {r["origin"]: expand(r["sent"]) for r in reps.values()}
    dead = dead or {}
    dead_high = {o: max((max(expand(r["received"][o])) for r in reps.values() if r["received"].get(o)), default=0)
                 for o in dead}
    first_seq = first_seq or {}
    for rid, r in reps.items():
        res.dups += r["dups"]
        if r["dups"]:
            res.problems.append(f"{rid}: {r['dups']} duplicate deliveries")
        if r["other_ids"]:
            res.problems.append(f"{rid}: {r['other_ids']} ticks without a broadcast sequence id")
        if r["events_missing"]:
            res.problems.append(f"{rid}: still repairing {r['delivery']['missing']}")
        if r["alerts_lost"] != r["events_lost"]:
            res.problems.append(f"{rid}: {r['events_lost']} counted lost but system_alerts announced "
                                f"{r['alerts_lost']}")
        lost = r["delivery"]["lost"]
        got_by = {o: expand(rs) for o, rs in r["received"].items()}
        for origin in set(got_by) | set(lost):
            if origin not in sent and origin not in dead:
                res.problems.append(f"{rid}: events from unknown origin {origin}")
        for origin, s in sent.items():
            if origin == r["origin"]:
                continue
            got = got_by.get(origin, set())
            start = first_seq.get(origin, min(s) if s else 1)
            if joined_after and rid in joined_after:
                start = max(start, joined_after[rid].get(origin, 0) + 1)
            expected = {q for q in s if q >= start}
            if got - s:
                res.problems.append(f"{rid}: {len(got - s)} events from {origin} that were never sent")
            # the receiver's window starts at the first it saw: gaps below are not counted
            low = min(got) if got else None
            not_got = expected - got
            n_lost = int(lost.get(origin, 0))
            if low is not None and low > start:
                res.problems.append(f"{rid}: first event from {origin} is {low}, expected {start}")
            if len(not_got) != n_lost:
                res.problems.append(f"{rid}: from {origin}, {len(not_got)} not received but {n_lost} counted lost "
                                    f"(first missing: {sorted(not_got)[:5]})")
            res.lost += n_lost
            res.missing += len(not_got)
        for origin, before_death in dead.items():
            if joined_after and rid in joined_after:
                continue  # started after that origin died
            got = got_by.get(origin, set())
            n_lost = int(lost.get(origin, 0))
            res.lost += n_lost
            if not got:
                res.problems.append(f"{rid}: nothing from the dead origin {origin}")
                continue
            lo, hi = min(got), max(got)
            res.tail_unseen += dead_high[origin] - hi
            inside = (dead_high[origin] - lo + 1) - len(got)
            res.missing += inside
            if inside != n_lost:
                res.problems.append(f"{rid}: dead origin {origin}: {inside} not received up to the highest any "
                                    f"survivor saw ({dead_high[origin]}), but {n_lost} counted lost")
            if before_death and hi < max(before_death):
                res.problems.append(f"{rid}: dead origin {origin}: saw up to {hi}, but {max(before_death)} was "
                                    "sent well before the kill")
            if before_death and lo > min(before_death):
                res.problems.append(f"{rid}: dead origin {origin}: first seen {lo} > {min(before_death)}")
    return res


def false_deaths(reps: dict[str, dict[str, Any]], allowed: dict[str, set[str]], since: float) -> list[str]:
    """``node_lost`` transitions after ``since`` that are not allowed: ``allowed[observer]``
    is the set of node ids that observer may declare lost (``"*"`` key: for everyone)."""
    bad = []
    for rid, r in reps.items():
        ok = allowed.get(rid, set()) | allowed.get("*", set())
        for t, ev, nid in r["transitions"]:
            if ev == "node_lost" and t >= since and nid not in ok:
                bad.append(f"{rid} declared {nid} lost at +{t - since:.2f}s")
    return bad
