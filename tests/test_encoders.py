"""Encoders and their disk cache: offline loading, pooling, ordering, caching across processes, tfidf, errors."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import traceback
from pathlib import Path

import numpy as np
import pytest

import pafo.encoders as enc_mod
from pafo.encoders import (
    BF16_MAX_COS_ERROR,
    MSG_CACHE_CORRUPT,
    MSG_MODEL_OFFLINE,
    MSG_OPTIONS,
    MSG_PRECISION,
    MSG_TEXT_ITEM,
    MSG_TEXTS_STRING,
    EmbeddingCache,
    Encoder,
    embed_texts,
    get_encoder,
    max_cosine_error,
    select_precision,
    text_hash,
)
from pafo.errors import PafoInputError

DSP_PATH = Path(__file__).resolve().parents[2] / "shared/data/dsp_test_part_a.json"

SENTENCES = [
    "A cat is sleeping on the sofa.",
    "The stock market fell sharply after the announcement of new interest rates by the central bank.",
    "Hi.",
    "A kitten naps on the couch.",
    "Quantum computers use qubits, which can be in superpositions of states, to run certain algorithms faster.",
    "Add salt.",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime folder, and no chance of reaching the hub."""
    folder = tmp_path / "home"
    monkeypatch.setenv("PAFO_HOME", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return folder


@pytest.fixture(scope="module")
def minilm_fp32() -> Encoder:
    return get_encoder("minilm", precision="fp32")


def _cosines(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


# ----------------------------------------------------------------------------------------------------------------------
# MiniLM
# ----------------------------------------------------------------------------------------------------------------------


def test_minilm_loads_offline_and_returns_384d_unit_vectors(home: Path) -> None:
    result = embed_texts(SENTENCES, "minilm", home=home)
    assert result.vectors.shape == (len(SENTENCES), 384)
    assert result.vectors.dtype == np.float32
    assert result.dim == 384 and result.n_texts == len(SENTENCES) and result.cache_hits == 0
    assert result.encoder.startswith("minilm-") and result.encoder.endswith("-L256")
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated(home: Path) -> None:
    cos = _cosines(embed_texts(SENTENCES, "minilm", home=home).vectors)
    cat, stock, kitten = 0, 1, 3
    assert cos[cat, kitten] > 0.5
    assert cos[cat, kitten] > cos[cat, stock] + 0.3


def test_order_is_preserved_under_length_sorting(minilm_fp32: Encoder) -> None:
    batched = minilm_fp32.encode(SENTENCES, batch_size=4)
    one_by_one = np.vstack([minilm_fp32.encode([text], batch_size=1) for text in SENTENCES])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    reversed_batch = minilm_fp32.encode(SENTENCES[::-1], batch_size=4)
    np.testing.assert_allclose(reversed_batch[::-1], batched, atol=1e-4)


def test_encoding_gives_back_the_callers_thread_setting(minilm_fp32: Encoder) -> None:
    """Training runs single-threaded on purpose; an encode in between must not change that."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        minilm_fp32.encode(["hello"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bf16_stays_within_the_cosine_budget(minilm_fp32: Encoder) -> None:
    bf16 = get_encoder("minilm", precision="bf16")
    assert bf16.precision == "bf16" and bf16.name != minilm_fp32.name
    error = max_cosine_error(minilm_fp32.encode(SENTENCES), bf16.encode(SENTENCES))
    assert error < BF16_MAX_COS_ERROR


def test_auto_precision_follows_the_rule_and_is_recorded(home: Path) -> None:
    encoder = get_encoder("minilm", home=home)
    cpu_bf16 = enc_mod.cpu_supports_bf16()
    assert encoder.precision == select_precision("auto", cpu_bf16, encoder.cos_error_)
    if cpu_bf16:  # the calibration ran and was kept on disk for later processes
        record = json.loads((home / "embeddings" / "precision.json").read_text())
        assert [r["max_cos_error"] for r in record.values()] == [encoder.cos_error_]


@pytest.mark.parametrize(
    ("requested", "cpu_bf16", "cos_error", "expected"),
    [
        ("fp32", True, 1e-6, "fp32"),
        ("bf16", False, None, "bf16"),
        ("auto", True, 1e-5, "bf16"),
        ("auto", True, BF16_MAX_COS_ERROR, "fp32"),
        ("auto", True, 5e-3, "fp32"),
        ("auto", True, float("nan"), "fp32"),
        ("auto", True, None, "fp32"),
        ("auto", False, 1e-6, "fp32"),
        ("AUTO", False, None, "fp32"),
    ],
)
def test_select_precision_rule(requested: str, cpu_bf16: bool, cos_error: float | None, expected: str) -> None:
    assert select_precision(requested, cpu_bf16, cos_error) == expected


def test_select_precision_rejects_unknown_value() -> None:
    with pytest.raises(PafoInputError) as info:
        select_precision("fp16", True, 0.0)
    assert str(info.value) == MSG_PRECISION.format(value="fp16")


# ----------------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------------


def test_second_embed_is_served_from_cache_without_loading_the_model(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [*SENTENCES, SENTENCES[0]]
    first = embed_texts(texts, "minilm", home=home)

    def no_model(*_args: object) -> None:
        raise AssertionError("the model was loaded although every vector is cached")

    monkeypatch.setattr(enc_mod, "_MODELS", {})
    monkeypatch.setattr(enc_mod, "_CALIBRATION", {})  # as in a fresh process
    monkeypatch.setattr(enc_mod, "_load_model", no_model)
    second = embed_texts(texts, "minilm", home=home)
    assert second.cache_hits == len(set(texts))
    assert second.encoder == first.encoder
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_cache_false_writes_nothing(home: Path) -> None:
    embed_texts(SENTENCES[:2], "tfidf", home=home, cache=False)
    assert not list(home.glob("embeddings/*.sqlite"))


class CountingEncoder(Encoder):
    """A fake encoder recording what it is asked to encode: tests embed_texts' bookkeeping without a model."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @property
    def name(self) -> str:
        return "counting"

    @property
    def dim(self) -> int:
        return 3

    def encode(self, texts, batch_size=64, progress=None):
        self.seen.extend(texts)
        if progress is not None:
            progress(len(texts), len(texts))
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], np.float32)


