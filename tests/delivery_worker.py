"""Delivery guarantees on real processes (issue #12): a busy receiver and a paused one.

Worker (one mesh node per process), driven over stdin/stdout::

    python -m tests.delivery_worker recv HB BLOCKS [WINDOW]
    python -m tests.delivery_worker send URL N RATE HB [WINDOW]

``recv`` prints ``url <ws url> <node id>``; its plain (``def``) handler of ``load`` counts
every event by origin and sequence (ids ``<origin>-<seq>``) and, per ``BLOCKS``
(``every:seconds,...``, e.g. ``2000:0.05,4000:0.3``; ``-`` for none), blocks the loop
with ``time.sleep`` as a handler doing synchronous I/O would.  ``send`` joins ``URL``,
prints ``connected <node id>``, broadcasts ``N`` events (``RATE`` per second, 0 = as
fast as backpressure allows) and prints ``sent N SECONDS``.  Both answer the line
``stats`` with one JSON line (``stats {...}``) and stop on ``quit`` (or end of input).
Both watch their peer's membership every 50 ms (``peer_lost``: times it went from
listed to not listed) and record their peak RSS.

The driver half (``Pair``) starts the two processes and reads their stats; the tests
(``tests/test_delivery_procs.py``) and ``perf/busy_and_pause.py`` use it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from tests.waiting import wait_until

ETYPE = "load"


def _rss_peak_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watch:
    """Membership of the peer as seen by this node, sampled every 50 ms, and every
    ``node_unregister`` this node announced (so no removal between samples goes unseen)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.unregistered = 0
        core.register_event_handler("node_unregister", self.on_unregister)
        self.peer: str | None = None
        self.present = False
        self.lost = 0  # listed -> not listed
        self.absent_s = 0.0
        self._since = 0.0

    def on_unregister(self, env: dict[str, Any]) -> None:
        if env.get("source_node") != self.core.node_id:
            self.unregistered += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.05)  # time itself: the sampling period
            self.sample()

    def sample(self) -> None:
        nodes = self.core.nodes
        if self.peer is None:
            others = [n for n in nodes if n != self.core.node_id]
            if others:
                self.peer, self.present = others[0], True
            return
        now = time.monotonic()
        here = self.peer in nodes
        if self.present and not here:
            self.lost += 1
            self._since = now
        elif here and not self.present:
            self.absent_s += now - self._since
        self.present = here


def _base_stats(core: Any, watch: Watch) -> dict[str, Any]:
    watch.sample()
    st = core.get_mesh_status()
    links = [lk.info() for lk in core.outbox.links.values()]
    return {
        "node_id": core.node_id, "peer": watch.peer, "peer_present": watch.present,
        "peer_lost": max(watch.lost, watch.unregistered),
        "counters": core.counters, "delivery": st.get("delivery"), "links": links,
        "rss_peak_kib": _rss_peak_kib(),
    }


async def _commands(on_stats: Any) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if not line or cmd == "quit":
            return
        if cmd == "stats":
            try:
                out = json.dumps(on_stats())
            except Exception as exc:  # never leave the driver waiting: say what broke
                import traceback

                out = json.dumps({"error": repr(exc), "traceback": traceback.format_exc()})
            print("stats " + out, flush=True)


def _config(hb: float, window: float | None, peers: list[str] | None = None) -> Any:
    from spiralfast.node.config import MeshConfig

    cfg = MeshConfig(enable_redis=False, websocket_port=0, heartbeat_interval=hb, peers=peers or [])
    if window is not None:
        cfg.retransmit_window = window
    return cfg


