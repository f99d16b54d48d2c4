"""Nothing missed across a restart (issue #25), on real processes: a node that stops
(cleanly or kill -9) while events are sent over more than the sender's retransmit
window comes back and catches up from a peer's event log, exactly once, in order."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from spiralfast.store.eventlog import BATCH_MAX_AGE_S
from tests import services
from tests.catchup_worker import Node, read_handled
from tests.conftest import require
from tests.waiting import wait_until_sync

HB = 0.3
#: The sender's retransmit window (s): far shorter than the time the node is away.
WINDOW = 0.5
N = 5000


@pytest.fixture
def nodes(tmp_path: Any) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for n in started:
        if n.p.poll() is None:
            n.close()


def start(started: list[Node], tmp_path: Any, name: str, peers: list[str], persist: str = "all",
          catch_up: bool = True, link: str = "ws") -> Node:
    n = Node(name, str(tmp_path), ",".join(peers) or "-", str(HB), str(WINDOW), persist, "1" if catch_up else "0",
             link)
    started.append(n)
    return n


def handled(tmp_path: Any, name: str) -> list[tuple[str, bool, bool]]:
    return read_handled(os.path.join(str(tmp_path), f"handled-{name}.log"))


def seqs_of(rows: list[tuple[str, bool, bool]], origin: str) -> list[int]:
    return [int(e.rpartition("-")[2]) for e, _, _ in rows if e.rpartition("-")[0] == origin]


def mesh_of_three(started: list[Node], tmp_path: Any, persist_ab: str = "all",
                  persist_c: str = "all") -> tuple[Node, Node, Node]:
    a = start(started, tmp_path, "a", [], persist_ab)
    b = start(started, tmp_path, "b", [a.url], persist_ab)
    c = start(started, tmp_path, "c", [a.url, b.url], persist_c)
    for n in (a, b, c):
        wait_until_sync(lambda n=n: len(n.stats()["nodes"]) == 3, "a mesh of three", timeout=30)
    return a, b, c


def send(a: Node, n: int) -> None:
    a.send(f"send {n}")
    a.line("sent ", 120)


def away_past_window(a: Node, b: Node, tmp_path: Any, upto: int) -> None:
    """The sender's retransmit buffer no longer holds what it sent (gap repair cannot
    help), and the peer ``b`` handled (and logged) it all."""
    wait_until_sync(lambda: a.stats()["retx_len"] == 0, "the sender's retransmit buffer emptied", timeout=30)
    wait_until_sync(lambda: len(handled(tmp_path, "b")) >= upto, "b handled everything", timeout=60)


def restart(started: list[Node], tmp_path: Any, a: Node, b: Node, name: str = "c", catch_up: bool = True,
            persist: str = "all") -> Node:
    return start(started, tmp_path, name, [a.url, b.url], persist, catch_up=catch_up)


# "mesh": the returning node keeps only membership events (the CLI's default) and a cursor of all.
@pytest.mark.parametrize("persist_c", ["all", "mesh"])
def test_clean_stop_then_return_gets_everything_exactly_once_in_order(nodes: list[Node], tmp_path: Any,
                                                                     persist_c: str) -> None:
    a, b, c = mesh_of_three(nodes, tmp_path, persist_c=persist_c)
    send(a, 100)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 100, "c handled the first 100 live", timeout=30)
    c.quit()  # a clean stop: the cursor is exact
    send(a, N)
    away_past_window(a, b, tmp_path, 100 + N)
    c = restart(nodes, tmp_path, a, b, persist=persist_c)
    wait_until_sync(lambda: c.stats()["catchup"]["done"], "c caught up", timeout=60)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) >= 100 + N, "c handled all", timeout=60)
    rows = handled(tmp_path, "c")
    assert seqs_of(rows, a.origin) == list(range(1, 100 + N + 1))  # exactly once, in order
    replayed = rows[100:]
    assert all(r for _, r, _ in replayed) and not any(r for _, r, _ in rows[:100])
    assert not any(d for _, _, d in rows)  # a clean stop: nothing is a redelivery
    st = c.stats()
    assert st["catchup"]["replayed"] == N
    assert not st["alerted_lost"]


def test_kill9_then_return_gets_everything_redeliveries_marked(nodes: list[Node], tmp_path: Any) -> None:
    a, b, c = mesh_of_three(nodes, tmp_path)
    send(a, 100)  # c has a cursor (its first batch is written) before the kill
    wait_until_sync(lambda: c.stats()["persisted"] >= 100, "c's first batch written", timeout=30)
    a.send(f"send {N}")
    wait_until_sync(lambda: len(handled(tmp_path, "c")) >= 100 + N // 5, "c handling live", timeout=60)
    c.kill9()
    before = handled(tmp_path, "c")
    a.line("sent ", 120)
    away_past_window(a, b, tmp_path, 100 + N)
    c = restart(nodes, tmp_path, a, b)
    wait_until_sync(lambda: c.stats()["catchup"]["done"], "c caught up", timeout=60)
    wait_until_sync(lambda: set(seqs_of(handled(tmp_path, "c"), a.origin)) == set(range(1, 100 + N + 1)),
                    "c handled every event", timeout=60)
    rows = handled(tmp_path, "c")
    after = rows[len(before):]
    first = {e for e, _, _ in before}
    dups = [(e, r, d) for e, r, d in after if e in first]
    assert all(d for _, _, d in dups), "every event handled again carries the redelivered mark"
    # After a kill -9 the cursor is at most one batch behind what was handled: the
    # events handled again are the last ones before the kill, no more than were
    # handled within one flush interval (BATCH_MAX_AGE_S) plus the batch in the
    # writer's hands.  Bounded here by their position: all at the end of `before`.
    if dups:
        tail = [e for e, _, _ in before[-len(dups):]]
        assert sorted(e for e, _, _ in dups) == sorted(tail)
    assert seqs_of(after, a.origin) == sorted(seqs_of(after, a.origin))  # in order
    print(f"kill -9: {len(before)} handled before, {len(dups)} redelivered (marked), "
          f"{len(after) - len(dups)} caught up; flush interval {BATCH_MAX_AGE_S}s")


def test_return_with_nobody_holding_counts_them_lost(nodes: list[Node], tmp_path: Any) -> None:
    a, b, c = mesh_of_three(nodes, tmp_path, persist_ab="mesh")  # nobody keeps the load events
    send(a, 100)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 100, "c handled the first 100 live", timeout=30)
    c.quit()
    send(a, 2000)
    away_past_window(a, b, tmp_path, 2100)
    c = restart(nodes, tmp_path, a, b)
    wait_until_sync(lambda: c.stats()["alerted_lost"].get(a.origin) == 2000, "the 2000 counted lost",
                    timeout=60)
    assert len(handled(tmp_path, "c")) == 100
    send(a, 10)  # live traffic flows after the loss
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 110, "c handles live events again", timeout=30)
    assert seqs_of(handled(tmp_path, "c"), a.origin)[100:] == list(range(2101, 2111))


def test_fresh_node_gets_no_history_and_opt_out(nodes: list[Node], tmp_path: Any) -> None:
    a, b, c = mesh_of_three(nodes, tmp_path)
    send(a, 100)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 100, "c handled the first 100 live", timeout=30)
    c.quit()
    send(a, 500)
    away_past_window(a, b, tmp_path, 600)
    d = start(nodes, tmp_path, "d", [a.url, b.url])  # a new id, no cursor
    c = restart(nodes, tmp_path, a, b, catch_up=False)  # returns, opting out
    wait_until_sync(lambda: len(d.stats()["nodes"]) == 4 and len(c.stats()["nodes"]) == 4, "four nodes",
                    timeout=30)
    send(a, 10)
    wait_until_sync(lambda: len(handled(tmp_path, "d")) == 10, "d handles live events", timeout=30)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 110, "c handles live events", timeout=30)
    assert seqs_of(handled(tmp_path, "d"), a.origin) == list(range(601, 611))
    assert seqs_of(handled(tmp_path, "c"), a.origin)[100:] == list(range(601, 611))
    assert not any(r for _, r, _ in handled(tmp_path, "d") + handled(tmp_path, "c"))
    assert d.stats()["catchup"]["requests"] == 0 and c.stats()["catchup"]["requests"] == 0
    time.sleep(0)  # (nothing waits on time here)


@pytest.mark.parametrize("bus", ["redis", "nats"])
def test_clean_stop_then_return_on_a_bus_alone(nodes: list[Node], tmp_path: Any, bus: str) -> None:
    """The same over Redis or NATS alone (no WebSocket): the request and its answers go
    over the bus's direct subjects/channels, sealed and checked like every bus frame."""
    svc = services.redis() if bus == "redis" else services.nats()
    require(svc.available, svc.missing)
    link = f"{bus}:catchup{os.getpid()}x{int(time.time() * 1000) % 100000}:{svc.url}"
    a = start(nodes, tmp_path, "a", [], link=link)
    b = start(nodes, tmp_path, "b", [], link=link)
    c = start(nodes, tmp_path, "c", [], "mesh", link=link)
    for n in (a, b, c):
        wait_until_sync(lambda n=n: len(n.stats()["nodes"]) == 3, "a mesh of three on the bus", timeout=30)
    send(a, 100)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 100, "c handled the first 100 live", timeout=30)
    c.quit()
    send(a, N)
    away_past_window(a, b, tmp_path, 100 + N)
    c = start(nodes, tmp_path, "c", [], "mesh", link=link)
    wait_until_sync(lambda: c.stats()["catchup"]["done"], "c caught up", timeout=60)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) >= 100 + N, "c handled all", timeout=60)
    rows = handled(tmp_path, "c")
    assert seqs_of(rows, a.origin) == list(range(1, 100 + N + 1))
    assert all(r for _, r, _ in rows[100:]) and not any(d for _, _, d in rows)
    assert not c.stats()["alerted_lost"]


