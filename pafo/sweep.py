"""Sweeps: a grid of what-ifs × seeds, each cell a run in the registry, summarised with a Pareto front.

A grid is ``{"section.field": [values]}`` over the experiment's config dataclasses (``pafo.lam``,
``groups.minority_quantile``, ...). Every value is checked before anything runs, by the same code that checks a
what-if (:func:`pafo.config_edit.whatif_config`, hence :func:`pafo.config.validate_options` and the fields' bounds).
A *cell* is one grid point on one run seed: a one-seed run submitted to :class:`pafo.registry.RunRegistry` with
the sweep's id as its ``parent_id``, so the registry's cache key reuses cells that already finished with the same
config (``force`` retrains them) and its worker processes run the rest under its concurrency limit. Before the
workers start, the sweep embeds each distinct dataset (data options and seed) once: local workers find those
features in the disk cache; on Ray the driver puts them into Ray's object store once and every task of that
dataset receives them from there (:func:`run_on_ray`), so no task embeds or reads the cache again.

``sweep.json`` (:func:`assemble`):

- ``grid``: the keys and their values; ``seeds``; ``sweep_id``; ``pareto_method``;
- ``cells``: one per point × seed: ``params``, ``seed``, ``run_id``, ``status``, ``reused_from``, ``error`` and
  ``methods`` (the blocks of ``pafo experiment``'s result, ``None`` unless the cell succeeded);
- ``points``: one per grid point: per method the accuracies and unfairness (means over the point's seeds) with
  CIs from the bootstrap over users pooled across seeds (:func:`pafo.compare.pooled_group_ci`), and per method but
  the baseline the paired comparison with the baseline over the point's seeds
  (:func:`pafo.compare.paired_comparison`);
- ``pareto_front``: the indices of the points whose ``pareto_method`` is not dominated on majority and minority
  accuracy by another point's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import socket
import string
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .compare import VerdictRule
from .config import OptionValueError
from .config_edit import whatif_config
from .device import resolve_device, with_device
from .effects import APP_WORDS, NoEffectError, check_grid, option_label
from .errors import MSG_DIVERGED, PafoEnvironmentError, PafoInputError
from .experiment import ExperimentConfig, read_unseen_rows
from .features import FeatureResult
from .registry import (
    ACTIVE_STATUSES,
    QUEUED,
    SUCCEEDED,
    SWEEP_PREFIX,
    RunRecord,
    RunRegistry,
    new_run_id,
    worker_env,
)
from .results import REFERENCE, MethodResult, RunResult, SweepCell, SweepPoint, SweepResult, pool
from .run_store import LOG_NAME
from .worker import FEATURES_STDIN

__all__ = [
    "BACKENDS",
    "MAX_CELLS",
    "SWEEP_PREFIX",
    "Cell",
    "GridError",
    "assemble",
    "attach_records",
    "cancel_sweep",
    "check_ray_address",
    "diverged",
    "expand_cells",
    "new_sweep_id",
    "pareto_front",
    "parse_grid",
    "preflight_cells",
    "ray_cell",
    "run_on_ray",
    "run_sweep",
    "start_sweep",
    "submit_cells",
    "sweep_cells",
    "sweep_result",
    "warm_embeddings",
]

MAX_CELLS = 1000  # grid points × seeds; a bigger sweep is more likely a typo than a plan on one machine
NONE_WORDS = ("none", "null")  # how a grid value says "not set" (e.g. groups.minority_threshold back to quantiles)

MSG_SYNTAX = "--grid {text!r}: write section.field=value,value,... e.g. pafo.lam=0,0.5,1"
MSG_SECTION = "--grid {key}: unknown section {section!r}; use one of {known}"
MSG_FIELD = "--grid {key}: section {section!r} has no option {name!r}; its options: {known}"
MSG_SEED = "--grid {key}: seeds are not grid keys; give them with --seeds (e.g. --seeds 0-4)"
MSG_DUPLICATE = "--grid {key}: given twice; give each key once with all its values"
MSG_REPEATED_VALUE = "--grid {key}: value {value!r} is given twice"
MSG_VALUE = "--grid {key}={value}: {detail}"
MSG_NO_GRID = "--grid: give at least one section.field=value,... (e.g. --grid pafo.lam=0,0.5,1)"
# The same problems in the app's words, shown under the sweep form's values field.
APP_NO_GRID = "pick a parameter and give its values"
APP_SYNTAX = "write the values separated by commas, e.g. 0.5,1,2"
APP_DUPLICATE = "this parameter is swept twice; sweep each parameter once"
APP_REPEATED_VALUE = "{value} is given twice; give each value once"
APP_VALUE = "“{value}” is not allowed: {problem}"
MSG_TOO_MANY = "sweep of {points} grid point(s) × {seeds} seed(s) = {cells} cells is over the limit of {limit}"
BACKENDS = ("local", "ray")
STAGE_RAY = "waiting for a Ray worker"
HEARTBEAT_SECONDS = 2.0  # how often claimed cells are heartbeaten while Ray has not started them
MSG_BACKEND = "--backend {backend!r}: use one of {known}"
MSG_NO_RAY = "--backend ray needs the ray package: pip install -r requirements.txt (or use --backend local)"
MSG_RAY_INIT = ("cannot start or join Ray ({address}): {detail}; check --ray-address / $RAY_ADDRESS, or use "
                "--backend local")
MSG_RAY_ADDRESS = "--ray-address {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto)"
MSG_RAY_UNREACHABLE = ("cannot reach Ray at {address}: nothing answered within {timeout:g} s ({detail}); start the "
                       "cluster or fix --ray-address / $RAY_ADDRESS, or use --backend local")
#: How long joining a cluster may wait for its address to answer; Ray's own connect retries for minutes, logging
#: every attempt on stderr, so the address is probed first.
RAY_CONNECT_TIMEOUT = 10.0
RAY_LOG = "ray-init.log"  # in $PAFO_HOME: what Ray printed while the sweep joined or started it
RAY_CLIENT_PORT = 10001  # Ray Client's default port, when a ray:// address names none
REASON_RAY_TASK = "its Ray task failed before the worker started: {detail}"
LOG_SHARED_FEATURES = "features of seed {seed} ({rows}×{dim}, {encoder}) from the Ray object store, not embedded here\n"
MSG_PARETO_METHOD = "--pareto-method {name!r} is not one of the sweep's methods ({methods})"
SEED_KEYS = ("data.seed", "seeds")


@dataclass
class Cell:
    """One grid point on one seed: its params, the one-seed experiment config and, once submitted, its run."""

    point: int
    params: dict
    seed: int
    config: dict
    fingerprint: str
    record: RunRecord | None = None
    features: FeatureResult | None = dataclasses.field(default=None, repr=False)  # set by warm_embeddings

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.params.items()) + f" seed {self.seed}"


# --------------------------------------------------------------------------------------------- grid


def _sections() -> dict[str, type]:
    defaults = ExperimentConfig()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(ExperimentConfig) if f.name != "seeds"}


def _check_key(key: str) -> None:
    """An existing ``section.field`` of the experiment config, and not a seed."""
    if key in SEED_KEYS:
        raise PafoInputError(MSG_SEED.format(key=key))
    section, _, name = key.partition(".")
    sections = _sections()
    if section not in sections:
        raise PafoInputError(MSG_SECTION.format(key=key, section=section, known=", ".join(sections)))
    names = [f.name for f in dataclasses.fields(sections[section])]
    if name not in names:
        raise PafoInputError(MSG_FIELD.format(key=key, section=section, name=name, known=", ".join(names)))


class GridError(PafoInputError):
    """A grid that cannot run. ``str()`` is the CLI's line (it names ``--grid KEY``); ``key`` is the swept option
    at fault (``None``: the grid as a whole) and ``field_message`` says the problem in the app's words, for the
    form field of that option's values."""

    def __init__(self, message: str, *, key: str | None, field_message: str):
        super().__init__(message)
        self.key, self.field_message = key, field_message


