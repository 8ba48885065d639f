"""One experiment: data → support rates → groups → features → methods → metrics (and artifacts).

``run_experiment`` is the single code path behind ``pafo experiment``, ``pafo runs`` workers and the app.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from .config import dataclass_from_dict
from .dataset import PreferenceDataset
from .diagnostics import ceiling_summary, ceilings, cluster_report
from .errors import PafoInputError
from .features import response_features
from .method_configs import UNKNOWN_METHOD, RunSettings
from .methods import (
    MAJORITY,
    METHOD_CONFIGS,
    MINORITY,
    GroupDROConfig,
    MethodContext,
    PAFOConfig,
    fit_method,
)
from .metrics import calibration, evaluate, pareto_improvement
from .paths import atomic_write_bytes, atomic_write_text
from .sources import DataConfig, dataset_fingerprint, load_dataset
from .support import GroupConfig, estimate_support, resolve_estimator
from .training import PairSet, Progress, TrainConfig, never_stop, no_progress, pair_margins, set_threads

__all__ = ["UNKNOWN_METHOD", "ExperimentConfig", "RunSettings", "build_context", "run_experiment"]



@dataclass
class ExperimentConfig:
    """A whole experiment; ``to_dict`` / ``from_dict`` give the JSON the run registry stores and hashes."""

    data: DataConfig = field(default_factory=DataConfig)
    groups: GroupConfig = field(default_factory=GroupConfig)
    run: RunSettings = field(default_factory=RunSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    pafo: PAFOConfig = field(default_factory=PAFOConfig)
    groupdro: GroupDROConfig = field(default_factory=GroupDROConfig)

    def validate(self) -> ExperimentConfig:
        """Each section's validate(): bounds, finiteness and choices of every option (pafo.config)."""
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ExperimentConfig:
        sections = {f.name: f.default_factory for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in sections and k != "target"]
        if unknown:
            raise PafoInputError(f"experiment config: unknown section {unknown[0]!r}; known: {', '.join(sections)}")
        parts = {name: dataclass_from_dict(type(factory()), values.get(name) or {})
                 for name, factory in sections.items()}
        return cls(**parts).validate()

    def fingerprint(self) -> str:
        return dataset_fingerprint(self.data)


def method_config_of(config: ExperimentConfig, name: str):
    """The options a method trains with: its own section, PAFO's cluster options for ``mixture``, else none."""
    sections = {"pafo": config.pafo, "groupdro": config.groupdro, "mixture": config.pafo}
    return sections.get(name) or METHOD_CONFIGS[name]()


def _pair_set(pairs: pd.DataFrame, user_group: np.ndarray) -> PairSet:
    chosen, rejected, users = (pairs[c].to_numpy(np.int64, copy=True) for c in ("chosen", "rejected", "user"))
    return PairSet(chosen, rejected, users, group=user_group[users])


def build_context(dataset: PreferenceDataset, features: np.ndarray, user_group: np.ndarray, train: TrainConfig,
                  *, seed: int = 0, progress: Progress = no_progress, should_stop=never_stop) -> MethodContext:
    """The method context of a dataset: tensors, pair sets and each user's training prompts."""
    train_pairs = dataset.split("train")
    # Dense pairs may only use responses a source lets into pairs (DSP leaves out "normal" unless asked).
    eligible = np.unique(dataset.pairs[["chosen", "rejected"]].to_numpy())
    prompt_of = dataset.responses["prompt_id"].to_numpy()[eligible]
    prompt_responses = {int(p): rows.to_numpy() for p, rows in pd.Series(eligible).groupby(prompt_of)}
    prompts_of_user = train_pairs.groupby("user")["prompt_id"].unique()
    return MethodContext(
        features=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), n_users=dataset.n_users,
        user_group=user_group, train=_pair_set(train_pairs, user_group),
        val=_pair_set(dataset.split("val"), user_group), prompt_responses=prompt_responses,
        train_prompts_of_user=[np.asarray(prompts_of_user.get(u, []), dtype=np.int64)
                               for u in range(dataset.n_users)],
        train_config=train, seed=seed, progress=progress, should_stop=should_stop)


