"""``pafo runs start|list|show|wait|cancel|rebuild``: background runs from the command line.

The experiment flags, their validation and the dataset fingerprint are injected by :mod:`pafo.cli`, so this
module does not import it (and ``pafo runs start`` accepts exactly the flags of ``pafo experiment``). Handlers
return the exit code; bad input raises :class:`PafoInputError`, which the CLI prints as one line with exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from pafo.errors import EXIT_OK, EXIT_TIMEOUT, PafoInputError
from pafo.registry import FORCE_CANCEL_AFTER, SUCCEEDED, RunRecord, RunRegistry

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "add_runs_commands"]

EXIT_FAILED = 1  # the run failed or was cancelled (`runs wait`); EXIT_TIMEOUT (124): `runs wait` gave up
LIST_COLUMNS = ("id", "status", "progress", "stage", "created", "reused_from", "label")
MSG_NO_RUNS = "no runs yet: start one with `pafo runs start`"
MSG_BAD_TIMEOUT = ("--timeout must be a positive number of seconds, got {value} (leave it out to wait as long as "
                   "the run takes)")
MSG_UNKNOWN_SWEEP = ("unknown sweep id {sweep_id!r}: no run has it as its parent (see the label column of "
                     "`pafo runs list`)")
MSG_REBUILT = "rebuilt the run registry from {runs}: {rows} run(s) listed{skipped}{moved}"


def add_runs_commands(
    subparsers: argparse._SubParsersAction,
    add_experiment_arguments: Callable[[argparse.ArgumentParser], None],
    config_from_args: Callable[[argparse.Namespace], dict],
    fingerprint_of: Callable[[dict], str],
) -> argparse.ArgumentParser:
    """Add the ``runs`` command group; each leaf sets ``args.handler(args) -> int``."""
    runs = subparsers.add_parser("runs", help="background runs: start, list, show, wait, cancel")
    commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")

    start = commands.add_parser("start", help="queue a run with the `pafo experiment` flags; prints its id")
    add_experiment_arguments(start)
    start.add_argument("--force", action="store_true", help="run again even if an identical finished run exists")
    start.set_defaults(handler=lambda args: start_run(args, config_from_args, fingerprint_of))

    listing = commands.add_parser("list", help="list runs, newest first")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=list_runs)

    show = commands.add_parser("show", help="status, progress and result of one run")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=show_run)

    wait = commands.add_parser("wait", help="wait for a run: exit 0 succeeded, 1 failed/cancelled, 124 timed out")
    wait.add_argument("run_id", metavar="RUN_ID")
    wait.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds")
    wait.set_defaults(handler=wait_run)

    cancel = commands.add_parser("cancel", help="cancel a run, or every cell of a sweep (forced after 10 s)")
    cancel.add_argument("run_id", metavar="RUN_ID", help="a run id, or a sweep id (sweep-...) for all its cells")
    cancel.set_defaults(handler=cancel_run)

    rebuild = commands.add_parser("rebuild", help="move runs.sqlite aside and rebuild it from the run folders "
                                                  "(after it was deleted or damaged)")
    rebuild.set_defaults(handler=rebuild_runs)
    return runs


def start_run(
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace], dict],
    fingerprint_of: Callable[[dict], str],
    out: TextIO | None = None,
) -> int:
    """Validate the flags, submit (or reuse) the run and print only its id, for scripts to capture."""
    config = config_from_args(args)
    record = RunRegistry().submit(config, fingerprint=fingerprint_of(config), force=args.force)
    print(record.id, file=out or sys.stdout)
    return EXIT_OK


def list_runs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """A table of runs (or ``--json``: a list of the ``show --json`` objects), newest first."""
    out = out or sys.stdout
    records = RunRegistry().list()
    if args.json:
        print(json.dumps([record.to_dict() for record in records]), file=out)
    elif not records:
        print(MSG_NO_RUNS, file=out)
    else:
        print(_table([_list_row(record) for record in records]), file=out)
    return EXIT_OK


def show_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """One run; a succeeded run whose result file is missing or corrupt reports that in ``error``."""
    out = out or sys.stdout
    record = _with_result(RunRegistry(), args.run_id)
    if args.json:
        print(json.dumps(record.to_dict()), file=out)
        return EXIT_OK
    for key, value in record.to_dict().items():
        print(f"{key:12} {_format(key, value)}", file=out)
    if record.result is not None:
        print(f"{'result':12} {json.dumps(record.result)[:300]}", file=out)
    return EXIT_OK


def wait_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Block until the run ends; the exit code says how (0 succeeded, 1 failed/cancelled, 124 timeout)."""
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise PafoInputError(MSG_BAD_TIMEOUT.format(value=args.timeout))
    record = RunRegistry().wait(args.run_id, timeout=args.timeout)
    print(f"{record.id} {record.status}" + (f": {record.error}" if record.error else ""), file=out or sys.stdout)
    if not record.done:
        return EXIT_TIMEOUT
    return EXIT_OK if record.status == SUCCEEDED else EXIT_FAILED


def cancel_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Cancel cooperatively, killing the worker after 10 s; a run that already ended is left as it is. A sweep
    id (``sweep-...``, the cells' parent) cancels every cell of the sweep that has not ended."""
    from pafo.sweep import SWEEP_PREFIX, cancel_sweep, sweep_cells

    registry = RunRegistry()
    if args.run_id.startswith(SWEEP_PREFIX):
        cells = sweep_cells(registry, args.run_id)
        if not cells:
            raise PafoInputError(MSG_UNKNOWN_SWEEP.format(sweep_id=args.run_id))
        asked = {record.id for record in cancel_sweep(registry, args.run_id)}
        records = [registry.cancel(run_id, wait=FORCE_CANCEL_AFTER) for run_id in sorted(asked)]
    else:
        records = [registry.cancel(args.run_id, wait=FORCE_CANCEL_AFTER)]
    for record in records:
        print(f"{record.id} {record.status}" + (f": {record.error}" if record.error else ""), file=out or sys.stdout)
    return EXIT_OK


def rebuild_runs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Recreate the registry from ``runs/*/`` (each run folder holds its config and status)."""
    registry, rows, skipped, moved = RunRegistry.rebuild()
    print(MSG_REBUILT.format(runs=registry.home / "runs", rows=rows,
                             skipped=f"; folders without a run record: {', '.join(skipped)}" if skipped else "",
                             moved=f"; the old file is {moved}" if moved else ""), file=out or sys.stdout)
    return EXIT_OK


def _with_result(registry: RunRegistry, run_id: str) -> RunRecord:
    """The record, with a result loading problem of a succeeded run surfaced as its error."""
    record = registry.load_result(run_id)
    if record.status == SUCCEEDED and record.result_error:
        record.error = record.result_error
    return record


def _list_row(record: RunRecord) -> dict[str, str]:
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created_at))
    values = {**record.to_dict(), "created": created, "label": record.label}
    return {column: _format(column, values.get(column)) for column in LIST_COLUMNS}


def _format(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key == "progress":
        return f"{float(value):.0%}"
    return str(value)


def _table(rows: list[dict[str, str]]) -> str:
    """Plain aligned columns: readable in a terminal and easy to grep."""
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in LIST_COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in LIST_COLUMNS)]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in LIST_COLUMNS) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