def _value(base: dict, key: str, text: str):
    """``text`` as the field's type, checked as a what-if of ``base`` would be (bounds, choices, the whole config)."""
    value = None if text.lower() in NONE_WORDS else text
    try:
        config = whatif_config(base, {key: value}, check_effect=False)  # the whole grid's effect: check_grid
    except PafoInputError as exc:
        problem = f"{option_label(key)} {exc.problem}" if isinstance(exc, OptionValueError) else str(exc)
        raise GridError(MSG_VALUE.format(key=key, value=text, detail=exc), key=key,
                        field_message=APP_VALUE.format(value=text, problem=problem)) from None
    section, _, name = key.partition(".")
    return config[section][name]


def parse_grid(specs: Sequence[str], base: ExperimentConfig | dict, *, explicit: Sequence[str] = ()) -> dict:
    """``["pafo.lam=0,0.5", ...]`` → ``{"pafo.lam": [0.0, 0.5], ...}`` with every value typed and validated
    against ``base`` (the sweep's other options), and the grid checked for effect (:func:`pafo.effects.check_grid`:
    each swept key must change the result in every grid point; ``explicit``, the options set on purpose besides
    the grid, in at least one). Any problem is one :class:`GridError` naming the key, before anything runs."""
    base = base.to_dict() if isinstance(base, ExperimentConfig) else base
    if not specs:
        raise GridError(MSG_NO_GRID, key=None, field_message=APP_NO_GRID)
    grid: dict[str, list] = {}
    for text in specs:
        key, sep, values = (part.strip() for part in str(text).partition("="))
        items = [item.strip() for item in values.split(",")]
        if not sep or not key or not all(items):
            raise GridError(MSG_SYNTAX.format(text=text), key=key or None, field_message=APP_SYNTAX)
        _check_key(key)
        if key in grid:
            raise GridError(MSG_DUPLICATE.format(key=key), key=key, field_message=APP_DUPLICATE)
        typed = [_value(base, key, item) for item in items]
        for i, (value, item) in enumerate(zip(typed, items, strict=True)):
            if value in typed[:i]:  # 0 and 0.0 are one value: the cell would run twice
                raise GridError(MSG_REPEATED_VALUE.format(key=key, value=item), key=key,
                                field_message=APP_REPEATED_VALUE.format(value=item))
        grid[key] = typed
    try:
        check_grid(base, grid, explicit)
    except NoEffectError as exc:
        raise GridError(str(exc), key=exc.key if exc.key in grid else None,
                        field_message=exc.in_words(APP_WORDS)) from None
    return grid


