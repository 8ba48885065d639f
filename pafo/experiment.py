"""One experiment: data → support rates → groups → features → methods → metrics (and artifacts), over one seed
or several.

``run_experiment`` is the single code path behind ``pafo experiment``, ``pafo runs`` workers and the app.

A *seed* is the run seed (``DataConfig.seed``: the simulated users, the pairs each labels, the split and the model
initialisation), so a run over seeds 0–2 repeats the whole experiment on three draws of users and pairs, as
``bench.quality`` does. The texts do not depend on it (the synthetic text pool comes from ``DataConfig.data_seed``,
DSP's from its file), so every seed shares them and they are embedded once for the whole run; then the seeds train
one after another. The result JSON keeps the single-seed keys and adds:

- ``seeds``: the seeds, in order;
- ``methods.NAME``: with several seeds the pooled figures: means over seeds, CIs from a bootstrap over users
  pooled across seeds (stratified by seed and group, :func:`pafo.compare.pooled_group_ci`);
- ``per_seed``: one block per seed with its own ``dataset``, ``support``, ``groups``, ``methods`` and
  ``comparisons``;
- ``comparisons.NAME`` for every method but the baseline: method − baseline on the same users and pairs with
  paired bootstrap CIs and the verdict (:func:`pafo.compare.paired_comparison`), pooled over the seeds;
- ``per_user`` (and per_user.csv, test_margins.csv): one row per seed and user, with a ``seed`` column;
- ``unseen`` (with ``run.unseen_users`` > 0; per seed too): users held out of all training, personalised from
  ``run.shots`` of their own pairs and scored (:mod:`pafo.unseen`; unseen_per_user.csv has their rows).

The saved weights (for ``pafo score`` and the Users page) are the first seed's models.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .allocator import keep_freed_memory
from .attributes import attribute_columns
from .compare import DEFAULT_EPSILON, VerdictRule, describe_comparison, describe_rule
from .config import dataclass_from_dict, validate_options
from .config_edit import current_config
from .dataset import PreferenceDataset
from .device import EXECUTION_KEY, config_device, resolve_device
from .diagnostics import seed_diagnostics
from .effects import SECTIONS, flat_values, is_active
from .encoder_specs import encoder_spec
from .errors import PafoInputError
from .features import FeatureResult, dataset_texts, response_features
from .lexical import LexicalView
from .method_configs import BAD_DRAWS, MAX_BOOTSTRAP_DRAWS, UNKNOWN_METHOD, RunSettings, method_spec
from .methods import CLUSTERS, NEW_USER_RULE, MethodContext, SeedEvaluation, fit_method
from .metrics import USER_ACCURACY, calibration, evaluate, group_codes, group_labels, pair_correct
from .paths import atomic_write_bytes, atomic_write_text
from .remote import ray_runs
from .results import (
    REFERENCE,
    MethodResult,
    RunResult,
    SeedResult,
    UnseenResult,
    compare_seeds,
    mark_pareto,
    pool,
    pool_unseen,
    write_result,
)
from .seed_pool import SeedPool, seed_workers
from .slices import SliceSettings, check_slicings, compute_slices, slicing_block
from .sources import dataset_fingerprint, load_dataset
from .support import estimate_support, resolve_estimator
from .training import PairSet, Progress, TrainConfig, never_stop, no_progress, pair_margins, set_threads
from .unseen import NewUsers, heldout_groups, heldout_support, ridge_of, split_users, unseen_table, user_subset

__all__ = ["UNKNOWN_METHOD", "ExperimentConfig", "RunSettings", "build_context", "parse_seeds", "read_unseen_rows",
           "run_experiment", "summary_line", "unseen_rows_file"]

BAD_SEEDS = "--seeds: {detail}; write seeds and ranges such as 0-4 or 0,3,7"
MAX_SEEDS = 50
UNSEEN_CSV = "unseen_per_user.csv"  # one row per seed, shots and held-out user (run.unseen_users > 0)
MSG_FEATURE_ROWS = "precomputed features of seed {seed} have {rows} rows; its dataset has {n} responses"

# The progress bar is divided by rough costs measured on the 2-core demo machine, only so that it moves with the
# work: an encoder's seconds per text are its spec's cost (MiniLM bf16 embeds ~70 short texts/s on an idle
# machine: pafo.encoder_specs); the demo's baseline trains its 2,100 pairs in ~1 s and PAFO costs ~1.5× that
# (bench/RESULTS.md). Both slow down alike under load, so their ratio holds. A cold demo is mostly embedding (~30
# of ~40 s on one seed); a warm cache makes it nothing.
LOADED_AT, TRAINED_AT = 0.02, 0.98
TRAIN_SECONDS_PER_PAIR = 0.0005


class _Experiment:
    """The behaviour of :class:`ExperimentConfig`, whose fields are made below from the method registry."""

    def seed_list(self) -> list[int]:
        """The seeds this experiment runs, in order."""
        return list(self.seeds) if self.seeds else [self.data.seed]

    def validate(self) -> ExperimentConfig:
        """Each section's validate(): bounds, finiteness and choices of every option (pafo.config); a seed list in
        its one spelling, each seed checked as ``--seed`` is."""
        if self.seeds is not None:
            seeds = parse_seeds(self.seeds)
            for seed in seeds:
                dataclasses.replace(self.data, seed=seed).validate()
            self.data.seed = seeds[0]
            self.seeds = seeds if len(seeds) > 1 else None
        for section in dataclasses.fields(self):
            if section.name != "seeds":
                options = getattr(self, section.name)
                # A section's own validate() adds cross-field checks; a plain options dataclass gets the bounds.
                if hasattr(options, "validate"):
                    options.validate()
                else:
                    validate_options(options)
        _check_draws(self.run.bootstrap, self.data.users)
        return self

    def to_dict(self) -> dict:
        """The config as JSON; a one-seed run has no ``seeds`` key and a run without slicing no ``slices`` key, so
        their dicts are what they were before those options."""
        values = dataclasses.asdict(self)
        if values["seeds"] is None:
            del values["seeds"]
        if not values["slices"]["slice_by"]:
            del values["slices"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ExperimentConfig:
        """A config from its JSON; one stored by an older version is read in today's spelling
        (:func:`pafo.config_edit.current_config`: the verdict's ε was ``pafo.epsilon``)."""
        values = current_config(values)
        sections = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.name != "seeds"}
        unknown = [k for k in values if k not in sections and k not in ("target", "seeds", EXECUTION_KEY)]
        if unknown:
            raise PafoInputError(f"experiment config: unknown section {unknown[0]!r}; known: {', '.join(sections)}")
        parts = {name: dataclass_from_dict(type(factory()), values.get(name) or {})
                 for name, factory in sections.items()}
        return cls(**parts, seeds=values.get("seeds")).validate()

    def fingerprint(self) -> str:
        """The dataset fingerprint; with several seeds, one over every seed's dataset."""
        if not self.seeds:
            return dataset_fingerprint(self.data)
        parts = [dataset_fingerprint(dataclasses.replace(self.data, seed=s)) for s in self.seeds]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _section(name: str, cls: type) -> tuple:
    return name, cls, field(default_factory=cls)


