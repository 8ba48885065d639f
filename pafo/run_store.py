"""The run store: one SQLite file that every process (app, CLI, workers) reads and writes, mirrored into the run
folders ``runs/<id>/`` so it can always be rebuilt from them.

WAL mode lets readers (the app polling progress) run alongside the writing worker, ``BEGIN IMMEDIATE``
(:meth:`RunStore.write`) serialises state changes between processes and the busy timeout turns short contention
into waiting instead of errors. SQLite failures become one :class:`pafo.errors.PafoEnvironmentError` naming the file
and the fix (:meth:`RunStore.errors`).

Faults: each run folder also holds the run's ``config.json`` and a ``status.json`` written with every change of
state (:meth:`RunStore.save_status`), so the database can be rebuilt from the folders (:meth:`RunStore.restore_rows`,
and automatically when ``runs.sqlite`` is missing or 0 bytes, the empty file moved aside; a process whose database
file was deleted or replaced reconnects to the new one before its next read or write). Opening checks the file's
integrity (``PRAGMA quick_check``). A result path read from a status record is only followed to ``result.json`` of
that run's own folder or of the run it reused (:meth:`RunStore.owned_result`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pafo.errors import PafoEnvironmentError
from pafo.jsonio import loads
from pafo.paths import atomic_write_text, resolve_inside
from pafo.reuse import canonical_json, config_hash

__all__ = ["ACTIVE_STATUSES", "CANCELLED", "DEFAULT_LOCK_TIMEOUT", "FAILED", "QUEUED", "RUNNING", "STATUSES",
           "SUCCEEDED", "TERMINAL_STATUSES", "TRANSITIONS", "RunStore", "can_transition", "move_database_aside",
           "new_run_id"]

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

REASON_NO_STATUS = "recovered from {path} without a status record: its outcome is unknown"
REASON_RESULT_OUTSIDE = ("recovered from {path}: its status record names a result outside the run folder "
                         "({result_path}), which is not read")

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

def can_transition(current: str, new: str) -> bool:
    """Whether a run may go from ``current`` to ``new``; terminal states never change."""
    return new in TRANSITIONS.get(current, frozenset())


def new_run_id() -> str:
    """A short id that sorts by creation time (UTC second) with a random tail against collisions."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _plain_name(name: object) -> bool:
    """Whether ``name`` can only be one folder's name inside ``runs/`` (no separator, no ``..``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")



class RunStore:
    """The registry's database and run folders under ``home``: this thread's connection, transactions, the schema,
    the status records of the folders and the paths inside them. ``lock_timeout``: seconds to wait for another
    process's write lock before raising :class:`PafoEnvironmentError`."""

    def __init__(self, home: Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.home = home
        self.db_path = home / DB_NAME
        self.lock_timeout = float(lock_timeout)
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads), reopened when the
        database file was deleted or replaced since: writes to the old, unlinked file would be lost."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._file_id() == self._local.file_id:
                return conn
            self.close()  # safe: SQLite neither checkpoints into nor deletes the journal of a moved database
        if self.db_path.exists() and not self._is_empty_file():
            return self._open(created=False)
        with self.home_lock():  # one process creates the file and fills it from the run folders
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
        with self.errors():
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

    def home_lock(self) -> contextlib.AbstractContextManager[None]:
        return _home_lock(self.home, self.lock_timeout)

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def message(self, template: str, **values: Any) -> str:
        return template.format(path=self.db_path, home=self.home, runs=self.home / RUNS_DIR, **values)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate SQLite failures into one clear :class:`PafoEnvironmentError` that names the file and the fix."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text, detail = str(exc).lower(), " ".join(str(exc).split())
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_READONLY_DBMOVED:
                raise PafoEnvironmentError(self.message(MSG_MOVED_DB)) from exc
            if "locked" in text or "busy" in text:
                raise PafoEnvironmentError(self.message(MSG_LOCKED_DB, timeout=self.lock_timeout)) from exc
            if "full" in text:
                raise PafoEnvironmentError(self.message(MSG_DISK_FULL_DB)) from exc
            if "readonly" in text or "unable to open" in text or "read-only" in text:
                raise PafoEnvironmentError(self.message(MSG_READONLY_DB, detail=detail)) from exc
            if "no such" in text or "has no column" in text:
                raise PafoEnvironmentError(self.message(MSG_FOREIGN_DB, detail=detail)) from exc
            raise PafoEnvironmentError(self.message(MSG_CORRUPT_DB, detail=detail)) from exc
        except sqlite3.IntegrityError:
            raise  # a constraint the code broke: a bug, not a damaged file
        except sqlite3.DatabaseError as exc:
            raise PafoEnvironmentError(self.message(MSG_CORRUPT_DB, detail=" ".join(str(exc).split()))) from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: takes the write lock up front so read-then-write never races."""
        conn = self.connect()
        with self.errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full on COMMIT)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Run a read-only query with error translation."""
        conn = self.connect()
        with self.errors():
            return conn.execute(sql, params).fetchall()

    def _init_schema(self, *, rebuild: bool = False) -> None:
        """Check an existing registry (integrity, then that it is ours), or create the tables of a new one and,
        when ``rebuild``, fill them from the run folders. An existing registry is only read (no lock taken)."""
        if not rebuild:
            problems = [row[0] for row in self.read("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise PafoEnvironmentError(self.message(MSG_CORRUPT_DB, detail=" ".join(problems[0].split())))
            if self.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION:
                self._check_columns(self.connect())
                return
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise PafoEnvironmentError(self.message(MSG_FOREIGN_DB, detail=f"schema {version}"))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            self._check_columns(conn)
            for statement in filter(str.strip, _INDEXES.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if rebuild:
                self.restore_rows(conn)

    def _check_columns(self, conn: sqlite3.Connection) -> None:
        """Refuse an SQLite file whose ``runs`` table is not ours instead of failing later on a query."""
        with self.errors():
            columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise PafoEnvironmentError(self.message(MSG_FOREIGN_DB, detail="columns " + ", ".join(missing)))


    # ---------------------------------------------------------------- run folders: config and status records

    def save_status(self, conn: sqlite3.Connection, run_id: str) -> None:
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

    def restore_rows(self, conn: sqlite3.Connection) -> tuple[int, list[str]]:
        """Insert a row for every run folder that has none; returns (rows added, folders skipped)."""
        added, skipped = 0, []
        runs = self.home / RUNS_DIR
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            values = self.row_from_folder(run_dir)
            if values is None:
                skipped.append(run_dir.name)
                continue
            columns = ", ".join(values)
            cursor = conn.execute(f"INSERT OR IGNORE INTO runs ({columns}) VALUES ({', '.join('?' * len(values))})",
                                  tuple(values.values()))
            added += cursor.rowcount
        return added, skipped

    def row_from_folder(self, run_dir: Path) -> dict | None:
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
        if values["result_path"] and self.owned_result(run_dir.name, values["reused_from"],
                                                        values["result_path"]) is None:
            values.update(error=REASON_RESULT_OUTSIDE.format(path=run_dir, result_path=values["result_path"]),
                          result_path=None, status=FAILED if values["status"] == SUCCEEDED else values["status"])
        return {**values, "config_json": config_text}

    def ensure_row(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Re-register a run from its folder when its row is missing (the database was replaced mid-run)."""
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            values = self.row_from_folder(self.run_dir(run_id))
            if values is not None:
                conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(values)}) "
                             f"VALUES ({', '.join('?' * len(values))})", tuple(values.values()))


    # ---------------------------------------------------------------- paths

    def run_dir(self, run_id: str) -> Path:
        """Where a run's worker writes its artifacts: ``<home>/runs/<id>/``."""
        return self.home / RUNS_DIR / run_id

    def owned_result(self, run_id: str, reused_from: str | None, result_path: str | None) -> Path | None:
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


    def relative(self, path: Path | str) -> str:
        """Store paths relative to home so the registry survives moving ``$PAFO_HOME``."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.home.resolve()).as_posix()
        except ValueError:
            return str(path)



def move_database_aside(home: Path, timeout: float) -> Path | None:
    """Under the home lock, rename ``runs.sqlite`` (if there is one) aside for a rebuild; returns where it went."""
    with _home_lock(home, timeout):
        db_path = home / DB_NAME
        return _move_aside(db_path) if db_path.exists() else None


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
