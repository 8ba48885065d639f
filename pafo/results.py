"""The result of an experiment, an audit or a sweep as typed objects, and the one way seeds are pooled.

Every layer reads results through these types: the experiment and the audit build a :class:`RunResult`, the
worker and the CLI write its :meth:`RunResult.to_json`, and the app, the HTML report, sweeps, the run registry's
stored ``result.json`` and the benchmarks read it back with :meth:`RunResult.from_json`. The JSON is the one the
README documents (``methods.NAME``, ``comparisons.NAME``, ``per_seed``, ``per_user``, ...); a result written by
an earlier version reads too (keys it lacks take their empty value, and its config's ``pafo.epsilon`` is the
verdict's ε: :func:`verdict_epsilon`).

:func:`pool` is the one pooling of seeds, for the experiment's multi-seed figures, a sweep's grid points and the
benchmarks: per method the means over seeds and CIs from a bootstrap over users pooled across seeds
(:func:`pafo.compare.pooled_group_ci`), and per method but the reference the paired comparison
(:func:`pafo.compare.paired_comparison`). It takes plain values: seed results, method names, the reference, the
resamples and the verdict rule.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .compare import DEFAULT_EPSILON, Comparison, VerdictRule, paired_comparison, pooled_group_ci
from .config_edit import current_config
from .errors import PafoInputError
from .extras import DIAGNOSTIC_EXTRAS, METHOD_EXTRAS, mean_tree, read_extras
from .jsonio import from_fields
from .metrics import accuracy_by_decile, pareto_improvement
from .paths import atomic_write_text
from .slices import Slice

__all__ = [
    "MSG_NOT_A_RESULT",
    "REFERENCE",
    "Comparison",
    "MethodResult",
    "Pooled",
    "RunResult",
    "SeedResult",
    "ShotResult",
    "SweepCell",
    "SweepPoint",
    "SweepResult",
    "UnseenResult",
    "compare_seeds",
    "mark_pareto",
    "per_user_json",
    "pool",
    "pool_unseen",
    "verdict_epsilon",
    "write_result",
]

REFERENCE = "baseline"  # the method every other one is compared with, user by user
AUDIT = "audit"
MSG_NOT_A_RESULT = "{what} is not a PAFO result: {detail}"


def _emit(pairs) -> dict:
    """A JSON block of the (key, value) pairs whose value is set (``None`` leaves a key out)."""
    return {key: value for key, value in pairs if value is not None}


def _require(block: Any, key: str, kind: type, what: str) -> None:
    """A JSON object with ``key`` of type ``kind``, else :class:`PafoInputError` saying what is missing."""
    if not isinstance(block, dict):
        raise PafoInputError(MSG_NOT_A_RESULT.format(what=what, detail="not a JSON object"))
    if not isinstance(block.get(key), kind):
        raise PafoInputError(MSG_NOT_A_RESULT.format(what=what, detail=f"no {key!r} {kind.__name__}"))


def _each(read, block: dict | None) -> dict:
    """A JSON object of named blocks read one by one (``{name: read(block)}``)."""
    return {name: read(value) for name, value in (block or {}).items()}


def _methods(block: dict | None) -> dict[str, MethodResult]:
    return {name: MethodResult.from_json(value, f"method {name!r}") for name, value in (block or {}).items()}


def write_result(path: str | Path, result: RunResult) -> None:
    """A result's JSON file, written atomically, strict JSON (no NaN; numpy numbers as plain ones)."""
    atomic_write_text(path, json.dumps(result.to_json(), indent=2, allow_nan=False, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def per_user_json(frame: pd.DataFrame) -> dict:
    """A per-user table as the result JSON keeps it: one list per column, missing values as ``null``."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="list")


# ------------------------------------------------------------------------------------------- one method


@dataclass
class MethodResult:
    """One method's (or audited model's) figures: the blocks of :func:`pafo.metrics.evaluate` (keyed by the metric
    registry's keys), calibration, and what the run adds: training, its typed extras (:mod:`pafo.extras`) or, in
    an audit, log-loss, coverage and source. Unset fields (``None``) are not in the JSON."""

    accuracy: dict[str, float | None]
    accuracy_ci: dict[str, list]
    unfairness: dict[str, float | None]
    by_decile: list[dict] | None = None
    calibration: dict | None = None
    log_loss: dict | None = None  # audits: the BT log-loss overall and per group
    coverage: dict | None = None  # audits: evaluated pairs and users with a prediction
    source: dict | None = None  # audits: where the margins came from
    train_seconds: float | None = None
    best_epoch: int | None = None
    history: list[dict] | None = None
    n_seeds: int | None = None  # pooled over several seeds
    extras: list = field(default_factory=list)
    pareto_improvement: bool | None = None  # mean accuracies only; the comparison's verdict is the one to trust

    def extra(self, kind: type):
        """This method's extra of one kind (``ClusterReport``, ``TeacherReport``), or None."""
        return next((e for e in self.extras if isinstance(e, kind)), None)

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extras":
                for extra in self.extras:
                    out.update(extra.to_json())
            elif getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_json(cls, block: dict, what: str = "a method block") -> MethodResult:
        _require(block, "accuracy", dict, what)
        method = from_fields(cls, block, accuracy_ci=_or_empty, unfairness=_or_empty)
        method.extras = read_extras(block, METHOD_EXTRAS)
        return method


def mark_pareto(methods: dict[str, MethodResult], epsilon: float, reference: str = REFERENCE) -> None:
    """Each method's ``pareto_improvement`` over the reference's mean accuracies (when the reference was run).

    Kept for old readers: the paired comparison's verdict is the one to trust."""
    base = methods.get(reference)
    if base is None:
        return
    for name, method in methods.items():
        if name != reference:
            method.pareto_improvement = pareto_improvement(method.accuracy, base.accuracy, epsilon=epsilon)


# ------------------------------------------------------------------------------------------- one seed


@dataclass
class SeedResult:
    """One seed of a run: its data, groups, methods, diagnostics and comparisons; ``per_user`` is its per-user
    table (the rows of the run's table with this seed; not in the seed's own JSON block)."""

    seed: int
    dataset: dict
    support: dict
    groups: dict
    methods: dict[str, MethodResult]
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    diagnostics: list = field(default_factory=list)
    per_user: pd.DataFrame | None = field(default=None, repr=False)
    unseen: UnseenResult | None = None  # the seed's held-out users (``run.unseen_users`` > 0)

    def to_json(self) -> dict:
        out = {"seed": self.seed, "dataset": self.dataset, "support": self.support, "groups": self.groups,
               "methods": {name: m.to_json() for name, m in self.methods.items()}}
        if self.diagnostics:
            out["diagnostics"] = _extras_json(self.diagnostics)
        out["comparisons"] = {name: c.to_json() for name, c in self.comparisons.items()}
        if self.unseen is not None:
            out["unseen"] = self.unseen.to_json()
        return out

    @classmethod
    def from_json(cls, block: dict) -> SeedResult:
        _require(block, "methods", dict, "a seed block")
        return from_fields(cls, block, methods=_methods, comparisons=lambda c: _each(Comparison.from_json, c),
                           diagnostics=lambda d: read_extras(d or {}, DIAGNOSTIC_EXTRAS),
                           unseen=UnseenResult.from_json)


def _extras_json(extras: list) -> dict:
    out = {}
    for extra in extras:
        out.update(extra.to_json())
    return out


def _pool_extras(lists: list[list]) -> list:
    """Each kind of extra that every seed has, pooled (kinds that stay per seed drop out)."""
    kinds = [type(extra) for extra in lists[0]]
    pooled = []
    for kind in kinds:
        values = [next((e for e in extras if isinstance(e, kind)), None) for extras in lists]
        if all(v is not None for v in values) and (value := kind.pool(values)) is not None:
            pooled.append(value)
    return pooled


# ------------------------------------------------------------------------------------------- unseen users


@dataclass
class ShotResult:
    """One method on users it never trained on, each personalised from k of their own pairs: the mean test
    accuracy per group (each user weighing equally; over seeds, the mean of the seeds' means), the users behind it
    (summed over seeds) and each group's 95% CI (bootstrap over users pooled across seeds)."""

    majority: float | None
    minority: float | None
    n_users: dict[str, int] = field(default_factory=dict)
    ci: dict[str, list] | None = None

    def to_json(self) -> dict:
        out = {"majority": self.majority, "minority": self.minority, "n_users": self.n_users}
        return out if self.ci is None else {**out, "ci": self.ci}

    @classmethod
    def from_json(cls, block: dict) -> ShotResult:
        return from_fields(cls, block, n_users=_or_empty)


def _by_shots(read, block: dict | None) -> dict[int, Any]:
    """``{"<k>": block}`` → ``{k: read(block)}`` (JSON keys are strings; shots are whole numbers)."""
    return {int(k): read(value) for k, value in (block or {}).items()}


@dataclass
class UnseenResult:
    """The ``unseen`` block: ``fraction`` of users held out of all training, personalised from each of ``shots``
    pairs; per method and k its :class:`ShotResult`, per method but the reference and k its paired comparison
    with the reference (the same object as ``comparisons.NAME``). ``per_user`` (not in the JSON): one row per seed,
    k and held-out user with ``acc_<method>`` columns, what pooling reads."""

    fraction: float
    shots: list[int]
    methods: dict[str, dict[int, ShotResult]] = field(default_factory=dict)
    comparisons: dict[str, dict[int, Comparison]] = field(default_factory=dict)
    per_user: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"fraction": self.fraction, "shots": list(self.shots),
                "methods": {name: {str(k): block.to_json() for k, block in by_k.items()}
                            for name, by_k in self.methods.items()},
                "comparisons": {name: {str(k): c.to_json() for k, c in by_k.items()}
                                for name, by_k in self.comparisons.items()}}

    @classmethod
    def from_json(cls, block: dict | None) -> UnseenResult | None:
        if block is None:
            return None
        _require(block, "shots", list, "the unseen block")
        return from_fields(cls, block, shots=lambda shots: [int(k) for k in shots],
                           methods=lambda m: _each(lambda by_k: _by_shots(ShotResult.from_json, by_k), m),
                           comparisons=lambda c: _each(lambda by_k: _by_shots(Comparison.from_json, by_k), c))


def _shot_result(frames: list[pd.DataFrame], column: str, n_resamples: int, seed: int) -> ShotResult:
    """One method at one k over the seeds' held-out users (``frames``: one per seed)."""
    means = {group: [] for group in ("majority", "minority")}
    counts = dict.fromkeys(means, 0)
    for frame in frames:
        rows = frame.dropna(subset=[column])
        for group in means:
            values = rows.loc[rows["group"] == group, column]
            counts[group] += len(values)
            if len(values):
                means[group].append(float(values.mean()))
    ci = pooled_group_ci(frames, column, n_resamples=n_resamples, seed=seed)
    return ShotResult(*(float(np.mean(means[g])) if means[g] else None for g in ("majority", "minority")),
                      n_users=counts, ci={g: ci[g] for g in ("majority", "minority")})


def pool_unseen(blocks: Sequence[UnseenResult], methods: Sequence[str], *, reference: str | None = REFERENCE,
                n_resamples: int = 1000, rule: VerdictRule | None = None, seed: int = 0) -> UnseenResult:
    """The ``unseen`` block of one seed or of several pooled (each with its ``per_user`` rows): per method and k the
    group accuracies and CIs, per compared method and k the paired comparison with ``reference`` on the same
    held-out users and test pairs (:func:`pafo.compare.paired_comparison`, the same verdict rule as the run's)."""
    shots = list(blocks[0].shots)
    per_seed = [b.per_user for b in blocks]
    out = UnseenResult(blocks[0].fraction, shots, per_user=pd.concat(per_seed, ignore_index=True))
    for k in shots:
        frames = [frame[frame["shots"] == k] for frame in per_seed]
        for name in methods:
            out.methods.setdefault(name, {})[k] = _shot_result(frames, f"acc_{name}", n_resamples, seed)
            if reference in methods and name != reference:
                out.comparisons.setdefault(name, {})[k] = paired_comparison(
                    frames, name, reference, n_resamples=n_resamples, seed=seed, rule=rule)
    return out


# ------------------------------------------------------------------------------------------- pooling


class Pooled(NamedTuple):
    """What :func:`pool` gives: per method the pooled figures, per compared method its paired comparison with the
    reference (empty when the reference is not among the methods), the pooled diagnostics, and the held-out users'
    block pooled the same way (``None`` when the seeds held none out)."""

    methods: dict[str, MethodResult]
    comparisons: dict[str, Comparison]
    diagnostics: list
    unseen: UnseenResult | None = None


def _pool_method(name: str, blocks: list[MethodResult], frames: list[pd.DataFrame], n_resamples: int,
                 seed: int) -> MethodResult:
    """One method over every seed: mean figures, CIs from the bootstrap over users pooled across seeds."""
    column = f"acc_{name}"
    stacked = pd.concat(frames, ignore_index=True).rename(columns={column: "accuracy"})
    seconds = [b.train_seconds for b in blocks if b.train_seconds is not None]
    return MethodResult(
        accuracy=mean_tree([b.accuracy for b in blocks]),
        accuracy_ci=pooled_group_ci(frames, column, n_resamples=n_resamples, seed=seed),
        unfairness=mean_tree([b.unfairness for b in blocks]),
        calibration=mean_tree([b.calibration for b in blocks]) if blocks[0].calibration is not None else None,
        by_decile=accuracy_by_decile(stacked[["support_rate", "accuracy"]], n_resamples=n_resamples, seed=seed),
        train_seconds=round(sum(seconds), 3) if seconds else None, n_seeds=len(blocks),
        extras=_pool_extras([b.extras for b in blocks]))


def pool(seeds: Sequence[SeedResult], methods: Sequence[str], *, reference: str | None = REFERENCE,
         n_resamples: int = 1000, rule: VerdictRule | None = None) -> Pooled:
    """Pool per-seed results (each with its ``per_user`` table): the means over seeds, CIs over users pooled
    across seeds and the paired comparisons with ``reference`` (module docstring), and the held-out users' block.
    The bootstrap is seeded with
    the first seed, so the same seeds give the same figures wherever they are pooled."""
    frames = [s.per_user for s in seeds]
    pooled = {name: _pool_method(name, [s.methods[name] for s in seeds], frames, n_resamples, seeds[0].seed)
              for name in methods}
    diagnostics = _pool_extras([s.diagnostics for s in seeds]) if all(s.diagnostics for s in seeds) else []
    unseen = pool_unseen([s.unseen for s in seeds], methods, reference=reference, n_resamples=n_resamples, rule=rule,
                         seed=seeds[0].seed) if all(s.unseen is not None and s.unseen.per_user is not None
                                                    for s in seeds) else None
    return Pooled(pooled, compare_seeds(seeds, methods, reference=reference, n_resamples=n_resamples, rule=rule),
                  diagnostics, unseen)


def compare_seeds(seeds: Sequence[SeedResult], methods: Sequence[str], *, reference: str | None = REFERENCE,
            n_resamples: int = 1000, rule: VerdictRule | None = None) -> dict[str, Comparison]:
    """The paired comparisons of :func:`pool` alone: every method but ``reference`` against it on the same users
    and pairs, pooled over the seeds (nothing when ``reference`` is not among the methods)."""
    if reference is None or reference not in methods:
        return {}
    frames = [s.per_user for s in seeds]
    return {name: paired_comparison(frames, name, reference, n_resamples=n_resamples, seed=seeds[0].seed, rule=rule)
            for name in methods if name != reference}


# ------------------------------------------------------------------------------------------- a run


def _or_empty(block: dict | None) -> dict:
    return block or {}


def verdict_epsilon(config: dict | None) -> float | None:
    """The verdict's ε a stored config names: an experiment's ``run.epsilon`` (``pafo.epsilon`` in one written before
    ε moved to the run settings: :func:`pafo.config_edit.current_config`) or an audit's; ``None`` when it names
    none."""
    current = current_config(config or {})
    for section in ("run", "audit"):
        value = (current.get(section) or {}).get("epsilon")
        if value is not None:
            return float(value)
    return None


@dataclass
class RunResult:
    """An experiment's or an audit's result (``kind``): the README's result JSON as one typed object.

    ``per_user`` is the per-user table of every seed (a ``seed`` column with several); ``per_seed`` the seeds'
    own blocks. An audit adds ``split``, ``n_pairs`` and its ``reference`` model; an experiment's reference is
    :data:`REFERENCE`. Unset fields (``None``) are not in the JSON."""

    dataset: dict
    support: dict
    groups: dict
    methods: dict[str, MethodResult]
    config: dict
    fingerprint: str | None = None
    kind: str = "experiment"
    split: str | None = None
    n_pairs: int | None = None
    reference: str = REFERENCE
    encoder: dict | None = None
    seeds: list[int] | None = None
    diagnostics: list = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    per_seed: list[SeedResult] | None = None
    slices: list[Slice] | None = None  # pafo.slices: accuracy per slice of users (by attribute), when asked for
    slicing: dict | None = None  # how the slices were made
    per_user: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    seconds: float | None = None
    device: str | None = None
    unseen: UnseenResult | None = None  # users held out of training, personalised from a few pairs

    @property
    def is_audit(self) -> bool:
        return self.kind == AUDIT

    @property
    def seed_list(self) -> list[int]:
        """The run's seeds (an old one-seed result names only its config's seed)."""
        return list(self.seeds or [((self.config or {}).get("data") or {}).get("seed", 0)])

    @property
    def threshold(self) -> float | None:
        """The minority cut of the (first) seed's grouping."""
        return (self.groups or {}).get("threshold")

    def seed_results(self) -> list[SeedResult]:
        """Each seed's result with its per-user rows (a result from before ``per_seed`` is its own one seed), and
        its held-out users' rows where the run's ``unseen.per_user`` was read
        (:func:`pafo.experiment.read_unseen_rows`)."""
        blocks = self.per_seed or [SeedResult(self.seed_list[0], self.dataset, self.support, self.groups,
                                              self.methods, self.comparisons, self.diagnostics, unseen=self.unseen)]
        several = len(blocks) > 1 and "seed" in self.per_user
        return [dataclasses.replace(block, per_user=self.per_user[self.per_user["seed"] == block.seed]
                                    if several else self.per_user, unseen=self._unseen_of(block))
                for block in blocks]

    def _unseen_of(self, block: SeedResult) -> UnseenResult | None:
        rows = None if self.unseen is None else self.unseen.per_user
        if block.unseen is None or rows is None:
            return block.unseen
        return dataclasses.replace(block.unseen, per_user=rows[rows["seed"] == block.seed].reset_index(drop=True))

    def to_json(self) -> dict:
        audit = self.is_audit
        return _emit([
            ("kind", self.kind if audit else None), ("dataset", self.dataset), ("support", self.support),
            ("groups", self.groups), ("split", self.split), ("n_pairs", self.n_pairs),
            ("reference", self.reference if audit else None), ("encoder", self.encoder), ("config", self.config),
            ("fingerprint", self.fingerprint), ("seeds", self.seeds),
            ("methods", {name: m.to_json() for name, m in self.methods.items()}),
            ("diagnostics", _extras_json(self.diagnostics) if self.diagnostics else None),
            ("comparisons", {name: c.to_json() for name, c in self.comparisons.items()}),
            ("per_seed", None if self.per_seed is None else [s.to_json() for s in self.per_seed]),
            ("slices", None if self.slices is None else [s.to_json() for s in self.slices]),
            ("slicing", self.slicing), ("unseen", None if self.unseen is None else self.unseen.to_json()),
            ("per_user", per_user_json(self.per_user)), ("seconds", self.seconds), ("device", self.device)])

    @classmethod
    def from_json(cls, data: dict, what: str = "the result") -> RunResult:
        """A stored result (``result.json``, a registry run, ``--json``); :class:`PafoInputError` naming what is
        missing when it is not one. Blocks an older version did not write read as empty."""
        _require(data, "methods", dict, what)
        return from_fields(
            cls, data, dataset=_or_empty, support=_or_empty, groups=_or_empty, config=_or_empty,
            kind=lambda kind: kind or "experiment", reference=lambda name: name or REFERENCE, methods=_methods,
            diagnostics=lambda d: read_extras(d or {}, DIAGNOSTIC_EXTRAS),
            comparisons=lambda c: _each(Comparison.from_json, c),
            per_seed=lambda blocks: None if blocks is None else [SeedResult.from_json(b) for b in blocks],
            slices=lambda entries: None if entries is None else [Slice.from_json(e) for e in entries],
            unseen=UnseenResult.from_json, per_user=lambda table: pd.DataFrame(table or {}))

    @property
    def epsilon(self) -> float:
        """The verdict's ε: the one its config names, else the rule its comparisons used, else the default."""
        rules = [c.rule.epsilon for c in self.comparisons.values()]
        epsilon = verdict_epsilon(self.config)
        return epsilon if epsilon is not None else rules[0] if rules else DEFAULT_EPSILON


# ------------------------------------------------------------------------------------------- a sweep


@dataclass
class SweepCell:
    """One grid point on one seed: its run and, when it succeeded, its methods' blocks."""

    params: dict
    seed: int
    run_id: str
    status: str
    reused_from: str | None = None
    error: str | None = None
    methods: dict[str, MethodResult] | None = None

    def to_json(self) -> dict:
        return {"params": self.params, "seed": self.seed, "run_id": self.run_id, "status": self.status,
                "reused_from": self.reused_from, "error": self.error,
                "methods": None if self.methods is None else {n: m.to_json() for n, m in self.methods.items()}}

    @classmethod
    def from_json(cls, block: dict) -> SweepCell:
        return from_fields(cls, block, methods=lambda methods: None if methods is None else _methods(methods))


@dataclass
class SweepPoint:
    """One grid point over the seeds that succeeded: per method the pooled accuracies, their CIs and unfairness,
    and the paired comparisons with the baseline (``None`` before any seed succeeded)."""

    index: int
    params: dict
    n_seeds: int
    methods: dict[str, MethodResult] | None = None
    comparisons: dict[str, Comparison] | None = None
    unseen: UnseenResult | None = None  # the cells held users out (``run.unseen_users`` > 0): pooled over seeds

    def to_json(self) -> dict:
        out = {"index": self.index, "params": self.params, "n_seeds": self.n_seeds,
               "methods": None if self.methods is None else {n: m.to_json() for n, m in self.methods.items()},
               "comparisons": None if self.comparisons is None else
               {n: c.to_json() for n, c in self.comparisons.items()}}
        if self.unseen is not None:
            out["unseen"] = self.unseen.to_json()
        return out

    @classmethod
    def from_json(cls, block: dict) -> SweepPoint:
        return from_fields(cls, block, methods=lambda methods: None if methods is None else _methods(methods),
                           comparisons=lambda c: None if c is None else _each(Comparison.from_json, c),
                           unseen=UnseenResult.from_json)


@dataclass
class SweepResult:
    """``sweep.json`` (:func:`pafo.sweep.assemble`): the grid, its cells, its points and their Pareto front."""

    sweep_id: str
    grid: dict[str, list]
    seeds: list[int]
    methods: list[str]
    pareto_method: str
    cells: list[SweepCell]
    points: list[SweepPoint]
    pareto_front: list[int]

    def to_json(self) -> dict:
        return {"sweep_id": self.sweep_id, "grid": self.grid, "seeds": self.seeds, "methods": self.methods,
                "pareto_method": self.pareto_method, "cells": [c.to_json() for c in self.cells],
                "points": [p.to_json() for p in self.points], "pareto_front": self.pareto_front}

    @classmethod
    def from_json(cls, data: dict) -> SweepResult:
        _require(data, "points", list, "the sweep")
        return from_fields(cls, data, cells=lambda cells: [SweepCell.from_json(c) for c in cells or []],
                           points=lambda points: [SweepPoint.from_json(p) for p in points])
