"""The ``pafo`` command line, built from the same dataclasses the app and the run registry use.

Bad input exits with code 2 and one line on stderr (``pafo: error: ...``), a fault of the machine (registry
locked or corrupt, disk full, unwritable home) with code 3 (see :mod:`pafo.errors`). Output paths are checked
before any work (:func:`check_outputs`, one check for every command: writable, never an input, never inside the
run registry, never twice); nothing is written half-way because every output file is written atomically, and an
``--out-dir`` is published whole: it replaces the folder, never merges into it, and only a folder that is empty or
holds exactly an earlier run's files (:func:`pafo.manifest.replaceable_problem`) is ever replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import add_dataclass_arguments, dataclass_from_namespace
from .device import add_device_argument, resolve_device, with_device
from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_INPUT,
    EXIT_INTERNAL,
    PafoEnvironmentError,
    PafoInputError,
)
from .method_configs import RunSettings
from .paths import atomic_write_text, home_path, is_inside
from .slices import SliceSettings
from .sources import DataConfig, load_dataset
from .support import GROUP_CUTS, GroupConfig, estimate_support, resolve_estimator, support_table

__all__ = ["add_data_arguments", "build_parser", "data_config_from_args", "group_config_from_args", "main"]

INTERNAL_ERROR = "pafo: internal error: {error} (set PAFO_DEBUG=1 to see the traceback)"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell tool that loses its reader (`| head`) reports
OUT_IS_FOLDER = "{flag} {path}: is a folder; give a file name, e.g. {path}/out{suffix}"
OUT_NOT_REGULAR = "{flag} {path}: exists and is not a regular file; give the name of a new or ordinary file"
OUT_PARENT_NOT_FOLDER = "{flag} {path}: {parent} is a file, not a folder; choose a path inside a folder"
OUT_UNWRITABLE = "{flag} {path}: cannot write in {parent} ({reason}); choose a writable folder"
OUT_DIR_IS_FILE = "--out-dir {path}: is a file, not a folder; give a new folder (a run's folder is replaced whole)"
OUT_DIR_FOREIGN = ("--out-dir {path}: {reason}; give a new or empty folder, or an earlier run's --out-dir that holds "
                   "only that run's files (it is replaced whole)")
OUT_DIR_CHANGED = ("--out-dir {path}: changed while the run trained and now {reason}; it was left as it is and the "
                   "run was not saved: give a new folder and run again")
OUT_IN_REGISTRY = ("{flag} {path}: is inside the run registry {runs}, whose folders only background runs write; "
                   "choose a path outside it")
OUT_IS_INPUT = "{flag} {path}: is the input {input} of this command, which it would overwrite; choose another path"
OUT_IN_INPUT = "{flag} {path}: is a file of {input}, which this command reads; choose a path outside it"
OUT_TWICE = "{flag} {path}: is also the path of {other}; give each output its own path"
OUT_IN_OUT_DIR = "{flag} {path}: is inside --out-dir {out_dir}, which is replaced whole; choose a path outside it"
OUT_DIR_HOLDS_INPUT = "--out-dir {path}: holds the input {input} of this command and would be replaced whole; " \
                      "choose another folder"
ENV_DISK_FULL = "disk full while writing {file}: free space and retry"
ENV_OS_ERROR = "cannot access {file} ({reason}): check the disk and its permissions, then retry"
SEED_AND_SEEDS = "--seed and --seeds: give one of them (--seed N runs the one seed N, like --seeds N)"
WROTE = "pafo: wrote {files}"
CWD_GONE = ("the current folder no longer exists (deleted or moved away); cd to an existing folder and run the "
            "command again")
SCORED = "{n} rows scored with {method} ({unknown} of unknown users, scored with the shared reward)"
PERSONALISED = "; {users} new users personalised from their {pairs} pairs"
INPUT_TOO_DEEP = ("a file given (or one in a run folder it names) nests JSON too deeply to read; check the JSON "
                  "files of this command")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags shared by support, embed, experiment and runs start."""
    add_dataclass_arguments(parser, DataConfig)
    groups = parser.add_argument_group("GroupConfig", GroupConfig.__doc__)
    # The two cuts of the grouping rule exclude each other; flags, defaults, bounds and help come from the fields.
    add_dataclass_arguments(parser, GroupConfig, include=GROUP_CUTS, group=groups.add_mutually_exclusive_group())
    add_dataclass_arguments(parser, GroupConfig, exclude=GROUP_CUTS, group=groups)


