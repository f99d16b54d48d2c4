"""Chaos: five real node processes in separate network namespaces, one nemesis per test.

After each nemesis heals, with traffic stopped and repairs done:

- exactly once: every tick a live origin sent is handled once by every live node, or
  counted lost by it (``delivery.lost``): never missing silently, never twice;
- state digests of all nodes equal within two anti-entropy rounds (``sync``) of the heal;
- no node declared dead (``node_lost``) that was alive and reachable;
- memory bounded (RSS growth per node).

kill -9: the dead process's origin can no longer repair anything.  What the code
guarantees, and what is checked: at each survivor, every sequence of the dead origin
up to the highest *any* survivor saw was handled once or counted lost (gaps are given
up after REPAIR_ATTEMPTS unanswered intervals), and everything it reported sending
0.5 s before the kill reached every survivor.  The dead origin's last few events may
reach some survivors and not others (the kernel resets a killed process's sockets,
dropping what they still had to send): the survivors tell each other the last
sequence they saw of a removed node (``OriginEnd``), so those that missed the tail
count it lost ("tail unseen" in the summary line).  The restarted process is a new
origin.

Settings: heartbeat 0.5 s (a node silent 1.5 s is lost), anti-entropy every 1 s,
50 ticks/s per node (about 100-byte payloads), WebSocket full mesh plus Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ..waiting import wait_until_sync
from .harness import Cluster, check_delivery, expand, false_deaths

pytestmark = pytest.mark.timeout(90)

#: Settings of the suite (the figures script uses heartbeat 1 s).
HB = 0.5
SYNC = 1.0
#: Slack on "two anti-entropy rounds" for scheduling on a busy 2-CPU runner.
CONVERGE_SLACK = 0.5
#: RSS growth allowed per node over the test (the retransmit buffers hold about 1 MiB).
RSS_GROWTH = 48 * 2**20


def _warm_up(c: Cluster, seconds: float = 2.0) -> tuple[dict[str, dict[str, Any]], float, dict[str, int]]:
    c.start()
    reps = c.reports()
    first = {r["origin"]: r["sent_count"] for r in reps.values()}
    c.traffic(send=True, state=True)
    since = time.monotonic()
    time.sleep(seconds)  # time itself: traffic runs a while before the fault
    base = c.reports()
    return base, since, {o: n + 1 for o, n in first.items()}  # sent_count 0: first tick is seq 1


def _finish(c: Cluster, heal: float, base: dict[str, dict[str, Any]], *, run_after: float = 1.5,
            formed: Callable[[], dict[str, Any]] | None = None,
            **check: Any) -> tuple[dict[str, dict[str, Any]], float | None, Any]:
    """State writes stop at the heal; ticks go on ``run_after`` s, then stop.  Returns
    the final reports, the convergence time (from the heal) and the delivery result.
    ``formed()``, called once the mesh is whole again, may add arguments of the check."""
    conv = c.wait_converged(2 * SYNC + CONVERGE_SLACK + 10)
    converged_at = None if conv is None else time.monotonic() - heal
    c.wait_formed(15)  # every node knows, links and is on Redis with every other again
    if formed is not None:
        check.update(formed())
    time.sleep(max(0.0, run_after - (time.monotonic() - heal)))  # time itself: traffic goes on after the heal
    c.traffic(send=False)
    reps = c.wait_quiet(20)
    res = check_delivery(reps, **check)
    for nid, r in reps.items():
        grown = r["rss"] - base.get(nid, r)["rss"]
        assert grown < RSS_GROWTH, f"{nid}: RSS grew {grown / 2**20:.1f} MiB"
    assert c.wait_converged(2 * SYNC + 1) is not None, "digests diverged again"
    conv_s = "never" if converged_at is None else f"{converged_at:.2f}s"
    print(f"\n{c.mesh}: sent {sum(r['sent_count'] for r in reps.values())}, handled "
          f"{sum(r['received_count'] for r in reps.values())}, lost {res.lost}, missing {res.missing}, dups "
          f"{res.dups}, tail unseen {res.tail_unseen}, repairs asked {sum(r['repair_requests'] for r in reps.values())}"
          f", converged {conv_s} after the heal, rss max {max(r['rss'] for r in reps.values()) / 2**20:.0f} MiB, "
          f"lost transitions {[(n, t[2]) for n, r in reps.items() for t in r['transitions'] if t[1] == 'node_lost']}")
    return reps, converged_at, res


def _assert_converged(converged_at: float | None) -> None:
    assert converged_at is not None, "state digests never converged"
    assert converged_at <= 2 * SYNC + CONVERGE_SLACK, f"converged {converged_at:.2f}s after the heal"


@pytest.mark.timeout(120)
def test_kill9_and_restart(cluster: Cluster) -> None:
    c = cluster
    c.hb, c.sync = HB, SYNC
    base, since, first = _warm_up(c)
    victim = c.workers[2]
    before = victim.report()
    others = [w for w in c.live() if w is not victim]
    reported = expand(before["sent"])

    def delivered() -> bool:  # what it reported sending has left the process: every other node has it
        return all(reported <= expand(r["received"].get(before["origin"], []))
                   for r in c.reports(others).values())

    wait_until_sync(delivered, "every other node received what the victim reported sending", interval=0.05)
    t_kill = time.monotonic()
    victim.kill9()
    dead_origin = before["origin"]
    survivors = c.live()
    # every survivor removes it within the failure detector's limit (3 heartbeats)
    wait_until_sync(lambda: all(victim.node_id not in r["nodes"] for r in c.reports(survivors).values()),
                    "every survivor removed the killed node", interval=0.05)
    reps = c.reports(survivors)
    detect = []
    for nid, r in reps.items():
        t = [t for t, ev, n in r["transitions"] if ev == "node_lost" and n == victim.node_id and t >= t_kill]
        assert t, f"{nid} never declared the killed node lost"
        detect.append(t[0] - t_kill)
    assert max(detect) <= 3 * HB + 1.0, f"detection took {detect}"
    # restart: a new process (new origin, new incarnation) under the same node id
    c.traffic(state=False)
    victim.start()
    heal = time.monotonic()

    def formed() -> dict[str, Any]:
        # from here on, the new incarnation must get everything; then it sends too
        marks = {r["origin"]: r["sent_count"] for r in c.reports(survivors).values()}
        c.traffic(send=True, workers=[victim])
        return {"joined_after": {victim.node_id: {o: n + 1 for o, n in marks.items()}}}

    reps, converged_at, res = _finish(c, heal, base, formed=formed, first_seq=first,
                                      dead={dead_origin: expand(before["sent"])})
    assert res.problems == [], res.problems
    assert res.dups == 0 and res.missing == res.lost
    assert false_deaths(reps, {"*": {victim.node_id}}, since) == []
    for r in reps.values():  # the dead incarnation was removed once, not flapping
        assert sum(1 for _, ev, n in r["transitions"] if ev == "node_lost" and n == victim.node_id) <= 1
    _assert_converged(converged_at)


def test_sigstop_sigcont(cluster: Cluster) -> None:
    c = cluster
    c.hb, c.sync = HB, SYNC
    base, since, first = _warm_up(c)
    victim = c.workers[1]
    victim.sigstop()
    others = c.live()
    # past the 1.5 s failure detector: every other node drops the stopped one
    wait_until_sync(lambda: all(victim.node_id not in r["nodes"] for r in c.reports(others).values()),
                    "every other node dropped the stopped node", interval=0.1)
    c.traffic(state=False)
    victim.sigcont()
    heal = time.monotonic()
    reps, converged_at, res = _finish(c, heal, base, first_seq=first)
    assert res.problems == [], res.problems
    assert res.lost == 0, "a pause until detection is within every retransmit buffer: nothing may be lost"
    # the others declared the stopped node lost (expected); nobody else was
    assert false_deaths(reps, {nid: {victim.node_id} for nid in reps if nid != victim.node_id}, since) == []
    _assert_converged(converged_at)


def test_partition(cluster: Cluster) -> None:
    c = cluster
    c.hb, c.sync = HB, SYNC
    base, since, first = _warm_up(c)
    victim = c.workers[3]
    c.ns.link(victim.i, False)
    others = [w for w in c.live() if w is not victim]
    wait_until_sync(lambda: all(victim.node_id not in r["nodes"] for r in c.reports(others).values()),
                    "every node of the majority dropped the partitioned one", interval=0.1)
    c.traffic(state=False)
    c.ns.link(victim.i, True)
    heal = time.monotonic()
    reps, converged_at, res = _finish(c, heal, base, first_seq=first)
    assert res.problems == [], res.problems
    assert res.lost == 0, "a partition until detection is within every retransmit buffer: nothing may be lost"
    # the partitioned node and the rest lose each other; within the majority, nobody
    allowed = {nid: {victim.node_id} for nid in reps if nid != victim.node_id}
    allowed[victim.node_id] = {w.node_id for w in others}
    assert false_deaths(reps, allowed, since) == []
    _assert_converged(converged_at)


def test_redis_kill_and_restart(cluster: Cluster) -> None:
    c = cluster
    c.hb, c.sync = HB, SYNC
    base, since, first = _warm_up(c)
    assert c.redis is not None
    c.redis.kill()
    time.sleep(3.0)  # time itself: a 3 s Redis outage
    c.traffic(state=False)
    c.redis.start()
    heal = time.monotonic()
    reps, converged_at, res = _finish(c, heal, base, first_seq=first)
    assert res.problems == [], res.problems
    assert res.lost == 0, "WebSocket links carried on: nothing may be lost"
    assert false_deaths(reps, {}, since) == []
    _assert_converged(converged_at)


def test_redis_only_kill_and_restart(cluster: Cluster) -> None:
    """No WebSocket: the outage cuts every node off (all lose each other: expected).
    What was published meanwhile is repaired from the origins' buffers once they are
    back (a regression: gap repair gave up at once on origins not currently members)."""
    c = cluster
    c.hb, c.sync, c.no_ws = HB, SYNC, True
    base, since, first = _warm_up(c)
    assert c.redis is not None
    c.redis.kill()
    time.sleep(3.0)  # time itself: a 3 s Redis outage
    c.traffic(state=False)
    c.redis.start()
    heal = time.monotonic()
    reps, converged_at, res = _finish(c, heal, base, first_seq=first)
    assert res.problems == [], res.problems
    assert res.lost == 0, "a 3 s outage is within every retransmit buffer: nothing may be lost"
    # The heal here also waits for each node's Redis reconnect back-off (at most 1 s, +50%).
    assert converged_at is not None and converged_at <= 2 * SYNC + 1.5 + CONVERGE_SLACK, converged_at
