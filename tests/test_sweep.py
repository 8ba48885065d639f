"""Sweeps (pafo.sweep, `pafo sweep`): grid parsing and validation, cells as registry runs, reuse, cancel."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
from conftest import kill_workers, wait_for

from pafo.cli import main
from pafo.compare import VERDICTS
from pafo.errors import PafoInputError
from pafo.experiment import ExperimentConfig
from pafo.paths import PACKAGE_ROOT
from pafo.registry import CANCELLED, RUNNING, SUCCEEDED, RunRegistry, process_alive
from pafo.sweep import (
    MAX_CELLS,
    cancel_sweep,
    expand_cells,
    new_sweep_id,
    pareto_front,
    parse_grid,
    submit_cells,
    sweep_cells,
)

DATA = ["--dataset", "synthetic", "--users", "60", "--prompts", "16", "--train-pairs", "6", "--test-pairs", "4",
        "--encoder", "tfidf", "--epochs", "2", "--bootstrap", "50", "--methods", "baseline,pafo"]


def base_config(**data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"data": {"dataset": "synthetic", "users": 60, "prompts": 16, "train_pairs": 6,
                                                "test_pairs": 4, **data},
                                       "run": {"encoder": "tfidf", "bootstrap": 50}, "train": {"epochs": 2}})


@pytest.fixture
def home(worker_home: Path) -> Path:
    return worker_home


@pytest.fixture
def reg(home: Path):
    """A registry allowing two workers at once; kills any worker still alive afterwards."""
    registry = RunRegistry(home, max_concurrent=2)
    yield registry
    kill_workers(registry)


# ============================================================================ grid parsing and cells


def test_grid_values_are_typed_and_keep_their_order():
    grid = parse_grid(["pafo.beta=1,0,0.5", "groups.minority_threshold=none,0.3", "train.epochs=2,3",
                       "groups.estimator=auto,exact"], base_config())
    assert grid == {"pafo.beta": [1.0, 0.0, 0.5], "groups.minority_threshold": [None, 0.3], "train.epochs": [2, 3],
                    "groups.estimator": ["auto", "exact"]}
    with pytest.raises(PafoInputError, match=r"--grid pafo\.beta: --beta has no effect with --methods baseline"):
        parse_grid(["pafo.beta=1,2", "run.methods=baseline,pafo"], base_config())  # the baseline-only cells
    assert all(isinstance(v, float) for v in grid["pafo.beta"]) and all(type(v) is int for v in grid["train.epochs"])


@pytest.mark.parametrize(("spec", "message"), [
    ("pafo.lamb=1", "section 'pafo' has no option 'lamb'"),
    ("foo.lam=1", "unknown section 'foo'"),
    ("pafo.lam", "write section.field=value"),
    ("pafo.lam=", "write section.field=value"),
    ("pafo.lam=0,,1", "write section.field=value"),
    ("pafo.lam=-1", "--grid pafo.lam=-1: --lambda: must be ≥ 0"),
    ("pafo.lam=abc", "--grid pafo.lam=abc:"),
    ("pafo.lam=nan", "finite"),
    ("pafo.lam=0,0.0", "value '0.0' is given twice"),
    ("groups.minority_quantile=0.1,1.5", "--grid groups.minority_quantile=1.5:"),
    ("train.epochs=2.5", "--grid train.epochs=2.5:"),
    ("run.methods=nosuch", "--grid run.methods=nosuch:"),
    ("data.seed=1,2", "--seeds"),
    ("seeds=1", "--seeds"),
])  # fmt: skip
def test_bad_grid_is_one_clear_error(spec: str, message: str):
    """Guards against a sweep that starts dozens of runs and only then trips over a typo or an out-of-range value."""
    with pytest.raises(PafoInputError) as caught:
        parse_grid([spec], base_config())
    assert message in str(caught.value)


def test_key_given_twice_and_empty_grid_are_refused():
    with pytest.raises(PafoInputError, match="given twice"):
        parse_grid(["pafo.lam=0", "pafo.lam=1"], base_config())
    with pytest.raises(PafoInputError, match="at least one"):
        parse_grid([], base_config())


def test_cells_are_every_point_on_every_seed_each_a_one_seed_config():
    grid = parse_grid(["pafo.beta=0,1", "groups.minority_quantile=0.1,0.2"], base_config())
    cells = expand_cells(base_config(), grid, [3, 5])
    assert len(cells) == 8
    assert [(c.point, c.seed) for c in cells[:4]] == [(0, 3), (0, 5), (1, 3), (1, 5)]
    assert cells[2].params == {"pafo.beta": 0.0, "groups.minority_quantile": 0.2}
    last = cells[-1].config
    assert last["pafo"]["beta"] == 1.0 and last["groups"]["minority_quantile"] == 0.2
    assert last["data"]["seed"] == 5 and "seeds" not in last
    assert cells[0].fingerprint == cells[2].fingerprint != cells[1].fingerprint  # same data per seed, not per point
    too_many = {"pafo.lam": [float(i) for i in range(MAX_CELLS)]}
    with pytest.raises(PafoInputError, match="over the limit"):
        expand_cells(base_config(), too_many, [0, 1])


def test_pareto_front_keeps_the_undominated_points():
    def point(index, majority, minority):
        return {"index": index, "methods": {"pafo": {"accuracy": {"majority": majority, "minority": minority}}}}

    points = [point(0, 0.8, 0.5), point(1, 0.7, 0.6), point(2, 0.7, 0.5), point(3, 0.8, 0.5), point(4, 0.6, 0.6),
              {"index": 5, "methods": None}, point(6, None, 0.9)]
    # 2 is dominated by 0 and 1; 4 by 1; 0 and 3 tie (neither dominates); 5 and 6 have no figures.
    assert pareto_front(points, "pafo") == [0, 1, 3]


def test_run_pickers_group_a_sweeps_cells_under_the_sweep():
    """Guards against a sweep's cells flooding the run pickers: single runs (no parent, or a what-if's run parent)
    come first in their order, then one group per sweep (newest sweep first, as the registry lists runs) with
    its cells in grid (submission) order, labelled without the sweep id the group already names."""
    from types import SimpleNamespace

    from pafo.appstate import SINGLE_RUNS, group_label, group_of, run_groups, short_label

    def run(run_id, at, parent=None, label=None):
        return SimpleNamespace(id=run_id, created_at=at, parent_id=parent, label=label)

    old, new = "sweep-20240101-000000-aaaaaa", "sweep-20240102-000000-bbbbbb"
    records = [run("r9", 9), run("c8", 8, new, f"{new}: pafo.lam=1.0 seed 0"), run("c7", 7, new),
               run("w6", 6, "r1", "what-if: lam=2"), run("c3", 3, old), run("c2", 2, old), run("r1", 1)]
    groups = run_groups(records)
    assert list(groups) == [SINGLE_RUNS, new, old]
    assert [[r.id for r in runs] for runs in groups.values()] == [["r9", "w6", "r1"], ["c7", "c8"], ["c2", "c3"]]
    assert group_label(SINGLE_RUNS, groups[SINGLE_RUNS]) == "single runs (3)"
    assert group_label(old, groups[old]) == f"{old} · 2 cells"
    assert group_of(groups, "c3") == old and group_of(groups, "w6") == SINGLE_RUNS
    assert group_of(groups, "gone") == SINGLE_RUNS and group_of(groups, None) == SINGLE_RUNS
    assert short_label(records[1]) == "pafo.lam=1.0 seed 0" and short_label(records[3]) == "what-if: lam=2"
    only_sweeps = run_groups(records[1:3])  # no empty "single runs" group
    assert list(only_sweeps) == [new]
    assert run_groups([]) == {}


def test_sweep_pareto_axes_show_whole_whiskers():
    """Guards against CI whiskers cut at the plot's edge (they showed as lines across the whole plot): the axis
    ranges of the sweep's Pareto plot hold every point's CI, and a point without a CI still sets the range."""
    from pafo.report import sweep_pareto

    def point(index, majority, minority, ci):
        return {"index": index, "params": {"pafo.lam": float(index)}, "methods": {"pafo": {
            "accuracy": {"majority": majority, "minority": minority}, "accuracy_ci": ci}}}

    sweep = {"pareto_method": "pafo", "seeds": [0, 1], "grid": {"pafo.lam": [0.0, 1.0]}, "pareto_front": [1],
             "points": [point(0, 0.75, 0.56, {"majority": [0.70, 0.80], "minority": [0.46, 0.66]}),
                        point(1, 0.78, 0.64, {})]}
    layout = sweep_pareto(sweep).layout
    (x_lo, x_hi), (y_lo, y_hi) = layout.xaxis.range, layout.yaxis.range
    assert x_lo < 0.70 and x_hi > 0.80 and y_lo < 0.46 and y_hi > 0.66


def test_cli_bad_grid_exits_2_with_one_line_and_queues_nothing(home: Path, capsys: pytest.CaptureFixture):
    assert main(["sweep", *DATA, "--grid", "pafo.lam=0,1", "--grid", "pafo.beta=-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pafo: error: --grid pafo.beta=-3:")
    assert main(["sweep", *DATA, "--grid", "run.encoder=tfidf,/no/such/model"]) == 2  # checked before queueing
    assert "/no/such/model" in capsys.readouterr().err
    assert RunRegistry(home).list() == []


# ============================================================================ running sweeps


def test_four_cell_sweep_end_to_end_then_reused_then_forced(home: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture):
    """A 2-point × 2-seed sweep: every cell a registry run under the sweep, sweep.json complete; the same sweep
    again reuses every finished cell (nothing retrains, same figures); --force retrains with identical metrics."""
    out = tmp_path / "sweep.json"
    argv = ["sweep", *DATA, "--grid", "groups.minority_quantile=0.2,0.4", "--seeds", "0-1", "--max-concurrent", "2",
            "--json", str(out)]
    assert main(argv) == 0
    sweep = json.loads(out.read_text())
    assert sweep["grid"] == {"groups.minority_quantile": [0.2, 0.4]} and sweep["seeds"] == [0, 1]
    assert [(c["params"]["groups.minority_quantile"], c["seed"], c["status"]) for c in sweep["cells"]] == [
        (0.2, 0, SUCCEEDED), (0.2, 1, SUCCEEDED), (0.4, 0, SUCCEEDED), (0.4, 1, SUCCEEDED)]
    registry = RunRegistry(home)
    cells = sweep_cells(registry, sweep["sweep_id"])
    assert sorted(r.id for r in cells) == sorted(c["run_id"] for c in sweep["cells"])
    for entry in sweep["cells"]:
        result = registry.load_result(entry["run_id"]).result
        quantile = result["config"]["groups"]["minority_quantile"]
        assert result["seeds"] == [entry["seed"]] and quantile == entry["params"]["groups.minority_quantile"]
        assert entry["methods"]["pafo"]["accuracy"] == result["methods"]["pafo"]["accuracy"]
    for point in sweep["points"]:
        assert point["n_seeds"] == 2
        pafo = point["methods"]["pafo"]
        assert 0 <= pafo["accuracy_ci"]["minority"][0] <= pafo["accuracy"]["minority"] <= pafo["accuracy_ci"][
            "minority"][1]
        assert point["comparisons"]["pafo"]["verdict"] in VERDICTS and point["comparisons"]["pafo"]["n_seeds"] == 2
    # A larger minority quantile puts more users in the minority: the two points' groups differ.
    assert sweep["points"][0]["methods"]["baseline"]["accuracy"] != sweep["points"][1]["methods"]["baseline"][
        "accuracy"]
    assert sweep["pareto_front"] and set(sweep["pareto_front"]) <= {0, 1}
    assert "wrote" in capsys.readouterr().err

    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert again["sweep_id"] != sweep["sweep_id"]
    assert [c["reused_from"] for c in again["cells"]] == [c["run_id"] for c in sweep["cells"]]
    assert again["points"] == sweep["points"] and again["pareto_front"] == sweep["pareto_front"]

    forced = tmp_path / "forced.json"
    assert main(["sweep", *DATA, "--grid", "groups.minority_quantile=0.4", "--seeds", "1", "--force",
                 "--json", str(forced)]) == 0
    cell = json.loads(forced.read_text())["cells"][0]
    assert cell["reused_from"] is None and cell["run_id"] not in {c["run_id"] for c in sweep["cells"]}
    first = sweep["cells"][3]["methods"]
    for name in ("baseline", "pafo"):
        assert cell["methods"][name]["accuracy"] == first[name]["accuracy"]  # determinism: same seed and config


def test_cli_sweep_flags_are_checked(home: Path, capsys: pytest.CaptureFixture):
    for flags, message in ((["--max-concurrent", "0"], "--max-concurrent: must be ≥ 1"),
                           (["--ray-address", "ray://x:1"], "only used with --backend ray"),
                           (["--pareto-method", "groupdro"], "--pareto-method 'groupdro'")):
        assert main(["sweep", *DATA, "--grid", "pafo.beta=1", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["runs", "cancel", "sweep-nosuch"]) == 2
    assert "unknown sweep id" in capsys.readouterr().err
    assert RunRegistry(home).list() == []


def test_cancel_of_a_sweep_cancels_its_running_and_queued_cells(reg: RunRegistry, tmp_path: Path):
    """Guards against cancelling a sweep leaving cells queued or a worker training on: one cell is held running
    (a gate the test never opens), the others queued; cancel_sweep ends all of them, and a run outside the sweep
    is left alone."""
    grid = parse_grid(["pafo.beta=0,1"], base_config())
    cells = expand_cells(base_config(), grid, [0, 1])
    gate = tmp_path / "never.gate"
    for cell in cells:
        cell.config = {**cell.config, "target": "tests.run_targets:gated_experiment", "gate": str(gate)}
    other = {**cells[0].config, "gate": str(tmp_path / "other.gate")}
    reg.max_concurrent = 1
    sweep_id = new_sweep_id()
    submit_cells(reg, cells, sweep_id=sweep_id)
    reg.dispatch()
    running = wait_for(lambda: (r := reg.get(cells[0].record.id)).status == RUNNING and r, 60)
    outsider = reg.submit(other, fingerprint="outside", start=False)
    assert main(["runs", "cancel", sweep_id]) == 0  # `pafo runs cancel SWEEP_ID`: cancel_sweep, then wait
    final = [reg.wait(c.record.id, timeout=60) for c in cells]
    assert [r.status for r in final] == [CANCELLED] * 4
    assert wait_for(lambda: process_alive(running.pid, running.id) is False, 30)
    assert reg.get(outsider.id).status not in (CANCELLED,)


# ============================================================================ shared features


def test_precomputed_features_replace_embedding_with_identical_results(single_thread,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """Guards the narrow door the Ray backend uses: run_experiment(features={seed: ...}) trains on the given rows
    without embedding anything (the encoder is never called) and gives the same metrics as embedding itself;
    rows that do not match the dataset are refused."""
    import pafo.experiment
    from pafo.experiment import run_experiment
    from pafo.features import response_features
    from pafo.sources import load_dataset

    config = base_config()
    plain = run_experiment(config)
    given = {0: response_features(load_dataset(config.data), config.run.encoder)}

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded although the features were given")

    monkeypatch.setattr(pafo.experiment, "response_features", no_embedding)
    shared = run_experiment(config, features=given)
    for name in ("baseline", "pafo"):
        for key in ("accuracy", "unfairness", "calibration"):
            assert shared["methods"][name][key] == plain["methods"][name][key]
    assert shared["per_user"] == plain["per_user"]
    short = {0: dataclasses.replace(given[0], features=given[0].features[:-1])}
    with pytest.raises(ValueError, match="precomputed features of seed 0"):
        run_experiment(config, features=short)


# ============================================================================ Ray backend


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's tests (starting it costs seconds); sweeps see it running and keep it."""
    from pafo.sweep import _ray_init

    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(PACKAGE_ROOT))  # Ray's workers (and the cells' workers) import tests.*
        patch.delenv("RAY_ADDRESS", raising=False)
        started = _ray_init(ray, None)
    yield
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_claimed_cells_are_not_dispatched_locally_and_cancel_at_once(reg: RunRegistry):
    """Guards against a cell handed to Ray also being started by the registry's local dispatch, and against a
    cancelled cell that Ray never started staying 'running' until its heartbeat goes stale."""
    cells = expand_cells(base_config(), parse_grid(["pafo.beta=0,1"], base_config()), [0])
    submit_cells(reg, cells, sweep_id=(sweep_id := new_sweep_id()))
    ids = [cell.record.id for cell in cells]
    assert all(reg.claim(run_id, "waiting for a Ray worker") for run_id in ids)
    assert not reg.claim(ids[0], "again")  # only a queued run can be claimed
    assert reg.dispatch() == []
    records = [reg.get(run_id) for run_id in ids]  # a refresh neither starts nor fails them
    assert [(r.status, r.pid) for r in records] == [(RUNNING, None)] * 2
    reg.beat_unstarted(ids)
    cancel_sweep(reg, sweep_id)
    assert [reg.get(run_id).status for run_id in ids] == [CANCELLED] * 2