def test_return_on_nats_with_the_stream_only(nodes: list[Node], tmp_path: Any) -> None:
    """NATS with JetStream (``nats_stream=True``) and no peer keeping the events: the
    returning node catches up from the stream since it was last alive."""
    svc = services.nats()
    require(svc.available, svc.missing)
    link = f"nats+stream:catchupjs{os.getpid()}x{int(time.time() * 1000) % 100000}:{svc.url}"
    a = start(nodes, tmp_path, "a", [], "mesh", link=link)
    b = start(nodes, tmp_path, "b", [], "mesh", link=link)
    c = start(nodes, tmp_path, "c", [], "mesh", link=link)
    for n in (a, b, c):
        wait_until_sync(lambda n=n: len(n.stats()["nodes"]) == 3, "a mesh of three on NATS", timeout=30)
    send(a, 100)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) == 100, "c handled the first 100 live", timeout=30)
    c.quit()
    send(a, N)
    away_past_window(a, b, tmp_path, 100 + N)
    c = start(nodes, tmp_path, "c", [], "mesh", link=link)
    wait_until_sync(lambda: c.stats()["catchup"]["done"], "c caught up", timeout=60)
    wait_until_sync(lambda: len(handled(tmp_path, "c")) >= 100 + N, "c handled all", timeout=60)
    rows = handled(tmp_path, "c")
    assert seqs_of(rows, a.origin) == list(range(1, 100 + N + 1))  # exactly once, in order
    st = c.stats()
    assert st["catchup"]["stream"] == 1 and st["catchup"]["replayed"] == 0  # all from the stream
    assert not st["alerted_lost"]
