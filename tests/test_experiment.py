"""The experiment runner (data → support → groups → features → methods → metrics): determinism, CLI, artifacts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import pafo.encoders
from pafo import cli
from pafo import method_configs as methods
from pafo import support as support_mod
from pafo.config import UNKNOWN_FIELD
from pafo.encoders import MSG_MODEL_OFFLINE
from pafo.errors import PafoInputError
from pafo.experiment import UNKNOWN_METHOD, ExperimentConfig, RunSettings, run_experiment
from pafo.features import response_features
from pafo.methods import PAFOConfig
from pafo.models import build_model
from pafo.sources import DataConfig, load_dataset
from pafo.training import PairSet, TrainConfig, pair_margins

pytestmark = pytest.mark.usefixtures("single_thread")

TIMING_KEYS = {"seconds", "train_seconds", "setup_seconds", "cache_hits"}
TINY_TRAIN = TrainConfig(epochs=3, batch_size=64, hidden=16, k=4, patience=3)
TINY_FLAGS = ["--users", "24", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6",
              "--test-pairs", "4", "--encoder", "tfidf", "--bootstrap", "20", "--epochs", "3", "--hidden", "16",
              "--k", "4", "--dense", "4"]


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
    first = run_experiment(config)
    second = run_experiment(dataclasses.replace(config))
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
                     "weights/baseline.safetensors", "weights/pafo.json", "weights/pafo.safetensors"]
    per_user = pd.read_csv(out_dir / "per_user.csv")
    assert len(per_user) == 24 and {"acc_baseline", "acc_pafo", "group", "support_rate"} <= set(per_user.columns)
    pd.testing.assert_frame_equal(per_user, pd.read_csv(tmp_path / "users.csv"))
    margins = pd.read_csv(out_dir / "test_margins.csv")
    # Rebuild each model from its JSON config and safetensors weights; its margins equal the saved ones.
    ds = load_dataset(DataConfig(**result["config"]["data"]))
    assert len(margins) == result["dataset"]["n_pairs"]["test"] == len(ds.split("test"))
    np.testing.assert_array_equal(margins["pair"], ds.split("test").index)
    features = torch.from_numpy(response_features(ds, "tfidf").features)
    test = PairSet(*(margins[c].to_numpy(np.int64, copy=True) for c in ("chosen", "rejected", "user")))
    for name in ("baseline", "pafo"):
        model = build_model(json.loads((out_dir / "weights" / f"{name}.json").read_text()))
        model.load_state_dict(load_file(out_dir / "weights" / f"{name}.safetensors"))
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
    result = run_experiment(config)
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
    groups_path = run_experiment(dataclasses.replace(config, pafo=PAFOConfig(dense=4, teachers="groups")))
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
