"""The run registry: one SQLite file that every process (app, CLI, workers) reads and writes.

Training runs live in worker processes of their own (see :mod:`pafo.worker`), so the registry is the only place
where their state is shared. There is no daemon: every read (:meth:`RunRegistry.get`, :meth:`RunRegistry.list`,
:meth:`RunRegistry.wait`) first *reconciles* running rows against their worker (a dead pid or a stale heartbeat
turns the run ``failed`` with the reason) and then *dispatches* queued runs FIFO up to the concurrency limit. So
no run stays ``running`` forever and the queue advances as long as anyone looks at it, and a worker that finishes
starts the next queued run itself.

Why SQLite and not a task-queue library: runs need per-run processes with their own session (so a cancel can
kill a whole process group), progress and heartbeat rows, cached reuse and crash detection; a queue such as
huey brings a consumer daemon and still needs all of that on top. WAL mode lets readers (the app polling
progress) run alongside the writing worker, ``BEGIN IMMEDIATE`` serialises state changes between processes and
the busy timeout turns short contention into waiting instead of errors.

Faults: each run folder ``runs/<id>/`` also holds the run's ``config.json`` and a ``status.json`` written with every
change of state, so the database can always be rebuilt from the folders (:meth:`RunRegistry.rebuild`, and
automatically when ``runs.sqlite`` is missing or 0 bytes, the empty file moved aside; a process whose database file
was deleted or replaced reconnects to the new one before its next read or write, so a finishing worker records its
run there). Opening checks the file's integrity (``PRAGMA quick_check``). A run counts as *published* once its
``manifest.json`` (checksums of its artifacts, :mod:`pafo.manifest`) exists: a dead or killed worker whose run was
published ends ``succeeded``, otherwise ``cancelled``/``failed``, and only a run whose artifacts still match their
checksums and whose manifest names the config hash and dataset fingerprint asked for is reused. A result path read
from a run folder's ``status.json`` (or stored in a row) is only followed to ``result.json`` of that run's own
folder or of the run it reused.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from pafo.device import without_execution
from pafo.errors import PafoEnvironmentError, PafoInputError
from pafo.jsonio import loads
from pafo.manifest import check_binding, is_published, verify_manifest
from pafo.paths import PACKAGE_ROOT, atomic_write_text, ensure_home, pafo_home, resolve_inside

__all__ = [
    "ACTIVE_STATUSES",
    "AUDIT_TARGET",
    "CANCELLED",
    "DEFAULT_STALE_AFTER",
    "DEFAULT_TARGET",
    "FAILED",
    "FORCE_CANCEL_AFTER",
    "PRESENTATION_MODULES",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "SUCCEEDED",
    "SWEEP_PREFIX",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Outcome",
    "RunRecord",
    "RunRegistry",
    "can_transition",
    "code_version",
    "config_hash",
    "decide_outcome",
    "new_run_id",
    "process_alive",
    "result_code",
    "source_version",
    "worker_env",
]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES = frozenset({QUEUED, RUNNING})
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})

#: Allowed state changes. Terminal states are final, so a late write from a killed worker cannot undo a cancel.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

DEFAULT_TARGET = "pafo.experiment:run_experiment"
AUDIT_TARGET = "pafo.audit:run_audit"  # an audit of given predictions (pafo.audit): a run of kind "audit"
DEFAULT_STALE_AFTER = 20.0  # seconds without heartbeat before a running run counts as dead (worker beats every 2 s)
FORCE_CANCEL_AFTER = 10.0  # seconds between a cancel request and the forced kill of the worker's process group
DEFAULT_LOCK_TIMEOUT = 10.0  # seconds to wait for another process's write lock before giving up
DB_NAME = "runs.sqlite"
DB_SIDE_FILES = ("-wal", "-shm", "-journal")
LOCK_NAME = "runs.lock"  # serialises creating (and rebuilding) the database between processes
RUNS_DIR = "runs"
RESULT_NAME = "result.json"
LOG_NAME = "log.txt"
CONFIG_NAME = "config.json"
STATUS_NAME = "status.json"
SCHEMA_VERSION = 1
SQLITE_READONLY_DBMOVED = 1032  # extended code: the database file was deleted or moved while open

STAGE_STARTING = "starting worker"
STAGE_REUSED = "reused"

MSG_CORRUPT_DB = (
    "run registry {path} is damaged or not a readable SQLite database ({detail}): run `pafo runs rebuild`, which "
    "moves it aside and rebuilds it from the run folders in {runs}"
)
MSG_READONLY_DB = (
    "run registry {path} cannot be written ({detail}): make {home} writable, or point $PAFO_HOME at a writable folder"
)
MSG_MOVED_DB = "run registry {path} was deleted or replaced while in use: retry (it is rebuilt from {runs})"
MSG_FOREIGN_DB = (
    "run registry {path} is an SQLite database but not a PAFO run registry (missing {detail}): move it aside "
    "or point $PAFO_HOME elsewhere"
)
MSG_LOCKED_DB = (
    "run registry {path} stayed locked by another process for more than {timeout:g} s: wait for it to finish "
    "or stop the process holding the lock, then retry"
)
MSG_DISK_FULL_DB = "disk full while writing the run registry {path}: free space and retry"
MSG_DISK_FULL = "disk full while writing {file}: free space and restart the run"
MSG_BAD_LIMIT = "max concurrent runs ($PAFO_MAX_CONCURRENT) must be a positive integer, got {value!r}"
MSG_UNKNOWN_RUN = "unknown run id {run_id!r}: list the runs with `pafo runs list`"
MSG_BAD_CONFIG = "run config is invalid: {detail}"
MSG_BAD_TARGET = "run config field 'target' must look like 'package.module:function', got {target!r}"
MSG_RESULT_MISSING = "result file {path} of run {run_id} is missing: re-run it with --force"
MSG_RESULT_CORRUPT = "result file {path} of run {run_id} is corrupt ({detail}): re-run it with --force"
MSG_NO_RESULT = "run {run_id} has no result (status {status})"
MSG_RESULT_OUTSIDE = ("result file {path} of run {run_id} lies outside its run folder (and that of the run it "
                      "reused), so it is not read: re-run it with --force")

REASON_CANCELLED = "cancelled by user"
REASON_CANCELLED_QUEUED = "cancelled by user before it started"
REASON_CANCELLED_FORCED = "cancelled by user: the worker did not stop within {after:g} s and was killed"
REASON_CANCELLED_GONE = "cancelled by user (the worker stopped before recording it)"
REASON_STALE = "no heartbeat from worker pid {pid} for {age:.0f} s (limit {limit:g} s): it hung or was stopped"
REASON_EXIT_SIGNAL = "worker pid {pid} was killed by signal {signal} before finishing"
REASON_EXIT_CODE = "worker pid {pid} exited with code {code} before recording a result (see its log.txt)"
REASON_EXIT_ZERO = "worker pid {pid} exited without recording a result (see its log.txt)"
REASON_GONE = "worker pid {pid} is gone (killed or crashed) before finishing; see its log.txt"
REASON_SPAWN_FAILED = "could not start the worker process: {detail}"
REASON_NO_STATUS = "recovered from {path} without a status record: its outcome is unknown"
REASON_RESULT_OUTSIDE = ("recovered from {path}: its status record names a result outside the run folder "
                         "({result_path}), which is not read")
STAGE_RECOVERED = "done (recorded from its published result)"

_REQUIRED_COLUMNS = (
    "id", "created_at", "started_at", "finished_at", "config_json", "config_hash", "dataset_fingerprint",
    "code_version", "status", "progress", "stage", "heartbeat_at", "pid", "error", "result_path",
    "reused_from", "cancel_requested", "parent_id", "label",
)  # fmt: skip

# Every column but the config, which has its own file: what runs/<id>/status.json holds.
_RECORD_COLUMNS = tuple(column for column in _REQUIRED_COLUMNS if column != "config_json")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    config_json TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    code_version TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    heartbeat_at REAL,
    pid INTEGER,
    error TEXT,
    result_path TEXT,
    reused_from TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    parent_id TEXT,
    label TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
CREATE INDEX IF NOT EXISTS runs_cache ON runs (config_hash, dataset_fingerprint, code_version, status);
"""

