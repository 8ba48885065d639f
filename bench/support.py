"""Support-rate benchmark: the exact estimator's time and memory at scale, and whether text features carry the styles.

Run from the repository root::

    .venv/bin/python -m bench.support [--quick] [--out FILE]

Three parts, printed as tables and written, with the machine, date, load and command, to its section of
``bench/RESULTS.md``:

1. **Exact support at scale.** :func:`pafo.support.exact_support` on a real :class:`~pafo.dataset.PreferenceDataset`
   with 10^5 / 10^6 training pairs and 10^3 / 10^4 users (K = 4 judges, Dirichlet persona weights with the DSP
   shares). Base scores are continuous random numbers, so every pair has its own score difference and the
   dedupe of directions saves nothing; the DSP-style case (one-hot scores, 12 distinct directions) shows what the
   dedupe buys. Every case runs in a fresh subprocess: wall and CPU seconds of the one call, and its peak memory
   as ``ru_maxrss`` of that process minus its resident size just before the call (the peak is reset to the current
   size first through ``/proc/self/clear_refs``, so building the input does not count). The obvious alternatives
   run on the same inputs: plain numpy (the full pairs × users matrix when it fits in 400 MB, else per-chunk
   matmul + compare) and the per-chunk torch compare that ``exact_support`` used before (two comparisons and two
   boolean reductions per chunk, ``np.unique(axis=0)``); their user rates are checked against pafo's.
2. **Linear probe.** Are the six style attributes of the synthetic responses recoverable from the text features?
   5-fold stratified cross-validated logistic regression (standardised features) per attribute on the response
   embeddings of the default synthetic dataset, MiniLM and TF-IDF, beside the majority-class baseline on the same folds.
3. **Model vs exact.** Spearman correlation between the ``model`` estimator's user support rates (features from
   :func:`pafo.features.response_features`) and the ``exact`` ones on the default synthetic dataset.

The machine is shared with other jobs: the load average is recorded at the start of every case, and CPU seconds
(all threads of the process) are reported beside wall seconds because they depend much less on that load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import machine, publish

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 30.0
GOAL_MIB = 4096.0
FULL_MATRIX_LIMIT = 10**8  # numpy builds the whole pairs × users float32 matrix up to this size (400 MB)
NUMPY_CHUNK_ELEMENTS = 4_000_000  # per-chunk numpy / previous torch block size, as exact_support used before
DSP_SHARES = (0.55, 0.25, 0.12, 0.08)
K = 4

__all__ = ["Case", "build_dataset", "main", "numpy_support", "previous_exact_support", "run_case"]


# ----------------------------------------------------------------------------------------------------------------------
# Inputs and the alternatives (run inside the child process)
# ----------------------------------------------------------------------------------------------------------------------


def build_dataset(n_pairs: int, n_users: int, scores: str, seed: int = 0):
    """A training-only PreferenceDataset with ``n_pairs`` pairs spread evenly over ``n_users`` users.

    ``scores='continuous'``: two responses per prompt with standard-normal base scores, so all score differences
    are distinct. ``scores='onehot'``: DSP-style, four responses per prompt, one per judge, each scoring 1 for its
    own judge and 0 for the others; a pair is two different judges' responses, so there are 12 directions.
    Chosen / rejected follow the user's own persona score, as the simulators do.
    """
    import numpy as np
    import pandas as pd

    from pafo.dataset import PreferenceDataset
    from pafo.simulate import sample_personas

    rng = np.random.default_rng(seed)
    weights = sample_personas(n_users, np.asarray(DSP_SHARES), 0.1, rng)
    user = rng.permutation(np.arange(n_pairs) % n_users)
    if scores == "continuous":
        per_prompt, n_prompts = 2, n_pairs
        base = rng.standard_normal((2 * n_pairs, K))
        a, b = np.arange(0, 2 * n_pairs, 2), np.arange(1, 2 * n_pairs, 2)
        prompt = np.arange(n_pairs)
    elif scores == "onehot":
        per_prompt, n_prompts = K, max(1, n_pairs // 6)
        base = np.tile(np.eye(K), (n_prompts, 1))
        prompt = rng.integers(0, n_prompts, n_pairs)
        first = rng.integers(0, K, n_pairs)
        second = (first + rng.integers(1, K, n_pairs)) % K
        a, b = prompt * K + first, prompt * K + second
    else:
        raise ValueError(f"scores: {scores!r}")
    prefer_a = np.einsum("pk,pk->p", base[a] - base[b], weights[user]) >= 0
    pairs = pd.DataFrame({"user": user, "prompt_id": prompt, "chosen": np.where(prefer_a, a, b),
                          "rejected": np.where(prefer_a, b, a), "split": "train"})
    responses = pd.DataFrame({"prompt_id": np.repeat(np.arange(n_prompts), per_prompt), "prompt": "q", "text": "r"})
    users = pd.DataFrame({"user_id": [f"u{i:05d}" for i in range(n_users)], "dominant": None})
    return PreferenceDataset(name=f"bench-{scores}", responses=responses, pairs=pairs, users=users,
                             base_scores=base, persona_weights=weights, judges=[f"j{k}" for k in range(K)])


def _user_rates(pair_support, users, n_users: int):
    import pandas as pd

    return pd.Series(pair_support, index=users).groupby(level=0).mean().reindex(range(n_users)).to_numpy()


def _own_agreement(diff, own_weights):
    import numpy as np

    own = np.einsum("pk,pk->p", diff, own_weights)
    return np.where(own > 0, 1.0, np.where(own == 0, 0.5, 0.0))


def numpy_support(dataset, chunk_elements: int = NUMPY_CHUNK_ELEMENTS):
    """The obvious numpy version: pairs × users float32 margins (whole, or per chunk), two comparisons, row sums.

    No dedupe of directions. Same tie rule and float32 margins as :func:`pafo.support.exact_support`; returns the
    user support rates and how the matrix was built."""
    import numpy as np

    from pafo.metrics import pair_correct

    train = dataset.split("train")
    users = train["user"].to_numpy()
    diff = dataset.base_scores[train["chosen"].to_numpy()] - dataset.base_scores[train["rejected"].to_numpy()]
    d32, w32 = diff.astype(np.float32), dataset.persona_weights.astype(np.float32)
    n_users = len(w32)
    if len(d32) * n_users <= FULL_MATRIX_LIMIT:
        margins = d32 @ w32.T
        counts = pair_correct(margins).sum(1)
        how = "full matrix"
    else:
        chunk = max(1, chunk_elements // n_users)
        counts = np.empty(len(d32))
        for start in range(0, len(d32), chunk):
            margins = d32[start : start + chunk] @ w32.T
            counts[start : start + chunk] = pair_correct(margins).sum(1)
        how = f"chunks of {chunk} pairs"
    agree = counts - _own_agreement(diff, dataset.persona_weights[users])
    return _user_rates(agree / (n_users - 1), users, n_users), how


def previous_exact_support(dataset, chunk_elements: int = NUMPY_CHUNK_ELEMENTS):
    """``exact_support`` as it was before this benchmark (all users, no sampling): ``np.unique(axis=0)`` over the
    score differences, then per chunk of directions one torch matmul, ``(m > 0).sum(1) + 0.5 * (m == 0).sum(1)``."""
    import numpy as np
    import torch

    train = dataset.split("train")
    users = train["user"].to_numpy()
    diff = dataset.base_scores[train["chosen"].to_numpy()] - dataset.base_scores[train["rejected"].to_numpy()]
    directions, inverse = np.unique(diff.astype(np.float32), axis=0, return_inverse=True)
    weights = torch.from_numpy(dataset.persona_weights.astype(np.float32))
    n_users = len(weights)
    chunk = max(1, chunk_elements // n_users)
    counts = torch.empty(len(directions), dtype=torch.float64)
    with torch.inference_mode():
        dirs = torch.from_numpy(directions)
        for start in range(0, len(dirs), chunk):
            margins = dirs[start : start + chunk] @ weights.T
            counts[start : start + chunk] = (margins > 0).sum(1) + 0.5 * (margins == 0).sum(1)
    agree = counts.numpy()[inverse.ravel()] - _own_agreement(diff, dataset.persona_weights[users])
    return _user_rates(agree / (n_users - 1), users, n_users), f"{len(directions)} directions, chunks of {chunk}"


def _pafo_support(dataset):
    import torch

    from pafo.support import exact_support

    result = exact_support(dataset)
    sampled = f", sampled {result.sampled_users} users" if result.sampled_users else ""
    return result.user_support.to_numpy(), f"torch threads {torch.get_num_threads()}{sampled}"


IMPLEMENTATIONS = {
    "pafo": _pafo_support,
    "numpy": numpy_support,
    "previous": previous_exact_support,
}


# ----------------------------------------------------------------------------------------------------------------------
# One case in a fresh process
# ----------------------------------------------------------------------------------------------------------------------


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``ru_maxrss`` / VmHWM) to its current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(spec: dict) -> dict:
    """Build the input, warm the implementation up on a tiny input, then time and measure one call."""
    import numpy as np

    implementation = IMPLEMENTATIONS[spec["impl"]]
    implementation(build_dataset(200, 20, spec["scores"], seed=1))  # imports, thread pools, BLAS initialisation
    dataset = build_dataset(spec["pairs"], spec["users"], spec["scores"], seed=spec["seed"])
    train = dataset.split("train")
    diff = dataset.base_scores[train["chosen"].to_numpy()] - dataset.base_scores[train["rejected"].to_numpy()]
    n_directions = len(np.unique(diff.astype(np.float32).view(np.dtype((np.void, 4 * K))).ravel()))
    del train, diff
    gc.collect()
    baseline = _status_mib("VmRSS")
    reset = _reset_peak()
    floor = _maxrss_mib()
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    rates, how = implementation(dataset)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _maxrss_mib()
    np.save(spec["out"], rates)
    return {"wall": wall, "cpu": cpu, "peak_mib": peak, "baseline_mib": baseline, "hwm_reset": reset,
            "inherited_floor": peak <= floor and floor > baseline + 50, "vm_hwm_mib": _status_mib("VmHWM"),
            "load": load, "how": how, "directions": n_directions}


@dataclass
class Case:
    """One timed call: which implementation, on which input, and what it measured."""

    impl: str
    pairs: int
    users: int
    scores: str = "continuous"
    seed: int = 0
    repeats: int = 1
    result: dict | None = None  # the run with the median wall time
    runs: list[dict] | None = None
    rates_path: str | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        return self.pairs, self.users, self.scores


def run_case(case: Case, workdir: Path, timeout: float = 900.0) -> Case:
    """Run ``case`` ``case.repeats`` times, each in a fresh ``python -m bench.support --child`` process; keep every
    run's measurements and, as ``case.result``, the run with the median wall time."""
    case.rates_path = str(workdir / f"{case.impl}-{case.pairs}-{case.users}-{case.scores}.npy")
    spec = {"impl": case.impl, "pairs": case.pairs, "users": case.users, "scores": case.scores, "seed": case.seed,
            "out": case.rates_path}
    case.runs = []
    for _ in range(case.repeats):
        proc = subprocess.run([sys.executable, "-m", "bench.support", "--child", json.dumps(spec)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-3000:]}")
        case.runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    case.result = sorted(case.runs, key=lambda r: r["wall"])[(len(case.runs) - 1) // 2]
    return case


def _cases(quick: bool) -> list[Case]:
    """pafo on every size, then the alternatives where they finish in reasonable time."""
    scale = 100 if quick else 1
    small, large = 10**5 // scale, 10**6 // scale
    few, many = 10**3 // (10 if quick else 1), 10**4 // (10 if quick else 1)
    cases = [Case("pafo", p, u, repeats=3 if (p, u) == (large, many) else 1) for p in (small, large)
             for u in (few, many)]
    cases += [Case("pafo", small, few, "onehot"), Case("pafo", large, many, "onehot")]
    cases += [Case("numpy", small, few), Case("numpy", small, many), Case("numpy", large, few)]
    cases += [Case("previous", small, few), Case("previous", small, many), Case("previous", large, many, "onehot")]
    return cases


# ----------------------------------------------------------------------------------------------------------------------
# Parts 2 and 3 (in this process, after the subprocess cases)
# ----------------------------------------------------------------------------------------------------------------------


def probe_attributes(dataset, encoder: str, folds: int = 5, seed: int = 0) -> tuple[list[dict], dict]:
    """Cross-validated linear-probe accuracy per style attribute on the response embeddings of ``encoder``."""
    import numpy as np
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pafo.features import response_features
    from pafo.sources.synthetic import ATTRIBUTES

    features = response_features(dataset, encoder, layout="response", cache=True)
    x = features.features
    rows = []
    for attribute in ATTRIBUTES:
        y = dataset.responses[attribute].to_numpy().astype(int)
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = cross_val_score(probe, x, y, cv=cv, scoring="accuracy")
        majority = cross_val_score(DummyClassifier(strategy="most_frequent"), x, y, cv=cv, scoring="accuracy")
        rows.append({"attribute": attribute, "mean": float(accuracy.mean()), "std": float(accuracy.std()),
                     "min": float(accuracy.min()), "majority": float(majority.mean()), "positive": float(y.mean())})
    embedding = features.embedding
    info = {"encoder": getattr(embedding, "encoder", encoder), "dim": int(x.shape[1]), "n": int(x.shape[0]),
            "seconds": float(getattr(embedding, "seconds", np.nan)),
            "cache_hits": getattr(embedding, "cache_hits", None), "n_texts": getattr(embedding, "n_texts", None)}
    return rows, info


def model_vs_exact(dataset, encoder: str, quantile: float = 0.2) -> dict:
    """Spearman between the model estimator's user support rates and the exact ones, and the minority overlap."""
    import numpy as np
    from scipy.stats import spearmanr

    from pafo.features import response_features
    from pafo.support import exact_support, model_support

    exact = exact_support(dataset)
    features = response_features(dataset, encoder, cache=True)
    started = time.perf_counter()
    model = model_support(dataset, features.features)
    seconds = time.perf_counter() - started
    users = spearmanr(exact.user_support, model.user_support)
    pairs = spearmanr(exact.pair_support, model.pair_support)
    cut_exact = exact.user_support <= np.quantile(exact.user_support, quantile)
    cut_model = model.user_support <= np.quantile(model.user_support, quantile)
    overlap = float((cut_exact & cut_model).sum() / cut_exact.sum())
    return {"encoder": encoder, "dim": features.dim, "spearman_users": float(users.statistic),
            "p_users": float(users.pvalue), "spearman_pairs": float(pairs.statistic), "overlap": overlap,
            "seconds": seconds, "n_users": int(dataset.n_users), "n_pairs": len(exact.pair_support)}


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _software() -> str:
    import numpy
    import sklearn
    import torch

    return (f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {numpy.__version__}, "
            f"scikit-learn {sklearn.__version__}")


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _size(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n == 10**exponent else f"{n:,}"


def _exact_table(cases: list[Case]) -> str:
    import numpy as np

    reference = {c.key: c for c in cases if c.impl == "pafo"}
    lines = ["| pairs | users | scores | distinct directions | implementation | wall s | CPU s "
             "| ns / comparison (wall) | peak Δ MiB | process peak MiB | load (1 min) | × pafo wall | × pafo CPU "
             "| max abs Δ user rate vs pafo | how |",
             "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for case in cases:
        r, ref = case.result, reference.get(case.key)
        if ref is not None and ref is not case:
            ratio_wall, ratio_cpu = f"{r['wall'] / ref.result['wall']:.1f}×", f"{r['cpu'] / ref.result['cpu']:.1f}×"
            delta = np.nanmax(np.abs(np.load(case.rates_path) - np.load(ref.rates_path)))
            delta = f"{delta:.1e}"
        else:
            ratio_wall = ratio_cpu = delta = "—"
        peak_delta = max(0.0, r["peak_mib"] - r["baseline_mib"])
        flag = " (inherited floor: upper bound)" if r["inherited_floor"] else ""
        flag += "" if r["hwm_reset"] else " (peak not reset: includes building the input)"
        label = {"pafo": "pafo exact_support", "numpy": "naive numpy", "previous": "previous exact_support"}
        wall, cpu = f"{r['wall']:.2f}", f"{r['cpu']:.2f}"
        if len(case.runs) > 1:
            walls, cpus = [x["wall"] for x in case.runs], [x["cpu"] for x in case.runs]
            wall += f" (median of {len(walls)}; {min(walls):.2f}–{max(walls):.2f})"
            cpu += f" ({min(cpus):.2f}–{max(cpus):.2f})"
        lines.append(
            f"| {_size(case.pairs)} | {_size(case.users)} | {case.scores} | {r['directions']:,} | {label[case.impl]} "
            f"| {wall} | {cpu} | {r['wall'] / (case.pairs * case.users) * 1e9:.2f} "
            f"| {peak_delta:.0f}{flag} | {r['peak_mib']:.0f} | {r['load']:.2f} | {ratio_wall} | {ratio_cpu} | {delta} "
            f"| {r['how']} |")
    return "\n".join(lines)


def _goal_line(cases: list[Case]) -> str:
    target = [c for c in cases if c.impl == "pafo" and c.scores == "continuous"]
    big = max(target, key=lambda c: c.pairs * c.users)
    r = big.result
    slowest = max(big.runs, key=lambda x: x["wall"])
    peak = max(x["peak_mib"] for x in big.runs)
    peak_delta = max(x["peak_mib"] - x["baseline_mib"] for x in big.runs)
    ok_time, ok_mem = slowest["wall"] < GOAL_SECONDS, peak < GOAL_MIB
    runs = f"median of {len(big.runs)} runs" if len(big.runs) > 1 else "one run"
    return (f"goal for {_size(big.pairs)} pairs × {_size(big.users)} users (continuous): under {GOAL_SECONDS:.0f} s "
            f"and {GOAL_MIB / 1024:.0f} GiB — wall {r['wall']:.1f} s ({runs}; slowest {slowest['wall']:.1f} s at load "
            f"{slowest['load']:.2f}; CPU {r['cpu']:.1f} s): {'met' if ok_time else 'NOT met'}; peak {peak:.0f} MiB "
            f"for the whole process (interpreter, torch and the input included), at most {peak_delta:.0f} MiB above "
            f"its size before the call: {'met' if ok_mem else 'NOT met'}")


def _ratio_lines(cases: list[Case]) -> list[str]:
    reference = {c.key: c for c in cases if c.impl == "pafo"}
    lines = []
    for case in cases:
        ref = reference.get(case.key)
        if case.impl == "pafo" or ref is None:
            continue
        name = "naive numpy" if case.impl == "numpy" else "previous exact_support"
        lines.append(f"- {_size(case.pairs)} × {_size(case.users)} {case.scores}: {name} takes "
                     f"{case.result['wall'] / ref.result['wall']:.1f}× pafo's wall time "
                     f"({case.result['cpu'] / ref.result['cpu']:.1f}× its CPU time) and "
                     f"{max(0.0, case.result['peak_mib'] - case.result['baseline_mib']):.0f} MiB vs "
                     f"{max(0.0, ref.result['peak_mib'] - ref.result['baseline_mib']):.0f} MiB peak Δ")
    dsp = {c.scores: c for c in cases if c.impl == "pafo" and c.pairs * c.users == max(
        x.pairs * x.users for x in cases)}
    if {"continuous", "onehot"} <= dsp.keys():
        cont, onehot = dsp["continuous"].result, dsp["onehot"].result
        lines.append(f"- dedupe: at {_size(dsp['onehot'].pairs)} × {_size(dsp['onehot'].users)}, DSP-style one-hot "
                     f"scores ({onehot['directions']} distinct directions) take {onehot['wall']:.2f} s against "
                     f"{cont['wall']:.2f} s for continuous scores ({cont['directions']:,} directions): "
                     f"{cont['wall'] / onehot['wall']:.0f}× less")
    return lines


def _probe_table(probes: dict[str, tuple[list[dict], dict]]) -> str:
    encoders = list(probes)
    head = "| attribute | share positive | majority baseline | " + " | ".join(
        f"{e} accuracy (mean ± std) | {e} worst fold" for e in encoders) + " |"
    lines = [head, "|---|---:|---:|" + "---:|---:|" * len(encoders)]
    first = probes[encoders[0]][0]
    for i, row in enumerate(first):
        cells = []
        for e in encoders:
            r = probes[e][0][i]
            cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} | {r['min']:.3f}")
        lines.append(f"| {row['attribute']} | {row['positive']:.2f} | {row['majority']:.3f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def _model_table(rows: list[dict]) -> str:
    lines = ["| features | dim | Spearman, user rates | p-value | Spearman, pair support | bottom-20% overlap "
             "| model_support s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['dim']} | {r['spearman_users']:.3f} | {r['p_users']:.1e} "
                     f"| {r['spearman_pairs']:.3f} | {r['overlap']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def _report(notes: dict, exact: tuple[str, str, list[str]], probes: dict, model_rows: list[dict]) -> str:
    table, goal, ratio_lines = exact
    probe_info = "; ".join(
        f"{e}: {info['encoder']}, {info['dim']}-d, {info['n']} responses, embedding {info['seconds']:.1f} s "
        f"({info['cache_hits']} of {info['n_texts']} texts from the cache)" for e, (_, info) in probes.items())
    attributes_ok = all(r["mean"] >= 0.9 for rows, _ in probes.values() for r in rows)
    weakest = min(((e, r) for e, (rows, _) in probes.items() for r in rows), key=lambda t: t[1]["mean"])
    parts = [
        "## Support rates: exact estimator at scale, linear probe, model vs exact",
        "",
        f"- command (from the repository root): `{notes['command']}`",
        f"- date: {notes['date']}; whole benchmark {notes['seconds']:.0f} s",
        f"- machine: {notes['machine']}",
        f"- software: {notes['software']}",
        f"- load average (1/5/15 min) at start: {notes['load_start']}; after part 1: {notes['load_mid']}; "
        f"at end: {notes['load_end']} (other jobs shared the 2 cores, so wall times vary with the load; CPU "
        "seconds, all threads of the process, are the steadier measure)",
        "",
        "### 1. Exact support at scale",
        "",
        "K = 4 judges, Dirichlet(α = 0.1) persona weights with the DSP shares, training pairs spread evenly over the "
        "users. *continuous*: standard-normal base scores, every score difference distinct, so the dedupe of "
        "directions saves nothing; *onehot*: DSP-style, 12 directions. One call per case, each case in a fresh "
        "process after a warm-up call on a tiny input. *peak Δ*: `ru_maxrss` after the call minus the resident size "
        "just before it (the peak was reset to that size through `/proc/self/clear_refs` after the input was "
        "built); *process peak*: `ru_maxrss`, interpreter, torch and the input included. *naive numpy*: the "
        f"whole pairs × users float32 matrix when it has at most {FULL_MATRIX_LIMIT:.0e} cells, else chunks of "
        f"{NUMPY_CHUNK_ELEMENTS:,} cells, `(m > 0).sum(1) + 0.5 * (m == 0).sum(1)`, no dedupe. *previous "
        "exact_support*: the implementation before this change (np.unique(axis=0), per-chunk torch compare with "
        "two boolean reductions). The last columns check each alternative's user support rates against pafo's.",
        "",
        table,
        "",
        f"- {goal}",
        *ratio_lines,
        "- pafo's exact_support here: distinct score differences found by np.unique over each float32 row viewed as "
        "one byte string, "
        "then per block of 2^18 margins one float32 matmul, an in-place sign and a row sum "
        "(#(>0) + ½·#(=0) = (n + Σ sign) / 2), blocks shared out to torch.get_num_threads() threads that each run "
        "single-threaded torch; persona rows with a weight below 2^-90 are first scaled by a power of two, which "
        "changes no sign (with Dirichlet(α = 0.1) personas ~13% of users have such a weight and ~3% a float32 "
        "subnormal one, enough to slow the matmul 3.5×).",
        "",
        "### 2. Linear probe: are the style attributes in the text features?",
        "",
        "the default synthetic dataset's responses; per attribute, 5-fold stratified cross-validation "
        "(shuffled, seed 0) of StandardScaler + LogisticRegression(C = 1) on the response embedding alone "
        "(`response_features(..., layout='response')`); the majority baseline is a most-frequent-class classifier "
        f"on the same folds. {probe_info}.",
        "",
        _probe_table(probes),
        "",
        f"- every attribute ≥ 0.9 with every encoder: {'yes' if attributes_ok else 'NO'}; weakest: "
        f"{weakest[1]['attribute']} with {weakest[0]} ({weakest[1]['mean']:.3f} ± {weakest[1]['std']:.3f})",
        "",
        "### 3. Model estimator vs exact",
        "",
        "On the default synthetic dataset: `model_support` (Bradley–Terry logistic model cross-fitted over 5 user "
        "folds) on `response_features(...)` (prompt + response embedding, the layout the experiments use) against "
        "`exact_support`. *bottom-20% overlap*: share of the exact estimator's minority (support rate at or below "
        "its 0.2 quantile) that the model estimator also puts there.",
        "",
        _model_table(model_rows),
        "",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.support", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes ÷ 100 (pairs) and ÷ 10 (users): a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="a file of its own (default: the support section "
                        "of bench/RESULTS.md; --quick writes none unless given)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    started = time.perf_counter()
    command = " ".join(["python -m bench.support", *(sys.argv[1:] if argv is None else argv)])
    notes = {"command": command, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "load_start": _load(), "machine": machine()}
    # Part 1 first, while this process is small: a child's ru_maxrss starts at its parent's peak.
    cases = _cases(args.quick)
    with tempfile.TemporaryDirectory(prefix="pafo-bench-support-") as workdir:
        for case in cases:
            run_case(case, Path(workdir))
            for r in case.runs:
                print(f"[exact] {case.impl:8s} {_size(case.pairs):>6s} × {_size(case.users):>6s} {case.scores:10s} "
                      f"wall {r['wall']:7.2f} s  CPU {r['cpu']:7.2f} s  peak Δ "
                      f"{r['peak_mib'] - r['baseline_mib']:6.0f} MiB  load {r['load']:.2f}",
                      file=sys.stderr, flush=True)
        notes["load_mid"] = _load()
        exact = (_exact_table(cases), _goal_line(cases), _ratio_lines(cases))  # before the rate files go
    from pafo.sources import DataConfig, load_dataset

    dataset = load_dataset(DataConfig())
    probes = {}
    for encoder in ("minilm", "tfidf"):
        probes[encoder] = probe_attributes(dataset, encoder)
        print(f"[probe] {encoder} done", file=sys.stderr, flush=True)
    model_rows = [model_vs_exact(dataset, encoder) for encoder in ("minilm", "tfidf")]
    notes.update(software=_software(), load_end=_load(), seconds=time.perf_counter() - started)
    report = _report(notes, exact, probes, model_rows)
    print(report)
    if args.out or not args.quick:
        print(f"written to {publish('support', report, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