# A whole experiment: the sections data, groups, run, train, then one per method with options (pafo, groupdro, ...;
# pafo.effects.SECTIONS), then ``seeds``: two or more run seeds, ``None`` meaning the one seed
# ``data.seed`` (``validate`` keeps one spelling per run: a single seed becomes ``data.seed``, which is always the
# first seed). ``to_dict`` / ``from_dict`` give the JSON the run registry stores and hashes.
ExperimentConfig = dataclasses.make_dataclass(
    "ExperimentConfig",
    [*(_section(name, cls) for name, cls in SECTIONS.items()), _section("slices", SliceSettings),
     ("seeds", list[int] | None, field(default=None))],
    bases=(_Experiment,), namespace={"__module__": __name__, "__doc__": "A whole experiment: data, groups, run, "
                                     "train, each method's options and the seeds."})


def _check_draws(bootstrap: int, users: int) -> None:
    """The bootstrap's resamples × users bound (memory: see MAX_BOOTSTRAP_DRAWS)."""
    if bootstrap * users > MAX_BOOTSTRAP_DRAWS:
        raise PafoInputError(BAD_DRAWS.format(bootstrap=bootstrap, users=users, draws=bootstrap * users,
                                              limit=MAX_BOOTSTRAP_DRAWS, fit=MAX_BOOTSTRAP_DRAWS // users))


def parse_seeds(value) -> list[int]:
    """Seeds from ``"0-4"``, ``"0,3,7"``, ``"0-2,9"``, an int or a list of ints: distinct, in the order given."""
    if isinstance(value, bool):
        raise PafoInputError(BAD_SEEDS.format(detail=f"got {value!r}"))
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if match:
                low, high = int(match[1]), int(match[2])
                if high < low:
                    raise PafoInputError(BAD_SEEDS.format(detail=f"range {part!r} runs backwards"))
                items += list(range(low, min(high, low + MAX_SEEDS) + 1))
            elif part.isdigit():
                items.append(int(part))
            else:
                raise PafoInputError(BAD_SEEDS.format(detail=f"{part!r} is not a seed (a whole number ≥ 0)"))
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in items):
        raise PafoInputError(BAD_SEEDS.format(detail=f"seeds are whole numbers ≥ 0, got {value!r}"))
    seeds = list(dict.fromkeys(items))
    if not seeds:
        raise PafoInputError(BAD_SEEDS.format(detail="no seed given"))
    if len(seeds) > MAX_SEEDS:
        raise PafoInputError(BAD_SEEDS.format(detail=f"at most {MAX_SEEDS} seeds per run, got {len(seeds)}"))
    return seeds


def method_config_of(config: ExperimentConfig, name: str):
    """The options a method trains with: its section of the config (its own or the one it shares), else none."""
    spec = method_spec(name)
    return getattr(config, spec.section) if spec.section else spec.config()


def _pair_set(pairs: pd.DataFrame, user_group: np.ndarray) -> PairSet:
    chosen, rejected, users = (pairs[c].to_numpy(np.int64, copy=True) for c in ("chosen", "rejected", "user"))
    return PairSet(chosen, rejected, users, group=user_group[users])


def build_context(dataset: PreferenceDataset, features: np.ndarray, user_group: np.ndarray, train: TrainConfig,
                  *, seed: int = 0, epsilon: float = DEFAULT_EPSILON, progress: Progress = no_progress,
                  should_stop=never_stop, device: str = "cpu", runner=None,
                  lexical_view: bool = False) -> MethodContext:
    """The method context of a dataset: tensors (on ``device``), pair sets and each user's training prompts;
    ``runner`` evaluates the cluster step's EM runs (:class:`pafo.remote.RayRuns`; default here). With
    ``lexical_view`` (:func:`wants_lexical_view`) PAFO's lexical view is fitted on the training-side responses and
    its columns follow φ in every feature row (:mod:`pafo.lexical`)."""
    lexical, lexical_seconds = None, 0.0
    if lexical_view:
        started = time.perf_counter()
        lexical, columns = fit_lexical_view(dataset, seed)
        features = np.hstack([np.asarray(features, dtype=np.float32), columns])
        lexical_seconds = time.perf_counter() - started
    train_pairs = dataset.split("train")
    # Dense pairs may only use responses a source lets into pairs (DSP leaves out "normal" unless asked).
    eligible = np.unique(dataset.pairs[["chosen", "rejected"]].to_numpy())
    prompt_of = dataset.responses["prompt_id"].to_numpy()[eligible]
    prompt_responses = {int(p): rows.to_numpy() for p, rows in pd.Series(eligible).groupby(prompt_of)}
    return MethodContext(
        features=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device), n_users=dataset.n_users,
        user_group=user_group, train=_pair_set(train_pairs, user_group),
        val=_pair_set(dataset.split("val"), user_group), prompt_responses=prompt_responses,
        train_prompts_of_user=_prompts_of_users(train_pairs, dataset.n_users),
        train_config=train, seed=seed, epsilon=epsilon, progress=progress, should_stop=should_stop, runner=runner,
        lexical=lexical, lexical_seconds=lexical_seconds)


