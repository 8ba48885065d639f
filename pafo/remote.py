"""PAFO's EM runs as Ray tasks (``pafo experiment --ray-address ADDR``).

The soft cluster step (:func:`pafo.clusters.fit_soft_clusters`) runs restarts × subspace sizes independent EM runs,
batched into one computation. :class:`RayRuns` splits them into groups of consecutive runs, one Ray task per group
(one CPU each, as many groups as the cluster has CPUs, at most one run per group), and puts the shared inputs
(the oriented pair differences, users and co-labels) into Ray's object store once. Each run's EM is independent
of the others', so the clusters are the local step's (``tests/test_remote.py``): the same assignments and rounds,
teachers and directions equal up to float32 rounding (a group's matrix products have other shapes than the whole
batch's, and BLAS may sum them in another order). Without Ray the runs stay one batch, bit for bit as before.

A sweep's cells are Ray tasks already (:func:`pafo.sweep.run_on_ray`); this is for one large experiment whose
cluster step is worth spreading. The address is an *execution* option, like the device: it is not part of the
experiment's config, and a run gives the same result with or without it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

__all__ = ["RayRuns", "ray_runs"]


def _call(function, shared: dict, part: dict):
    """A Ray task: ``function(**shared, **part)`` (Ray resolves ``shared`` from the object store first)."""
    return function(**shared, **part)


@dataclass
class RayRuns:
    """Evaluates groups of EM runs as Ray tasks on the cluster at ``address`` (``local``: a Ray started here).

    Holds only the address until first used, so it travels to a seed's worker process; each process joins the
    cluster once (:func:`pafo.sweep._ray_init`, which checks the address answers) and leaves it in
    :meth:`close`."""

    address: str
    started: bool = field(default=False, repr=False)

    def _ray(self):
        from .sweep import _import_ray, _ray_init

        ray = _import_ray()
        if not ray.is_initialized():
            self.started = _ray_init(ray, self.address) or self.started
        return ray

    def groups(self, runs: int) -> int:
        """One group per CPU of the cluster, at most one per run."""
        return max(1, min(runs, int(self._ray().cluster_resources().get("CPU", 1))))

    def __call__(self, function, shared: dict, parts: list[dict]) -> list:
        ray = self._ray()
        gpus = 0 if str(shared.get("device", "cpu")) == "cpu" else 1  # a task on the device the run trains on
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_call)
        shared_ref = ray.put(shared)
        return ray.get([task.remote(function, shared_ref, part) for part in parts])

    def close(self) -> None:
        """Shut down a Ray this process started (a cluster it joined keeps running)."""
        if self.started:
            self._ray().shutdown()
            self.started = False


@contextlib.contextmanager
def ray_runs(address: str | None):
    """A :class:`RayRuns` for ``address`` for the block (None: no Ray, the runs stay local)."""
    runner = RayRuns(address) if address else None
    try:
        yield runner
    finally:
        if runner is not None:
            runner.close()
