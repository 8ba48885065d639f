"""The text encoders, declared once: what the CLI, the Data page, the progress bar's cost table, runs and scoring
know about each (torch-free, so the CLI starts fast).

An encoder is one :class:`EncoderSpec` in :data:`ENCODER_SPECS` plus its loader (a function in any module, named in
``loader`` and imported only when texts are embedded). Any other name is a transformers model: a local folder or a
model id in the local Hugging Face cache (:data:`MODEL_ENCODER`), keyed in the embeddings cache by a hash of its
files' content (:func:`pafo.encoders.get_encoder`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .config import descriptive

__all__ = ["DEFAULT_ENCODER", "ENCODERS", "ENCODER_HELP", "ENCODER_SPECS", "MODEL_ENCODER", "EncoderSpec",
           "encoder_spec"]


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder: how it is named, shown, loaded and how long it takes."""

    name: str  # in --encoder and run configs
    loader: str  # "module:function" building it: (name, *, home, device, **options) -> pafo.encoders.Encoder
    #: The token limit texts are truncated to (a transformer's default, capped by the model's own limit); ``None``
    #: for an encoder that reads whole texts.
    max_length: int | None = None
    #: Fitted on the corpus it encodes (TF-IDF): its vectors of a new text differ from those training saw, so a
    #: model trained on them cannot score new text.
    fits_corpus: bool = False
    aliases: tuple[str, ...] = ()  # other names that mean it (lower case)
    label: str = descriptive("")  # its name in the app's forms
    help: str = descriptive("")  # one line for forms and --help
    #: Seconds to embed one text on the 2-core demo machine (bench/RESULTS.md, encoders): the progress bar's
    #: share of embedding against training, nothing else.
    cost: float = descriptive(0.0)

    def load(self, name: str, **options):
        """The encoder ``name`` (this spec's name, an alias or, for :data:`MODEL_ENCODER`, a folder or model id)."""
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(name, **options)

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this encoder's name or one of its aliases (case and surrounding blanks ignored)."""
        return name.strip().lower() in (self.name, *self.aliases)


#: The built-in encoders, the default first; the Data page offers them in this order.
ENCODER_SPECS = (
    EncoderSpec("minilm", "pafo.encoders:load_minilm", max_length=256,
                aliases=("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"),
                label="MiniLM (all-MiniLM-L6-v2, bundled)",
                help="a sentence transformer bundled with PAFO Studio (no download): the first run embeds the texts, "
                     "later runs read them from the disk cache", cost=1 / 70),
    EncoderSpec("tfidf", "pafo.encoders:load_tfidf", fits_corpus=True, label="TF-IDF + SVD (fast)",
                help="word and character n-gram TF-IDF reduced by SVD, fitted on the dataset's texts: seconds, but "
                     "its runs cannot score new text", cost=0.0005),
)
#: Any other name: a transformers model folder or a model id in the local Hugging Face cache.
MODEL_ENCODER = EncoderSpec("model", "pafo.encoders:load_model", max_length=256,
                            label="a transformers model (folder or hub id)",
                            help="a local transformers model folder, or a model id already in the local Hugging "
                                 "Face cache; keyed by a hash of its files, so new weights get new vectors",
                            cost=1 / 70)
ENCODERS = tuple(spec.name for spec in ENCODER_SPECS)
DEFAULT_ENCODER = ENCODERS[0]
#: The encoder option's help line (RunSettings.encoder, the audit's --encoder, the Data page).
ENCODER_HELP = "text encoder: " + ", ".join(ENCODERS) + " or a transformers model folder or hub id"


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of an encoder name: a built-in one (or its alias), else :data:`MODEL_ENCODER`."""
    return next((spec for spec in ENCODER_SPECS if spec.matches(str(name))), MODEL_ENCODER)