def given_options(args: argparse.Namespace, sections: dict[str, type]) -> list[str]:
    """The ``section.field`` keys of the options given on the command line (the others were left at their
    defaults: argparse keeps them out of the namespace)."""
    given = vars(args)
    return [f"{name}.{field.name}" for name, cls in sections.items() for field in dataclasses.fields(cls)
            if field.name in given and field.metadata.get("cli") is not False]


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The data flags as a DataConfig; a flag the chosen source does not read is refused (exit 2), e.g.
    ``--prompts`` with ``--dataset dsp``."""
    from .effects import check_effective

    config = dataclass_from_namespace(DataConfig, args).validate()
    check_effective({"data": dataclasses.asdict(config)}, given_options(args, {"data": DataConfig}))
    return config


def group_config_from_args(args: argparse.Namespace) -> GroupConfig:
    return dataclass_from_namespace(GroupConfig, args).validate()


def _write_outputs(args: argparse.Namespace, payload: dict, csv_frame=None, summary: str | None = None) -> None:
    """Write --json / --csv atomically, or print the JSON when no file was asked for.

    Files written get one line on stderr (what was written, and ``summary``), so a run with --json is not silent.
    """
    written = []
    if getattr(args, "json", None):
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
        written.append(args.json)
    if getattr(args, "csv", None) and csv_frame is not None:
        atomic_write_text(args.csv, csv_frame.to_csv(index=False))
        written.append(args.csv)
    if not getattr(args, "json", None):
        print(json.dumps(payload, indent=2))
    if written:
        print(WROTE.format(files=", ".join(map(str, written))) + (f": {summary}" if summary else ""), file=sys.stderr)


def support_report(dataset, group_config: GroupConfig, *, seed: int = 0, encoder: str | None = None,
                   embeddings=None) -> tuple[dict, object]:
    """The ``pafo support`` JSON and per-user table for a loaded dataset; the model estimator reads the features
    of ``encoder`` (a run's ``--encoder``) unless ``embeddings`` are given."""
    estimator = resolve_estimator(dataset, group_config.estimator)
    support = estimate_support(dataset, estimator, embeddings=embeddings, encoder=encoder, seed=seed)
    groups = group_config.apply(support.user_support)
    payload = {"dataset": dataset.summary(), "support": support.summary(), "groups": groups.summary()}
    if estimator == "model":
        payload["support"]["encoder"] = encoder
    return payload, support_table(dataset, support, groups)


def cmd_support(args: argparse.Namespace) -> int:
    from .attributes import attribute_columns
    from .slices import check_slicings, support_slices

    data_config = data_config_from_args(args)
    slicing = dataclass_from_namespace(SliceSettings, args).validate()
    dataset = load_dataset(data_config)
    check_slicings(slicing, attribute_columns(dataset))
    payload, table = support_report(dataset, group_config_from_args(args), seed=data_config.seed,
                                    encoder=dataclass_from_namespace(RunSettings, args).encoder)
    table = table.join(dataset.users[attribute_columns(dataset)].drop(columns=["dominant"], errors="ignore"))
    if slicing.slice_by:
        payload["slices"] = support_slices(table, slicing.slicings())
    _write_outputs(args, payload, table)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .encoders import embed_texts
    from .features import dataset_texts

    device = resolve_device(args.device)
    dataset = load_dataset(data_config_from_args(args))
    encoder = dataclass_from_namespace(RunSettings, args).encoder
    result = embed_texts(dataset_texts(dataset), encoder, cache=not args.no_cache, progress_bar=True, device=device)
    payload = {"encoder": result.encoder, "dim": result.dim, "n_texts": result.n_texts, "device": device,
               "seconds": round(result.seconds, 3),
               "texts_per_second": round(result.n_texts / result.seconds, 1) if result.seconds > 0 else None,
               "cache_hits": result.cache_hits}
    _write_outputs(args, payload)
    return 0


def _data_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand over one dataset and the run's encoder (``support``, ``embed``)."""
    parser = sub.add_parser(name, help=help_text)
    add_data_arguments(parser)
    add_dataclass_arguments(parser, RunSettings, include=("encoder",))
    return parser


def _add_support(sub) -> None:
    parser = _data_command(sub, "support", "support rates and majority/minority groups of a dataset")
    add_dataclass_arguments(parser, SliceSettings)
    parser.add_argument("--json", metavar="OUT", help="write the summary JSON here")
    parser.add_argument("--csv", metavar="OUT", help="write one row per user here")
    parser.set_defaults(handler=cmd_support, output_files=("json", "csv"), input_paths=("path",))


def _add_embed(sub) -> None:
    parser = _data_command(sub, "embed", "embed a dataset's texts into the disk cache")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embeddings cache")
    add_device_argument(parser)
    parser.add_argument("--json", metavar="OUT", help="write timing JSON here")
    parser.set_defaults(handler=cmd_embed, output_files=("json",), input_paths=("path",))


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``pafo experiment`` (and ``pafo runs start``), built from the experiment's dataclasses."""
    from .method_configs import RunSettings, TrainConfig, method_sections

    add_data_arguments(parser)
    parser.add_argument("--seeds", metavar="LIST", default=argparse.SUPPRESS,
                        help="run every method once per run seed and pool them, e.g. 0-4 or 0,3,7 (default: the "
                             "one seed of --seed); adds paired comparisons with a verdict per method")
    for cls in (RunSettings, TrainConfig, *method_sections().values(), SliceSettings):
        add_dataclass_arguments(parser, cls)
    add_device_argument(parser)


def experiment_config_from_args(args: argparse.Namespace, *, check_effect: bool = True):
    """An ``ExperimentConfig`` from the flags; local data paths are made absolute for background workers.

    A flag that cannot change this experiment's result is refused (exit 2, one line saying what would make it
    matter: ``--lambda has no effect with --student wide …``); ``check_effect=False`` leaves that to the caller
    (``pafo sweep`` checks the flags against every cell of its grid)."""
    from .effects import SECTIONS, check_effective
    from .experiment import ExperimentConfig
    from .method_configs import RunSettings, TrainConfig, method_sections

    data = dataclass_from_namespace(DataConfig, args).validate()
    if data.path and Path(data.path).exists():
        data.path = str(Path(data.path).resolve())
    seeds = getattr(args, "seeds", None)
    if seeds is not None and hasattr(args, "seed"):
        raise PafoInputError(SEED_AND_SEEDS)
    config = ExperimentConfig(data=data, groups=group_config_from_args(args),
                              run=dataclass_from_namespace(RunSettings, args),
                              train=dataclass_from_namespace(TrainConfig, args),
                              **{name: dataclass_from_namespace(cls, args) for name, cls in method_sections().items()},
                              slices=dataclass_from_namespace(SliceSettings, args), seeds=seeds).validate()
    if check_effect:
        check_effective(config, given_options(args, SECTIONS))
    return config


def check_encoder(config) -> None:
    """The encoder resolves (a name, a local folder or a cached model id) before any data is embedded."""
    from .encoders import get_encoder

    get_encoder(config.run.encoder)


def preflight(config):
    """What ``pafo experiment`` refuses before training, checked before a background run is queued: the options
    (already validated), the data (loaded and checked) and the encoder. A bad run is then exit 2 at
    ``pafo runs start``, not a failed run later."""
    from .attributes import attribute_columns
    from .slices import check_slicings

    check_slicings(config.slices, attribute_columns(load_dataset(config.data)))
    check_encoder(config)
    return config


@contextlib.contextmanager
def staged_out_dir(out_dir: str | None):
    """A temporary sibling of --out-dir (``.NAME.XXXX``) that :func:`_publish` swaps in once the experiment
    succeeded; on every failure (an exception, a full disk, Ctrl-C) it is removed, and a file-system error inside
    it names the file under --out-dir it was writing."""
    if not out_dir:
        yield None
        return
    target = Path(out_dir).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
    except OSError as exc:
        if exc.filename and is_inside(exc.filename, staging):
            exc.filename = str(Path(out_dir) / Path(exc.filename).resolve().relative_to(staging.resolve()))
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was published


def _publish(staging: Path, out_dir: str, result) -> None:
    """Record the artifacts' checksums and the config and data they are the result of, then swap the staged
    folder in for --out-dir: files an earlier run left there (another method's weights) can never mix with this
    run's."""
    from .manifest import write_manifest
    from .registry import config_hash

    write_manifest(staging, config_hash=config_hash(result.config), fingerprint=result.fingerprint)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; the published folder gets the usual mode
    target = Path(out_dir).resolve()
    replaced = target.with_name(f".{target.name}.replaced-{secrets.token_hex(4)}")
    if target.exists() or target.is_symlink():
        os.rename(target, replaced)
        _check_still_replaceable(replaced, target, out_dir)
    try:
        os.rename(staging, target)
    except BaseException:
        if replaced.exists():
            os.rename(replaced, target)
        raise
    if replaced.is_dir() and not replaced.is_symlink():
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        replaced.unlink(missing_ok=True)


def _check_still_replaceable(replaced: Path, target: Path, out_dir: str) -> None:
    """--out-dir was checked before training; a file put there since (the run may take hours) is the user's: put
    the folder back untouched and refuse, rather than delete it with the earlier run."""
    from .manifest import replaceable_problem

    problem = replaceable_problem(replaced) if replaced.is_dir() and not replaced.is_symlink() else None
    if problem is not None:
        os.rename(replaced, target)
        raise PafoInputError(OUT_DIR_CHANGED.format(path=out_dir, reason=problem))


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written before any work is done (not after an hour of training)."""
    target = Path(path)
    if target.is_dir():
        raise PafoInputError(OUT_IS_FOLDER.format(flag=flag, path=path, suffix=".csv" if "csv" in flag else ".json"))
    if target.exists() and not target.is_file():
        raise PafoInputError(OUT_NOT_REGULAR.format(flag=flag, path=path))
    _check_writable_parent(target, flag)


def _check_writable_parent(target: Path, flag: str) -> None:
    """The nearest existing folder above ``target`` must be a folder in which a file can be created."""
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise PafoInputError(OUT_PARENT_NOT_FOLDER.format(flag=flag, path=target, parent=parent))
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".pafo-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PafoInputError(OUT_UNWRITABLE.format(flag=flag, path=target, parent=parent,
                                                   reason=exc.strerror or exc)) from None


def check_out_dir(path: str) -> None:
    """--out-dir must be new, empty or exactly an earlier run's folder (it is replaced whole), in a writable
    place: a folder that merely holds a result.json or a manifest.json of someone else's is never replaced."""
    from .manifest import replaceable_problem

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise PafoInputError(OUT_DIR_IS_FILE.format(path=path))
    if target.is_dir() and (reason := replaceable_problem(target)) is not None:
        raise PafoInputError(OUT_DIR_FOREIGN.format(path=path, reason=reason))
    _check_writable_parent(target, "--out-dir")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def declared_outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(flag, path) of every output a command was given (``set_defaults(output_files=...)`` and ``--out-dir``)."""
    outputs = [(_flag(name), Path(getattr(args, name))) for name in getattr(args, "output_files", ())
               if getattr(args, name, None)]
    if getattr(args, "out_dir", None):
        outputs.append(("--out-dir", Path(args.out_dir)))
    return outputs


def declared_inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(flag, path) of every local file or folder a command reads (``set_defaults(input_paths=...)``; ``sources``
    are the audit's NAME=PATH pairs); names that are no local path (a hub id) are left out."""
    found = []
    for name in getattr(args, "input_paths", ()):
        value = getattr(args, name, None)
        if name == "sources":
            found += [(f"--{kind} {text}", Path(text.partition("=")[2].strip()).expanduser())
                      for kind, text in value or [] if text.partition("=")[2].strip()]
        elif value:
            found.append((f"{_flag(name)} {value}", Path(value).expanduser()))
    return [(flag, path) for flag, path in found if path.exists()]


def _same_file(a: Path, b: Path) -> bool:
    """The same path once symlinks are resolved, or the same inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_conflicts(outputs: list[tuple[str, Path]], inputs: list[tuple[str, Path]]) -> None:
    """The rules every command's outputs follow, before any work: never inside the run registry
    (``$PAFO_HOME/runs``, written by background runs only), never an input file or a file of an input folder (a
    run or model folder: a new file beside them is fine), never the path of another output, never inside --out-dir
    (it is replaced whole), and an --out-dir never holds an input."""
    runs = home_path() / "runs"
    out_dir = next((path for flag, path in outputs if flag == "--out-dir"), None)
    for i, (flag, path) in enumerate(outputs):
        if is_inside(path, runs):
            raise PafoInputError(OUT_IN_REGISTRY.format(flag=flag, path=path, runs=runs))
        for other_flag, other in outputs[:i]:
            if _same_file(path, other):
                raise PafoInputError(OUT_TWICE.format(flag=flag, path=path, other=other_flag))
        if out_dir is not None and flag != "--out-dir" and is_inside(path, out_dir):
            raise PafoInputError(OUT_IN_OUT_DIR.format(flag=flag, path=path, out_dir=out_dir))
        for source_flag, source in inputs:
            if _same_file(path, source):
                raise PafoInputError(OUT_IS_INPUT.format(flag=flag, path=path, input=source_flag))
            if source.is_dir() and path.exists() and is_inside(path, source):
                raise PafoInputError(OUT_IN_INPUT.format(flag=flag, path=path, input=source_flag))
            if flag == "--out-dir" and is_inside(source, path):
                raise PafoInputError(OUT_DIR_HOLDS_INPUT.format(path=path, input=source_flag))


def check_outputs(args: argparse.Namespace) -> None:
    """The one output check of every command: the declared outputs against each other and the inputs, then each
    output path on its own (a writable file, or for --out-dir a folder that may be replaced)."""
    check_output_conflicts(declared_outputs(args), declared_inputs(args))
    for name in getattr(args, "output_files", ()):
        if getattr(args, name, None):
            check_output_file(getattr(args, name), _flag(name))
    if getattr(args, "out_dir", None):
        check_out_dir(args.out_dir)


def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiment import per_user_csv_text, run_experiment, summary_line

    config = experiment_config_from_args(args)
    check_encoder(config)
    device = resolve_device(args.device)
    if args.ray_address:  # before any training: ray installed, the address well formed and answering
        from .sweep import _import_ray, check_ray_address

        _import_ray()
        check_ray_address(args.ray_address)
    with staged_out_dir(args.out_dir) as staging:
        bar = _progress_bar()
        try:
            result = run_experiment(config, out_dir=staging, progress=bar, device=device,
                                    ray_address=args.ray_address)
        finally:
            bar.close()
        if staging:
            _publish(staging, args.out_dir, result)
    if args.per_user_csv:
        atomic_write_text(args.per_user_csv, per_user_csv_text(result))
    _write_outputs(args, result.to_json() if args.json else _headline(result), summary=summary_line(result))
    return 0


def _headline(result) -> dict:
    """What stdout shows without --json: accuracy and unfairness per method (means over the seeds) and, for
    every method but the baseline, its paired comparison with the baseline (``vs_baseline``)."""
    comparisons = result.comparisons
    return {name: {"accuracy": m.accuracy, "unfairness": m.unfairness,
                   **({"vs_baseline": comparisons[name].to_json()} if name in comparisons else {})}
            for name, m in result.methods.items()}


class _progress_bar:  # noqa: N801 - used like a function
    """A tqdm bar on stderr fed by the experiment's progress callback."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc="pafo", unit="%", file=sys.stderr, disable=not sys.stderr.isatty(),
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def __call__(self, fraction: float, stage: str, metrics: dict | None = None) -> None:
        self.bar.n = round(100 * fraction)
        self.bar.set_postfix_str(stage, refresh=True)

    def close(self) -> None:
        self.bar.close()


def _add_experiment(sub) -> None:
    parser = sub.add_parser("experiment", help="train and compare methods (default: baseline,pafo)")
    add_experiment_arguments(parser)
    parser.add_argument("--json", metavar="OUT", help="write the full result JSON here")
    parser.add_argument("--per-user-csv", metavar="OUT", help="write per-user accuracies here")
    parser.add_argument("--out-dir", metavar="DIR", help="write weights (safetensors), result and tables here; "
                                                         "an earlier run's folder is replaced whole")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="run PAFO's EM restarts as Ray tasks on the cluster at ADDR (HOST:PORT, "
                             "ray://HOST:PORT, auto; local: a Ray started here); the same result as without")
    parser.set_defaults(handler=cmd_experiment, output_files=("json", "per_user_csv"), input_paths=("path",))


