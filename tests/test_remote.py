"""PAFO's EM runs split into groups and evaluated as Ray tasks (issue 24, ``pafo experiment --ray-address``): the
same clusters as the one local batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from test_experiment import tiny_experiment
from test_soft_em import _mixture

from pafo.clusters import CoLabels, LocalRuns, fit_soft_clusters
from pafo.experiment import run_experiment
from pafo.remote import RayRuns

pytestmark = pytest.mark.usefixtures("single_thread")

class SplitRuns(LocalRuns):
    """The runs in ``n`` groups, evaluated here one group after another (what Ray does, without Ray)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def groups(self, runs: int) -> int:
        return self.n

    def __call__(self, function, shared, parts):
        self.calls += len(parts)
        return super().__call__(function, shared, parts)


def _colabelled_fit(runner=None):
    """Soft EM with co-labels, three subspace sizes and early-stopping runs, from the same k-means starts."""
    x, users, truth = _mixture(n_users=45, per_user=10, dim=6, noise=0.15, seed=2)
    pool = np.arange(len(x)) % 60  # 60 distinct pairs, so most pairs are labelled by several users
    x = x[pool] * np.sign((x[pool] * x).sum(1))[:, None]
    chosen, rejected = 2 * pool, 2 * pool + 1
    return fit_soft_clusters(x, users, len(truth), n_clusters=3, restarts=4, sizes=(3, 5, 6), tol=1e-3,
                             user_vectors=np.random.default_rng(1).standard_normal((len(truth), 3)), seed=0,
                             colabels=CoLabels.of(chosen, rejected), colabel_weight=2.0, runner=runner)


def _assert_same_clusters(a, b) -> None:
    """The same clusters: every run's assignments, rounds and subspace size; teachers, directions, weights and
    objectives equal up to float32 rounding (a group's matrix products have other shapes than the whole batch's,
    and BLAS may sum them in another order)."""
    for name in ("assignments", "rounds", "sizes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("teachers", "directions", "log_weights"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-5)


def test_runs_in_groups_give_the_batched_clusters():
    """Every EM run is independent of the others in the batch (its own teachers, posteriors, weights and stopping
    round), so splitting the 12 runs into groups (one per Ray task) gives the same clusters."""
    whole = _colabelled_fit()
    assert len(np.unique(whole.rounds)) > 1  # runs stop at different rounds: each group keeps its own
    for n in (2, 5, 12):
        split = SplitRuns(n)
        _assert_same_clusters(_colabelled_fit(split), whole)
        assert split.calls == n


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (as the sweep tests start it): the repo on its workers' PYTHONPATH."""
    from pafo.paths import PACKAGE_ROOT
    from pafo.sweep import _ray_init

    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(PACKAGE_ROOT))
        patch.delenv("RAY_ADDRESS", raising=False)
        started = _ray_init(ray, None)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_ray_tasks_give_the_local_clusters_and_experiment(local_ray, tiny_config):
    """With a Ray running, the cluster step's runs go to Ray tasks (one group per CPU) and give the local clusters;
    a whole experiment with ``ray_address`` scores every user as the local experiment does."""
    runner = RayRuns("auto")
    assert runner.groups(12) == min(12, int(local_ray.cluster_resources()["CPU"])) >= 1
    _assert_same_clusters(_colabelled_fit(runner), _colabelled_fit())
    runner.close()
    assert local_ray.is_initialized()  # a Ray it joined, not started, keeps running
    config = tiny_experiment(dataclasses.replace(tiny_config, users=40))
    on_ray, local = run_experiment(config, ray_address="auto"), run_experiment(config)
    pd.testing.assert_frame_equal(on_ray.per_user, local.per_user)


def test_experiment_with_an_unreachable_ray_address_fails_before_training(capsys, tmp_path, monkeypatch):
    """``pafo experiment --ray-address`` checks the address answers before anything trains: a closed port is exit
    3 with one line naming it (not a traceback, not minutes of Ray's connect retries after the baseline)."""
    from conftest import run_cli

    from pafo.errors import EXIT_ENVIRONMENT

    monkeypatch.setenv("PAFO_HOME", str(tmp_path))
    code, out, err = run_cli(["experiment", "--encoder", "tfidf", "--users", "24", "--ray-address", "127.0.0.1:1"],
                             capsys)
    assert code == EXIT_ENVIRONMENT and out == ""
    assert err.count("\n") == 1 and "cannot reach Ray at 127.0.0.1:1" in err
