"""Run registry, worker processes and `pafo runs`: every state transition, crashes, cancels, cache, restart.

The process tests start real workers (``python -m pafo.worker``) on the small targets in ``tests/run_targets.py``
and use ``tmp_path`` as ``$PAFO_HOME``.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import kill_workers, wait_for

from pafo import registry as registry_module
from pafo import supervisor
from pafo.errors import PafoEnvironmentError, PafoInputError
from pafo.paths import PACKAGE_ROOT
from pafo.registry import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TRANSITIONS,
    RunRecord,
    RunRegistry,
    can_transition,
    code_version,
    config_hash,
    decide_outcome,
    new_run_id,
    process_alive,
)
from pafo.worker import describe_error, run_worker

if str(PACKAGE_ROOT) not in sys.path:  # workers import tests.run_targets too; make it importable however pytest runs
    sys.path.insert(0, str(PACKAGE_ROOT))
run_targets = importlib.import_module("tests.run_targets")
cli_main = run_targets.cli_main

STEPS = "tests.run_targets:steps"


def cfg(target: str = "tests.run_targets:steps", **extra) -> dict:
    return {"target": target, **extra}


@pytest.fixture
def home(worker_home: Path) -> Path:
    return worker_home


@pytest.fixture
def reg(home: Path):
    """A registry on ``home``; kills any worker still alive afterwards so no test leaks processes."""
    registry = RunRegistry(home)
    yield registry
    kill_workers(registry)


def worker_started(registry: RunRegistry, run_id: str) -> RunRecord:
    """Wait until the worker itself reported (stage moved past 'starting worker')."""
    return wait_for(lambda: (r := registry.get(run_id)).stage not in ("queued", "starting worker") and r, 15)


# ============================================================================ pure functions

H_FRESH, H_STALE = 1.0, 100.0
OUTCOME_TABLE = [
    # status, pid_alive, heartbeat_age, cancel_requested, exit_code, expected status (None = unchanged), reason part
    *[(s, a, h, c, None, None, None) for s in (QUEUED, SUCCEEDED, FAILED, CANCELLED)
      for a in (True, False, None) for h in (H_FRESH, H_STALE, None) for c in (False, True)],
    (RUNNING, True, H_FRESH, False, None, None, None),
    (RUNNING, True, H_FRESH, True, None, None, None),
    (RUNNING, None, H_FRESH, False, None, None, None),
    (RUNNING, True, None, False, None, None, None),
    (RUNNING, None, None, False, None, None, None),
    (RUNNING, False, H_FRESH, False, None, FAILED, "is gone"),
    (RUNNING, False, None, False, None, FAILED, "is gone"),
    (RUNNING, False, H_STALE, False, None, FAILED, "is gone"),
    (RUNNING, True, H_STALE, False, None, FAILED, "no heartbeat"),
    (RUNNING, None, H_STALE, False, None, FAILED, "no heartbeat"),
    (RUNNING, False, H_FRESH, False, -9, FAILED, "signal SIGKILL"),
    (RUNNING, False, H_FRESH, False, -15, FAILED, "signal SIGTERM"),
    (RUNNING, False, H_FRESH, False, 1, FAILED, "exited with code 1"),
    (RUNNING, False, H_FRESH, False, 0, FAILED, "without recording a result"),
    (RUNNING, True, H_FRESH, False, 3, FAILED, "exited with code 3"),  # exit code wins over a stale pid check
    (RUNNING, False, H_FRESH, True, None, CANCELLED, "cancelled by user"),
    (RUNNING, False, H_FRESH, True, -9, CANCELLED, "cancelled by user"),
    (RUNNING, True, H_STALE, True, None, CANCELLED, "cancelled by user"),
    (RUNNING, None, H_STALE, True, None, CANCELLED, "cancelled by user"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "alive", "age", "cancel", "exit_code", "expected", "reason"), OUTCOME_TABLE)
def test_decide_outcome_truth_table(status, alive, age, cancel, exit_code, expected, reason):
    outcome = decide_outcome(
        status, pid=4242, pid_alive=alive, heartbeat_age=age, stale_after=20.0, cancel_requested=cancel,
        exit_code=exit_code,
    )  # fmt: skip
    if expected is None:
        assert outcome is None
    else:
        assert outcome.status == expected
        assert reason in outcome.reason
        if expected == FAILED:
            assert "4242" in outcome.reason


def test_decide_outcome_stale_boundary_is_exclusive():
    common = {"pid": 1, "pid_alive": True, "stale_after": 20.0, "cancel_requested": False}
    assert decide_outcome(RUNNING, heartbeat_age=20.0, **common) is None
    assert decide_outcome(RUNNING, heartbeat_age=20.01, **common).status == FAILED


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
def test_transition_table(current, new):
    allowed = {
        (QUEUED, RUNNING), (QUEUED, FAILED), (QUEUED, CANCELLED),
        (RUNNING, SUCCEEDED), (RUNNING, FAILED), (RUNNING, CANCELLED),
    }  # fmt: skip
    assert can_transition(current, new) == ((current, new) in allowed)
    assert set(TRANSITIONS) == set(STATUSES)


def test_config_hash_is_canonical_and_ids_sort_by_time():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(code_version()) == 12 and code_version() == code_version()
    first = new_run_id()
    time.sleep(1.05)
    assert new_run_id() > first and len(first) == len("20250101-000000-abcdef")


def test_process_alive_detects_dead_zombie_and_reused_pids():
    assert process_alive(None) is None
    assert process_alive(os.getpid()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10)
    assert process_alive(child.pid) is False  # exited but not reaped: a zombie is not alive
    child.wait()
    assert process_alive(child.pid) is False
    assert process_alive(os.getpid(), "20990101-000000-ffffff") is False  # alive, but not that run's worker


def test_describe_error_maps_disk_full():
    assert describe_error(OSError(28, "No space left on device", "/x/w.safetensors")).startswith(
        "disk full while writing /x/w.safetensors"
    )
    assert describe_error(KeyError("k")) == "KeyError: 'k'"


# ============================================================================ registry without workers


def test_every_transition_through_the_api(reg: RunRegistry):
    def queued() -> str:
        return reg.submit(cfg(n=new_run_id()), fingerprint="fp", start=False).id

    a = queued()
    assert reg.get(a, refresh=False).status == QUEUED
    assert reg.mark_running(a, os.getpid()) and reg.get(a, refresh=False).status == RUNNING  # queued → running
    assert reg.mark_succeeded(a, reg.run_dir(a) / "result.json")  # running → succeeded
    b = queued()
    reg.mark_running(b, os.getpid())
    assert reg.mark_failed(b, "boom") and reg.get(b, refresh=False).error == "boom"  # running → failed
    c = queued()
    reg.mark_running(c, os.getpid())
    assert reg.mark_cancelled(c) and reg.get(c, refresh=False).status == CANCELLED  # running → cancelled
    d = queued()
    assert reg.request_cancel(d).status == CANCELLED  # queued → cancelled
    e = queued()
    assert reg.mark_failed(e, "spawn") and reg.get(e, refresh=False).status == FAILED  # queued → failed
    for run_id, status in ((a, SUCCEEDED), (b, FAILED), (c, CANCELLED)):  # terminal states never change
        assert not reg.mark_running(run_id, os.getpid())
        assert not reg.mark_succeeded(run_id, "x") and not reg.mark_failed(run_id, "x")
        assert not reg.mark_cancelled(run_id)
        assert reg.get(run_id, refresh=False).status == status
    assert not reg.mark_succeeded(queued(), "x")  # queued → succeeded is not allowed
    rec = reg.get(a, refresh=False)
    assert rec.progress == 1.0 and rec.finished_at >= rec.started_at >= rec.created_at


def test_spawn_failure_marks_failed_not_stuck(reg: RunRegistry, monkeypatch: pytest.MonkeyPatch):
    def broken_popen(*args, **kwargs):
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(supervisor.subprocess, "Popen", broken_popen)
    rec = reg.submit(cfg(), fingerprint="fp")
    assert rec.status == FAILED and "could not start the worker process" in rec.error


def test_progress_is_clamped_and_epochs_are_kept(reg: RunRegistry):
    run_id = reg.submit(cfg(), fingerprint="fp", start=False).id
    reg.update_progress(run_id, 0.5, "ignored while queued")
    assert reg.get(run_id, refresh=False).progress == 0.0
    reg.mark_running(run_id, os.getpid())
    reg.update_progress(run_id, 1.7, "epoch 1", {"loss": 0.5})
    reg.update_progress(run_id, -1, "epoch 2", {"loss": 0.25})
    rec = reg.get(run_id, refresh=False)
    assert (rec.progress, rec.stage) == (0.0, "epoch 2")
    assert [(e["seq"], e["loss"]) for e in reg.epochs(run_id)] == [(1, 0.5), (2, 0.25)]
    assert reg.heartbeat(run_id) is False
    reg.request_cancel(run_id)
    assert reg.heartbeat(run_id) is True and reg.cancel_requested(run_id)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["not", "a", "dict"], "expected a JSON object"),
        ({"x": {1, 2}}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ({"target": "no_colon"}, "must look like"),
        ({"target": "mod:not-an-identifier"}, "must look like"),
    ],
)
def test_invalid_config_is_rejected_and_nothing_is_stored(reg: RunRegistry, config, message):
    with pytest.raises(PafoInputError, match=message):
        reg.submit(config, fingerprint="fp")
    assert reg.list() == []


def test_unknown_run_id_is_a_clear_error(reg: RunRegistry):
    for call in (reg.get, reg.wait, reg.cancel, reg.request_cancel, reg.load_result):
        with pytest.raises(PafoInputError, match=r"unknown run id 'nope'.*pafo runs list"):
            call("nope")


def test_corrupt_database_file_is_a_clear_error(tmp_path: Path):
    (tmp_path / "runs.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(PafoEnvironmentError, match=r"runs.sqlite is damaged or not a readable SQLite database.*"
                                                   r"pafo runs rebuild"):
        RunRegistry(tmp_path)


def test_foreign_sqlite_database_is_a_clear_error(tmp_path: Path):
    with sqlite3.connect(tmp_path / "runs.sqlite") as conn:
        conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, other TEXT)")
    with pytest.raises(PafoEnvironmentError, match=r"not a PAFO run registry.*missing columns created_at"):
        RunRegistry(tmp_path)


def test_locked_database_is_a_clear_error_and_other_runs_untouched(reg: RunRegistry, home: Path):
    kept = reg.submit(cfg(), fingerprint="fp", start=False).id
    impatient = RunRegistry(home, lock_timeout=0.2)
    blocker = sqlite3.connect(home / "runs.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(PafoEnvironmentError, match=r"runs.sqlite stayed locked by another process for more"):
            impatient.submit(cfg(other=1), fingerprint="fp", start=False)
        assert time.monotonic() - started < 5
        assert RunRegistry(home, lock_timeout=0.2).get(kept, refresh=False).status == QUEUED  # reads still work
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        impatient.close()
    assert [tuple(row) for row in reg.store.read("SELECT id, status FROM runs")] == [(kept, QUEUED)]


def test_bad_concurrency_limit_and_disk_full_database_are_clear_errors(home: Path, monkeypatch):
    monkeypatch.setenv("PAFO_MAX_CONCURRENT", "two")
    with pytest.raises(PafoInputError, match=r"PAFO_MAX_CONCURRENT\) must be a positive integer, got 'two'"):
        RunRegistry(home)
    monkeypatch.setenv("PAFO_MAX_CONCURRENT", "3")
    reg = RunRegistry(home)
    assert reg.max_concurrent == 3 and RunRegistry(home, max_concurrent=2).max_concurrent == 2
    full, malformed = sqlite3.OperationalError("database or disk is full"), sqlite3.DatabaseError("malformed")
    with pytest.raises(PafoEnvironmentError, match=r"disk full while writing the run registry .*runs.sqlite: free"):
        _raise_inside(reg, full)
    with pytest.raises(PafoEnvironmentError, match=r"\(malformed\): run `pafo runs rebuild`"):
        _raise_inside(reg, malformed)


def _raise_inside(reg: RunRegistry, exc: Exception) -> None:
    with reg.store.errors():
        raise exc


def test_load_result_reports_missing_corrupt_and_wrong_type(reg: RunRegistry):
    never_ran = reg.submit(cfg(n=0), fingerprint="fp", start=False).id
    reg.request_cancel(never_ran)
    assert "has no result (status cancelled)" in reg.load_result(never_ran).result_error
    run_id = reg.submit(cfg(), fingerprint="fp", start=False).id
    reg.mark_running(run_id, os.getpid())
    path = reg.run_dir(run_id) / "result.json"
    reg.mark_succeeded(run_id, path)
    assert "is missing" in reg.load_result(run_id).result_error
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"truncated": ')
    rec = reg.load_result(run_id)
    assert rec.result is None and f"result file {path} of run {run_id} is corrupt" in rec.result_error
    path.write_text("[1, 2]")
    assert "not a JSON object" in reg.load_result(run_id).result_error
    path.write_text('{"ok": 1}')
    assert reg.load_result(run_id).result == {"ok": 1}


# ============================================================================ real worker processes


def test_run_succeeds_with_progress_epochs_and_artifacts(reg: RunRegistry):
    rec = reg.submit(cfg(steps=3, sleep=0.05), fingerprint="fp")
    assert rec.status == RUNNING and rec.pid
    rec = reg.wait(rec.id, timeout=20)
    assert (rec.status, rec.progress, rec.error) == (SUCCEEDED, 1.0, None)
    run_dir = reg.run_dir(rec.id)
    assert rec.result_path == str(run_dir / "result.json")
    assert reg.load_result(rec.id).result == {"epochs": 3, "final_loss": pytest.approx(1 / 3)}
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 3
    assert f"run {rec.id} succeeded" in (run_dir / "log.txt").read_text()
    assert [e["epoch"] for e in reg.epochs(rec.id)] == [1, 2, 3]
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_target_written_result_is_kept(reg: RunRegistry):
    rec = reg.wait(reg.submit(cfg("tests.run_targets:writes_result", value=7), fingerprint="fp").id, 20)
    assert rec.status == SUCCEEDED
    assert reg.load_result(rec.id).result == {"written_by": "target", "value": 7}
    assert (reg.run_dir(rec.id) / "per_user.csv").is_file()


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("tests.run_targets:raises", "ValueError: boom"),
        ("tests.run_targets:disk_full", "disk full while writing {dir}/weights.safetensors: free space and restart"),
        ("tests.run_targets:missing", "cannot load run target 'tests.run_targets:missing'"),
        ("no_such_module_xyz:run", "cannot load run target 'no_such_module_xyz:run'"),
    ],
)
def test_failing_runs_are_failed_with_the_reason(reg: RunRegistry, target: str, error: str):
    rec = reg.wait(reg.submit(cfg(target), fingerprint="fp").id, timeout=20)
    assert rec.status == FAILED
    assert error.format(dir=reg.run_dir(rec.id)) in rec.error


def test_queue_is_fifo_with_one_run_at_a_time(reg: RunRegistry):
    ids = [reg.submit(cfg(steps=2, sleep=0.05, n=i), fingerprint="fp").id for i in range(3)]
    assert [reg.get(i, refresh=False).status for i in ids] == [RUNNING, QUEUED, QUEUED]
    records = [reg.wait(i, timeout=30) for i in ids]
    assert all(r.status == SUCCEEDED for r in records)
    for earlier, later in itertools.pairwise(records):
        assert later.started_at >= earlier.finished_at  # never two at once, and in submission order


def test_max_concurrent_two_runs_in_parallel(home: Path):
    reg = RunRegistry(home, max_concurrent=2)
    try:
        ids = [reg.submit(cfg("tests.run_targets:until_cancelled", n=i), fingerprint="fp").id for i in range(3)]
        assert [reg.get(i, refresh=False).status for i in ids] == [RUNNING, RUNNING, QUEUED]
        reg.cancel(ids[0])
        wait_for(lambda: reg.get(ids[2]).status == RUNNING, 10)
    finally:
        for run_id in ids:
            reg.request_cancel(run_id)
        kill_workers(reg)


def test_kill_9_worker_is_failed_with_reason(reg: RunRegistry):
    rec = worker_started(reg, reg.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="fp").id)
    os.kill(rec.pid, signal.SIGKILL)
    rec = wait_for(lambda: (r := reg.get(rec.id)).done and r, 60)
    assert rec.status == FAILED and "killed by signal SIGKILL" in rec.error


def test_kill_9_seen_from_a_process_that_did_not_spawn_it(reg: RunRegistry):
    """Another process has no exit code: the pid check (zombie or gone) must still catch it."""
    rec = worker_started(reg, reg.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="fp").id)
    process = supervisor._SPAWNED.pop(rec.id)  # forget the handle, as a different process would
    os.kill(rec.pid, signal.SIGKILL)
    rec = wait_for(lambda: (r := reg.get(rec.id)).done and r, 30)
    assert rec.status == FAILED and f"worker pid {rec.pid} is gone" in rec.error
    process.wait()


def test_stopped_worker_goes_stale_and_is_failed_and_killed(home: Path):
    """The run starts under the default limit (a busy machine cannot make a live worker look stale), then a
    registry with a 1.5 s limit looks at it once it is frozen."""
    starter, reg = RunRegistry(home), RunRegistry(home, stale_after=1.5)
    try:
        rec = worker_started(starter, starter.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="fp").id)
        os.kill(rec.pid, signal.SIGSTOP)  # alive but frozen: only the heartbeat shows it
        rec = wait_for(lambda: (r := reg.get(rec.id)).done and r, 60)
        assert rec.status == FAILED and "no heartbeat from worker pid" in rec.error
        wait_for(lambda: process_alive(rec.pid, rec.id) is False, 5)  # and it does not keep training
    finally:
        kill_workers(reg)


def test_cancel_cooperative(reg: RunRegistry):
    rec = worker_started(reg, reg.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="fp").id)
    rec = reg.cancel(rec.id)
    assert (rec.status, rec.error) == (CANCELLED, "cancelled by user")  # not the forced kill's reason
    assert "cancelled" in (reg.run_dir(rec.id) / "log.txt").read_text()


def test_cancel_forced_when_the_target_ignores_it(reg: RunRegistry):
    rec = worker_started(reg, reg.submit(cfg("tests.run_targets:ignores_cancel"), fingerprint="fp").id)
    rec = reg.cancel(rec.id, wait=1.0)
    assert rec.status == CANCELLED and "did not stop within 1 s and was killed" in rec.error, (rec.status, rec.error)
    assert process_alive(rec.pid, rec.id) is False


def test_worker_enforces_cancel_itself_when_nobody_waits(home: Path):
    reg = RunRegistry(home, force_cancel_after=1.0)
    try:
        rec = worker_started(reg, reg.submit(cfg("tests.run_targets:ignores_cancel"), fingerprint="fp").id)
        reg.request_cancel(rec.id)  # what the app does: ask and return at once
        rec = wait_for(lambda: (r := reg.get(rec.id)).done and r, 60)
        assert rec.status == CANCELLED and "was killed" in rec.error
    finally:
        kill_workers(reg)


def test_cancel_of_queued_and_finished_runs(reg: RunRegistry):
    first = reg.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="fp").id
    second = reg.submit(cfg(n=2), fingerprint="fp").id
    assert reg.cancel(second).status == CANCELLED  # queued: cancelled at once, never started
    assert reg.get(second).pid is None
    assert reg.cancel(first).status == CANCELLED
    assert reg.cancel(first).status == CANCELLED  # cancelling again changes nothing


def test_run_worker_in_process_handles_a_queued_run(reg: RunRegistry):
    """The worker's code path without a subprocess (also what `python -m pafo.worker ID` does by hand)."""
    run_id = reg.submit(cfg(steps=2, sleep=0.0), fingerprint="fp", start=False).id
    before = list(logging.getLogger().handlers)
    try:
        assert run_worker(reg, run_id, heartbeat_interval=0.05) == 0
    finally:
        for handler in set(logging.getLogger().handlers) - set(before):
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert reg.get(run_id, refresh=False).status == SUCCEEDED
    assert [e["epoch"] for e in reg.epochs(run_id)] == [1, 2]


