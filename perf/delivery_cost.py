"""The cost of delivery guarantees: per-origin sequences, dedupe windows, the
retransmit buffer and gap repair, on the WebSocket and Redis benchmarks.

The baseline is this project at the commit just before sequences were added
(``BASE``, checked out into a temporary git worktree and built there), driven by
*today's* benchmark definition (spiralfast/benchmark.py: default config, ``async def``
handler, ~100-byte payloads, two processes, first send to last receipt).  Both run in
the same invocation, alternating, ``ROUNDS`` times each; the table shows medians and
the ratio.

Usage: python perf/delivery_cost.py [EVENTS] [ROUNDS]   (default 200,000 and 3; not run in CI)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The last commit without per-origin sequences ("Losses are counted" is the next one).
BASE = "dc774e8"


def _base_tree() -> Path:
    tree = Path(tempfile.gettempdir()) / f"spiralfast-base-{BASE}"
    if not (tree / "spiralfast").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), BASE], check=True,
                       stdout=subprocess.DEVNULL)
    if not list((tree / "spiralfast").glob("_fastpath*.so")):
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Today's benchmark definition, run against the old package.
    src = (ROOT / "spiralfast" / "benchmark.py").read_text()
    (tree / "spiralfast" / "benchmark_today.py").write_text(src.replace('"spiralfast.benchmark"',
                                                                        '"spiralfast.benchmark_today"'))
    return tree


def _run(tree: Path, module: str, transport: str, n: int) -> dict:
    code = (f"import json; from {module} import run_bench; "
            f"print('RESULT', json.dumps(run_bench({transport!r}, {n})))")
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("SPIRALFAST_PUREPYTHON", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{tree} {transport}: {out.stderr[-2000:]}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    base = _base_tree()
    if shutil.which("git") is None:
        raise SystemExit("git is needed")
    print(f"# {datetime.now().isoformat(timespec='seconds')}  events={n} rounds={rounds}  base={BASE}")
    print("| link | before sequences (events/s) | with sequences + retransmit buffer (events/s) | ratio | lost |")
    print("|---|---:|---:|---:|---:|")
    for transport in ("ws", "redis"):
        before: list[int] = []
        after: list[int] = []
        lost = 0
        for _ in range(rounds):
            before.append(_run(base, "spiralfast.benchmark_today", transport, n)["events_per_s"])
            r = _run(ROOT, "spiralfast.benchmark", transport, n)
            after.append(r["events_per_s"])
            lost += r["lost"]
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {transport} | {b:,.0f} | {a:,.0f} | {a / b:.2f} | {lost} |", flush=True)


if __name__ == "__main__":
    main()
