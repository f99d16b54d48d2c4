"""Issue #12 at full size, on real processes: a busy receiver and a paused one.

Two processes over WebSocket (``tests/delivery_worker.py``), heartbeat 0.5 s, default
config otherwise.

- busy: 200,000 events as fast as the sender may send them; the receiver's plain
  handler blocks with ``time.sleep`` 50 ms every 2,000 events, 100 ms every 1,000, or
  300 ms every 4,000.
- pause: a steady 20,000 events/s for 513,200 events; 5 s in, the receiver is stopped
  (SIGSTOP) for 14 s, then continued.  Once with the default retransmit window (60 s),
  once with a 5 s window (the repair must fail: what is not delivered must be counted).

Prints one row per scenario: handled (unique by origin+sequence) / duplicates / lost
(counted by the receiver for that origin) / lost as announced by its ``system_alert`` /
unaccounted (neither handled nor counted) / times each node declared the other dead /
sender peak RSS.

Usage: ``python perf/busy_and_pause.py [busy|pause|all] [--n N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.delivery_worker import Pair, settle, summary  # noqa: E402

HB = 0.5
BUSY = [("50ms/2000", "2000:0.05"), ("100ms/1000", "1000:0.1"), ("300ms/4000", "4000:0.3")]


def busy(n: int, blocks: str) -> dict[str, Any]:
    t0 = time.monotonic()
    with Pair(n, hb=HB, blocks=blocks) as pair:
        r, s = settle(pair, timeout=600)
        row = summary(r, s, pair.origin)
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def pause(n: int, rate: float, at: float, length: float, window: float | None) -> dict[str, Any]:
    t0 = time.monotonic()
    with Pair(n, hb=HB, rate=rate, window=window) as pair:
        assert pair.send is not None
        time.sleep(at)
        pair.recv.signal(signal.SIGSTOP)
        time.sleep(length)
        s_mid = pair.send.stats()
        pair.recv.signal(signal.SIGCONT)
        r, s = settle(pair, timeout=n / rate + 90)
        row = summary(r, s, pair.origin)
        row["recv_dead_during_pause"] = s_mid["peer_lost"]
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


COLS = ["scenario", "sent", "handled", "dups", "lost_counted", "alerted_lost", "unaccounted", "events_missing",
        "recv_declared_dead_by_sender", "recv_dead_during_pause", "sender_declared_dead_by_recv", "recv_listed",
        "sender_listed",
        "dropped_frames", "sender_rss_mib", "retx_peak_mib", "seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="?", default="all", choices=["busy", "pause", "all"])
    ap.add_argument("--n", type=int, default=200_000, help="events per busy run")
    ap.add_argument("--pause-n", type=int, default=513_200)
    ap.add_argument("--rate", type=float, default=20_000.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    if a.which in ("busy", "all"):
        for name, blocks in BUSY:
            rows.append({"scenario": f"busy {name}", **busy(a.n, blocks)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.which in ("pause", "all"):
        for name, window in (("pause 14s, window 60s", None), ("pause 14s, window 5s", 5.0)):
            rows.append({"scenario": name, **pause(a.pause_n, a.rate, 5.0, 14.0, window)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in COLS}
    print(" | ".join(c.ljust(widths[c]) for c in COLS))
    print("-+-".join("-" * widths[c] for c in COLS))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in COLS))


if __name__ == "__main__":
    main()