def fit_lexical_view(dataset: PreferenceDataset, seed: int) -> tuple[LexicalView, np.ndarray]:
    """PAFO's lexical view fitted on the responses of the dataset's training and validation pairs (a test pair's
    response is only transformed, never fitted on), and its columns for every response row."""
    pairs = dataset.pairs[dataset.pairs["split"] != "test"]
    fit_rows = np.unique(pairs[["chosen", "rejected"]].to_numpy())
    view = LexicalView(random_state=seed)
    try:
        columns = view.fit_transform(dataset.responses["text"].astype(str).tolist(),
                                     dataset.responses["prompt_id"].tolist(), fit_rows)
    except ValueError as exc:
        raise PafoInputError(str(exc)) from None
    return view, columns


def wants_lexical_view(config: ExperimentConfig) -> bool:
    """Whether a method of the run reads PAFO's cluster options (PAFO's cluster teachers, the mixture) with a
    lexical view weight above 0: only then is the view fitted and appended to the features."""
    return config.pafo.lexical_weight > 0 and is_active(flat_values(config), "pafo.lexical_weight")


def _prompts_of_users(pairs: pd.DataFrame, n_users: int) -> list[np.ndarray]:
    """Each user's distinct prompts in ``pairs``, in the order they first appear (what ``groupby("user")
    ["prompt_id"].unique()`` gives, without a Python call per user: 4 s at 30,000 users)."""
    users, prompts = pairs["user"].to_numpy(np.int64), pairs["prompt_id"].to_numpy(np.int64)
    _, first = np.unique(users * (int(prompts.max(initial=0)) + 1) + prompts, return_index=True)
    first = np.sort(first)  # each (user, prompt) at its first appearance, in pair order
    first = first[np.argsort(users[first], kind="stable")]
    return np.split(prompts[first], np.cumsum(np.bincount(users[first], minlength=n_users))[:-1])


def _per_user_table(dataset, support, groups, test: PairSet, margins: np.ndarray) -> pd.DataFrame:
    accuracy = pd.Series(pair_correct(margins)).groupby(test.users).agg(["mean", "size"])
    return pd.DataFrame({"user": dataset.users.index, "group": groups.groups.to_numpy(),
                         "support_rate": support.user_support.to_numpy(),
                         "n_pairs": accuracy["size"].reindex(dataset.users.index).fillna(0).to_numpy(int),
                         USER_ACCURACY: accuracy["mean"].reindex(dataset.users.index).to_numpy()})