# Popen handles of workers this process started: polling them reaps zombies and gives exact exit codes.
_SPAWNED: dict[str, subprocess.Popen] = {}
_SPAWNED_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------- pure helpers


class Outcome(NamedTuple):
    """What reconciliation decided for a run: its new status and the reason shown to the user."""

    status: str
    reason: str


def can_transition(current: str, new: str) -> bool:
    """Whether a run may go from ``current`` to ``new``; terminal states never change."""
    return new in TRANSITIONS.get(current, frozenset())


def decide_outcome(
    status: str,
    *,
    pid: int | None,
    pid_alive: bool | None,
    heartbeat_age: float | None,
    stale_after: float,
    cancel_requested: bool,
    exit_code: int | None = None,
) -> Outcome | None:
    """Decide whether a ``running`` run is really still running; ``None`` means leave it as it is.

    Pure on purpose (no clock, no processes, no database) so every combination is unit-tested. ``pid_alive`` is
    ``None`` when unknown (no pid recorded yet): only the heartbeat decides then. ``exit_code`` is the worker's
    return code when this process is its parent (negative: killed by that signal). A run the user asked to
    cancel ends ``cancelled`` however its worker stopped, never ``failed``.
    """
    if status != RUNNING:
        return None
    dead = pid_alive is False or exit_code is not None
    stale = heartbeat_age is not None and heartbeat_age > stale_after
    if not dead and not stale:
        return None
    if cancel_requested:
        return Outcome(CANCELLED, REASON_CANCELLED_GONE)
    if dead:
        return Outcome(FAILED, _exit_reason(pid, exit_code))
    return Outcome(FAILED, REASON_STALE.format(pid=pid, age=heartbeat_age, limit=stale_after))


def _exit_reason(pid: int | None, exit_code: int | None) -> str:
    """Explain how a worker went away, as precisely as the exit information allows."""
    if exit_code is None:
        return REASON_GONE.format(pid=pid)
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = str(-exit_code)
        return REASON_EXIT_SIGNAL.format(pid=pid, signal=name)
    if exit_code == 0:
        return REASON_EXIT_ZERO.format(pid=pid)
    return REASON_EXIT_CODE.format(pid=pid, code=exit_code)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a config: the cache key (with dataset fingerprint and code version).

    Execution settings (the ``execution`` key, e.g. the device) are left out: they change where a run computes,
    not what, so a config without them hashes as it always did."""
    return hashlib.sha256(canonical_json(without_execution(config)).encode("utf-8")).hexdigest()


#: Modules that present, store or schedule results but never compute them: editing a label, a colour, a message or
#: the registry itself keeps finished runs reusable. Every other ``pafo/`` source counts (README: reuse).
PRESENTATION_MODULES = frozenset({"__init__.py", "appstate.py", "cli.py", "conditions.py", "digests.py", "effects.py",
                                  "errors.py", "manifest.py", "paths.py", "registry.py", "report.py", "runs_cli.py",
                                  "slice_report.py", "sweep.py", "unseen_report.py", "worker.py"})


@lru_cache(maxsize=1)
def code_version() -> str:
    """The installed package's ``source_version``, computed once per process."""
    return source_version(PACKAGE_ROOT / "pafo")


#: Arguments that only describe: an option's help line, form label, the configurations in which it has an effect
#: and its sweep grid; a method's label, colour and progress-bar cost.
DESCRIPTIVE_ARGUMENTS = {"option": {1: "help", -1: "label", -2: "active_when", -3: "grid"},
                         "MethodSpec": {3: "label", 4: "colour", 5: "cost"}}


class _ResultCode(ast.NodeTransformer):
    """A module's syntax tree without what cannot change a result: docstrings and descriptive arguments (comments
    and layout are not in the tree at all)."""

    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return super().generic_visit(node)

    def visit_Call(self, node: ast.Call):
        drop = DESCRIPTIVE_ARGUMENTS.get(getattr(node.func, "id", None) or getattr(node.func, "attr", None), {})
        node.args = [arg for i, arg in enumerate(node.args) if i not in drop]
        node.keywords = [k for k in node.keywords if k.arg not in drop.values()]
        return self.generic_visit(node)


def result_code(source: str) -> str:
    """What of a module's source counts for reuse (:class:`_ResultCode`), as text."""
    return ast.dump(_ResultCode().visit(ast.parse(source)), annotate_fields=False)


