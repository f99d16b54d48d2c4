"""Issue #12's delivery guarantees on real processes (two nodes over WebSocket, each in
its own process: ``tests/delivery_worker.py``), scaled down from ``perf/busy_and_pause.py``.

- A busy receiver (a plain handler blocking now and then, as synchronous I/O would) is
  slow, not lossy: every event handled exactly once, nobody declared dead.
- A receiver stopped (SIGSTOP) longer than the failure detector's limit: the sender drops
  it and keeps sending; after SIGCONT every event is delivered exactly once (repaired from
  the retransmit buffer), and with a retransmit window shorter than the pause, what could
  not be repaired is counted lost for that origin, exactly (and announced), never silent.
"""

from __future__ import annotations

import signal

import pytest

from .delivery_worker import Pair, settle, summary
from .waiting import wait_until_sync

pytestmark = pytest.mark.timeout(90)


def _exactly_once(row: dict, sent: int) -> None:
    assert row["sent"] == sent and row["max_seq"] == sent, row
    assert row["dups"] == 0, row
    assert row["handled"] + row["lost_counted"] == sent, row  # nothing unaccounted
    assert row["unaccounted"] == 0 and row["events_missing"] == 0, row
    assert row["alerted_lost"] == row["lost_counted"], row  # every loss announced


def test_busy_receiver_is_slow_not_lossy() -> None:
    n = 40_000
    with Pair(n, hb=0.5, blocks="2000:0.05,4000:0.3") as pair:
        r, s = settle(pair, timeout=60)
        row = summary(r, s, pair.origin)
    _exactly_once(row, n)
    assert row["handled"] == n and row["lost_counted"] == 0, row
    assert r["blocked_s"] >= 20 * 0.05 + 10 * 0.3 - 1e-6  # it really was busy
    # Never declared dead, by either side, at any sample; both still list each other.
    assert row["recv_declared_dead_by_sender"] == 0 and row["sender_declared_dead_by_recv"] == 0, row
    assert row["recv_listed"] and row["sender_listed"], row
    assert row["dropped_frames"] == 0 and row["dropped_events"] == 0, row
    assert s["counters"]["repair_requests"] == 0 and r["counters"]["repair_requests"] == 0  # no gap at all
    assert row["sender_rss_mib"] < 200, row  # the sender waited (backpressure), no queue grew


def _pause(n: int, rate: float, window: float | None) -> tuple[dict, dict, dict]:
    with Pair(n, hb=0.3, rate=rate, window=window) as pair:
        send = pair.send
        assert send is not None
        # Traffic flows first: the sender lists the receiver and has sent for a while.
        wait_until_sync(lambda: (st := send.stats())["peer_present"] and st["sent"] >= rate / 2,
                        "the sender streams to a listed receiver")
        pair.recv.signal(signal.SIGSTOP)
        at_stop = send.stats()["sent"]
        # Stopped past the failure detector: the sender declares it dead ...
        wait_until_sync(lambda: (st := send.stats())["peer_lost"] >= 1 and not st["peer_present"],
                        "the sender declared the stopped receiver dead")
        # ... and keeps sending: 1.5 s worth at its paced rate (more than the 1.0 s
        # retransmit window of the second test), or to the end.
        more = min(int(1.5 * rate), n - at_stop)

        def sent_more() -> dict | None:
            st = send.stats()
            return st if st["sent"] - at_stop >= more else None

        during = wait_until_sync(sent_more, f"the sender sent {more} more events while the receiver was stopped")
        pair.recv.signal(signal.SIGCONT)
        r, s = settle(pair, timeout=n / rate + 30)
        row = summary(r, s, pair.origin)
    return row, during, s


def test_paused_receiver_gets_every_event_exactly_once() -> None:
    n, rate = 30_000, 5_000.0
    row, during, s = _pause(n, rate, None)
    assert during["peer_lost"] >= 1 and not during["peer_present"]  # declared dead while stopped
    _exactly_once(row, n)
    assert row["handled"] == n and row["lost_counted"] == 0, row  # repaired from the retransmit buffer
    assert s["counters"]["repaired_sent"] > 0
    assert row["recv_listed"] and row["sender_listed"], row  # back after SIGCONT
    assert row["dropped_events"] == 0, row


def test_paused_receiver_beyond_the_retransmit_window_counts_losses_exactly() -> None:
    n, rate = 30_000, 5_000.0
    row, during, s = _pause(n, rate, 1.0)
    assert during["peer_lost"] >= 1
    _exactly_once(row, n)  # handled + counted lost == sent, alerts == lost, no duplicate
    assert row["lost_counted"] > 0 and row["handled"] < n, row  # some were gone for good
    assert row["recv_listed"] and row["sender_listed"], row
