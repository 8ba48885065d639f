"""Checksums of a finished run's artifacts, recorded when the run is published and checked before it is trusted.

A run directory (``pafo experiment --out-dir``, or ``$PAFO_HOME/runs/<id>/``) is *published* once its
``manifest.json`` exists: the sha256 of every artifact (result.json, tables, weights). Reusing a finished run and
scoring with its weights first verify the manifest, so a file that was truncated, corrupted or swapped afterwards
is never taken for a result. Bookkeeping files that change after publication (the worker's log, the run's config
and status records) are not listed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .paths import atomic_write_text

__all__ = ["MANIFEST_NAME", "UNLISTED", "is_published", "verify_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.json"
UNLISTED = frozenset({MANIFEST_NAME, "log.txt", "config.json", "status.json"})
MANIFEST_VERSION = 1

MSG_NO_MANIFEST = "no {name} (the run was never published whole)"
MSG_BAD_MANIFEST = "{name} is unreadable ({detail})"
MSG_MISSING = "{file} is missing"
MSG_CHANGED = "{file} does not match the checksum recorded when the run finished (damaged or changed since)"


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _artifacts(run_dir: Path) -> list[Path]:
    """Every regular file of the run, bookkeeping and hidden temp files (``.name.tmp``) aside."""
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).as_posix() not in UNLISTED
                  and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def write_manifest(run_dir: str | Path) -> Path:
    """Record the checksum of every artifact in ``run_dir``; writing it (atomically) is what publishes the run."""
    run_dir = Path(run_dir)
    files = {p.relative_to(run_dir).as_posix(): _digest(p) for p in _artifacts(run_dir)}
    text = json.dumps({"version": MANIFEST_VERSION, "sha256": files}, indent=1, sort_keys=True)
    return atomic_write_text(run_dir / MANIFEST_NAME, text + "\n")


def verify_manifest(run_dir: str | Path, *, required: tuple[str, ...] = ("result.json",)) -> str | None:
    """``None`` when the manifest lists ``required`` and every listed file has its recorded checksum; else why not."""
    run_dir = Path(run_dir)
    try:
        listed = json.loads((run_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["sha256"]
        if not isinstance(listed, dict):
            raise TypeError("sha256 is not an object")
    except FileNotFoundError:
        return MSG_NO_MANIFEST.format(name=MANIFEST_NAME)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return MSG_BAD_MANIFEST.format(name=MANIFEST_NAME, detail=" ".join(str(exc).split()))
    for name in required:
        if name not in listed:
            return MSG_MISSING.format(file=name)
    for name, digest in listed.items():
        path = run_dir / name
        if ".." in Path(name).parts or not path.is_file():
            return MSG_MISSING.format(file=name)
        if _digest(path) != digest:
            return MSG_CHANGED.format(file=name)
    return None


def is_published(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a whole, unchanged published result."""
    return verify_manifest(run_dir) is None
