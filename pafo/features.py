"""φ(x, y): the frozen features of a (prompt, response) pair, from a text encoder and its disk cache (spec §5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .dataset import PreferenceDataset
from .encoder_specs import DEFAULT_ENCODER

__all__ = ["FeatureResult", "dataset_texts", "response_features", "text_features"]

Layout = Literal["prompt+response", "response"]


@dataclass
class FeatureResult:
    """Per-response feature rows (aligned with ``dataset.responses``) and how they were computed."""

    features: np.ndarray
    embedding: object  # pafo.encoders.EmbeddingResult

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def dataset_texts(dataset: PreferenceDataset) -> list[str]:
    """Every distinct text the features need: responses first, then prompts."""
    responses = dataset.responses["text"].tolist()
    prompts = dataset.responses["prompt"].drop_duplicates().tolist()
    return list(dict.fromkeys(responses + prompts))


def text_features(
    responses: list[str],
    prompts: list[str],
    encoder: str = DEFAULT_ENCODER,
    *,
    layout: Layout = "prompt+response",
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    progress_bar: bool = False,
    device: str = "cpu",
) -> FeatureResult:
    """Feature rows for (prompt, response) texts: [e(response), e(prompt)] (or e(response) alone), each distinct
    text embedded once (on ``device``: cpu or cuda), responses before prompts."""
    from .encoders import embed_texts

    texts = list(dict.fromkeys(responses + prompts))
    result = embed_texts(texts, encoder, cache=cache, progress=progress, progress_bar=progress_bar, device=device)
    row_of = {text: i for i, text in enumerate(texts)}
    response_rows = result.vectors[[row_of[t] for t in responses]]
    if layout == "response":
        return FeatureResult(response_rows.astype(np.float32), result)
    prompt_rows = result.vectors[[row_of[p] for p in prompts]]
    return FeatureResult(np.hstack([response_rows, prompt_rows]).astype(np.float32), result)


def response_features(dataset: PreferenceDataset, encoder: str = DEFAULT_ENCODER, **options) -> FeatureResult:
    """Embed the dataset once; row i holds the features of ``dataset.responses`` row i (``options`` and the layout
    as in :func:`text_features`)."""
    return text_features(dataset.responses["text"].tolist(), dataset.responses["prompt"].tolist(), encoder,
                         **options)
