"""Slices (pafo.slices): Holm's adjustment against known answers, per-slice accuracies that are exactly the
user-weighted means of per-user accuracy, a constructed slice gain that survives Holm while chance findings among
many null slices do not, small slices held at ``noise``, and the same ``slices`` block from ``pafo audit`` and
``pafo experiment``."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from pafo.attributes import parse_slicing
from pafo.errors import PafoInputError
from pafo.slices import ALPHA, SliceSettings, bootstrap_p, check_slicings, compute_slices, holm


def test_holm_matches_known_answers():
    """Holm's step-down adjustment: R's p.adjust(c(.01,.02,.03,.04,.05), "holm") is .05 .08 .09 .09 .09 (the
    running maximum keeps the adjusted values monotone); order is kept, None stays None, nothing exceeds 1."""
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([0.04, None, 0.01, 0.03, 0.005]) == pytest.approx([0.06, None, 0.03, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


def test_bootstrap_p_is_two_sided_and_resolves_below_one_over_b():
    """The p of a paired bootstrap: symmetric in the sign, 1 for no difference, far below 1/B for a difference many
    standard errors away (a Holm correction over many slices needs that resolution)."""
    samples = np.random.default_rng(0).normal(0.0, 0.01, 1000)
    assert bootstrap_p(0.05, samples + 0.05) == pytest.approx(bootstrap_p(-0.05, -samples - 0.05))
    assert bootstrap_p(0.0, samples) == 1.0
    assert 0 < bootstrap_p(0.05, samples + 0.05) < 1e-3 / 2
    assert bootstrap_p(0.01, np.array([0.01])) is None


def _users(rng, region: str, n: int, gain: float, noise: float, *, seed: int = 0, tier=None) -> pd.DataFrame:
    """n users of one region: the reference's accuracy uniform in [0.5, 0.8], the method's = reference + gain +
    noise (noise of mean exactly 0 when mirrored pairs are used)."""
    base = rng.uniform(0.5, 0.8, n)
    jitter = rng.normal(0.0, noise, n)
    return pd.DataFrame({"seed": seed, "user_id": [f"{region}{i}" for i in range(n)],
                         "group": np.where(np.arange(n) % 5 == 0, "minority", "majority"),
                         "support_rate": rng.uniform(0.3, 0.9, n), "n_test": 10, "acc_ref": base,
                         "acc_new": np.clip(base + gain + jitter, 0, 1), "region": region,
                         "tier": tier if tier is not None else np.where(np.arange(n) % 2 == 0, "free", "pro")})


def _mirrored(rng, region: str, n: int) -> pd.DataFrame:
    """A null slice whose method − reference differences are exactly symmetric around 0 (mean exactly 0)."""
    table = _users(rng, region, n, 0.0, 0.0)
    half = rng.uniform(0.0, 0.1, n // 2)
    table["acc_ref"] = 0.6
    table["acc_new"] = 0.6 + np.concatenate([half, -half])
    return table


def test_slice_accuracy_is_the_user_weighted_mean_and_a_real_gain_survives_holm():
    """Per slice: accuracy = mean of the slice users' per-user accuracies (exactly), n_users and n_pairs counted,
    the constructed +15-point gain of region A better after Holm, the exactly-null region B noise with p = 1, a
    5-user slice with a big gain marked small and kept at noise, p_holm on every comparison equal to Holm over the
    whole run."""
    rng = np.random.default_rng(3)
    users = pd.concat([_users(rng, "A", 40, 0.15, 0.05), _mirrored(rng, "B", 40), _users(rng, "D", 5, 0.3, 0.02)],
                      ignore_index=True)
    users["seed"] = 0
    slicings = [parse_slicing("region"), parse_slicing("region,tier")]
    slices = compute_slices(users, None, slicings, ["ref", "new"], "ref", n_resamples=400, seed=0)
    by = {tuple(s["by"].items()): s for s in slices}
    assert len(slices) == 3 + 6
    for entry in slices:
        mask = np.logical_and.reduce([users[col] == value for col, value in entry["by"].items()])
        for method in ("ref", "new"):
            assert entry["methods"][method]["accuracy"] == float(np.mean(users.loc[mask, f"acc_{method}"].to_numpy()))
        assert entry["n_users"] == int(mask.sum()) and entry["n_pairs"] == 10 * int(mask.sum())
        comparison = entry["comparisons"]["new"]
        assert set(comparison) >= {"delta", "ci", "p", "p_holm", "verdict"}
        assert comparison["p_holm"] >= comparison["p"]
        assert comparison["ci"][0] <= comparison["delta"] <= comparison["ci"][1]
    gain, null, tiny = by[(("region", "A"),)], by[(("region", "B"),)], by[(("region", "D"),)]
    assert gain["comparisons"]["new"]["p_holm"] < ALPHA and gain["comparisons"]["new"]["verdict"] == "better"
    assert gain["comparisons"]["new"]["delta"] == pytest.approx(0.15, abs=0.02)
    assert null["comparisons"]["new"]["delta"] == pytest.approx(0.0, abs=1e-12)
    assert null["comparisons"]["new"]["p"] == pytest.approx(1.0) and null["comparisons"]["new"]["verdict"] == "noise"
    assert tiny["small"] and tiny["comparisons"]["new"]["p"] < ALPHA
    assert tiny["comparisons"]["new"]["verdict"] == "noise"
    assert "too few users: the slice has 5 (< 20)" in tiny["comparisons"]["new"]["reason"]
    raw = [s["comparisons"]["new"]["p"] for s in slices]
    assert [s["comparisons"]["new"]["p_holm"] for s in slices] == holm(raw)


def test_chance_findings_among_many_null_slices_do_not_survive_holm():
    """30 null slices (noise only): some reach p < 0.05 by chance, none survives Holm; the one real gain does."""
    rng = np.random.default_rng(7)
    parts = [_users(rng, f"N{i:02d}", 24, 0.0, 0.08) for i in range(30)] + [_users(rng, "GAIN", 24, 0.12, 0.08)]
    slices = compute_slices(pd.concat(parts, ignore_index=True), None, [parse_slicing("region")], ["ref", "new"],
                            "ref", n_resamples=500, seed=0)
    nulls = [s["comparisons"]["new"] for s in slices if s["by"]["region"] != "GAIN"]
    gain = next(s["comparisons"]["new"] for s in slices if s["by"]["region"] == "GAIN")
    assert min(c["p"] for c in nulls) < ALPHA  # a raw p would call a null slice significant...
    assert all(c["p_holm"] >= ALPHA and c["verdict"] == "noise" for c in nulls)  # ...Holm does not
    assert gain["p_holm"] < ALPHA and gain["verdict"] == "better"


def test_several_seeds_pool_as_the_groups_do():
    """With two seeds a slice's accuracy and delta are the means over seeds of the per-seed means (not the mean over
    all rows), n_users and n_pairs add up, and log-loss is the mean over seeds of the pairs' −log σ(margin)."""
    rng = np.random.default_rng(0)
    first = _users(rng, "A", 30, 0.1, 0.05, seed=0)
    second = pd.concat([_users(rng, "A", 50, 0.0, 0.05, seed=1)], ignore_index=True)
    users = pd.concat([first, second], ignore_index=True)
    pairs = []
    for seed, table in ((0, first), (1, second)):
        for position in range(len(table)):
            margins = rng.normal(0.5, 1.0, 10)
            pairs.append(pd.DataFrame({"seed": seed, "user": position, "margin_ref": margins,
                                       "margin_new": margins + 0.2}))
    pairs = pd.concat(pairs, ignore_index=True)
    [entry] = compute_slices(users, pairs, [parse_slicing("region")], ["ref", "new"], "ref", n_resamples=200)
    per_seed = [float(np.mean(t["acc_new"].to_numpy())) for t in (first, second)]
    assert entry["methods"]["new"]["accuracy"] == pytest.approx(np.mean(per_seed), abs=1e-15)
    deltas = [float(np.mean((t["acc_new"] - t["acc_ref"]).to_numpy())) for t in (first, second)]
    assert entry["comparisons"]["new"]["delta"] == pytest.approx(np.mean(deltas), abs=1e-15)
    assert entry["n_users"] == 80 and entry["n_pairs"] == 800
    losses = [np.mean(np.logaddexp(0, -pairs.loc[pairs["seed"] == s, "margin_ref"])) for s in (0, 1)]
    assert entry["methods"]["ref"]["log_loss"] == pytest.approx(np.mean(losses))


