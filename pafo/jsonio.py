"""JSON text parsed with one failure type for every reader.

``json.loads`` raises ``RecursionError`` (a ``RuntimeError``, not a ``ValueError``) for arrays or objects nested
deeper than the interpreter's recursion limit, so a reader that catches ``ValueError`` for a bad file reported
``[[[[…]]]]`` as an internal error. :func:`loads` turns it into :class:`JSONTooDeepError`, a ``ValueError``.
"""

from __future__ import annotations

import json
import sys

__all__ = ["MSG_TOO_DEEP", "JSONTooDeepError", "loads"]

MSG_TOO_DEEP = "JSON nested too deeply to read (arrays/objects over ~{limit} levels deep)"


class JSONTooDeepError(ValueError):
    """JSON text nested deeper than the parser can follow."""


def loads(text: str | bytes):
    """``json.loads``, raising :class:`JSONTooDeepError` (a ``ValueError``) instead of ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(MSG_TOO_DEEP.format(limit=sys.getrecursionlimit())) from None
