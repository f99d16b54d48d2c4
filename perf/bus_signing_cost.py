"""The cost of signing bus frames (issue 23): the shared benchmark (``spiralfast bench``)
run interleaved with the nodes' frame signing on and off (``SPIRALFAST_BENCH_UNSIGNED=1``),
reporting events/s and the CPU seconds of both processes (sender and receiver) per run.

    python perf/bus_signing_cost.py redis 5
    python perf/bus_signing_cost.py nats 5

On a shared machine events/s vary run to run far more than signing costs; the CPU
seconds for the same 200,000 events are the steadier figure.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys


def main() -> None:
    transport, pairs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    res: dict[str, list[tuple[int, int, float]]] = {"signed": [], "unsigned": []}
    for i in range(pairs):
        for mode in (("signed", "unsigned") if i % 2 == 0 else ("unsigned", "signed")):
            env = dict(os.environ)
            env.pop("SPIRALFAST_BENCH_UNSIGNED", None)
            if mode == "unsigned":
                env["SPIRALFAST_BENCH_UNSIGNED"] = "1"
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([sys.executable, "-m", "spiralfast", "bench", "--transport", transport,
                                  "--events", "200000", "--rate", "0", "--json"],
                                 capture_output=True, text=True, env=env, timeout=600, check=True).stdout
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            d = json.loads(out)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            res[mode].append((d["events_per_s"], d["delivered"], cpu))
            print(transport, mode, d["events_per_s"], "events/s", d["delivered"], "delivered", f"cpu={cpu:.2f}s",
                  flush=True)
    for mode, xs in res.items():
        print(transport, mode, "median events/s", statistics.median(x[0] for x in xs),
              "median cpu s", round(statistics.median(x[2] for x in xs), 2), flush=True)


if __name__ == "__main__":
    main()