def expand_cells(base: ExperimentConfig | dict, grid: dict[str, list], seeds: Sequence[int]) -> list[Cell]:
    """Every grid point (the product of the values, first key slowest) on every seed, each a validated one-seed
    experiment config."""
    base = base.to_dict() if isinstance(base, ExperimentConfig) else base
    points = list(itertools.product(*grid.values()))
    if len(points) * len(seeds) > MAX_CELLS:
        raise PafoInputError(MSG_TOO_MANY.format(points=len(points), seeds=len(seeds),
                                                 cells=len(points) * len(seeds), limit=MAX_CELLS))
    cells = []
    for index, values in enumerate(points):
        params = dict(zip(grid, values, strict=True))
        for seed in seeds:
            config = whatif_config(base, {**params, "seeds": None, "data.seed": seed}, check_effect=False)
            cells.append(Cell(index, params, seed, config, ExperimentConfig.from_dict(config).fingerprint()))
    return cells


# --------------------------------------------------------------------------------------------- running


def new_sweep_id() -> str:
    """The id recorded as every cell's ``parent_id`` (it sorts by time like run ids, and says it is a sweep)."""
    return SWEEP_PREFIX + new_run_id()


def submit_cells(registry: RunRegistry, cells: list[Cell], *, sweep_id: str, force: bool = False,
                 device: str | None = None) -> None:
    """Register every cell (finished identical runs are reused unless ``force``) without starting workers yet;
    ``device`` is stored with each as an execution setting (:mod:`pafo.device`: not part of the reuse key)."""
    for cell in cells:
        cell.record = registry.submit(with_device(cell.config, device), fingerprint=cell.fingerprint, force=force,
                                      parent_id=sweep_id, label=f"{sweep_id}: {cell.label}", start=False)


