"""Dataclass configs with one help line per field, and the argparse flags built from them.

The CLI, the app's forms and the run registry all read the same dataclasses, so a new option appears everywhere
once it is added here. A field's ``metadata`` holds ``help`` and optionally ``choices``; ``None`` defaults mean
"not set".
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

from .errors import PafoInputError

__all__ = ["add_dataclass_arguments", "dataclass_from_dict", "dataclass_from_namespace", "field_choices", "option"]

UNKNOWN_FIELD = "{config}: unknown option {key!r}; known options: {known}"
BAD_VALUE = "{config}: option {key!r} must be {kind} (got {value!r})"


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with a help line (and optional ``choices``/``flag`` metadata)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _base_type(cls: type, field: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if get_origin(hint) in (typing.Union, __import__("types").UnionType) else hint


def field_choices(cls: type, field: dataclasses.Field) -> tuple | None:
    base = _base_type(cls, field)
    if get_origin(base) is Literal:
        return get_args(base)
    return field.metadata.get("choices")


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (``--field-name``), typed from the annotation, help from the metadata."""
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for field in dataclasses.fields(cls):
        if field.name in exclude or field.metadata.get("cli") is False:
            continue
        base, help_text = _base_type(cls, field), field.metadata.get("help", "")
        default = field.default
        if base is bool:
            group.add_argument(_flag(field), dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
            continue
        choices = field_choices(cls, field)
        kind = str if choices or get_origin(base) is Literal else base
        group.add_argument(_flag(field), dest=field.name, type=kind, choices=choices, default=argparse.SUPPRESS,
                           metavar=None if choices else field.name.upper(), help=f"{help_text} (default: {default})")


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
        return base(value) if base in (int, float, str, bool) else value
    except (KeyError, TypeError, ValueError):
        raise PafoInputError(BAD_VALUE.format(config=cls.__name__, key=field.name, kind=base.__name__,
                                              value=value)) from None


def dataclass_from_dict(cls: type, values: dict) -> Any:
    """An instance of ``cls`` from a plain dict (JSON, a form); unknown keys are an error, values are coerced."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise PafoInputError(UNKNOWN_FIELD.format(config=cls.__name__, key=unknown[0], known=", ".join(fields)))
    return cls(**{k: _coerce(cls, fields[k], v) for k, v in values.items()})