def source_version(package: Path) -> str:
    """Short sha256 over the ``pafo/**/*.py`` sources that compute results (sorted by path; ``PRESENTATION_MODULES``
    left out), each reduced to :func:`result_code`: a change to how results are computed invalidates the cache; a
    change to how they are shown, described or commented does not (README: "When a finished run is reused")."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(package).as_posix() in PRESENTATION_MODULES:
            continue
        digest.update(path.relative_to(package).as_posix().encode("utf-8") + b"\0")
        digest.update(result_code(path.read_text(encoding="utf-8")).encode("utf-8") + b"\0")
    return digest.hexdigest()[:12]


#: A sweep's id starts so (``pafo.sweep.new_sweep_id``: the prefix and a run id); it is the ``parent_id`` of each of
#: its cells, which is how run pickers group them.
SWEEP_PREFIX = "sweep-"


def new_run_id() -> str:
    """A short id that sorts by creation time (UTC second) with a random tail against collisions."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def process_alive(pid: int | None, run_id: str | None = None) -> bool | None:
    """Whether ``pid`` is a live (not zombie) process, and on Linux still the worker of ``run_id``.

    Checking the command line guards against pid reuse; ``None`` means no pid to check.
    """
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        if run_id is not None and run_id.encode() not in (proc / "cmdline").read_bytes():
            return False
    except (OSError, IndexError):
        pass  # no /proc (not Linux) or the process just went away: trust os.kill
    return True


def _concurrency_limit(value: int | None) -> int:
    """The explicit limit, else ``$PAFO_MAX_CONCURRENT``, else 1; anything but a positive integer is refused."""
    raw = value if value is not None else os.environ.get("PAFO_MAX_CONCURRENT") or 1
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1:
        raise PafoInputError(MSG_BAD_LIMIT.format(value=raw))
    return limit