def preflight_cells(cells: list[Cell]) -> None:
    """What ``pafo experiment`` refuses before training, for every distinct dataset and encoder of the grid (a
    grid over ``data.*`` or ``run.encoder`` can name one that does not load): exit 2 before any cell is queued."""
    from .encoders import get_encoder
    from .sources import load_dataset

    configs = [ExperimentConfig.from_dict(cell.config) for cell in cells]
    for data in {repr(dataclasses.asdict(c.data)): c.data for c in configs}.values():
        load_dataset(data)
    for encoder in dict.fromkeys(c.run.encoder for c in configs):
        get_encoder(encoder)


def warm_embeddings(cells: list[Cell], device: str = "cpu") -> int:
    """Embed each distinct dataset of the cells still to run once, on ``device`` (into the disk cache local
    workers read) and give each such cell its features (shared, one object per dataset, for :func:`run_on_ray`);
    returns how many datasets were embedded. Cells that run at the same time would otherwise each embed the same
    texts."""
    from .features import response_features
    from .sources import load_dataset

    embedded: dict[tuple, FeatureResult] = {}
    for cell in cells:
        if cell.record is None or cell.record.status != QUEUED:
            continue
        config = ExperimentConfig.from_dict(cell.config)
        key = (repr(dataclasses.asdict(config.data)), config.run.encoder)
        if key not in embedded:
            embedded[key] = response_features(load_dataset(config.data), config.run.encoder, device=device)
        cell.features = embedded[key]
    return len(embedded)


def run_sweep(base: ExperimentConfig | dict, grid: dict[str, list], seeds: Sequence[int] | None = None, *,
              registry: RunRegistry | None = None, force: bool = False, sweep_id: str | None = None,
              pareto_method: str | None = None, backend: str = "local", ray_address: str | None = None,
              on_cell: Callable[[Cell, int, int], None] | None = None,
              device: str | None = None) -> SweepResult:
    """Run (or reuse) every cell, wait for all of them, return the sweep (``sweep.json``).

    ``backend``: ``local`` runs the cells in the registry's worker processes (under its concurrency limit),
    ``ray`` as Ray tasks (:func:`run_on_ray`). ``seeds`` default to the base config's seeds.
    ``on_cell(cell, done, total)`` is called as each cell ends. Interrupting the wait (Ctrl-C) cancels the
    sweep's cells that have not finished.
    """
    if backend not in BACKENDS:
        raise PafoInputError(MSG_BACKEND.format(backend=backend, known=", ".join(BACKENDS)))
    base = ExperimentConfig.from_dict(base) if isinstance(base, dict) else base.validate()
    pareto_method = _pareto_method(pareto_method, base.run.method_list())
    registry = registry or RunRegistry()
    # Ray is joined before any cell is queued: an unreachable cluster leaves nothing behind.
    ray_started = backend == "ray" and _ray_init(_import_ray(), ray_address, registry.home / RAY_LOG)
    try:
        sweep_id, cells = start_sweep(base, grid, seeds, registry=registry, force=force, sweep_id=sweep_id,
                                      dispatch=backend == "local", device=device)
        _wait_cells(registry, cells, sweep_id, backend, ray_address, on_cell)
    finally:
        if ray_started:
            _import_ray().shutdown()
    return sweep_result(registry, base, grid, cells, sweep_id=sweep_id, pareto_method=pareto_method)


def _wait_cells(registry: RunRegistry, cells: list[Cell], sweep_id: str, backend: str, ray_address: str | None,
                on_cell: Callable[[Cell, int, int], None] | None) -> None:
    """Run the queued cells on Ray (local workers already run them) and wait for every one; an interrupted wait
    cancels the sweep's unfinished cells."""
    try:
        if backend == "ray":
            run_on_ray(registry, cells, address=ray_address)
        for done, cell in enumerate(cells, 1):
            cell.record = registry.wait(cell.record.id)
            if on_cell is not None:
                on_cell(cell, done, len(cells))
    except BaseException:
        cancel_sweep(registry, sweep_id)
        raise