def test_builtin_decile_and_group_and_quantile_bins():
    """Support deciles are one built-in slicing (each seed's own deciles), so is the support group; a number cut
    into quantiles gets labelled bins holding their smallest and largest value."""
    rng = np.random.default_rng(1)
    users = _users(rng, "A", 60, 0.0, 0.05)
    users["age"] = np.arange(18, 78).astype(str)  # as read from a CSV: text
    slices = compute_slices(users, None, [parse_slicing("decile"), parse_slicing("group"),
                                          parse_slicing("age:quantiles=3")], ["ref", "new"], "ref", n_resamples=50)
    deciles = [s for s in slices if "decile" in s["by"]]
    assert [s["by"]["decile"] for s in deciles] == list(range(1, 11)) and sum(s["n_users"] for s in deciles) == 60
    assert [s["by"]["group"] for s in slices if "group" in s["by"]] == ["majority", "minority"]
    assert [s["by"]["age"] for s in slices if "age" in s["by"]] == ["Q1 (18–37)", "Q2 (38–57)", "Q3 (58–77)"]


def test_slicing_specs_are_checked_with_messages_that_say_the_fix():
    """Bad --slice-by values fail with the value, the reason and the syntax; unknown columns list the attributes."""
    for text, fragment in (("", "empty"), ("age:bins=3", "unknown option"), ("age:quantiles=1", "2 to 20"),
                           ("region,region", "named twice")):
        with pytest.raises(PafoInputError, match=fragment):
            SliceSettings(slice_by=[text]).validate()
    with pytest.raises(PafoInputError, match="given twice"):
        SliceSettings(slice_by=["region", "region"]).validate()
    with pytest.raises(PafoInputError, match=r"no attribute 'tier'; this data has group, decile, region"):
        check_slicings(SliceSettings(slice_by=["region,tier"]), ["region"])
    users = _users(np.random.default_rng(0), "A", 30, 0, 0.01)
    with pytest.raises(PafoInputError, match="not numbers"):
        compute_slices(users, None, [parse_slicing("tier:quantiles=2")], ["ref", "new"], "ref", n_resamples=10)


