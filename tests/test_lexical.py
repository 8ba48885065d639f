"""PAFO's lexical view (:mod:`pafo.lexical`): what it fits on, how it is stored, and how models read it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save
from sklearn.feature_extraction.text import TfidfTransformer

from pafo import cli
from pafo.experiment import ExperimentConfig, build_context, fit_lexical_view, wants_lexical_view
from pafo.lexical import (
    LEXICAL_FILES,
    MAX_PROMPT_PAIRS,
    MSG_DAMAGED,
    MSG_NO_TEXT,
    LexicalView,
    _hashed_counts,
    within_prompt_pairs,
)
from pafo.methods import fit_method, preference_clusters
from pafo.models import RewardModel, WideRewardModel, build_model
from pafo.sources import DataConfig, load_dataset
from pafo.training import TrainConfig, pair_margins

TEXTS = ["the cat sat on the mat", "a formal business memo on quarterly revenue", "the dog ran in the park",
         "an academic note on the theory of revenue", "the cat ran to the mat", "a lively story about a dog",
         "quarterly revenue rose in the business unit", "the theory of cats, an academic essay"]
PROMPTS = [0, 0, 1, 1, 2, 2, 3, 3]


def _view(**options) -> LexicalView:
    return LexicalView(n_components=3, **options)


def _bucket(term: str) -> int:
    """The hash bucket the view counts ``term`` in."""
    return int(_hashed_counts([term], "word", (1, 2)).indices[-1]) if " " in term else \
        int(_hashed_counts([term], "word", (1, 1)).indices[0])


def test_tfidf_rows_are_tfidf_transformers_on_the_kept_buckets():
    """Guards the view's TF-IDF against drifting from the ``tfidf`` encoder's definition: its rows are
    TfidfTransformer(sublinear_tf=True)'s on the hashed counts of the kept buckets, idf fitted on the texts."""
    view = _view(max_features=10_000)
    rows = view.fit_transform(TEXTS, PROMPTS)
    counts = _hashed_counts(TEXTS, "word", (1, 2))
    assert np.array_equal(view.buckets_[0], np.unique(counts.indices))  # room for every n-gram: all are kept
    reference = TfidfTransformer(sublinear_tf=True).fit(counts[:, view.buckets_[0]])
    np.testing.assert_allclose(view.idf_[0], reference.idf_, rtol=1e-12)
    expected = reference.transform(counts[:, view.buckets_[0]]) @ view.components_.T
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


def test_max_features_keeps_the_most_frequent_ngrams():
    """The kept n-grams are the most frequent in the fitted texts (ties: the lower bucket)."""
    view = _view(max_features=3).fit(TEXTS, PROMPTS)
    assert set(view.buckets_[0]) == {_bucket("the"), _bucket("on"), _bucket("revenue")}  # 9, 3 and 3 times
    assert view.components_.shape == (2, 3)  # at most one direction fewer than columns


def test_texts_outside_the_fitted_rows_never_shape_the_view():
    """Regression guard for the view reading test responses: only ``fit_rows`` choose the vocabulary, idf and
    directions; the other texts are only transformed, so editing them changes their own rows and nothing else."""
    fit_rows = np.arange(6)
    first = _view().fit_transform(TEXTS, PROMPTS, fit_rows)
    edited = [*TEXTS[:6], "zebra zebra quantum", "an entirely different text"]
    view = _view()
    second = view.fit_transform(edited, PROMPTS, fit_rows)
    np.testing.assert_array_equal(first[:6], second[:6])
    assert _bucket("zebra") not in view.buckets_[0]
    np.testing.assert_array_equal(second[6], 0.0)  # no fitted n-gram in it


def test_fit_transform_equals_transform_after_save_and_load(tmp_path):
    """Guards `pafo score` on a PAFO run: the stored view transforms any text exactly as the run's own rows."""
    view = _view(analyzers="word+char")
    rows = view.fit_transform(TEXTS, PROMPTS)
    view.save(tmp_path)
    loaded = LexicalView.load(tmp_path)
    assert loaded.blocks_ == view.blocks_ and loaded.dim == view.dim == 3
    np.testing.assert_array_equal(loaded.transform(TEXTS), rows)
    np.testing.assert_array_equal(loaded.transform(["a cat memo"]), view.transform(["a cat memo"]))


@pytest.mark.parametrize("damage", ["missing", "not-json", "wrong-size"])
def test_a_damaged_saved_view_names_its_file(tmp_path, damage, check_message):
    _view().fit(TEXTS, PROMPTS).save(tmp_path)
    if damage == "missing":
        (tmp_path / LEXICAL_FILES[0]).unlink()
    elif damage == "not-json":
        (tmp_path / LEXICAL_FILES[1]).write_text("{")
    else:  # directions that disagree with the vocabularies in size
        arrays = load_file(str(tmp_path / LEXICAL_FILES[0]))
        arrays["components"] = np.zeros((3, 5), np.float32)
        (tmp_path / LEXICAL_FILES[0]).write_bytes(save(arrays))
    with pytest.raises(ValueError) as caught:
        LexicalView.load(tmp_path)
    check_message(str(caught.value), MSG_DAMAGED, str(tmp_path / LEXICAL_FILES[1]))


def test_texts_without_words_are_refused():
    with pytest.raises(ValueError) as caught:
        _view().fit(["!", "?"], [0, 0])
    assert str(caught.value) == MSG_NO_TEXT.format(n=2)