def _per_user_table(dataset, support, groups, test: PairSet, margins: np.ndarray) -> pd.DataFrame:
    correct = (margins > 0) + 0.5 * (margins == 0)
    accuracy = pd.Series(correct).groupby(test.users).agg(["mean", "size"])
    return pd.DataFrame({"user": dataset.users.index, "group": groups.groups.to_numpy(),
                         "support_rate": support.user_support.to_numpy(),
                         "n_pairs": accuracy["size"].reindex(dataset.users.index).fillna(0).to_numpy(int),
                         "accuracy": accuracy["mean"].reindex(dataset.users.index).to_numpy()})


def _teacher_report(output, ctx, test: PairSet, baseline_margins: np.ndarray, features) -> dict:
    """Each teacher's test accuracy on its own group next to the baseline's: the advantage PAFO can transfer."""
    report = {}
    for group, teacher in output.extra["teachers"].items():
        rows = np.flatnonzero(ctx.user_group[test.users] == group)
        subset = test.subset(rows)
        accuracy = {}
        for name, margins in (("teacher", pair_margins(teacher.model, features, subset)),
                              ("baseline", baseline_margins[rows])):
            correct = pd.Series((margins > 0) + 0.5 * (margins == 0)).groupby(subset.users).mean()
            accuracy[name] = float(correct.mean())
        report["majority" if group == MAJORITY else "minority"] = {
            "teacher_accuracy": accuracy["teacher"], "baseline_accuracy": accuracy["baseline"],
            "advantage": accuracy["teacher"] - accuracy["baseline"], "n_train_pairs": teacher.extra["n_train_pairs"],
            "best_epoch": teacher.result.best_epoch, "train_seconds": round(teacher.result.seconds, 3)}
    return report


def _save_model(out_dir: Path, name: str, model) -> None:
    from safetensors.torch import save

    atomic_write_bytes(out_dir / "weights" / f"{name}.safetensors",
                       save({k: v.contiguous() for k, v in model.state_dict().items()}))
    atomic_write_text(out_dir / "weights" / f"{name}.json", json.dumps(model.config(), indent=2))


def _load_inputs(config: ExperimentConfig, progress: Progress):
    progress(0.0, "loading data", None)
    dataset = load_dataset(config.data)
    estimator = resolve_estimator(dataset, config.groups.estimator)

    def embed_progress(done: int, total: int) -> None:
        progress(0.02 + 0.13 * done / max(total, 1), "embedding texts", None)

    features = response_features(dataset, config.run.encoder, progress=embed_progress)
    support = estimate_support(dataset, estimator, embeddings=features.features, seed=config.data.seed)
    groups = config.groups.apply(support.user_support)
    return dataset, features, support, groups


def _method_result(name, output, per_user, config, margins, test) -> dict:
    metrics = evaluate(per_user, n_resamples=config.run.bootstrap, seed=config.data.seed,
                       micro_accuracy=float(((margins > 0) + 0.5 * (margins == 0)).mean()))
    metrics["calibration"] = calibration(margins, np.where(test.group == MINORITY, "minority", "majority"))
    metrics["train_seconds"] = round(output.result.seconds + output.extra.get("setup_seconds", 0.0), 3)
    metrics["best_epoch"] = output.result.best_epoch
    metrics["history"] = output.result.history
    return metrics


