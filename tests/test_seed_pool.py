"""A run's seeds trained side by side in worker processes (pafo.seed_pool): same result as one after another,
one bar that only moves forward, errors and cancels that reach the caller."""

from __future__ import annotations

import dataclasses
import functools
import re
import threading

import pytest
from test_experiment import tiny_experiment, without_timings

from pafo.errors import PafoInputError, RunCancelled
from pafo.experiment import run_experiment
from pafo.seed_pool import MIN_PARALLEL_SECONDS, SEED_WORKERS_ENV, SeedPool, seed_workers


def _reporting_task(value: int, progress) -> int:
    progress(0.5, f"task {value} halfway")
    return value * value


def _failing_task(progress) -> None:
    raise PafoInputError("seed 3: a bad option; fix it")


def _waiting_task(progress) -> None:
    progress(0.1, "started")
    threading.Event().wait()  # never returns: only a cancel ends it


def test_seed_workers_rule(monkeypatch):
    """One worker for a GPU run, a single seed or a run too short to pay for starting workers; $PAFO_SEED_WORKERS
    overrides (capped at the seeds) and a bad value names the variable."""
    monkeypatch.delenv(SEED_WORKERS_ENV, raising=False)
    assert seed_workers(5, MIN_PARALLEL_SECONDS - 1, "cpu") == 1
    assert seed_workers(1, 100.0, "cpu") == 1 and seed_workers(5, 100.0, "cuda") == 1
    assert 1 <= seed_workers(5, 100.0, "cpu") <= 5
    monkeypatch.setenv(SEED_WORKERS_ENV, "3")
    assert seed_workers(2, 0.0, "cpu") == 2 and seed_workers(5, 0.0, "cpu") == 3
    monkeypatch.setenv(SEED_WORKERS_ENV, "two")
    with pytest.raises(PafoInputError, match=SEED_WORKERS_ENV):
        seed_workers(5, 100.0, "cpu")


def test_pool_returns_in_order_relays_reports_and_raises_a_workers_error():
    """Tasks come back in order with every report relayed; and (regression guard) an input error inside a seed's
    worker stops the run with its own message (the CLI's exit 2), not a hang or a pickling traceback."""
    reports = []
    with SeedPool() as pool:
        pool.start(2)
        squares = pool.map([functools.partial(_reporting_task, v) for v in (2, 3, 4)],
                           lambda *report: reports.append(report), lambda: False)
        assert squares == [4, 9, 16]
        assert sorted(reports) == [(i, 0.5, f"task {v} halfway", None) for i, v in enumerate((2, 3, 4))]
        with pytest.raises(PafoInputError, match="seed 3: a bad option"):
            pool.map([_failing_task, functools.partial(_reporting_task, 5)], lambda *report: None, lambda: False)


def test_cancel_ends_the_workers():
    """A cancel (should_stop) during training raises RunCancelled at once, though the workers never finish."""
    started = threading.Event()
    with SeedPool() as pool:
        pool.start(2)
        with pytest.raises(RunCancelled):
            pool.map([_waiting_task, _waiting_task], lambda *report: started.set(), started.is_set)
        processes = list(pool._pool._pool)
    assert not any(process.is_alive() for process in processes)


def test_seeds_in_workers_give_the_same_result_and_a_forward_bar(tiny_config, monkeypatch):
    """Determinism across the pool: two seeds trained in two worker processes give the JSON of one process
    (timings aside), and the progress bar never moves back although the seeds report in any order (regression: a
    sum of floats stepped back by 1e-17)."""
    config = dataclasses.replace(tiny_experiment(tiny_config), seeds=[0, 1])
    monkeypatch.setenv(SEED_WORKERS_ENV, "1")
    alone = run_experiment(config).to_json()
    monkeypatch.setenv(SEED_WORKERS_ENV, "2")
    events = []
    side_by_side = run_experiment(config, progress=lambda f, stage, *_: events.append((f, stage))).to_json()
    assert without_timings(side_by_side) == without_timings(alone)
    fractions = [fraction for fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the seeds' reports interleave; the count of seeds done in front of them only grows, to every seed
    done = [int(m.group(1)) for _, stage in events if (m := re.match(r"(\d+) of 2 seeds done · seed [12]: ", stage))]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 2, events
