"""Data sources and the split (spec §1–2): no prompt leaks, seeds reproduce, DSP on the shared file, bad files."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from pafo import dataset as dataset_mod
from pafo import simulate
from pafo.errors import PafoInputError
from pafo.features import dataset_texts
from pafo.sources import (
    BAD_FRACTION,
    UNKNOWN_SOURCE,
    DataConfig,
    dataset_fingerprint,
    files,
    load_dataset,
    pairs,
    personalllm,
)
from pafo.sources import dsp as dsp_mod
from pafo.sources import synthetic as synthetic_mod

KINDS = ["synthetic", "dsp", "personalllm", "pairs-csv", "pairs-jsonl", "pairs-parquet"]


@pytest.fixture
def config_for(tmp_path, tiny_config, dsp_path, write_table, pairs_frame, personalllm_frame):
    """DataConfig of a small dataset of each kind (files written to tmp_path; DSP read in place)."""

    def make(kind: str, **overrides) -> DataConfig:
        if kind == "synthetic":
            config = tiny_config
        elif kind == "dsp":
            config = DataConfig(dataset="dsp", path=str(dsp_path), users=30, train_pairs=8, test_pairs=4)
        elif kind == "personalllm":
            path = write_table(personalllm_frame(), tmp_path / "personalllm.parquet")
            config = DataConfig(dataset="personalllm", path=str(path), users=20, train_pairs=6, test_pairs=4)
        else:
            suffix = kind.split("-")[1]
            path = write_table(pairs_frame(n_users=5, n_prompts=12), tmp_path / f"pairs.{suffix}")
            config = DataConfig(dataset="pairs", path=str(path))
        return dataclasses.replace(config, **overrides)

    return make


def _prompt_texts(ds, split_mask) -> set[str]:
    chosen = ds.pairs.loc[split_mask, "chosen"].to_numpy()
    return set(ds.responses["prompt"].to_numpy()[chosen])


@pytest.mark.parametrize("kind", KINDS)
def test_split_leaks_no_prompt(kind, config_for):
    """Regression: train/val and test must never share a prompt (spec §1), by id and by prompt text."""
    ds = load_dataset(config_for(kind))
    counts = ds.pair_counts()
    assert all(counts[s] > 0 for s in ("train", "val", "test")), counts
    seen = ds.pairs["split"] != "test"
    assert set(ds.pairs.loc[seen, "prompt_id"]).isdisjoint(ds.pairs.loc[~seen, "prompt_id"])
    assert _prompt_texts(ds, seen).isdisjoint(_prompt_texts(ds, ~seen))
    # Both responses of a pair answer the pair's prompt, and they differ.
    prompt_of = ds.responses["prompt_id"].to_numpy()
    assert (prompt_of[ds.pairs["chosen"]] == ds.pairs["prompt_id"].to_numpy()).all()
    assert (prompt_of[ds.pairs["rejected"]] == ds.pairs["prompt_id"].to_numpy()).all()
    assert (ds.pairs["chosen"] != ds.pairs["rejected"]).all()
    # Every user has train, val and test pairs (validation is a per-user slice of train, at least one).
    per_user = ds.user_pair_counts()
    assert (per_user[["n_train", "n_val", "n_test"]] >= 1).all().all(), per_user


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_tables_other_seed_differs(kind, config_for):
    """Regression: a load must be a pure function of its options and seed (runs are cached by fingerprint)."""
    first, again = load_dataset(config_for(kind, seed=3)), load_dataset(config_for(kind, seed=3))
    for name in ("responses", "pairs", "users"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    if first.persona_weights is not None:
        np.testing.assert_array_equal(first.persona_weights, again.persona_weights)
    assert first.fingerprint() == again.fingerprint()
    other = load_dataset(config_for(kind, seed=4))
    assert not first.pairs.equals(other.pairs)
    assert first.fingerprint() != other.fingerprint()


def test_simulated_labels_follow_personas(tiny_config):
    """Each simulated user prefers the response with the larger persona reward w_u · z(y); ties are skipped."""
    ds = load_dataset(tiny_config)
    w = ds.persona_weights[ds.pairs["user"].to_numpy()]
    margin = np.einsum("pk,pk->p", ds.base_scores[ds.pairs["chosen"]] - ds.base_scores[ds.pairs["rejected"]], w)
    assert (margin > 0).all()
    np.testing.assert_allclose(ds.persona_weights.sum(axis=1), 1.0)
    assert list(ds.users["dominant"]) == list(np.asarray(ds.judges)[ds.persona_weights.argmax(axis=1)])


def test_shares_set_the_dominant_judges():
    """Small α makes each persona close to one judge, judge k dominant for about a share p_k of users (spec §2)."""
    ds = load_dataset(DataConfig(users=2000, prompts=8, train_pairs=2, test_pairs=1, alpha=0.1,
                                 shares="thorough=0.7,practical=0.1,witty=0.1,brief=0.1"))
    share = ds.users["dominant"].value_counts(normalize=True)
    assert abs(share["thorough"] - 0.7) < 0.05, share
    assert ds.persona_weights.max(axis=1).mean() > 0.8  # near one-hot personas


def test_dsp_loads_the_shared_file(dsp_path, dsp_items):
    """The DSP path on the shared file: 461 prompts, four domain responses each, 'normal' only when asked."""
    assert len(dsp_items) == 461
    ds = load_dataset(DataConfig(dataset="dsp", path=str(dsp_path), users=40, train_pairs=10, test_pairs=5))
    assert ds.n_prompts == 461
    n_normal = sum(bool(str(item["responses"].get("normal") or "").strip()) for item in dsp_items)
    assert n_normal < 461  # item 60 has an empty original answer: it is dropped, not kept as an empty text
    assert len(ds.responses) == 4 * 461 + n_normal
    per_prompt = ds.responses.groupby("prompt_id")["domain"].apply(set)
    assert all(set(dsp_mod.DOMAINS) <= domains for domains in per_prompt)
    assert ds.responses["text"].str.strip().ne("").all()
    assert ds.responses.loc[ds.responses["prompt_id"] == 0, "prompt"].iloc[0] == dsp_items[0]["query"]
    first = ds.responses[(ds.responses["prompt_id"] == 0) & (ds.responses["domain"] == "academy")]
    assert first["text"].iloc[0] == dsp_items[0]["responses"]["academy"]
    # One-hot base scores, normal all zero.
    domain = ds.responses["domain"].to_numpy()
    for k, name in enumerate(dsp_mod.DOMAINS):
        np.testing.assert_array_equal(ds.base_scores[:, k], (domain == name).astype(float))
    # Pairs never use 'normal' by default and are labelled by the user's domain weights.
    pair_domains = np.stack([domain[ds.pairs["chosen"]], domain[ds.pairs["rejected"]]])
    assert "normal" not in set(pair_domains.ravel())
    assert (pair_domains[0] != pair_domains[1]).all()
    weights = ds.persona_weights[ds.pairs["user"].to_numpy()]
    k_of = {name: k for k, name in enumerate(dsp_mod.DOMAINS)}
    rows = np.arange(len(ds.pairs))
    chosen_w = weights[rows, [k_of[d] for d in pair_domains[0]]]
    rejected_w = weights[rows, [k_of[d] for d in pair_domains[1]]]
    assert (chosen_w > rejected_w).all()
    assert ds.meta["shares"] == dsp_mod.DSP_SHARES


def test_dsp_include_normal_pairs_the_original_answer(dsp_path):
    """With include_normal the original (normal) answer takes part in pairs, as the response nobody prefers."""
    ds = load_dataset(DataConfig(dataset="dsp", path=str(dsp_path), users=40, train_pairs=10, test_pairs=5,
                                 include_normal=True))
    domain = ds.responses["domain"].to_numpy()
    assert (domain[ds.pairs["rejected"]] == "normal").any()
    assert not (domain[ds.pairs["chosen"]] == "normal").any()  # score 0 never beats a positive weight


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet", "json"])
def test_pairs_source_reads_every_format_alike(suffix, tmp_path, write_table, pairs_frame):
    """The same pairs table gives the same dataset from CSV, JSONL, JSON and Parquet."""
    frame = pairs_frame(n_users=4, n_prompts=8)
    reference = load_dataset(DataConfig(dataset="pairs", path=str(write_table(frame, tmp_path / "ref.csv"))))
    ds = load_dataset(DataConfig(dataset="pairs", path=str(write_table(frame, tmp_path / f"pairs.{suffix}"))))
    pd.testing.assert_frame_equal(ds.pair_table(), reference.pair_table())
    assert ds.persona_weights is None and ds.base_scores is None
    assert sorted(ds.users["user_id"]) == sorted(frame["user_id"].unique())
    assert len(ds.pairs) == len(frame)


def test_pairs_split_column_is_kept(tmp_path, write_table, pairs_frame):
    """A given split column is used as is (lower-cased), not re-drawn."""
    frame = pairs_frame(n_users=3, n_prompts=6)
    frame["split"] = np.where(frame["prompt"].str.contains("number [01]\\?"), "TEST",
                              np.where(frame["prompt"].str.contains("number 2\\?"), "val", "train"))
    ds = load_dataset(DataConfig(dataset="pairs", path=str(write_table(frame, tmp_path / "p.csv"))))
    assert list(ds.pairs["split"]) == list(frame["split"].str.lower())


def test_personalllm_scores_are_z_normalised(tmp_path, write_table, personalllm_frame):
    """Each reward model becomes a judge with z-normalised scores; all responses of a row share its prompt."""
    frame = personalllm_frame(n_prompts=12)
    ds = load_dataset(DataConfig(dataset="personalllm", path=str(write_table(frame, tmp_path / "p.parquet")),
                                 users=20, train_pairs=6, test_pairs=4))
    assert ds.judges == ["rm_a", "rm_b", "rm_c"]
    np.testing.assert_allclose(ds.base_scores.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.base_scores.std(axis=0), 1.0)
    assert len(ds.responses) == 12 * 4 and ds.n_prompts == 12
    raw = frame[[f"response_{k}_rm_b" for k in range(1, 5)]].to_numpy().ravel()
    np.testing.assert_allclose(ds.base_scores[:, 1], (raw - raw.mean()) / raw.std())


def test_personalllm_reward_model_names_need_not_be_identifiers(tmp_path, write_table, personalllm_frame):
    """Regression: score columns like ``response_1_rm-large`` were looked up through itertuples, which renames
    non-identifier columns, so such files failed with an internal KeyError instead of loading."""
    frame = personalllm_frame(models=("rm-large", "rm small", "3rm"))
    ds = load_dataset(DataConfig(dataset="personalllm", path=str(write_table(frame, tmp_path / "p.parquet")),
                                 users=20, train_pairs=6, test_pairs=4))
    assert ds.judges == ["rm-large", "rm small", "3rm"]
    raw = frame[[f"response_{k}_rm small" for k in range(1, 5)]].to_numpy().ravel()
    np.testing.assert_allclose(ds.base_scores[:, 1], (raw - raw.mean()) / raw.std())


# ------------------------------------------------------------------------------------------- bad input (API)


def _bad_inputs(tmp_path, write_table, pairs_frame, personalllm_frame):
    good = pairs_frame(n_users=3, n_prompts=8)
    late = good["prompt"].str.contains("number [67]\\?")
    leaked = good.assign(split=np.where(late, "test", "train"))
    leaked.loc[0, "split"] = "test"  # user0's prompt 0 is test while the others label prompt 0 for training
    no_train = good.assign(split=np.where(late | (good["user_id"] == "user2"), "test", "train"))
    plain = personalllm_frame()
    no_scores = plain.drop(columns=[c for c in plain.columns if re.fullmatch(r"response_\d+_.+", c)])
    bad_score = plain.astype(object)
    bad_score.loc[2, "response_3_rm_b"] = "high"
    dsp_missing = [{"query": "q0", "responses": {"academy": "a", "business": "b", "entertainment": "e",
                                                 "literature": "l", "normal": "n"}},
                   {"query": "q1", "responses": {"academy": "a", "business": "", "entertainment": "e",
                                                 "literature": "l"}}]
    (tmp_path / "dsp.json").write_text(json.dumps(dsp_missing), encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"user_id": "a"}\n{"user_id": \n', encoding="utf-8")
    return {
        "invalid-jsonl": (dict(dataset="pairs", path=str(tmp_path / "bad.jsonl")), files.INVALID_JSONL, ["line 2"]),
        "bad-split": (dict(dataset="pairs", path=str(write_table(good.assign(split="dev"), tmp_path / "s.csv"))),
                      pairs.BAD_SPLIT, ["row 1"]),
        "leaked-prompt": (dict(dataset="pairs", path=str(write_table(leaked, tmp_path / "l.csv"))),
                          dataset_mod.LEAKED_PROMPT, ["prompt 0 "]),
        "no-train-pairs": (dict(dataset="pairs", path=str(write_table(no_train, tmp_path / "t.csv"))),
                           dataset_mod.NO_TRAIN_PAIRS, ["'user2'"]),
        "no-scores": (dict(dataset="personalllm", path=str(write_table(no_scores, tmp_path / "n.parquet"))),
                      personalllm.NO_SCORES, []),
        "bad-score": (dict(dataset="personalllm", path=str(write_table(bad_score, tmp_path / "b.jsonl"))),
                      personalllm.BAD_SCORE, ["row 3", "response_3_rm_b"]),
        "dsp-missing-domain": (dict(dataset="dsp", path=str(tmp_path / "dsp.json")), dsp_mod.BAD_ITEM,
                               ['responses["business"]', "item 1"]),
        "dsp-no-path": (dict(dataset="dsp"), dsp_mod.NEED_PATH, []),
        "pairs-no-path": (dict(dataset="pairs"), pairs.NEED_PATH, []),
        "bad-fraction": (dict(test_fraction=1.5), BAD_FRACTION, ["--test-fraction", "1.5"]),
        "unknown-source": (dict(dataset="nope"), UNKNOWN_SOURCE, ["'nope'"]),
        "too-few-users": (dict(users=1), synthetic_mod.BAD_SIZE, ["--users"]),
        "bad-judges": (dict(judges=7), synthetic_mod.BAD_JUDGES, ["7"]),
        "bad-homogeneity": (dict(minority_homogeneity=1.5), synthetic_mod.BAD_HOMOGENEITY, ["1.5"]),
        "bad-share-value": (dict(shares="thorough=lots"), simulate.BAD_SHARE_VALUE, ["thorough=lots"]),
    }


BAD_CASES = ["invalid-jsonl", "bad-split", "leaked-prompt", "no-train-pairs", "no-scores", "bad-score",
             "dsp-missing-domain", "dsp-no-path", "pairs-no-path", "bad-fraction", "unknown-source", "too-few-users",
             "bad-judges", "bad-homogeneity", "bad-share-value"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_the_fault(case, tmp_path, write_table, pairs_frame, personalllm_frame, check_message):
    """Each bad file or option raises PafoInputError with its module's message (the CLI prints it as one line)."""
    options, template, values = _bad_inputs(tmp_path, write_table, pairs_frame, personalllm_frame)[case]
    with pytest.raises(PafoInputError) as caught:
        load_dataset(dataclasses.replace(DataConfig(users=10, prompts=6, train_pairs=4, test_pairs=2), **options))
    check_message(str(caught.value), template, *values)
    assert "\n" not in str(caught.value)


