"""The run registry: runs, their progress and their results, shared by every process (app, CLI, workers).

Training runs live in worker processes of their own (see :mod:`pafo.worker`), so the registry is the only place
where their state is shared. It is three parts and this facade over them:

- the store (:mod:`pafo.run_store`): one SQLite file plus the run folders it is mirrored into, so it can be rebuilt;
- the supervisor (:mod:`pafo.supervisor`): the worker processes, spawned, reaped and killed;
- the reuse key (:mod:`pafo.reuse`): config hash, dataset fingerprint and code version, which decide when a finished
  run answers a new submission.

There is no daemon: every read (:meth:`RunRegistry.get`, :meth:`RunRegistry.list`, :meth:`RunRegistry.wait`) first
*reconciles* running rows against their worker (a dead pid or a stale heartbeat turns the run ``failed`` with the
reason) and then *dispatches* queued runs FIFO up to the concurrency limit. So no run stays ``running`` forever and
the queue advances as long as anyone looks at it, and a worker that finishes starts the next queued run itself.

Why SQLite and not a task-queue library: runs need per-run processes with their own session (so a cancel can
kill a whole process group), progress and heartbeat rows, cached reuse and crash detection; a queue such as
huey brings a consumer daemon and still needs all of that on top.

A run counts as *published* once its ``manifest.json`` (checksums of its artifacts, :mod:`pafo.manifest`) exists: a
dead or killed worker whose run was published ends ``succeeded``, otherwise ``cancelled``/``failed``, and only a run
whose artifacts still match their checksums and whose manifest names the config hash and dataset fingerprint asked
for is reused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pafo.errors import PafoInputError
from pafo.jsonio import loads
from pafo.manifest import check_binding, is_published, verify_manifest
from pafo.paths import atomic_write_text, ensure_home, pafo_home
from pafo.reuse import PRESENTATION_MODULES, code_version, config_hash, result_code, source_version
from pafo.run_store import (
    ACTIVE_STATUSES,
    CANCELLED,
    CONFIG_NAME,
    DEFAULT_LOCK_TIMEOUT,
    FAILED,
    QUEUED,
    RESULT_NAME,
    RUNNING,
    RUNS_DIR,
    STATUSES,
    SUCCEEDED,
    TERMINAL_STATUSES,
    TRANSITIONS,
    RunStore,
    can_transition,
    canonical_json,
    move_database_aside,
    new_run_id,
)
from pafo.supervisor import (
    Outcome,
    decide_outcome,
    exit_code,
    forget_exited,
    kill_worker,
    process_alive,
    spawn_worker,
    worker_command,
    worker_env,
)

# The names below stay importable from here: the registry is where callers have always found them.
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

DEFAULT_TARGET = "pafo.experiment:run_experiment"
AUDIT_TARGET = "pafo.audit:run_audit"  # an audit of given predictions (pafo.audit): a run of kind "audit"
DEFAULT_STALE_AFTER = 20.0  # seconds without heartbeat before a running run counts as dead (worker beats every 2 s)
FORCE_CANCEL_AFTER = 10.0  # seconds between a cancel request and the forced kill of the worker's process group

STAGE_STARTING = "starting worker"
STAGE_REUSED = "reused"

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
REASON_SPAWN_FAILED = "could not start the worker process: {detail}"
STAGE_RECOVERED = "done (recorded from its published result)"

#: A sweep's id starts so (``pafo.sweep.new_sweep_id``: the prefix and a run id); it is the ``parent_id`` of each of
#: its cells, which is how run pickers group them.
SWEEP_PREFIX = "sweep-"


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
        self.max_concurrent = _concurrency_limit(max_concurrent)
        self.stale_after = float(stale_after)
        self.lock_timeout = float(DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout)
        self.force_cancel_after = float(force_cancel_after)
        self.store = RunStore(self.home, self.lock_timeout)
        self.store.connect()  # opens (or creates and fills) the database now: a damaged one fails here

    @property
    def db_path(self) -> Path:
        return self.store.db_path

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs when they end)."""
        self.store.close()

    @classmethod
    def rebuild(cls, home: Path | str | None = None, **options: Any) -> tuple[RunRegistry, int, list[str], Path | None]:
        """Move the database aside (if there is one) and rebuild it from the run folders.

        Returns the new registry, how many runs it lists, the folders that held no run record, and where the old
        file went. Workers still running reconnect to the new file on their next write.
        """
        home = ensure_home(Path(home)) if home is not None else pafo_home()
        moved = move_database_aside(home, float(options.get("lock_timeout") or DEFAULT_LOCK_TIMEOUT))
        registry = cls(home, **options)
        rows = registry.store.read("SELECT COUNT(*) FROM runs")[0][0]
        runs = home / RUNS_DIR
        folders = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
        listed = {row[0] for row in registry.store.read("SELECT id FROM runs")}
        return registry, rows, [name for name in folders if name not in listed], moved

    # ---------------------------------------------------------------- paths

    def run_dir(self, run_id: str) -> Path:
        """Where a run's worker writes its artifacts: ``<home>/runs/<id>/``."""
        return self.store.run_dir(run_id)


    def result_file(self, record: RunRecord) -> Path | None:
        """A record's result.json, when it lies inside its own run folder or that of the run it reused."""
        if not record.result_path:
            return None
        for owner in (record.id, record.reused_from):
            if owner and Path(record.result_path) == self.home / RUNS_DIR / owner / RESULT_NAME:
                return self.store.owned_result(record.id, record.reused_from, f"{RUNS_DIR}/{owner}/{RESULT_NAME}")
        return None


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
        with self.store.write() as conn:
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
            result = self.store.owned_result(row["id"], row["reused_from"], row["result_path"])
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
            self.store.save_status(conn, run_id)
            return run_id

    def get(self, run_id: str, *, refresh: bool = True) -> RunRecord:
        """One run; first reconciles and dispatches (unless ``refresh=False``) so the answer is current."""
        if refresh:
            self.refresh()
        rows = self.store.read("SELECT * FROM runs WHERE id = ?", (run_id,))
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
        return [_record_from_row(row, self.home) for row in self.store.read(sql, params)]

    def epochs(self, run_id: str) -> list[dict]:
        """Per-epoch metrics in the order the worker reported them, each with ``seq`` and ``at``."""
        rows = self.store.read("SELECT seq, at, metrics_json FROM epochs WHERE run_id = ? ORDER BY seq", (run_id,))
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
        with self.store.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, pid = NULL, started_at = ?, heartbeat_at = ?, stage = ? "
                "WHERE id = ? AND status = ? AND cancel_requested = 0",
                (RUNNING, now, now, str(stage), run_id, QUEUED),
            )
            if cursor.rowcount == 1:
                self.store.save_status(conn, run_id)
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
        with self.store.errors():
            self.store.connect().execute(
                f"UPDATE runs SET heartbeat_at = ? WHERE status = ? AND pid IS NULL "
                f"AND id IN ({', '.join('?' * len(run_ids))})", (time.time(), RUNNING, *run_ids))

    # ---------------------------------------------------------------- worker-side updates

    def mark_running(self, run_id: str, pid: int) -> bool:
        """The worker announces itself; False if the run is not (or no longer) its to run."""
        now = time.time()
        with self.store.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, pid = ?, started_at = COALESCE(started_at, ?), heartbeat_at = ?, "
                "stage = 'running' WHERE id = ? AND cancel_requested = 0 "
                "AND (status = ? OR (status = ? AND (pid IS NULL OR pid = ?)))",
                (RUNNING, pid, now, now, run_id, QUEUED, RUNNING, pid),
            )
            if cursor.rowcount == 1:
                self.store.save_status(conn, run_id)
            return cursor.rowcount == 1

    def update_progress(self, run_id: str, fraction: float, stage: str, metrics: dict | None = None) -> None:
        """Record progress (clamped to 0–1), stage and heartbeat; ``metrics`` adds one per-epoch row."""
        now, fraction = time.time(), min(1.0, max(0.0, float(fraction)))
        sql = "UPDATE runs SET progress = ?, stage = ?, heartbeat_at = ? WHERE id = ? AND status = ?"
        params = (fraction, str(stage), now, run_id, RUNNING)
        if metrics is None:  # one statement commits on its own: no explicit transaction needed
            with self.store.errors():
                self.store.connect().execute(sql, params)
            return
        with self.store.write() as conn:
            if conn.execute(sql, params).rowcount == 1:
                conn.execute(
                    "INSERT INTO epochs (run_id, seq, at, metrics_json) VALUES "
                    "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM epochs WHERE run_id = ?), ?, ?)",
                    (run_id, run_id, now, json.dumps(metrics, sort_keys=True, default=str)),
                )

    def heartbeat(self, run_id: str) -> bool:
        """Refresh the heartbeat; returns whether a cancel was requested (the worker's one cheap poll)."""
        conn = self.store.connect()
        with self.store.errors():
            conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND status = ?", (time.time(), run_id, RUNNING))
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def cancel_requested(self, run_id: str) -> bool:
        """Whether the user asked to cancel this run (read by the worker's ``should_stop``)."""
        rows = self.store.read("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))
        return bool(rows and rows[0][0])

    def mark_succeeded(self, run_id: str, result_path: Path | str) -> bool:
        """Final success with the path of result.json; False if the run was already final (e.g. cancelled)."""
        return self._finish(
            run_id, SUCCEEDED, None, progress=1.0, stage="done", result_path=self.store.relative(result_path)
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
        with self.store.write() as conn:
            self.store.ensure_row(conn, run_id)
            cursor = conn.execute(
                f"UPDATE runs SET status = ?, error = ?, finished_at = ?, {assignments} "
                f"WHERE id = ? AND status IN ({', '.join('?' * len(sources))})",
                (status, error, time.time(), *fields.values(), run_id, *sources),
            )
            if cursor.rowcount == 1:
                self.store.save_status(conn, run_id)
            return cursor.rowcount == 1

    def _settle(self, run_id: str, outcome: Outcome) -> bool:
        """End a run whose worker is gone or was killed: ``succeeded`` if it published its result (the manifest
        matches), else ``outcome``. So a cancel or crash racing the end of a run has one defined result."""
        run_dir = self.run_dir(run_id)
        if is_published(run_dir):
            return self._finish(run_id, SUCCEEDED, None, progress=1.0, stage=STAGE_RECOVERED,
                                result_path=self.store.relative(run_dir / RESULT_NAME))
        return self._finish(run_id, outcome.status, outcome.reason, stage=outcome.status)

    # ---------------------------------------------------------------- cancel

    def request_cancel(self, run_id: str) -> RunRecord:
        """Ask a run to stop without waiting: a queued run is cancelled at once, a running one at its next
        batch or epoch (its worker kills itself after :data:`FORCE_CANCEL_AFTER` seconds if it does not)."""
        self.get(run_id, refresh=False)  # unknown id → PafoInputError
        with self.store.write() as conn:
            sql = "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN (?, ?)"
            conn.execute(sql, (run_id, QUEUED, RUNNING))
            # A claimed run whose worker has not started (pid still NULL) can no longer start (mark_running
            # refuses a cancelled run), so it ends at once like a queued one.
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage = ? WHERE id = ? "
                "AND (status = ? OR (status = ? AND pid IS NULL))",
                (CANCELLED, REASON_CANCELLED_QUEUED, time.time(), CANCELLED, run_id, QUEUED, RUNNING),
            )
            self.store.save_status(conn, run_id)
        return self.get(run_id)

    def cancel(self, run_id: str, wait: float | None = None) -> RunRecord:
        """Cancel and make sure it happened: cooperative first, then after ``wait`` seconds (default
        ``force_cancel_after``) SIGKILL of the worker's process group. A run that already ended keeps its status."""
        wait = self.force_cancel_after if wait is None else float(wait)
        record = self.request_cancel(run_id)
        if not record.done:
            record = self.wait(run_id, timeout=wait, poll=0.1)
        if not record.done:
            kill_worker(run_id, record.pid)
            self._settle(run_id, Outcome(CANCELLED, REASON_CANCELLED_FORCED.format(after=wait)))
            record = self.get(run_id)
        return record

    # ---------------------------------------------------------------- reconcile and dispatch

    def refresh(self) -> None:
        """Reconcile running runs, then start queued ones: what every read does instead of a daemon."""
        self.reconcile()
        self.dispatch()

    def reconcile(self) -> list[tuple[str, Outcome]]:
        """Apply :func:`decide_outcome` to every running run; returns the changes made."""
        now, changes = time.time(), []
        sql = "SELECT id, pid, heartbeat_at, started_at, cancel_requested FROM runs WHERE status = ?"
        rows = self.store.read(sql, (RUNNING,))
        forget_exited({row["id"] for row in rows})
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
                exit_code=exit_code(run_id, dying=alive is False),
            )
            if outcome is not None:
                kill_worker(run_id, pid)  # a stale worker may still be alive: do not leave it training
                if self._settle(run_id, outcome):
                    changes.append((run_id, outcome))
        return changes

    def dispatch(self) -> list[str]:
        """Start queued runs FIFO while fewer than ``max_concurrent`` run; returns the ids started.

        The claim and the spawn happen inside one ``BEGIN IMMEDIATE`` transaction, so two processes can never
        start the same run and a run is never ``running`` without a pid.
        """
        sql = "SELECT status, COUNT(*) FROM runs WHERE status IN (?, ?) GROUP BY status"
        counts = {row[0]: row[1] for row in self.store.read(sql, (QUEUED, RUNNING))}
        if not counts.get(QUEUED) or counts.get(RUNNING, 0) >= self.max_concurrent:
            return []  # cheap read-only exit: the common case when the app polls
        started = []
        with self.store.write() as conn:
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
        now = time.time()
        try:
            process = spawn_worker(run_id, self.worker_command(run_id), self.run_dir(run_id))
        except OSError as exc:
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage = ? WHERE id = ?",
                (FAILED, REASON_SPAWN_FAILED.format(detail=exc), now, FAILED, run_id),
            )
            self.store.save_status(conn, run_id)
            return False
        conn.execute(
            "UPDATE runs SET status = ?, pid = ?, started_at = ?, heartbeat_at = ?, stage = ? WHERE id = ?",
            (RUNNING, process.pid, now, now, STAGE_STARTING, run_id),
        )
        self.store.save_status(conn, run_id)
        return True

    def worker_command(self, run_id: str) -> list[str]:
        """The command line of a run's worker (:func:`pafo.supervisor.worker_command`)."""
        return worker_command(run_id, self.home, max_concurrent=self.max_concurrent, stale_after=self.stale_after,
                              force_cancel_after=self.force_cancel_after)
