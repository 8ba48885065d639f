"""Scale figures: a 24-cell TF-IDF sweep on the local and the Ray backend, and one experiment's wall time and
peak memory against the number of users and of training pairs per user.

Run from the repository root (the machine is shared, so nicely)::

    nice -n 5 .venv/bin/python -m bench.scale [--only sweep|growth] [--limit 600] [--sizes 3000x8,30000x32]
        [--reference-tree /path/to/an/older/checkout] [--reference-limit 900] [--reference-sizes 3000x8]

``--sizes`` measures a subset of the growth points (users×pairs; the other rows are kept from the last run);
``--reference-tree`` runs each point again with that checkout's code (its ``pafo`` package first on
``PYTHONPATH``) right after this one's, so the speed-up is a ratio taken under the same load.

Every measured command is a fresh ``pafo`` process with a private ``$PAFO_HOME`` (no reused runs, no warm
embeddings cache), so a figure is what a user would wait for. Peak memory is the largest sum of resident memory
(VmRSS) over the measured process, all its descendants (Ray's raylet and task workers) and every process naming
its ``$PAFO_HOME`` (registry workers, which outlive the worker that started them), sampled every 0.2 s from /proc.
It rewrites the ``scale`` section of ``bench/RESULTS.md`` with machine, date, load and command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, publish
from pafo.results import RunResult, SweepResult

__all__ = ["main", "measure", "tree_rss"]

HERE = Path(__file__).resolve().parent
SAMPLE_SECONDS = 0.2
DATA = ["--dataset", "synthetic", "--encoder", "tfidf", "--methods", "baseline,pafo"]
# 3 × 2 grid points × 4 seeds = 24 cells of 200 users each.
SWEEP_GRID = ["--grid", "groups.minority_quantile=0.1,0.2,0.3", "--grid", "pafo.beta=0.5,1"]
SWEEP_SEEDS, SWEEP_USERS, SWEEP_CELLS = "0-3", 200, 24
USERS, PAIRS = (3_000, 30_000, 300_000), (8, 32)
#: Bootstrap resamples per point: the default 1,000, lowered where resamples × users would pass the bound on
#: resampled users (pafo.method_configs.MAX_BOOTSTRAP_DRAWS), as a user would have to.
BOOTSTRAP_DRAWS = 200_000_000
GOAL_USERS, GOAL_PAIRS, GOAL_SECONDS, GOAL_GIB, GOAL_PAFO_RATIO = 30_000, 32, 120.0, 2.0, 3.0
CLUSTER_CELLS, CLUSTER_CORES = 1_000, 64


def _children() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/PID/stat."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _naming(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``: registry workers started by an earlier worker (which then
    exited, so they were re-parented to init) still carry ``--home <the measured home>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def tree_rss(pid: int, marker: str | None = None) -> int:
    """Resident bytes of ``pid``, its descendants and the processes naming ``marker`` (and theirs), each counted
    once (0 for processes that vanished meanwhile)."""
    tree, total, seen = _children(), 0, set()
    todo = [pid, *(_naming(marker) if marker else [])]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += tree.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str], home: Path, limit: float, tree: Path = HERE.parent) -> dict:
    """Wall seconds, peak tree RSS (bytes) and exit code of one command (killed after ``limit`` seconds), run with
    ``tree``'s code first on the path."""
    env = {**os.environ, "PAFO_HOME": str(home), "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    cpu_before = _children_cpu()
    started = time.perf_counter()
    # cwd=tree: `python -m pafo.cli` puts the working directory first on sys.path, ahead of PYTHONPATH.
    process = subprocess.Popen(command, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    peak, timed_out = 0, False
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid, str(home)))
        if time.perf_counter() - started > limit:
            timed_out = True
            os.killpg(process.pid, 9)
            break
        time.sleep(SAMPLE_SECONDS)
    process.wait()
    stderr = process.stderr.read().decode(errors="replace").strip().splitlines()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": _children_cpu() - cpu_before,
            "peak_bytes": peak, "code": process.returncode,
            "timed_out": timed_out, "stderr_tail": stderr[-1] if stderr else ""}