def test_every_source_is_declared_once_and_read_everywhere():
    """Regression (issue 12): the Data page's hint dict raised KeyError for a source it did not list. Every source
    comes from pafo.sources.SOURCE_SPECS: the CLI's choices, the page's labels, hints and form fields."""
    import dataclasses

    from pafo import appstate
    from pafo.config import field_choices
    from pafo.sources import SOURCE_SPECS, SOURCES

    field = next(f for f in dataclasses.fields(DataConfig) if f.name == "dataset")
    assert tuple(field_choices(DataConfig, field)) == SOURCES == tuple(SOURCE_SPECS)
    names = {f.name for f in dataclasses.fields(DataConfig)}
    for name, spec in SOURCE_SPECS.items():
        assert appstate.SOURCE_LABELS[name] == spec.label
        assert set(appstate.source_fields(name)) <= names
        assert isinstance(appstate.path_hint(name), str)
        assert appstate.simulated({"dataset": name}) is spec.simulated
    assert set(appstate.HUB_SCHEMAS) <= set(SOURCES) and appstate.path_hint("hub")


def test_run_seeds_share_the_synthetic_text_pool(tiny_config):
    """Regression (issue 19): each run seed built new response texts, so a 5-seed run embedded 5 text pools. The
    pool now comes from ``data_seed`` alone; run seeds draw other users and pairs on the same texts."""
    datasets = [load_dataset(dataclasses.replace(tiny_config, seed=seed)) for seed in range(5)]
    pools = [set(dataset_texts(ds)) for ds in datasets]
    assert all(pool == pools[0] for pool in pools)
    np.testing.assert_array_equal(datasets[0].base_scores, datasets[4].base_scores)
    assert not np.allclose(datasets[0].persona_weights, datasets[1].persona_weights)
    assert not datasets[0].pairs[["user", "chosen", "rejected"]].equals(datasets[1].pairs[["user", "chosen",
                                                                                             "rejected"]])
    other_pool = load_dataset(dataclasses.replace(tiny_config, data_seed=1))
    assert set(dataset_texts(other_pool)) != pools[0]
    assert other_pool.fingerprint() != datasets[0].fingerprint()
    assert dataset_fingerprint(dataclasses.replace(tiny_config, data_seed=1)) != dataset_fingerprint(tiny_config)
