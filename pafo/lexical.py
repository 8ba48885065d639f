"""PAFO's lexical view: a TF-IDF picture of each response's text, beside the encoder's embedding, for the cluster
step and the teachers' channel.

Why (issue 20, fourth pass): PAFO's gap to the true-cluster ceiling was *finding* the preference clusters and
*placing* users in them from ~8 pairs each, and both need features in which a pair's two responses differ along
the tastes. On DSP a taste is a domain (academy, business, entertainment, literature): a linear probe reads a
response's domain from its MiniLM embedding 56% of the time, so each pair says little about its labeller. The
domains' vocabulary and style are lexical, and TF-IDF sees them: on development seeds the cluster step reading
[φ, this view] raised PAFO's minority gain by about 4 points on both datasets (bench/RESULTS.md, section
*pafo_lexical*), while the baseline given the same features gains far less (its shared g(φ) follows the majority
either way).

What it is, fitted on the *training-side* texts only (the responses of training and validation pairs), so a text
never seen in training (a test response, a new item to score) is only ever transformed:

1. word 1–2-gram TF-IDF (sublinear tf, L2-normalised rows, the ``max_features`` most frequent n-grams of the
   fitted texts; ``analyzers="word+char"`` adds the ``tfidf`` encoder's character 2–4-grams as a second block);
2. projected on the top ``n_components`` principal directions of the *within-prompt differences* of those
   responses (every unordered pair of a prompt's training-side responses): the directions along which a prompt's
   responses differ, which is all a pair's label can speak to (a difference cancels the prompt's topic).

The fitted state (kept hash buckets, idf, directions: under 3 MB) is saved beside a run's weights
(``weights/lexical.safetensors`` + ``lexical.json``), so ``pafo score`` transforms new texts exactly as the run did.
The transform is linear in the TF-IDF rows and computed the same way at fit and at load (no sklearn object is
pickled).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

__all__ = ["ANALYZERS", "HASH_BUCKETS", "LEXICAL_FILES", "LexicalView", "within_prompt_pairs"]

#: The TF-IDF blocks of each choice of ``analyzers``: (analyzer, n-gram range) pairs, as the ``tfidf`` encoder's.
ANALYZERS = {"word": (("word", (1, 2)),), "word+char": (("word", (1, 2)), ("char_wb", (2, 4)))}
#: The default blocks: word 1–2-grams (adding the character block gained ~1 DSP minority point on development seeds
#: at 3–9× the view's time: bench/RESULTS.md, section *pafo_lexical*).
DEFAULT_ANALYZERS = "word"
#: n-grams kept per block (the most frequent in the fitted texts): the saved state grows with it.
DEFAULT_MAX_FEATURES = 2**13
#: Principal directions of the within-prompt differences kept as the view's columns.
DEFAULT_N_COMPONENTS = 64
#: Hash buckets n-grams are counted in (collisions among the kept, most frequent n-grams are rare at this size).
HASH_BUCKETS = 2**20
#: The files a run folder keeps the fitted view in (beside ``weights/<method>.safetensors``).
LEXICAL_FILES = ("lexical.safetensors", "lexical.json")
#: Within-prompt difference rows the directions are fitted on, at most (a random sample above it).
MAX_FIT_PAIRS = 200_000
#: Pairs one prompt contributes, at most (all of them up to 64 responses; a random sample beyond).
MAX_PROMPT_PAIRS = 64 * 63 // 2

MSG_NOT_FITTED = "the lexical view is not fitted: call fit(texts, prompts) first"
MSG_NO_TEXT = ("lexical view: the {n} training-side response text(s) have no words to count; PAFO's lexical view "
               "needs text (or set --lexical-weight 0)")
MSG_DAMAGED = "{path}: the saved lexical view is damaged ({detail}); retrain the run"
MSG_ANALYZERS = "lexical view: analyzers {value!r} is not one of " + ", ".join(ANALYZERS)


@dataclass
class LexicalView:
    """TF-IDF of a text projected on the within-prompt principal directions of training-side responses.

    n-grams are counted by hashing (``HashingVectorizer``, 2²⁰ buckets, no sign flips): counting needs no
    vocabulary, so it costs a third of ``CountVectorizer``'s on DSP's responses, and the stored state holds bucket
    numbers instead of strings. Constructor arguments are kept as given; fitting learns ``blocks_`` (each block's
    analyzer and n-gram range), ``buckets_`` (the kept buckets per block), ``idf_`` (per block) and
    ``components_`` (n_components × all blocks' kept buckets)."""

    n_components: int = DEFAULT_N_COMPONENTS
    max_features: int = DEFAULT_MAX_FEATURES
    analyzers: str = DEFAULT_ANALYZERS
    random_state: int = 0

    @property
    def dim(self) -> int:
        """Columns of :meth:`transform` (fewer than ``n_components`` when the fitted texts allowed no more)."""
        if not hasattr(self, "components_"):
            raise RuntimeError(MSG_NOT_FITTED)
        return len(self.components_)

    def fit(self, texts: Sequence[str], prompts: Sequence) -> LexicalView:
        """Learn the view from ``texts`` (``prompts[i]``: text i's prompt id): :meth:`fit_transform` of them."""
        self.fit_transform(texts, prompts)
        return self

    def fit_transform(self, texts: Sequence[str], prompts: Sequence, fit_rows: np.ndarray | None = None,
                      ) -> np.ndarray:
        """Learn the view from the texts of ``fit_rows`` (default: all) and return every text's transform.

        Each text's n-grams are counted once: the kept buckets (the ``max_features`` most frequent in the fitted
        texts) and the idf (smoothed, as TfidfVectorizer's) come from the fitted rows' counts, the directions from
        the differences of every pair of fitted texts that share a prompt."""
        # One BLAS thread: sums in another order round differently, and a run's result must not depend on the
        # thread count of the process it runs in (a Ray worker's differs from a local one's).
        with threadpool_limits(1):
            return self._fit_transform(texts, prompts, fit_rows)

    def _fit_transform(self, texts: Sequence[str], prompts: Sequence, fit_rows: np.ndarray | None) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD

        if self.analyzers not in ANALYZERS:
            raise ValueError(MSG_ANALYZERS.format(value=self.analyzers))
        texts = [str(t) for t in texts]
        fit_rows = np.arange(len(texts)) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
        distinct = _distinct(texts, fit_rows)
        self.blocks_, self.buckets_, self.idf_, blocks = [], [], [], []
        for analyzer, ngrams in ANALYZERS[self.analyzers]:
            counts = _hashed_counts(texts, analyzer, ngrams)
            kept, idf = self._select(counts[distinct])
            if not len(kept):  # no n-gram in the fitted texts: the block is left out
                continue
            self.blocks_.append((analyzer, ngrams))
            self.buckets_.append(kept)
            self.idf_.append(idf)
            blocks.append(_weighted(counts[:, kept], idf))
        if not blocks:
            raise ValueError(MSG_NO_TEXT.format(n=len(fit_rows)))
        rows = sparse.hstack(blocks, format="csr")
        first, second = within_prompt_pairs([texts[i] for i in fit_rows], [prompts[i] for i in fit_rows],
                                            self.random_state)
        differences = rows[fit_rows[first]] - rows[fit_rows[second]]
        k = min(self.n_components, differences.shape[0] - 1, differences.shape[1] - 1)
        if k < 1:
            self.components_ = np.zeros((0, rows.shape[1]))
        else:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=5, random_state=self.random_state)
            components = svd.fit(differences).components_
            components = components * np.where(components.sum(1, keepdims=True) < 0, -1.0, 1.0)
            # Rounded to the float32 a run folder stores, so a loaded view transforms exactly as the fitted one.
            self.components_ = components.astype(np.float32).astype(np.float64)
        return np.asarray(rows @ self.components_.T, dtype=np.float32)

    def _select(self, counts: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The ``max_features`` buckets most frequent in ``counts`` (ties: the lower bucket), in bucket order, and
        their smoothed idf ln((1 + n) / (1 + df)) + 1."""
        total = np.asarray(counts.sum(0)).ravel()
        present = np.flatnonzero(total > 0)
        kept = np.sort(present[np.argsort(-total[present], kind="stable")][: self.max_features])
        df = np.bincount(counts.indices, minlength=counts.shape[1])[kept]
        return kept, np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32: each text's TF-IDF on the kept buckets, projected on the directions."""
        if not hasattr(self, "components_"):
            raise RuntimeError(MSG_NOT_FITTED)
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with threadpool_limits(1):  # as fit_transform
            blocks = [_weighted(_hashed_counts(texts, analyzer, ngrams)[:, kept], idf)
                      for (analyzer, ngrams), kept, idf in zip(self.blocks_, self.buckets_, self.idf_, strict=True)]
            return np.asarray(sparse.hstack(blocks, format="csr") @ self.components_.T, dtype=np.float32)

    # -- kept beside a run's weights

    def save(self, folder: Path) -> None:
        """``lexical.safetensors`` (kept buckets and idf per block, directions) and ``lexical.json`` (options and
        blocks), each written atomically."""
        from safetensors.numpy import save

        from .paths import atomic_write_bytes, atomic_write_text

        arrays = {f"idf{i}": idf for i, idf in enumerate(self.idf_)}
        arrays.update({f"buckets{i}": kept.astype(np.int64) for i, kept in enumerate(self.buckets_)})
        arrays["components"] = np.ascontiguousarray(self.components_, dtype=np.float32)
        atomic_write_bytes(folder / LEXICAL_FILES[0], save(arrays))
        state = {"n_components": self.n_components, "max_features": self.max_features, "analyzers": self.analyzers,
                 "random_state": self.random_state, "hash_buckets": HASH_BUCKETS, "blocks": self.blocks_}
        atomic_write_text(folder / LEXICAL_FILES[1], json.dumps(state))

    @classmethod
    def load(cls, folder: Path) -> LexicalView:
        """What :meth:`save` wrote; ``ValueError`` naming the file when it is missing or damaged."""
        from safetensors.numpy import load_file

        path = folder / LEXICAL_FILES[1]
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            view = cls(int(state["n_components"]), int(state["max_features"]), str(state["analyzers"]),
                       int(state["random_state"]))
            if view.analyzers not in ANALYZERS or int(state["hash_buckets"]) != HASH_BUCKETS:
                raise ValueError(f"analyzers {view.analyzers!r}, {state['hash_buckets']} hash buckets")
            view.blocks_ = [(str(analyzer), (int(low), int(high))) for analyzer, (low, high) in state["blocks"]]
            arrays = load_file(str(folder / LEXICAL_FILES[0]))
            view.buckets_ = [np.asarray(arrays[f"buckets{i}"], dtype=np.int64) for i in range(len(view.blocks_))]
            view.idf_ = [np.asarray(arrays[f"idf{i}"], dtype=np.float64) for i in range(len(view.blocks_))]
            view.components_ = np.asarray(arrays["components"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(MSG_DAMAGED.format(path=path, detail=f"{type(exc).__name__}: {exc}")) from None
        sizes = [len(kept) for kept in view.buckets_]
        if sizes != [len(idf) for idf in view.idf_] or view.components_.shape[1:] != (sum(sizes),) or any(
                np.any((kept < 0) | (kept >= HASH_BUCKETS)) for kept in view.buckets_):
            raise ValueError(MSG_DAMAGED.format(path=path, detail="buckets, idf and directions disagree"))
        return view


def _hashed_counts(texts: list[str], analyzer: str, ngrams: tuple[int, int]) -> sparse.csr_matrix:
    """Each text's n-gram counts in ``HASH_BUCKETS`` buckets (sklearn's murmurhash of the n-gram)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    hasher = HashingVectorizer(analyzer=analyzer, ngram_range=tuple(ngrams), n_features=HASH_BUCKETS,
                               alternate_sign=False, norm=None, dtype=np.float64)
    return hasher.transform(texts).tocsr()


def _distinct(texts: list[str], rows: np.ndarray) -> np.ndarray:
    """``rows`` with each distinct text once (its first row): the vocabulary and idf count a text once however
    many rows repeat it, as the ``tfidf`` encoder fits on distinct texts."""
    seen: dict[str, int] = {}
    for row in rows:
        seen.setdefault(texts[row], int(row))
    return np.fromiter(seen.values(), dtype=np.int64, count=len(seen))


def _weighted(counts: sparse.csr_matrix, idf: np.ndarray) -> sparse.csr_matrix:
    """Sublinear TF-IDF rows, L2-normalised: (1 + ln tf) · idf, what ``TfidfVectorizer(sublinear_tf=True)`` gives
    on the same vocabulary."""
    from sklearn.preprocessing import normalize

    counts = counts.copy()
    counts.data = 1.0 + np.log(counts.data)
    return normalize(counts @ sparse.diags(idf))


def within_prompt_pairs(texts: Sequence[str], prompts: Sequence, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (first, second) of every unordered pair of distinct texts that share a prompt (each distinct
    (prompt, text) once): all of a prompt's pairs up to ``MAX_PROMPT_PAIRS`` of them, a seeded sample of that many
    for a prompt with more responses, and a seeded sample of ``MAX_FIT_PAIRS`` over all prompts above that."""
    distinct: dict[tuple, int] = {}
    for row, key in enumerate(zip(map(str, prompts), texts)):
        distinct.setdefault(key, row)
    by_prompt: dict[str, list[int]] = {}
    for (prompt, _), row in distinct.items():
        by_prompt.setdefault(prompt, []).append(row)
    rng = np.random.default_rng(seed)
    blocks = [np.asarray(list(itertools.combinations(rows, 2)), dtype=np.int64).reshape(-1, 2)
              if len(rows) * (len(rows) - 1) // 2 <= MAX_PROMPT_PAIRS else _sampled_pairs(np.asarray(rows), rng)
              for rows in by_prompt.values()]
    pairs = np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)
    if len(pairs) > MAX_FIT_PAIRS:
        pairs = pairs[np.sort(rng.choice(len(pairs), MAX_FIT_PAIRS, replace=False))]
    return pairs[:, 0], pairs[:, 1]


def _sampled_pairs(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``MAX_PROMPT_PAIRS`` distinct unordered pairs of ``rows``, drawn at random (a prompt with many responses)."""
    n = len(rows)
    codes = rng.choice(n * (n - 1) // 2, MAX_PROMPT_PAIRS, replace=False)
    first = (n - 0.5 - np.sqrt((n - 0.5) ** 2 - 2 * codes)).astype(np.int64)  # row of the upper triangle
    first -= (first * (2 * n - first - 1) // 2 > codes).astype(np.int64)  # guard the float root at row starts
    second = codes - first * (2 * n - first - 1) // 2 + first + 1
    return np.stack([rows[first], rows[second]], axis=1)