def start_sweep(base: ExperimentConfig | dict, grid: dict[str, list], seeds: Sequence[int] | None = None, *,
                registry: RunRegistry, force: bool = False, sweep_id: str | None = None,
                dispatch: bool = True, device: str | None = None) -> tuple[str, list[Cell]]:
    """Check every cell, register it (reusing finished identical runs unless ``force``), embed each dataset
    once and, with ``dispatch``, start the registry's workers; returns at once with the sweep id and its cells
    (what the app does; :func:`run_sweep` then waits)."""
    base = ExperimentConfig.from_dict(base) if isinstance(base, dict) else base.validate()
    cells = expand_cells(base, grid, list(seeds) if seeds is not None else base.seed_list())
    preflight_cells(cells)
    sweep_id = sweep_id or new_sweep_id()
    submit_cells(registry, cells, sweep_id=sweep_id, force=force, device=device)
    try:
        warm_embeddings(cells, resolve_device(device))
    except BaseException:
        cancel_sweep(registry, sweep_id)
        raise
    if dispatch:
        registry.dispatch()
    return sweep_id, cells


def attach_records(registry: RunRegistry, base: ExperimentConfig | dict, grid: dict[str, list], seeds: Sequence[int],
                   run_ids: Sequence[str]) -> list[Cell]:
    """The cells of a sweep started earlier (``run_ids`` in cell order, as :func:`start_sweep` returned them),
    each with its run's current record: what a page that polls a sweep rebuilds on every run."""
    cells = expand_cells(base, grid, seeds)
    for cell, run_id in zip(cells, run_ids, strict=True):
        cell.record = registry.get(run_id, refresh=False)
    return cells


def sweep_result(registry: RunRegistry, base: ExperimentConfig | dict, grid: dict[str, list], cells: list[Cell], *,
                 sweep_id: str, pareto_method: str | None = None) -> SweepResult:
    """The sweep (``sweep.json``) of cells that have all ended (their results are read from the registry)."""
    base = ExperimentConfig.from_dict(base) if isinstance(base, dict) else base
    pareto_method = _pareto_method(pareto_method, base.run.method_list())
    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    results = {}
    for cell in cells:
        record = registry.load_result(cell.record.id) if cell.record.status == SUCCEEDED else None
        if record is not None and record.result is not None:
            result = RunResult.from_json(record.result, f"the result of cell {record.id}")
            results[record.id] = read_unseen_rows(result, registry.result_file(record).parent)
    return assemble(base, grid, seeds, cells, results, sweep_id=sweep_id, pareto_method=pareto_method)


# --------------------------------------------------------------------------------------------- Ray backend


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PafoInputError(MSG_NO_RAY) from None
    return ray