# ------------------------------------------------------------------------------------------- through the CLI


def _audit_files(tmp_path, write_table):
    """A pairs file (90 users × 24 prompts, co-labelled so support is the co-label estimate), an attributes file
    and two prediction files: ``ref`` right on a fixed 70% of pairs, ``new`` the same except right on every pair of
    region A's users."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(90):
        for prompt in range(24):
            a, b = (0, 1) if rng.random() < 0.7 else (1, 0)
            rows.append({"user_id": f"user{user}", "prompt": f"Question {prompt}: which style helps?",
                         "chosen": f"Answer {a} to question {prompt}.",
                         "rejected": f"Answer {b} to question {prompt}."})
    pairs = pd.DataFrame(rows)
    region = np.array(["A", "B", "C"])[np.arange(90) % 3]
    attributes = pd.DataFrame({"user_id": [f"user{u}" for u in range(90)], "region": region,
                               "tier": np.where(np.arange(90) % 2 == 0, "free", "pro")})
    ref = np.where(rng.random(len(pairs)) < 0.7, 1.0, -1.0)
    in_a = np.repeat(region == "A", 24)
    paths = {"pairs": write_table(pairs, tmp_path / "pairs.csv"),
             "attributes": write_table(attributes, tmp_path / "attributes.csv"),
             "ref": write_table(pairs.assign(margin=ref), tmp_path / "ref.csv"),
             "new": write_table(pairs.assign(margin=np.where(in_a, 1.0, ref)), tmp_path / "new.csv")}
    return paths


def test_audit_reports_slices_with_holm_and_exact_accuracies(tmp_path, capsys, write_table):
    """The done-when of issue 23: ``pafo audit ... --user-attributes F --slice-by region --slice-by region,tier``
    gives slices whose accuracies equal the user-weighted means of the per-user accuracies (exactly), with p_holm on
    every comparison; region A's constructed gain is better after Holm, regions B and C (identical margins) noise,
    and the 15-user intersections are small: noise even where their p is small."""
    paths = _audit_files(tmp_path, write_table)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["audit", "--dataset", "pairs", "--path", paths["pairs"], "--predictions",
                            f"ref={paths['ref']}", "--predictions", f"new={paths['new']}", "--user-attributes",
                            paths["attributes"], "--slice-by", "region", "--slice-by", "region,tier", "--bootstrap",
                            "300", "--json", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    per_user = pd.DataFrame(result["per_user"])
    assert {"region", "tier"} <= set(per_user.columns)
    assert len(result["slices"]) == 3 + 6 and result["slicing"]["n_tests"] == 9
    for entry in result["slices"]:
        mask = np.logical_and.reduce([per_user[col] == value for col, value in entry["by"].items()])
        for name in ("ref", "new"):
            assert entry["methods"][name]["accuracy"] == float(np.mean(per_user.loc[mask, f"acc_{name}"].to_numpy()))
        assert set(entry["methods"]["new"]) == {"accuracy", "ci", "log_loss"}
        assert entry["comparisons"]["new"]["p_holm"] is not None
    verdicts = {tuple(e["by"].values()): e["comparisons"]["new"]["verdict"] for e in result["slices"]}
    assert verdicts[("A",)] == "better" and verdicts[("B",)] == verdicts[("C",)] == "noise"
    small = [e for e in result["slices"] if len(e["by"]) == 2]  # 15 users each: too few to judge, whatever p says
    assert all(e["small"] and e["comparisons"]["new"]["verdict"] == "noise" for e in small)
    assert min(e["comparisons"]["new"]["p"] for e in small) < ALPHA


def test_audit_refuses_an_unknown_slice_attribute_before_any_work(tmp_path, capsys, write_table):
    """A --slice-by column the data does not have is exit 2 with one line naming it and the attributes there are."""
    paths = _audit_files(tmp_path, write_table)
    code, out, err = run_cli(["audit", "--dataset", "pairs", "--path", paths["pairs"], "--predictions",
                              f"ref={paths['ref']}", "--user-attributes", paths["attributes"], "--slice-by", "country"],
                             capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no attribute 'country'" in err and "region, tier" in err


@pytest.mark.usefixtures("single_thread")
def test_experiment_reports_the_same_slices_block(tmp_path, capsys):
    """``pafo experiment --user-attributes F --slice-by ...`` (two seeds): every slice has the methods' accuracies
    (means over seeds of the user-weighted means), p_holm on every comparison, small slices at noise; the config
    keeps the slicing so a background run and its reuse key see it."""
    users = [f"u{i:04d}" for i in range(24)]
    attributes = tmp_path / "attributes.csv"
    pd.DataFrame({"user_id": users, "region": ["EU", "US", "ASIA"] * 8}).to_csv(attributes, index=False)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["experiment", "--users", "24", "--prompts", "16", "--responses-per-prompt", "4",
                            "--train-pairs", "6", "--test-pairs", "4", "--encoder", "tfidf", "--epochs", "2",
                            "--bootstrap", "50", "--seeds", "0-1", "--user-attributes", attributes, "--slice-by",
                            "region", "--slice-by", "region,group", "--json", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    per_user = pd.DataFrame(result["per_user"])
    assert result["config"]["slices"] == {"slice_by": ["region", "region,group"]}
    assert result["slicing"]["reference"] == "baseline"
    for entry in result["slices"]:
        mask = np.logical_and.reduce([per_user[col] == value for col, value in entry["by"].items()])
        means = [float(np.mean(part["acc_pafo"].to_numpy())) for _, part in per_user[mask].groupby("seed")]
        assert entry["methods"]["pafo"]["accuracy"] == pytest.approx(float(np.mean(means)), abs=1e-15)
        comparison = entry["comparisons"]["pafo"]
        assert comparison["p_holm"] is not None and not math.isnan(comparison["p_holm"])
        assert entry["small"] and comparison["verdict"] == "noise"  # 8 users per region: too few to judge


def test_small_slices_use_the_groups_minimums():
    """A slice is small below the same sizes as a support group's verdict (pafo.compare), one notion of too few."""
    from pafo.compare import MIN_GROUP_PAIRS, MIN_GROUP_USERS
    from pafo.slices import MIN_SLICE_PAIRS, MIN_SLICE_USERS

    assert (MIN_SLICE_USERS, MIN_SLICE_PAIRS) == (MIN_GROUP_USERS, MIN_GROUP_PAIRS)


def test_runs_start_refuses_an_unknown_slice_attribute_and_configs_keep_the_slicing(tmp_path, capsys):
    """``pafo runs start`` checks --slice-by against the data before queueing (exit 2, nothing queued); a config
    without slicing has no ``slices`` key (it hashes as before), one with slicing round-trips."""
    from pafo.experiment import ExperimentConfig
    from pafo.registry import RunRegistry

    code, out, err = run_cli(["runs", "start", "--users", "12", "--encoder", "tfidf", "--slice-by", "region"], capsys)
    assert code == 2 and out == "" and "no attribute 'region'" in err and "group, decile, dominant" in err
    assert RunRegistry().list() == []
    assert "slices" not in ExperimentConfig().to_dict()
    config = ExperimentConfig.from_dict({"slices": {"slice_by": ["dominant", "group,decile"]}})
    assert ExperimentConfig.from_dict(config.to_dict()).slices.slice_by == ["dominant", "group,decile"]
