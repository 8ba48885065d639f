"""The reuse key of a run: what makes two runs the same run, so a finished one answers a new submission.

A run is reused when its config hash (:func:`config_hash`), its dataset's content fingerprint and the code version
(:func:`code_version`) all match (:class:`pafo.registry.RunRegistry` looks them up; README: "When a finished run is
reused"). The code version hashes the sources that compute results, each reduced to what can change a result: no
docstring, no comment, and no argument that only describes (an option's help line or form label, a method's label,
colour or progress-bar cost). Which arguments only describe is read from the declarations themselves: the
descriptive metadata of :func:`pafo.config.option` and the fields of the spec dataclasses marked with
:func:`pafo.config.descriptive`, so reordering a spec's fields moves the positions the key leaves out with them.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pafo.device import without_execution
from pafo.paths import PACKAGE_ROOT

__all__ = ["PRESENTATION_MODULES", "canonical_json", "code_version", "config_hash", "described_calls",
           "result_code", "source_version", "spec_arguments"]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a config: the cache key (with dataset fingerprint and code version).

    Execution settings (the ``execution`` key, e.g. the device) are left out: they change where a run computes,
    not what, so a config without them hashes as it always did."""
    return hashlib.sha256(canonical_json(without_execution(config)).encode("utf-8")).hexdigest()


#: Modules that present, store or schedule results but never compute them: editing a label, a colour, a message or
#: the registry itself keeps finished runs reusable. Every other ``pafo/`` source counts (README: reuse).
PRESENTATION_MODULES = frozenset({"__init__.py", "appstate.py", "cli.py", "conditions.py", "digests.py", "effects.py",
                                  "errors.py", "html_report.py", "manifest.py", "paths.py", "registry.py", "report.py",
                                  "runs_cli.py", "slice_report.py", "sweep.py", "unseen_report.py", "worker.py",
                                  # the registry's parts: they store, schedule and key runs
                                  "reuse.py", "run_store.py", "supervisor.py"})


@lru_cache(maxsize=1)
def code_version() -> str:
    """The installed package's ``source_version``, computed once per process."""
    return source_version(PACKAGE_ROOT / "pafo")


def _positional(function: Any) -> tuple[str, ...]:
    """The names of a callable's parameters that a call can give by position, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds)


def spec_arguments(spec: type) -> tuple[tuple[str, ...], frozenset[str]]:
    """A spec dataclass's parameters in positional order and the names of its fields marked
    :func:`pafo.config.descriptive`."""
    from pafo.config import DESCRIPTIVE

    fields = [f for f in dataclasses.fields(spec) if f.init]
    return tuple(f.name for f in fields), frozenset(f.name for f in fields if f.metadata.get(DESCRIPTIVE))


@lru_cache(maxsize=1)
def described_calls() -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
    """Per callable whose descriptive arguments the key leaves out: its parameters in positional order and the names
    of those that only describe. ``option`` declares them in :data:`pafo.config.DESCRIPTIVE_METADATA`; a spec
    dataclass (:class:`pafo.method_configs.MethodSpec`, :class:`pafo.encoder_specs.EncoderSpec`,
    :class:`pafo.sources.SourceSpec`) in its fields' metadata (:func:`spec_arguments`), so the positions follow the
    fields wherever they stand."""
    from pafo.config import DESCRIPTIVE_METADATA, option
    from pafo.encoder_specs import EncoderSpec
    from pafo.method_configs import MethodSpec
    from pafo.sources import SourceSpec

    calls = {"option": (_positional(option), frozenset(DESCRIPTIVE_METADATA))}
    calls.update({spec.__name__: spec_arguments(spec) for spec in (MethodSpec, EncoderSpec, SourceSpec)})
    return calls


class _ResultCode(ast.NodeTransformer):
    """A module's syntax tree without what cannot change a result: docstrings and descriptive arguments (comments
    and layout are not in the tree at all)."""

    def __init__(self, calls: dict[str, tuple[tuple[str, ...], frozenset[str]]]) -> None:
        self.calls = calls

    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return super().generic_visit(node)

    def visit_Call(self, node: ast.Call):
        positional, drop = self.calls.get(getattr(node.func, "id", None) or getattr(node.func, "attr", None),
                                          ((), frozenset()))
        node.args = [arg for i, arg in enumerate(node.args) if i >= len(positional) or positional[i] not in drop]
        node.keywords = [k for k in node.keywords if k.arg not in drop]
        return self.generic_visit(node)


def result_code(source: str, calls: dict | None = None) -> str:
    """What of a module's source counts for reuse (:class:`_ResultCode`), as text; ``calls``: the callables whose
    descriptive arguments it drops (default :func:`described_calls`)."""
    return ast.dump(_ResultCode(described_calls() if calls is None else calls).visit(ast.parse(source)),
                    annotate_fields=False)


def source_version(package: Path) -> str:
    """Short sha256 over the ``pafo/**/*.py`` sources that compute results (sorted by path; ``PRESENTATION_MODULES``
    left out), each reduced to :func:`result_code`: a change to how results are computed invalidates the cache; a
    change to how they are shown, described or commented does not (README: "When a finished run is reused")."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(package).as_posix() in PRESENTATION_MODULES:
            continue
        digest.update(path.relative_to(package).as_posix().encode("utf-8") + b"\0")
        digest.update(result_code(path.read_text(encoding="utf-8")).encode("utf-8") + b"\0")
    return digest.hexdigest()[:12]

