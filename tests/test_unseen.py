"""Unseen users (pafo.unseen): holding users out, personalising them from k pairs with the model frozen, and the
``unseen`` block of the result JSON."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize

from pafo import cli
from pafo.clusters import ClusterFit
from pafo.errors import PafoInputError
from pafo.experiment import ExperimentConfig, RunSettings, SeedInputs, _add_support, build_context, run_experiment
from pafo.features import response_features
from pafo.method_configs import BAD_SHOTS, TrainConfig
from pafo.methods import BaselineConfig, PAFOConfig, fit_method
from pafo.metrics import group_codes
from pafo.models import WideRewardModel
from pafo.results import RunResult, UnseenResult
from pafo.sources import DataConfig, load_dataset
from pafo.training import PairSet, pair_margins
from pafo.unseen import (
    MSG_TOO_FEW_USERS,
    NewUsers,
    fit_user_vectors,
    heldout_support,
    ridge_of,
    shot_pairs,
    split_users,
    user_subset,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_TRAIN = TrainConfig(epochs=3, batch_size=64, hidden=16, k=4, patience=3)
TINY_DATA = DataConfig(users=40, prompts=16, responses_per_prompt=4, train_pairs=6, test_pairs=4)


# ------------------------------------------------------------------------------------------- a known answer


def _two_cluster_fit(strength: float = 6.0) -> ClusterFit:
    """One EM run with two clusters whose teachers prefer opposite directions of feature 0 − feature 1."""
    teachers = np.array([[[strength, -strength], [-strength, strength]]])
    return ClusterFit(teachers=teachers, assignments=np.array([[0, 1]]), directions=teachers[0].copy(),
                      objective=np.zeros(1), rounds=np.zeros(1), basis=np.eye(2),
                      log_weights=np.log(np.array([[0.8, 0.2]])), em="soft")


def _wide_model(fit: ClusterFit) -> WideRewardModel:
    """Two training users, user 0 in cluster 0 and user 1 in cluster 1; only the cluster channel scores."""
    torch.manual_seed(0)
    model = WideRewardModel(2, 2, rank=2, hidden=4, k=2)
    with torch.no_grad():
        model.basis.copy_(torch.eye(2))
        model.a.weight.copy_(torch.from_numpy(fit.directions).float())
        model.scales.copy_(torch.tensor([0.0, 1.0]))
    return model


def test_pairs_that_identify_a_cluster_give_its_teacher_and_its_users_accuracy():
    """Guards the new-user posterior: new users whose three pairs each say "feature 1 over feature 0" (what only
    the minority cluster 1 prefers, π = 0.2) get cluster 1's direction, so on the test pairs they score exactly as
    training user 1 of that cluster does; users without pairs fall back to the shared reward (no channel)."""
    fit = _two_cluster_fit()
    model = _wide_model(fit)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.2], [0.1, 0.9]])
    # New user 0 prefers row 1 over row 0 (cluster 1's taste) three times; new user 1 gives no pairs.
    shots = PairSet(np.array([1, 1, 3]), np.array([0, 0, 2]), np.array([0, 0, 0]))
    new = NewUsers(ridge=1.0, rule="posterior", clusters=fit).personalise(model, features, shots, 2)
    q = fit.posterior(np.array([[-1.0, 1.0]] * 2 + [[-0.6, 0.7]]), np.zeros(3, dtype=np.int64), 1)[0, 0]
    assert q[1] > 0.999  # the evidence overrides the 0.8 prior on cluster 0
    np.testing.assert_allclose(new.a.weight[0].detach().numpy(), fit.teachers[0, 1], atol=0.01)
    assert float(new.a.weight[1].detach().abs().sum()) == 0.0
    test = PairSet(np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2]), np.zeros(4, dtype=np.int64))
    as_new = pair_margins(new, features, test)
    as_trained = pair_margins(model, features, dataclasses.replace(test, users=np.ones(4, dtype=np.int64)))
    np.testing.assert_array_equal(as_new > 0, as_trained > 0)
    assert ((as_new > 0).mean(), (as_trained > 0).mean()) == (0.5, 0.5)


def test_the_mixture_rule_takes_the_most_probable_clusters_teacher():
    """Guards the mixture's new-user rule: its best run's MAP cluster, the teacher itself (not a posterior mean)."""
    fit = _two_cluster_fit(strength=1.0)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    shots = PairSet(np.array([1]), np.array([0]), np.array([0]))
    rule = NewUsers(ridge=1.0, rule="map", clusters=fit)
    np.testing.assert_array_equal(rule.directions(features.numpy(), shots, 1)[0], fit.teachers[0, 1])
    posterior = NewUsers(ridge=1.0, rule="posterior", clusters=fit).directions(features.numpy(), shots, 1)[0]
    assert np.abs(posterior).max() < 1.0  # one weak pair: the posterior mean is a blend


# ------------------------------------------------------------------------------------------- w_u under the prior


@pytest.fixture(scope="module")
def trained_baseline():
    """A small baseline trained to convergence (no early stop: its w_u reach the minimum the refit computes) on
    small synthetic data (tfidf), with its context."""
    config = ExperimentConfig(data=DataConfig(users=60, prompts=24), run=RunSettings(encoder="tfidf"),
                              train=TrainConfig(hidden=32, k=8, epochs=40, patience=40))
    dataset = load_dataset(config.data)
    features = response_features(dataset, "tfidf")
    inputs = _add_support(SeedInputs(0, dataset, features), config)
    ctx = build_context(dataset, features.features, group_codes(inputs.groups.groups.to_numpy()), config.train)
    torch.set_num_threads(1)
    return fit_method("baseline", ctx, BaselineConfig(), (0.0, 1.0)).model, ctx


@pytest.mark.parametrize("contrary", [False, True])
def test_newton_finds_the_minimum_of_the_users_ridge_loss(trained_baseline, contrary):
    """Guards the batched Newton solve: for every user its w_u is where Σ softplus(−(b + w)·Δg) + λ|w|² is least
    (L-BFGS on one user at a time agrees). ``contrary``: users whose labels all contradict a shared vector 30×
    longer, so their margins start far on the wrong side, the regime where an undamped Newton step overshoots (on
    MiniLM data an undamped solve left minority users at ~70× their trained vectors' objective)."""
    model, ctx = trained_baseline
    ridge = ridge_of(0.3, ctx.train)
    pairs = ctx.train
    if contrary:
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.b.mul_(30.0)
        flip = pair_margins(model, ctx.features, dataclasses.replace(pairs, users=np.zeros(len(pairs), int))) > 0
        pairs = PairSet(np.where(flip, pairs.rejected, pairs.chosen), np.where(flip, pairs.chosen, pairs.rejected),
                        pairs.users)
    w = fit_user_vectors(model, ctx.features, pairs, ctx.n_users, ridge).numpy()
    with torch.no_grad():
        g = model.features(ctx.features).double().numpy()
    b = model.b.detach().double().numpy()
    for user in range(3):
        rows = pairs.users == user
        delta = g[pairs.chosen[rows]] - g[pairs.rejected[rows]]

        def loss(v, delta=delta):
            return np.logaddexp(0, -delta @ (b + v)).sum() + ridge * v @ v

        best = minimize(loss, np.zeros_like(b), method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
        assert loss(w[user]) <= best.fun + 1e-7
        np.testing.assert_allclose(w[user], best.x, atol=1e-3)


def test_refitting_training_users_reproduces_their_trained_vectors(trained_baseline):
    """Guards the ridge of a new user's prior (user_l2 × training pairs per user, what the trainer's penalty
    amounts to): refitting the training users from their own training pairs gives back the vectors training found
    (the trainer stops early and never reaches the exact minimum, so most users, not all, agree closely), and a
    ridge 10× weaker or stronger does clearly worse on norm. (On the default data the trainer's early stop often
    keeps an epoch before the w_u converge, so there the refit personalises new users somewhat more than training
    personalised the training users.)"""
    model, ctx = trained_baseline
    trained = model.w.weight.detach().double()
    ridge = ridge_of(0.3, ctx.train)
    refit = fit_user_vectors(model, ctx.features, ctx.train, ctx.n_users, ridge)
    cosine = torch.nn.functional.cosine_similarity(refit, trained, dim=1)
    assert float(cosine.median()) > 0.9
    norm_ratio = lambda w: float(w.norm(dim=1).mean() / trained.norm(dim=1).mean())  # noqa: E731
    assert 0.6 < norm_ratio(refit) < 1.6
    assert norm_ratio(fit_user_vectors(model, ctx.features, ctx.train, ctx.n_users, ridge / 10)) > 2
    assert norm_ratio(fit_user_vectors(model, ctx.features, ctx.train, ctx.n_users, ridge * 10)) < 0.5


# ------------------------------------------------------------------------------------------- holding users out


def test_users_are_held_out_per_stratum_and_keep_two_per_group():
    """Guards the stratified hold-out: each group loses its share (rounded, at least one, never leaving fewer than
    two to train on), the draw depends only on the seed, and a group too small to give one is refused (exit 2
    wording names the share and the group)."""
    strata = np.array(["majority"] * 40 + ["minority"] * 10)
    train, held = split_users(strata, 0.2, seed=3)
    assert sorted(np.unique(strata[held], return_counts=True)[1]) == [2, 8]
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 50
    np.testing.assert_array_equal(held, split_users(strata, 0.2, seed=3)[1])
    assert not np.array_equal(held, split_users(strata, 0.2, seed=4)[1])
    capped = split_users(np.array(["majority"] * 10 + ["minority"] * 3), 0.9, seed=0)[1]
    assert len(capped) == 9 and (capped >= 10).sum() == 1
    with pytest.raises(PafoInputError, match="the minority group has only 2 users"):
        split_users(np.array(["majority"] * 10 + ["minority"] * 2), 0.2, seed=0)
    assert MSG_TOO_FEW_USERS.startswith("--unseen-users")


def test_held_out_users_support_is_measured_against_the_training_population():
    """Guards the new users' support rates: the exact estimator's share of *training* users agreeing, pair by pair
    (a brute-force count here), and the shot pairs are the first k train-then-validation pairs of each user."""
    dataset = load_dataset(TINY_DATA)
    train_users, held = np.arange(30), np.arange(30, 40)
    support = heldout_support(dataset, train_users, held, "exact", np.zeros((len(dataset.responses), 1)))
    pairs = dataset.split("train")
    for i, user in enumerate(held[:3]):
        mine = pairs[pairs["user"] == user]
        diff = dataset.base_scores[mine["chosen"]] - dataset.base_scores[mine["rejected"]]
        agree = [np.mean([(d @ w > 0) + 0.5 * (d @ w == 0) for w in dataset.persona_weights[train_users]])
                 for d in diff]
        assert support[i] == pytest.approx(np.mean(agree))
    shots = shot_pairs(dataset, held, 2)
    assert np.bincount(shots.users).tolist() == [2] * len(held)
    first = dataset.pairs[(dataset.pairs["user"] == held[0]) & (dataset.pairs["split"] == "train")].iloc[:2]
    assert shots.chosen[:2].tolist() == first["chosen"].tolist()
    everything = shot_pairs(dataset, held, 100)
    assert np.bincount(everything.users).tolist() == [TINY_DATA.train_pairs] * len(held)  # train + val
    subset = user_subset(dataset, train_users)
    assert subset.n_users == 30 and set(subset.pairs["user"]) == set(range(30))


def test_held_out_support_by_colabels_counts_the_training_populations_labels():
    """Guards the co-label estimator for new users: per pair, the share of the *training* users' labels on the same
    two responses that agree (pairs with fewer than two such labels left out), averaged per user; a user with no
    such pair falls back to the model estimator (a value strictly between 0 and 1)."""
    dataset = load_dataset(TINY_DATA)
    train_users, held = np.arange(30), np.arange(30, 40)
    features = response_features(dataset, "tfidf").features
    support = heldout_support(dataset, train_users, held, "colabel", features)
    pairs = dataset.split("train")
    theirs = pairs[pairs["user"] < 30]
    key = lambda frame: list(zip(np.minimum(frame["chosen"], frame["rejected"]),  # noqa: E731
                                 np.maximum(frame["chosen"], frame["rejected"]), strict=True))
    labels = pd.DataFrame({"key": key(theirs), "chosen": theirs["chosen"].to_numpy()})
    covered = 0
    for i, user in enumerate(held):
        mine = pairs[pairs["user"] == user]
        shares = []
        for pair_key, chosen in zip(key(mine), mine["chosen"], strict=True):
            same = labels[labels["key"] == pair_key]
            if len(same) >= 2:
                shares.append((same["chosen"] == chosen).mean())
        if shares:
            covered += 1
            assert support[i] == pytest.approx(np.mean(shares))
        else:
            assert 0 < support[i] < 1
    assert covered >= 5


# ------------------------------------------------------------------------------------------- the result JSON


@pytest.fixture(scope="module")
def unseen_result() -> RunResult:
    """Two seeds of the tiny data with a third of the users held out, personalised from 1 and 3 pairs."""
    config = ExperimentConfig(data=TINY_DATA, run=RunSettings(encoder="tfidf", methods="baseline,mixture,pafo",
                                                              bootstrap=20, unseen_users=0.3, shots="3,1"),
                              train=TINY_TRAIN, pafo=PAFOConfig(restarts=2, subspaces="8"), seeds=[0, 1])
    torch.set_num_threads(1)
    return run_experiment(config)


def test_unseen_block_has_the_issues_shape_and_reads_back_equal(unseen_result):
    """Guards the JSON of issue 22: ``unseen`` = fraction, shots, methods.NAME."<k>" = {majority, minority,
    n_users, ci}, comparisons.NAME."<k>" = the comparison object of ``comparisons.NAME``; pooled over both seeds,
    per seed in ``per_seed``; the JSON reads back into an equal object, and a result without the block reads with
    none."""
    block = unseen_result.to_json()["unseen"]
    assert set(block) == {"fraction", "shots", "methods", "comparisons"}
    assert block["fraction"] == 0.3 and block["shots"] == [1, 3]
    assert set(block["methods"]) == {"baseline", "mixture", "pafo"} and set(block["comparisons"]) == {"mixture",
                                                                                                     "pafo"}
    shot = block["methods"]["pafo"]["3"]
    assert set(shot) == {"majority", "minority", "n_users", "ci"}
    held = unseen_result.unseen.per_user
    assert shot["n_users"]["minority"] == int(((held["group"] == "minority") & (held["shots"] == 3)).sum())
    assert sum(shot["n_users"].values()) == 2 * 12  # 30% of 40 users (9 of 31 majority, 3 of 9 minority) × 2 seeds
    comparison = block["comparisons"]["pafo"]["1"]
    assert set(unseen_result.comparisons["pafo"].to_json()) == set(comparison)
    assert comparison["n_seeds"] == 2 and comparison["verdict"] in ("pareto", "noise", "worse", "tradeoff")
    assert [s.to_json()["unseen"]["shots"] for s in unseen_result.per_seed] == [[1, 3], [1, 3]]
    assert unseen_result.dataset["n_users"] == 40 - 12  # the held-out users trained nothing
    again = RunResult.from_json(unseen_result.to_json())
    assert again.unseen == unseen_result.unseen and again.to_json()["unseen"] == block
    old = unseen_result.to_json()
    del old["unseen"]
    assert RunResult.from_json(old).unseen is None
    assert UnseenResult.from_json(None) is None


def test_every_method_is_scored_on_the_same_users_and_pairs(unseen_result):
    """Guards the pairing: per seed and k one row per held-out user with every method's accuracy, the same k
    shot pairs (capped by what a user has) and the same test pairs; accuracies move with k for the personalised
    methods (the shots reach the model)."""
    table = unseen_result.unseen.per_user
    assert table.groupby(["seed", "shots"]).size().tolist() == [12] * 4
    assert table[["acc_baseline", "acc_mixture", "acc_pafo"]].notna().all().all()
    assert set(table.loc[table["shots"] == 1, "n_shots"]) == {1}
    assert set(table.loc[table["shots"] == 3, "n_shots"]) == {3}
    by_k = table.pivot_table(index=["seed", "user"], columns="shots", values="acc_pafo")
    assert (by_k[1] != by_k[3]).any()


def test_cli_declares_unseen_users_and_refuses_bad_shots(capsys):
    """Guards the CLI built from RunSettings: --shots without --unseen-users has no effect (exit 2, one line),
    a malformed --shots is exit 2 naming the flag, and a share out of bounds names its bound."""
    tiny = ["experiment", "--users", "24", "--prompts", "16", "--encoder", "tfidf"]
    assert cli.main([*tiny, "--shots", "1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--shots has no effect" in err and "--unseen-users" in err
    assert cli.main([*tiny, "--unseen-users", "0.2", "--shots", "1,x"]) == 2
    assert BAD_SHOTS.split(":")[0] in capsys.readouterr().err
    assert cli.main([*tiny, "--unseen-users", "0.95"]) == 2
    assert "--unseen-users: must be ≥ 0 and ≤ 0.9" in capsys.readouterr().err
    assert RunSettings(unseen_users=0.2, shots="8, 1,4").validate().shot_list() == [1, 4, 8]


def test_unseen_table_rows_match_a_direct_personalisation(unseen_result):
    """Guards that the stored accuracies are what personalising and scoring gives: the shot counts never exceed
    what each user has and every accuracy is a share of that user's test pairs."""
    table = unseen_result.unseen.per_user
    shares = table["acc_baseline"] * table["n_test"]
    np.testing.assert_allclose(shares, np.round(shares * 2) / 2)  # whole (or half, a tie) pairs right
    assert pd.api.types.is_integer_dtype(table["n_shots"])


def test_html_report_has_the_unseen_users_section(unseen_result):
    """Bug: the HTML report left out the held-out users' panel that Compare shows, so a mailed report lost the
    run's unseen-users results. It now has the section: both learning curves and the table of paired differences,
    one row per k and method; a run without held-out users has no such section."""
    import re

    from pafo.html_report import build_report_html

    page = build_report_html(unseen_result, run_id="r1")
    section = page.split("<h2>Unseen users</h2>", 1)[1].split("<h2>", 1)[0]
    assert section.count("Plotly.newPlot") == 2  # the minority and the majority curves
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td>", section)
    assert sorted(rows) == sorted((str(k), m) for k in (1, 3) for m in ("baseline", "mixture", "pafo"))
    assert page.count("plotly.js v") <= 1  # plotly.js embedded once
    without = RunResult.from_json({**unseen_result.to_json(), "unseen": None})
    assert "Unseen users" not in build_report_html(without)


def test_a_sweep_point_pools_the_cells_unseen_users_like_the_run_does(unseen_result, tmp_path):
    """Bug: a sweep's points pooled the cells' methods and comparisons but dropped their held-out users, so a sweep
    over the unseen share or the shots had nothing to show. ``pool`` now pools the unseen block too (one path for
    runs and sweeps): the cells' seeds, read back from result.json plus unseen_per_user.csv, pool to exactly the
    run's own block; the point keeps it through its JSON; the sweep table and CLI headline show it."""
    from pafo.experiment import UNSEEN_CSV, read_unseen_rows
    from pafo.report import sweep_table
    from pafo.results import SweepPoint, SweepResult, pool

    methods = ["baseline", "mixture", "pafo"]
    (tmp_path / UNSEEN_CSV).write_text(unseen_result.unseen.per_user.to_csv(index=False))
    stored = RunResult.from_json(unseen_result.to_json())
    assert stored.unseen.per_user is None
    assert pool(stored.seed_results(), methods, n_resamples=20).unseen is None  # without the rows: nothing pooled
    read = read_unseen_rows(stored, tmp_path)
    pooled = pool(read.seed_results(), methods, n_resamples=20)
    assert pooled.unseen.to_json() == unseen_result.unseen.to_json()
    point = SweepPoint(0, {"run.unseen_users": 0.3}, 2, pooled.methods, pooled.comparisons, pooled.unseen)
    again = SweepPoint.from_json(point.to_json())
    assert again.unseen == pooled.unseen and "unseen" not in SweepPoint(1, {}, 0).to_json()
    table = sweep_table(SweepResult("s", {"run.unseen_users": [0.3]}, [0, 1], methods, "pafo", [], [again], [0]))
    headline = cli._sweep_headline(SweepResult("s", {}, [0, 1], methods, "pafo", [], [again], [0]))
    verdicts = {k: c.verdict for k, c in pooled.unseen.comparisons["pafo"].items()}
    assert headline["points"][0]["unseen_verdict"] == verdicts
    row = table.iloc[0]
    assert row["unseen k"] == 3 and row["unseen verdict"] in ("Pareto improvement", "within noise", "worse",
                                                               "trade-off")
    assert row["unseen Δ minority"].startswith(("+", "−", "0"))


# ------------------------------------------------------------------------------------------- the score path


def test_score_user_pairs_reproduces_the_runs_unseen_evaluation(tmp_path, write_table):
    """Guards "the same mechanics": a run with held-out users (MiniLM, so new text can be embedded) evaluates
    each held-out user after k pairs; giving `pafo score --user-pairs` those same k pairs (as texts) and scoring
    the users' test pairs gives every method the same per-user accuracy the run stored in unseen_per_user.csv."""
    from pafo.unseen import test_pairs

    flags = ["--users", "30", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6",
             "--test-pairs", "4", "--bootstrap", "20", "--epochs", "3", "--hidden", "16", "--k", "4",
             "--restarts", "2", "--subspaces", "8"]
    out = tmp_path / "run"
    assert cli.main(["experiment", *flags, "--encoder", "minilm", "--methods", "baseline,mixture,pafo",
                     "--unseen-users", "0.3", "--shots", "2", "--out-dir", str(out)]) == 0
    stored = pd.read_csv(out / "unseen_per_user.csv")
    dataset = load_dataset(DataConfig(users=30, prompts=16, responses_per_prompt=4, train_pairs=6, test_pairs=4))
    ids = dataset.users["user_id"].to_numpy()
    held = np.flatnonzero(np.isin(ids, stored["user_id"]))
    text, prompt = dataset.responses["text"].to_numpy(), dataset.responses["prompt"].to_numpy()
    shots, test = shot_pairs(dataset, held, 2), test_pairs(dataset, held)
    new = write_table(pd.DataFrame({"user_id": ids[held][shots.users], "prompt": prompt[shots.chosen],
                                    "chosen": text[shots.chosen], "rejected": text[shots.rejected]}),
                      tmp_path / "new.csv")
    triples = write_table(pd.DataFrame({
        "user_id": np.repeat(ids[held][test.users], 2), "prompt": np.repeat(prompt[test.chosen], 2),
        "response": np.stack([text[test.chosen], text[test.rejected]], 1).ravel()}), tmp_path / "triples.csv")
    for method in ("baseline", "mixture", "pafo"):
        scored = tmp_path / f"{method}.csv"
        assert cli.main(["score", "--run-dir", str(out), "--method", method, "--input", str(triples),
                         "--user-pairs", str(new), "--csv", str(scored)]) == 0
        margins = pd.read_csv(scored)["reward"].to_numpy().reshape(-1, 2) @ [1.0, -1.0]
        right = pd.Series((margins > 0) + 0.5 * (margins == 0)).groupby(ids[held][test.users]).mean()
        expected = stored.set_index("user_id")[f"acc_{method}"]
        np.testing.assert_allclose(right.reindex(expected.index).to_numpy(), expected.to_numpy(), atol=1e-9)
