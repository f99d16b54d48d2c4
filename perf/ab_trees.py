"""A/B: the same two-process benchmark from two source trees, interleaved, side by side.

Used to show that a change (a restructure, a refactor) leaves speed where it was:
each round runs ``python -m spiralfast bench --json`` once from tree A and once from tree
B (order alternating), so machine noise hits both alike; the report gives every run,
the medians and the ratio B/A.

    python perf/ab_trees.py --a /tmp/base --b . --transport ws --rounds 5

Each tree must have its extensions built in place (``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run(tree: Path, transport: str, events: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    out = subprocess.run(
        [sys.executable, "-m", "spiralfast", "bench", "--transport", transport, "--events", str(events),
         "--rate", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=600, cwd=str(tree),
    )
    if out.returncode != 0:
        raise SystemExit(f"bench failed in {tree}: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout)["events_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="tree A (the baseline)")
    ap.add_argument("--b", type=Path, required=True, help="tree B (the change)")
    ap.add_argument("--transport", default="ws", choices=["ws", "redis", "nats"])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    a: list[float] = []
    b: list[float] = []
    for i in range(args.rounds):
        order = [("a", args.a), ("b", args.b)] if i % 2 == 0 else [("b", args.b), ("a", args.a)]
        for name, tree in order:
            (a if name == "a" else b).append(run(tree, args.transport, args.events))
        print(f"round {i + 1}: A {a[-1]:,.0f}/s  B {b[-1]:,.0f}/s", flush=True)
    ma, mb = statistics.median(a), statistics.median(b)
    print(json.dumps({"transport": args.transport, "events": args.events, "a": str(args.a), "b": str(args.b),
                      "a_runs": a, "b_runs": b, "a_median": ma, "b_median": mb,
                      "ratio_b_over_a": round(mb / ma, 4), "best_ratio": round(max(b) / max(a), 4)}))


if __name__ == "__main__":
    main()
