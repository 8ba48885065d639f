"""Pure helpers behind the Streamlit pages (no Streamlit here): forms from dataclasses, uploads, run tables,
what-if configs and per-user drill-down tables.

The pages stay thin: they hold widgets and call these functions and :mod:`pafo.report` for figures, so all of
the logic is testable without a browser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import dataclass_from_dict, field_bounds, field_choices
from .config_edit import flatten, known_fields, run_settings
from .data_roots import UPLOADS, check_app_config
from .encoder_specs import DEFAULT_ENCODER
from .errors import PafoInputError
from .metrics import pair_correct
from .paths import pafo_home
from .registry import SWEEP_PREFIX
from .sources import SOURCE_SPECS, DataConfig
from .support import GroupConfig

__all__ = [
    "DEMO_ENCODER",
    "DEMO_METHODS",
    "DEMO_SEEDS",
    "SINGLE_RUNS",
    "SOURCE_LABELS",
    "SWEEP_PREFIX",
    "FieldSpec",
    "app_message",
    "data_from_param",
    "data_param",
    "dataset_label",
    "default_data_dict",
    "demo_config",
    "display_path",
    "experiment_config",
    "field_specs",
    "form_changes",
    "form_to_dataclass",
    "friendly_paths",
    "grid_text",
    "group_label",
    "group_of",
    "grouping_rule",
    "history_frame",
    "live_caption",
    "metric_delta",
    "pareto_points",
    "pareto_records",
    "path_hint",
    "run_groups",
    "run_row",
    "run_seconds",
    "runs_table",
    "save_upload",
    "seeds_text",
    "shares_text",
    "short_label",
    "simulated",
    "source_fields",
    "source_kind",
    "sweep_choices",
    "upload_from_ref",
    "upload_ref",
    "user_pairs_table",
]

#: The one-click demo: the built-in synthetic data, the baseline and PAFO, with the default MiniLM encoder. With
#: today's defaults MiniLM shows the bias and PAFO closing part of it, where TF-IDF features leave almost no gap to
#: close.
DEMO_METHODS = "baseline,pafo"
DEMO_ENCODER = DEFAULT_ENCODER
#: The demo's seeds: five, so Compare pools them into a verdict with paired CIs (one seed's difference is within
#: noise). The seeds share the synthetic text pool (DataConfig.data_seed), so the run embeds its ~1,100 texts once
#: and costs little more than one seed (bench/RESULTS.md, section demo).
DEMO_SEEDS = "0-4"

#: The Data page's source choices: every source (pafo.sources.SOURCE_SPECS), then loading by hub id or URL.
SOURCE_LABELS = {**{name: spec.label for name, spec in SOURCE_SPECS.items()}, "hub": "Hub id / URL"}
#: The hub schemas: the sources that load from a hub id, by name.
HUB_SCHEMAS = {name: spec.hub_schema for name, spec in SOURCE_SPECS.items() if spec.hub_schema}
HUB_PATH_HINT = "namkoong-lab/PersonalLLM"
UPLOAD_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")
BAD_UPLOAD_SUFFIX = "{name}: unsupported file type {suffix!r}; upload a .csv, .jsonl, .json or .parquet file"
EMPTY_UPLOAD = "{name}: the uploaded file is empty; choose the file again or export it anew"
UPLOAD_KEY = "upload"  # the ?data= key that names a stored upload by its content id
BAD_DATA_PARAM = "the link's dataset (?data=…) cannot be read: {detail}; the synthetic data is shown instead"
BAD_UPLOAD_REF = ("the link names upload {ref!r}, which is not an upload id (<content hash>/<file name>); upload the "
                  "file again on the Data page")
UPLOAD_GONE = ("the link's uploaded file {name} (upload {ref}) is no longer in {folder}; upload it again on the Data "
               "page")
UPLOAD_CHANGED = "{path}: the stored upload {name} no longer has the content the link names; upload it again"
NO_PARENT_RESULT = "run {run_id} has no result to compare with (status {status})"


# ------------------------------------------------------------------------------------------- forms


@dataclass(frozen=True)
class FieldSpec:
    """What a form needs to draw one dataclass field as a widget."""

    name: str
    label: str
    help: str
    kind: str  # choice | bool | int | float | str
    default: Any
    optional: bool = False
    choices: tuple | None = None
    bounds: dict = dataclasses.field(default_factory=dict)  # ge / gt / le / lt, as the field declares them

    def limits(self, step: float | None = None) -> dict:
        """``min_value`` / ``max_value`` for a number input: a strict bound is the limit (validation refuses it),
        or with ``step`` (a slider, whose ends are values it offers) the first value inside it."""
        cast = int if self.kind == "int" else float
        inside = step or 0
        low = self.bounds.get("ge", None if "gt" not in self.bounds else self.bounds["gt"] + inside)
        high = self.bounds.get("le", None if "lt" not in self.bounds else self.bounds["lt"] - inside)
        return {"min_value": None if low is None else cast(low), "max_value": None if high is None else cast(high)}


def field_specs(cls: type, include: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[FieldSpec]:
    """One :class:`FieldSpec` per field of a config dataclass, typed from its annotation."""
    hints = typing.get_type_hints(cls)
    specs = []
    for field in dataclasses.fields(cls):
        if (include is not None and field.name not in include) or field.name in exclude:
            continue
        hint = hints[field.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        base = args[0] if optional and args else hint
        choices = field_choices(cls, field)
        kind = "choice" if choices else {bool: "bool", int: "int", float: "float"}.get(base, "str")
        # Declared once on the field (pafo.config.option(label=...)); the flag in words where there is none.
        label = field.metadata.get("label") or field.metadata.get(
            "flag", "--" + field.name.replace("_", "-")).removeprefix("--").replace("-", " ")
        specs.append(FieldSpec(field.name, label, field.metadata.get("help", ""), kind, field.default, optional,
                               tuple(choices) if choices else None, field_bounds(field)))
    if include is not None:
        order = {name: i for i, name in enumerate(include)}
        specs.sort(key=lambda s: order[s.name])
    return specs


def form_to_dataclass(cls: type, values: dict) -> Any:
    """A config dataclass from form values: blank optional fields become ``None``; bad values raise
    :class:`PafoInputError` naming the field."""
    optional = {s.name for s in field_specs(cls) if s.optional}
    cleaned = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = value.strip()
            if value == "" and key in optional:
                value = None
        cleaned[key] = value
    return dataclass_from_dict(cls, cleaned)


#: The swept parameters a new sweep offers first (when they have an effect): β changes the default PAFO's
#: result; the others follow in the order the config declares them.
SWEEP_FIRST = ("pafo.beta", "pafo.lam", "groups.minority_quantile")


def grid_text(key: str) -> str:
    """The values a sweep of ``section.field`` starts from (its field's ``grid``), as the form shows them."""
    from .effects import option_field

    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in option_field(key).metadata.get("grid", ()))


