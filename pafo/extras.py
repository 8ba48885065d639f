"""What a method adds to its result block, and the diagnostics beside the methods, as typed objects.

The experiment's generic path knows none of them by name: a method's ``MethodSpec.report`` hook returns its
extras (PAFO's teachers, the preference clusters of PAFO and the mixture), the seed's diagnostics come from
:func:`pafo.diagnostics.seed_diagnostics` (the ceilings), and :mod:`pafo.results` reads, writes and pools them
through the protocol below. Each extra owns some keys of the JSON block it sits in (``KEYS``): it is written there
by ``to_json`` and read back by ``from_json`` (``None`` when its keys are absent), and ``pool`` gives its value over
several seeds (``None``: it stays per seed, as the clusters do: each seed clusters its own users).

Torch-free: the app and the report read these without loading the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from .jsonio import from_fields

__all__ = [
    "DIAGNOSTIC_EXTRAS",
    "METHOD_EXTRAS",
    "CeilingRow",
    "Ceilings",
    "ClusterReport",
    "ClusterRow",
    "Extra",
    "TeacherReport",
    "TeacherStats",
    "mean_tree",
    "read_extras",
]


class Extra(Protocol):
    """A typed extra of a result block (module docstring)."""

    KEYS: ClassVar[tuple[str, ...]]

    def to_json(self) -> dict: ...

    @classmethod
    def from_json(cls, block: dict) -> Extra | None: ...

    @classmethod
    def pool(cls, values: list) -> Extra | None: ...


def mean_tree(values: list):
    """The mean over seeds of matching numbers in nested dicts (missing values skipped; other leaves: the first)."""
    first = values[0]
    if isinstance(first, dict):
        return {key: mean_tree([v.get(key) for v in values if isinstance(v, dict)]) for key in first}
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)]
    if isinstance(first, bool) or not (numbers or first is None):
        return first
    return float(np.mean(numbers)) if numbers else None


def _fields_json(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _holds(cls, block: dict) -> bool:
    """Whether a JSON block carries an extra of ``cls`` (any of its keys: an older result may lack some)."""
    return any(key in block for key in cls.KEYS)


# ------------------------------------------------------------------------------------------- PAFO's teachers


@dataclass
class TeacherStats:
    """One support group's teacher on its own users' test pairs beside the baseline (paper-style PAFO)."""

    teacher_accuracy: float | None
    baseline_accuracy: float | None
    advantage: float | None
    n_train_pairs: float | None
    best_epoch: float | None
    train_seconds: float | None


@dataclass
class TeacherReport:
    """PAFO with group teachers: whether an epoch met the Pareto selection rule, each teacher's advantage on its
    group (what distillation can transfer) and the teacher-labelled pairs added per run."""

    KEYS: ClassVar[tuple[str, ...]] = ("pareto_selected", "teachers", "n_dense_pairs")

    pareto_selected: bool
    teachers: dict[str, TeacherStats]
    n_dense_pairs: float

    def to_json(self) -> dict:
        return {**_fields_json(self), "teachers": _teachers_json(self.teachers)}

    @classmethod
    def from_json(cls, block: dict) -> TeacherReport | None:
        return from_fields(cls, block, pareto_selected=bool, teachers=_teachers) if _holds(cls, block) else None

    @classmethod
    def pool(cls, values: list[TeacherReport]) -> TeacherReport:
        """Selected on every seed, the teachers' figures and the dense pairs as means over the seeds."""
        return cls(all(v.pareto_selected for v in values),
                   _teachers(mean_tree([_teachers_json(v.teachers) for v in values])),
                   mean_tree([v.n_dense_pairs for v in values]))


def _teachers(block: dict) -> dict[str, TeacherStats]:
    return {group: from_fields(TeacherStats, stats) for group, stats in block.items()}


def _teachers_json(teachers: dict[str, TeacherStats]) -> dict:
    return {group: _fields_json(stats) for group, stats in teachers.items()}


# ------------------------------------------------------------------------------------------- preference clusters


@dataclass
class ClusterRow:
    """One preference cluster of the reported EM restart, described on its users' test pairs."""

    cluster: int
    n_users: int
    mean_support: float
    minority_share: float
    group: str
    teacher_accuracy: float
    baseline_accuracy: float
    method_accuracy: float


@dataclass
class ClusterReport:
    """The clusters EM found for PAFO or the mixture (:func:`pafo.diagnostics.cluster_report`): a description,
    reading test pairs; it stays per seed (each seed clusters its own users)."""

    KEYS: ClassVar[tuple[str, ...]] = ("clusters",)

    em: str
    restarts: int
    subspace_sizes: list[int]
    runs: int
    reported_restart: int
    mean_em_rounds: float
    clusters: list[ClusterRow] = field(default_factory=list)

    def to_json(self) -> dict:
        return {self.KEYS[0]: {**_fields_json(self), "clusters": [_fields_json(row) for row in self.clusters]}}

    @classmethod
    def from_json(cls, block: dict) -> ClusterReport | None:
        report = block.get(cls.KEYS[0])  # a report of its own under the method's "clusters" key
        if not isinstance(report, dict):
            return None
        return from_fields(cls, report, clusters=lambda rows: [from_fields(ClusterRow, row) for row in rows or []])

    @classmethod
    def pool(cls, values: list[ClusterReport]) -> None:
        return None


# ------------------------------------------------------------------------------------------- ceilings


@dataclass
class CeilingRow:
    """A diagnostic model's mean accuracy per group (``oracle``: it read the simulated users' true personas)."""

    majority: float | None
    minority: float | None
    oracle: bool


@dataclass
class Ceilings:
    """How much could be gained: diagnostic models beside the baseline, each reading test labels
    (:func:`pafo.diagnostics.ceilings`); never a method."""

    KEYS: ClassVar[tuple[str, ...]] = ("ceilings",)

    rows: dict[str, CeilingRow]

    def to_json(self) -> dict:
        return {self.KEYS[0]: {name: _fields_json(row) for name, row in self.rows.items()}}

    @classmethod
    def from_json(cls, block: dict) -> Ceilings | None:
        rows = block.get(cls.KEYS[0])
        if not isinstance(rows, dict):
            return None
        return cls({name: from_fields(CeilingRow, row) for name, row in rows.items()})

    @classmethod
    def pool(cls, values: list[Ceilings]) -> Ceilings:
        """Each row's group accuracies as means over the seeds."""
        return cls.from_json(mean_tree([v.to_json() for v in values]))


#: The extras a method's block may carry, and those of a result's ``diagnostics`` block.
METHOD_EXTRAS: tuple[type, ...] = (TeacherReport, ClusterReport)
DIAGNOSTIC_EXTRAS: tuple[type, ...] = (Ceilings,)


def read_extras(block: dict, kinds: tuple[type, ...]) -> list[Any]:
    """The extras of ``kinds`` a JSON block holds, in the order of ``kinds``."""
    return [extra for kind in kinds if (extra := kind.from_json(block)) is not None]
