"""`pafo score`: a run's saved model scores (prompt, response, user) triples without any group label."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pafo import cli, lexical, scoring
from pafo.registry import RunRegistry
from pafo.sources import DataConfig, load_dataset
from pafo.sources.files import MISSING_COLUMNS

TINY = dict(users=24, prompts=16, responses_per_prompt=4, train_pairs=6, test_pairs=4)
TINY_FLAGS = ["--users", "24", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6",
              "--test-pairs", "4", "--bootstrap", "20", "--epochs", "3", "--hidden", "16", "--k", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MiniLM experiment (baseline + PAFO) with its artifacts, shared by this module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(tmp_path_factory.mktemp("score_home")))
        out = tmp_path_factory.mktemp("score_run") / "run"
        assert cli.main(["experiment", *TINY_FLAGS, "--encoder", "minilm", "--out-dir", str(out),
                         "--json", str(out.parent / "result.json")]) == 0
        yield out


def _test_pair_triples() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each test pair of the tiny dataset as two triples (chosen, then rejected) for the pair's user."""
    dataset = load_dataset(DataConfig(**TINY))
    test = dataset.split("test")
    rows = [{"user_id": dataset.users["user_id"].iloc[u], "prompt": dataset.responses["prompt"].iloc[r],
             "response": dataset.responses["text"].iloc[r]}
            for u, c, j in zip(test["user"], test["chosen"], test["rejected"], strict=True) for r in (c, j)]
    return pd.DataFrame(rows), test