def test_duplicates_are_encoded_once_and_partial_hits_are_merged(home: Path) -> None:
    encoder = CountingEncoder()
    calls: list[tuple[int, int]] = []
    first = embed_texts(["aa", "b", "aa", "ccc"], encoder, home=home, progress=lambda d, t: calls.append((d, t)))
    assert sorted(encoder.seen) == ["aa", "b", "ccc"]
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    np.testing.assert_array_equal(first.vectors[0], first.vectors[2])
    encoder.seen.clear()
    second = embed_texts(["ccc", "dddd", "aa"], encoder, home=home)
    assert encoder.seen == ["dddd"] and second.cache_hits == 2
    np.testing.assert_array_equal(second.vectors[[0, 2]], first.vectors[[3, 0]])
    assert embed_texts([], encoder, home=home).vectors.shape == (0, 3)


def test_corrupt_cache_file_raises_input_error(home: Path) -> None:
    cache = EmbeddingCache.for_key(home, "counting")
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PafoInputError) as info:
        embed_texts(["x"], CountingEncoder(), home=home)
    assert str(info.value).startswith(MSG_CACHE_CORRUPT.split("{path}")[0])
    assert str(cache.path) in str(info.value)


def _fake_vector(text_hash_hex: str) -> np.ndarray:
    return np.full(8, int(text_hash_hex[:6], 16), np.float32)