def sweep_choices(config: dict) -> tuple[list[str], list[str]]:
    """The parameters a sweep of ``config`` can vary: those with a declared grid that have an effect there
    (:data:`SWEEP_FIRST` first), and those with a grid that have none (not offered: the page names them)."""
    from .effects import SECTIONS, flat_values, is_active

    values = flat_values(config)
    keys = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if f.metadata.get("grid")]
    keys.sort(key=lambda k: SWEEP_FIRST.index(k) if k in SWEEP_FIRST else len(SWEEP_FIRST))
    return [k for k in keys if is_active(values, k)], [k for k in keys if not is_active(values, k)]


_FLAG = re.compile(r"--(?:no-)?[a-z][a-z0-9-]*")
#: Flags of the command line that are not config fields, in the app's words.
APP_FLAG_WORDS = {"--seeds": "Seeds", "--seed": "seed", "--grid": "sweep"}


def app_message(message: str) -> str:
    """A library message in the app's words: every command-line flag it names (``--lambda``) becomes that option's
    label in the forms (``λ (distillation weight)``); upload paths become file names."""
    from .config import field_flag
    from .effects import SECTIONS

    labels = {field_flag(f): f.metadata.get("label") for cls in SECTIONS.values() for f in dataclasses.fields(cls)
              if f.metadata.get("label")}
    labels.update(APP_FLAG_WORDS)

    def word(match: re.Match) -> str:
        flag = match.group(0)
        return labels.get(flag) or labels.get("--" + flag.removeprefix("--no-")) or flag

    return _FLAG.sub(word, friendly_paths(str(message)))


