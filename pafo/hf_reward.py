"""Score (prompt, response) texts with a local transformers reward model: ``pafo audit --model NAME=FOLDER``.

A reward model here is what ``AutoModelForSequenceClassification`` loads with one output (``num_labels=1``): its
logit is the reward r(x, y). It is not personalized, so a pair's margin r(chosen) − r(rejected) is the same for
every user, and an audit of it measures the bias of one reward for all. Loading is offline, from a local folder
only (this machine cannot reach the hub). Texts go through the tokenizer's chat template when it has one (a user
turn with the prompt, an assistant turn with the response), else as a text pair; batches are sorted by length so
little padding is computed, and bf16 autocast is used only where the device does bf16 natively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .device import DEVICES, MSG_NO_CUDA, resolve_device
from .errors import PafoInputError, RunCancelled
from .jsonio import loads

__all__ = ["DEVICES", "MSG_NO_CUDA", "PRECISIONS", "RewardScores", "check_model_folder", "format_texts", "score_texts"]

PRECISIONS = ("auto", "fp32", "bf16")
SEQ_CLS_SUFFIX = "ForSequenceClassification"
# Fallback token limit when neither the tokenizer nor the config says (tokenizers report a huge sentinel then).
DEFAULT_MAX_LENGTH = 512

MSG_NOT_A_FOLDER = ("--model {name}={path}: not a folder; give the local folder of a transformers "
                    "sequence-classification reward model (config.json, weights and tokenizer files)")
MSG_NO_CONFIG = ("--model {name}={path}: no readable config.json ({reason}); give the folder that "
                 "save_pretrained() wrote")
MSG_NOT_SEQ_CLS = ("--model {name}={path}: not a sequence-classification model (architectures: {found}); give a "
                   "reward model saved from an AutoModelForSequenceClassification class")
MSG_NUM_LABELS = ("--model {name}={path}: the model has {n} outputs (num_labels); a reward model gives one score "
                  "per text (num_labels=1)")
MSG_BAD_NUM_LABELS = ("--model {name}={path}: config.json has num_labels {value!r}, not a whole number; a reward "
                      "model has num_labels 1")
MSG_UNLOADABLE = "--model {name}={path}: cannot be loaded ({reason}); check that the folder is complete"
MSG_MISSING_WEIGHTS = ("--model {name}={path}: the weights lack {count} tensor(s) the model needs ({first}), which "
                       "would start at random and score noise; give the folder save_pretrained() wrote for the "
                       "trained reward model")
MSG_BAD_BATCH = "--batch-size: must be ≥ 1 (got {value})"


@dataclass
class RewardScores:
    """One reward per (prompt, response) and how they were computed."""

    rewards: np.ndarray
    device: str
    precision: str
    chat_template: bool
    max_length: int


def _read_config(name: str, folder: Path) -> dict:
    if not folder.is_dir():
        raise PafoInputError(MSG_NOT_A_FOLDER.format(name=name, path=folder))
    try:
        config = loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PafoInputError(MSG_NO_CONFIG.format(name=name, path=folder, reason=type(exc).__name__)) from None
    if not isinstance(config, dict):
        raise PafoInputError(MSG_NO_CONFIG.format(name=name, path=folder, reason="not a JSON object"))
    return config


def check_model_folder(name: str, path: str | Path) -> dict:
    """The folder's config.json, once it says the folder holds a one-output sequence-classification model.

    Checked from config.json alone (no weights loaded), so a form can say at once what is wrong. A base model
    (e.g. ``BertModel``) would load into AutoModelForSequenceClassification with a *random* head and score noise,
    which is why the architecture is checked rather than trusted.
    """
    folder = Path(path)
    config = _read_config(name, folder)
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(SEQ_CLS_SUFFIX) for a in architectures):
        raise PafoInputError(MSG_NOT_SEQ_CLS.format(name=name, path=folder,
                                                    found=", ".join(map(str, architectures)) or "none recorded"))
    if _num_labels(config, name, folder) != 1:
        raise PafoInputError(MSG_NUM_LABELS.format(name=name, path=folder, n=_num_labels(config, name, folder)))
    return config


def _num_labels(config: dict, name: str, folder: Path) -> int:
    """The model's number of outputs as config.json records it (num_labels, else id2label; transformers' default
    is 2); a value that is no whole number is the folder's fault, named."""
    value = config.get("num_labels")
    if value is None:
        labels = config.get("id2label")
        return len(labels) if isinstance(labels, dict) and labels else 2
    if isinstance(value, bool) or not isinstance(value, int):
        raise PafoInputError(MSG_BAD_NUM_LABELS.format(name=name, path=folder, value=value))
    return value