def _hammer_cache(path: str, offset: int, barrier, errors) -> None:
    """Child process: many small overlapping transactions on one cache file, started together with the sibling."""
    try:
        cache = EmbeddingCache(Path(path))
        hashes = [text_hash(f"text {i}") for i in range(offset, offset + 300)]
        barrier.wait(timeout=60)
        for start in range(0, len(hashes), 10):
            chunk = hashes[start : start + 10]
            cache.put_many(chunk, np.stack([_fake_vector(h) for h in chunk]))
            cache.get_many(chunk)
    except BaseException:
        errors.put(traceback.format_exc())


def _embed_tfidf(home: str, texts: list[str], barrier, errors) -> None:
    """Child process: a full embed_texts call into the shared home."""
    try:
        barrier.wait(timeout=60)
        embed_texts(texts, "tfidf", home=Path(home))
    except BaseException:
        errors.put(traceback.format_exc())


def _run_two(target, args_a: tuple, args_b: tuple) -> None:
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, errors)) for args in (args_a, args_b)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert errors.empty(), errors.get()
    assert [proc.exitcode for proc in procs] == [0, 0]


def test_two_processes_writing_one_cache_file_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "embeddings" / "shared.sqlite"
    _run_two(_hammer_cache, (str(path), 0), (str(path), 150))  # rows 150..299 are written by both
    cache = EmbeddingCache(path)
    hashes = [text_hash(f"text {i}") for i in range(450)]
    assert len(cache) == 450
    stored = cache.get_many(hashes)
    assert all(np.array_equal(stored[h], _fake_vector(h)) for h in hashes)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_processes_embedding_the_same_corpus_agree(home: Path) -> None:
    texts = [f"document {i} about {'cats' if i % 2 else 'markets'} and {'rain' if i % 3 else 'sun'}" for i in range(40)]
    _run_two(_embed_tfidf, (str(home), texts), (str(home), texts))
    again = embed_texts(texts, "tfidf", home=home)
    assert again.cache_hits == len(texts)
    fresh = embed_texts(texts, "tfidf", home=home, cache=False)
    np.testing.assert_allclose(again.vectors, fresh.vectors, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# TF-IDF
# ----------------------------------------------------------------------------------------------------------------------


def test_tfidf_is_deterministic_unit_norm_and_order_free(home: Path) -> None:
    texts = [*SENTENCES, "The central bank raised interest rates.", "Cats like warm sofas."]
    a = embed_texts(texts, "tfidf", home=home, cache=False)
    b = embed_texts(texts, "tfidf", home=home, cache=False)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert a.dim == len(texts)  # 256 components capped by an 8-text corpus
    shuffled = embed_texts(texts[::-1], "tfidf", home=home, cache=False)
    np.testing.assert_allclose(shuffled.vectors[::-1], a.vectors, atol=1e-5)


def test_tfidf_cache_key_depends_on_the_corpus(home: Path) -> None:
    first = embed_texts(SENTENCES, "tfidf", home=home)
    assert embed_texts(SENTENCES[::-1], "tfidf", home=home).cache_hits == len(SENTENCES)
    other = embed_texts(SENTENCES[:4], "tfidf", home=home)
    assert other.cache_hits == 0 and other.encoder != first.encoder
    assert get_encoder("tfidf", n_components=32).name != get_encoder("tfidf").name


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_encoder_raises_offline_message(home: Path) -> None:
    name = "no-such-org/no-such-model-pafo"
    expected = MSG_MODEL_OFFLINE.format(name=name)
    with pytest.raises(PafoInputError) as info:
        get_encoder(name)
    assert str(info.value) == expected
    with pytest.raises(PafoInputError) as info:
        embed_texts(["hello"], name, home=home)
    assert str(info.value) == expected
    assert "hub cannot be reached" in expected and "'minilm'" in expected and "'tfidf'" in expected


def test_folder_that_is_not_a_model_raises_input_error(tmp_path: Path, home: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(PafoInputError, match="cannot be loaded as a transformers model"):
        embed_texts(["hello"], str(tmp_path), home=home, cache=False)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: get_encoder("minilm", n_components=3),
            MSG_OPTIONS.format(name="minilm", bad="n_components", allowed="precision, max_length"),
        ),
        (lambda: embed_texts("just one string", "tfidf"), MSG_TEXTS_STRING),
        (lambda: embed_texts(["ok", None], "tfidf"), MSG_TEXT_ITEM.format(index=1, type_name="NoneType")),
    ],
)
def test_bad_arguments_raise_input_errors(home: Path, call, message: str) -> None:
    with pytest.raises(PafoInputError) as info:
        call()
    assert str(info.value) == message


