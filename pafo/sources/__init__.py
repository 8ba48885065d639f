"""Data sources: one entry point, :func:`load_dataset`, returning a validated :class:`PreferenceDataset`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..conditions import SOURCE_READS
from ..config import BAD_CHOICE, OUT_OF_RANGE, descriptive, option, validate_options
from ..dataset import PreferenceDataset, validate_dataset
from ..errors import PafoInputError
from ..simulate import parse_shares
from . import community_alignment, helpsteer3, multipref, personalllm, prism
from .dsp import DOMAINS, load_dsp
from .pairs import load_pairs
from .personalllm import load_personalllm
from .synthetic import MAX_JUDGES, MIN_JUDGES, make_synthetic, synthetic_judges

__all__ = ["HUB_SOURCES", "SOURCES", "SOURCE_SPECS", "DataConfig", "SourceSpec", "dataset_fingerprint",
           "load_dataset"]

# The bounds live on the fields (pafo.config.validate_options); these names stay for callers matching messages.
BAD_FRACTION, UNKNOWN_SOURCE = OUT_OF_RANGE, BAD_CHOICE
# Limits of size (memory and time of one run on a laptop-class machine, see the README's limits).
# 300,000 users: the largest point of the scale figures (bench/RESULTS.md, scale: 300,000 × 8 ran to the end on the
# 2 cores in 400 CPU-s, 6.6 min wall, peak 5.3 GiB; 30,000 × 32 needs about 100 CPU-s and 1.75 GiB). The
# bootstrap's resamples × users product has its own bound (pafo.method_configs.MAX_BOOTSTRAP_DRAWS).
MAX_USERS = 300_000
MAX_PAIRS_PER_USER = 1_000
MAX_PROMPTS = 100_000
MAX_RESPONSES_PER_PROMPT = 100
MAX_SEED = 2**32 - 1


#: The DataConfig fields that simulating users from base scores reads, and those every source's split reads.
SIMULATION_FIELDS = ("seed", "users", "shares", "alpha", "train_pairs", "test_pairs", "test_fraction", "val_fraction",
                     "protocol")
SPLIT_FIELDS = ("seed", "test_fraction", "val_fraction")


@dataclass(frozen=True)
class SourceSpec:
    """One data source, declared once: the loader, CLI, forms and pages all read it. Adding a source is one loader
    module plus one entry in ``SOURCE_SPECS``."""

    name: str
    label: str = descriptive()                        # the Data page's name for it
    load: Callable                                    # (DataConfig, simulation options) -> PreferenceDataset
    fields: tuple[str, ...]                           # DataConfig fields its form shows (besides dataset, path)
    simulated: bool                                   # users simulated from base scores (personas known)
    path_hint: str | None = None                      # placeholder of the path box; None: it takes no path
    hub_schema: str | None = None                     # its name among the hub schemas; None: no hub loading
    hub_id: str | None = None                         # the hub dataset in its schema (--dataset hf:ID picks it)
    judges: Callable = lambda config: None            # DataConfig -> judge names --shares may use, if known
    hidden: tuple[str, ...] = ()                      # DataConfig fields it reads that its form does not show

    @property
    def reads(self) -> tuple[str, ...]:
        """Every DataConfig field its loader reads besides ``dataset`` and the run seed: what it shows, its path
        when it takes one, and its hidden fields. Options it does not read have no effect on its data
        (``pafo.conditions.SOURCE_READS``)."""
        return (*self.fields, *(("path",) if self.path_hint else ()), *self.hidden)


def _load_synthetic(config, options: dict) -> PreferenceDataset:
    return make_synthetic(prompts=config.prompts, responses_per_prompt=config.responses_per_prompt,
                          judges=config.judges, minority_homogeneity=config.minority_homogeneity,
                          quality_noise=config.quality_noise, data_seed=config.data_seed, **options)


def _load_dsp(config, options: dict) -> PreferenceDataset:
    return load_dsp(config.path, include_normal=config.include_normal, **options)


def _load_pairs(config, options: dict) -> PreferenceDataset:
    return load_pairs(config.path, **options)


SOURCE_SPECS = {spec.name: spec for spec in (
    SourceSpec("synthetic", "Synthetic demo", _load_synthetic,
               (*SIMULATION_FIELDS, "data_seed", "prompts", "responses_per_prompt", "judges",
                "minority_homogeneity"), True,
               judges=lambda config: synthetic_judges(config.judges), hidden=("quality_noise",)),
    SourceSpec("dsp", "DSP (domain-specific preference)", _load_dsp, (*SIMULATION_FIELDS, "include_normal"), True,
               path_hint="path/to/dsp.json", hub_schema="DSP JSON", judges=lambda config: list(DOMAINS)),
    SourceSpec("personalllm", "PersonalLLM", lambda config, options: _load_personalllm(config, options),
               SIMULATION_FIELDS, True, path_hint="file or hub id", hub_schema="PersonalLLM",
               hub_id=personalllm.HUB_ID),
    SourceSpec("pairs", "Own pairs file (upload or path)", _load_pairs, SPLIT_FIELDS, False,
               path_hint="path/to/pairs.csv", hub_schema="pairs table (user_id, prompt, chosen, rejected)"),
    # Real per-annotator data: users and their attributes come from the files (see each module's docstring).
    SourceSpec("prism", "PRISM (ratings + survey)", lambda config, options: prism.load_prism(config.path, **options),
               SPLIT_FIELDS, False, path_hint="folder with utterances.jsonl + survey.jsonl, or hub id",
               hub_schema="PRISM", hub_id=prism.HUB_ID),
    SourceSpec("multipref", "MultiPref (crowd + expert evaluators)",
               lambda config, options: multipref.load_multipref(config.path, **options), SPLIT_FIELDS, False,
               path_hint="MultiPref-Train.jsonl or hub id", hub_schema="MultiPref", hub_id=multipref.HUB_ID),
    SourceSpec("helpsteer3", "HelpSteer3-style individual preferences",
               lambda config, options: helpsteer3.load_helpsteer3(config.path, **options), SPLIT_FIELDS, False,
               path_hint="JSONL with individual_preference lists", hub_schema="HelpSteer3 (individual_preference)",
               hub_id=helpsteer3.HUB_ID),
    SourceSpec("community_alignment", "Community Alignment",
               lambda config, options: community_alignment.load_community_alignment(config.path, **options),
               SPLIT_FIELDS, False, path_hint="community_alignment.csv or hub id", hub_schema="Community Alignment",
               hub_id=community_alignment.HUB_ID),
)}
#: Hub datasets whose schema is known: ``--dataset hf:ORG/NAME`` loads them with their own loader (any other hub
#: dataset is read as a pairs table).
HUB_SOURCES = {spec.hub_id: name for name, spec in SOURCE_SPECS.items() if spec.hub_id}
HUB_PREFIX = "hf:"
MSG_HUB_AND_PATH = ("--dataset {dataset} names the data already; leave --path out (it says {path!r}), or use "
                    "--dataset SCHEMA --path FILE")
MSG_BAD_HUB = "--dataset {dataset!r}: write hf:ORG/NAME or hf:ORG/NAME:config (e.g. hf:allenai/multipref)"
SOURCES = tuple(SOURCE_SPECS)


class _SourceChoices(tuple):
    """The sources, and any ``hf:ORG/NAME`` (argparse and the option check test membership with ``in``)."""

    def __contains__(self, value) -> bool:
        return (isinstance(value, str) and value.startswith(HUB_PREFIX)) or tuple.__contains__(self, value)


@dataclass
class DataConfig:
    """Which preference data to load and, for simulated sources, how to simulate the users."""

    dataset: str = option("synthetic", "data source, or hf:ORG/NAME[:config] for a hub dataset (its schema's "
                                       "source when known, else a pairs table)", choices=_SourceChoices(SOURCES),
                          label="data source")
    path: str | None = option(None, "file, URL or hub id (" + ", ".join(
        name for name, spec in SOURCE_SPECS.items() if spec.path_hint) + ")", label="file, URL or hub id",
        active_when=SOURCE_READS)
    seed: int = option(0, "run seed: the simulated users, the pairs each labels, label noise, the split and "
                          "training", ge=0, le=MAX_SEED, label="run seed")
    data_seed: int = option(0, "synthetic: seed of the text pool (prompts, responses, their attributes and judge "
                               "scores); the same for every run seed, so several seeds embed the texts once",
                            ge=0, le=MAX_SEED, label="text-pool seed", active_when=SOURCE_READS)
    users: int = option(300, "number of simulated users", ge=2, le=MAX_USERS, label="simulated users",
                        active_when=SOURCE_READS)
    shares: str | None = option(None, "population shares of the judges, KEY=V,... (e.g. academy=0.55,...)",
                                label="population shares", active_when=SOURCE_READS)
    alpha: float = option(0.1, "Dirichlet concentration of personas (small: one dominant judge per user)", gt=0,
                          label="persona concentration α", active_when=SOURCE_READS)
    train_pairs: int = option(8, "labelled training pairs per simulated user (validation included)", ge=1,
                              le=MAX_PAIRS_PER_USER, label="train + val pairs per user", active_when=SOURCE_READS)
    test_pairs: int = option(20, "labelled test pairs per simulated user", ge=1, le=MAX_PAIRS_PER_USER,
                             label="test pairs per user", active_when=SOURCE_READS)
    test_fraction: float = option(0.25, "share of prompts held out for test", gt=0, lt=1,
                                  label="test share of prompts", active_when=SOURCE_READS)
    val_fraction: float = option(0.1, "share of each user's training pairs kept for validation (at least 1)",
                                 gt=0, lt=1, label="validation share of pairs", active_when=SOURCE_READS)
    protocol: Literal["random", "best_worst"] = option("random", "pairs at random, or the user's best vs worst",
                                                       label="which pairs users label", active_when=SOURCE_READS)
    include_normal: bool = option(False, "dsp: also pair the original (normal) answer",
                                  label="pair the original (normal) answer too", active_when=SOURCE_READS)
    prompts: int = option(160, "synthetic: number of prompts", ge=2, le=MAX_PROMPTS, label="prompts",
                          active_when=SOURCE_READS)
    responses_per_prompt: int = option(6, "synthetic: responses per prompt", ge=2, le=MAX_RESPONSES_PER_PROMPT,
                                       label="responses per prompt", active_when=SOURCE_READS)
    judges: int = option(4, "synthetic: number of style critics", ge=MIN_JUDGES, le=MAX_JUDGES,
                         label="style critics", active_when=SOURCE_READS)
    minority_homogeneity: float = option(0.0, "synthetic: how much the minority critics share one direction",
                                         ge=0, le=1, label="minority critics' shared direction",
                                         active_when=SOURCE_READS)
    quality_noise: float = option(0.1, "synthetic: std of each response's hidden quality (not readable from text)",
                                  ge=0, label="hidden quality noise", active_when=SOURCE_READS)
    user_attributes: str | None = option(None, "CSV/JSONL/JSON/Parquet of user_id + one column per user attribute "
                                               "(region, tier, age...), to slice results by (--slice-by)",
                                         label="user attributes file")

    def validate(self) -> DataConfig:
        if isinstance(self.dataset, str) and self.dataset.startswith(HUB_PREFIX):
            self._from_hub()
        return validate_options(self)

    def _from_hub(self) -> None:
        """``hf:ORG/NAME[:config]`` as the source of that schema (pairs for an unknown one) with the hub id as
        path, so every later step sees a plain source."""
        hub = self.dataset[len(HUB_PREFIX):].strip()
        name = hub.partition(":")[0]
        if len(name.split("/")) != 2 or not all(name.split("/")):
            raise PafoInputError(MSG_BAD_HUB.format(dataset=self.dataset))
        if self.path and self.path != hub:
            raise PafoInputError(MSG_HUB_AND_PATH.format(dataset=self.dataset, path=self.path))
        self.dataset, self.path = HUB_SOURCES.get(name, "pairs"), hub

    def judge_names(self) -> list[str] | None:
        """The judges that ``--shares`` keys may name, where known before loading."""
        return SOURCE_SPECS[self.dataset].judges(self) if self.dataset in SOURCE_SPECS else None


def _simulation_options(config: DataConfig, shares: dict | None) -> dict:
    return dict(users=config.users, shares=shares, alpha=config.alpha, train_pairs=config.train_pairs,
                test_pairs=config.test_pairs, test_fraction=config.test_fraction, val_fraction=config.val_fraction,
                protocol=config.protocol, seed=config.seed)


def _shares_for(config: DataConfig, judges: list[str] | None) -> dict | None:
    if config.shares in (None, "") or judges is None:
        return None
    return parse_shares(config.shares, judges)


def load_dataset(config: DataConfig | None = None, **overrides) -> PreferenceDataset:
    """Load, simulate and validate a dataset; raises :class:`PafoInputError` with a fix-it message."""
    from ..attributes import attach_attributes

    config = dataclasses.replace(config or DataConfig(), **overrides).validate()
    shares = _shares_for(config, config.judge_names())
    options = _simulation_options(config, shares)
    dataset = validate_dataset(SOURCE_SPECS[config.dataset].load(config, options))
    return attach_attributes(dataset, config.user_attributes)


def _load_personalllm(config: DataConfig, options: dict) -> PreferenceDataset:
    if config.shares:
        # Judge names come from the file's columns, so parse shares after a first look at them.
        from .files import read_table
        from .personalllm import HUB_ID, reward_model_columns

        models = reward_model_columns(list(read_table(config.path or HUB_ID).columns))[1]
        options = {**options, "shares": parse_shares(config.shares, models)}
    return load_personalllm(config.path, **options)


def dataset_fingerprint(config: DataConfig) -> str:
    """A hash of what determines the dataset: the options, plus the content of a local file (sha256, cached by
    the file's stat: :func:`pafo.digests.file_digest`), so a file edited in place is new data whatever its size
    and modification time say. The one place a dataset's identity is decided (reuse, audits of run folders)."""
    from ..digests import file_digest
    from .files import UNREADABLE

    payload = dataclasses.asdict(config)
    if payload.get("user_attributes") is None:  # a config without attributes hashes as it did before them
        del payload["user_attributes"]
    if config.path and Path(config.path).is_file():
        try:
            payload["file"] = {"sha256": file_digest(config.path)}
        except OSError as exc:
            raise PafoInputError(UNREADABLE.format(path=config.path, reason=exc.strerror or exc)) from None
    if config.user_attributes and Path(config.user_attributes).is_file():  # its content too: slices read it
        try:
            payload["attributes_file"] = {"sha256": file_digest(config.user_attributes)}
        except OSError as exc:
            raise PafoInputError(UNREADABLE.format(path=config.user_attributes, reason=exc.strerror or exc)) from None
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
