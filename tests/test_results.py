"""The typed results (pafo.results): one reading of the result JSON for every layer, one pooling of seeds."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pafo.compare import Comparison, paired_comparison
from pafo.errors import PafoInputError
from pafo.extras import Ceilings, ClusterReport, TeacherReport
from pafo.metrics import evaluate
from pafo.results import MethodResult, RunResult, SeedResult, SweepResult, pool

ROOT = Path(__file__).resolve().parent.parent
#: Keys of the result JSON that code outside pafo/results.py used to dig through by hand.
RESULT_KEYS = ("methods", "comparisons", "per_seed", "per_user", "unfairness", "accuracy", "accuracy_ci",
               "by_decile", "calibration", "diagnostics", "ceilings", "verdict", "teachers", "clusters")
DIGGING = re.compile(r"""\[["'](?:{keys})["']\]|\.get\(["'](?:{keys})["']""".format(keys="|".join(RESULT_KEYS)))
#: At most this many modules besides pafo/results.py may index results by those keys (issue 21).
MAX_DIGGING_MODULES = 2


def digging_modules() -> dict[str, int]:
    """Library, app and benchmark modules (pafo/results.py aside) with lines that index by a result key."""
    found = {}
    for path in sorted([*ROOT.glob("pafo/**/*.py"), *ROOT.glob("pages/*.py"), *ROOT.glob("bench/*.py"),
                        ROOT / "app.py"]):
        relative = path.relative_to(ROOT).as_posix()
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if DIGGING.search(line)]
        if relative != "pafo/results.py" and lines:
            found[relative] = len(lines)
    return found


def test_results_are_read_through_the_typed_objects():
    """Issue 21: the result was an untyped dict read through ~115 string-key lookups in 13 modules; every layer now
    reads :class:`pafo.results.RunResult`, so at most two modules besides pafo/results.py index by those keys."""
    found = digging_modules()
    assert len(found) <= MAX_DIGGING_MODULES, found


