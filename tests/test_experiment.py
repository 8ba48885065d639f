"""The experiment runner (data → support → groups → features → methods → metrics): determinism, CLI, artifacts."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import pafo.encoders
from pafo import cli
from pafo import method_configs as methods
from pafo import support as support_mod
from pafo.compare import Comparison, VerdictRule, pooled_group_ci
from pafo.config import UNKNOWN_FIELD
from pafo.encoders import MSG_MODEL_OFFLINE
from pafo.errors import PafoInputError
from pafo.experiment import UNKNOWN_METHOD, ExperimentConfig, RunSettings, _EmbedProgress, parse_seeds, run_experiment
from pafo.features import dataset_texts, response_features
from pafo.lexical import LexicalView
from pafo.methods import PAFOConfig
from pafo.models import build_model
from pafo.paths import atomic_write_text
from pafo.sources import DataConfig, load_dataset
from pafo.training import PairSet, TrainConfig, pair_margins

pytestmark = pytest.mark.usefixtures("single_thread")

TIMING_KEYS = {"seconds", "train_seconds", "setup_seconds", "cache_hits", "embedded"}  # and what the cache held
TINY_TRAIN = TrainConfig(epochs=3, batch_size=64, hidden=16, k=4, patience=3)
TINY_FLAGS = ["--users", "24", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6",
              "--test-pairs", "4", "--encoder", "tfidf", "--bootstrap", "20", "--epochs", "3", "--hidden", "16",
              "--k", "4"]


def tiny_experiment(data: DataConfig, methods_: str = "baseline,pafo") -> ExperimentConfig:
    return ExperimentConfig(data=data, run=RunSettings(encoder="tfidf", methods=methods_, bootstrap=20),
                            train=TINY_TRAIN, pafo=PAFOConfig(dense=4))


def without_timings(value):
    """The result with every wall-clock field removed (all else must be reproducible)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_same_seed_gives_an_identical_experiment_json(tiny_config):
    """Regression: a run is a pure function of its config and seed, apart from timings (the registry reuses runs)."""
    config = tiny_experiment(tiny_config)
    first = run_experiment(config).to_json()
    second = run_experiment(dataclasses.replace(config)).to_json()
    assert second["encoder"]["cache_hits"] > 0  # the second run read the embeddings cache: same vectors
    assert json.dumps(without_timings(first), sort_keys=True) == json.dumps(without_timings(second), sort_keys=True)
    assert set(first["methods"]) == {"baseline", "pafo"}
    clusters = first["methods"]["pafo"]["clusters"]
    assert clusters["restarts"] == PAFOConfig().restarts and clusters["clusters"]
    assert sum(c["n_users"] for c in clusters["clusters"]) == tiny_config.users
    assert {"log_loss", "ece"} <= set(first["methods"]["pafo"]["calibration"]["minority"])
    assert first["support"]["estimator"] == "exact" and first["encoder"]["name"].startswith("tfidf")
    json.dumps(first, allow_nan=False)  # plain JSON, no NaN