def cmd_score(args: argparse.Namespace) -> int:
    from .scoring import load_scoring_model, personalise, read_triples, read_user_pairs, score_triples

    device = resolve_device(args.device)
    run_dir, binding = (args.run_dir, None) if args.run_dir else _registry_run(args.run)
    scoring = load_scoring_model(run_dir, args.method, binding=binding)
    triples = read_triples(args.input)
    new_pairs = read_user_pairs(args.user_pairs) if args.user_pairs else None
    if new_pairs is not None:
        scoring = personalise(scoring, new_pairs, device=device)
    scored = score_triples(scoring, triples, progress_bar=True, device=device)
    unknown = int((~scored["known_user"]).sum())
    if args.csv:
        atomic_write_text(args.csv, scored.to_csv(index=False))
    if args.json:
        summary = {"run_dir": str(run_dir), "method": args.method, "encoder": scoring.encoder, "n_rows": len(scored),
                   "n_unknown_users": unknown, "n_personalised_users": len(scoring.personalised),
                   "rows": scored.astype(object).where(scored.notna(), None).to_dict(orient="records")}
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    written = [path for path in (args.csv, args.json) if path]
    if written:
        done = SCORED.format(n=len(scored), method=args.method, unknown=unknown)
        if new_pairs is not None:
            done += PERSONALISED.format(users=len(scoring.personalised), pairs=len(new_pairs))
        print(WROTE.format(files=", ".join(map(str, written))) + ": " + done, file=sys.stderr)
    else:
        sys.stdout.write(scored.to_csv(index=False))
    return 0


