"""Quality benchmark: bt, baseline, reweight, groupdro and PAFO on the synthetic default and DSP part A.

    python -m bench.quality [--seeds 0,1,2] [--encoder minilm] [--skip-ablation] [--out bench/RESULTS_quality.md]

Per dataset and seed one experiment trains every method on the same data, features and groups. Tables give the
mean over seeds and, for group accuracies and the gap, the mean of the per-seed bootstrap CIs over users; the
bias check adds a bootstrap CI of the baseline's Spearman(support, accuracy). The ablation switches each PAFO
option of spec §6/§8 on and off, one at a time, from the defaults. Tuning was done on validation pairs only;
every figure here is on test pairs. Speed: PAFO's wall time against the baseline's, and the default synthetic
experiment with a cold and a warm embeddings cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pafo.experiment import ExperimentConfig, run_experiment

ROOT = Path(__file__).resolve().parents[1]
DSP_PATH = ROOT.parent / "shared" / "data" / "dsp_test_part_a.json"
METHODS = "bt,baseline,reweight,groupdro,pafo"
ABLATIONS = {
    "default": {},
    "dense=0 (labelled pairs only)": {"dense": 0},
    "dense=100": {"dense": 100},
    "condition=group+agree": {"condition": "group+agree"},
    "distill=mse": {"distill": "mse"},
    "teacher_init=baseline": {"teacher_init": "baseline"},
    "teacher_init=scratch": {"teacher_init": "scratch"},
    "lambda=0 (no distillation)": {"lam": 0.0},
    "lambda=3": {"lam": 3.0},
    "temperature=2": {"temperature": 2.0},
    "keep_initial=on (teachers/student may stay at the baseline)": {"keep_initial": True},
    "batches=random (student batches not grouped by prompt)": {"batches": "random"},
    "finetune_patience=8 (the baseline's, for teachers and student)": {"finetune_patience": 8},
    "scale_batch=off (student batch as the baseline's)": {"scale_batch": False},
    "model: unit-norm g (baseline too)": {"train": {"normalise": True}},
    "model: user_lr_scale=1 (baseline too)": {"train": {"user_lr_scale": 1.0}},
    "model: user_lr_scale=3 (baseline too)": {"train": {"user_lr_scale": 3.0}},
}


def experiment_config(dataset: str, seed: int, encoder: str, methods: str, train: dict | None = None,
                      **pafo) -> ExperimentConfig:
    config = ExperimentConfig()
    config.data.seed = seed
    if dataset == "dsp":
        config.data.dataset, config.data.path = "dsp", str(DSP_PATH)
    config.run.encoder, config.run.methods = encoder, methods
    config.pafo = dataclasses.replace(config.pafo, **pafo)
    config.train = dataclasses.replace(config.train, **(train or {}))
    return config


def spearman_ci(per_user: dict, method: str, seed: int) -> list[float]:
    table = pd.DataFrame(per_user)[["support_rate", f"acc_{method}"]].dropna()
    result = stats.bootstrap((table["support_rate"].to_numpy(), table[f"acc_{method}"].to_numpy()),
                             lambda s, a: stats.spearmanr(s, a).statistic, paired=True, vectorized=False,
                             n_resamples=500, method="percentile", random_state=seed)
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def method_rows(results: list[dict]) -> pd.DataFrame:
    rows = []
    for seed, result in enumerate(results):
        for name, m in result["methods"].items():
            rows.append({"method": name, "seed": seed, **{f"acc_{k}": v for k, v in m["accuracy"].items()},
                         **m["unfairness"], "ci_maj_lo": m["accuracy_ci"]["majority"][0],
                         "ci_maj_hi": m["accuracy_ci"]["majority"][1], "ci_min_lo": m["accuracy_ci"]["minority"][0],
                         "ci_min_hi": m["accuracy_ci"]["minority"][1], "ci_gap_lo": m["accuracy_ci"]["gap"][0],
                         "ci_gap_hi": m["accuracy_ci"]["gap"][1], "train_seconds": m["train_seconds"],
                         "pareto": m.get("pareto_improvement", False)})
    return pd.DataFrame(rows)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summary_table(frame: pd.DataFrame) -> str:
    mean = frame.groupby("method", sort=False).mean(numeric_only=True)
    sd = frame.groupby("method", sort=False).std(numeric_only=True).fillna(0.0)
    lines = ["| method | overall | micro | majority [CI] | minority [CI] | gap [CI] | user std | Gini | worst-10% "
             "| Spearman ρ | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in mean.iterrows():
        lines.append(
            f"| {name} | {pct(r.acc_overall)} ± {pct(sd.loc[name, 'acc_overall'])} | {pct(r.acc_micro)} "
            f"| {pct(r.acc_majority)} [{pct(r.ci_maj_lo)}, {pct(r.ci_maj_hi)}] "
            f"| {pct(r.acc_minority)} [{pct(r.ci_min_lo)}, {pct(r.ci_min_hi)}] "
            f"| {pct(r.group_gap)} [{pct(r.ci_gap_lo)}, {pct(r.ci_gap_hi)}] | {pct(r.user_std)} | {r.gini:.3f} "
            f"| {pct(r.worst10)} | {r.support_spearman:+.3f} ± {sd.loc[name, 'support_spearman']:.3f} "
            f"| {r.train_seconds:.1f} |")
    return "\n".join(lines)


def delta_table(frame: pd.DataFrame) -> str:
    """Per-seed differences to the baseline, so seed-to-seed variation in the data cancels."""
    base = frame[frame.method == "baseline"].set_index("seed")
    lines = ["| method | Δ majority | Δ minority | Δ user std | Δ abs(ρ) | Pareto improvement (seeds) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, rows in frame[frame.method != "baseline"].groupby("method", sort=False):
        rows = rows.set_index("seed")
        d_maj = rows.acc_majority - base.acc_majority
        d_min = rows.acc_minority - base.acc_minority
        pareto = int(rows.pareto.sum())  # pafo.metrics.pareto_improvement, as the experiment reported it
        lines.append(f"| {name} | {100 * d_maj.mean():+.2f} ({', '.join(f'{100 * v:+.1f}' for v in d_maj)}) "
                     f"| {100 * d_min.mean():+.2f} ({', '.join(f'{100 * v:+.1f}' for v in d_min)}) "
                     f"| {100 * (rows.user_std - base.user_std).mean():+.2f} "
                     f"| {(rows.support_spearman.abs() - base.support_spearman.abs()).mean():+.3f} "
                     f"| {pareto}/{len(rows)} |")
    return "\n".join(lines)


def teacher_table(results: list[dict]) -> str:
    lines = ["| seed | group | teacher acc. | baseline acc. | advantage | PAFO student acc. | Pareto-selected |",
             "|---|---|---:|---:|---:|---:|---|"]
    for seed, result in enumerate(results):
        pafo = result["methods"]["pafo"]
        for group, t in pafo["teachers"].items():
            lines.append(f"| {seed} | {group} | {pct(t['teacher_accuracy'])} | {pct(t['baseline_accuracy'])} "
                         f"| {100 * t['advantage']:+.1f} | {pct(pafo['accuracy'][group])} "
                         f"| {pafo['pareto_selected']} |")
    return "\n".join(lines)


def bias_lines(results: list[dict]) -> list[str]:
    lines = []
    for seed, result in enumerate(results):
        base = result["methods"]["baseline"]
        lo, hi = spearman_ci(result["per_user"], "baseline", seed)
        rho = base["unfairness"]["support_spearman"]
        lines.append(f"- seed {seed}: baseline Spearman(support, accuracy) = {rho:+.3f} "
                     f"(95% bootstrap CI [{lo:+.3f}, {hi:+.3f}]); minority {pct(base['accuracy']['minority'])} vs "
                     f"majority {pct(base['accuracy']['majority'])} "
                     f"({100 * base['unfairness']['group_gap']:.1f} points below)")
    return lines


def ablation_table(dataset: str, seeds: list[int], encoder: str, only: list[str] | None = None) -> str:
    lines = ["| PAFO variant | majority | minority | Δ minority vs baseline | user std | Spearman ρ | Pareto "
             "(seeds) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, options in ABLATIONS.items():
        if only and not any(label.startswith(prefix) for prefix in only):
            continue
        rows = []
        for seed in seeds:
            result = run_experiment(experiment_config(dataset, seed, encoder, "baseline,pafo", **options).validate())
            p, b = result["methods"]["pafo"], result["methods"]["baseline"]
            rows.append((p["accuracy"]["majority"], p["accuracy"]["minority"],
                         p["accuracy"]["minority"] - b["accuracy"]["minority"], p["unfairness"]["user_std"],
                         p["unfairness"]["support_spearman"], p["pareto_improvement"]))
            print(f"  ablation {dataset} {label} seed {seed}: {rows[-1]}", flush=True)
        r = np.array(rows, dtype=float)
        lines.append(f"| {label} | {pct(r[:, 0].mean())} | {pct(r[:, 1].mean())} | {100 * r[:, 2].mean():+.2f} "
                     f"| {pct(r[:, 3].mean())} | {r[:, 4].mean():+.3f} | {int(r[:, 5].sum())}/{len(rows)} |")
    return "\n".join(lines)


BASELINE_GRID = {
    "user_lr_scale=1": {"user_lr_scale": 1.0},
    "user_lr_scale=3": {"user_lr_scale": 3.0},
    "user_lr_scale=10 (default)": {"user_lr_scale": 10.0},
    "user_lr_scale=10, user_l2=0.1": {"user_lr_scale": 10.0, "user_l2": 0.1},
    "user_lr_scale=10, user_l2=1": {"user_lr_scale": 10.0, "user_l2": 1.0},
    "user_lr_scale=10, hidden=256": {"user_lr_scale": 10.0, "hidden": 256},
}


def baseline_tuning_table(dataset: str, seeds: list[int], encoder: str) -> str:
    """The baseline alone over a small grid of its settings: is the default a fair, tuned baseline?"""
    lines = ["| baseline setting | validation overall | held-out overall | majority | minority | gap |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, train in BASELINE_GRID.items():
        rows = []
        for seed in seeds:
            m = run_experiment(experiment_config(dataset, seed, encoder, "baseline", train=train).validate())
            m = m["methods"]["baseline"]
            rows.append((m["history"][m["best_epoch"] - 1]["val"]["overall"], m["accuracy"]["overall"],
                         m["accuracy"]["majority"], m["accuracy"]["minority"], m["unfairness"]["group_gap"]))
        r = np.array(rows).mean(axis=0)
        lines.append(f"| {label} | {pct(r[0])} | {pct(r[1])} | {pct(r[2])} | {pct(r[3])} | {pct(r[4])} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def timed_cli(home: str, encoder: str) -> float:
    start = time.perf_counter()
    env = {**os.environ, "PAFO_HOME": home}
    subprocess.run([sys.executable, "-m", "pafo.cli", "experiment", "--encoder", encoder,
                    "--json", os.path.join(home, "out.json")], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def speed_lines(results: dict[str, list[dict]], encoder: str) -> list[str]:
    lines = []
    for dataset, runs in results.items():
        ratios = [r["methods"]["pafo"]["train_seconds"] / r["methods"]["baseline"]["train_seconds"] for r in runs]
        lines.append(f"- {dataset}: PAFO wall time / baseline wall time = {np.mean(ratios):.2f}× "
                     f"(per seed: {', '.join(f'{x:.2f}' for x in ratios)}; PAFO's includes its baseline and teachers)")
    with tempfile.TemporaryDirectory() as home:
        cold = timed_cli(home, encoder)
        warm = [timed_cli(home, encoder) for _ in range(3)]
    lines.append(f"- default synthetic `pafo experiment --encoder {encoder}` (baseline,pafo, default options, whole "
                 f"CLI process): cold embeddings cache {cold:.1f} s, warm {np.median(warm):.1f} s median of "
                 f"{', '.join(f'{w:.1f}' for w in warm)} s")
    return lines


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--datasets", default="synthetic,dsp")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--ablation-seeds", default=None, help="seeds of the ablation (default: --seeds)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--ablation-only", default=None,
                        help="comma-separated prefixes of ablation rows: run only those rows (no main table)")
    parser.add_argument("--baseline-tuning", action="store_true",
                        help="only the baseline over BASELINE_GRID on --ablation-seeds (development seeds)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_quality.md"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_seeds = [int(s) for s in (args.ablation_seeds or args.seeds).split(",")]
    started, sections, results = time.perf_counter(), [], {}
    only = args.ablation_only.split(",") if args.ablation_only else None
    for dataset in args.datasets.split(","):
        if args.baseline_tuning:
            sections += [f"Baseline settings on {dataset}, development seeds {ablation_seeds} (not the reported "
                         "seeds):", "", baseline_tuning_table(dataset, ablation_seeds, args.encoder), ""]
            continue
        if only:
            sections += [f"PAFO ablation rows on {dataset}, seeds {ablation_seeds}:", "",
                         ablation_table(dataset, ablation_seeds, args.encoder, only), ""]
            continue
        runs = []
        for seed in seeds:
            runs.append(run_experiment(experiment_config(dataset, seed, args.encoder, METHODS).validate()))
            print(f"{dataset} seed {seed}: " + json.dumps({k: v["accuracy"] for k, v in runs[-1]["methods"].items()}),
                  flush=True)
        results[dataset] = runs
        frame = method_rows(runs)
        sections += [f"### {dataset} ({runs[0]['dataset']['n_users']} users, {args.encoder}, seeds {args.seeds})",
                     "", "Bias of the baseline (must hold before PAFO means anything):", "", *bias_lines(runs), "",
                     summary_table(frame), "", "Differences to the baseline, per seed:", "", delta_table(frame), "",
                     "Teachers on their own group (test pairs) — the advantage PAFO can transfer:", "",
                     teacher_table(runs), ""]
        if not args.skip_ablation:
            sections += [f"PAFO ablation on {dataset}, seeds {ablation_seeds} (one option changed from the defaults at "
                         "a time; Δ is against the baseline trained with the same settings):", "",
                         ablation_table(dataset, ablation_seeds, args.encoder), ""]
        print("\n".join(sections[-12:]), flush=True)
    if not args.skip_speed and not only and not args.baseline_tuning:
        sections += ["### Speed", "", *speed_lines(results, args.encoder), ""]
    title = (f"## Tuning on development seeds {args.ablation_seeds} ({args.datasets}; never the reported seeds)"
             if args.baseline_tuning or only else f"## Quality: methods compared per user group ({args.datasets})")
    header = [title, "",
              f"- command: `python -m bench.quality {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}",
              f"- wall time of this benchmark: {time.perf_counter() - started:.0f} s", ""]
    Path(args.out).write_text("\n".join(header + sections) + "\n")
    print("\n".join(header + sections))


if __name__ == "__main__":
    main()