def test_experiment_cli_writes_json_and_out_dir_and_weights_load_back(tmp_path, capsys):
    """`pafo experiment --json --out-dir` writes the result, tables and weights; the weights rebuild the models."""
    out_dir, result_path = tmp_path / "run", tmp_path / "result.json"
    code = cli.main(["experiment", *TINY_FLAGS, "--json", str(result_path), "--out-dir", str(out_dir),
                     "--per-user-csv", str(tmp_path / "users.csv")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(result_path.read_text())
    assert result == json.loads((out_dir / "result.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "run", "users.csv"]  # no staging left
    names = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert names == ["manifest.json", "per_user.csv", "result.json", "test_margins.csv", "weights/baseline.json",
                     "weights/baseline.newusers.json", "weights/baseline.safetensors", "weights/lexical.json",
                     "weights/lexical.safetensors", "weights/pafo.clusters.safetensors", "weights/pafo.json",
                     "weights/pafo.newusers.json", "weights/pafo.safetensors"]
    per_user = pd.read_csv(out_dir / "per_user.csv")
    assert len(per_user) == 24 and {"acc_baseline", "acc_pafo", "group", "support_rate"} <= set(per_user.columns)
    pd.testing.assert_frame_equal(per_user, pd.read_csv(tmp_path / "users.csv"))
    margins = pd.read_csv(out_dir / "test_margins.csv")
    # Rebuild each model from its JSON config and safetensors weights; its margins equal the saved ones.
    ds = load_dataset(DataConfig(**result["config"]["data"]))
    assert len(margins) == result["dataset"]["n_pairs"]["test"] == len(ds.split("test"))
    np.testing.assert_array_equal(margins["pair"], ds.split("test").index)
    phi = torch.from_numpy(response_features(ds, "tfidf").features)
    # PAFO's wide model reads its lexical view after φ: the view the run stored, applied to the same texts.
    lexical = LexicalView.load(out_dir / "weights").transform(ds.responses["text"].tolist())
    test = PairSet(*(margins[c].to_numpy(np.int64, copy=True) for c in ("chosen", "rejected", "user")))
    for name in ("baseline", "pafo"):
        model = build_model(json.loads((out_dir / "weights" / f"{name}.json").read_text()))
        model.load_state_dict(load_file(out_dir / "weights" / f"{name}.safetensors"))
        features = torch.cat([phi, torch.from_numpy(lexical)], dim=1) if model.lexical_dim else phi
        np.testing.assert_allclose(pair_margins(model, features, test), margins[f"margin_{name}"], rtol=1e-5,
                                   atol=1e-6)
        accuracy = ((margins[f"margin_{name}"] > 0) + 0.5 * (margins[f"margin_{name}"] == 0)).groupby(
            margins["user"]).mean()
        np.testing.assert_allclose(accuracy.to_numpy(), per_user[f"acc_{name}"].to_numpy())


BAD_EXPERIMENTS = {
    "unknown-method": (["--methods", "baseline,magic"], UNKNOWN_METHOD, ["'magic'"]),
    "negative-lambda": (["--lambda=-0.5"], methods.BAD_LAMBDA, ["-0.5"]),
    "zero-temperature": (["--temperature", "0"], methods.BAD_TEMPERATURE, ["0.0"]),
    "negative-temperature": (["--temperature=-1"], methods.BAD_TEMPERATURE, ["-1.0"]),
    "negative-dense": (["--dense=-3"], methods.BAD_DENSE, ["-3"]),
    "zero-finetune-patience": (["--finetune-patience", "0"], methods.BAD_FINETUNE_PATIENCE, ["0"]),
    "empty-minority": (["--minority-threshold", "0.0"], support_mod.EMPTY_GROUP, ["minority", "higher threshold"]),
    "encoder-offline": (["--encoder", "not/a-model"], MSG_MODEL_OFFLINE, ["'not/a-model'"]),
}


@pytest.mark.parametrize("case", list(BAD_EXPERIMENTS))
def test_bad_experiment_input_exits_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch, check_message):
    """Regression: bad experiment input gives exit 2, one stderr line, and nothing in (or beside) --out-dir."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    args, template, values = BAD_EXPERIMENTS[case]
    out_dir, result_path = tmp_path / "runs" / "out", tmp_path / "result.json"
    code = cli.main(["experiment", *TINY_FLAGS, *args, "--json", str(result_path), "--out-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pafo: error: ") and "Traceback" not in captured.err
    check_message(lines[0], template, *values)
    assert not out_dir.exists() and not result_path.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no staging directory


def test_dsp_experiment_runs_on_the_shared_file(dsp_path, monkeypatch):
    """The DSP path end to end with tfidf: baseline and PAFO train and are evaluated on 60 simulated users.

    TF-IDF keeps 1,024 n-grams per block here instead of 32,768 so the SVD fits the test budget; the code path
    is the same.
    """
    monkeypatch.setattr(pafo.encoders, "TFIDF_MAX_FEATURES", 2**10)
    config = tiny_experiment(DataConfig(dataset="dsp", path=str(dsp_path), users=60, train_pairs=10, test_pairs=6))
    result = run_experiment(config).to_json()
    assert result["dataset"]["name"] == "dsp" and result["dataset"]["n_prompts"] == 461
    assert result["support"]["estimator"] == "exact"
    assert result["groups"]["n_minority"] + result["groups"]["n_majority"] == 60
    assert 9 <= result["groups"]["n_minority"] <= 15
    assert result["encoder"]["name"].startswith("tfidf-w12-c24-f1024")
    for name in ("baseline", "pafo"):
        accuracy = result["methods"][name]["accuracy"]
        assert all(0 <= accuracy[k] <= 1 for k in ("overall", "micro", "majority", "minority")), accuracy
    assert result["methods"]["baseline"]["history"]
    clusters = result["methods"]["pafo"]["clusters"]["clusters"]
    assert sum(c["n_users"] for c in clusters) == 60 and {c["group"] for c in clusters} <= {"majority", "minority"}
    groups_path = run_experiment(dataclasses.replace(config, pafo=PAFOConfig(dense=4, teachers="groups"))).to_json()
    teachers = groups_path["methods"]["pafo"]["teachers"]
    assert set(teachers) == {"majority", "minority"}
    assert teachers["minority"]["n_train_pairs"] < teachers["majority"]["n_train_pairs"]
    assert len(result["per_user"]["user_id"]) == 60


def test_experiment_config_round_trips_through_json(tiny_config, check_message):
    """to_dict / from_dict give back the same config (the registry stores it as JSON); unknown keys are refused."""
    config = tiny_experiment(tiny_config)
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.fingerprint() == config.fingerprint()
    with pytest.raises(PafoInputError) as caught:
        ExperimentConfig.from_dict({**config.to_dict(), "pafo": {"lam": 1.0, "colour": "red"}})
    check_message(str(caught.value), UNKNOWN_FIELD, "PAFOConfig", "'colour'")


# ------------------------------------------------------------------------------------------- several seeds


def test_experiment_over_seeds_pools_them_with_paired_comparisons(tmp_path, capsys):
    """`pafo experiment --seeds 0-2 --json r.json`: seeds, per-seed blocks, pooled methods (means over seeds),
    comparisons whose verdict follows the documented rule from their own CIs, every seed's users, and one
    summary line on stderr."""
    path = tmp_path / "r.json"
    code = cli.main(["experiment", *TINY_FLAGS, "--seeds", "0-2", "--json", str(path), "--out-dir",
                     str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(path.read_text())
    assert result["seeds"] == [0, 1, 2] and [b["seed"] for b in result["per_seed"]] == [0, 1, 2]
    assert result["config"]["seeds"] == [0, 1, 2] and result["config"]["data"]["seed"] == 0
    for name in ("baseline", "pafo"):
        for group in ("majority", "minority"):
            per_seed = [b["methods"][name]["accuracy"][group] for b in result["per_seed"]]
            assert result["methods"][name]["accuracy"][group] == pytest.approx(np.mean(per_seed))
            lo, hi = result["methods"][name]["accuracy_ci"][group]
            assert lo <= result["methods"][name]["accuracy"][group] <= hi
    comparison = result["comparisons"]["pafo"]
    assert set(comparison) >= {"majority", "minority", "user_std", "support_spearman_abs", "verdict"}
    rule = VerdictRule(**comparison["rule"])
    assert rule.epsilon == ExperimentConfig.from_dict(result["config"]).run.epsilon
    typed = Comparison.from_json(comparison)
    assert (comparison["verdict"], comparison["verdict_reason"]) == rule.judge(
        typed.delta("majority"), typed.delta("minority"), typed.sample, typed.n_seeds)
    assert comparison["verdict"] == "noise" and comparison["verdict_reason"].startswith("too few users: minority")
    assert comparison["n_seeds"] == 3 and comparison["n_users"] == 72
    assert "baseline" not in result["comparisons"]
    minority = [b["methods"]["pafo"]["accuracy"]["minority"] - b["methods"]["baseline"]["accuracy"]["minority"]
                for b in result["per_seed"]]
    assert comparison["minority"]["delta"] == pytest.approx(np.mean(minority))  # paired: the same users' deltas
    per_user = pd.DataFrame(result["per_user"])
    assert len(per_user) == 72 and per_user.groupby("seed").size().tolist() == [24, 24, 24]
    margins = pd.read_csv(tmp_path / "run" / "test_margins.csv")
    assert sorted(margins["seed"].unique()) == [0, 1, 2]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pafo: wrote {path}: ") and "seeds 0,1,2" in lines[0]
    assert "pafo vs baseline: " in lines[0] and " over 3 seeds × 24 users" in lines[0]
    # The run folder audits as its first seed (whose data options it records), not as three seeds' pairs at once.
    audited = tmp_path / "audit.json"
    assert cli.main(["audit", *TINY_FLAGS[:10], "--predictions", f"baseline={tmp_path / 'run'}", "--json",
                     str(audited)]) == 0, capsys.readouterr().err
    audit_accuracy = json.loads(audited.read_text())["methods"]["baseline"]["accuracy"]
    assert audit_accuracy == result["per_seed"][0]["methods"]["baseline"]["accuracy"]


def test_one_seed_keeps_its_json_and_seed_flags_agree(tiny_config):
    """`--seed N` and `--seeds N` are the same one-seed run: the old keys, `seeds: [N]`, no `seeds` in the config;
    per_seed[0] holds the same numbers as the top level."""
    result = run_experiment(tiny_experiment(dataclasses.replace(tiny_config, seed=1))).to_json()
    assert result["seeds"] == [1] and "seeds" not in result["config"]
    assert {"dataset", "support", "groups", "encoder", "config", "fingerprint", "methods", "per_user",
            "seconds"} <= set(result)
    assert result["per_seed"][0]["methods"] == result["methods"]
    assert result["comparisons"] == result["per_seed"][0]["comparisons"]
    seed, seeds = (cli.experiment_config_from_args(cli.build_parser().parse_args(["experiment", *TINY_FLAGS, *a]))
                   for a in (["--seed", "1"], ["--seeds", "1"]))
    assert seed.to_dict() == seeds.to_dict() and seed.data.seed == 1 and "seeds" not in seed.to_dict()


@pytest.mark.parametrize(("value", "expected"), [
    ("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("0-2, 9", [0, 1, 2, 9]), ("3,3,1", [3, 1]), ([2, 5], [2, 5]),
    (4, [4]),
])
def test_parse_seeds(value, expected):
    assert parse_seeds(value) == expected


@pytest.mark.parametrize(("args", "fragment"), [
    (["--seeds", "0-x"], "'0-x' is not a seed"),
    (["--seeds", "4-2"], "runs backwards"),
    (["--seeds", "0-1000"], "at most 50 seeds"),
    (["--seeds", ","], "no seed given"),
    (["--seed", "1", "--seeds", "0-2"], "give one of them"),
])
def test_bad_seeds_exit_2_with_one_line(args, fragment, tmp_path, capsys):
    code = cli.main(["experiment", *TINY_FLAGS, *args, "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], captured.err
    assert not (tmp_path / "r.json").exists()


def test_config_with_seeds_round_trips_and_fingerprints_every_seed(tiny_config):
    config = dataclasses.replace(tiny_experiment(tiny_config), seeds="0-1").validate()
    assert config.seeds == [0, 1] and config.seed_list() == [0, 1]
    again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.fingerprint() == config.fingerprint()
    assert config.fingerprint() != tiny_experiment(tiny_config).fingerprint()  # seed 0 alone is other data
    single = dataclasses.replace(tiny_experiment(tiny_config), seeds=[3]).validate()
    assert single.seeds is None and single.data.seed == 3  # one spelling per run


def test_pooled_group_ci_brackets_the_mean_over_seeds():
    """The pooled CI is of the mean over seeds of each group's mean, and narrows with more seeds."""

    def table(seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        group = np.where(np.arange(100) < 20, "minority", "majority")
        return pd.DataFrame({"group": group, "acc_pafo": np.clip(rng.normal(0.7, 0.1, 100), 0, 1)})

    tables = [table(s) for s in range(4)]
    one, four = pooled_group_ci(tables[:1], "acc_pafo", seed=1), pooled_group_ci(tables, "acc_pafo", seed=1)
    means = [t.loc[t.group == "minority", "acc_pafo"].mean() for t in tables]
    assert four["minority"][0] < np.mean(means) < four["minority"][1]
    assert four["minority"][1] - four["minority"][0] < one["minority"][1] - one["minority"][0]
    assert four["gap"][0] < four["majority"][1] - four["minority"][0]
    assert pooled_group_ci([tables[0].iloc[19:21]], "acc_pafo")["minority"] == [None, None]  # one user: no CI


def test_result_files_follow_the_umask(tmp_path):
    """Regression: atomic writes went through mkstemp, so every result file was 0600 whatever the umask."""
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "r.json", "{}").stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_runs_start_with_seeds_trains_them_in_the_worker_and_reuses_a_run_in_flight(capsys):
    """`pafo runs start --seeds 0-1` trains both seeds in one worker (progress says "seed i of n"); starting the
    same config again while it is queued or running hands back that run (regression: two identical runs trained
    at once), and a run being cancelled is not handed back."""
    from pafo.registry import RunRegistry

    registry = RunRegistry()
    data = DataConfig(users=24, prompts=16, responses_per_prompt=4, train_pairs=6, test_pairs=4)
    config = dataclasses.replace(tiny_experiment(data), seeds=[0, 1]).validate()
    queued = registry.submit_config(config, start=False)
    assert registry.submit_config(config, force=True).id == queued.id
    registry.request_cancel(queued.id)
    assert cli.main(["runs", "start", *TINY_FLAGS, "--seeds", "0-1"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert run_id != queued.id
    assert cli.main(["runs", "start", *TINY_FLAGS, "--seeds", "0,1"]) == 0
    again = capsys.readouterr().out.strip()  # in flight: the same run; finished already: reused, not retrained
    assert again == run_id or registry.get(again).reused_from == run_id
    record = registry.wait(run_id, timeout=240)
    assert record.status == "succeeded", record.error
    assert registry.load_result(run_id).result["seeds"] == [0, 1]
    stages = {row["stage"] for row in registry.epochs(run_id)}
    assert {s.split(":")[0] for s in stages} == {"seed 0", "seed 1"}


def test_synthetic_run_over_seeds_embeds_the_texts_of_one_seed(tiny_config):
    """Regression (issue 19): on the synthetic source every run seed made new texts, so --seeds 0-2 embedded three
    text pools; now the later seeds' texts all come from the embeddings cache."""
    config = dataclasses.replace(tiny_experiment(tiny_config, "baseline"), seeds="0-2",
                                 run=RunSettings(encoder="minilm", methods="baseline", bootstrap=20)).validate()
    result = run_experiment(config).to_json()
    n_texts = len(set(dataset_texts(load_dataset(tiny_config))))
    assert result["encoder"]["texts"] == result["encoder"]["embedded"] == n_texts  # seeds 1 and 2 add none
    assert result["encoder"]["cache_hits"] == 0


SEED_OF = re.compile(r"^seed (\d+) of (\d+): ")
EMBEDDED = re.compile(r"^embedding texts: ([\d,]+) of ([\d,]+)")


def test_progress_of_a_three_seed_run_counts_up_in_order(tiny_config):
    """Regression (issue 19): a 3-seed demo showed "embedding texts (seed 2 of 3) · 2%" for most of its run, then
    "seed 1 of 3" again when training began, and no stage while the seeds were pooled. Every progress callback of
    a 3-seed run is recorded here: the fraction never goes back, the embedding counts the run's texts batch by
    batch (no seed in it: the seeds share their texts), "seed i of n" only counts up, every seed shows each of its
    stages, and the bar moves across each stage."""
    events = []
    config = dataclasses.replace(tiny_experiment(tiny_config), seeds="0-2",
                                 run=RunSettings(encoder="minilm", methods="baseline,pafo", bootstrap=20)).validate()
    run_experiment(config, progress=lambda fraction, stage, metrics=None: events.append((fraction, stage)))
    fractions = [fraction for fraction, _ in events]
    assert all(b >= a for a, b in itertools.pairwise(fractions)), fractions
    assert fractions[-1] == 1.0 and events[-1][1] == "done"

    counts = [tuple(int(n.replace(",", "")) for n in m.groups()) for _, stage in events if (m := EMBEDDED.match(stage))]
    n_texts = len(set(dataset_texts(load_dataset(tiny_config))))
    assert {total for _, total in counts} == {n_texts}  # the run's texts, once: not once per seed
    done = [d for d, _ in counts]
    assert done[0] == 0 and done[-1] == n_texts and len(set(done)) >= 3  # a report per batch of 64 texts
    assert all(b > a for a, b in itertools.pairwise(dict.fromkeys(done))), done

    seeds = [int(m.group(1)) for _, stage in events if (m := SEED_OF.match(stage))]
    assert seeds == sorted(seeds) and set(seeds) == {1, 2, 3}, seeds
    first_seed = next(i for i, (_, stage) in enumerate(events) if SEED_OF.match(stage))
    assert all(not SEED_OF.match(stage) for _, stage in events[:first_seed] if "embedding" in stage)
    for seed in (1, 2, 3):
        own = [SEED_OF.sub("", stage) for _, stage in events if stage.startswith(f"seed {seed} of 3: ")]
        assert {"support rates", "baseline", "baseline done", "pafo: preference clusters", "pafo done"} <= set(own)
    assert "pooling the seeds" in [stage for _, stage in events]

    # Each stage moves the bar: the next stage begins further on than it did ("… done" marks an end, no work).
    families = []
    for fraction, stage in events:
        family = re.sub(r": [\d,]+ of [\d,]+.*$", "", stage)
        if not families or families[-1][1] != family:
            families.append((fraction, family))
    for (start, family), (after, _) in itertools.pairwise(families):
        assert family.endswith("done") or after > start, (family, start, after)


def test_embedding_stage_counts_texts_and_says_the_time_left():
    """The embedding stage says how many of the texts the cache lacked are done and, once two batches have shown
    the pace, about how long the rest takes (issue 19: the bar sat at one number for ~95 s)."""
    events, now = [], [0.0]
    embed = _EmbedProgress(lambda fraction, stage, metrics=None: events.append((fraction, stage)), "minilm", 10.0,
                           clock=lambda: now[0])
    for at, done in ((0.0, 100), (4.0, 164), (6.0, 228), (8.0, 292), (30.0, 1100)):
        now[0] = at
        embed(done, 1100)
    stages = [stage for _, stage in events]
    assert stages[:2] == ["embedding texts: 0 of 1,000 · loading the model", "embedding texts: 64 of 1,000"]
    assert stages[2] == "embedding texts: 128 of 1,000 · ~27 s left"  # 872 texts at 64 per 2 s
    assert stages[3] == "embedding texts: 192 of 1,000 · ~25 s left"
    assert stages[4] == "embedding texts: 1,000 of 1,000"
    fractions = [fraction for fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(embed.embedded_at)
    warm = _EmbedProgress(lambda fraction, stage, metrics=None: events.append((fraction, stage)), "minilm", 10.0)
    warm(1100, 1100)
    assert events[-1][1] == "embedding texts: all 1,100 in the cache" and warm.embedded_at < 0.05
