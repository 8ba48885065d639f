"""The process that runs one registry run: ``python -m pafo.worker RUN_ID [--home DIR]``.

:meth:`pafo.registry.RunRegistry.dispatch` starts it in a session of its own, so training never runs inside the
Streamlit script and a cancel can kill the worker together with any children it made. The worker resolves the
run's target (``config["target"]``, default ``pafo.experiment:run_experiment``, the same code path as
``pafo experiment``), feeds its progress into the registry, heartbeats from a background thread, and records
exactly one final status. When it ends it dispatches the next queued run, so the queue needs no daemon.

Target contract::

    target(config: dict, *, out_dir: Path, progress: Callable[[float, str, dict | None], None],
           should_stop: Callable[[], bool]) -> dict

The target writes its artifacts (result.json, per-user table, safetensors weights) atomically into ``out_dir``
and raises :class:`pafo.errors.RunCancelled` when ``should_stop()`` turns true. A worker started with
``--features-stdin`` (a Ray cell of a sweep, :func:`pafo.sweep.ray_cell`) first reads the seeds' precomputed
features from stdin (a pickled ``{seed: FeatureResult}``) and also passes them as ``features=`` (see
:func:`pafo.experiment.run_experiment`). If it returns a dict and wrote
no result.json, the worker writes the dict there. The worker then *publishes* the run (``manifest.json``: the
checksums of its artifacts) and records it ``succeeded``; a cancel that arrives once the target has returned no
longer stops it, so a run ends ``succeeded`` exactly when its result was published. Recording the final status
is retried while the registry is locked or being rebuilt, and re-registers the run if its row is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pafo.errors import PafoEnvironmentError, PafoInputError, RunCancelled
from pafo.manifest import write_manifest
from pafo.paths import atomic_write_text
from pafo.registry import (
    DEFAULT_STALE_AFTER,
    DEFAULT_TARGET,
    FORCE_CANCEL_AFTER,
    REASON_CANCELLED,
    REASON_CANCELLED_FORCED,
    RunRegistry,
    config_hash,
)
from pafo.run_store import LOG_NAME, MSG_DISK_FULL, RESULT_NAME

__all__ = ["FEATURES_STDIN", "HEARTBEAT_INTERVAL", "StopFlag", "describe_error", "main", "resolve_target", "run_worker"]

HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats; the registry calls a run dead after DEFAULT_STALE_AFTER
STOP_CACHE_SECONDS = 0.5  # should_stop reads the database at most this often
PROGRESS_MIN_INTERVAL = 0.2  # progress rows are written at most this often unless the stage or metrics change
RECORD_PATIENCE = 120.0  # seconds a final status is retried while the registry is locked or being rebuilt
FEATURES_STDIN = "--features-stdin"  # the flag that makes the worker read precomputed features from stdin

MSG_NOT_MINE = "run %s is not queued or running for this worker (status %s, pid %s): nothing to do"
MSG_BAD_TARGET = "cannot load run target {target!r}: {detail}"
MSG_RECORD_RETRY = "could not record the outcome of run %s yet (%s): retrying"

logger = logging.getLogger("pafo.worker")


def describe_error(exc: BaseException) -> str:
    """The one-line error stored for a failed run; a full disk gets a message that says what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return MSG_DISK_FULL.format(file=exc.filename or "the run folder")
    if isinstance(exc, PafoInputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def resolve_target(spec: str) -> Callable[..., dict]:
    """Import ``package.module:function``; a bad spec raises :class:`PafoInputError` naming it."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise PafoInputError(MSG_BAD_TARGET.format(target=spec, detail=exc)) from exc
    if not callable(function):
        raise PafoInputError(MSG_BAD_TARGET.format(target=spec, detail="not callable"))
    return function


class StopFlag:
    """``should_stop`` for the target: whether a cancel was requested, reading the database at most every 0.5 s
    so calling it once per batch costs nothing."""

    def __init__(self, registry: RunRegistry, run_id: str, cache_seconds: float = STOP_CACHE_SECONDS) -> None:
        self.registry, self.run_id, self.cache_seconds = registry, run_id, cache_seconds
        self._checked_at = float("-inf")
        self._value = False

    def set(self) -> None:
        """Record a cancel seen elsewhere (the heartbeat thread) without another database read."""
        self._value = True

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._value and now - self._checked_at >= self.cache_seconds:
            self._checked_at = now
            try:
                self._value = self.registry.cancel_requested(self.run_id)
            except PafoEnvironmentError as exc:  # registry locked or being rebuilt: ask again next time
                logger.warning("could not read the cancel flag: %s", exc)
        return self._value


class ProgressReporter:
    """``progress`` for the target: writes to the registry, throttled so a per-batch call stays cheap."""

    def __init__(self, registry: RunRegistry, run_id: str, min_interval: float = PROGRESS_MIN_INTERVAL) -> None:
        self.registry, self.run_id, self.min_interval = registry, run_id, min_interval
        self._last_at = float("-inf")
        self._last_stage: str | None = None

    def __call__(self, fraction: float, stage: str, metrics: dict | None = None) -> None:
        now = time.monotonic()
        if metrics is None and stage == self._last_stage and now - self._last_at < self.min_interval:
            return
        self._last_at, self._last_stage = now, stage
        try:
            self.registry.update_progress(self.run_id, fraction, stage, metrics)
        except PafoEnvironmentError as exc:  # a busy or damaged registry must not fail the training it reports on
            logger.warning("could not record progress: %s", exc)


class Heartbeat(threading.Thread):
    """Beats every few seconds and enforces a cancel the target ignores: ``force_after`` seconds after it sees
    the request it marks the run cancelled and kills its own process group, even if nobody waits on the cancel."""

    def __init__(self, registry: RunRegistry, run_id: str, stop_flag: StopFlag, interval: float,
                 finishing: threading.Lock | None = None) -> None:
        super().__init__(name=f"pafo-heartbeat-{run_id}", daemon=True)
        self.registry, self.run_id, self.stop_flag, self.interval = registry, run_id, stop_flag, interval
        self.finishing = finishing or threading.Lock()
        self.force_after = registry.force_cancel_after
        self._stopped = threading.Event()
        self._cancel_seen_at: float | None = None

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                cancel = self.registry.heartbeat(self.run_id)
            except Exception:  # a locked database must not kill the run: the next beat retries
                logger.exception("heartbeat failed")
                continue
            if cancel:
                self._on_cancel()

    def _on_cancel(self) -> None:
        """Tell the target, then force the stop if it has not stopped within the grace period."""
        self.stop_flag.set()
        now = time.monotonic()
        if self._cancel_seen_at is None:
            self._cancel_seen_at = now
        elif now - self._cancel_seen_at >= self.force_after and not self._stopped.is_set():
            if not self.finishing.acquire(blocking=False):
                return  # the target returned and the run is being published: it ends succeeded on its own
            # Killed while holding the lock, so the target cannot publish between the mark and the kill; a run
            # that just ended keeps its status and goes on to dispatch the next one.
            reason = REASON_CANCELLED_FORCED.format(after=self.force_after)
            try:
                if self.registry.mark_cancelled(self.run_id, reason):
                    logger.warning("run %s ignored the cancel for %.0f s: killing it", self.run_id, self.force_after)
                    _kill_own_group()
            finally:
                self.finishing.release()


def _kill_own_group() -> None:
    """SIGKILL this worker and its children; only the group when the worker leads it (never a caller's shell)."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _configure_logging(out_dir: Path) -> None:
    """Log to out_dir/log.txt; when stderr already is that file (spawned by dispatch) log through stderr only."""
    log_path = out_dir / LOG_NAME
    handler: logging.Handler
    try:
        same = log_path.exists() and os.path.samestat(os.fstat(sys.stderr.fileno()), log_path.stat())
    except (OSError, ValueError, AttributeError):
        same = False
    handler = logging.StreamHandler(sys.stderr) if same else logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _write_result(out_dir: Path, result: object) -> Path:
    """Keep the target's own result.json; otherwise store what it returned."""
    path = out_dir / RESULT_NAME
    if not path.is_file():
        atomic_write_text(path, json.dumps(result if result is not None else {}, indent=2, default=str))
    return path


def run_worker(registry: RunRegistry, run_id: str, *, heartbeat_interval: float = HEARTBEAT_INTERVAL,
               target_kwargs: dict | None = None) -> int:
    """Run one run to a final status; returns the process exit code (0 succeeded, 1 otherwise).
    ``target_kwargs`` are passed on to the target (``features`` read with ``--features-stdin``)."""
    record = registry.get(run_id, refresh=False)
    out_dir = registry.run_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(out_dir)
    if not registry.mark_running(run_id, os.getpid()):
        logger.info(MSG_NOT_MINE, run_id, record.status, record.pid)
        if registry.cancel_requested(run_id):
            registry.mark_cancelled(run_id, REASON_CANCELLED)
        registry.dispatch()
        return 1
    stop_flag, finishing = StopFlag(registry, run_id), threading.Lock()
    heartbeat = Heartbeat(registry, run_id, stop_flag, heartbeat_interval, finishing)
    heartbeat.start()
    try:
        succeeded = _execute(registry, run_id, record.config, out_dir, stop_flag, finishing, target_kwargs,
                             fingerprint=record.dataset_fingerprint)
    finally:
        heartbeat.stop()
    registry.dispatch()
    return 0 if succeeded else 1


def _cancel_was_requested(registry: RunRegistry, run_id: str) -> bool:
    try:
        return bool(registry.cancel_requested(run_id))
    except Exception:  # the database itself may be what failed
        return False


def _record(action: Callable[..., bool], *args: object, patience: float = RECORD_PATIENCE) -> bool:
    """Record a final status, retrying while the registry is locked, moved aside or rebuilt (the run's outcome
    must not be lost to a busy moment); after ``patience`` seconds the error propagates."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return action(*args)
        except PafoEnvironmentError as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning(MSG_RECORD_RETRY, args[0], exc)
            time.sleep(1.0)


def _publish(out_dir: Path, result: object, config: dict, fingerprint: str) -> Path:
    """Keep or write result.json, then the manifest of every artifact and of what they are the result of (the
    run's config hash and dataset fingerprint; the fingerprint the target itself reports, if it does, since the
    data may have changed between queueing and loading): from here on the run is published."""
    result = result.to_json() if hasattr(result, "to_json") else result  # a RunResult (pafo.results)
    result_path = _write_result(out_dir, result)
    if isinstance(result, dict) and isinstance(result.get("fingerprint"), str):
        fingerprint = result["fingerprint"]
    write_manifest(out_dir, config_hash=config_hash(config), fingerprint=fingerprint)
    return result_path


def _execute(registry: RunRegistry, run_id: str, config: dict, out_dir: Path, stop_flag: StopFlag,
             finishing: threading.Lock | None = None, target_kwargs: dict | None = None, *,
             fingerprint: str = "") -> bool:
    """Call the target and translate how it ended into exactly one final status."""
    logger.info("run %s started (pid %s)", run_id, os.getpid())
    finishing = finishing or threading.Lock()
    try:
        target = resolve_target(str(config.get("target", DEFAULT_TARGET)))
        result = target(config, out_dir=out_dir, progress=ProgressReporter(registry, run_id), should_stop=stop_flag,
                        **(target_kwargs or {}))
        with finishing:  # the heartbeat's forced cancel waits: publishing and recording it belong together
            result_path = _publish(out_dir, result, config, fingerprint)
            _record(registry.mark_succeeded, run_id, result_path)
    except RunCancelled:
        logger.info("run %s cancelled", run_id)
        _record(registry.mark_cancelled, run_id, REASON_CANCELLED)
        return False
    except BaseException as exc:  # every failure, even SystemExit, must end as `failed`...
        logger.exception("run %s failed", run_id)
        if _cancel_was_requested(registry, run_id):  # ...unless the user cancelled it: then it is `cancelled`
            _record(registry.mark_cancelled, run_id, REASON_CANCELLED)
        else:
            _record(registry.mark_failed, run_id, describe_error(exc))
        return False
    logger.info("run %s succeeded: %s", run_id, result_path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pafo.worker", description="Run one queued PAFO run.")
    parser.add_argument("run_id")
    parser.add_argument("--home", type=Path, default=None, help="registry folder (default $PAFO_HOME)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="limit used to start the next run")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER)
    parser.add_argument("--force-cancel-after", type=float, default=FORCE_CANCEL_AFTER)
    parser.add_argument(FEATURES_STDIN, action="store_true",
                        help="read precomputed features ({seed: FeatureResult}, pickled) from stdin for the target")
    args = parser.parse_args(argv)
    try:
        registry = RunRegistry(
            args.home,
            max_concurrent=args.max_concurrent,
            stale_after=args.stale_after,
            force_cancel_after=args.force_cancel_after,
        )
    except PafoInputError as exc:  # no registry to record anything in: the spawner reads the exit code
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        # Pickle from the process that started this worker (a sweep's own Ray task), never from a user's file.
        target_kwargs = {"features": pickle.load(sys.stdin.buffer)} if args.features_stdin else None
        return run_worker(registry, args.run_id, target_kwargs=target_kwargs)
    except BaseException as exc:  # the registry failed around the target: record why instead of vanishing
        logger.exception("worker for run %s failed", args.run_id)
        with contextlib.suppress(Exception):
            registry.mark_failed(args.run_id, describe_error(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