def _save_model(out_dir: Path, name: str, model) -> None:
    from safetensors.torch import save

    atomic_write_bytes(out_dir / "weights" / f"{name}.safetensors",
                       save({k: v.contiguous().cpu() for k, v in model.state_dict().items()}))
    atomic_write_text(out_dir / "weights" / f"{name}.json", json.dumps(model.config(), indent=2))


@dataclass
class SeedInputs:
    """One seed's dataset, features, support rates and groups (the last two set by :func:`_add_support`)."""

    seed: int
    dataset: PreferenceDataset
    features: object  # FeatureResult
    support: object = None  # SupportResult
    groups: object = None  # Grouping
    holdout: Holdout | None = None  # with run.unseen_users: the users held out of ``dataset``


@dataclass
class Holdout:
    """The users of a seed held out of all training (``run.unseen_users``): the seed's whole dataset and the
    positions in it of the users who trained and of those held out."""

    dataset: PreferenceDataset
    train_users: np.ndarray
    heldout: np.ndarray


@dataclass
class SeedRun:
    """What one seed produced: its result (with its per-user table), test margins, models and what personalising
    a new user needs with each (:class:`pafo.unseen.NewUsers`)."""

    inputs: SeedInputs
    result: SeedResult
    margins: dict[str, np.ndarray]
    models: dict
    new_users: dict[str, NewUsers] = field(default_factory=dict)
    lexical: LexicalView | None = None  # PAFO's lexical view, when its models read one


def _tagged(progress: Progress, seed_index: int, n_seeds: int, seed: int, seeds_done: int | None = None) -> Progress:
    """``progress`` with "seed i of n: " before every stage when a run has several seeds (seeds trained side by
    side, ``seeds_done`` given: "k of n seeds done · seed i: ", whose count only grows while the seeds' reports
    interleave); per-epoch metrics name their seed in their stage too, so each seed's training curves stay apart."""
    if n_seeds == 1:
        return progress
    prefix = (f"seed {seed_index + 1} of {n_seeds}: " if seeds_done is None
              else f"{seeds_done} of {n_seeds} seeds done · seed {seed_index + 1}: ")

    def tagged(fraction: float, stage: str, metrics: dict | None = None) -> None:
        if metrics is not None and "stage" in metrics:
            metrics = {**metrics, "stage": f"seed {seed}: {metrics['stage']}"}
        progress(fraction, prefix + stage, metrics)

    return tagged