def _pafo(*args: str) -> list[str]:
    return [sys.executable, "-m", "pafo.cli", *args]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def measure_sweep(limit: float) -> dict:
    """One experiment (a cell's config, CLI start included), then the 24-cell sweep on each backend."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="pafo-scale-") as tmp:
        single = Path(tmp) / "one.json"
        out["one"] = measure(_pafo("experiment", *DATA, "--users", str(SWEEP_USERS), "--seed", "0",
                                   "--minority-quantile", "0.1", "--beta", "0.5", "--json", str(single)),
                             Path(tmp) / "home-one", limit)
        if single.exists():
            out["one"]["inner_seconds"] = RunResult.from_json(json.loads(single.read_text())).seconds
        for backend in ("local", "ray"):
            result = Path(tmp) / f"sweep-{backend}.json"
            extra = ["--max-concurrent", str(os.cpu_count())] if backend == "local" else []
            out[backend] = measure(_pafo("sweep", *DATA, "--users", str(SWEEP_USERS), *SWEEP_GRID, "--seeds",
                                         SWEEP_SEEDS, "--backend", backend, *extra, "--json", str(result)),
                                   Path(tmp) / f"home-{backend}", limit)
            if result.exists():
                cells = SweepResult.from_json(json.loads(result.read_text())).cells
                out[backend]["succeeded"] = sum(c.status == "succeeded" for c in cells)
                out[backend]["metrics"] = [c.methods["pafo"].accuracy for c in cells if c.methods]
        out["identical"] = out.get("local", {}).get("metrics") == out.get("ray", {}).get("metrics")
    return out


def _load() -> float:
    return os.getloadavg()[0]


def measure_point(users: int, pairs: int, limit: float, tree: Path = HERE.parent) -> dict:
    """One experiment at (users, pairs per user) with ``tree``'s code, in a fresh home; a point over ``limit`` is
    recorded as such."""
    bootstrap = min(1000, BOOTSTRAP_DRAWS // users)
    with tempfile.TemporaryDirectory(prefix="pafo-scale-") as tmp:
        result = Path(tmp) / "result.json"
        load_before = _load()
        row = measure(_pafo("experiment", *DATA, "--users", str(users), "--train-pairs", str(pairs), "--seed", "0",
                            "--bootstrap", str(bootstrap), "--json", str(result)), Path(tmp) / "home", limit, tree)
        row.update(users=users, pairs=pairs, bootstrap=bootstrap, load=[load_before, _load()])
        if result.exists():
            data = RunResult.from_json(json.loads(result.read_text()))
            row["inner_seconds"] = data.seconds
            row["encoder_seconds"] = data.encoder["seconds"]
            row["train_seconds"] = {m: block.train_seconds for m, block in data.methods.items()}
            row["n_pairs"] = data.dataset["n_pairs"]
            row["accuracy"] = {m: block.accuracy for m, block in data.methods.items()}
    return row


def measure_growth(limit: float, sizes: list[tuple[int, int]], reference: Path | None,
                   reference_limit: float, reference_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
    """One experiment per (users, pairs per user) in ``sizes``; with ``reference``, that checkout's code right
    after at the same point (at the points of ``reference_sizes`` only, when given)."""
    rows = []
    for users, pairs in sizes:
        row = measure_point(users, pairs, limit)
        row["command"] = "python -m bench.scale " + shlex.join(sys.argv[1:])
        if reference is not None and (reference_sizes is None or (users, pairs) in reference_sizes):
            row["reference"] = measure_point(users, pairs, reference_limit, reference)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _sweep_lines(sweep: dict) -> list[str]:
    one = sweep["one"]
    lines = ["| what | wall s | peak RSS GiB (tree) | cells ok | wall s / cell | overhead s / cell |",
             "|---|---:|---:|---:|---:|---:|",
             f"| one experiment (`pafo experiment`, {SWEEP_USERS} users) | {one['seconds']:.1f} | "
             f"{_gib(one['peak_bytes'])} | – | {one['seconds']:.1f} | – |"]
    cores = os.cpu_count() or 1
    for backend in ("local", "ray"):
        row = sweep.get(backend)
        if not row:
            continue
        per_cell = row["seconds"] / SWEEP_CELLS
        # With `cores` cells at a time, a cell's share of the wall time is per_cell × cores of one core's time.
        overhead = per_cell * cores - one["seconds"]
        lines.append(f"| sweep, `--backend {backend}` ({SWEEP_CELLS} cells, {cores} at a time) | "
                     f"{row['seconds']:.1f} | {_gib(row['peak_bytes'])} | {row.get('succeeded', 0)}/{SWEEP_CELLS} | "
                     f"{per_cell:.2f} | {overhead:+.2f} |")
    lines += ["", f"Per-cell metrics identical on both backends: **{'yes' if sweep['identical'] else 'NO'}**. "
              f"Inside the one experiment, the run itself (data → metrics) took {one.get('inner_seconds', 0):.1f} s; "
              "the rest of its wall time is interpreter start and imports (torch, pandas, sklearn), which every "
              "cell's worker pays again. *Overhead per cell* = wall / cell × cells at a time − one experiment's "
              "wall: what a cell costs beyond a standalone `pafo experiment` (registry, worker start, sweep "
              "assembly, Ray's start-up for `ray`), and it absorbs contention between the two cells that share "
              "the two cores. It comes out negative when the sweep's cells find their features in the cache the "
              "sweep filled once (the standalone run fits TF-IDF itself) and when the machine's load moved "
              "between the measurements; peak memory of the Ray sweep includes Ray's own processes (raylet, GCS)."]
    return lines


def _finished(row: dict | None) -> bool:
    return bool(row) and not row["timed_out"] and row["code"] == 0 and "inner_seconds" in row


def _wall(row: dict | None) -> str:
    """Wall seconds of a point, or why there is none."""
    if not row:
        return "–"
    if _finished(row):
        return f"{row['seconds']:.1f}"
    if row.get("note"):
        return f"> {row['seconds']:.0f} ({row['note']})"
    return f"> {row['seconds']:.0f} (stopped)" if row["timed_out"] else f"exit {row['code']}"


def _ratio(row: dict) -> float | None:
    """PAFO's train seconds (its baseline, clusters and teacher) over the baseline's."""
    train = row.get("train_seconds") or {}
    return train["pafo"] / train["baseline"] if train.get("baseline") else None


def _peak(row: dict | None) -> str:
    if not row:
        return "–"
    return ("" if _finished(row) else "≥ ") + _gib(row["peak_bytes"])


def _growth_row(row: dict) -> str:
    ref, train, done = row.get("reference"), row.get("train_seconds") or {}, _finished(row)
    cpu = f"{row['cpu_seconds']:.1f}" if _finished(row) and "cpu_seconds" in row else "–"
    cells = [f"{row['users']:,}", str(row["pairs"]), _wall(row), cpu, _peak(row)]
    if done:
        cells += [f"{row['inner_seconds']:.1f}", f"{train.get('baseline', 0):.1f}", f"{train.get('pafo', 0):.1f}",
                  f"{_ratio(row):.2f}×", f"{1e6 * row['inner_seconds'] / (row['users'] * row['pairs']):.0f}"]
    else:
        cells += ["–"] * 5
    load = row.get("load") or [float("nan")] * 2
    cells += [f"{load[0]:.1f} / {load[1]:.1f}", _wall(ref), _peak(ref)]
    if done and _finished(ref):
        cells.append(f"{ref['seconds'] / row['seconds']:.1f}×")
    elif done and ref and ref["timed_out"]:
        cells.append(f"> {ref['seconds'] / row['seconds']:.1f}×")
    else:
        cells.append("–")
    both_cpu = done and _finished(ref) and "cpu_seconds" in row and "cpu_seconds" in ref
    cells.append(f"{ref['cpu_seconds'] / row['cpu_seconds']:.1f}×" if both_cpu else "–")
    return "| " + " | ".join(cells) + " |"


def _growth_lines(rows: list[dict]) -> list[str]:
    return ["| users | pairs / user | wall s | CPU s | peak RSS GiB | run s | baseline train s | pafo train s | "
            "pafo ÷ baseline | µs per user-pair (run) | load 1-min before / after | previous code: wall s | "
            "previous: peak GiB | speed-up (wall) | speed-up (CPU) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
            *(_growth_row(r) for r in sorted(rows, key=lambda r: (r["pairs"], r["users"])))]


def _times(big: dict, small: dict) -> str:
    """CPU and wall time of one point over another's (CPU first: the load moves wall times)."""
    cpu = (f"CPU time {big['cpu_seconds'] / small['cpu_seconds']:.1f}×, "
           if "cpu_seconds" in big and "cpu_seconds" in small else "")
    return f"{cpu}wall {big['seconds'] / small['seconds']:.1f}× (under the loads in the table)"