def _registry_run(run_id: str) -> tuple[Path, tuple[str, str]]:
    """The folder holding a succeeded background run's result.json and weights (a reused run: the original's), and
    the (config hash, dataset fingerprint) its manifest must name: the run's own."""
    from .registry import RunRegistry
    from .scoring import MSG_NOT_A_RUN

    registry = RunRegistry()
    record = registry.get(run_id)
    result = registry.result_file(record) if record.result_path else None
    if result is None:
        raise PafoInputError(MSG_NOT_A_RUN.format(path=f"run {run_id} ({record.status})"))
    return result.parent, (record.config_hash, record.dataset_fingerprint)


def _add_score(sub) -> None:
    parser = sub.add_parser("score", help="score (prompt, response, user) triples with a trained run's model")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", metavar="DIR", help="the --out-dir of a `pafo experiment`")
    which.add_argument("--run", metavar="RUN_ID", help="a succeeded background run (`pafo runs list`)")
    parser.add_argument("--method", default="pafo", help="which of the run's models scores (default: pafo)")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="CSV, JSONL, JSON or Parquet with columns user_id, prompt, response")
    parser.add_argument("--user-pairs", metavar="FILE",
                        help="new users' own labelled pairs (CSV, JSONL, JSON or Parquet with user_id, prompt, chosen, "
                             "rejected): each user is personalised from them, the run's models frozen, before scoring")
    parser.add_argument("--csv", metavar="OUT", help="write the rows with reward and known_user here")
    parser.add_argument("--json", metavar="OUT", help="write a summary with every scored row here")
    add_device_argument(parser)
    parser.set_defaults(handler=cmd_score, output_files=("csv", "json"),
                        input_paths=("input", "run_dir", "user_pairs"))


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit_config_from_args, headline, pairs_template, run_audit, verdict_line, write_table
    from .experiment import per_user_csv_text

    if args.export_pairs:  # the file a model must score, then stop
        write_table(pairs_template(load_dataset(data_config_from_args(args)), getattr(args, "split", "auto")),
                    args.export_pairs)
        return 0
    config = audit_config_from_args(args, data_config_from_args(args), group_config_from_args(args))
    bar = _progress_bar()
    try:
        result = run_audit(config, progress=bar)
    finally:
        bar.close()
    if args.per_user_csv:
        atomic_write_text(args.per_user_csv, per_user_csv_text(result))
    _write_outputs(args, result.to_json() if args.json else headline(result), summary=verdict_line(result) or None)
    return 0


