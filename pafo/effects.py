"""Which options have an effect in a configuration, from the condition each field declares (:mod:`pafo.conditions`).

One reading for every caller: the CLI refuses a flag that cannot change the result (exit 2, one line saying what
would make it matter), ``pafo sweep`` refuses such a grid before anything runs, a What-if refuses such a change,
and the app's forms draw only the options that matter (the others disabled, with the same sentence as help).

Options are named by their ``section.field`` key over :data:`SECTIONS`, the experiment's config sections (the
``ExperimentConfig`` of :mod:`pafo.experiment` is built from the same mapping). A field's condition is its
``active_when``; a method section's field without one matters whenever a method reading that section trains.

Only options set on purpose are refused: a flag given on the command line, a changed What-if value, a swept key.
A stored config carries every option at some value, and a default value is never an error.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from .conditions import Condition, Uses, method_list
from .config import field_flag
from .errors import PafoInputError
from .method_configs import METHOD_SPECS, RunSettings, TrainConfig, method_sections
from .sources import DataConfig
from .support import GroupConfig

__all__ = [
    "APP_WORDS",
    "CLI_WORDS",
    "SECTIONS",
    "NoEffectError",
    "active_keys",
    "check_effective",
    "check_grid",
    "flat_values",
    "inert_options",
    "is_active",
    "option_condition",
    "option_field",
    "option_label",
    "reset_inert",
]

#: The experiment's config sections, in order: data, groups, run, train, then one per method with options. (This
#: module is presentation for the run cache: a new section comes with a new method in method_configs, which is not.)
SECTIONS: dict[str, type] = {"data": DataConfig, "groups": GroupConfig, "run": RunSettings, "train": TrainConfig,
                             **method_sections()}
NO_EFFECT = "{name} has no effect with {blocking}; {fix}"
NO_EFFECT_GRID = "--grid {key}: {reason} (its cells there would repeat one result)"
NO_EFFECT_ANYWHERE = "{reason} (in every cell of the sweep)"
UNKNOWN_KEY = "unknown option {key!r}"


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def option_field(key: str) -> dataclasses.Field:
    """The dataclass field of ``section.field``."""
    section, _, name = key.partition(".")
    try:
        return _fields(section)[name]
    except KeyError:
        raise PafoInputError(UNKNOWN_KEY.format(key=key)) from None


def _readers(section: str) -> tuple[str, ...]:
    """The methods that read a method section (pafo's: pafo, and the mixture, which shares its cluster options)."""
    return tuple(spec.name for spec in METHOD_SPECS if spec.section == section)


def _gate(key: str) -> Condition | None:
    """A method section's options matter only when one of its methods trains."""
    readers = _readers(key.partition(".")[0])
    return Uses(*readers) if readers else None


def option_condition(key: str) -> Condition | None:
    """When ``section.field`` has an effect: its declared ``active_when``, else its section's methods (``None``:
    always)."""
    return option_field(key).metadata.get("active_when") or _gate(key)


def flat_values(config: Any) -> dict[str, Any]:
    """``{"section.field": value}`` of an ExperimentConfig, its dict, a partial dict or an already flat mapping
    (missing options: their defaults)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS if hasattr(config, name)}
    if config and any("." in key for key in config):  # flat already
        return {**flat_values({}), **{k: v for k, v in config.items() if "." in k}}
    values = {}
    for section, cls in SECTIONS.items():
        given = (config or {}).get(section) or {}
        for field in dataclasses.fields(cls):
            values[f"{section}.{field.name}"] = given.get(field.name, _default(field))
    return values


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def is_active(values: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` can change a result in the configuration ``values`` (:func:`flat_values`)."""
    condition = option_condition(key)
    return condition is None or condition.holds(values, key)


def active_keys(config: Any) -> list[str]:
    """Every option that has an effect in ``config``, in section and field order."""
    values = flat_values(config)
    return [key for key in values if is_active(values, key)]


# ------------------------------------------------------------------------------------------- words


class CliWords:
    """Conditions in the command line's words: flags and their values (``--student distilled``)."""

    def name(self, key: str) -> str:
        return "--methods" if key == "run.methods" else field_flag(option_field(key))

    def setting(self, key: str, value: Any) -> str:
        flag = self.name(key)
        if isinstance(value, bool):
            return flag if value else "--no-" + flag.removeprefix("--")
        return f"no {flag}" if value is None else f"{flag} {value:g}" if isinstance(value, float) else \
            f"{flag} {value}"

    def require(self, key: str, values: tuple) -> str:
        if values == (None,):
            return f"leave out {self.name(key)}"
        return "add " + " or ".join(self.setting(key, v) for v in values)

    def method_present(self, methods: tuple[str, ...]) -> str:
        return f"{' or '.join(methods)} in --methods"

    def add_method(self, methods: tuple[str, ...]) -> str:
        return f"add {' or '.join(methods)} to --methods"

    def methods_now(self, methods: list[str]) -> str:
        return f"--methods {','.join(methods)}"


def option_label(key: str) -> str:
    """An option's name in the app: its declared ``label``, else its flag in words (``batch size``)."""
    field = option_field(key)
    return field.metadata.get("label") or field_flag(field).removeprefix("--").replace("-", " ")


class AppWords:
    """Conditions in the app's words: the forms' labels (``student = distilled``)."""

    def name(self, key: str) -> str:
        return option_label(key)

    def setting(self, key: str, value: Any) -> str:
        if isinstance(value, bool):
            return f"{self.name(key)} {'on' if value else 'off'}"
        return f"{self.name(key)} not set" if value is None else f"{self.name(key)} = {value:g}" \
            if isinstance(value, float) else f"{self.name(key)} = {value}"

    def require(self, key: str, values: tuple) -> str:
        if values == (None,):
            return f"clear {self.name(key)}"
        if all(isinstance(v, bool) for v in values):
            return f"turn {self.name(key)} {'on' if values[0] else 'off'}"
        return f"set {self.name(key)} to " + " or ".join(map(str, values))

    def method_present(self, methods: tuple[str, ...]) -> str:
        return f"{' or '.join(methods)} among the methods"

    def add_method(self, methods: tuple[str, ...]) -> str:
        return f"add {' or '.join(methods)} to the methods"

    def methods_now(self, methods: list[str]) -> str:
        return f"methods {', '.join(methods) or '(none)'}"


CLI_WORDS, APP_WORDS = CliWords(), AppWords()


def _one_verb(fix: str) -> str:
    """``add --teachers clusters and --student distilled``, not ``… and add --student distilled``."""
    verb = fix.split(" ", 1)[0]
    return fix.replace(f" and {verb} ", " and ")


def _join_fixes(fixes: list[str]) -> str:
    """``add --student distilled or --teachers groups``: one verb for fixes that share it."""
    fixes = [_one_verb(fix) for fix in fixes]
    verbs = {fix.split(" ", 1)[0] for fix in fixes}
    if len(fixes) > 1 and len(verbs) == 1 and all(" and " not in fix for fix in fixes):
        verb = verbs.pop()
        return f"{verb} " + " or ".join(fix.split(" ", 1)[1] for fix in fixes)
    return " or ".join(fixes)


def no_effect_reason(values: Mapping[str, Any], key: str, words=CLI_WORDS) -> str | None:
    """One sentence saying why ``key`` has no effect in ``values`` and what would make it matter (``None`` when it
    has one): ``--lambda has no effect with --student wide and --teachers clusters; add --student distilled or
    --teachers groups``."""
    if is_active(values, key):
        return None
    condition, gate = option_condition(key), _gate(key)
    if gate is not None and not gate.holds(values, key):
        # No method reading it trains: name the method to add, then what else it would need with that method.
        methods = method_list(values)
        readers = sorted(_readers(key.partition(".")[0]), key=lambda m: m != key.partition(".")[0])
        with_reader = [{**values, "run.methods": ",".join([*methods, m])} for m in readers]
        index = next((i for i, v in enumerate(with_reader) if condition.holds(v, key)), 0)
        fix = words.add_method((readers[index],))
        blocking = [words.methods_now(methods)]
        if not condition.holds(with_reader[index], key):
            blocking += condition.blocking(with_reader[index], key, words)
            fix += ", and " + _join_fixes(condition.fixes(with_reader[index], key, words))
        return NO_EFFECT.format(name=words.name(key), blocking=" and ".join(blocking), fix=fix)
    return NO_EFFECT.format(name=words.name(key), blocking=" and ".join(condition.blocking(values, key, words)),
                            fix=_join_fixes(condition.fixes(values, key, words)))


class NoEffectError(PafoInputError):
    """An option set on purpose where it cannot change the result. ``str()`` is the CLI's line;
    :meth:`in_words` says it in the app's words."""

    def __init__(self, values: Mapping[str, Any], key: str, *, grid: bool = False, anywhere: bool = False):
        self.values, self.key, self.grid, self.anywhere = dict(values), key, grid, anywhere
        super().__init__(self.in_words(CLI_WORDS))

    def in_words(self, words) -> str:
        reason = no_effect_reason(self.values, self.key, words) or ""
        if self.grid:
            return NO_EFFECT_GRID.format(key=self.key, reason=reason) if words is CLI_WORDS else \
                f"{reason} (those sweep cells would repeat one result)"
        return NO_EFFECT_ANYWHERE.format(reason=reason) if self.anywhere else reason


def inert_options(config: Any, keys: Iterable[str] | None = None) -> list[str]:
    """The options among ``keys`` (default: every option not at its default) that have no effect in ``config``."""
    values = flat_values(config)
    if keys is None:
        keys = [key for key in values if values[key] != _default(option_field(key))]
    return [key for key in keys if not is_active(values, key)]


def check_effective(config: Any, keys: Iterable[str]) -> None:
    """Refuse (:class:`NoEffectError`, the first one) any of ``keys``, the options set on purpose, that cannot
    change the result of ``config``."""
    values = flat_values(config)
    for key in keys:
        if not is_active(values, key):
            raise NoEffectError(values, key)


def check_grid(base: Any, grid: Mapping[str, list], explicit: Iterable[str] = ()) -> None:
    """A sweep's grid before anything runs: every swept key must matter in every grid point (else the points that
    differ only by it repeat one result), and every option set on purpose (``explicit``) in at least one."""
    base_values = flat_values(base)
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    explicit = [key for key in explicit if key not in grid]
    matters = dict.fromkeys(explicit, False)
    for point in points:
        values = {**base_values, **point}
        for key in grid:
            if not is_active(values, key):
                raise NoEffectError(values, key, grid=True)
        for key in explicit:
            matters[key] = matters[key] or is_active(values, key)
    for key, ok in matters.items():
        if not ok:
            raise NoEffectError({**base_values, **points[0]} if points else base_values, key, anywhere=True)


def reset_inert(config: dict) -> dict:
    """``config`` (an experiment dict) with every option that has no effect put back to its default, so two
    configs that can only give the same result are one config (one cache key, no spurious What-if change)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for _ in range(len(SECTIONS)):  # a reset can only make more options inert; a few passes reach the fixed point
        values = flat_values(out)
        changed = False
        for key in values:
            section, _, name = key.partition(".")
            default = _default(option_field(key))
            if section in out and name in out[section] and out[section][name] != default \
                    and not is_active(values, key):
                out[section][name] = default
                changed = True
        if not changed:
            break
    return out