def _growth_summary(rows: list[dict]) -> list[str]:
    """The 30k/3k ratios per pairs value, and the goal at 30,000 × 32."""
    by = {(r["users"], r["pairs"]): r for r in rows}
    out = []
    for pairs in PAIRS:
        small, big = by.get((3_000, pairs)), by.get((30_000, pairs))
        if _finished(small) and _finished(big):
            out.append(f"- {pairs} pairs per user, 30,000 vs 3,000 users (10× the labels): {_times(big, small)}, "
                       f"peak memory {big['peak_bytes'] / small['peak_bytes']:.1f}× (linear would be 10×; the "
                       "interpreter, imports and fixed costs make small runs relatively dear).")
    small, big = by.get((30_000, 8)), by.get((300_000, 8))
    if _finished(small) and _finished(big):
        out.append(f"- 8 pairs per user, 300,000 vs 30,000 users (10× the labels): {_times(big, small)}, peak memory "
                   f"{big['peak_bytes'] / small['peak_bytes']:.1f}× (linear would be 10×).")
    for users in (3_000, 30_000):
        few, many = by.get((users, 8)), by.get((users, 32))
        if _finished(few) and _finished(many):
            out.append(f"- {users:,} users, 32 vs 8 pairs per user (4× the labels): {_times(many, few)} (linear "
                       "would be 4×).")
    goal = by.get((GOAL_USERS, GOAL_PAIRS))
    if goal:
        wall_ok = _finished(goal) and goal["seconds"] <= GOAL_SECONDS
        mem_ok = goal["peak_bytes"] <= GOAL_GIB * 2**30
        cpu = (f"; its CPU time, what a quiet machine's wall time would be for this single-threaded run, "
               f"{goal['cpu_seconds']:.0f} s: {'met' if goal['cpu_seconds'] <= GOAL_SECONDS else 'NOT met'}"
               if _finished(goal) and "cpu_seconds" in goal else "")
        out.append(f"- goal at {GOAL_USERS:,} × {GOAL_PAIRS}: ≤ {GOAL_SECONDS:.0f} s — {_wall(goal)} s wall, "
                   f"{'met' if wall_ok else 'NOT met'} (load {goal['load'][0]:.1f} at its start on 2 cores{cpu}); "
                   f"≤ {GOAL_GIB:.0f} GiB — {_gib(goal['peak_bytes'])} GiB, {'met' if mem_ok else 'NOT met'}.")
    ratios = [(r, _ratio(r)) for r in rows if _finished(r)]
    if ratios:
        worst = max(ratios, key=lambda t: t[1])
        out.append(f"- PAFO ÷ baseline train time (goal ≤ {GOAL_PAFO_RATIO:.0f}×): at most {worst[1]:.2f}× "
                   f"({worst[0]['users']:,} × {worst[0]['pairs']}); PAFO's figure includes the baseline it starts "
                   "from.")
    return out


