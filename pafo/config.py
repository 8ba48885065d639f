"""Dataclass configs with one help line per field, their bounds, and the argparse flags built from them.

The CLI, the app's forms and the run registry all read the same dataclasses, so a new option appears everywhere
once it is added here. A field's ``metadata`` holds ``help`` and optionally ``choices``, ``flag`` and its bounds
(``ge``, ``gt``, ``le``, ``lt``); ``None`` defaults mean "not set". :func:`validate_options` is the one check of
every numeric option (finite, integral where the field is an ``int``, within its bounds) and of every choice;
each config's ``validate()`` calls it first, so the CLI, the app and background runs refuse the same values with
the same message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

from .errors import PafoInputError

__all__ = [
    "BAD_CHOICE",
    "DESCRIPTIVE",
    "DESCRIPTIVE_METADATA",
    "NOT_FINITE",
    "OPTION_METADATA",
    "OUT_OF_RANGE",
    "OptionValueError",
    "add_dataclass_arguments",
    "bounds_rule",
    "check_range",
    "dataclass_from_dict",
    "dataclass_from_namespace",
    "descriptive",
    "field_bounds",
    "field_choices",
    "field_flag",
    "option",
    "parse_int",
    "same_option",
    "validate_options",
]

UNKNOWN_FIELD = "{config}: unknown option {key!r}; known options: {known}"
BAD_VALUE = "{flag}: must be {kind} (got {value!r})"
KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
NOT_FINITE = "{flag}: must be a finite number (got {value})"
OUT_OF_RANGE = "{flag}: must be {rule} (got {value})"
BAD_CHOICE = "{flag}: unknown value {value!r}; use one of {choices}"
NOT_A_NUMBER = "{flag}: must be {kind} (got {value!r})"
NOT_WHOLE = "expected a whole number, got {text!r}"
BOUND_SYMBOLS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


#: What an option may declare besides its default and help line.
OPTION_METADATA = frozenset({"choices", "flag", "cli", "label", "active_when", "grid", *BOUND_SYMBOLS})
#: What of an option only describes it (its help line, form label, where it has an effect, its sweep grid): editing
#: it can never change a result, so it is not part of the reuse key (:mod:`pafo.reuse`).
DESCRIPTIVE_METADATA = ("help", "label", "active_when", "grid")
#: The field metadata key that marks a field of a spec dataclass as descriptive in the same sense (a method's label,
#: colour and progress-bar cost): :func:`descriptive`.
DESCRIPTIVE = "descriptive"


def descriptive(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that only describes (a label, a colour, a cost estimate for the progress bar): marked in its
    metadata, so the reuse key leaves it out by name, wherever the field stands in the class."""
    return dataclasses.field(default=default, metadata={DESCRIPTIVE: True})


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with a help line and optional metadata: ``choices``, ``flag``, bounds (``ge``/``gt``
    below, ``le``/``lt`` above: an upper bound is also where a limit of memory or time is stated), ``label`` (its
    name in the app's forms, in plain words), ``active_when`` (a :class:`pafo.conditions.Condition`: the
    configurations in which it can change a result; without it, whenever its section is read) and ``grid`` (the
    values a sweep of it starts from)."""
    unknown = set(metadata) - OPTION_METADATA
    if unknown:
        raise TypeError(f"option(): unknown metadata {sorted(unknown)}")
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def same_option(cls: type, name: str, **metadata: Any) -> Any:
    """Another config's option ``name`` declared again, for a config that shares it (an audit's bootstrap and ε are
    the run's): the same default, bounds, help and label, ``metadata`` replacing some (``None`` drops a key)."""
    original = next(f for f in dataclasses.fields(cls) if f.name == name)
    merged = {**original.metadata, **metadata}
    return dataclasses.field(default=original.default, metadata={k: v for k, v in merged.items() if v is not None})