async def recv_main(hb: float, blocks: str, window: float | None) -> None:
    from spiralfast.node.core import MeshCore

    pattern = [] if blocks in ("", "-") else [(int(a), float(b)) for a, b in
                                               (p.split(":") for p in blocks.split(","))]
    core = MeshCore(_config(hb, window))
    seen: dict[str, set[int]] = {}
    tally = {"handled": 0, "dups": 0, "blocked_s": 0.0, "other_ids": 0}

    def handler(env: dict[str, Any]) -> None:
        tally["handled"] += 1
        origin, _, seq = str(env.get("event_id", "")).rpartition("-")
        if not seq.isdigit():
            tally["other_ids"] += 1
        else:
            s = seen.setdefault(origin, set())
            n = int(seq)
            if n in s:
                tally["dups"] += 1
            s.add(n)
        h = tally["handled"]
        for every, secs in pattern:
            if h % every == 0:
                time.sleep(secs)  # time itself: a handler blocking the loop (synchronous I/O)
                tally["blocked_s"] += secs

    alerts: dict[str, int] = {}

    def alert(env: dict[str, Any]) -> None:  # the local system_alert announcing losses
        details = (env.get("data") or {}).get("details") or {}
        if isinstance(details, dict) and "origin" in details:
            alerts[details["origin"]] = alerts.get(details["origin"], 0) + int(details.get("lost", 0))

    core.register_event_handler(ETYPE, handler)
    core.register_event_handler("system_alert", alert)
    await core.start()
    watch = Watch(core)
    wt = asyncio.ensure_future(watch.run())
    print(f"url {core.ws.endpoint} {core.node_id}", flush=True)

    def stats() -> dict[str, Any]:
        out = _base_stats(core, watch)
        out.update(tally)
        out["unique"] = {o: len(s) for o, s in seen.items()}
        out["alerted_lost"] = alerts
        out["max_seq"] = {o: max(s) for o, s in seen.items() if s}
        return out

    await _commands(stats)
    wt.cancel()
    await core.stop()


async def send_main(url: str, n: int, rate: float, hb: float, window: float | None) -> None:
    from spiralfast.node.core import MeshCore

    core = MeshCore(_config(hb, window, [url]))
    await core.start()
    await wait_until(lambda: len(core.nodes) >= 2, "the sender joined the receiver", timeout=60)
    watch = Watch(core)
    watch.sample()
    wt = asyncio.ensure_future(watch.run())
    print(f"connected {core.node_id} {core.local_node.metadata['origin']}", flush=True)
    progress = {"sent": 0, "retx_peak_bytes": 0}

    def stats() -> dict[str, Any]:
        out = _base_stats(core, watch)
        out.update(progress)
        out["events_out"] = core.sender.events_out
        out["retx_bytes"] = core.sender.retx_bytes
        out["retx_len"] = len(core.sender.retx)
        return out

    cmd = asyncio.ensure_future(_commands(stats))
    t0 = time.perf_counter()
    for i in range(n):
        if rate > 0:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)  # time itself: pacing at `rate`
        await core.broadcast_event(ETYPE, {"i": i})
        progress["sent"] = i + 1
        if core.sender.retx_bytes > progress["retx_peak_bytes"]:
            progress["retx_peak_bytes"] = core.sender.retx_bytes
    await asyncio.sleep(0.05)  # a grace for the last batch to leave; settle() judges by conditions
    print(f"sent {n} {time.perf_counter() - t0:.3f}", flush=True)
    await cmd
    wt.cancel()
    await core.stop()


# -- the driver ----------------------------------------------------------------------