def _add_audit(sub) -> None:
    from .audit import AuditSettings

    parser = sub.add_parser("audit", help="measure personalized reward bias from any model's predictions")
    add_data_arguments(parser)
    add_dataclass_arguments(parser, AuditSettings)
    add_dataclass_arguments(parser, SliceSettings)
    sources = parser.add_argument_group("models", "each audited model, in order (the first is the default reference)")
    sources.add_argument("--predictions", dest="sources", action="append", metavar="NAME=FILE",
                         type=lambda text: ("predictions", text),
                         help="margins of a model: CSV/JSONL/JSON/Parquet with user_id, prompt, chosen, rejected and "
                              "margin (or score_chosen, score_rejected), optional pair_id; or a `pafo experiment "
                              "--out-dir` (NAME = one of its methods)")
    sources.add_argument("--model", dest="sources", action="append", metavar="NAME=FOLDER",
                         type=lambda text: ("model", text),
                         help="a local transformers sequence-classification reward model to score the pairs with")
    parser.add_argument("--json", metavar="OUT", help="write the full result JSON here")
    parser.add_argument("--per-user-csv", metavar="OUT", help="write per-user accuracies (acc_NAME) here")
    parser.add_argument("--export-pairs", metavar="OUT", help="only write the evaluated pairs (user_id, prompt, "
                                                              "chosen, rejected, pair_id) for a model to score")
    parser.set_defaults(handler=cmd_audit, output_files=("json", "per_user_csv", "export_pairs"),
                        input_paths=("path", "sources"))