def test_within_prompt_pairs_are_every_distinct_pair_of_a_prompt():
    first, second = within_prompt_pairs(["a", "b", "c", "a", "d"], [0, 0, 0, 0, 1])
    assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2)]


def test_the_baseline_channel_reads_phi_alone():
    """Guards the feature layout: every model's g reads the first ``in_dim`` columns, so the lexical columns a run
    appends for PAFO change no other model; the wide model's teacher channel reads them."""
    torch.manual_seed(0)
    x = torch.randn(6, 7)
    moved = x.clone()
    moved[:, 5:] += 1.0
    users = torch.zeros(6, dtype=torch.long)
    base = RewardModel(5, 1, hidden=4, k=2)
    torch.testing.assert_close(base(x, users), base(moved, users))
    wide = WideRewardModel(5, 1, rank=2, lexical_dim=2, hidden=4, k=2)
    with torch.no_grad():
        wide.basis.normal_()
        wide.a.weight.fill_(1.0)
    assert wide.input_dim == 7 and build_model(wide.config()).input_dim == 7
    assert not torch.allclose(wide(x, users), wide(moved, users))


def _tiny(seed: int = 0):
    config = ExperimentConfig()
    config.data = DataConfig(users=24, prompts=16, responses_per_prompt=4, train_pairs=6, test_pairs=4, seed=seed)
    config.run.methods = "baseline,pafo"
    config.run.encoder = "tfidf"
    config.pafo = dataclasses.replace(config.pafo, clusters=3, restarts=2, subspaces="4,6")
    return config


def test_the_view_is_fitted_only_when_a_cluster_method_reads_it():
    config = _tiny()
    assert wants_lexical_view(config)
    assert not wants_lexical_view(dataclasses.replace(config, pafo=dataclasses.replace(config.pafo,
                                                                                      lexical_weight=0.0)))
    config.run.methods = "baseline,reweight"
    assert not wants_lexical_view(config)


def test_pafo_reads_the_view_and_keeps_its_layout(single_thread):
    """A context with the view: φ's columns first (every model's g), the view's last; PAFO's basis spans both and
    its wide model scores the context's rows; the cluster step's basis is written for the unscaled rows."""
    config = _tiny()
    dataset = load_dataset(config.data)
    phi = np.random.default_rng(0).normal(size=(len(dataset.responses), 8)).astype(np.float32)
    user_group = np.zeros(dataset.n_users, dtype=np.int64)
    user_group[:5] = 1
    train = TrainConfig(epochs=2, hidden=8, k=3)
    ctx = build_context(dataset, phi, user_group, train, lexical_view=True)
    view, columns = fit_lexical_view(dataset, 0)
    assert ctx.encoder_dim == 8 and ctx.lexical_dim == view.dim
    np.testing.assert_array_equal(ctx.features[:, 8:].numpy(), columns)
    output = fit_method("pafo", ctx, config.pafo, (0, 1))
    assert output.model.lexical_dim == view.dim and output.model.in_dim == 8
    fit = preference_clusters(ctx, config.pafo, ctx.cache["baseline"].model)
    assert fit.basis.shape[1] == 8 + view.dim and np.any(fit.basis[:, 8:] != 0)
    assert np.isfinite(pair_margins(output.model, ctx.features, ctx.train)).all()
    phi_alone = fit_method("pafo", ctx, dataclasses.replace(config.pafo, lexical_weight=0.0), (0, 1))
    assert np.all(preference_clusters(ctx, dataclasses.replace(config.pafo, lexical_weight=0.0),
                                      ctx.cache["baseline"].model).basis[:, 8:] == 0)
    assert phi_alone.model.lexical_dim == view.dim  # same rows; its teachers just give the view no weight


def test_a_run_without_the_view_stores_none(tmp_path):
    """--lexical-weight 0: the run neither fits nor stores a lexical view, and its PAFO reads φ alone."""
    out = tmp_path / "run"
    assert cli.main(["experiment", "--users", "24", "--prompts", "16", "--responses-per-prompt", "4",
                     "--train-pairs", "6", "--test-pairs", "4", "--bootstrap", "20", "--epochs", "2", "--hidden",
                     "8", "--k", "3", "--restarts", "2", "--subspaces", "4,6", "--clusters", "3",
                     "--lexical-weight", "0", "--out-dir", str(out)]) == 0
    assert not any((out / "weights" / name).exists() for name in LEXICAL_FILES)
    assert build_model(json.loads((out / "weights" / "pafo.json").read_text())).lexical_dim == 0


def test_a_prompt_with_many_responses_gives_a_sample_of_distinct_pairs():
    """Guards the view's fit on data where a prompt has hundreds of responses (a `pairs` table): its pairs are a
    seeded sample of MAX_PROMPT_PAIRS distinct ones instead of all n(n − 1)/2, and small prompts keep all theirs."""
    texts = [f"response {i}" for i in range(300)] + ["a", "b", "c"]
    prompts = [0] * 300 + [1] * 3
    first, second = within_prompt_pairs(texts, prompts, seed=3)
    big = first < 300
    pairs = set(zip(first[big].tolist(), second[big].tolist(), strict=True))
    assert len(pairs) == big.sum() == MAX_PROMPT_PAIRS and all(a < b < 300 for a, b in pairs)
    assert sorted(zip(first[~big].tolist(), second[~big].tolist(), strict=True)) == [(300, 301), (300, 302),
                                                                                     (301, 302)]
    again = within_prompt_pairs(texts, prompts, seed=3)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)
