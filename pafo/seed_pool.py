"""A run's seeds trained side by side, one worker process per core.

Training runs on one intra-op thread (:func:`pafo.training.set_threads`: these models are tiny), so a run over
several seeds used one core of a 2-core machine while the other waited. The seeds of a run are independent (each
seeds its own draws and its own models), so they can train in separate processes and give the same numbers as one
after another: the run's result does not depend on how many workers trained it (tests check the JSON is equal).

The pool is started (:meth:`SeedPool.start`) before the run embeds its texts, so the workers are ready when the
encoder is done. Workers fork from a fork server that imported the library once (``forkserver``: a plain fork of a
process whose torch thread pools have started is unsafe, and ``spawn`` would import torch again in every worker).
A worker reports its progress through a queue; the caller's thread turns the reports into one bar (the sum of
every seed's share done) and checks ``should_stop``; on cancel the workers are terminated at once.

How many workers: ``$PAFO_SEED_WORKERS`` when set, otherwise one per core (at most :data:`MAX_SEED_WORKERS`) for a
run on the CPU whose estimated training is long enough to pay for starting them (:data:`MIN_PARALLEL_SECONDS`), and
one (in this process, no pool) otherwise: a GPU is shared by the seeds anyway, and tiny runs (the tests) would spend
longer importing torch in a worker than training.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Sequence

from .allocator import keep_freed_memory
from .errors import PafoInputError, RunCancelled
from .training import set_threads

__all__ = ["MAX_SEED_WORKERS", "MIN_PARALLEL_SECONDS", "SEED_WORKERS_ENV", "SeedPool", "seed_workers"]

SEED_WORKERS_ENV = "PAFO_SEED_WORKERS"
MAX_SEED_WORKERS = 4
#: Estimated serial training seconds below which a run trains its seeds in this process: a spawned worker takes
#: ~2–4 s to import torch and the library on the 2-core machine, so below this the pool would cost more than it saves.
MIN_PARALLEL_SECONDS = 6.0
#: What the fork server imports before it forks workers (a worker then starts in milliseconds, not the seconds that
#: importing torch, pandas and scipy takes): the experiment's seed code and everything it imports.
PRELOAD = ("pafo.experiment",)
POLL_SECONDS = 0.2  # how often the caller looks at should_stop while it waits for a report
BAD_WORKERS = f"${SEED_WORKERS_ENV}={{value!r}}: write a whole number of worker processes, 1 or more"

_REPORTS = None  # a worker's queue to the caller, set by _start_worker


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def seed_workers(n_seeds: int, estimated_seconds: float, device: str) -> int:
    """How many processes train a run's ``n_seeds`` seeds (module docstring)."""
    text = os.environ.get(SEED_WORKERS_ENV, "").strip()
    if text:
        try:
            wanted = int(text)
        except ValueError:
            raise PafoInputError(BAD_WORKERS.format(value=text)) from None
        if wanted < 1:
            raise PafoInputError(BAD_WORKERS.format(value=text))
        return min(wanted, n_seeds)
    if device != "cpu" or n_seeds < 2 or estimated_seconds < MIN_PARALLEL_SECONDS:
        return 1
    return max(1, min(n_seeds, _cores(), MAX_SEED_WORKERS))


def _start_worker(reports) -> None:
    global _REPORTS
    _REPORTS = reports
    set_threads()
    keep_freed_memory()  # the run's process: see pafo.allocator


def _run_task(index: int, task: Callable, environ: dict[str, str]):
    """One seed in a worker: ``task(progress)`` with every report sent to the caller tagged with the seed's index,
    in the caller's environment of now (the fork server kept the one it started with: ``$PAFO_HOME`` may differ)."""
    os.environ.clear()
    os.environ.update(environ)

    def progress(fraction: float, stage: str, metrics: dict | None = None) -> None:
        _REPORTS.put((index, fraction, stage, metrics))

    return task(progress)


class SeedPool:
    """Worker processes for a run's seeds (module docstring); with one worker the tasks run in this process.

    ``with SeedPool() as pool: pool.start(workers); ...; results = pool.map(tasks, report, should_stop)``: each
    task is a picklable callable taking a progress callback (e.g. a ``functools.partial`` of a module-level
    function); ``report(index, fraction, stage, metrics)`` receives every task's reports in this process,
    ``should_stop()`` cancels them all. The context ends the workers however the run ends.
    """

    def __init__(self):
        self.workers = 1
        self._pool = None
        self._reports = None

    def __enter__(self) -> SeedPool:
        return self

    def start(self, workers: int) -> None:
        """Start ``workers`` processes (none for one): they import the library while the caller goes on."""
        self.workers = workers
        if workers > 1 and self._pool is None:
            context = multiprocessing.get_context("forkserver")  # fork after torch's thread pools started is unsafe
            context.set_forkserver_preload(list(PRELOAD))  # the server imports once; each worker forks from it
            self._reports = context.Queue()
            self._pool = context.Pool(workers, initializer=_start_worker, initargs=(self._reports,))

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()  # also on success: the workers hold nothing the caller needs
            self._pool.join()
            self._reports.close()

    def map(self, tasks: Sequence[Callable], report: Callable, should_stop: Callable[[], bool]) -> list:
        """Every task's return value, in order; the first task error is raised here (the others are terminated)."""
        if self._pool is None:
            results = []
            for index, task in enumerate(tasks):
                if should_stop():
                    raise RunCancelled()
                results.append(task(lambda *args, index=index: report(index, *args)))
            return results
        environ = dict(os.environ)
        pending = [self._pool.apply_async(_run_task, (index, task, environ)) for index, task in enumerate(tasks)]
        while not all(result.ready() for result in pending):
            if should_stop():
                raise RunCancelled()
            self._drain(report, POLL_SECONDS)
            for result in pending:
                if result.ready() and not result.successful():
                    result.get()  # raises the task's error
        self._drain(report, 0.0)
        return [result.get() for result in pending]

    def _drain(self, report: Callable, timeout: float) -> None:
        """Hand every queued report to ``report``, waiting up to ``timeout`` for the first."""
        try:
            item = self._reports.get(timeout=timeout) if timeout else self._reports.get_nowait()
            while True:
                report(*item)
                item = self._reports.get_nowait()
        except queue.Empty:
            return