def _plain_name(name: object) -> bool:
    """Whether ``name`` can only be one folder's name inside ``runs/`` (no separator, no ``..``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _validate_config(config: Any) -> str:
    """Check that a config can be stored and run; return its canonical JSON."""
    if not isinstance(config, dict):
        raise PafoInputError(MSG_BAD_CONFIG.format(detail=f"expected a JSON object, got {type(config).__name__}"))
    try:
        text = canonical_json(config)
    except (TypeError, ValueError) as exc:
        raise PafoInputError(MSG_BAD_CONFIG.format(detail=f"not JSON-serialisable: {exc}")) from None
    target = config.get("target", DEFAULT_TARGET)
    module, _, function = str(target).partition(":")
    if not isinstance(target, str) or not module or not function.isidentifier():
        raise PafoInputError(MSG_BAD_TARGET.format(target=target))
    return text


# --------------------------------------------------------------------------------------------- records


@dataclass
class RunRecord:
    """One row of the registry, as callers see it (times are Unix seconds, paths absolute)."""

    id: str
    status: str
    progress: float
    stage: str
    pid: int | None
    reused_from: str | None
    result_path: str | None
    error: str | None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    config: dict = field(default_factory=dict)
    config_hash: str = ""
    dataset_fingerprint: str = ""
    code_version: str = ""
    cancel_requested: bool = False
    parent_id: str | None = None
    label: str | None = None
    result: dict | None = None  # filled by RunRegistry.load_result
    result_error: str | None = None  # why the result could not be loaded, if it could not

    SUMMARY_KEYS = ("id", "status", "progress", "stage", "pid", "reused_from", "result_path", "error")

    @property
    def kind(self) -> str:
        """``audit`` for an audit of given predictions (pafo.audit), else ``experiment``."""
        return "audit" if self.config.get("target") == AUDIT_TARGET else "experiment"

    @property
    def done(self) -> bool:
        """Whether the run reached a final state."""
        return self.status in TERMINAL_STATUSES

    def to_dict(self, *, full: bool = False) -> dict:
        """The ``pafo runs show --json`` keys (exactly those), or every field with ``full=True``."""
        data = asdict(self)
        return data if full else {key: data[key] for key in self.SUMMARY_KEYS}


def _record_from_row(row: sqlite3.Row, home: Path) -> RunRecord:
    """Turn a ``runs`` row into a record with the result path made absolute under ``home``."""
    result_path = row["result_path"]
    return RunRecord(
        id=row["id"],
        status=row["status"],
        progress=float(row["progress"]),
        stage=row["stage"],
        pid=row["pid"],
        reused_from=row["reused_from"],
        result_path=str(home / result_path) if result_path else None,
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"],
        config=json.loads(row["config_json"]),
        config_hash=row["config_hash"],
        dataset_fingerprint=row["dataset_fingerprint"],
        code_version=row["code_version"],
        cancel_requested=bool(row["cancel_requested"]),
        parent_id=row["parent_id"],
        label=row["label"],
    )


# --------------------------------------------------------------------------------------------- registry


class RunRegistry:
    """Runs, their progress and their results, shared by every process through ``$PAFO_HOME/runs.sqlite``.

    Parameters
    ----------
    home : folder holding ``runs.sqlite`` and ``runs/<id>/``; default :func:`pafo.paths.pafo_home`.
    max_concurrent : how many runs may be ``running`` at once; default ``$PAFO_MAX_CONCURRENT`` or 1.
    stale_after : seconds without heartbeat after which a running run is declared failed.
    lock_timeout : seconds to wait for another process's write lock before raising :class:`PafoEnvironmentError`
        (default :data:`DEFAULT_LOCK_TIMEOUT`).
    force_cancel_after : seconds a cancelled run gets to stop on its own before its process group is killed.
    """

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        max_concurrent: int | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        lock_timeout: float | None = None,
        force_cancel_after: float = FORCE_CANCEL_AFTER,
    ) -> None:
        self.home = ensure_home(Path(home)) if home is not None else pafo_home()
        self.db_path = self.home / DB_NAME
        self.max_concurrent = _concurrency_limit(max_concurrent)
        self.stale_after = float(stale_after)
        self.lock_timeout = float(DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout)
        self.force_cancel_after = float(force_cancel_after)
        self._local = threading.local()
        self._connect()

    # ---------------------------------------------------------------- connection and error mapping

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads), reopened when the
        database file was deleted or replaced since: writes to the old, unlinked file would be lost."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._file_id() == self._local.file_id:
                return conn
            self.close()  # safe: SQLite neither checkpoints into nor deletes the journal of a moved database
        if self.db_path.exists() and not self._is_empty_file():
            return self._open(created=False)
        with self._home_lock():  # one process creates the file and fills it from the run folders
            self._move_aside_if_empty()
            return self._open(created=self._drop_stale_side_files())

    def _file_id(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.db_path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _is_empty_file(self) -> bool:
        try:
            return self.db_path.stat().st_size == 0
        except OSError:
            return False

    def _move_aside_if_empty(self) -> None:
        """A 0-byte ``runs.sqlite`` (truncated by a full disk or a stray ``>``) holds no run, but SQLite would open
        it as a new empty registry and list "no runs yet": move it and its journals aside (nothing is deleted) so
        it is rebuilt from the run folders like a missing one. Called under the home lock, where no process is
        creating the file (a new database is never 0 bytes once its creator released the lock)."""
        if self.db_path.exists() and self._is_empty_file():
            _move_aside(self.db_path)

    def _drop_stale_side_files(self) -> bool:
        """Before a missing database is created anew, remove the journal files of the deleted one: SQLite would
        otherwise replay them into the new file. Returns whether the database is (still) missing."""
        if self.db_path.exists():
            return False
        for suffix in DB_SIDE_FILES:
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        return True

    def _open(self, *, created: bool) -> sqlite3.Connection:
        with self._errors():
            conn = sqlite3.connect(self.db_path, timeout=self.lock_timeout, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes; fast commits
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                conn.close()
                raise
        self._local.conn, self._local.file_id = conn, self._file_id()
        try:
            self._init_schema(rebuild=created)
        except BaseException:
            self.close()
            raise
        return conn

    def _home_lock(self) -> contextlib.AbstractContextManager[None]:
        return _home_lock(self.home, self.lock_timeout)

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _format(self, template: str, **values: Any) -> str:
        return template.format(path=self.db_path, home=self.home, runs=self.home / RUNS_DIR, **values)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate SQLite failures into one clear :class:`PafoEnvironmentError` that names the file and the fix."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text, detail = str(exc).lower(), " ".join(str(exc).split())
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_READONLY_DBMOVED:
                raise PafoEnvironmentError(self._format(MSG_MOVED_DB)) from exc
            if "locked" in text or "busy" in text:
                raise PafoEnvironmentError(self._format(MSG_LOCKED_DB, timeout=self.lock_timeout)) from exc
            if "full" in text:
                raise PafoEnvironmentError(self._format(MSG_DISK_FULL_DB)) from exc
            if "readonly" in text or "unable to open" in text or "read-only" in text:
                raise PafoEnvironmentError(self._format(MSG_READONLY_DB, detail=detail)) from exc
            if "no such" in text or "has no column" in text:
                raise PafoEnvironmentError(self._format(MSG_FOREIGN_DB, detail=detail)) from exc
            raise PafoEnvironmentError(self._format(MSG_CORRUPT_DB, detail=detail)) from exc
        except sqlite3.IntegrityError:
            raise  # a constraint the code broke: a bug, not a damaged file
        except sqlite3.DatabaseError as exc:
            raise PafoEnvironmentError(self._format(MSG_CORRUPT_DB, detail=" ".join(str(exc).split()))) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: takes the write lock up front so read-then-write never races."""
        conn = self._connect()
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full on COMMIT)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Run a read-only query with error translation."""
        conn = self._connect()
        with self._errors():
            return conn.execute(sql, params).fetchall()

    def _init_schema(self, *, rebuild: bool = False) -> None:
        """Check an existing registry (integrity, then that it is ours), or create the tables of a new one and,
        when ``rebuild``, fill them from the run folders. An existing registry is only read (no lock taken)."""
        if not rebuild:
            problems = [row[0] for row in self._read("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise PafoEnvironmentError(self._format(MSG_CORRUPT_DB, detail=" ".join(problems[0].split())))
            if self._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION:
                self._check_columns(self._connect())
                return
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise PafoEnvironmentError(self._format(MSG_FOREIGN_DB, detail=f"schema {version}"))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            self._check_columns(conn)
            for statement in filter(str.strip, _INDEXES.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if rebuild:
                self._restore_rows(conn)

    def _check_columns(self, conn: sqlite3.Connection) -> None:
        """Refuse an SQLite file whose ``runs`` table is not ours instead of failing later on a query."""
        with self._errors():
            columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise PafoEnvironmentError(self._format(MSG_FOREIGN_DB, detail="columns " + ", ".join(missing)))

    # ---------------------------------------------------------------- run folders: config and status records

    def _save_status(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Mirror the run's row into ``runs/<id>/status.json`` (inside the caller's transaction, so the file
        follows the database's order of changes): what :meth:`rebuild` reads back."""
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return
        record = {column: row[column] for column in _RECORD_COLUMNS}
        path = self.run_dir(run_id) / STATUS_NAME
        try:
            atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
        except OSError as exc:  # the change is rolled back with it: the folder and the database never disagree
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PafoEnvironmentError(MSG_DISK_FULL.format(file=path)) from exc
            raise PafoEnvironmentError(MSG_READONLY_DB.format(path=path, home=self.home,
                                                              detail=exc.strerror or exc)) from exc

    def _restore_rows(self, conn: sqlite3.Connection) -> tuple[int, list[str]]:
        """Insert a row for every run folder that has none; returns (rows added, folders skipped)."""
        added, skipped = 0, []
        runs = self.home / RUNS_DIR
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            values = self._row_from_folder(run_dir)
            if values is None:
                skipped.append(run_dir.name)
                continue
            columns = ", ".join(values)
            cursor = conn.execute(f"INSERT OR IGNORE INTO runs ({columns}) VALUES ({', '.join('?' * len(values))})",
                                  tuple(values.values()))
            added += cursor.rowcount
        return added, skipped

    def _row_from_folder(self, run_dir: Path) -> dict | None:
        """The ``runs`` row recorded in a run folder (status.json + config.json), or ``None`` if it holds none.

        A folder from before status records existed keeps its config: it is listed as succeeded if it holds a
        result, else as failed with the reason, and never reused (its code version is unknown).
        """
        try:
            config = loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
            config_text = canonical_json(config)
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        try:
            record = loads((run_dir / STATUS_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            record = None
        if not isinstance(record, dict) or record.get("id") != run_dir.name or record.get("status") not in STATUSES:
            has_result = (run_dir / RESULT_NAME).is_file()
            record = {"id": run_dir.name, "created_at": run_dir.stat().st_mtime, "config_hash": config_hash(config),
                      "dataset_fingerprint": "", "code_version": "unknown",
                      "status": SUCCEEDED if has_result else FAILED, "progress": 1.0 if has_result else 0.0,
                      "stage": "done" if has_result else FAILED,
                      "result_path": f"{RUNS_DIR}/{run_dir.name}/{RESULT_NAME}" if has_result else None,
                      "error": None if has_result else REASON_NO_STATUS.format(path=run_dir)}
        defaults = {"progress": 0.0, "stage": "", "cancel_requested": 0, "dataset_fingerprint": "",
                    "code_version": "unknown", "config_hash": config_hash(config), "created_at": time.time()}
        values = {column: record.get(column, defaults.get(column)) for column in _RECORD_COLUMNS}
        for column, default in defaults.items():
            if values[column] is None:
                values[column] = default
        if values["result_path"] and self._owned_result(run_dir.name, values["reused_from"],
                                                        values["result_path"]) is None:
            values.update(error=REASON_RESULT_OUTSIDE.format(path=run_dir, result_path=values["result_path"]),
                          result_path=None, status=FAILED if values["status"] == SUCCEEDED else values["status"])
        return {**values, "config_json": config_text}

    def _ensure_row(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Re-register a run from its folder when its row is missing (the database was replaced mid-run)."""
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            values = self._row_from_folder(self.run_dir(run_id))
            if values is not None:
                conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(values)}) "
                             f"VALUES ({', '.join('?' * len(values))})", tuple(values.values()))

    @classmethod
    def rebuild(cls, home: Path | str | None = None, **options: Any) -> tuple[RunRegistry, int, list[str], Path | None]:
        """Move the database aside (if there is one) and rebuild it from the run folders.

        Returns the new registry, how many runs it lists, the folders that held no run record, and where the old
        file went. Workers still running reconnect to the new file on their next write.
        """
        home = ensure_home(Path(home)) if home is not None else pafo_home()
        db_path, moved = home / DB_NAME, None
        with _home_lock(home, float(options.get("lock_timeout") or DEFAULT_LOCK_TIMEOUT)):
            if db_path.exists():
                moved = _move_aside(db_path)
        registry = cls(home, **options)
        rows = registry._read("SELECT COUNT(*) FROM runs")[0][0]
        runs = home / RUNS_DIR
        folders = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
        listed = {row[0] for row in registry._read("SELECT id FROM runs")}
        return registry, rows, [name for name in folders if name not in listed], moved

    # ---------------------------------------------------------------- paths

    def run_dir(self, run_id: str) -> Path:
        """Where a run's worker writes its artifacts: ``<home>/runs/<id>/``."""
        return self.home / RUNS_DIR / run_id

    def _owned_result(self, run_id: str, reused_from: str | None, result_path: str | None) -> Path | None:
        """``result_path`` (as stored: relative to home) resolved, only when it is the result.json of this run's
        folder or of the run it reused, symlinks followed; ``None`` otherwise: a status record (or a row restored
        from one) can never make the registry read a file elsewhere."""
        runs = self.home / RUNS_DIR
        for owner in (run_id, reused_from):
            if owner and _plain_name(owner) and result_path == f"{RUNS_DIR}/{owner}/{RESULT_NAME}":
                target = resolve_inside(runs, f"{owner}/{RESULT_NAME}")
                if target is not None and target.parent == runs.resolve() / owner:
                    return target
        return None

    def result_file(self, record: RunRecord) -> Path | None:
        """A record's result.json, when it lies inside its own run folder or that of the run it reused."""
        if not record.result_path:
            return None
        for owner in (record.id, record.reused_from):
            if owner and Path(record.result_path) == self.home / RUNS_DIR / owner / RESULT_NAME:
                return self._owned_result(record.id, record.reused_from, f"{RUNS_DIR}/{owner}/{RESULT_NAME}")
        return None

    def _relative(self, path: Path | str) -> str:
        """Store paths relative to home so the registry survives moving ``$PAFO_HOME``."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.home.resolve()).as_posix()
        except ValueError:
            return str(path)

    # ---------------------------------------------------------------- submit and read

    def submit_config(self, config, **options) -> RunRecord:
        """:meth:`submit` for a config object (``ExperimentConfig``, ``AuditConfig``): its ``to_dict()`` under
        its dataset ``fingerprint()``."""
        return self.submit(config.to_dict(), fingerprint=config.fingerprint(), **options)

    def submit(
        self,
        config: dict,
        *,
        fingerprint: str,
        force: bool = False,
        parent_id: str | None = None,
        label: str | None = None,
        start: bool = True,
    ) -> RunRecord:
        """Queue a run (and start it if a slot is free), or reuse a finished identical run unless ``force``.

        A reused run is a new ``succeeded`` row with ``reused_from`` set and the earlier run's result, so it
        answers at once without spawning anything. An identical run that is still queued or running (and not
        being cancelled) is returned itself, even with ``force``: the same config is never trained twice at once.
        """
        config_text = _validate_config(config)
        digest, version, now = config_hash(config), code_version(), time.time()
        with self._write() as conn:
            active = self._find_active(conn, digest, str(fingerprint), version)
            if active is not None:
                return self.get(active, refresh=False)
            reusable = None if force else self._find_reusable(conn, digest, str(fingerprint), version)
            run_id = self._insert(conn, config_text, digest, str(fingerprint), version, now, reusable, parent_id, label)
        if start and reusable is None:
            self.dispatch()
        return self.get(run_id, refresh=False)

    def _find_active(self, conn: sqlite3.Connection, digest: str, fingerprint: str, version: str) -> str | None:
        """The oldest queued or running run with the same cache key that nobody asked to cancel."""
        row = conn.execute(
            "SELECT id FROM runs WHERE config_hash = ? AND dataset_fingerprint = ? AND code_version = ? "
            "AND status IN (?, ?) AND cancel_requested = 0 ORDER BY created_at, rowid LIMIT 1",
            (digest, fingerprint, version, QUEUED, RUNNING),
        ).fetchone()
        return None if row is None else row["id"]

    def _find_reusable(self, conn: sqlite3.Connection, digest: str, fingerprint: str, version: str):
        """The newest succeeded run with the same cache key whose artifacts still match the checksums recorded
        when it was published (a truncated or edited result is retrained, never served) and whose manifest says
        it is the result of this config on this data (a folder whose content was swapped for another run's is
        retrained too)."""
        rows = conn.execute(
            "SELECT id, reused_from, result_path FROM runs WHERE config_hash = ? AND dataset_fingerprint = ? "
            "AND code_version = ? AND status = ? ORDER BY finished_at DESC, rowid DESC",
            (digest, fingerprint, version, SUCCEEDED),
        ).fetchall()
        for row in rows:
            result = self._owned_result(row["id"], row["reused_from"], row["result_path"])
            if result is not None and verify_manifest(result.parent) is None and \
                    check_binding(result.parent, config_hash=digest, fingerprint=fingerprint) is None:
                return row
        return None

    def _insert(self, conn, config_text, digest, fingerprint, version, now, reusable, parent_id, label) -> str:
        """Insert the new row (queued, or succeeded when reused) under a fresh id."""
        status, origin, result_path, stage, progress, finished = QUEUED, None, None, "queued", 0.0, None
        if reusable is not None:
            origin = reusable["reused_from"] or reusable["id"]
            status, result_path, stage, progress, finished = SUCCEEDED, reusable["result_path"], STAGE_REUSED, 1.0, now
        while True:
            run_id = new_run_id()
            try:
                conn.execute(
                    "INSERT INTO runs (id, created_at, finished_at, config_json, config_hash, dataset_fingerprint, "
                    "code_version, status, progress, stage, result_path, reused_from, parent_id, label) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, now, finished, config_text, digest, fingerprint, version, status, progress, stage,
                     result_path, origin, parent_id, label),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                continue  # same second and same random tail: draw again
            atomic_write_text(self.run_dir(run_id) / CONFIG_NAME, json.dumps(json.loads(config_text), indent=2,
                                                                             sort_keys=True))
            self._save_status(conn, run_id)
            return run_id

    def get(self, run_id: str, *, refresh: bool = True) -> RunRecord:
        """One run; first reconciles and dispatches (unless ``refresh=False``) so the answer is current."""
        if refresh:
            self.refresh()
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise PafoInputError(MSG_UNKNOWN_RUN.format(run_id=run_id))
        return _record_from_row(rows[0], self.home)

    def list(self, *, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """All runs, newest first (optionally one status only)."""
        self.refresh()
        sql, params = "SELECT * FROM runs", ()
        if status is not None:
            sql, params = sql + " WHERE status = ?", (status,)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_record_from_row(row, self.home) for row in self._read(sql, params)]

    def epochs(self, run_id: str) -> list[dict]:
        """Per-epoch metrics in the order the worker reported them, each with ``seq`` and ``at``."""
        rows = self._read("SELECT seq, at, metrics_json FROM epochs WHERE run_id = ? ORDER BY seq", (run_id,))
        return [{"seq": row["seq"], "at": row["at"], **json.loads(row["metrics_json"])} for row in rows]

    def wait(self, run_id: str, timeout: float | None = None, *, poll: float = 0.2) -> RunRecord:
        """Block until the run is final or ``timeout`` seconds pass; the caller checks ``record.done``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get(run_id)
            if record.done or (deadline is not None and time.monotonic() >= deadline):
                return record
            remaining = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(remaining)

    def load_result(self, run_id: str) -> RunRecord:
        """The record with ``result`` loaded from result.json, or ``result_error`` saying why it could not be.

        Never raises for a missing or corrupt file: the app shows the message and keeps working.
        """
        record = self.get(run_id)
        if record.status != SUCCEEDED or not record.result_path:
            record.result_error = MSG_NO_RESULT.format(run_id=run_id, status=record.status)
            return record
        path = self.result_file(record)
        if path is None:
            record.result_error = MSG_RESULT_OUTSIDE.format(path=record.result_path, run_id=run_id)
            return record
        try:
            data = loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            record.result_error = MSG_RESULT_MISSING.format(path=path, run_id=run_id)
            return record
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            record.result_error = MSG_RESULT_CORRUPT.format(path=path, run_id=run_id, detail=exc)
            return record
        if not isinstance(data, dict):
            record.result_error = MSG_RESULT_CORRUPT.format(path=path, run_id=run_id, detail="not a JSON object")
            return record
        record.result = data
        return record

    # ---------------------------------------------------------------- runs executed elsewhere (a Ray cluster)

    def claim(self, run_id: str, stage: str) -> bool:
        """Take a queued run away from :meth:`dispatch` for an outside executor (``pafo sweep --backend ray``):
        it becomes ``running`` without a pid until the executor starts its worker, whose ``mark_running`` then
        records the pid. Until then only the heartbeat says it is alive (see :meth:`beat_unstarted`)."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, pid = NULL, started_at = ?, heartbeat_at = ?, stage = ? "
                "WHERE id = ? AND status = ? AND cancel_requested = 0",
                (RUNNING, now, now, str(stage), run_id, QUEUED),
            )
            if cursor.rowcount == 1:
                self._save_status(conn, run_id)
            return cursor.rowcount == 1

    def settle_exited(self, run_id: str, pid: int, exit_code: int) -> bool:
        """Record how a worker that the caller waited on (not spawned by this registry) ended, when it did not
        record that itself: the exit code gives the precise reason (e.g. killed by SIGKILL)."""
        record = self.get(run_id, refresh=False)
        outcome = decide_outcome(record.status, pid=pid, pid_alive=False, heartbeat_age=None,
                                 stale_after=self.stale_after, cancel_requested=record.cancel_requested,
                                 exit_code=exit_code)
        return outcome is not None and self._settle(run_id, outcome)

    def beat_unstarted(self, run_ids: list[str]) -> None:
        """Heartbeat the claimed runs whose worker has not started yet (a started worker beats for itself)."""
        if not run_ids:
            return
        with self._errors():
            self._connect().execute(
                f"UPDATE runs SET heartbeat_at = ? WHERE status = ? AND pid IS NULL "
                f"AND id IN ({', '.join('?' * len(run_ids))})", (time.time(), RUNNING, *run_ids))

    # ---------------------------------------------------------------- worker-side updates

    def mark_running(self, run_id: str, pid: int) -> bool:
        """The worker announces itself; False if the run is not (or no longer) its to run."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, pid = ?, started_at = COALESCE(started_at, ?), heartbeat_at = ?, "
                "stage = 'running' WHERE id = ? AND cancel_requested = 0 "
                "AND (status = ? OR (status = ? AND (pid IS NULL OR pid = ?)))",
                (RUNNING, pid, now, now, run_id, QUEUED, RUNNING, pid),
            )
            if cursor.rowcount == 1:
                self._save_status(conn, run_id)
            return cursor.rowcount == 1

    def update_progress(self, run_id: str, fraction: float, stage: str, metrics: dict | None = None) -> None:
        """Record progress (clamped to 0–1), stage and heartbeat; ``metrics`` adds one per-epoch row."""
        now, fraction = time.time(), min(1.0, max(0.0, float(fraction)))
        sql = "UPDATE runs SET progress = ?, stage = ?, heartbeat_at = ? WHERE id = ? AND status = ?"
        params = (fraction, str(stage), now, run_id, RUNNING)
        if metrics is None:  # one statement commits on its own: no explicit transaction needed
            with self._errors():
                self._connect().execute(sql, params)
            return
        with self._write() as conn:
            if conn.execute(sql, params).rowcount == 1:
                conn.execute(
                    "INSERT INTO epochs (run_id, seq, at, metrics_json) VALUES "
                    "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM epochs WHERE run_id = ?), ?, ?)",
                    (run_id, run_id, now, json.dumps(metrics, sort_keys=True, default=str)),
                )

    def heartbeat(self, run_id: str) -> bool:
        """Refresh the heartbeat; returns whether a cancel was requested (the worker's one cheap poll)."""
        conn = self._connect()
        with self._errors():
            conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND status = ?", (time.time(), run_id, RUNNING))
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def cancel_requested(self, run_id: str) -> bool:
        """Whether the user asked to cancel this run (read by the worker's ``should_stop``)."""
        rows = self._read("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))
        return bool(rows and rows[0][0])

    def mark_succeeded(self, run_id: str, result_path: Path | str) -> bool:
        """Final success with the path of result.json; False if the run was already final (e.g. cancelled)."""
        return self._finish(
            run_id, SUCCEEDED, None, progress=1.0, stage="done", result_path=self._relative(result_path)
        )

    def mark_failed(self, run_id: str, error: str) -> bool:
        """Final failure with the reason shown to the user."""
        return self._finish(run_id, FAILED, error, stage="failed")

    def mark_cancelled(self, run_id: str, reason: str = REASON_CANCELLED) -> bool:
        """Final cancel (from queued or running)."""
        return self._finish(run_id, CANCELLED, reason, stage="cancelled")

    def _finish(self, run_id: str, status: str, error: str | None, **fields: Any) -> bool:
        """Move a run to a terminal status if its current status allows it; returns whether it did.

        A run whose row is missing (its database was deleted and recreated while it ran) is first registered
        again from its folder, so a finishing worker never loses its outcome.
        """
        sources = [state for state, targets in TRANSITIONS.items() if status in targets]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as conn:
            self._ensure_row(conn, run_id)
            cursor = conn.execute(
                f"UPDATE runs SET status = ?, error = ?, finished_at = ?, {assignments} "
                f"WHERE id = ? AND status IN ({', '.join('?' * len(sources))})",
                (status, error, time.time(), *fields.values(), run_id, *sources),
            )
            if cursor.rowcount == 1:
                self._save_status(conn, run_id)
            return cursor.rowcount == 1

    def _settle(self, run_id: str, outcome: Outcome) -> bool:
        """End a run whose worker is gone or was killed: ``succeeded`` if it published its result (the manifest
        matches), else ``outcome``. So a cancel or crash racing the end of a run has one defined result."""
        run_dir = self.run_dir(run_id)
        if is_published(run_dir):
            return self._finish(run_id, SUCCEEDED, None, progress=1.0, stage=STAGE_RECOVERED,
                                result_path=self._relative(run_dir / RESULT_NAME))
        return self._finish(run_id, outcome.status, outcome.reason, stage=outcome.status)

    # ---------------------------------------------------------------- cancel

    def request_cancel(self, run_id: str) -> RunRecord:
        """Ask a run to stop without waiting: a queued run is cancelled at once, a running one at its next
        batch or epoch (its worker kills itself after :data:`FORCE_CANCEL_AFTER` seconds if it does not)."""
        self.get(run_id, refresh=False)  # unknown id → PafoInputError
        with self._write() as conn:
            sql = "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN (?, ?)"
            conn.execute(sql, (run_id, QUEUED, RUNNING))
            # A claimed run whose worker has not started (pid still NULL) can no longer start (mark_running
            # refuses a cancelled run), so it ends at once like a queued one.
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage = ? WHERE id = ? "
                "AND (status = ? OR (status = ? AND pid IS NULL))",
                (CANCELLED, REASON_CANCELLED_QUEUED, time.time(), CANCELLED, run_id, QUEUED, RUNNING),
            )
            self._save_status(conn, run_id)
        return self.get(run_id)

    def cancel(self, run_id: str, wait: float | None = None) -> RunRecord:
        """Cancel and make sure it happened: cooperative first, then after ``wait`` seconds (default
        ``force_cancel_after``) SIGKILL of the worker's process group. A run that already ended keeps its status."""
        wait = self.force_cancel_after if wait is None else float(wait)
        record = self.request_cancel(run_id)
        if not record.done:
            record = self.wait(run_id, timeout=wait, poll=0.1)
        if not record.done:
            self._kill_worker(run_id, record.pid)
            self._settle(run_id, Outcome(CANCELLED, REASON_CANCELLED_FORCED.format(after=wait)))
            record = self.get(run_id)
        return record

    def _kill_worker(self, run_id: str, pid: int | None) -> None:
        """SIGKILL the worker's whole process group (it runs in its own session, so pgid == pid)."""
        if not process_alive(pid, run_id):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _reap(run_id, timeout=2.0)

    # ---------------------------------------------------------------- reconcile and dispatch

    def refresh(self) -> None:
        """Reconcile running runs, then start queued ones: what every read does instead of a daemon."""
        self.reconcile()
        self.dispatch()

    def reconcile(self) -> list[tuple[str, Outcome]]:
        """Apply :func:`decide_outcome` to every running run; returns the changes made."""
        now, changes = time.time(), []
        sql = "SELECT id, pid, heartbeat_at, started_at, cancel_requested FROM runs WHERE status = ?"
        rows = self._read(sql, (RUNNING,))
        _forget_exited({row["id"] for row in rows})
        for row in rows:
            run_id, pid = row["id"], row["pid"]
            beat = row["heartbeat_at"] or row["started_at"]
            alive = process_alive(pid, run_id)
            outcome = decide_outcome(
                RUNNING,
                pid=pid,
                pid_alive=alive,
                heartbeat_age=None if beat is None else now - beat,
                stale_after=self.stale_after,
                cancel_requested=bool(row["cancel_requested"]),
                exit_code=_exit_code(run_id, dying=alive is False),
            )
            if outcome is not None:
                self._kill_worker(run_id, pid)  # a stale worker may still be alive: do not leave it training
                if self._settle(run_id, outcome):
                    changes.append((run_id, outcome))
        return changes

    def dispatch(self) -> list[str]:
        """Start queued runs FIFO while fewer than ``max_concurrent`` run; returns the ids started.

        The claim and the spawn happen inside one ``BEGIN IMMEDIATE`` transaction, so two processes can never
        start the same run and a run is never ``running`` without a pid.
        """
        sql = "SELECT status, COUNT(*) FROM runs WHERE status IN (?, ?) GROUP BY status"
        counts = {row[0]: row[1] for row in self._read(sql, (QUEUED, RUNNING))}
        if not counts.get(QUEUED) or counts.get(RUNNING, 0) >= self.max_concurrent:
            return []  # cheap read-only exit: the common case when the app polls
        started = []
        with self._write() as conn:
            running = conn.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (RUNNING,)).fetchone()[0]
            free = self.max_concurrent - running
            if free <= 0:
                return []
            queued = conn.execute(
                "SELECT id FROM runs WHERE status = ? ORDER BY created_at, rowid LIMIT ?", (QUEUED, free)
            ).fetchall()
            for (run_id,) in queued:
                if self._start_worker(conn, run_id):
                    started.append(run_id)
        return started

    def _start_worker(self, conn: sqlite3.Connection, run_id: str) -> bool:
        """Spawn ``python -m pafo.worker`` for a run in its own session and record its pid (inside the caller's
        transaction); a spawn failure marks the run failed instead of leaving it queued forever."""
        run_dir = self.run_dir(run_id)
        now = time.time()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / LOG_NAME, "ab") as log:
                process = subprocess.Popen(
                    self.worker_command(run_id),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=worker_env(),
                    close_fds=True,
                )
        except OSError as exc:
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage = ? WHERE id = ?",
                (FAILED, REASON_SPAWN_FAILED.format(detail=exc), now, FAILED, run_id),
            )
            self._save_status(conn, run_id)
            return False
        with _SPAWNED_LOCK:
            _SPAWNED[run_id] = process
        conn.execute(
            "UPDATE runs SET status = ?, pid = ?, started_at = ?, heartbeat_at = ?, stage = ? WHERE id = ?",
            (RUNNING, process.pid, now, now, STAGE_STARTING, run_id),
        )
        self._save_status(conn, run_id)
        return True

    def worker_command(self, run_id: str) -> list[str]:
        """The command line of a run's worker (the run id in it lets :func:`process_alive` detect pid reuse)."""
        return [
            sys.executable, "-m", "pafo.worker", run_id, "--home", str(self.home.resolve()),
            "--max-concurrent", str(self.max_concurrent), "--stale-after", str(self.stale_after),
            "--force-cancel-after", str(self.force_cancel_after),
        ]  # fmt: skip