class _EmbedProgress:
    """Moves the bar and the stage with the embedding of a run's texts, batch by batch.

    The texts of every seed are embedded in one pass (:func:`_embed_once`), so the counts are the run's own: the
    stage says how many of the texts the cache lacked are done and, once two batches have shown the pace, about how
    long the rest takes ("embedding texts: 320 of 1,119 · ~25 s left"). The span of the bar ends where the
    estimated embedding seconds stop against the training's; the first callback says how many texts the cache
    already holds, so a warm cache gets a sliver of the bar and a cold MiniLM most of it.
    """

    def __init__(self, progress: Progress, encoder: str, train_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress, self.encoder, self.train_seconds, self.clock = progress, encoder, train_seconds, clock
        self.end: float | None = None
        self.first_done = self.total = self.reports = 0
        self.paced_from: tuple[float, int] | None = None  # (time, done) when the first batch was done

    def __call__(self, done: int, total: int) -> None:
        now, self.reports = self.clock(), self.reports + 1
        if self.end is None:  # the first report: the cache's hits, before any text is encoded
            self.first_done, self.total = done, total
            embed = (total - done) * encoder_spec(self.encoder).cost
            self.end = LOADED_AT + (TRAINED_AT - LOADED_AT) * embed / max(embed + self.train_seconds, 1e-9)
        elif self.paced_from is None and done > self.first_done:
            self.paced_from = (now, done)
        missing = max(self.total - self.first_done, 0)
        inside = (done - self.first_done) / missing if missing else 1.0
        self.progress(LOADED_AT + (self.end - LOADED_AT) * inside, self.stage(done, now), None)

    def stage(self, done: int, now: float) -> str:
        missing = self.total - self.first_done
        if not missing:
            return f"embedding texts: all {self.total:,} in the cache"
        text = f"embedding texts: {done - self.first_done:,} of {missing:,}"
        if self.reports == 1:  # a transformer encoder reports again once its model is loaded
            text += " · loading the model"
        elif self.paced_from is not None and done > self.paced_from[1] and done < self.total:
            at, then = self.paced_from
            left = (self.total - done) * (now - at) / (done - then)
            text += f" · ~{left:.0f} s left"
        return text

    @property
    def embedded_at(self) -> float:
        return LOADED_AT if self.end is None else self.end


def _train_seconds(datasets: list[PreferenceDataset], methods: list[str]) -> list[list[float]]:
    """Estimated training seconds per seed and method (only the bar's proportions use them)."""
    return [[method_spec(name).cost * TRAIN_SECONDS_PER_PAIR * len(dataset.split("train")) for name in methods]
            for dataset in datasets]


def _embed_once(datasets: list[PreferenceDataset], encoder: str, progress: Callable[[int, int], None],
                device: str):
    """Embed the distinct texts of every dataset in one pass into the disk cache, reporting per batch, and return
    its :class:`pafo.encoders.EmbeddingResult`; each seed's features then read the vectors from the cache. A
    corpus-fitted encoder (TF-IDF) is left to fit on each seed's own texts, as it always did (None)."""
    from .encoders import embed_texts, get_encoder

    enc = get_encoder(encoder, device=device)
    if enc.fits_corpus or not datasets:
        return None
    texts = list(dict.fromkeys(text for dataset in datasets for text in dataset_texts(dataset)))
    return embed_texts(texts, enc, progress=progress, device=device)


def _load_inputs(config: ExperimentConfig, progress: Progress, features: dict[int, FeatureResult] | None = None,
                 device: str = "cpu", loaded: Callable[[int, float], None] | None = None,
                 ) -> tuple[list[SeedInputs], float, object]:
    """Every seed's data and features (each text embedded once for the run, on ``device``, unless ``features`` has
    the seed's rows); also the progress fraction at which embedding ended and the one embedding pass (an
    EmbeddingResult, or None). Support rates and groups come per seed (:func:`_add_support`), so the run's stages
    name the seeds in order. ``loaded(n_seeds, estimated training seconds)`` is called once the data is loaded,
    before embedding (the seed pool starts its workers then)."""
    seeds = config.seed_list()
    progress(0.0, "loading data", None)
    datasets = [load_dataset(dataclasses.replace(config.data, seed=seed)) for seed in seeds]
    check_slicings(config.slices, attribute_columns(datasets[0]))  # a wrong --slice-by fails before any training
    train = _train_seconds(datasets, config.run.method_list())
    if loaded is not None:
        loaded(len(datasets), float(sum(map(sum, train))))
    embed = _EmbedProgress(progress, config.run.encoder, sum(map(sum, train)))
    progress(LOADED_AT, "embedding texts", None)  # loading the encoder comes first, before its first report
    given = {seed: (features or {}).get(seed) for seed in seeds}
    for seed, dataset in zip(seeds, datasets, strict=True):
        if given[seed] is not None and len(given[seed].features) != len(dataset.responses):
            raise ValueError(MSG_FEATURE_ROWS.format(seed=seed, rows=len(given[seed].features),
                                                     n=len(dataset.responses)))
    embedding = _embed_once([d for s, d in zip(seeds, datasets, strict=True) if given[s] is None],
                            config.run.encoder, embed, device)
    inputs = [SeedInputs(seed, dataset, given[seed] if given[seed] is not None
                         else response_features(dataset, config.run.encoder, device=device))
              for seed, dataset in zip(seeds, datasets, strict=True)]
    return inputs, embed.embedded_at, embedding


def _add_support(inputs: SeedInputs, config: ExperimentConfig) -> SeedInputs:
    """The seed's support rates (from its own features) and its user groups."""
    estimator = resolve_estimator(inputs.dataset, config.groups.estimator)
    inputs.support = estimate_support(inputs.dataset, estimator, embeddings=inputs.features.features, seed=inputs.seed)
    inputs.groups = config.groups.apply(inputs.support.user_support)
    return inputs


def _hold_out(inputs: SeedInputs, config: ExperimentConfig) -> None:
    """Hold ``run.unseen_users`` of the seed's users out of its data, stratified by the groups of a first
    estimate of support rates over every user (used for nothing else): the run then trains, estimates support
    and groups on the others alone."""
    full = inputs.dataset
    first = estimate_support(full, resolve_estimator(full, config.groups.estimator),
                             embeddings=inputs.features.features, seed=inputs.seed)
    strata = config.groups.apply(first.user_support).groups.to_numpy()
    train_users, heldout = split_users(strata, config.run.unseen_users, inputs.seed)
    inputs.holdout = Holdout(full, train_users, heldout)
    inputs.dataset = user_subset(full, train_users)


def _unseen(inputs: SeedInputs, config: ExperimentConfig, ctx: MethodContext, models: dict,
            new_users: dict[str, NewUsers]) -> UnseenResult:
    """The seed's ``unseen`` block: its held-out users grouped against the training population, personalised
    from each number of shots by every method and scored on their test pairs (:mod:`pafo.unseen`)."""
    holdout = inputs.holdout
    support = heldout_support(holdout.dataset, holdout.train_users, holdout.heldout, inputs.support.estimator,
                              inputs.features.features, seed=inputs.seed)
    groups = heldout_groups(support, inputs.groups.threshold)
    table = unseen_table({name: (models[name], new_users[name]) for name in models}, ctx.features,
                         holdout.dataset, holdout.heldout, groups, support, config.run.shot_list(), inputs.seed)
    seed_block = UnseenResult(config.run.unseen_users, config.run.shot_list(), per_user=table)
    return pool_unseen([seed_block], list(models), n_resamples=config.run.bootstrap, rule=_rule(config),
                       seed=inputs.seed)


def _method_result(output, per_user: pd.DataFrame, config: ExperimentConfig, margins: np.ndarray,
                   test: PairSet) -> MethodResult:
    """A method's figures on one seed (its typed extras are added by its ``MethodSpec.report`` hook)."""
    metrics = evaluate(per_user, n_resamples=config.run.bootstrap, seed=config.data.seed,
                       micro_accuracy=float(pair_correct(margins).mean()))
    return MethodResult(**metrics, calibration=calibration(margins, group_labels(test.group)),
                        train_seconds=round(output.result.seconds + output.extra.get("setup_seconds", 0.0), 3),
                        best_epoch=output.result.best_epoch, history=output.result.history)


def run_experiment(config: ExperimentConfig | dict, *, out_dir: str | Path | None = None,
                   progress: Progress = no_progress,
                   should_stop: Callable[[], bool] = never_stop,
                   features: dict[int, FeatureResult] | None = None, device: str | None = None,
                   ray_address: str | None = None) -> dict:
    """Run every requested method on one dataset, once per seed, and return the result JSON (see the module
    docstring; also written to ``out_dir``).

    ``features``: precomputed :func:`pafo.features.response_features` of ``config.run.encoder`` per run seed,
    used instead of embedding that seed's texts (a sweep's driver embeds each seed once and hands the rows to
    its cells through Ray's object store, :func:`pafo.sweep.run_on_ray`); seeds it lacks are embedded as usual.
    ``device`` (auto|cpu|cuda; default: a stored config's ``execution.device``, else ``$PAFO_DEVICE`` or auto,
    :mod:`pafo.device`) runs encoders and training. ``ray_address`` (HOST:PORT, ray://HOST:PORT, auto, or local
    for a Ray started here) runs PAFO's EM runs as Ray tasks there (:mod:`pafo.remote`; the same clusters).
    """
    if device is None and isinstance(config, dict):
        device = config_device(config)
    device = resolve_device(device)
    config = ExperimentConfig.from_dict(config) if isinstance(config, dict) else config.validate()
    started = time.perf_counter()
    with SeedPool() as pool, ray_runs(ray_address) as runner:
        inputs, embedded_at, embedding = _load_inputs(
            config, progress, features, device,
            loaded=lambda n_seeds, seconds: pool.start(seed_workers(n_seeds, seconds, device)))
        set_threads()
        keep_freed_memory()
        runs = _train_seeds(pool, config, inputs, embedded_at, progress, should_stop, device, runner)
    progress(TRAINED_AT, "pooling the seeds" if len(runs) > 1 else "writing the results", None)
    result = _assemble(config, runs, embedding)
    result.seconds = round(time.perf_counter() - started, 3)
    result.device = device
    if out_dir is not None:
        write_artifacts(Path(out_dir), result, runs)
    progress(1.0, "done", None)
    return result


def _train_seeds(pool: SeedPool, config: ExperimentConfig, inputs: list[SeedInputs], embedded_at: float,
                 progress: Progress, should_stop: Callable[[], bool], device: str, runner=None) -> list[SeedRun]:
    """Every seed's methods, in ``pool``'s workers side by side or here one after another (the same result): the
    bar between embedding and pooling is divided by each seed's estimated cost and moves by the share done."""
    methods = config.run.method_list()
    costs = np.asarray(_train_seconds([i.dataset for i in inputs], methods))
    edges = embedded_at + (TRAINED_AT - embedded_at) * np.concatenate([[0.0], np.cumsum(costs) / costs.sum()])
    spans = [edges[i * len(methods): (i + 1) * len(methods) + 1].tolist() for i in range(len(inputs))]
    done, finished = np.zeros(len(inputs)), np.zeros(len(inputs), dtype=bool)
    shown = [embedded_at]  # the bar only moves forward, whatever order the seeds report in (and float sums)

    def report(index: int, fraction: float, stage: str, metrics: dict | None = None) -> None:
        start, end = spans[index][0], spans[index][-1]
        done[index] = min(max(fraction - start, 0.0), end - start)
        finished[index] = fraction >= end
        shown[0] = max(shown[0], embedded_at + float(done.sum()))
        seeds_done = int(finished.sum()) if pool.workers > 1 else None
        _tagged(progress, index, len(inputs), inputs[index].seed, seeds_done)(shown[0], stage, metrics)

    tasks = [functools.partial(_run_seed, config, seed_inputs, methods, spans[i], device=device, runner=runner,
                               should_stop=never_stop if pool.workers > 1 else should_stop)
             for i, seed_inputs in enumerate(inputs)]
    return pool.map(tasks, report, should_stop)


def _run_seed(config: ExperimentConfig, inputs: SeedInputs, methods: list[str], spans: list[float],
              progress: Progress, should_stop: Callable[[], bool] = never_stop, device: str = "cpu",
              runner=None) -> SeedRun:
    """Every method on one seed's data: the single-seed experiment."""
    progress(spans[0], "support rates", None)
    if config.run.unseen_users > 0:
        _hold_out(inputs, config)
    _add_support(inputs, config)
    dataset, support, groups = inputs.dataset, inputs.support, inputs.groups
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=inputs.seed), seeds=None)
    user_group = group_codes(groups.groups.to_numpy())
    ctx = build_context(dataset, inputs.features.features, user_group, config.train, seed=inputs.seed,
                        epsilon=config.run.epsilon, progress=progress, should_stop=should_stop, device=device,
                        runner=runner, lexical_view=wants_lexical_view(config))
    test = _pair_set(dataset.split("test"), user_group)
    seen = SeedEvaluation(ctx, test, dataset, support, groups, options=lambda name: method_config_of(config, name))
    results, tables, margins_by_method, models, new_users = {}, {}, {}, {}, {}
    ridge = ridge_of(config.train.user_l2, ctx.train)
    for i, name in enumerate(methods):
        output = fit_method(name, ctx, method_config_of(config, name), (spans[i], spans[i + 1]))
        new_users[name] = NewUsers(ridge, output.extra.get(NEW_USER_RULE, "none"), output.extra.get(CLUSTERS))
        margins_by_method[name] = pair_margins(output.model, ctx.features, test)
        tables[name] = _per_user_table(dataset, support, groups, test, margins_by_method[name])
        results[name] = _method_result(output, tables[name], config, margins_by_method[name], test)
        results[name].extras = method_spec(name).report_extras(output, seen, tables[name])
        models[name] = output.model
        progress(spans[i + 1], f"{name} done", None)
    mark_pareto(results, config.run.epsilon)
    frame = per_user_frame(dataset, tables)
    frame.insert(0, "seed", inputs.seed)
    result = SeedResult(inputs.seed, dataset.summary(), support.summary(), groups.summary(), results,
                        diagnostics=seed_diagnostics(seen), per_user=frame)
    result.comparisons = compare_seeds([result], methods, n_resamples=config.run.bootstrap, rule=_rule(config))
    if inputs.holdout is not None:
        progress(spans[-1], "personalising unseen users", None)
        result.unseen = _unseen(inputs, config, ctx, models, new_users)
    return SeedRun(inputs, result, margins_by_method, models, new_users, ctx.lexical)