RAY_ADDRESS_WITHOUT_RAY = "--ray-address: only used with --backend ray (add --backend ray, or leave it out)"
SWEEP_FAILED = ("pafo: {n} of {total} sweep cells did not succeed (see `cells` in the sweep JSON and "
                "`pafo runs show ID`)")
SWEEP_DIVERGED = ("pafo: error: {n} of {total} sweep cells failed, the others finished: {label} ({run_id}): {error} "
                  "(every failed cell: `cells` in the sweep JSON)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .config import check_range
    from .registry import RunRegistry
    from .sweep import parse_grid, run_sweep

    if args.max_concurrent is not None:
        check_range("--max-concurrent", args.max_concurrent, integer=True, ge=1)
    if args.ray_address and args.backend != "ray":
        raise PafoInputError(RAY_ADDRESS_WITHOUT_RAY)
    from .effects import SECTIONS

    base = preflight(experiment_config_from_args(args, check_effect=False))
    resolve_device(args.device)  # refused here (exit 2), not by every cell's worker
    grid = parse_grid(args.grid, base, explicit=given_options(args, SECTIONS))
    registry = RunRegistry(max_concurrent=args.max_concurrent)

    def report(cell, done: int, total: int) -> None:
        print(f"pafo: cell {done}/{total} {cell.record.status}: {cell.label} ({cell.record.id})", file=sys.stderr)

    result = run_sweep(base, grid, registry=registry, force=args.force, pareto_method=args.pareto_method,
                       backend=args.backend, ray_address=args.ray_address, on_cell=report, device=args.device)
    _write_outputs(args, result.to_json() if args.json else _sweep_headline(result),
                   summary=f"{len(result.cells)} cells, Pareto front: points {result.pareto_front}")
    return _sweep_outcome(result.cells)


def _sweep_outcome(cells: list) -> int:
    """0 when every cell succeeded; 2 with the first failure's reason when every failed cell diverged (its grid
    values are input to fix), else 1."""
    from .registry import SUCCEEDED
    from .sweep import diverged

    failed = [cell for cell in cells if cell.status != SUCCEEDED]
    if not failed:
        return 0
    if all(diverged(cell.error) for cell in failed):
        first = failed[0]
        label = " ".join(f"{k}={v}" for k, v in first.params.items()) + f" seed {first.seed}"
        print(_one_line(SWEEP_DIVERGED.format(n=len(failed), total=len(cells), label=label, run_id=first.run_id,
                                              error=first.error)), file=sys.stderr)
        return EXIT_INPUT
    print(SWEEP_FAILED.format(n=len(failed), total=len(cells)), file=sys.stderr)
    return EXIT_INTERNAL


def _sweep_headline(result) -> dict:
    """stdout without --json: each point's params, the Pareto method's accuracies and its verdict."""
    method = result.pareto_method
    rows = []
    for point in result.points:
        block = (point.methods or {}).get(method)
        comparison = (point.comparisons or {}).get(method)
        row = {"params": point.params, "n_seeds": point.n_seeds, "accuracy": block and block.accuracy,
               "verdict": comparison and comparison.verdict}
        if point.unseen is not None and method in point.unseen.comparisons:
            row["unseen_verdict"] = {k: c.verdict for k, c in point.unseen.comparisons[method].items()}
        rows.append(row)
    return {"sweep_id": result.sweep_id, "pareto_method": method, "points": rows, "pareto_front": result.pareto_front}


def _add_sweep(sub) -> None:
    from .config import parse_int
    from .sweep import BACKENDS

    parser = sub.add_parser("sweep", help="run a grid of what-ifs × seeds as registry runs; Pareto front of points")
    add_experiment_arguments(parser)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--grid", action="append", metavar="SECTION.FIELD=V1,V2", required=True,
                       help="an option of the experiment and its values, e.g. pafo.lam=0,0.5,1 or "
                            "groups.minority_quantile=0.1,0.2; repeat for more keys (the grid is their product)")
    sweep.add_argument("--backend", choices=BACKENDS, default="local",
                       help="where cells run: local = the run registry's worker processes (default); ray = one Ray "
                            "task per cell (needs $PAFO_HOME on a file system the Ray nodes share)")
    sweep.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray with this machine's cores)")
    sweep.add_argument("--max-concurrent", type=parse_int, default=None, metavar="N",
                       help="local backend: cells running at once (default: $PAFO_MAX_CONCURRENT or 1)")
    sweep.add_argument("--pareto-method", default=None, metavar="METHOD",
                       help="the method whose accuracies the Pareto front compares (default: the first method "
                            "that is not the baseline)")
    sweep.add_argument("--force", action="store_true", help="retrain cells that already finished")
    parser.add_argument("--json", metavar="OUT", help="write the sweep JSON (grid, cells, points, pareto_front) here")
    parser.set_defaults(handler=cmd_sweep, output_files=("json",), input_paths=("path",))


