"""The run supervisor: the worker processes of runs, started, watched, reaped and killed.

A run trains in ``python -m pafo.worker`` in a session of its own (so a cancel can kill its whole process group).
This module holds what concerns those processes and nothing of the database: how a worker is started
(:func:`spawn_worker`), whether its pid is still that worker (:func:`process_alive`, guarding against pid reuse), what
a gone worker's exit says (:func:`decide_outcome`, pure and unit-tested), and reaping and killing. The registry
(:mod:`pafo.registry`) calls it when it dispatches, reconciles and cancels runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

from pafo.paths import PACKAGE_ROOT
from pafo.run_store import CANCELLED, FAILED, LOG_NAME, RUNNING

__all__ = ["Outcome", "decide_outcome", "exit_code", "forget_exited", "kill_worker", "process_alive", "reap",
           "spawn_worker", "worker_command", "worker_env"]

REASON_CANCELLED_GONE = "cancelled by user (the worker stopped before recording it)"
REASON_STALE = "no heartbeat from worker pid {pid} for {age:.0f} s (limit {limit:g} s): it hung or was stopped"
REASON_EXIT_SIGNAL = "worker pid {pid} was killed by signal {signal} before finishing"
REASON_EXIT_CODE = "worker pid {pid} exited with code {code} before recording a result (see its log.txt)"
REASON_EXIT_ZERO = "worker pid {pid} exited without recording a result (see its log.txt)"
REASON_GONE = "worker pid {pid} is gone (killed or crashed) before finishing; see its log.txt"

# Popen handles of workers this process started: polling them reaps zombies and gives exact exit codes.
_SPAWNED: dict[str, subprocess.Popen] = {}
_SPAWNED_LOCK = threading.Lock()


class Outcome(NamedTuple):
    """What reconciliation decided for a run: its new status and the reason shown to the user."""

    status: str
    reason: str


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



def worker_command(run_id: str, home: Path, *, max_concurrent: int, stale_after: float,
                   force_cancel_after: float) -> list[str]:
    """The command line of a run's worker (the run id in it lets :func:`process_alive` detect pid reuse)."""
    return [
        sys.executable, "-m", "pafo.worker", run_id, "--home", str(home.resolve()),
        "--max-concurrent", str(max_concurrent), "--stale-after", str(stale_after),
        "--force-cancel-after", str(force_cancel_after),
    ]  # fmt: skip


def spawn_worker(run_id: str, command: list[str], run_dir: Path) -> subprocess.Popen:
    """Start a run's worker in its own session, its output appended to the run folder's log; ``OSError`` when it
    cannot start. The handle is kept, so this process can reap it and read its exact exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_NAME, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=worker_env(), close_fds=True)
    with _SPAWNED_LOCK:
        _SPAWNED[run_id] = process
    return process


def kill_worker(run_id: str, pid: int | None) -> None:
    """SIGKILL the worker's whole process group (it runs in its own session, so pgid == pid)."""
    if not process_alive(pid, run_id):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    reap(run_id, timeout=2.0)


def worker_env() -> dict[str, str]:
    """The caller's environment with the package root first on PYTHONPATH, so the worker imports this code."""
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def exit_code(run_id: str, *, dying: bool = False) -> int | None:
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


def reap(run_id: str, timeout: float) -> None:
    """Wait briefly for a worker we spawned to exit, so it does not linger as a zombie."""
    with _SPAWNED_LOCK:
        process = _SPAWNED.get(run_id)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def forget_exited(running_ids: set[str]) -> None:
    """Poll every worker this process spawned (polling reaps zombies) and drop exited ones whose run is final.

    Exited workers of still-running rows are kept one more round so reconcile can read their exit code.
    """
    with _SPAWNED_LOCK:
        for run_id, process in list(_SPAWNED.items()):
            if process.poll() is not None and run_id not in running_ids:
                del _SPAWNED[run_id]