def _bigger_cells(growth: list[dict] | None) -> str:
    """What 1,000 cells of the growth table's 3,000-user points cost, from their measured wall times."""
    rows = sorted((r for r in growth or [] if r["users"] <= GOAL_USERS and _finished(r)),
                  key=lambda r: (r["users"], r["pairs"]))
    if not rows:
        return ""
    cost = [(r, r.get("cpu_seconds", r["seconds"])) for r in rows]
    parts = [f"{r['users']:,} users × {r['pairs']} pairs: {c:.0f} core-seconds a cell, about "
             f"{CLUSTER_CELLS * c / 3600:.0f} core-hours, {CLUSTER_CELLS * c / CLUSTER_CORES / 60:.0f} min on "
             f"{CLUSTER_CORES} cores" for r, c in cost]
    return ("Bigger cells cost what their experiment costs in the growth table above (its CPU time: one cell is "
            "single-threaded), which grows less than linearly in users × pairs: 1,000 cells of "
            + "; of ".join(parts) + ". ")


def _estimate_lines(sweep: dict, growth: list[dict] | None = None) -> list[str]:
    """A 1,000-cell sweep on a cluster, from the measured cost of one cell here."""
    one = sweep["one"]
    ray = sweep.get("ray") or sweep.get("local")
    cores = os.cpu_count() or 1
    cell_core_s = ray["seconds"] * cores / SWEEP_CELLS  # core-seconds per cell, overheads included
    hours = CLUSTER_CELLS * cell_core_s / 3600
    wall_min = CLUSTER_CELLS * cell_core_s / CLUSTER_CORES / 60
    return [f"Measured here, one {SWEEP_USERS}-user TF-IDF cell costs {cell_core_s:.1f} core-seconds inside a Ray "
            f"sweep (wall × cores / cells, overheads included; {one['seconds']:.1f} s standalone). A "
            f"{CLUSTER_CELLS:,}-cell sweep of the same cells therefore needs about {hours:.1f} core-hours: about "
            f"{wall_min:.0f} min on a {CLUSTER_CORES}-core Ray cluster (one CPU per cell, `num_cpus=1`), with "
            f"≈{_gib(one['peak_bytes'])} GiB of memory per concurrent cell (one experiment's peak) plus Ray's own "
            "processes per node. " + _bigger_cells(growth) +
            "The features are embedded once per distinct dataset before the cells start (TF-IDF here: "
            "seconds; MiniLM on a GPU: the gpu section), and `$PAFO_HOME` must sit on a file system every "
            "node shares. Not measured: a real multi-node cluster; the estimate assumes cells stay independent "
            "(they are) and the registry's SQLite file keeps up with 64 workers' progress writes (each worker "
            "writes at most 5 per second, the registry section)."]


