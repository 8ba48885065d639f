"""Run registry benchmark: submission-to-running latency and the cost of one progress update.

Run from the repository root::

    .venv/bin/python -m bench.registry [--runs 10] [--updates 2000]

It prints a table and writes it, with the machine, date and command, to its section of ``bench/RESULTS.md``.
The progress-update cost is compared with the obvious alternative, a JSON progress file rewritten atomically on
every update (with fsync, as :func:`pafo.paths.atomic_write_text` does, and without).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import machine, publish
from pafo.paths import PACKAGE_ROOT, atomic_write_text
from pafo.registry import STAGE_STARTING, SUCCEEDED, RunRegistry
from pafo.worker import ProgressReporter

__all__ = ["main", "measure_progress_overhead", "measure_submit_latency", "trivial_target"]

TARGET = "bench.registry:trivial_target"


def trivial_target(config: dict, *, out_dir: Path, progress, should_stop) -> dict:
    """Does nothing, so the measured time is the registry's and the worker start-up's alone."""
    return {"n": config.get("n")}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _poll(registry: RunRegistry, run_id: str, done: Callable[[sqlite3.Row], bool], timeout: float = 60.0) -> float:
    """Seconds (perf_counter) at which ``done(row)`` first holds, polling the row every millisecond."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        row = registry.store.read("SELECT status, stage FROM runs WHERE id = ?", (run_id,))[0]
        if done(row):
            return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError(f"run {run_id} did not get there within {timeout} s")


def measure_submit_latency(home: Path, runs: int) -> dict[str, tuple[float, float]]:
    """Per run, from submit(): claimed (status running, pid recorded), worker running the target, succeeded."""
    registry = RunRegistry(home)
    claimed, started, finished = [], [], []
    for n in range(runs):
        begin = time.perf_counter()
        record = registry.submit({"target": TARGET, "n": n}, fingerprint="bench")
        claimed.append(time.perf_counter() - begin if record.status != "queued" else float("nan"))
        started.append(_poll(registry, record.id, lambda row: row["stage"] != STAGE_STARTING) - begin)
        finished.append(_poll(registry, record.id, lambda row: row["status"] == SUCCEEDED) - begin)
    registry.close()
    return {"claimed": _percentiles(claimed), "started": _percentiles(started), "succeeded": _percentiles(finished)}


def _time_calls(call: Callable[[int], object], count: int) -> tuple[float, float]:
    """Median and p90 of one call, in microseconds."""
    samples = []
    for i in range(count):
        begin = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - begin) / 1000)
    return _percentiles(samples)


def _plain_replace(path: Path, text: str) -> None:
    """The alternative without fsync: write a temp file and rename it over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def measure_progress_overhead(home: Path, updates: int) -> dict[str, tuple[float, float]]:
    """µs per progress update through the registry versus rewriting a JSON progress file."""
    registry = RunRegistry(home)
    run_id = registry.submit({"target": TARGET, "n": "progress"}, fingerprint="bench", start=False).id
    registry.mark_running(run_id, os.getpid())
    reporter = ProgressReporter(registry, run_id)
    progress_file = home / "progress.json"

    def as_json(i: int) -> str:
        return json.dumps({"progress": i / updates, "stage": f"batch {i}", "heartbeat": time.time()})

    def progress(i: int) -> None:
        registry.update_progress(run_id, i / updates, f"batch {i}")

    def progress_with_metrics(i: int) -> None:
        registry.update_progress(run_id, i / updates, f"epoch {i}", {"epoch": i, "loss": 1 / (i + 1)})

    def json_fsync(i: int) -> None:
        atomic_write_text(progress_file, as_json(i))

    def json_no_fsync(i: int) -> None:
        _plain_replace(progress_file, as_json(i))

    results = {
        "registry.update_progress": _time_calls(progress, updates),
        "registry.update_progress + epoch metrics": _time_calls(progress_with_metrics, updates),
        "worker progress callback (throttled)": _time_calls(lambda i: reporter(i / updates, "batch", None), updates),
        "registry.get (what a UI poll costs)": _time_calls(lambda i: registry.get(run_id), max(200, updates // 10)),
        "JSON file, atomic_write_text (fsync)": _time_calls(json_fsync, updates),
        "JSON file, write + rename (no fsync)": _time_calls(json_no_fsync, updates),
    }
    registry.mark_cancelled(run_id, "benchmark done")
    registry.close()
    return results


def _report(latency: dict, overhead: dict, runs: int, updates: int, command: str) -> str:
    """The markdown of its section of RESULTS.md (also printed)."""
    base = overhead["registry.update_progress"][0]
    lines = [
        "## Run registry (`bench/registry.py`)",
        "",
        f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)",
        f"- Load average at the end (1 min): {os.getloadavg()[0]:.1f} — other work on the machine inflates p90",
        "",
        f"### Submission to running ({runs} runs of a trivial target, one at a time)",
        "",
        "| from `submit()` to | median ms | p90 ms |",
        "| --- | ---: | ---: |",
    ]
    labels = {
        "claimed": "row `running` with the worker's pid (returned by submit)",
        "started": "worker process up and reporting (`mark_running`)",
        "succeeded": "trivial target done, status `succeeded`",
    }
    lines += [f"| {labels[key]} | {med * 1000:.1f} | {p90 * 1000:.1f} |" for key, (med, p90) in latency.items()]
    lines += [
        "",
        f"### Cost of one progress update ({updates} calls each)",
        "",
        "| method | median µs | p90 µs | median vs `update_progress` |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {med:.1f} | {p90:.1f} | {med / base:.2f}× |" for name, (med, p90) in overhead.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs for the latency measurement")
    parser.add_argument("--updates", type=int, default=2000, help="calls per progress-update method")
    parser.add_argument("--out", type=Path, help="a file of its own instead of the section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="pafo-bench-") as tmp:
        latency = measure_submit_latency(Path(tmp) / "latency", args.runs)
        overhead = measure_progress_overhead(Path(tmp) / "progress", args.updates)
    command = "python -m bench.registry" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    report = _report(latency, overhead, args.runs, args.updates, command)
    print(report)
    publish("registry", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
