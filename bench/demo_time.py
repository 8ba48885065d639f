"""How long the one-click demo's run takes from a cold embeddings cache, for one seed and for several.

    python -m bench.demo_time [--seeds 0 0-2]

Each seed list runs the demo's experiment (``pafo.appstate.demo_config``) in a fresh process with an empty
``$PAFO_HOME``, as the demo's worker would, and prints its wall and CPU seconds, when each stage began and the
progress fraction it began at. The browser test (tests/test_browser.py) measures the whole path a user waits for
(server start → Compare figures); this isolates the run, which is what more seeds add to.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import machine

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
from pafo import appstate
from pafo.experiment import run_experiment
events, last = [], [None]
def progress(fraction, stage, metrics=None):
    key = stage.split(" (seed")[0].split(":")[0]
    if key != last[0]:
        events.append([round(time.perf_counter() - started, 1), round(cpu(), 1), round(float(fraction), 3), stage])
        last[0] = key
result = run_experiment(appstate.demo_config(seeds=sys.argv[1]), progress=progress)
print(json.dumps({"wall": round(time.perf_counter() - started, 1), "cpu": round(cpu(), 1),
                  "embed": round(result["encoder"]["seconds"], 1), "events": events,
                  "verdict": result["comparisons"]["pafo"]["verdict"]}))
"""


def measure(seeds: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="demo_home_") as home:
        env = {**os.environ, "PAFO_HOME": home}
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", CHILD, seeds], env=env, check=True, capture_output=True, text=True)
        return {"seeds": seeds, "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
                **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", default=["0", "0-2"], help="seed lists to time (default: 0 0-2)")
    args = parser.parse_args()
    print(f"- machine: {machine()}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command "
          f"`python -m bench.demo_time --seeds {' '.join(args.seeds)}`")
    for seeds in args.seeds:
        row = measure(seeds)
        stages = "; ".join(f"{stage} at {wall} s ({100 * fraction:.0f}%)" for wall, _, fraction, stage in row["events"])
        print(f"- seeds {seeds}: run {row['wall']} s wall, {row['cpu']} CPU-s (embedding {row['embed']} s); load "
              f"{row['load_before']} → {row['load_after']}; verdict {row['verdict']}; stages: {stages}")


if __name__ == "__main__":
    main()