# ------------------------------------------------------------------------------------------- data


def source_fields(source: str) -> tuple[str, ...]:
    """The DataConfig fields that matter for a source (besides ``dataset`` and ``path``)."""
    return SOURCE_SPECS[source].fields


def path_hint(source: str) -> str:
    """The placeholder of the Data page's path box for a source choice (a source or ``hub``)."""
    return HUB_PATH_HINT if source == "hub" else SOURCE_SPECS[source].path_hint or ""


def simulated(data: dict) -> bool:
    """Whether a DataConfig dict's users are simulated (so population shares can be changed)."""
    spec = SOURCE_SPECS.get(data.get("dataset"))
    return bool(spec and spec.simulated)


def source_kind(config: dict) -> str:
    """The Data page's source choice for a DataConfig dict: its ``dataset``, or ``hub`` for a hub id or URL."""
    from .sources.files import is_remote

    path = config.get("path")
    return "hub" if config.get("dataset") != "synthetic" and path and is_remote(str(path)) else config["dataset"]


def default_data_dict() -> dict:
    """The default DataConfig (the synthetic demo data) as a dict."""
    from .sources import DataConfig

    return dataclasses.asdict(DataConfig())


def save_upload(name: str, data: bytes, home: Path | None = None) -> Path:
    """Store uploaded bytes as ``<home>/uploads/<content hash>/<file name>`` (idempotent) and return the path.

    The hash folder keeps two different files of the same name apart; the file keeps its own name, so the sidebar,
    the forms, the runs table and error messages can say "mine.csv" instead of an internal path.
    """
    base = Path(name).name or "upload"
    suffix = Path(base).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise PafoInputError(BAD_UPLOAD_SUFFIX.format(name=name, suffix=suffix or "(none)"))
    if not data:
        raise PafoInputError(EMPTY_UPLOAD.format(name=name))
    folder = (home or pafo_home()) / UPLOADS / hashlib.sha256(data).hexdigest()[:20]
    path = folder / (Path(base).stem + suffix)
    if not path.exists():
        from .paths import atomic_write_bytes

        atomic_write_bytes(path, data)
    return path


def _uploads_pattern() -> re.Pattern:
    return re.compile(re.escape(str(pafo_home() / UPLOADS)) + r"/[0-9a-f]+/")


def upload_ref(path: str | None, home: Path | None = None) -> str | None:
    """``<content hash>/<file name>`` of a stored upload (:func:`save_upload`), None for any other path: how a link
    names an uploaded dataset without the machine's folders."""
    if not path:
        return None
    folder = ((home or pafo_home()) / UPLOADS).resolve()
    try:
        relative = Path(path).resolve().relative_to(folder)
    except ValueError:
        return None
    return relative.as_posix() if len(relative.parts) == 2 else None


def upload_from_ref(ref: str, home: Path | None = None) -> Path:
    """The stored upload a link names (``<content hash>/<file name>``), checked to be there with that content."""
    digest, _, name = str(ref).partition("/")
    if not re.fullmatch(r"[0-9a-f]{20}", digest) or not name or "/" in name or name in (".", ".."):
        raise PafoInputError(BAD_UPLOAD_REF.format(ref=ref))
    folder = (home or pafo_home()) / UPLOADS
    path = folder / digest / name
    if not path.is_file():
        raise PafoInputError(UPLOAD_GONE.format(name=name, ref=ref, folder=folder))
    if hashlib.sha256(path.read_bytes()).hexdigest()[:20] != digest:
        raise PafoInputError(UPLOAD_CHANGED.format(name=name, path=path))
    return path


def data_param(data: dict, home: Path | None = None) -> str | None:
    """The dataset as the URL keeps it (``?data=``), so a reload or a shared link opens it again: the fields that
    differ from the defaults as compact JSON, an upload by its content id (``{"upload": "<hash>/<name>"}``); None
    for the default synthetic data."""
    defaults = default_data_dict()
    changed = {k: v for k, v in known_fields(DataConfig, data).items() if defaults.get(k) != v}
    ref = upload_ref(changed.get("path"), home)
    if ref is not None:
        changed = {**{k: v for k, v in changed.items() if k != "path"}, UPLOAD_KEY: ref}
    return json.dumps(changed, separators=(",", ":"), sort_keys=True) if changed else None