def _encoder_summary(runs: list[SeedRun], embedding) -> dict:
    """What the features cost: the encoder, its seconds, the run's distinct texts, how many the cache already held
    and how many the model encoded. With the one embedding pass of a run (``embedding``) the seeds read every
    vector from the cache, so the pass holds the counts; without it (TF-IDF, precomputed features) the seeds do."""
    per_seed = [run.inputs.features.embedding for run in runs]
    counted = [embedding] if embedding is not None else per_seed
    return {"name": per_seed[0].encoder, "dim": runs[0].inputs.features.dim,
            "seconds": round(sum(e.seconds for e in per_seed) + (embedding.seconds if embedding else 0.0), 3),
            "texts": sum(e.n_texts for e in counted), "cache_hits": sum(e.cache_hits for e in counted),
            "embedded": sum(e.n_texts - e.cache_hits for e in counted)}


def _rule(config: ExperimentConfig) -> VerdictRule:
    return VerdictRule(epsilon=config.run.epsilon)


def _assemble(config: ExperimentConfig, runs: list[SeedRun], embedding=None) -> RunResult:
    """The result: one seed's figures as they always were, or the figures of several pooled (:func:`pool`); both
    with ``seeds``, ``comparisons``, ``per_seed`` and the per-user table of every seed."""
    seeds = [run.result for run in runs]
    first = seeds[0]
    result = RunResult(first.dataset, first.support, first.groups, first.methods, config.to_dict(),
                       fingerprint=config.fingerprint(), encoder=_encoder_summary(runs, embedding),
                       seeds=[s.seed for s in seeds], diagnostics=first.diagnostics, comparisons=first.comparisons,
                       per_seed=seeds, per_user=pd.concat([s.per_user for s in seeds], ignore_index=True))
    if len(seeds) > 1:
        methods = config.run.method_list()
        result.methods, result.comparisons, result.diagnostics, result.unseen = pool(
            seeds, methods, n_resamples=config.run.bootstrap, rule=_rule(config))
        mark_pareto(result.methods, config.run.epsilon)
    else:
        result.unseen = first.unseen
    if config.slices.slice_by:
        _add_slices(result, config, runs)
    return result


