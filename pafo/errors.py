"""The one exception type for bad user input.

Every message names the file, row or field at fault and says how to fix it; the CLI prints it as one line on
stderr with exit code 2 and the app shows it with ``st.error``.
"""

from __future__ import annotations


class PafoInputError(ValueError):
    """Input the user can fix: a file, a row, a field or an option value."""


class RunCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a run when its ``should_stop`` callback says the user cancelled it."""