def data_from_param(text: str, home: Path | None = None) -> dict:
    """The DataConfig dict of a ``?data=`` value (:func:`data_param`), validated; an upload must still be stored
    with the same content, and a local path must lie inside the app's data roots (:mod:`pafo.data_roots`). Raises
    :class:`PafoInputError` saying what is wrong."""
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise PafoInputError(BAD_DATA_PARAM.format(detail=f"{str(text)[:80]!r} is not a JSON object"))
    if UPLOAD_KEY in values:
        values = {**{k: v for k, v in values.items() if k != UPLOAD_KEY},
                  "path": str(upload_from_ref(values[UPLOAD_KEY], home))}
    config = dataclasses.asdict(dataclass_from_dict(DataConfig, {**default_data_dict(), **values}).validate())
    check_app_config(config)  # a link may name any path: the app reads only inside its data roots
    return config


def display_path(path: str | None) -> str:
    """How a data path is shown: an upload by its file name, a local file by its name, a hub id or URL as is."""
    if not path:
        return ""
    text = str(path)
    from .sources.files import is_remote

    return text if is_remote(text) else Path(text).name


def friendly_paths(message: str) -> str:
    """``message`` with every stored upload's internal path shortened to the uploaded file's name."""
    return _uploads_pattern().sub("", str(message))


def dataset_label(data: dict) -> str:
    """One short name of a DataConfig dict for the sidebar, forms and tables: "synthetic", "pairs: mine.csv"."""
    source = data.get("dataset", "?")
    return f"{source}: {display_path(data.get('path'))}" if source != "synthetic" and data.get("path") else source


def shares_text(shares: dict | None) -> str:
    """``KEY=V,...`` for a shares dict (rounded), the format of DataConfig.shares."""
    return ",".join(f"{k}={round(float(v), 4):g}" for k, v in (shares or {}).items())


# ------------------------------------------------------------------------------------------- experiments


def experiment_config(data: dict, groups: dict, seeds: str | list | None = None, **sections: dict | None):
    """A validated :class:`pafo.experiment.ExperimentConfig` from the pages' plain dicts: ``run``, ``train`` and
    the method sections (``pafo``, ...) by name, missing ones at their defaults; ``seeds`` as typed in a form
    ("0-2", "0,3,7"; blank: the dataset's one seed)."""
    from .experiment import ExperimentConfig

    values = {"data": data, "groups": groups, **{name: part or {} for name, part in sections.items()}}
    if seeds not in (None, "") and not (isinstance(seeds, str) and not seeds.strip()):
        values["seeds"] = seeds
    return ExperimentConfig.from_dict(values)


def seeds_text(seeds) -> str:
    """Seeds as a form shows them: [0, 1, 2, 5] → "0-2,5"."""
    seeds = list(seeds or [])
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if j == i else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def form_changes(values: dict, defaults: dict) -> list[tuple[str, Any, Any]]:
    """The ``(section.field, value, default)`` triples where experiment forms differ from their defaults."""
    return [(key, value, default) for key, value, default in
            ((k, v, flatten(defaults).get(k)) for k, v in flatten(values).items()) if value != default]


def demo_config(encoder: str = DEMO_ENCODER, seeds: str | None = None):
    """The one-click demo experiment: default synthetic data, baseline and PAFO, on ``seeds`` (default
    :data:`DEMO_SEEDS`, read when called)."""
    from .sources import DataConfig
    from .support import GroupConfig

    return experiment_config(dataclasses.asdict(DataConfig()), dataclasses.asdict(GroupConfig()),
                             run={"encoder": encoder, "methods": DEMO_METHODS}, seeds=seeds or DEMO_SEEDS)


# ------------------------------------------------------------------------------------------- runs


def run_seconds(record) -> float | None:
    """How long a run took (so far): from its worker's start to its end, the one duration every page and table
    shows (``None`` before it started)."""
    if record.started_at is None:
        return None
    end = record.finished_at or time.time()
    return max(0.0, end - record.started_at)


def live_caption(record, now: float | None = None) -> str:
    """The line under a running run's progress bar: how long it has waited or run, and when its results come."""
    now = time.time() if now is None else now
    if record.status == "queued" or record.started_at is None:
        return f"queued for {max(0.0, now - record.created_at):.0f} s: it starts when a worker is free"
    what = "its results appear" if record.kind == "audit" else "training curves and results appear"
    return f"running for {max(0.0, now - record.started_at):.0f} s · {what} here when it has finished"