@pytest.mark.slow
def test_ray_and_local_backends_give_identical_cells(local_ray, home: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """The same 4-cell sweep on Ray and on local workers: every cell succeeded, listed in the registry, and its
    metrics are identical on both backends (each cell retrained: --force). On Ray the driver embeds each seed's
    dataset once and puts it into the object store once (2 seeds: 2 puts for 4 tasks); every cell's worker got
    its features from there (its log says so) instead of embedding."""
    import ray

    import pafo.features

    puts, embeds = [], []
    real_put, real_embed = ray.put, pafo.features.response_features
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(sorted(value)) or real_put(value, **kw))
    monkeypatch.setattr(pafo.features, "response_features",
                        lambda dataset, *a, **kw: embeds.append(dataset) or real_embed(dataset, *a, **kw))
    argv = ["sweep", *DATA, "--grid", "pafo.beta=0,1", "--seeds", "0-1", "--max-concurrent", "2", "--force"]
    assert main([*argv, "--backend", "ray", "--json", str(tmp_path / "ray.json")]) == 0
    assert sorted(puts) == [[0], [1]] and len(embeds) == 2  # once per seed, not per cell
    assert main([*argv, "--backend", "local", "--json", str(tmp_path / "local.json")]) == 0
    on_ray, local = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("ray", "local"))
    assert [c["status"] for c in on_ray["cells"]] == [SUCCEEDED] * 4
    listed = {r.id: r for r in RunRegistry(home).list()}
    for ray_cell, local_cell in zip(on_ray["cells"], local["cells"], strict=True):
        assert ray_cell["run_id"] != local_cell["run_id"] and ray_cell["reused_from"] is None
        assert listed[ray_cell["run_id"]].parent_id == on_ray["sweep_id"]
        for name in ("baseline", "pafo"):
            for key in ("accuracy", "unfairness", "calibration"):
                assert ray_cell["methods"][name][key] == local_cell["methods"][name][key]
        log = (RunRegistry(home).run_dir(ray_cell["run_id"]) / "log.txt").read_text()
        assert f"features of seed {ray_cell['seed']} (" in log and "from the Ray object store" in log
        assert "features of seed" not in (RunRegistry(home).run_dir(local_cell["run_id"]) / "log.txt").read_text()
    assert on_ray["points"] == local["points"]


@pytest.mark.slow
def test_ray_cell_whose_worker_is_killed_fails_while_the_others_succeed(local_ray, reg: RunRegistry, tmp_path: Path):
    """Guards against a killed cell taking the sweep down or staying 'running': its worker is SIGKILLed while it
    waits at a gate the test never opens; it ends failed naming the signal and the other cell succeeds."""
    import threading

    from pafo.sweep import run_on_ray

    cells = expand_cells(base_config(), parse_grid(["pafo.beta=0,1"], base_config()), [0])
    cells[0].config = {**cells[0].config, "target": "tests.run_targets:gated_experiment",
                       "gate": str(tmp_path / "never.gate")}
    submit_cells(reg, cells, sweep_id=new_sweep_id())
    victim = cells[0].record.id

    def kill_when_started() -> None:
        record = wait_for(lambda: (r := reg.get(victim, refresh=False)).pid and r.stage != "running" and r, 120)
        os.kill(record.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    run_on_ray(reg, cells)
    killer.join(5)
    killed, other = (reg.wait(cell.record.id, timeout=60) for cell in cells)
    assert killed.status == "failed" and "SIGKILL" in killed.error
    assert other.status == SUCCEEDED
