"""Quality benchmark: every method per user group on the synthetic default and DSP part A, with paired CIs.

    python -m bench.quality [--datasets synthetic,dsp] [--encoder minilm] [--seeds 0-9]
    python -m bench.quality --tuning [--dev-seeds 100-104]     # options, on development seeds only
    python -m bench.quality --speed

Each writes its section of bench/RESULTS.md (``--section``), or a file of its own with ``--out FILE``.

Evidence protocol: options and defaults are chosen on development seeds (100–104, ``--tuning``), never on the
reported seeds (0–9). Every difference to the baseline is paired (same users, same test pairs) and pooled over
seeds with a bootstrap over users (``pafo.compare``); its verdict follows the rule in the README. Ceilings are
diagnostics that read test labels (and, on simulated data, the true personas); no method ever uses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import machine, publish
from pafo import diagnostics
from pafo.compare import Delta, paired_comparison
from pafo.experiment import (
    ExperimentConfig,
    _add_support,
    _load_inputs,
    _pair_set,
    build_context,
    run_experiment,
    wants_lexical_view,
)
from pafo.extras import ClusterReport
from pafo.method_configs import METHODS as METHOD_NAMES
from pafo.methods import baseline_output, fit_method
from pafo.metrics import MAJORITY, MINORITY, group_codes, group_labels, per_user_accuracy
from pafo.results import RunResult
from pafo.training import pair_margins, set_threads

ROOT = Path(__file__).resolve().parents[1]
DSP_PATH = ROOT.parent / "shared" / "data" / "dsp_test_part_a.json"
METHODS = ",".join(METHOD_NAMES)
REPORTED_SEEDS, DEV_SEEDS = "0-9", "100-104"
ABLATIONS = {
    "default (clusters, soft EM, wide student)": {},
    "cluster_em=hard, restarts=40, beta=1, colabel_weight=0, lexical_weight=0 (PAFO v2)": {
        "cluster_em": "hard", "restarts": 40, "beta": 1.0, "colabel_weight": 0.0, "lexical_weight": 0.0},
    "lexical_weight=0 (φ alone)": {"lexical_weight": 0.0},
    "lexical_weight=1": {"lexical_weight": 1.0},
    "teachers=groups (the paper's two support groups, distilled student)": {"teachers": "groups"},
    "student=distilled (baseline architecture, dense pairs, teacher-agreement selection)": {"student": "distilled"},
    "clusters=1 (one teacher for everybody)": {"clusters": 1},
    "clusters=4": {"clusters": 4},
    "clusters=12": {"clusters": 12},
    "beta=1": {"beta": 1.0},
    "beta=4": {"beta": 4.0},
    "subspaces=32": {"subspaces": "32"},
    "subspaces=16,24,32,48": {"subspaces": "16,24,32,48"},
    "restarts=16": {"restarts": 16},
    "colabel_weight=0 (no co-label view)": {"colabel_weight": 0.0},
    "colabel_weight=8": {"colabel_weight": 8.0},
    "cluster_ridge=0.3": {"cluster_ridge": 0.3},
    "cluster_ridge=3": {"cluster_ridge": 3.0},
    "em_rounds=5": {"em_rounds": 5},
    "calibrate=off (accuracy unchanged by design; see log-loss)": {"calibrate": False},
}


def parse_seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        low, high = (int(v) for v in text.split("-"))
        return list(range(low, high + 1))
    return [int(s) for s in text.split(",")]


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


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def signed(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:+.{digits}f}"


def ci_text(block: Delta) -> str:
    lo, hi = block.ci
    return f"{signed(block.delta, 2)} [{signed(lo)}, {signed(hi)}]"


# ------------------------------------------------------------------------------------------- reported seeds


def per_user_tables(results: list[RunResult]) -> list[pd.DataFrame]:
    return [r.per_user for r in results]


def method_table(results: list[RunResult]) -> str:
    """Pooled over seeds: group accuracies, unfairness and calibration of each method."""
    lines = ["| method | majority | minority | gap | user std | abs ρ | log-loss (minority) | ECE | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in results[0].methods:
        rows = [r.methods[name] for r in results]
        mean = {k: float(np.mean([m.accuracy[k] for m in rows])) for k in ("majority", "minority")}
        unfair = {k: float(np.mean([abs(m.unfairness[k]) if k == "support_spearman" else m.unfairness[k]
                                    for m in rows])) for k in ("group_gap", "user_std", "support_spearman")}
        loss = np.mean([m.calibration["overall"]["log_loss"] for m in rows])
        loss_min = np.mean([m.calibration[MINORITY]["log_loss"] for m in rows])
        ece = np.mean([m.calibration["overall"]["ece"] for m in rows])
        seconds = np.mean([m.train_seconds for m in rows])
        lines.append(f"| {name} | {pct(mean['majority'])} | {pct(mean['minority'])} | {pct(unfair['group_gap'])} "
                     f"| {pct(unfair['user_std'])} | {unfair['support_spearman']:.3f} | {loss:.3f} ({loss_min:.3f}) "
                     f"| {ece:.3f} | {seconds:.2f} |")
    return "\n".join(lines)


def comparison_table(results: list[RunResult]) -> tuple[str, dict]:
    """Paired differences to the baseline, users pooled over seeds, with the verdict of pafo.compare."""
    tables = per_user_tables(results)
    lines = ["| method − baseline | Δ majority [95% CI] | Δ minority [95% CI] | Δ user std | Δ abs ρ | verdict "
             "| minority Δ ≥ +3 on seeds |", "|---|---:|---:|---:|---:|---|---:|"]
    out = {}
    for name in results[0].methods:
        if name == "baseline":
            continue
        c = paired_comparison(tables, name, "baseline", seed=0)
        per_seed = [r.methods[name].accuracy[MINORITY] - r.methods["baseline"].accuracy[MINORITY] for r in results]
        out[name] = c
        rho = c.delta("support_spearman_abs")
        lines.append(f"| {name} | {ci_text(c.delta('majority'))} | {ci_text(c.delta('minority'))} "
                     f"| {ci_text(c.delta('user_std'))} | {rho.delta:+.3f} [{rho.ci[0]:+.3f}, {rho.ci[1]:+.3f}] "
                     f"| **{c.verdict}** | {sum(d >= 0.03 for d in per_seed)}/{len(per_seed)} |")
    return "\n".join(lines), out


def bias_line(results: list[RunResult]) -> str:
    rho = [r.methods["baseline"].unfairness["support_spearman"] for r in results]
    gap = [r.methods["baseline"].unfairness["group_gap"] for r in results]
    return (f"Bias of the baseline: Spearman(support, accuracy) {np.mean(rho):+.3f} (per seed {min(rho):+.3f} to "
            f"{max(rho):+.3f}); minority {100 * np.mean(gap):.1f} points below the majority "
            f"({100 * min(gap):.1f} to {100 * max(gap):.1f}).")


def cluster_lines(results: list[RunResult]) -> list[str]:
    """What EM found, pooled over seeds: clusters mapped to the minority and how their users fare."""
    reports = [r.methods["pafo"].extra(ClusterReport) for r in results]
    rows = [dataclasses.asdict(c) for report in reports if report for c in report.clusters]
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    lines = ["| clusters mapped to | clusters per seed | users per cluster | mean support | minority share "
             "| teacher − baseline | PAFO − baseline |", "|---|---:|---:|---:|---:|---:|---:|"]
    for group, part in frame.groupby("group"):
        weight = part["n_users"]

        def wmean(column, part=part, weight=weight):
            return float(np.average(part[column], weights=weight))

        teacher = wmean("teacher_accuracy") - wmean("baseline_accuracy")
        method = wmean("method_accuracy") - wmean("baseline_accuracy")
        lines.append(f"| {group} | {len(part) / len(results):.1f} | {weight.mean():.0f} "
                     f"| {wmean('mean_support'):.3f} | {wmean('minority_share'):.2f} | {signed(teacher)} "
                     f"| {signed(method)} |")
    return ["Preference clusters (the lowest-objective EM run of each seed, each user in its most probable cluster "
            "there; the student averages every run's posterior-mean direction). Teacher: the cluster's own linear "
            "BT teacher alone on its users' test pairs (user-weighted):", "",
            *lines, ""]


# ------------------------------------------------------------------------------------------- ceilings


def seed_context(config: ExperimentConfig):
    """One seed's data, support rates, user groups (0/1), method context and test pairs, as an experiment has."""
    (inputs,), *_ = _load_inputs(config, lambda *a: None)
    _add_support(inputs, config)
    set_threads()
    data, support = inputs.dataset, inputs.support
    user_group = group_codes(inputs.groups.groups.to_numpy())
    ctx = build_context(data, inputs.features.features, user_group, config.train, seed=config.data.seed,
                        lexical_view=wants_lexical_view(config))
    return data, support, user_group, ctx, _pair_set(data.split("test"), user_group)


