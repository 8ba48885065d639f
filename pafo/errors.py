"""The exception types of PAFO Studio and the exit codes the CLI gives them.

Every message names the file, row or field at fault and says how to fix it; the CLI prints it as one line on
stderr and the app shows it with ``st.error``. Exit codes (documented in the README):

- 0 success, 1 an internal error (a bug: one line, the traceback with ``PAFO_DEBUG=1``);
- 2 input the user can fix (:class:`PafoInputError`: a file, a row, a field, an option value);
- 3 a fault of the environment (:class:`PafoEnvironmentError`: the run registry locked or corrupt, a full disk,
  an unwritable home), where retrying the same command may work once the machine is fixed;
- 124 ``pafo runs wait --timeout`` gave up (the run goes on), as GNU ``timeout`` does.
"""

from __future__ import annotations

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_ENVIRONMENT, EXIT_TIMEOUT = 0, 1, 2, 3, 124

MSG_DIVERGED = ("{stage}: training diverged at epoch {epoch} ({what}), so no result is reported; lower --lr (or "
                "--user-lr-scale, --lambda, --dro-step) and run again")


class PafoInputError(ValueError):
    """Input the user can fix: a file, a row, a field or an option value."""


class PafoEnvironmentError(PafoInputError):
    """A fault of the machine, not of the input: locked or corrupt registry, disk full, unwritable folder.

    A subclass of :class:`PafoInputError` so that every place that shows an input error as one message (the app's
    ``st.error``, a failed run's reason) shows this one too; the CLI tells them apart by exit code (3, not 2).
    """


class TrainingDivergedError(PafoInputError):
    """Training produced a non-finite loss or non-finite margins; the options (usually the learning rate) are to
    blame, so it is input the user can fix, and no number from that model is reported."""


class RunCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a run when its ``should_stop`` callback says the user cancelled it."""