def _add_slices(result: RunResult, config: ExperimentConfig, runs: list[SeedRun]) -> None:
    """The ``slices`` of every slicing asked for (pafo.slices), pooled over the seeds, and how they were made."""
    pairs = pd.concat([run.inputs.dataset.split("test")[["user"]].assign(
        seed=run.inputs.seed, **{f"margin_{name}": margins for name, margins in run.margins.items()})
        for run in runs], ignore_index=True)
    methods = config.run.method_list()
    reference = REFERENCE if REFERENCE in methods else None
    result.slices = compute_slices(result.per_user, pairs, config.slices.slicings(), methods, reference,
                                   n_resamples=config.run.bootstrap, seed=runs[0].inputs.seed,
                                   epsilon=config.run.epsilon)
    result.slicing = slicing_block(config.slices, reference, result.slices, epsilon=config.run.epsilon)


def summary_line(result: RunResult) -> str:
    """One line for stderr after ``pafo experiment --json FILE``: the data, seeds and each method's verdict."""
    seeds = result.seeds or []
    head = (f"{', '.join(result.methods)} on {result.dataset.get('name')} ({result.dataset.get('n_users')} users), "
            f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}")
    comparisons = result.comparisons
    verdicts = [f"{name} vs {REFERENCE}: {describe_comparison(c, verdict=True)}" for name, c in comparisons.items()]
    rule = [describe_rule(next(iter(comparisons.values())).rule)] if comparisons else []
    return "; ".join([head, *verdicts, *rule])