#: PAFO v2, the cluster step before issue 20 (hard EM on the classification likelihood, 40 restarts, β = 1): the
#: comparison that shows what the soft step (the default since) changed.
PAFO_V2 = {"cluster_em": "hard", "restarts": 40, "subspace": 32, "beta": 1.0, "colabel_weight": 0.0,
           "cluster_val": False, "lexical_weight": 0.0}
V2_NAME = "PAFO v2 (hard EM, β 1)"
#: PAFO's default before its lexical view (issue 20's fourth pass): the cluster step on φ alone, 16 restarts per size.
PAFO_PHI = {"lexical_weight": 0.0, "restarts": 16}
PHI_NAME = "PAFO on φ alone (lexical weight 0, 16 restarts per size)"
CEILING_NAME = "oracle: PAFO with the true preference clusters"


@dataclasses.dataclass
class SeedCeilings:
    """One seed's per-user test accuracy (user-indexed) of the baseline, PAFO, PAFO v2 and the diagnostics, the
    users' groups, and PAFO v2's time over the baseline's (measured in this process)."""

    accuracy: dict[str, pd.Series]
    group: pd.Series
    v2_time_ratio: float


def ceilings(dataset: str, seed: int, encoder: str) -> SeedCeilings:
    """Per-user test accuracy of the baseline, PAFO, PAFO v2 and the diagnostic ceilings (never used by any
    method)."""
    config = experiment_config(dataset, seed, encoder, "baseline,pafo")
    data, _support, user_group, ctx, test = seed_context(config)
    pafo = fit_method("pafo", ctx, config.pafo, (0, 1)).model
    base = ctx.cache["baseline"]
    started = time.perf_counter()
    v2 = fit_method("pafo", ctx, dataclasses.replace(config.pafo, **PAFO_V2), (0, 1)).model
    v2_seconds = time.perf_counter() - started
    phi = fit_method("pafo", ctx, dataclasses.replace(config.pafo, **PAFO_PHI), (0, 1)).model
    accuracy = {"baseline": per_user_accuracy(pair_margins(base.model, ctx.features, test), test.users),
                "PAFO (default)": per_user_accuracy(pair_margins(pafo, ctx.features, test), test.users),
                PHI_NAME: per_user_accuracy(pair_margins(phi, ctx.features, test), test.users),
                V2_NAME: per_user_accuracy(pair_margins(v2, ctx.features, test), test.users),
                **diagnostics.ceilings(ctx, test, data, config.pafo)}
    return SeedCeilings(accuracy, pd.Series(group_labels(user_group)),
                        (base.result.seconds + v2_seconds) / base.result.seconds)