def _merged(previous: list[dict] | None, new: list[dict] | None) -> list[dict] | None:
    """The growth rows: this run's points replace the previous run's at the same (users, pairs)."""
    if not new:
        return previous
    fresh = {(r["users"], r["pairs"]) for r in new}
    return [r for r in previous or [] if (r["users"], r["pairs"]) not in fresh and "load" in r] + new


def write_results(sweep: dict | None, growth: list[dict] | None, load_before: str, reference: Path | None,
                  note: str | None = None) -> None:
    previous = json.loads(RESULTS_RAW.read_text()) if RESULTS_RAW.exists() else {}
    sweep = sweep or previous.get("sweep")
    growth = _merged(previous.get("growth"), growth)
    RESULTS_RAW.write_text(json.dumps({"sweep": sweep, "growth": growth}, indent=1) + "\n")
    lines = ["## Scale: sweeps on local workers and Ray; experiment cost against users and pairs", "",
             f"Machine: {machine()}.  ",
             f"Load average when the bench started: {load_before} (the machine is shared by four engineers; "
             "figures are wall times under that load, run with `nice -n 5`; each point's own 1-minute load is in "
             "its row).  ",
             f"Date: {dt.date.today().isoformat()}.  ",
             f"Command: `python -m bench.scale {shlex.join(sys.argv[1:])}`"
             + "".join(f"; growth rows from `{c}`" for c in dict.fromkeys(r.get("command") for r in growth or [])
                       if c), ""]
    if sweep:
        lines += [f"### A {SWEEP_CELLS}-cell sweep (TF-IDF, {SWEEP_USERS} users, baseline,pafo)", "",
                  f"`pafo sweep --dataset synthetic --encoder tfidf --users {SWEEP_USERS} {' '.join(SWEEP_GRID)} "
                  f"--seeds {SWEEP_SEEDS}` (3 × 2 points × 4 seeds), fresh `$PAFO_HOME` each."
                  + (f" {sweep['note']}" if sweep.get("note") else ""), "",
                  *_sweep_lines(sweep), ""]
    if growth:
        lines += ["### One experiment against users and pairs per user (TF-IDF, baseline,pafo, seed 0)", "",
                  "`pafo experiment --dataset synthetic --encoder tfidf --methods baseline,pafo --users U "
                  "--train-pairs P --bootstrap B` (20 test pairs per user; B = 1,000, or the most resamples the "
                  "bound on resampled users allows: 666 at 300,000 users). *run s*: the experiment itself (the "
                  "result's `seconds`: data, support rates, features, both methods, metrics, bootstrap); wall adds "
                  "interpreter start and imports. *pafo train s* includes the baseline PAFO starts from. *previous "
                  "code*: the same command with "
                  + (f"the checkout at `{reference}` ({note or 'the code before issue 24'})" if reference else
                     note or "the code before issue 24's changes") +
                  ", run right after each point under the same load; its figures were stopped at the limit where "
                  "marked.", "", *_growth_lines(growth), "", *_growth_summary(growth), ""]
    if sweep:
        lines += ["### Estimate: a 1,000-cell sweep on a cluster", "", *_estimate_lines(sweep, growth), ""]
    print(f"wrote {publish('scale', chr(10).join(lines))} (section scale)")