def _base_type(cls: type, field: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if get_origin(hint) in (typing.Union, types.UnionType) else hint


def field_choices(cls: type, field: dataclasses.Field) -> tuple | None:
    base = _base_type(cls, field)
    if get_origin(base) is Literal:
        return get_args(base)
    return field.metadata.get("choices")


def field_flag(field: dataclasses.Field) -> str:
    """A field's CLI flag: its declared ``flag`` or ``--field-name``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def bounds_rule(bounds: dict) -> str | None:
    """``> 0 and < 1``-style text of a field's bounds (``None`` without any)."""
    parts = [f"{BOUND_SYMBOLS[key]} {bounds[key]:g}" if isinstance(bounds[key], float) else
             f"{BOUND_SYMBOLS[key]} {bounds[key]}" for key in BOUND_SYMBOLS if bounds.get(key) is not None]
    return " and ".join(parts) or None


class OptionValueError(PafoInputError):
    """A bad value of one option. ``str()`` is the CLI's line (``--lambda: must be ≥ 0 (got -1.0)``); ``flag``
    names the option and ``problem`` says what is wrong without naming it, so the app can put its own label in
    front (``λ: distillation weight: must be ≥ 0 (got -1.0)``)."""

    def __init__(self, template: str, *, flag: str, **values: Any):
        super().__init__(template.format(flag=flag, **values))
        self.flag = flag
        self.problem = template.format(flag="", **values).removeprefix(": ")


def check_range(flag: str, value: Any, *, integer: bool = False, **bounds: Any) -> Any:
    """``value`` if it is a finite number (whole for ``integer``) within ``bounds``, else
    :class:`OptionValueError`.

    Comparisons are written so that NaN fails them, but NaN and ±inf get their own message first.
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionValueError(NOT_A_NUMBER, flag=flag, kind=kind, value=value)
    if not math.isfinite(value):
        raise OptionValueError(NOT_FINITE, flag=flag, value=value)
    if integer and value != int(value):
        raise OptionValueError(NOT_A_NUMBER, flag=flag, kind=kind, value=value)
    inside = {"gt": lambda b: value > b, "ge": lambda b: value >= b, "lt": lambda b: value < b,
              "le": lambda b: value <= b}
    if not all(inside[key](bound) for key, bound in bounds.items() if bound is not None):
        raise OptionValueError(OUT_OF_RANGE, flag=flag, rule=bounds_rule(bounds), value=value)
    return value


def field_bounds(field: dataclasses.Field) -> dict:
    """A field's bounds, e.g. ``{"ge": 0, "le": 1}``."""
    return {key: field.metadata[key] for key in BOUND_SYMBOLS if key in field.metadata}


def validate_options(config: Any) -> Any:
    """Check every field of a config dataclass against its type, bounds and choices; returns ``config``."""
    cls = type(config)
    for field in dataclasses.fields(config):
        value, base = getattr(config, field.name), _base_type(cls, field)
        if value is None:
            continue
        choices = field_choices(cls, field)
        if choices is not None and value not in choices:
            raise OptionValueError(BAD_CHOICE, flag=field_flag(field), value=value,
                                   choices=", ".join(map(str, choices)))
        if base in (int, float):
            check_range(field_flag(field), value, integer=base is int, **field_bounds(field))
    return config


def parse_int(text: str) -> int:
    """argparse type of integer options: ``300`` or ``1e8`` (a whole number in any notation), never ``2.5``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(NOT_WHOLE.format(text=text)) from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(NOT_WHOLE.format(text=text))
    return int(value)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                            include: tuple[str, ...] | None = None, group: Any = None) -> None:
    """One flag per field of ``cls`` (``--field-name``; only those in ``include`` when given), typed from the
    annotation, help from the metadata; in ``group`` when given (e.g. a mutually exclusive group), else in a new
    argument group named after ``cls``."""
    if group is None:
        group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for field in dataclasses.fields(cls):
        if field.name in exclude or (include is not None and field.name not in include) or \
                field.metadata.get("cli") is False:
            continue
        base, help_text = _base_type(cls, field), field.metadata.get("help", "")
        default = field.default
        if get_origin(base) is list:  # a repeatable flag: each use adds one value
            group.add_argument(field_flag(field), dest=field.name, action="append", default=argparse.SUPPRESS,
                               metavar=field.name.upper(), help=f"{help_text} (repeatable)")
            continue
        if base is bool:
            group.add_argument(field_flag(field), dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
            continue
        choices = field_choices(cls, field)
        kind = str if choices or get_origin(base) is Literal else parse_int if base is int else base
        rule = bounds_rule(field_bounds(field))
        group.add_argument(field_flag(field), dest=field.name, type=kind, choices=choices, default=argparse.SUPPRESS,
                           metavar=None if choices else field.name.upper(),
                           help=f"{help_text} (default: {default}{'; ' + rule if rule else ''})")


def dataclass_from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """An instance of ``cls`` from the flags that were given (the others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def _coerce(cls: type, field: dataclasses.Field, value: Any) -> Any:
    base = _base_type(cls, field)
    if value is None or base in (Any, typing.Any) or get_origin(base) is Literal:
        return value
    try:
        if base is bool and isinstance(value, str):
            return {"true": True, "false": False, "1": True, "0": False}[value.lower()]
        if base is int and not isinstance(value, bool):
            return parse_int(str(value)) if isinstance(value, str | float) else int(value)
        return base(value) if base in (int, float, str, bool) else value
    except (KeyError, TypeError, ValueError, argparse.ArgumentTypeError):
        raise OptionValueError(BAD_VALUE, flag=field_flag(field), config=cls.__name__, key=field.name,
                               kind=KIND_WORDS.get(base, base.__name__), value=value) from None


def dataclass_from_dict(cls: type, values: dict) -> Any:
    """An instance of ``cls`` from a plain dict (JSON, a form); unknown keys are an error, values are coerced."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise PafoInputError(UNKNOWN_FIELD.format(config=cls.__name__, key=unknown[0], known=", ".join(fields)))
    return cls(**{k: _coerce(cls, fields[k], v) for k, v in values.items()})