def run_experiment(config: ExperimentConfig | dict, *, out_dir: str | Path | None = None,
                   progress: Progress = no_progress,
                   should_stop: Callable[[], bool] = never_stop) -> dict:
    """Run every requested method on one dataset and return the result JSON (also written to ``out_dir``)."""
    config = ExperimentConfig.from_dict(config) if isinstance(config, dict) else config.validate()
    started = time.perf_counter()
    dataset, features, support, groups = _load_inputs(config, progress)
    set_threads()
    user_group = np.where(groups.groups.to_numpy() == "minority", MINORITY, MAJORITY)
    ctx = build_context(dataset, features.features, user_group, config.train, seed=config.data.seed,
                        progress=progress, should_stop=should_stop)
    test = _pair_set(dataset.split("test"), user_group)
    methods = config.run.method_list()
    spans = np.linspace(0.15, 0.97, len(methods) + 1)
    result = {"dataset": dataset.summary(), "support": support.summary(), "groups": groups.summary(),
              "encoder": {"name": features.embedding.encoder, "dim": features.dim,
                          "seconds": round(features.embedding.seconds, 3),
                          "cache_hits": features.embedding.cache_hits},
              "config": config.to_dict(), "fingerprint": config.fingerprint(), "methods": {}}
    tables, margins_by_method, models = {}, {}, {}
    for i, name in enumerate(methods):
        method_config = method_config_of(config, name)
        output = fit_method(name, ctx, method_config, (spans[i], spans[i + 1]))
        margins = pair_margins(output.model, ctx.features, test)
        margins_by_method[name] = margins
        tables[name] = _per_user_table(dataset, support, groups, test, margins)
        result["methods"][name] = _method_result(name, output, tables[name], config, margins, test)
        if name == "pafo" and "teachers" in output.extra:
            baseline_margins = pair_margins(ctx.cache["baseline"].model, ctx.features, test)
            result["methods"][name]["pareto_selected"] = bool(output.result.selected)
            result["methods"][name]["teachers"] = _teacher_report(output, ctx, test, baseline_margins, ctx.features)
            result["methods"][name]["n_dense_pairs"] = output.extra["n_dense_pairs"]
        if "clusters" in output.extra:
            result["methods"][name]["clusters"] = cluster_report(output, ctx, test, tables[name], support, groups)
        models[name] = output.model
        progress(spans[i + 1], f"{name} done", None)
    if "baseline" in ctx.cache:
        with threadpool_limits(1):  # small matrices: see pafo.methods.preference_clusters
            rows = ceilings(ctx, test, dataset, config.pafo)
        result["diagnostics"] = {"ceilings": ceiling_summary(rows, user_group)}
    _add_comparisons(result)
    frame = per_user_frame(dataset, tables)
    result["per_user"] = frame.astype(object).where(frame.notna(), None).to_dict(orient="list")
    result["seconds"] = round(time.perf_counter() - started, 3)
    if out_dir is not None:
        write_artifacts(Path(out_dir), result, dataset, tables, margins_by_method, models)
    progress(1.0, "done", None)
    return result


def _add_comparisons(result: dict) -> None:
    """Pareto improvement of every method over the baseline (when the baseline was run)."""
    base = result["methods"].get("baseline")
    if base is None:
        return
    for name, metrics in result["methods"].items():
        if name != "baseline":
            eps = result["config"]["pafo"]["epsilon"]
            metrics["pareto_improvement"] = pareto_improvement(metrics, base, epsilon=eps)


def per_user_frame(dataset: PreferenceDataset, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per user: id, group, support rate, pair counts and each method's test accuracy."""
    first = next(iter(tables.values()))
    frame = pd.DataFrame({"user_id": dataset.users["user_id"].to_numpy(), "group": first["group"].to_numpy(),
                          "support_rate": first["support_rate"].to_numpy()})
    frame = frame.join(dataset.user_pair_counts().reset_index(drop=True))
    for name, table in tables.items():
        frame[f"acc_{name}"] = table["accuracy"].to_numpy()
    return frame


def per_user_csv_text(result: dict) -> str:
    """The per-user table as CSV (from the result's embedded table)."""
    return pd.DataFrame(result["per_user"]).to_csv(index=False)


def write_artifacts(out_dir: Path, result: dict, dataset, tables, margins_by_method, models) -> None:
    """Weights, test_margins.csv, per_user.csv and last result.json, each atomically, all only once a run is done.

    result.json is written last, so its presence means every other artifact is complete.
    """
    for name, model in models.items():
        _save_model(out_dir, name, model)
    test_frame = dataset.split("test")[["user", "prompt_id", "chosen", "rejected"]].reset_index(names="pair")
    for name, margins in margins_by_method.items():
        test_frame[f"margin_{name}"] = margins
    atomic_write_text(out_dir / "test_margins.csv", test_frame.to_csv(index=False))
    atomic_write_text(out_dir / "per_user.csv", per_user_csv_text(result))
    atomic_write_text(out_dir / "result.json", json.dumps(result, indent=2, allow_nan=False, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
