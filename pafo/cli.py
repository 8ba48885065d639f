"""The ``pafo`` command line, built from the same dataclasses the app and the run registry use.

Bad input exits with code 2 and one line on stderr (``pafo: error: ...``); nothing is written half-way because
every output file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from .config import add_dataclass_arguments, dataclass_from_namespace
from .errors import PafoInputError
from .paths import atomic_write_text
from .sources import DataConfig, load_dataset
from .support import GroupConfig, estimate_support, resolve_estimator, support_deciles

__all__ = ["main", "build_parser", "add_data_arguments", "data_config_from_args", "group_config_from_args"]

INTERNAL_ERROR = "pafo: internal error: {error} (set PAFO_DEBUG=1 to see the traceback)"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags shared by support, embed, experiment and runs start."""
    add_dataclass_arguments(parser, DataConfig)
    groups = parser.add_argument_group("GroupConfig", GroupConfig.__doc__)
    which = groups.add_mutually_exclusive_group()
    which.add_argument("--minority-quantile", dest="minority_quantile", type=float, default=argparse.SUPPRESS,
                       help="minority = users at or below this quantile of support rate (default: 0.2)")
    which.add_argument("--minority-threshold", dest="minority_threshold", type=float, default=argparse.SUPPRESS,
                       help="minority = users at or below this absolute support rate")
    groups.add_argument("--estimator", dest="estimator", choices=("auto", "exact", "colabel", "model"),
                        default=argparse.SUPPRESS, help="support-rate estimator (default: auto)")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    return dataclass_from_namespace(DataConfig, args).validate()


def group_config_from_args(args: argparse.Namespace) -> GroupConfig:
    return dataclass_from_namespace(GroupConfig, args).validate()


def _write_outputs(args: argparse.Namespace, payload: dict, csv_frame=None) -> None:
    """Write --json / --csv atomically, or print the JSON when no file was asked for."""
    if getattr(args, "json", None):
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    if getattr(args, "csv", None) and csv_frame is not None:
        atomic_write_text(args.csv, csv_frame.to_csv(index=False))
    if not getattr(args, "json", None):
        print(json.dumps(payload, indent=2))


def support_report(dataset, group_config: GroupConfig, *, seed: int = 0, embeddings=None) -> tuple[dict, object]:
    """The ``pafo support`` JSON and per-user table for a loaded dataset."""
    support = estimate_support(dataset, group_config.estimator, embeddings=embeddings, seed=seed)
    groups = group_config.apply(support.user_support)
    table = dataset.users[["user_id"]].assign(group=groups.groups, support_rate=support.user_support)
    table = table.join(dataset.user_pair_counts())
    table["decile"] = support_deciles(support.user_support)
    payload = {"dataset": dataset.summary(), "support": support.summary(), "groups": groups.summary()}
    return payload, table


def _model_embeddings(dataset, args: argparse.Namespace):
    from .features import response_features

    return response_features(dataset, encoder=getattr(args, "encoder", None) or "tfidf").features


def cmd_support(args: argparse.Namespace) -> int:
    group_config = group_config_from_args(args)
    dataset = load_dataset(data_config_from_args(args))
    group_config.estimator = resolve_estimator(dataset, group_config.estimator)
    embeddings = _model_embeddings(dataset, args) if group_config.estimator == "model" else None
    payload, table = support_report(dataset, group_config, seed=dataset_seed(args), embeddings=embeddings)
    _write_outputs(args, payload, table.drop(columns="decile"))
    return 0


def dataset_seed(args: argparse.Namespace) -> int:
    return int(getattr(args, "seed", 0))


def cmd_embed(args: argparse.Namespace) -> int:
    from .features import dataset_texts
    from .encoders import embed_texts

    dataset = load_dataset(data_config_from_args(args))
    result = embed_texts(dataset_texts(dataset), args.encoder, cache=not args.no_cache, progress_bar=True)
    payload = {"encoder": result.encoder, "dim": result.dim, "n_texts": result.n_texts,
               "seconds": round(result.seconds, 3),
               "texts_per_second": round(result.n_texts / result.seconds, 1) if result.seconds > 0 else None,
               "cache_hits": result.cache_hits}
    _write_outputs(args, payload)
    return 0


def _add_support(sub) -> None:
    parser = sub.add_parser("support", help="support rates and majority/minority groups of a dataset")
    add_data_arguments(parser)
    parser.add_argument("--json", metavar="OUT", help="write the summary JSON here")
    parser.add_argument("--csv", metavar="OUT", help="write one row per user here")
    parser.set_defaults(handler=cmd_support)


def _add_embed(sub) -> None:
    parser = sub.add_parser("embed", help="embed a dataset's texts into the disk cache")
    add_data_arguments(parser)
    parser.add_argument("--encoder", default="minilm", help="minilm, tfidf or a transformers model id/path")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embeddings cache")
    parser.add_argument("--json", metavar="OUT", help="write timing JSON here")
    parser.set_defaults(handler=cmd_embed)


COMMANDS: list[Callable] = [_add_support, _add_embed]


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pafo", description="PAFO Studio: find and fix personalized reward bias.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PafoInputError as exc:
        print(f"pafo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pafo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("PAFO_DEBUG"):
            raise
        print(INTERNAL_ERROR.format(error=f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