def run_row(record) -> dict:
    """One row of the runs table for a :class:`pafo.registry.RunRecord`."""
    config = record.config or {}
    data, run = config.get("data") or {}, run_settings(config)
    source = dataset_label(data)
    return {
        "run": record.id,
        "status": record.status,
        "progress": round(float(record.progress), 3),
        "stage": record.stage,
        "label": record.label or "",
        "methods": run.methods if run else "",
        "encoder": run.encoder if run else "",
        "seeds": seeds_text(config.get("seeds") or [data.get("seed", 0)]),
        "dataset": f"{source} ({data.get('users', '?')} users)" if data.get("dataset") != "pairs" else source,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at)),
        "seconds": None if run_seconds(record) is None else round(run_seconds(record), 1),
        "reused": f"♻ {record.reused_from}" if record.reused_from else "",
        "parent": record.parent_id or "",
        "error": record.error or "",
    }


SINGLE_RUNS = "single runs"  # the run-picker group of the runs that are no sweep's cells


def run_groups(records: list) -> dict[str, list]:
    """The runs as the run pickers group them: :data:`SINGLE_RUNS` first (in the given order; left out when
    empty), then one group per sweep, named by its id, in the order the sweeps first appear (the registry lists
    newest first) and holding its cells in the order they were submitted (the sweep's grid order)."""
    groups: dict[str, list] = {SINGLE_RUNS: []}
    for record in records:
        sweep = record.parent_id if (record.parent_id or "").startswith(SWEEP_PREFIX) else None
        groups.setdefault(sweep or SINGLE_RUNS, []).append(record)
    for name, cells in groups.items():
        if name != SINGLE_RUNS:
            cells.sort(key=lambda r: (r.created_at, r.id))
    return {name: runs for name, runs in groups.items() if runs}


def group_of(groups: dict[str, list], run_id: str | None) -> str:
    """The group holding ``run_id`` (the first group when none does)."""
    return next((name for name, runs in groups.items() if any(r.id == run_id for r in runs)), next(iter(groups)))


def group_label(name: str, runs: list) -> str:
    """How a run picker names a group: ``single runs (3)`` or ``sweep-… · 4 cells``."""
    return f"{name} ({len(runs)})" if name == SINGLE_RUNS else f"{name} · {len(runs)} cell{'s' * (len(runs) != 1)}"


def short_label(record) -> str:
    """A run's label without its sweep's id in front (a cell's label is ``SWEEP_ID: params seed N``; the picker
    already names the sweep)."""
    label = record.label or ""
    prefix = f"{record.parent_id}: "
    return label[len(prefix):] if record.parent_id and label.startswith(prefix) else label


def runs_table(records) -> pd.DataFrame:
    """The runs table (newest first, as the registry lists them)."""
    columns = ["run", "status", "progress", "stage", "label", "methods", "encoder", "seeds", "dataset", "created",
               "seconds", "reused", "parent", "error"]
    return pd.DataFrame([run_row(r) for r in records], columns=columns)


def history_frame(epochs: list[dict]) -> pd.DataFrame:
    """Per-epoch registry rows as a long table for :func:`pafo.report.training_curves`."""
    rows = []
    for i, row in enumerate(e for e in epochs if "loss" in e):
        val = row.get("val") or {}
        rows.append({"step": i + 1, "stage": row.get("stage", "training"), "epoch": row.get("epoch"),
                     "loss": row.get("loss"), "val_overall": val.get("overall"), "val_majority": val.get("majority"),
                     "val_minority": val.get("minority")})
    return pd.DataFrame(rows, columns=["step", "stage", "epoch", "loss", "val_overall", "val_majority",
                                       "val_minority"])


def grouping_rule(groups: dict | None) -> tuple:
    """What decides who is in the minority: the estimator and the threshold, or the quantile when there is none."""
    config = GroupConfig(**known_fields(GroupConfig, groups))
    return (config.estimator, *config.cut())