def _per_user(seed: int, users: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = np.where(np.arange(users) < users // 4, "minority", "majority")
    support = rng.uniform(0.2, 0.9, users)
    base = np.clip(0.5 + 0.4 * support + rng.normal(0, 0.05, users), 0, 1)
    return pd.DataFrame({"seed": seed, "user_id": [f"u{i}" for i in range(users)], "group": group,
                         "support_rate": support, "n_test": 10, "acc_baseline": base,
                         "acc_pafo": np.clip(base + 0.05 * (group == "minority"), 0, 1)})


def _seed(seed: int) -> SeedResult:
    frame = _per_user(seed)
    methods = {}
    for name in ("baseline", "pafo"):
        table = frame.rename(columns={f"acc_{name}": "accuracy", "n_test": "n_pairs", "user_id": "user"})
        methods[name] = MethodResult(**evaluate(table, n_resamples=50, seed=seed), train_seconds=1.0)
    return SeedResult(seed, {"name": "constructed"}, {}, {"threshold": 0.4}, methods, per_user=frame)


def test_pool_is_the_mean_over_seeds_with_paired_comparisons():
    """The one pooling: per method the means over seeds and CIs pooled across seeds, per compared method its
    paired comparison on the same users; the same seeds give the same figures wherever they are pooled."""
    seeds = [_seed(0), _seed(1)]
    pooled = pool(seeds, ["baseline", "pafo"], n_resamples=100)
    for name in ("baseline", "pafo"):
        mean = np.mean([s.methods[name].accuracy["minority"] for s in seeds])
        assert pooled.methods[name].accuracy["minority"] == pytest.approx(mean)
        low, high = pooled.methods[name].accuracy_ci["minority"]
        assert low <= pooled.methods[name].accuracy["minority"] <= high
        assert pooled.methods[name].n_seeds == 2 and pooled.methods[name].train_seconds == 2.0
    comparison = pooled.comparisons["pafo"]
    direct = paired_comparison([s.per_user for s in seeds], "pafo", n_resamples=100, seed=0)
    assert comparison == direct and set(pooled.comparisons) == {"pafo"}
    assert comparison.delta("minority").delta == pytest.approx(0.05, abs=0.01)
    assert pool(seeds, ["baseline", "pafo"], n_resamples=100) == pooled
    assert pool(seeds, ["pafo"], n_resamples=100).comparisons == {}  # no reference, nothing to compare with


def test_a_result_reads_back_as_it_was_written():
    """Round trip: a result's JSON read and written again is the same JSON, extras and slices included; a
    result without the blocks an older version did not write still reads."""
    seeds = [_seed(0), _seed(1)]
    pooled = pool(seeds, ["baseline", "pafo"], n_resamples=50)
    result = RunResult({"name": "constructed"}, {}, {"threshold": 0.4}, pooled.methods, {"run": {"epsilon": 0.01}},
                       fingerprint="f", seeds=[0, 1], comparisons=pooled.comparisons, per_seed=seeds,
                       per_user=pd.concat([s.per_user for s in seeds], ignore_index=True))
    text = json.dumps(result.to_json())
    again = RunResult.from_json(json.loads(text))
    assert json.dumps(again.to_json()) == text
    assert again.epsilon == 0.01 and isinstance(again.comparisons["pafo"], Comparison)
    assert [s.seed for s in again.seed_results()] == [0, 1]
    assert len(again.seed_results()[1].per_user) == 60
    old = RunResult.from_json({"methods": {"pafo": {"accuracy": {"minority": 0.5}}}, "config": {
        "pafo": {"epsilon": 0.02}}})
    assert old.epsilon == 0.02 and old.comparisons == {} and old.seed_list == [0]
    with pytest.raises(PafoInputError, match="no 'methods' dict"):
        RunResult.from_json({"seeds": [0]}, "result.json")


def test_method_extras_read_by_their_own_keys():
    """A method's typed extras (its ``MethodSpec.report`` hook) read back from their keys of its block; teachers
    pool as means, clusters stay per seed, ceilings pool as means."""
    block = {"accuracy": {}, "accuracy_ci": {}, "unfairness": {}, "pareto_selected": False, "teachers": {"minority": {
        "teacher_accuracy": 0.7, "baseline_accuracy": 0.6, "advantage": 0.1, "n_train_pairs": 90, "best_epoch": 2,
        "train_seconds": 0.5}}, "n_dense_pairs": 40, "clusters": {
        "em": "soft", "restarts": 4, "subspace_sizes": [16, 24], "runs": 8, "reported_restart": 1,
        "mean_em_rounds": 3.0, "clusters": []}}
    method = MethodResult.from_json(block)
    assert method.to_json() == block
    teachers = method.extra(TeacherReport)
    assert teachers.teachers["minority"].advantage == 0.1 and not teachers.pareto_selected
    assert method.extra(ClusterReport).restarts == 4 and ClusterReport.pool([method.extra(ClusterReport)]) is None
    other = dataclasses.replace(teachers, pareto_selected=True, n_dense_pairs=20)
    assert TeacherReport.pool([teachers, other]).n_dense_pairs == 30 and not TeacherReport.pool(
        [teachers, other]).pareto_selected
    ceilings = Ceilings.from_json({"ceilings": {"oracle": {"majority": 0.8, "minority": 0.6, "oracle": True}}})
    assert Ceilings.pool([ceilings, ceilings]) == ceilings


def test_a_sweep_reads_back_as_it_was_written():
    sweep = {"sweep_id": "sweep-1", "grid": {"pafo.beta": [1.0]}, "seeds": [0], "methods": ["pafo"],
             "pareto_method": "pafo", "cells": [{"params": {"pafo.beta": 1.0}, "seed": 0, "run_id": "r",
                                                 "status": "failed", "reused_from": None, "error": "x",
                                                 "methods": None}],
             "points": [{"index": 0, "params": {"pafo.beta": 1.0}, "n_seeds": 0, "methods": None,
                         "comparisons": None}], "pareto_front": []}
    assert SweepResult.from_json(sweep).to_json() == sweep