def format_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> list[dict]:
    """Tokenizer features per (prompt, response) (``input_ids`` and, for text pairs, ``token_type_ids``): through
    the chat template when the tokenizer has one, else as a text pair."""
    if getattr(tokenizer, "chat_template", None):
        chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                 for p, r in zip(prompts, responses, strict=True)]
        texts = tokenizer.apply_chat_template(chats, tokenize=False)
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(prompts, responses, truncation="longest_first", max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    return [{k: list(encoded[k][i]) for k in keys} for i in range(len(encoded["input_ids"]))]


def _resolve_precision(precision: str, device: str) -> str:
    """bf16 when asked, or on ``auto`` where the device computes bf16 natively (elsewhere it is slower)."""
    if precision != "auto":
        return precision
    import torch

    from .encoders import cpu_supports_bf16

    native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()
    return "bf16" if native else "fp32"


def _load(name: str, folder: Path, device: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .encoders import load_failure, quiet_transformers

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model, info = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True,
                                                                             output_loading_info=True)
    except Exception as exc:  # a damaged or incomplete folder fails in many ways: all are "cannot load"
        raise PafoInputError(MSG_UNLOADABLE.format(name=name, path=folder, reason=load_failure(exc))) from None
    if info.get("missing_keys"):  # transformers would start them at random: the rewards would be noise
        missing = sorted(info["missing_keys"])
        raise PafoInputError(MSG_MISSING_WEIGHTS.format(name=name, path=folder, count=len(missing),
                                                        first=", ".join(missing[:3])))
    if tokenizer.pad_token_id is None:  # GPT-style tokenizers: pad with EOS; the model must know it to pool
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.eval().to(device)


def _max_length(tokenizer, config: dict, requested: int | None) -> int:
    limits = [n for n in (getattr(tokenizer, "model_max_length", None), config.get("max_position_embeddings"),
                          config.get("n_positions")) if isinstance(n, int) and 0 < n < 1_000_000]
    limit = min(limits) if limits else DEFAULT_MAX_LENGTH
    return min(limit, requested) if requested else limit


def score_texts(name: str, folder: str | Path, prompts: list[str], responses: list[str], *, device: str = "cpu",
                precision: str = "auto", batch_size: int = 16, max_length: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> RewardScores:
    """The reward of every (prompt, response), in input order (raises :class:`PafoInputError` for bad input)."""
    import torch

    if batch_size < 1:
        raise PafoInputError(MSG_BAD_BATCH.format(value=batch_size))
    folder = Path(folder)
    config = check_model_folder(name, folder)
    device = resolve_device(device)
    precision = _resolve_precision(precision, device)
    tokenizer, model = _load(name, folder, device)
    limit = _max_length(tokenizer, config, max_length)
    ids = format_texts(tokenizer, prompts, responses, limit)
    order = np.argsort([len(row["input_ids"]) for row in ids], kind="stable")
    rewards = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        if should_stop():
            raise RunCancelled()
        rows = order[start:start + batch_size]
        batch = tokenizer.pad([ids[i] for i in rows], padding=True, return_tensors="pt").to(device)
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**batch).logits
        rewards[rows] = logits[:, 0].float().cpu().numpy()
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return RewardScores(rewards, device, precision, bool(getattr(tokenizer, "chat_template", None)), limit)