@pytest.mark.parametrize("bad", [{"precision": "half"}, {"max_length": 4}, {"max_length": 100_000}])
def test_bad_transformer_options_raise_input_errors(bad: dict) -> None:
    with pytest.raises(PafoInputError):
        get_encoder("minilm", **bad)


# ----------------------------------------------------------------------------------------------------------------------
# Real text
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsp_items() -> list[dict]:
    if not DSP_PATH.exists():
        pytest.skip(f"{DSP_PATH} not found (it lives in ../shared/data beside the repository)")
    return json.loads(DSP_PATH.read_text(encoding="utf-8"))[:8]


@pytest.mark.parametrize("encoder", ["minilm", "tfidf"])
def test_real_dsp_responses_group_by_query(home: Path, dsp_items: list[dict], encoder: str) -> None:
    """Responses to the same query (written for different domains) share a topic, so they sit closer together
    than responses to other queries."""
    texts = [text for item in dsp_items for text in item["responses"].values()]
    query_of = np.repeat(np.arange(len(dsp_items)), 5)
    result = embed_texts(texts, encoder, home=home)
    assert result.vectors.shape[0] == len(texts) and np.isfinite(result.vectors).all()
    cos = _cosines(result.vectors)
    same = query_of[:, None] == query_of[None, :]
    off_diagonal = ~np.eye(len(texts), dtype=bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.2


# ----------------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------------


def test_encoders_are_read_from_their_registry(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: the encoders were a tuple of names with their loaders, costs and token limits spread over
    encoders.py, experiment.py (the cost table) and scoring.py (a name check); each is one EncoderSpec now, and an
    encoder added to the registry loads, names its cache and costs what its spec says, with no other change."""
    import dataclasses

    from pafo import encoder_specs
    from pafo.encoder_specs import ENCODER_SPECS, MODEL_ENCODER, EncoderSpec, encoder_spec
    from pafo.experiment import _EmbedProgress
    from pafo.method_configs import RunSettings

    help_line = next(f for f in dataclasses.fields(RunSettings) if f.name == "encoder").metadata["help"]
    assert RunSettings().encoder == ENCODER_SPECS[0].name and all(s.name in help_line for s in ENCODER_SPECS)
    assert encoder_spec(" MiniLM ") is encoder_spec("sentence-transformers/all-minilm-l6-v2") is ENCODER_SPECS[0]
    assert encoder_spec("/some/folder") is encoder_spec("org/name") is MODEL_ENCODER
    assert enc_mod.TfidfEncoder.fits_corpus is encoder_spec("tfidf").fits_corpus is True
    assert get_encoder("minilm").max_length == encoder_spec("minilm").max_length
    extra = EncoderSpec("tfidf32", "pafo.encoders:load_tfidf", fits_corpus=True, cost=0.25)
    monkeypatch.setattr(encoder_specs, "ENCODER_SPECS", (*ENCODER_SPECS, extra))
    assert encoder_spec("tfidf32") is extra
    result = embed_texts(SENTENCES, "tfidf32", home=home)
    assert result.dim == len(SENTENCES) and result.encoder.startswith("tfidf-")
    shown = []
    progress = _EmbedProgress(lambda at, stage, _: shown.append(at), "tfidf32", train_seconds=3.0)
    progress(0, 4)  # 4 texts × 0.25 s against 3 s of training: the embedding's share of the bar is a quarter
    assert progress.embedded_at == pytest.approx(0.02 + 0.96 * 0.25)
