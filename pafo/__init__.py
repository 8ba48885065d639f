"""PAFO Studio: find and fix personalized reward bias in LLM reward models.

Public names are imported lazily, so ``import pafo`` (which every background worker does first) stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "PafoInputError": "pafo.errors",
    "RunCancelled": "pafo.errors",
    "PreferenceDataset": "pafo.dataset",
    "DataConfig": "pafo.sources",
    "load_dataset": "pafo.sources",
    "GroupConfig": "pafo.support",
    "estimate_support": "pafo.support",
    "assign_groups": "pafo.support",
    "embed_texts": "pafo.encoders",
    "response_features": "pafo.features",
    "RewardModel": "pafo.models",
    "TrainConfig": "pafo.training",
    "PAFOConfig": "pafo.methods",
    "GroupDROConfig": "pafo.methods",
    "ExperimentConfig": "pafo.experiment",
    "run_experiment": "pafo.experiment",
    "evaluate": "pafo.metrics",
    "RunRegistry": "pafo.registry",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pafo' has no attribute {name!r}")