def ray_cell(run_id: str, home: str, options: dict, features: dict[int, FeatureResult] | None = None) -> int:
    """The Ray task of one cell: start the cell's worker (``python -m pafo.worker``, the same process a local
    run gets, so progress, heartbeat, cancel and artifacts behave alike) and wait for it; returns its exit code.

    ``features`` (``{seed: FeatureResult}``, which Ray resolves from the object store before the task starts) go
    to the worker through its stdin (``--features-stdin``), so it neither embeds nor reads the embeddings cache.
    The worker runs in a session of its own with the run id on its command line, so the registry can check it
    is alive and kill it on cancel. A worker killed before recording its outcome is settled here with the signal
    that killed it. Needs ``home`` on a file system the Ray node shares with the caller.
    """
    registry = RunRegistry(home, **options)
    run_dir = registry.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = registry.worker_command(run_id) + ([FEATURES_STDIN] if features is not None else [])
    with open(run_dir / LOG_NAME, "ab") as log:
        for seed, shared in (features or {}).items():
            log.write(LOG_SHARED_FEATURES.format(seed=seed, rows=shared.features.shape[0], dim=shared.dim,
                                                 encoder=shared.embedding.encoder).encode())
        log.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL if features is None else subprocess.PIPE,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**worker_env(), "PAFO_HOME": str(registry.home)},
                                   close_fds=True)
    if features is not None:
        with contextlib.suppress(BrokenPipeError), process.stdin:  # a worker killed before reading is settled below
            pickle.dump(features, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    code = process.wait()
    if code != 0:
        registry.settle_exited(run_id, process.pid, code)
    return code


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address; None for ``auto``/``local`` (Ray finds those itself)."""
    if address in ("auto", "local"):
        return None
    scheme, _, rest = address.rpartition("://")
    host, sep, port = rest.rpartition(":")
    if not sep and scheme == "ray":
        host, port = rest, str(RAY_CLIENT_PORT)
    if not host or not port.isdigit():
        raise PafoInputError(MSG_RAY_ADDRESS.format(address=address))
    return host.strip("[]"), int(port)


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """A cluster address must answer a TCP connect within ``timeout``, else exit 3 with one line (``ray.init``
    would retry for minutes and flood stderr with its retry logs)."""
    endpoint = _ray_endpoint(address) if address else None
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as exc:
        raise PafoEnvironmentError(MSG_RAY_UNREACHABLE.format(address=address, timeout=timeout,
                                                              detail=exc.strerror or exc or "timed out")) from None


def _ray_init(ray, address: str | None, log_path: Path | None = None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray with this machine's cores;
    returns whether this call started Ray (and so must shut it down). The address must answer first
    (:func:`check_ray_address`); with ``log_path`` what Ray's C++ core prints while it connects (a retry per
    second for a cluster that does not answer as Ray) goes there, not to stderr, which keeps one line."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_ray_address(address)
    runtime_env = {"env_vars": {key: value for key, value in worker_env().items()
                                if key in ("PYTHONPATH", "PAFO_HOME")}}
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # stderr keeps the sweep's own lines
    try:
        with _stderr_to(log_path):
            if address:
                ray.init(address=address, runtime_env=runtime_env, **quiet)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split()) + (f" (Ray's log: {log_path})" if log_path else "")
        raise PafoEnvironmentError(MSG_RAY_INIT.format(address=address or "a local instance",
                                                       detail=detail)) from None
    return True


@contextlib.contextmanager
def _stderr_to(path: Path | None):
    """Point file descriptor 2 (where native code logs) at ``path`` for the block; nothing when None."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as log:  # each start replaces it: the log of the last attempt
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _shared_features(features: FeatureResult) -> FeatureResult:
    """What a cell needs of its dataset's features: the feature rows and the encoder's figures, without the
    per-text vectors they were built from (half the bytes in the object store)."""
    vectors = features.embedding.vectors
    return FeatureResult(features.features, dataclasses.replace(features.embedding, vectors=vectors[:0]))


def run_on_ray(registry: RunRegistry, cells: list[Cell], *, address: str | None = None) -> None:
    """Run the sweep's queued cells as Ray tasks (one CPU each) and return when every task has ended.

    Each cell is first *claimed* in the registry (running, no pid yet), so the registry's own dispatch never
    starts a second, local worker for it; the claimed cells are heartbeaten here until their worker starts.
    The features :func:`warm_embeddings` gave the cells are put into Ray's object store once per dataset and
    each task gets its dataset's ObjectRef (cells without features embed in their worker, from the disk cache).
    A task that fails before its worker started fails its cell with Ray's reason; the others go on.
    """
    ray = _import_ray()
    started_here = _ray_init(ray, address)
    try:
        options = {"max_concurrent": registry.max_concurrent, "stale_after": registry.stale_after,
                   "force_cancel_after": registry.force_cancel_after}
        task = ray.remote(num_cpus=1, max_retries=0)(ray_cell)
        refs: dict[int, object] = {}  # id of a dataset's features → its ObjectRef: one ray.put per dataset

        def features_ref(cell: Cell):
            if cell.features is None:
                return None
            if id(cell.features) not in refs:
                refs[id(cell.features)] = ray.put({cell.seed: _shared_features(cell.features)})
            return refs[id(cell.features)]

        claimed = [cell for cell in cells
                   if cell.record.status == QUEUED and registry.claim(cell.record.id, STAGE_RAY)]
        pending = {task.remote(cell.record.id, str(registry.home), options, features_ref(cell)): cell.record.id
                   for cell in claimed}
        claimed = [cell.record.id for cell in claimed]
        while pending:
            registry.beat_unstarted(claimed)
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=HEARTBEAT_SECONDS)
            for ref in done:
                run_id = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # a Ray error (worker or node died): the cell's worker may not exist
                    if registry.get(run_id, refresh=False).pid is None:
                        registry.mark_failed(run_id, REASON_RAY_TASK.format(detail=" ".join(str(exc).split())))
    finally:
        if started_here:
            ray.shutdown()