class Proc:
    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # stderr to a file: a pipe nobody reads would block a worker that logs a lot.
        self.err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen([sys.executable, "-m", "tests.delivery_worker", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=root, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """A thread: stdout lines into a queue (select() on a buffered pipe misses a line
        that came in the same read as the one before: a reply lost, a driver waiting)."""
        assert self.p.stdout is not None
        for ln in self.p.stdout:
            self.lines.put(ln)
        self.lines.put(None)

    def line(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (other lines skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ln = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} line within {timeout} s; stacks:\n{self.stacks()}") from None
            if ln is None:
                self.p.wait(5)
                raise RuntimeError(f"worker exited ({self.p.poll()}): {self.stderr()[-2000:]}")
            if ln.startswith(prefix):
                return ln[len(prefix):].strip()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stacks(self) -> str:
        """The worker's thread stacks (SIGUSR1, faulthandler) and whatever else it logged."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGUSR1)
            time.sleep(0.5)  # diagnostics on a failure path: give faulthandler time to write
        return self.stderr()[-8000:]

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def stats(self, timeout: float = 30.0) -> dict[str, Any]:
        self.send("stats")
        out: dict[str, Any] = json.loads(self.line("stats ", timeout))
        if "error" in out:
            raise RuntimeError(f"worker stats failed: {out['error']}\n{out['traceback']}")
        return out

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGCONT)
                self.send("quit")
                self.p.wait(10)
            except Exception:
                self.p.kill()
                self.p.wait(5)
        self.reader.join(5)  # the worker is gone: its stdout ends
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()
        self.err.close()


class Pair:
    """A receiver and a sender process."""

    def __init__(self, n: int, *, hb: float, blocks: str = "-", rate: float = 0.0,
                 window: float | None = None) -> None:
        w = [] if window is None else [str(window)]
        self.recv = Proc("recv", str(hb), blocks, *w)
        self.send: Proc | None = None
        try:
            url, self.recv_id = self.recv.line("url ", 30).split()
            self.send = Proc("send", url, str(n), str(rate), str(hb), *([str(window)] if window is not None else []))
            self.send_id, self.origin = self.send.line("connected ", 30).split()
        except BaseException:
            self.close()
            raise
        self.n = n

    def close(self) -> None:
        for p in (self.send, self.recv):
            if p is not None:
                p.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def settle(pair: Pair, timeout: float, quiet: float = 2.5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll both sides until the receiver's count of handled + lost events stops moving
    (and covers every event sent, or ``timeout`` passes); returns (receiver, sender) stats."""
    assert pair.send is not None
    deadline = time.monotonic() + timeout
    last: Any = None
    still = time.monotonic()
    while True:
        r = pair.recv.stats()
        s = pair.send.stats()
        acc = sum(r["unique"].values()) + r["counters"]["events_lost"]
        key = (acc, r["counters"]["events_missing"], s["sent"])
        now = time.monotonic()
        if key != last:
            last, still = key, now
        done = s["sent"] >= pair.n and acc >= pair.n and r["counters"]["events_missing"] == 0
        if done or now > deadline or (s["sent"] >= pair.n and now - still > quiet + 6.0):
            return r, s
        time.sleep(0.25)  # the poll interval (the condition and the deadline are above)


def summary(r: dict[str, Any], s: dict[str, Any], origin: str) -> dict[str, Any]:
    """One row: handled (unique by origin+seq), duplicates, lost (counted), missing
    (neither handled nor counted), peers declared dead, sender peak RSS."""
    c = r["counters"]
    handled = r["unique"].get(origin, 0)
    lost = (r["delivery"] or {}).get("lost", {}).get(origin, 0)
    return {
        "sent": s["sent"], "handled": handled, "dups": r["dups"], "lost_counted": lost,
        "unaccounted": s["sent"] - handled - lost, "events_missing": c["events_missing"],
        "recv_declared_dead_by_sender": s["peer_lost"], "sender_declared_dead_by_recv": r["peer_lost"],
        "recv_listed": s["peer_present"], "sender_listed": r["peer_present"],
        "alerted_lost": r["alerted_lost"].get(origin, 0), "max_seq": r["max_seq"].get(origin, 0),
        "sender_rss_mib": round(s["rss_peak_kib"] / 1024, 1), "retx_peak_mib": round(s["retx_peak_bytes"] / 2**20, 1),
        "dropped_events": s["counters"]["dropped_events"] + c["dropped_events"],
        "dropped_frames": sum(lk["dropped_frames"] for lk in s["links"] + r["links"]),
    }


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # a stuck worker: kill -USR1 prints its stacks on stderr
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    a = sys.argv[1:]
    if a[0] == "recv":
        asyncio.run(recv_main(float(a[1]), a[2], float(a[3]) if len(a) > 3 else None))
    else:
        asyncio.run(send_main(a[1], int(a[2]), float(a[3]), float(a[4]), float(a[5]) if len(a) > 5 else None))