def pareto_records(records: list, current, *, every_dataset: bool = False) -> list:
    """The finished runs a Pareto view of ``current`` compares: by default those on the same dataset fingerprint
    (same data and seeds) and grouping rule, since accuracies of other users or other groups are not comparable;
    ``every_dataset``: all of them. A run reused from another shows once (it is the same result)."""
    rule = grouping_rule((current.config or {}).get("groups"))
    kept, results = [], set()
    # A result shows once, under the current run if it is one of them, else under the run that trained it.
    for record in sorted(records, key=lambda r: (r.id != current.id, r.reused_from is not None)):
        if not every_dataset and (record.dataset_fingerprint != current.dataset_fingerprint
                                  or grouping_rule((record.config or {}).get("groups")) != rule):
            continue
        if record.result_path and record.result_path in results:
            continue
        results.add(record.result_path)
        kept.append(record)
    return kept


def metric_delta(value: float | None, reference: float | None, *, absolute: bool = False, lower_is_better=False,
                 unit: str = "pts", change: float | None = None) -> dict:
    """``st.metric``'s delta arguments for value − reference in points of a percentage (fractions in, one decimal).

    ``absolute`` compares sizes (|value| − |reference|), as a group gap must be judged: −18.8 is worse than −16.7.
    ``change`` overrides the difference (the paired delta, so a card and its verdict show the same number).
    Arrow and colour are explicit (the arrow shows the direction of the change, green/red whether it is better),
    and a change that rounds to 0.0 gets neither.
    """
    if change is None and (value is None or reference is None):
        return {"delta": None}
    if change is None:
        change = (abs(value) - abs(reference)) if absolute else (value - reference)
    points = round(100 * change, 1)
    prefix = "|gap| " if absolute else ""
    if points == 0:
        return {"delta": f"{prefix}0.0 {unit}", "delta_color": "gray", "delta_arrow": "off"}
    better = (points > 0) != lower_is_better
    return {"delta": f"{prefix}{points:+.1f} {unit}".replace("-", "−"), "delta_color": "green" if better else "red",
            "delta_arrow": "up" if points > 0 else "down"}


def pareto_points(results: list[tuple[Any, Any]]) -> pd.DataFrame:
    """Majority / minority accuracy of each (record, :class:`pafo.results.RunResult`) × method, for
    :func:`pafo.report.pareto_plot`."""
    rows = []
    for record, result in results:
        for name, metrics in result.methods.items():
            acc = metrics.accuracy
            if acc.get("majority") is None or acc.get("minority") is None:
                continue
            rows.append({"run_id": record.id, "label": record.label or "", "method": name,
                         "majority": acc["majority"], "minority": acc["minority"], "overall": acc.get("overall")})
    return pd.DataFrame(rows, columns=["run_id", "label", "method", "majority", "minority", "overall"])


# ------------------------------------------------------------------------------------------- users


def user_pairs_table(margins: pd.DataFrame, user: int, responses: pd.DataFrame | None,
                     methods: list[str]) -> pd.DataFrame:
    """One user's test pairs: prompt, chosen, rejected text, and per method the margin and whether it is right.

    ``margins`` is a run's test_margins.csv (user, chosen, rejected are indices; margin_<method> columns);
    without ``responses`` (the dataset could not be loaded) the texts are left as response indices.
    """
    rows = margins[margins["user"] == user]
    table = pd.DataFrame(index=rows.index)
    if responses is not None:
        chosen, rejected = rows["chosen"].to_numpy(), rows["rejected"].to_numpy()
        table["prompt"] = responses["prompt"].to_numpy()[chosen]
        table["chosen"] = responses["text"].to_numpy()[chosen]
        table["rejected"] = responses["text"].to_numpy()[rejected]
    else:
        table["prompt_id"] = rows["prompt_id"].to_numpy()
        table["chosen"] = rows["chosen"].astype(str).to_numpy()
        table["rejected"] = rows["rejected"].astype(str).to_numpy()
    for name in methods:
        column = f"margin_{name}"
        if column in rows:
            margin = rows[column].to_numpy(float)
            table[f"{name} margin"] = np.round(margin, 3)
            marks = np.asarray(["✗", "½", "✓"])[(2 * pair_correct(np.nan_to_num(margin))).astype(int)]
            table[f"{name} right"] = np.where(np.isnan(margin), "–", marks)  # "–": an audit with --allow-missing
    return table.reset_index(drop=True)