@pytest.mark.parametrize("method", ["baseline", "pafo"])
def test_scores_reproduce_the_runs_test_margins(run_dir, method, write_table, tmp_path):
    """r(chosen) − r(rejected) from `pafo score` equals the margin the experiment saved for every test pair."""
    triples, _ = _test_pair_triples()
    source = write_table(triples, tmp_path / "triples.csv")
    out = tmp_path / "scored.csv"
    assert cli.main(["score", "--run-dir", str(run_dir), "--method", method, "--input", str(source),
                     "--csv", str(out)]) == 0
    scored = pd.read_csv(out)
    assert scored["known_user"].all() and len(scored) == len(triples)
    rewards = scored["reward"].to_numpy().reshape(-1, 2)
    margins = pd.read_csv(run_dir / "test_margins.csv")[f"margin_{method}"].to_numpy()
    np.testing.assert_allclose(rewards[:, 0] - rewards[:, 1], margins, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_unknown_users_get_the_shared_reward(run_dir, kind, write_table, tmp_path):
    """A user the run never saw is scored with b · g(φ) (w_u = 0) and flagged, whatever the file format."""
    triples, _ = _test_pair_triples()
    known = triples.iloc[:4]
    stranger = known.assign(user_id="someone-new")
    source = write_table(pd.concat([known, stranger], ignore_index=True), tmp_path / f"triples.{kind}")
    model = scoring.load_scoring_model(run_dir, "pafo")
    scored = scoring.score_triples(model, scoring.read_triples(source))
    assert scored["known_user"].tolist() == [True] * 4 + [False] * 4
    b = model.model.b.detach().numpy()
    assert np.abs(b).sum() > 0
    shared = scored["reward"].to_numpy()[4:]
    personal = scored["reward"].to_numpy()[:4]
    assert not np.allclose(shared, personal)  # the known users' own vectors matter


def test_score_json_summary_and_background_run_id(run_dir, tmp_path, write_table):
    """--json holds a summary and every row; --run RUN_ID finds a succeeded background run's folder (here the
    run's files put in the registry's folder of a run of the same config and data)."""
    triples, _ = _test_pair_triples()
    source = write_table(triples.iloc[:6], tmp_path / "triples.csv")
    registry = RunRegistry()
    result = json.loads((run_dir / "result.json").read_text())
    record = registry.submit(result["config"], fingerprint=result["fingerprint"], start=False, label="scored")
    shutil.copytree(run_dir, registry.run_dir(record.id), dirs_exist_ok=True)
    assert registry.mark_running(record.id, os.getpid())
    assert registry.mark_succeeded(record.id, registry.run_dir(record.id) / "result.json")
    out = tmp_path / "summary.json"
    assert cli.main(["score", "--run", record.id, "--input", str(source), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_rows"] == 6 and summary["n_unknown_users"] == 0 and summary["method"] == "pafo"
    assert len(summary["rows"]) == 6 and all("reward" in row for row in summary["rows"])


def test_score_pair_compares_two_responses_per_method(run_dir):
    """score_pair: each method's margin A − B equals the run's saved margin on a test pair, with its verdict."""
    triples, _ = _test_pair_triples()
    first, second = triples.iloc[0], triples.iloc[1]  # the first test pair: chosen, rejected
    models = {name: scoring.load_scoring_model(run_dir, name) for name in ("baseline", "pafo")}
    table = scoring.score_pair(models, first["user_id"], first["prompt"], first["response"], second["response"])
    saved = pd.read_csv(run_dir / "test_margins.csv").iloc[0]
    for _, row in table.iterrows():
        assert row["margin A − B"] == pytest.approx(saved[f"margin_{row['method']}"], abs=1e-5)
        assert row["prefers"] == ("A" if row["margin A − B"] > 0 else "B")
        assert 0 < row["P(A preferred)"] < 1


def _bad_cases(run_dir: Path, tmp_path: Path, write_table) -> dict:
    triples, _ = _test_pair_triples()
    tfidf_run = tmp_path / "tfidf_run"
    (tfidf_run / "weights").mkdir(parents=True)
    result = json.loads((run_dir / "result.json").read_text())
    result["config"]["run"]["encoder"] = "tfidf"
    (tfidf_run / "result.json").write_text(json.dumps(result))
    # A run folder from before manifests (none to catch it first) whose stored lexical view was cut short.
    damaged_view = tmp_path / "damaged_view"
    shutil.copytree(run_dir, damaged_view)
    (damaged_view / "manifest.json").unlink()
    (damaged_view / "weights" / "lexical.json").write_text("{")
    return {
        "no-column": (["--run-dir", str(run_dir), "--input",
                       str(write_table(triples.drop(columns="response"), tmp_path / "a.csv"))],
                      MISSING_COLUMNS, ["response"]),
        "empty-cell": (["--run-dir", str(run_dir), "--input",
                        str(write_table(triples.assign(prompt=["", *triples["prompt"][1:]]),
                                        tmp_path / "b.csv"))], scoring.MSG_EMPTY_CELL, ["row 1", "prompt"]),
        "not-a-run": (["--run-dir", str(tmp_path), "--input", str(tmp_path / "x.csv")], scoring.MSG_NOT_A_RUN, []),
        "unknown-method": (["--run-dir", str(run_dir), "--method", "groupdro", "--input", str(tmp_path / "x.csv")],
                           scoring.MSG_NO_WEIGHTS, ["'groupdro'", "baseline, pafo"]),
        "tfidf-run": (["--run-dir", str(tfidf_run), "--input", str(tmp_path / "x.csv")], scoring.MSG_TFIDF_RUN, []),
        "damaged-lexical-view": (["--run-dir", str(damaged_view), "--input", str(tmp_path / "x.csv")],
                                 lexical.MSG_DAMAGED, [str(damaged_view / "weights" / "lexical.json")]),
    }


@pytest.mark.parametrize("case", ["no-column", "empty-cell", "not-a-run", "unknown-method", "tfidf-run",
                                  "damaged-lexical-view"])
def test_bad_score_input_exits_2_with_one_line(case, run_dir, tmp_path, write_table, capsys, check_message):
    """Regression: every bad `pafo score` input is exit 2 and one stderr line naming the file, row or field."""
    args, template, values = _bad_cases(run_dir, tmp_path, write_table)[case]
    out = tmp_path / "scored.csv"
    assert cli.main(["score", *args, "--csv", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pafo: error: ")
    check_message(lines[0], template, *values)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- --user-pairs


def _contrary_pairs(run_dir: Path, user_id: str = "newcomer") -> pd.DataFrame:
    """Training pairs of the tiny data oriented *against* the shared reward b · g(φ): a new user whose labels the
    run's shared model gets wrong, so personalising must move them."""
    dataset = load_dataset(DataConfig(**TINY))
    train = dataset.split("train").iloc[:12]
    texts, prompts = dataset.responses["text"], dataset.responses["prompt"]
    model = scoring.load_scoring_model(run_dir, "baseline")
    triples = pd.DataFrame({"user_id": "?", "prompt": prompts.iloc[np.r_[train["chosen"], train["rejected"]]].tolist(),
                            "response": texts.iloc[np.r_[train["chosen"], train["rejected"]]].tolist()})
    shared = scoring.score_triples(model, triples)["reward"].to_numpy().reshape(2, -1)
    flip = shared[0] > shared[1]
    chosen = np.where(flip, train["rejected"], train["chosen"])
    rejected = np.where(flip, train["chosen"], train["rejected"])
    return pd.DataFrame({"user_id": user_id, "prompt": prompts.iloc[chosen].tolist(),
                         "chosen": texts.iloc[chosen].tolist(), "rejected": texts.iloc[rejected].tolist()})


def _as_triples(pairs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.repeat(pairs["user_id"].to_numpy(), 2),
                         "prompt": np.repeat(pairs["prompt"].to_numpy(), 2),
                         "response": np.stack([pairs["chosen"], pairs["rejected"]], 1).ravel()})


@pytest.mark.parametrize("method", ["baseline", "pafo"])
def test_user_pairs_personalise_a_new_user_before_scoring(run_dir, method, write_table, tmp_path, capsys):
    """Guards `pafo score --user-pairs`: a user the run never saw is fitted from their own pairs (flagged
    ``personalised``), which changes their rewards; the baseline's ridge fit moves their margins towards their
    labels, which the shared reward got wrong (it lowers their BT loss by construction; PAFO adds its cluster
    channel, which need not); known users score as without the flag."""
    pairs = _contrary_pairs(run_dir)
    new_pairs = write_table(pairs, tmp_path / "new.csv")
    known, _ = _test_pair_triples()
    triples = pd.concat([_as_triples(pairs), known.iloc[:4]], ignore_index=True)
    source = write_table(triples, tmp_path / "triples.csv")
    with_pairs, without = tmp_path / "with.csv", tmp_path / "without.csv"
    assert cli.main(["score", "--run-dir", str(run_dir), "--method", method, "--input", str(source),
                     "--user-pairs", str(new_pairs), "--csv", str(with_pairs)]) == 0
    assert "1 new users personalised from their 12 pairs" in capsys.readouterr().err
    assert cli.main(["score", "--run-dir", str(run_dir), "--method", method, "--input", str(source),
                     "--csv", str(without)]) == 0
    fitted, shared = pd.read_csv(with_pairs), pd.read_csv(without)
    assert fitted["personalised"].tolist() == [True] * 24 + [False] * 4 and "personalised" not in shared
    assert fitted["known_user"].all() and not shared["known_user"].iloc[:24].any()
    margin = lambda frame: frame["reward"].to_numpy()[:24].reshape(-1, 2) @ [1, -1]  # noqa: E731
    assert (margin(shared) <= 0).all() and not np.allclose(margin(fitted), margin(shared))
    if method == "baseline":
        assert np.logaddexp(0, -margin(fitted)).mean() < np.logaddexp(0, -margin(shared)).mean()
    np.testing.assert_allclose(fitted["reward"].iloc[24:], shared["reward"].iloc[24:], atol=1e-6)


def test_bad_user_pairs_exit_2_with_one_line(run_dir, tmp_path, write_table, capsys, check_message):
    """Guards --user-pairs input: a missing column, an empty cell (row and field named), a pair of one response
    twice (row named), and a run saved before new users could be personalised: exit 2, one stderr line."""
    pairs = _contrary_pairs(run_dir)
    source = write_table(_as_triples(pairs), tmp_path / "triples.csv")
    older = tmp_path / "older_run"
    shutil.copytree(run_dir, older)
    (older / "manifest.json").unlink()
    (older / "weights" / "pafo.newusers.json").unlink()
    cases = [
        (write_table(pairs.drop(columns="rejected"), tmp_path / "a.csv"), run_dir, MISSING_COLUMNS, ["rejected"]),
        (write_table(pairs.assign(chosen=["", *pairs["chosen"][1:]]), tmp_path / "b.csv"), run_dir,
         scoring.MSG_EMPTY_CELL, ["b.csv", "row 1", "chosen"]),
        (write_table(pairs.assign(rejected=[pairs["rejected"][0], pairs["chosen"][1], *pairs["rejected"][2:]]),
                     tmp_path / "c.csv"), run_dir, scoring.MSG_SAME_RESPONSE, ["c.csv", "row 2"]),
        (write_table(pairs, tmp_path / "d.csv"), older, scoring.MSG_NO_NEW_USER_STATE, ["pafo.newusers.json"]),
    ]
    for new_pairs, folder, template, values in cases:
        out = tmp_path / "scored.csv"
        assert cli.main(["score", "--run-dir", str(folder), "--input", str(source), "--user-pairs", str(new_pairs),
                         "--csv", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pafo: error: ")
        check_message(lines[0], template, *values)
        assert not out.exists()
