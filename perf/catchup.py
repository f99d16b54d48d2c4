"""Issue #25: catch-up of missed events after a restart, on real processes.

Three nodes over WebSocket (``tests/catchup_worker.py``): ``a`` sends, ``b`` persists
every event, ``c`` (event log of membership events only, the CLI's default, plus its
delivery cursor) stops cleanly while ``a`` broadcasts N events (100,000 by default;
``a``'s retransmit window 0.5 s, so only ``b``'s event log holds them), then starts again.

Measured:

- plain: ``a`` broadcasts L live events (20,000) to the running mesh; the time until
  ``c`` has handled them all: the plain live rate.
- catch-up: ``c`` is restarted and, as soon as its process prints its URL, ``a``
  broadcasts L live events again.  Reported: the time from the process start to the
  end of the catch-up (all N replayed), the catch-up rate, and the live rate during the
  catch-up (L over the time from the live burst's start until ``c`` handled all L).

Usage: ``python perf/catchup.py [--n N] [--live L] [--log-handled] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.catchup_worker import Node  # noqa: E402

HB = "0.5"
WINDOW = "0.5"


def wait(cond: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--live", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--log-handled", action="store_true",
                    help="the handlers append each event to a file (one write per event), as the tests do")
    args = ap.parse_args()
    if not args.log_handled:
        os.environ["CATCHUP_NOLOG"] = "1"  # the workers inherit it: handlers count only
    d = tempfile.mkdtemp(prefix="sf-catchup-")
    a = Node("a", d, "-", HB, WINDOW, "all", "1")
    b = Node("b", d, a.url, HB, WINDOW, "all", "1")
    c = Node("c", d, f"{a.url},{b.url}", HB, WINDOW, "mesh", "1")
    nodes = [a, b, c]
    try:
        for n in nodes:
            wait(lambda n=n: len(n.stats()["nodes"]) == 3, "mesh of three", 30)
        # plain live rate
        t0 = time.monotonic()
        a.send(f"send {args.live}")
        wait(lambda: c.stats()["handled"] >= args.live, "plain live", 120)
        plain_s = time.monotonic() - t0
        a.line("sent ", 60)
        c.quit()
        a.send(f"send {args.n}")
        a.line("sent ", 600)
        wait(lambda: b.stats()["handled"] >= args.live + args.n, "b has all", 600)
        wait(lambda: a.stats()["retx_len"] == 0, "a's retransmit buffer empty", 60)
        # restart c; live burst at once
        t_start = time.monotonic()
        c = Node("c", d, f"{a.url},{b.url}", HB, WINDOW, "mesh", "1")
        nodes.append(c)
        t_up = time.monotonic()
        a.send(f"send {args.live}")
        wait(lambda: c.stats()["catchup"]["done"], "catch-up done", 600)
        t_caught = time.monotonic()
        wait(lambda: c.stats()["handled"] >= args.n + args.live, "c handled all", 600)
        t_all = time.monotonic()
        st = c.stats()
        out = {
            "missed": args.n, "replayed": st["catchup"]["replayed"], "lost": st["alerted_lost"],
            "process_start_to_url_s": round(t_up - t_start, 3),
            "start_to_caught_up_s": round(t_caught - t_start, 3),
            "catchup_s_in_node": st["catchup"].get("seconds"),
            "catchup_rate_per_s": round(args.n / (t_caught - t_up), 0),
            "plain_live_rate_per_s": round(args.live / plain_s, 0),
            "live_rate_during_catchup_per_s": round(args.live / (t_all - t_up), 0),
        }
        out["live_ratio"] = round(out["live_rate_during_catchup_per_s"] / out["plain_live_rate_per_s"], 2)
        if args.json:
            print(json.dumps(out))
        else:
            for k, v in out.items():
                print(f"{k:34} {v}")
    finally:
        for n in nodes:
            if n.p.poll() is None:
                n.close()


if __name__ == "__main__":
    main()