# --------------------------------------------------------------------------------------------- home lock


def _move_aside(db_path: Path) -> Path:
    """Rename the database and its journal files to ``runs.sqlite.replaced-<id>[-wal|-shm|-journal]``."""
    moved = db_path.with_name(f"{DB_NAME}.replaced-{new_run_id()}")
    for suffix in ("", *DB_SIDE_FILES):
        source = Path(f"{db_path}{suffix}")
        if source.exists():
            os.replace(source, f"{moved}{suffix}")
    return moved


@contextlib.contextmanager
def _home_lock(home: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock on ``<home>/runs.lock`` (waits up to ``timeout`` seconds): held while a missing database
    is created and filled from the run folders, and while ``rebuild`` moves one aside."""
    try:
        handle = open(home / LOCK_NAME, "a+b")  # noqa: SIM115 - held across the yield
    except OSError as exc:
        raise PafoEnvironmentError(MSG_READONLY_DB.format(path=home / DB_NAME, home=home,
                                                          detail=exc.strerror or exc)) from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PafoEnvironmentError(MSG_LOCKED_DB.format(path=home / LOCK_NAME, timeout=timeout)) from None
                time.sleep(0.05)
        yield
    finally:
        handle.close()  # closing releases the lock


# --------------------------------------------------------------------------------------------- child processes


def worker_env() -> dict[str, str]:
    """The caller's environment with the package root first on PYTHONPATH, so the worker imports this code."""
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _exit_code(run_id: str, *, dying: bool = False) -> int | None:
    """The worker's exit code if this process spawned it and it has exited.

    ``dying``: the pid check already says it is gone, but a process in the middle of exiting is not reapable
    yet, so wait a moment for the exact code (it gives the better failure reason).
    """
    with _SPAWNED_LOCK:
        process = _SPAWNED.get(run_id)
    if process is None:
        return None
    if dying:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout=1.0)
    return process.poll()


def _reap(run_id: str, timeout: float) -> None:
    """Wait briefly for a worker we spawned to exit, so it does not linger as a zombie."""
    with _SPAWNED_LOCK:
        process = _SPAWNED.get(run_id)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def _forget_exited(running_ids: set[str]) -> None:
    """Poll every worker this process spawned (polling reaps zombies) and drop exited ones whose run is final.

    Exited workers of still-running rows are kept one more round so reconcile can read their exit code.
    """
    with _SPAWNED_LOCK:
        for run_id, process in list(_SPAWNED.items()):
            if process.poll() is not None and run_id not in running_ids:
                del _SPAWNED[run_id]
