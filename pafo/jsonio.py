"""JSON text parsed with one failure type for every reader, and typed objects read from JSON blocks by their
fields.

``json.loads`` raises ``RecursionError`` (a ``RuntimeError``, not a ``ValueError``) for arrays or objects nested
deeper than the interpreter's recursion limit, so a reader that catches ``ValueError`` for a bad file reported
``[[[[…]]]]`` as an internal error. :func:`loads` turns it into :class:`JSONTooDeepError`, a ``ValueError``.

:func:`from_fields` builds a dataclass from a JSON object whose keys are its fields (the result types of
:mod:`pafo.results`, :mod:`pafo.compare`, :mod:`pafo.slices` and :mod:`pafo.extras`): one reading of every such
block, so a type's JSON is its fields and nothing spells a key twice.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["MSG_TOO_DEEP", "JSONTooDeepError", "from_fields", "loads"]

MSG_TOO_DEEP = "JSON nested too deeply to read (arrays/objects over ~{limit} levels deep)"


class JSONTooDeepError(ValueError):
    """JSON text nested deeper than the parser can follow."""


def loads(text: str | bytes):
    """``json.loads``, raising :class:`JSONTooDeepError` (a ``ValueError``) instead of ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(MSG_TOO_DEEP.format(limit=sys.getrecursionlimit())) from None


def from_fields(cls: type, block: dict | None, **convert: Callable[[Any], Any]):
    """An instance of the dataclass ``cls`` from the JSON object ``block``: each field from the key of its name,
    through ``convert[name]`` when given. A missing key takes the field's default; a field without one reads as
    ``None`` (through its converter, which says what an absent value means). Keys that are no field are left out
    (a block may carry another type's keys too)."""
    block = block or {}
    values = {}
    for field in dataclasses.fields(cls):
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        if not field.init or (field.name not in block and has_default):
            continue
        value = block.get(field.name)
        values[field.name] = convert[field.name](value) if field.name in convert else value
    return cls(**values)