def group_mean(run: SeedCeilings, name: str, group: str) -> float:
    accuracy = run.accuracy[name]
    return float(accuracy[run.group[accuracy.index].to_numpy() == group].mean())


def ceiling_table(runs: list[SeedCeilings]) -> str:
    lines = ["| model (diagnostic rows read test labels or true personas) | majority | minority | Δ majority "
             "| Δ minority |", "|---|---:|---:|---:|---:|"]
    base = [np.mean([group_mean(r, "baseline", g) for r in runs]) for g in ("majority", "minority")]
    for name in runs[0].accuracy:
        acc = [np.mean([group_mean(r, name, g) for r in runs]) for g in ("majority", "minority")]
        lines.append(f"| {name} | {pct(acc[0])} | {pct(acc[1])} | {signed(acc[0] - base[0])} "
                     f"| {signed(acc[1] - base[1])} |")
    return "\n".join(lines)


def v3_table(results: list[RunResult], runs: list[SeedCeilings]) -> str:
    """PAFO (the soft step) against PAFO v2, the mixture and the true-cluster ceiling, paired on the same users."""
    tables = []
    for result, run in zip(results, runs, strict=True):
        table = result.per_user.copy()
        users = np.arange(len(table))  # the per-user rows are in user order
        table["acc_v2"] = run.accuracy[V2_NAME].reindex(users).to_numpy()
        table["acc_phi"] = run.accuracy[PHI_NAME].reindex(users).to_numpy()
        table["acc_ceiling"] = run.accuracy[CEILING_NAME].reindex(users).to_numpy() \
            if CEILING_NAME in run.accuracy else np.nan
        tables.append(table)
    rows = {name: paired_comparison(tables, column, reference, seed=0) for name, column, reference in (
        ("PAFO − baseline", "pafo", "baseline"), ("PAFO on φ alone − baseline", "phi", "baseline"),
        ("PAFO v2 − baseline", "v2", "baseline"), ("mixture − baseline", "mixture", "baseline"),
        ("PAFO − PAFO on φ alone", "pafo", "phi"), ("PAFO − PAFO v2", "pafo", "v2"),
        ("PAFO − mixture", "pafo", "mixture"))}
    lines = ["| paired difference | Δ majority [95% CI] | Δ minority [95% CI] | verdict |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {ci_text(c.delta(MAJORITY))} | {ci_text(c.delta(MINORITY))} | {c.verdict} |"
              for name, c in rows.items()]
    ratio = [r.methods["pafo"].train_seconds / r.methods["baseline"].train_seconds for r in results]
    v2_ratio = [run.v2_time_ratio for run in runs]
    lines += ["", f"- time (PAFO including its baseline / baseline, per seed, same process): PAFO "
                  f"{np.mean(ratio):.2f}× (per seed {min(ratio):.2f}–{max(ratio):.2f}); PAFO v2 "
                  f"{np.mean(v2_ratio):.2f}×"]
    if CEILING_NAME in runs[0].accuracy:
        ceiling = paired_comparison(tables, "ceiling", "baseline", seed=0).delta(MINORITY).delta
        reached = rows["PAFO − baseline"].delta(MINORITY).delta / ceiling
        lines.append(f"- true-cluster ceiling (oracle, same β): minority {signed(ceiling, 2)} points; PAFO reaches "
                     f"{100 * reached:.0f}% of it (PAFO v2: "
                     f"{100 * rows['PAFO v2 − baseline'].delta(MINORITY).delta / ceiling:.0f}%)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tuning


def tuning_table(dataset: str, seeds: list[int], encoder: str) -> str:
    """Each PAFO option against the default on development seeds: validation (what choices may use) and test."""
    tables = {label: {"val": [], "test": []} for label in ABLATIONS}
    seconds = {label: [] for label in ABLATIONS}
    log_loss = {label: [] for label in ABLATIONS}
    base_seconds = []
    for seed in seeds:
        config = experiment_config(dataset, seed, encoder, "baseline,pafo")  # PAFO's context: with its lexical view
        _data, support, user_group, ctx, test = seed_context(config)
        base = baseline_output(ctx, (0, 1))
        base_seconds.append(base.result.seconds)
        for label, options in ABLATIONS.items():
            started = time.perf_counter()
            ctx.cache = {"baseline": base}
            output = fit_method("pafo", ctx, dataclasses.replace(config.pafo, **options), (0, 1))
            seconds[label].append(time.perf_counter() - started + base.result.seconds)
            log_loss[label].append(np.mean(np.logaddexp(0, -pair_margins(output.model, ctx.features, test)))
                                   - np.mean(np.logaddexp(0, -pair_margins(base.model, ctx.features, test))))
            for split, pairs in (("val", ctx.val), ("test", test)):
                b = per_user_accuracy(pair_margins(base.model, ctx.features, pairs), pairs.users)
                m = per_user_accuracy(pair_margins(output.model, ctx.features, pairs), pairs.users)
                tables[label][split].append(pd.DataFrame({
                    "group": group_labels(user_group[b.index]),
                    "support_rate": support.user_support.to_numpy()[b.index], "acc_pafo": m.to_numpy(),
                    "acc_baseline": b.to_numpy(), "n_test": np.bincount(pairs.users)[b.index]}))
        print(f"  tuning {dataset} seed {seed} done", flush=True)
    lines = ["| PAFO variant | validation Δ maj / Δ min | test Δ majority [CI] | test Δ minority [CI] | verdict "
             "| test Δ log-loss | time / baseline |", "|---|---:|---:|---:|---|---:|---:|"]
    for label in ABLATIONS:
        val = paired_comparison(tables[label]["val"], "pafo", n_resamples=400)
        test = paired_comparison(tables[label]["test"], "pafo", n_resamples=400)
        lines.append(f"| {label} | {signed(val.delta('majority').delta)} / {signed(val.delta('minority').delta)} "
                     f"| {ci_text(test.delta('majority'))} | {ci_text(test.delta('minority'))} | {test.verdict} "
                     f"| {np.mean(log_loss[label]):+.3f} | {np.mean(seconds[label]) / np.mean(base_seconds):.2f}× |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- speed


def timed_cli(home: str, encoder: str) -> float:
    start = time.perf_counter()
    env = {**os.environ, "PAFO_HOME": home}
    subprocess.run([sys.executable, "-m", "pafo.cli", "experiment", "--encoder", encoder,
                    "--json", os.path.join(home, "out.json")], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def speed_lines(encoder: str, seeds: list[int]) -> list[str]:
    lines = []
    for dataset in ("synthetic", "dsp"):
        ratios, pafo_s, base_s = [], [], []
        for seed in seeds:
            r = run_experiment(experiment_config(dataset, seed, encoder, "baseline,pafo"))
            pafo_s.append(r.methods["pafo"].train_seconds)
            base_s.append(r.methods["baseline"].train_seconds)
            ratios.append(pafo_s[-1] / base_s[-1])
        lines.append(f"- {dataset}: PAFO wall time / baseline wall time = {np.mean(ratios):.2f}× (PAFO "
                     f"{np.mean(pafo_s):.2f} s including its baseline, baseline {np.mean(base_s):.2f} s; per seed "
                     f"{', '.join(f'{x:.2f}' for x in ratios)})")
    with tempfile.TemporaryDirectory() as home:
        cold = timed_cli(home, encoder)
        warm = [timed_cli(home, encoder) for _ in range(3)]
    lines.append(f"- default synthetic `pafo experiment` (baseline,pafo, {encoder}, whole CLI process): cold "
                 f"embeddings cache {cold:.1f} s, warm {np.median(warm):.1f} s median of "
                 f"{', '.join(f'{w:.1f}' for w in warm)} s")
    return lines


def quality_sections(dataset: str, seeds: list[int], encoder: str, seed_text: str) -> list[str]:
    results = []
    for seed in seeds:
        results.append(run_experiment(experiment_config(dataset, seed, encoder, METHODS)))
        print(f"  {dataset} {encoder} seed {seed} done", flush=True)
    table, _ = comparison_table(results)
    n_users = results[0].dataset["n_users"]
    runs = [ceilings(dataset, seed, encoder) for seed in seeds]
    return [f"### {dataset}, {encoder}, reported seeds {seed_text} ({n_users} users per seed)", "",
            bias_line(results), "", method_table(results), "",
            "Paired differences to the baseline (same users and test pairs; bootstrap over users, seeds pooled):", "",
            table, "", *cluster_lines(results),
            "PAFO (soft EM on the mixture likelihood over φ and the lexical view, the default) against the same "
            "step on φ alone (the default before the lexical view), PAFO v2 (hard EM, β 1, the step before issue "
            "20), the mixture and the true-cluster ceiling, paired over users, seeds pooled:", "",
            v3_table(results, runs), "",
            "Ceilings (diagnostics; mean over the same seeds):", "", ceiling_table(runs), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=REPORTED_SEEDS)
    parser.add_argument("--dev-seeds", default=DEV_SEEDS)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--datasets", default="synthetic,dsp")
    parser.add_argument("--tuning", action="store_true", help="PAFO options on the development seeds only")
    parser.add_argument("--speed", action="store_true", help="PAFO/baseline time and the CLI's cold/warm time")
    parser.add_argument("--section", help="section of bench/RESULTS.md to rewrite (default: quality, "
                        "quality_<encoder>, quality_speed or tuning, by mode)")
    parser.add_argument("--out", help="write a file of its own instead of a section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    started, sections = time.perf_counter(), []
    if args.speed:
        title = "## Speed: PAFO against the baseline, and the default experiment"
        sections += [*speed_lines(args.encoder, parse_seeds(args.dev_seeds)), ""]
    elif args.tuning:
        title = f"## PAFO options on development seeds {args.dev_seeds} ({args.encoder}; never the reported seeds)"
        for dataset in args.datasets.split(","):
            sections += [f"### {dataset}", "", tuning_table(dataset, parse_seeds(args.dev_seeds), args.encoder), ""]
    else:
        title = f"## Quality: methods per user group ({args.encoder})"
        for dataset in args.datasets.split(","):
            sections += quality_sections(dataset, parse_seeds(args.seeds), args.encoder, args.seeds)
    header = [title, "", f"- command: `python -m bench.quality {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}",
              f"- wall time of this benchmark: {time.perf_counter() - started:.0f} s", ""]
    default = "quality_speed" if args.speed else "tuning" if args.tuning else \
        "quality" if args.encoder == "minilm" else f"quality_{args.encoder}"
    publish(args.section or default, "\n".join(header + sections), args.out)
    print("\n".join(header + sections))


if __name__ == "__main__":
    main()