def _add_runs(sub) -> None:
    from .runs_cli import add_runs_commands

    def fingerprint_of(config: dict) -> str:
        from .experiment import ExperimentConfig

        return ExperimentConfig.from_dict(config).fingerprint()

    def config_of(args: argparse.Namespace) -> dict:
        resolve_device(args.device)  # `--device cuda` without CUDA: exit 2 now, not a failed run later
        return with_device(preflight(experiment_config_from_args(args)).to_dict(), args.device)

    add_runs_commands(sub, add_experiment_arguments, config_of, fingerprint_of)


COMMANDS: list[Callable] = [_add_support, _add_embed, _add_experiment, _add_score, _add_audit, _add_runs, _add_sweep]


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pafo", description="PAFO Studio: find and fix personalized reward bias.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _environment_message(exc: OSError) -> str:
    """A file-system failure (full disk, read-only or vanished folder) as one line naming the file."""
    file = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ENV_DISK_FULL.format(file=file)
    return ENV_OS_ERROR.format(file=file, reason=exc.strerror or exc)


def _silence_stdout() -> None:
    """After a BrokenPipeError (`pafo runs list | head`), point stdout at /dev/null so the interpreter's final
    flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass


def _working_directory_exists() -> bool:
    """Whether the current folder exists: torch's bundled oneMKL calls getcwd() when it loads and ends the process
    with "Intel oneMKL FATAL ERROR" if the folder was deleted (and relative paths would mean nothing anyway)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code says how it ended (0 ok, 1 bug, 2 bad input, 3 environment fault)."""
    if not _working_directory_exists():  # before the parser, whose sweep flags import torch
        print(f"pafo: error: {CWD_GONE}", file=sys.stderr)
        return EXIT_INPUT
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not by the interpreter at exit
        return code
    except PafoEnvironmentError as exc:
        print(f"pafo: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except PafoInputError as exc:
        print(f"pafo: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except RecursionError:  # JSON nested too deeply in a file a reader did not route through pafo.jsonio
        print(f"pafo: error: {INPUT_TOO_DEEP}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("pafo: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not the input: a full disk, a folder that vanished or turned read-only
        if os.environ.get("PAFO_DEBUG"):
            raise
        print(f"pafo: error: {_one_line(_environment_message(exc))}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("PAFO_DEBUG"):
            raise
        print(_one_line(INTERNAL_ERROR.format(error=f"{type(exc).__name__}: {exc}")), file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