def per_user_frame(dataset: PreferenceDataset, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per user: id, group, support rate, pair counts and each method's test accuracy."""
    first = next(iter(tables.values()))
    frame = pd.DataFrame({"user_id": dataset.users["user_id"].to_numpy(), "group": first["group"].to_numpy(),
                          "support_rate": first["support_rate"].to_numpy()})
    frame = frame.join(dataset.user_pair_counts().reset_index(drop=True))
    for name, table in tables.items():
        frame[f"acc_{name}"] = table[USER_ACCURACY].to_numpy()
    for column in attribute_columns(dataset):  # who each user is (pafo.attributes), for slices and filters
        frame[column] = dataset.users[column].to_numpy()
    return frame


def per_user_csv_text(result: RunResult) -> str:
    """The per-user table as CSV (from the result's embedded table)."""
    return result.per_user.to_csv(index=False)


def unseen_rows_file(folder: Path) -> Path | None:
    """A run folder's :data:`UNSEEN_CSV`, or None when there is none or it resolves outside the folder."""
    path = Path(folder) / UNSEEN_CSV
    return path if path.is_file() and path.resolve().is_relative_to(Path(folder).resolve()) else None


def read_unseen_rows(result: RunResult, folder: Path) -> RunResult:
    """``result`` with its held-out users' rows (:data:`UNSEEN_CSV`, written beside its result.json in ``folder``)
    in ``result.unseen.per_user``, so its seeds can be pooled again (a sweep's points). Unchanged when the run held
    no users out, or the file is missing, unreadable or resolves outside ``folder``: its points then have no pooled
    unseen block."""
    path = unseen_rows_file(folder)
    if result.unseen is None or path is None:
        return result
    try:
        rows = pd.read_csv(path)
    except (OSError, ValueError):
        return result
    if not {"seed", "shots", "group"} <= set(rows.columns):
        return result
    result.unseen = dataclasses.replace(result.unseen, per_user=rows)
    return result


def write_artifacts(out_dir: Path, result: RunResult, runs: list[SeedRun]) -> None:
    """Weights, test_margins.csv, per_user.csv and last result.json, each atomically, all only once a run is done.

    The weights are the first seed's models (what scoring uses); the tables hold every seed, with a ``seed``
    column. result.json is written last, so its presence means every other artifact is complete.
    """
    if runs[0].lexical is not None:  # the view the wide models' feature rows end with, for `pafo score`
        runs[0].lexical.save(out_dir / "weights")
    for name, model in runs[0].models.items():
        _save_model(out_dir, name, model)
        if name in runs[0].new_users:  # what `pafo score --user-pairs` personalises new users with
            runs[0].new_users[name].save(out_dir / "weights", name)
    frames = []
    for run in runs:
        frame = run.inputs.dataset.split("test")[["user", "prompt_id", "chosen", "rejected"]].reset_index(names="pair")
        for name, margins in run.margins.items():
            frame[f"margin_{name}"] = margins
        frame.insert(0, "seed", run.inputs.seed)
        frames.append(frame)
    atomic_write_text(out_dir / "test_margins.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
    atomic_write_text(out_dir / "per_user.csv", per_user_csv_text(result))
    if result.unseen is not None:
        atomic_write_text(out_dir / UNSEEN_CSV, result.unseen.per_user.to_csv(index=False))
    write_result(out_dir / "result.json", result)