def diverged(error: str | None) -> bool:
    """Whether a cell failed because its training diverged (:data:`pafo.errors.MSG_DIVERGED`): input the user can
    fix (a grid value such as ``train.lr=1e308``), the one such failure the sweep's checks before any cell runs
    (data, encoder, every grid value) cannot rule out; anything else that fails a cell is a bug or a fault."""
    return bool(error) and _DIVERGED_TEXT in error


_DIVERGED_TEXT = max((literal for literal, *_ in string.Formatter().parse(MSG_DIVERGED)), key=len)


def _pareto_method(name: str | None, methods: list[str]) -> str:
    """The method whose accuracies the front compares: given, else the first one that is not the baseline."""
    if name is None:
        return next((m for m in methods if m != REFERENCE), methods[0])
    if name not in methods:
        raise PafoInputError(MSG_PARETO_METHOD.format(name=name, methods=", ".join(methods)))
    return name


def sweep_cells(registry: RunRegistry, sweep_id: str) -> list[RunRecord]:
    """The runs recorded with ``sweep_id`` as their parent, oldest first."""
    return sorted((r for r in registry.list() if r.parent_id == sweep_id), key=lambda r: r.created_at)


def cancel_sweep(registry: RunRegistry, sweep_id: str) -> list[RunRecord]:
    """Ask every queued or running cell of a sweep to stop (queued ones end at once, running ones at their next
    batch, forced by their worker after the registry's timeout); returns the cells asked."""
    asked = [r for r in sweep_cells(registry, sweep_id) if r.status in ACTIVE_STATUSES]
    return [registry.request_cancel(r.id) for r in asked]


# --------------------------------------------------------------------------------------------- sweep.json


def assemble(base: ExperimentConfig, grid: dict[str, list], seeds: list[int], cells: list[Cell],
             results: dict[str, RunResult], *, sweep_id: str, pareto_method: str) -> SweepResult:
    """The sweep from its cells and the results of those that succeeded (see the module docstring)."""
    methods = base.run.method_list()
    entries = []
    for cell in cells:
        result = results.get(cell.record.id)
        entries.append(SweepCell(cell.params, cell.seed, cell.record.id, cell.record.status, cell.record.reused_from,
                                 cell.record.error, result.methods if result else None))
    points = []
    for index in sorted({cell.point for cell in cells}):
        mine = [cell for cell in cells if cell.point == index]
        done = [results[cell.record.id] for cell in mine if cell.record.id in results]
        points.append(_point(index, mine[0], done, methods, base.run.bootstrap))
    return SweepResult(sweep_id, grid, seeds, methods, pareto_method, entries, points,
                       pareto_front(points, pareto_method))


def _point(index: int, cell: Cell, results: list[RunResult], methods: list[str], bootstrap: int) -> SweepPoint:
    """One grid point over the seeds that succeeded: pooled figures per method and paired comparisons."""
    point = SweepPoint(index, cell.params, len(results))
    if not results:
        return point
    rule = VerdictRule(epsilon=ExperimentConfig.from_dict(cell.config).run.epsilon)
    pooled = pool([seed for result in results for seed in result.seed_results()], methods, n_resamples=bootstrap,
                  rule=rule)
    point.methods = {name: MethodResult(m.accuracy, m.accuracy_ci, m.unfairness) for name, m in pooled.methods.items()}
    point.comparisons = pooled.comparisons if REFERENCE in methods else None
    point.unseen = pooled.unseen
    return point


def pareto_front(points: list[SweepPoint], method: str) -> list[int]:
    """Indices of the points whose ``method`` is not dominated: no other point is at least as accurate on both
    groups and more accurate on one. Points without a result are left out."""
    scored = [(p.index, p.methods[method].accuracy["majority"], p.methods[method].accuracy["minority"])
              for p in points if p.methods and method in p.methods]
    scored = [(i, maj, mino) for i, maj, mino in scored if maj is not None and mino is not None]
    return [i for i, maj, mino in scored
            if not any(a >= maj and b >= mino and (a > maj or b > mino) for _, a, b in scored)]
