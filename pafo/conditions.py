"""When an option has an effect: small predicates over an experiment's options that can say themselves in words.

An option declares once, on its field, the configurations in which it can change a result:
``lam: float = option(1.0, "...", active_when=DISTILLATION)``. Validation, the CLI, the app's forms, What-if and
sweeps all read that one declaration (through :mod:`pafo.effects`), so an option added later only declares its
condition. A field without ``active_when`` matters whenever a method that reads its section trains (every option
of ``data``, ``groups``, ``run`` and ``train`` always, unless it says otherwise).

A condition reads other options by their ``section.field`` key (``pafo.student``, ``run.methods``,
``data.dataset``) from a flat mapping of the whole experiment config, and says itself through a :class:`Words`
object: in the CLI's words (``--student distilled``) or the app's (``Student = distilled``).

"Effect" means an effect on the methods' models and metrics. The oracle ceilings of ``diagnostics`` (which read
``pafo.beta`` and ``pafo.cluster_ridge`` whenever clusters were fitted) are not counted: they are no method.

This module only describes; nothing here computes a result (``registry.PRESENTATION_MODULES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "CLUSTER_OPTIONS",
    "DENSE_PAIRS",
    "DISTILLATION",
    "DISTILLATION_LOSS",
    "DISTILLED_STUDENT",
    "GROUP_TEACHERS",
    "HARD_EM",
    "PAFO_CLUSTERS",
    "SOFT_EM",
    "SOURCE_READS",
    "Above",
    "All",
    "Any_",
    "Compared",
    "Condition",
    "Is",
    "SourceReads",
    "Uses",
    "Words",
    "method_list",
]

REFERENCE = "baseline"  # the method the verdicts compare with (pafo.experiment.REFERENCE)


class Words(Protocol):
    """How conditions name options and settings: the CLI's flags or the app's labels (:mod:`pafo.effects`)."""

    def name(self, key: str) -> str:
        """The option itself: ``--student`` or ``Student``."""

    def setting(self, key: str, value: Any) -> str:
        """An option at a value: ``--student distilled`` or ``Student = distilled``."""

    def require(self, key: str, values: tuple) -> str:
        """What to do so that the option takes one of ``values``: ``add --student distilled``."""

    def method_present(self, methods: tuple[str, ...]) -> str:
        """The condition "one of these methods trains": ``pafo in --methods``."""

    def add_method(self, methods: tuple[str, ...]) -> str:
        """What to do so that one of them trains: ``add pafo to --methods``."""

    def methods_now(self, methods: list[str]) -> str:
        """The methods as they are: ``--methods baseline``."""


def method_list(values: Mapping[str, Any]) -> list[str]:
    """The methods of a flat config (``run.methods`` as a comma-separated string or a list)."""
    methods = values.get("run.methods") or ""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    return [m.strip() for m in items if m and m.strip()]


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


class Condition:
    """A predicate over a flat experiment config (``{"section.field": value}``) that can explain itself.

    ``key`` is the option whose condition it is (a source's reads depend on it). Compose with ``&`` and ``|``.
    """

    def holds(self, values: Mapping[str, Any], key: str) -> bool:
        raise NotImplementedError

    def option_keys(self) -> tuple[str, ...]:
        """The options it reads (so a form knows which inputs to draw before the ones that depend on them)."""
        return ()

    def describe(self, words: Words, key: str) -> str:
        """What it requires, whatever the config: ``--student distilled or --teachers groups``."""
        raise NotImplementedError

    def blocking(self, values: Mapping[str, Any], key: str, words: Words) -> list[str]:
        """The current settings that make it fail (empty when it holds): ``["--student wide"]``."""
        raise NotImplementedError

    def fixes(self, values: Mapping[str, Any], key: str, words: Words) -> list[str]:
        """Ways to make it hold from ``values``, any one of which suffices."""
        raise NotImplementedError

    def __and__(self, other: Condition) -> Condition:
        return All(self, other)

    def __or__(self, other: Condition) -> Condition:
        return Any_(self, other)


class Is(Condition):
    """An option holds one of the given values (``None``: the option is not set)."""

    def __init__(self, key: str, *values: Any):
        self.key, self.values = key, values

    def holds(self, values, key):
        return values.get(self.key) in self.values

    def option_keys(self):
        return (self.key,)

    def describe(self, words, key):
        return " or ".join(words.setting(self.key, v) for v in self.values)

    def blocking(self, values, key, words):
        return [] if self.holds(values, key) else [words.setting(self.key, values.get(self.key))]

    def fixes(self, values, key, words):
        return [] if self.holds(values, key) else [words.require(self.key, self.values)]


class Above(Condition):
    """A number option is above a bound (``dense`` > 0: there are extra pairs whose batches can change)."""

    def __init__(self, key: str, bound: float):
        self.key, self.bound = key, bound

    def holds(self, values, key):
        value = values.get(self.key)
        return value is not None and value > self.bound

    def option_keys(self):
        return (self.key,)

    def describe(self, words, key):
        return f"{words.name(self.key)} > {self.bound:g}"

    def blocking(self, values, key, words):
        return [] if self.holds(values, key) else [words.setting(self.key, values.get(self.key))]

    def fixes(self, values, key, words):
        return [] if self.holds(values, key) else [f"set {words.name(self.key)} above {self.bound:g}"]


class Uses(Condition):
    """One of the given methods trains (``run.methods``)."""

    def __init__(self, *methods: str):
        self.methods = methods

    def holds(self, values, key):
        return any(m in method_list(values) for m in self.methods)

    def option_keys(self):
        return ("run.methods",)

    def describe(self, words, key):
        return words.method_present(self.methods)

    def blocking(self, values, key, words):
        return [] if self.holds(values, key) else [words.methods_now(method_list(values))]

    def fixes(self, values, key, words):
        return [] if self.holds(values, key) else [words.add_method(self.methods)]


class Compared(Condition):
    """Some method is compared with the baseline (the verdict rule reads its options)."""

    def holds(self, values, key):
        methods = method_list(values)
        return REFERENCE in methods and len(set(methods)) > 1

    def option_keys(self):
        return ("run.methods",)

    def describe(self, words, key):
        return f"a method compared with the {REFERENCE} ({words.method_present((REFERENCE,))} with another)"

    def blocking(self, values, key, words):
        return [] if self.holds(values, key) else [words.methods_now(method_list(values))]

    def fixes(self, values, key, words):
        if self.holds(values, key):
            return []
        methods = method_list(values)
        return [words.add_method((REFERENCE,) if REFERENCE not in methods else ("pafo",))]


class SourceReads(Condition):
    """The data source reads the option (``SourceSpec.reads`` of ``data.dataset``): ``--prompts`` shapes the
    synthetic data only, ``--include-normal`` DSP's only."""

    @staticmethod
    def _sources(key: str) -> tuple[str, ...]:
        from .sources import SOURCE_SPECS  # sources declare their fields with this condition: import late

        name = key.rpartition(".")[2]
        return tuple(source for source, spec in SOURCE_SPECS.items() if name in spec.reads)

    def holds(self, values, key):
        return values.get("data.dataset") in self._sources(key)

    def option_keys(self):
        return ("data.dataset",)

    def describe(self, words, key):
        return " or ".join(words.setting("data.dataset", s) for s in self._sources(key))

    def blocking(self, values, key, words):
        return [] if self.holds(values, key) else [words.setting("data.dataset", values.get("data.dataset"))]

    def fixes(self, values, key, words):
        if self.holds(values, key):
            return []
        return [f"only {words.name('data.dataset')} {' or '.join(self._sources(key))} reads it"]


class All(Condition):
    """Every part holds."""

    def __init__(self, *parts: Condition):
        self.parts = tuple(p for part in parts for p in (part.parts if isinstance(part, All) else (part,)))

    def holds(self, values, key):
        return all(part.holds(values, key) for part in self.parts)

    def option_keys(self):
        return tuple(_unique(k for part in self.parts for k in part.option_keys()))

    def describe(self, words, key):
        return " and ".join(f"({part.describe(words, key)})" if isinstance(part, Any_) else part.describe(words, key)
                            for part in self.parts)

    def blocking(self, values, key, words):
        return _unique(b for part in self.parts for b in part.blocking(values, key, words))

    def fixes(self, values, key, words):
        failing = [part for part in self.parts if not part.holds(values, key)]
        if len(failing) <= 1:
            return failing[0].fixes(values, key, words) if failing else []
        # Every failing part must be fixed: one fix made of each part's first way.
        return [" and ".join(part.fixes(values, key, words)[0] for part in failing)]


class Any_(Condition):  # noqa: N801 - ``Any`` is typing's
    """At least one part holds."""

    def __init__(self, *parts: Condition):
        self.parts = tuple(p for part in parts for p in (part.parts if isinstance(part, Any_) else (part,)))

    def holds(self, values, key):
        return any(part.holds(values, key) for part in self.parts)

    def option_keys(self):
        return tuple(_unique(k for part in self.parts for k in part.option_keys()))

    def describe(self, words, key):
        return " or ".join(f"({part.describe(words, key)})" if isinstance(part, All) else part.describe(words, key)
                           for part in self.parts)

    def blocking(self, values, key, words):
        if self.holds(values, key):
            return []
        return _unique(b for part in self.parts for b in part.blocking(values, key, words))

    def fixes(self, values, key, words):
        if self.holds(values, key):
            return []
        return _unique(f for part in self.parts for f in part.fixes(values, key, words))


# ------------------------------------------------------------------------------------------- declared conditions
# Traced in pafo.methods (fit_pafo, _distil, _fit_pafo_groups, student_pairs, student_config) and
# pafo.training.Objective; tests/test_effects.py checks that changing every option these call inactive leaves a
# result identical.

#: The data source reads the option (DataConfig fields; SourceSpec.reads lists them per source).
SOURCE_READS = SourceReads()
#: PAFO with preference-cluster teachers (its default): β, calibration and the student's kind.
PAFO_CLUSTERS = Uses("pafo") & Is("pafo.teachers", "clusters")
#: EM's cluster options: PAFO's cluster teachers, or the mixture, which reads PAFO's clusters.
CLUSTER_OPTIONS = PAFO_CLUSTERS | Uses("mixture")
#: The cluster step on the mixture likelihood (the default) or PAFO v2's classification EM.
SOFT_EM = CLUSTER_OPTIONS & Is("pafo.cluster_em", "soft")
HARD_EM = CLUSTER_OPTIONS & Is("pafo.cluster_em", "hard")
#: The paper's two support-group teachers.
GROUP_TEACHERS = Uses("pafo") & Is("pafo.teachers", "groups")
#: Cluster teachers distilled into the baseline architecture.
DISTILLED_STUDENT = PAFO_CLUSTERS & Is("pafo.student", "distilled")
#: A student trained by distillation (either kind): the default wide student is closed form and reads none.
DISTILLATION = DISTILLED_STUDENT | GROUP_TEACHERS
#: A distillation term in the loss: distillation with λ > 0 (λ = 0 trains the student on labels alone).
DISTILLATION_LOSS = DISTILLATION & Above("pafo.lam", 0)
#: Dense teacher-labelled pairs: distillation with ``dense`` > 0 (their batches and counts can then change).
DENSE_PAIRS = DISTILLATION & Above("pafo.dense", 0)