RESULTS_RAW = HERE / "scale_raw.json"


def _sizes(text: str) -> list[tuple[int, int]]:
    """'3000x8,30000x32' → [(3000, 8), (30000, 32)]."""
    try:
        return [(int(u), int(p)) for u, p in (item.lower().split("x") for item in text.split(",") if item.strip())]
    except ValueError:
        raise SystemExit(f"--sizes: {text!r} is not a list of USERSxPAIRS, e.g. 3000x8,30000x32") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("sweep", "growth", "render"),
                        help="measure one part (the other is kept); render: rewrite the section from scale_raw.json")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds one measured command may take")
    parser.add_argument("--sizes", type=_sizes, default=[(u, p) for p in PAIRS for u in USERS],
                        help="growth points as USERSxPAIRS, comma-separated (default: 3k/30k/300k × 8/32)")
    parser.add_argument("--reference-tree", type=Path, help="a checkout whose code is measured at each point too")
    parser.add_argument("--reference-limit", type=float, default=900.0, help="seconds the reference may take")
    parser.add_argument("--reference-sizes", type=_sizes, help="the points the reference runs at (default: all)")
    parser.add_argument("--reference-note", help="what the reference code is, for the text (e.g. 'main before issue "
                                                 "24's second pass, commit bddb6d4')")
    args = parser.parse_args(argv)
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    sweep = measure_sweep(args.limit) if args.only in (None, "sweep") else None
    growth = (measure_growth(args.limit, args.sizes, args.reference_tree, args.reference_limit, args.reference_sizes)
              if args.only in (None, "growth") else None)
    write_results(sweep, growth, load_before, args.reference_tree, args.reference_note)


if __name__ == "__main__":
    main()