def test_two_processes_submitting_at_once(reg: RunRegistry, home: Path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        results = [pool.apply_async(run_targets.submit_many, (str(home), barrier, 3, tag)) for tag in "ab"]
        ids = [run_id for result in results for run_id in result.get(60)]
    assert len(ids) == len(set(ids)) == 6
    records = [reg.wait(run_id, timeout=30) for run_id in ids]
    assert all(r.status == SUCCEEDED for r in records)
    values = sorted(reg.load_result(r.id).result["value"] for r in records)
    assert values == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert reg.store.read("PRAGMA integrity_check")[0][0] == "ok"


def test_run_started_in_another_process_is_visible_and_cli_codes(reg: RunRegistry, home: Path):
    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.run_targets", *argv], capture_output=True, text=True, timeout=60
        )

    started = cli("start", "--steps", "2")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert len(started.stdout.splitlines()) == 1
    assert reg.get(run_id).config["steps"] == 2  # written by the other process, read here
    assert cli("wait", run_id, "--timeout", "30").returncode == 0
    shown = json.loads(cli("show", run_id, "--json").stdout)
    assert shown["status"] == SUCCEEDED and set(shown) == set(RunRecord.SUMMARY_KEYS)
    bad = cli("show", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown run id 'nope'")


# ============================================================================ cache and restart


def test_identical_run_is_reused_quickly_unless_forced(reg: RunRegistry, monkeypatch: pytest.MonkeyPatch):
    config = cfg(steps=1, sleep=0.0)
    original = reg.wait(reg.submit(config, fingerprint="fp").id, timeout=20)
    # Answered by submit itself (no worker, nothing to wait for): how fast the machine is does not matter.
    reused = reg.submit(dict(reversed(list(config.items()))), fingerprint="fp")  # same config, other key order
    assert (reused.status, reused.reused_from, reused.pid) == (SUCCEEDED, original.id, None)
    assert reused.result_path == original.result_path
    assert reg.submit(config, fingerprint="fp").reused_from == original.id  # chains point at the original
    assert reg.submit(config, fingerprint="other").reused_from is None  # other dataset
    forced = reg.submit(config, fingerprint="fp", force=True)
    assert forced.reused_from is None and reg.wait(forced.id, 20).status == SUCCEEDED
    monkeypatch.setattr(registry_module, "code_version", lambda: "changedcode0")
    assert reg.submit(config, fingerprint="fp").reused_from is None  # other code version


def test_result_deleted_means_no_reuse(reg: RunRegistry):
    config = cfg(steps=1, sleep=0.0)
    original = reg.wait(reg.submit(config, fingerprint="fp").id, timeout=20)
    Path(original.result_path).unlink()
    assert reg.submit(config, fingerprint="fp").reused_from is None


def test_restarted_registry_lists_earlier_runs_and_results(reg: RunRegistry, home: Path):
    ok = reg.wait(reg.submit(cfg(steps=1, sleep=0.0), fingerprint="fp", label="baseline").id, 20)
    bad = reg.wait(reg.submit(cfg("tests.run_targets:raises"), fingerprint="fp", parent_id=ok.id).id, 20)
    reg.close()
    supervisor._SPAWNED.clear()  # a new process knows nothing but the database
    again = RunRegistry(home)
    listed = {r.id: r for r in again.list()}
    assert set(listed) == {ok.id, bad.id}
    assert listed[ok.id].label == "baseline" and listed[bad.id].parent_id == ok.id
    assert again.load_result(ok.id).result == {"epochs": 1, "final_loss": 1.0}
    assert listed[bad.id].error == "ValueError: boom"
    again.close()


# ============================================================================ CLI handlers in process


def test_cli_start_show_list_wait(home: Path, capsys: pytest.CaptureFixture):
    assert cli_main(["start", "--steps", "1", "--sleep", "0"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert cli_main(["wait", run_id, "--timeout", "20"]) == 0
    assert capsys.readouterr().out.strip() == f"{run_id} succeeded"
    assert cli_main(["show", run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown) == ["id", "status", "progress", "stage", "pid", "reused_from", "result_path", "error"]
    assert cli_main(["start", "--steps", "1", "--sleep", "0"]) == 0
    reused_id = capsys.readouterr().out.strip()
    assert json.loads(_out(capsys, ["show", reused_id, "--json"]))["reused_from"] == run_id
    assert cli_main(["start", "--steps", "1", "--sleep", "0", "--force"]) == 0
    forced_id = capsys.readouterr().out.strip()
    assert json.loads(_out(capsys, ["show", forced_id, "--json"]))["reused_from"] is None
    listed = json.loads(_out(capsys, ["list", "--json"]))
    assert [r["id"] for r in listed] == [forced_id, reused_id, run_id]
    table = _out(capsys, ["list"])
    assert table.splitlines()[0].split() == ["id", "status", "progress", "stage", "created", "reused_from", "label"]
    assert "100%" in _out(capsys, ["show", run_id])
    assert cli_main(["wait", forced_id, "--timeout", "20"]) == 0
    kill_workers(RunRegistry(home))


def _out(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 0
    return capsys.readouterr().out


def test_cli_exit_codes_for_failure_cancel_timeout_and_bad_input(home: Path, capsys: pytest.CaptureFixture):
    reg = RunRegistry(home)
    try:
        failed = reg.submit(cfg("tests.run_targets:raises"), fingerprint="x").id
        assert cli_main(["wait", failed, "--timeout", "20"]) == 1
        assert "failed: ValueError: boom" in capsys.readouterr().out
        looping = reg.submit(cfg("tests.run_targets:until_cancelled"), fingerprint="x").id
        assert cli_main(["wait", looping, "--timeout", "0.3"]) == 124
        assert cli_main(["cancel", looping]) == 0
        assert f"{looping} cancelled" in capsys.readouterr().out
        assert cli_main(["wait", looping]) == 1
        capsys.readouterr()
        for argv, message in (
            (["show", "nope"], "error: unknown run id 'nope'"),
            (["cancel", "nope"], "error: unknown run id 'nope'"),
            (["wait", "nope"], "error: unknown run id 'nope'"),
            (["wait", looping, "--timeout", "-1"], "error: --timeout must be a positive number"),
            (["start", "--steps", "0"], "error: --steps must be a positive integer"),
            (["start", "--target", "bad"], "error: run config field 'target' must look like"),
        ):
            assert cli_main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(message) and err.count("\n") == 1
        assert {r.id for r in reg.list()} == {failed, looping}  # bad input touched no run
    finally:
        kill_workers(reg)


def test_cli_show_reports_a_corrupt_result_without_crashing(reg: RunRegistry, capsys: pytest.CaptureFixture):
    rec = reg.wait(reg.submit(cfg(steps=1, sleep=0.0), fingerprint="test-fingerprint").id, 20)
    Path(rec.result_path).write_bytes(b"\x00\xffnot json")
    assert cli_main(["show", rec.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == SUCCEEDED and "is corrupt" in shown["error"]
    assert cli_main(["show", rec.id]) == 0 and "is corrupt" in capsys.readouterr().out


def test_cli_list_when_empty(home: Path, capsys: pytest.CaptureFixture):
    assert cli_main(["list"]) == 0 and "no runs yet" in capsys.readouterr().out
    assert cli_main(["list", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


# ============================================================================ faults: corruption, lost database, races


def gate_cfg(tmp_path: Path, name: str, **extra) -> dict:
    """A gated run: it writes ``<name>.ready`` when started and returns once the test creates ``<name>.gate``."""
    return cfg("tests.run_targets:gated", ready=str(tmp_path / f"{name}.ready"), gate=str(tmp_path / f"{name}.gate"),
               **extra)


def open_gate(config: dict) -> None:
    Path(config["gate"]).touch()


def started(config: dict) -> None:
    wait_for(lambda: Path(config["ready"]).exists(), 120)


def test_corrupted_result_is_not_reused_but_retrained(reg: RunRegistry, home: Path, capsys):
    """Regression: after runs/<id>/result.json was corrupted, the same flags reported `succeeded` (reused) at once.
    A run is reused only while its artifacts match the checksums recorded when it was published."""
    assert cli_main(["start", "--steps", "1", "--sleep", "0"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli_main(["wait", first, "--timeout", "60"]) == 0
    run_dir = reg.run_dir(first)
    assert json.loads((run_dir / "manifest.json").read_text())["sha256"]["result.json"]
    (run_dir / "result.json").write_text('{"epochs": 1, "final_loss": 0.0}')  # valid JSON, wrong content
    capsys.readouterr()
    assert cli_main(["start", "--steps", "1", "--sleep", "0"]) == 0
    second = capsys.readouterr().out.strip()
    assert second != first and reg.get(second).reused_from is None
    assert cli_main(["wait", second, "--timeout", "60"]) == 0
    assert reg.load_result(second).result == {"epochs": 1, "final_loss": 1.0}  # retrained, not the edited file
    capsys.readouterr()
    assert cli_main(["start", "--steps", "1", "--sleep", "0"]) == 0  # the new run is whole: reused now
    assert reg.get(capsys.readouterr().out.strip()).reused_from == second


def test_deleted_database_is_rebuilt_with_every_run_listed(reg: RunRegistry, home: Path, tmp_path: Path):
    """Regression: deleting runs.sqlite lost every run and orphaned the running worker's result. Each run folder
    holds its config and status, so a new registry lists every run again, and the worker that was running when
    the file vanished records its success in the new one."""
    done = reg.wait(reg.submit(cfg(steps=1, sleep=0.0), fingerprint="fp", label="kept").id, 60)
    failed = reg.wait(reg.submit(cfg("tests.run_targets:raises"), fingerprint="fp", parent_id=done.id).id, 60)
    reused = reg.submit(cfg(steps=1, sleep=0.0), fingerprint="fp")
    gated = gate_cfg(tmp_path, "running")
    running = reg.submit(gated, fingerprint="fp")
    started(gated)
    queued = reg.submit(cfg(steps=1, sleep=0.0, n="queued"), fingerprint="fp")
    cancelled = reg.submit(cfg(n="cancelled"), fingerprint="fp")
    reg.request_cancel(cancelled.id)
    before = {r.id: (r.status, r.label, r.parent_id, r.reused_from, r.result_path, r.error) for r in reg.list()}
    assert [before[r.id][0] for r in (done, failed, reused, running, queued, cancelled)] == [
        SUCCEEDED, FAILED, SUCCEEDED, RUNNING, QUEUED, CANCELLED]
    reg.close()
    (home / "runs.sqlite").unlink()  # what `rm runs.sqlite` does; the -wal and -shm files stay behind
    again = RunRegistry(home)
    after = {r.id: (r.status, r.label, r.parent_id, r.reused_from, r.result_path, r.error) for r in again.list()}
    assert after == before
    open_gate(gated)
    assert again.wait(running.id, timeout=120).status == SUCCEEDED
    assert again.load_result(running.id).result == {"gated": True, "value": None}
    assert again.wait(queued.id, timeout=120).status == SUCCEEDED  # the queue goes on in the new file
    assert again.store.read("PRAGMA integrity_check")[0][0] == "ok"
    kill_workers(again)


def test_finishing_worker_re_registers_a_run_missing_from_the_database(reg: RunRegistry, home: Path, tmp_path):
    """A worker whose row is gone when it finishes (the database was replaced by one without it) inserts the run
    again from its folder and records the outcome, instead of leaving its result orphaned."""
    gated = gate_cfg(tmp_path, "orphan")
    run_id = reg.submit(gated, fingerprint="fp").id
    started(gated)
    with reg.store.write() as conn:
        conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    assert run_id not in {r.id for r in reg.list()}
    open_gate(gated)
    row = wait_for(lambda: reg.store.read("SELECT status, result_path FROM runs WHERE id = ?", (run_id,)), 120)
    wait_for(lambda: reg.store.read("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == SUCCEEDED, 120)
    assert reg.load_result(run_id).result["gated"] is True and row


def test_truncated_database_is_detected_and_rebuilt(reg: RunRegistry, home: Path, tmp_path: Path, capsys):
    """A database truncated while a run writes is refused on open (PRAGMA quick_check) with how to recover, never
    served half; `pafo runs rebuild` recovers every run and the running one still finishes."""
    done = reg.wait(reg.submit(cfg(steps=1, sleep=0.0), fingerprint="fp").id, 60)
    gated = gate_cfg(tmp_path, "writer")
    running = reg.submit(gated, fingerprint="fp").id
    started(gated)
    with reg.store.write() as conn:  # enough rows that the file spans many pages
        conn.executemany("INSERT INTO epochs (run_id, seq, at, metrics_json) VALUES (?, ?, 0, ?)",
                         [(done.id, 1000 + i, json.dumps({"pad": "x" * 500})) for i in range(100)])
    reg.store.read("PRAGMA wal_checkpoint(TRUNCATE)")
    db = home / "runs.sqlite"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 3)
    with pytest.raises(PafoEnvironmentError, match=r"runs.sqlite is damaged.*pafo runs rebuild"):
        RunRegistry(home)
    assert cli_main(["list"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pafo runs rebuild" in err
    assert cli_main(["rebuild"]) == 0
    assert "2 run(s) listed" in capsys.readouterr().out
    again = RunRegistry(home)
    assert {r.id for r in again.list()} == {done.id, running}
    open_gate(gated)
    assert again.wait(running, timeout=120).status == SUCCEEDED
    kill_workers(again)


def _fake_worker(run_id: str) -> subprocess.Popen:
    """A process that looks like run_id's worker (its id is on the command line) but only sleeps."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", run_id], start_new_session=True)


def _publish_result(reg: RunRegistry, run_id: str) -> None:
    from pafo.manifest import write_manifest

    (reg.run_dir(run_id) / "result.json").write_text('{"finished": true}')
    write_manifest(reg.run_dir(run_id))


@pytest.mark.parametrize("published", [True, False])
def test_forced_cancel_racing_the_end_of_a_run_has_one_outcome(reg: RunRegistry, published: bool):
    """Cancel racing a run that is finishing: killed after it published its result → succeeded (with that result),
    killed before → cancelled. Never `failed`."""
    run_id = reg.submit(cfg(), fingerprint="fp", start=False).id
    worker = _fake_worker(run_id)
    try:
        assert reg.mark_running(run_id, worker.pid)
        if published:
            _publish_result(reg, run_id)
        rec = reg.cancel(run_id, wait=0.2)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        worker.kill()
        worker.wait()
    if published:
        assert (rec.status, rec.error) == (SUCCEEDED, None)
        assert reg.load_result(run_id).result == {"finished": True}
    else:
        assert rec.status == CANCELLED and "was killed" in rec.error


@pytest.mark.parametrize("published", [True, False])
def test_worker_gone_after_publishing_is_succeeded_not_gone(reg: RunRegistry, published: bool):
    """Regression (a what-if run under load ended "worker pid … is gone"): a worker that vanished after
    publishing its result but before recording it ends succeeded; one that published nothing ends failed."""
    run_id = reg.submit(cfg(), fingerprint="fp", start=False).id
    worker = _fake_worker(run_id)
    assert reg.mark_running(run_id, worker.pid)
    if published:
        _publish_result(reg, run_id)
    worker.kill()
    worker.wait()
    rec = reg.get(run_id)
    if published:
        assert rec.status == SUCCEEDED and reg.load_result(run_id).result == {"finished": True}
    else:
        assert rec.status == FAILED and "is gone" in rec.error


def test_cancel_arriving_after_the_target_returned_ends_succeeded(home: Path, tmp_path: Path):
    """The target finished its work and ignores the cancel: the worker publishes the result, so the run ends
    succeeded (the result exists), and the status and the files agree."""
    reg = RunRegistry(home, force_cancel_after=600)
    try:
        gated = gate_cfg(tmp_path, "late", ignore_cancel=True)
        run_id = reg.submit(gated, fingerprint="fp").id
        started(gated)
        reg.request_cancel(run_id)
        open_gate(gated)
        rec = reg.wait(run_id, timeout=120)
        assert (rec.status, rec.error) == (SUCCEEDED, None)
        assert (reg.run_dir(run_id) / "manifest.json").is_file()
    finally:
        kill_workers(reg)


def test_forced_cancel_waits_while_the_run_is_being_published(monkeypatch: pytest.MonkeyPatch):
    """The worker's own forced cancel never kills a run that is publishing (it holds the finishing lock): the
    run then ends succeeded on its own; with the lock free it marks the run cancelled and kills."""
    import threading

    from pafo import worker as worker_module

    marked, kills = [], []

    class Registry:
        force_cancel_after = 0.0

        def mark_cancelled(self, run_id, reason):
            marked.append(run_id)
            return True

    monkeypatch.setattr(worker_module, "_kill_own_group", lambda: kills.append(True))
    finishing = threading.Lock()
    beat = worker_module.Heartbeat(Registry(), "r1", worker_module.StopFlag(Registry(), "r1"), 1.0, finishing)
    with finishing:
        beat._on_cancel()
        beat._on_cancel()
    assert marked == [] and kills == []
    beat._on_cancel()
    assert marked == ["r1"] and kills == [True]
    assert not finishing.locked()


def test_progress_and_cancel_reads_survive_a_broken_registry(monkeypatch: pytest.MonkeyPatch):
    """A locked or damaged registry must not fail the run that reports to it: progress is skipped, the cancel
    flag keeps its last value."""
    from pafo import worker as worker_module

    class Broken:
        def update_progress(self, *args):
            raise PafoEnvironmentError("locked")

        def cancel_requested(self, run_id):
            raise PafoEnvironmentError("locked")

    worker_module.ProgressReporter(Broken(), "r1")(0.5, "epoch 1", {"loss": 1.0})
    assert worker_module.StopFlag(Broken(), "r1")() is False


def test_read_only_home_and_unopenable_database_are_environment_faults(reg: RunRegistry):
    """A read-only PAFO_HOME said "not a readable SQLite database"; it is now named as what it is."""
    for error in ("attempt to write a readonly database", "unable to open database file"):
        with pytest.raises(PafoEnvironmentError, match=r"cannot be written .*make .* writable"):
            _raise_inside(reg, sqlite3.OperationalError(error))


def test_code_version_ignores_presentation_modules(tmp_path):
    """Regression (issue 12): editing a label or colour in report.py stopped every finished run from being reused;
    only code that computes results changes the version (not a method's colour, a docstring, a help line or a
    comment in a module that does)."""
    import shutil

    from pafo.paths import PACKAGE_ROOT
    from pafo.registry import PRESENTATION_MODULES, code_version, source_version

    package = tmp_path / "pafo"
    shutil.copytree(PACKAGE_ROOT / "pafo", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_version(package)
    assert before == code_version() and "report.py" in PRESENTATION_MODULES
    (package / "report.py").write_text((package / "report.py").read_text() + "\n# a new colour\n")
    assert source_version(package) == before
    configs = package / "method_configs.py"
    text = configs.read_text()
    relabelled = text.replace('"#BE4BDB"', '"#000000"').replace('"""Optimisation settings', '"""Settings')
    assert relabelled != text
    configs.write_text(relabelled.replace('"AdamW learning rate"', '"AdamW step size"') + "\n# a comment\n")
    assert source_version(package) == before  # a colour, a docstring, a help line, a comment
    configs.write_text(relabelled.replace('"pafo.methods:fit_groupdro"', '"pafo.methods:fit_reweight"'))
    assert source_version(package) != before  # which function trains a method
    configs.write_text(text)
    metrics = package / "metrics.py"
    metrics.write_text(metrics.read_text().replace("worst_fraction_rows(users.accuracy, 0.1)",
                                                   "worst_fraction_rows(users.accuracy, 0.2)"))
    assert source_version(package) != before


def test_descriptive_spec_fields_are_left_out_by_name_not_position():
    """Issue 21: the reuse key dropped MethodSpec's arguments 3, 4 and 5 as its label, colour and cost, so reordering
    the fields would silently have dropped a fit function instead and kept a label in the key. The descriptive
    fields are marked in their metadata (pafo.config.descriptive) and the key drops the arguments bound to them."""
    import dataclasses

    from pafo.config import descriptive
    from pafo.method_configs import MethodSpec
    from pafo.reuse import described_calls, result_code, spec_arguments

    assert described_calls()["MethodSpec"] == spec_arguments(MethodSpec)
    assert spec_arguments(MethodSpec)[1] == {"label", "colour", "cost"}

    @dataclasses.dataclass(frozen=True)
    class Spec:
        name: str
        label: str = descriptive("")
        fit: str = ""

    @dataclasses.dataclass(frozen=True)
    class Reordered:
        name: str
        fit: str = ""
        label: str = descriptive("")

    for spec, call in ((Spec, 'Spec("x", "{label}", "{fit}")'), (Reordered, 'Spec("x", "{fit}", "{label}")')):
        calls = {"Spec": spec_arguments(spec)}

        def key(call=call, calls=calls, **arguments):
            return result_code(call.format(**arguments), calls)

        assert key(label="a", fit="m:f") == key(label="b", fit="m:f")  # a label: the same run
        assert key(label="a", fit="m:f") != key(label="a", fit="m:g")  # another fit function: another run
