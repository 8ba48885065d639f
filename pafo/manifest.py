"""A finished run's manifest: checksums of its artifacts and what the run was *of*, recorded when it is published.

A run directory (``pafo experiment --out-dir``, or ``$PAFO_HOME/runs/<id>/``) is *published* once its
``manifest.json`` exists. It holds

- ``format`` and ``tool``: :data:`MANIFEST_FORMAT` and the PAFO Studio version, so a folder can be told apart from
  anything else that has a file of that name (a browser extension's ``manifest.json``);
- ``config_hash`` and ``fingerprint``: the config the run was asked for (:func:`pafo.registry.config_hash`) and the
  dataset fingerprint (content, :func:`pafo.sources.dataset_fingerprint`): the *binding* that reuse, ``pafo score``
  and audits of a run folder compare with what they ask for before serving the result;
- ``sha256``: the checksum of every artifact (result.json, tables, weights).

Bookkeeping files that change after publication (the worker's log, the run's config and status records) are not
listed. Every path a manifest names must resolve inside its run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .jsonio import loads
from .paths import atomic_write_text, resolve_inside

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "UNLISTED", "ManifestError", "check_binding", "is_published",
           "own_binding", "read_manifest", "replaceable_problem", "verify_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pafo-run-manifest"
UNLISTED = frozenset({MANIFEST_NAME, "log.txt", "config.json", "status.json"})
MANIFEST_VERSION = 2  # 1: checksums only (no format marker, no binding)

MSG_NO_MANIFEST = "no {name} (the run was never published whole)"
MSG_BAD_MANIFEST = "{name} is unreadable ({detail})"
MSG_MISSING = "{file} is missing"
MSG_OUTSIDE = "{file} points outside the run folder"
MSG_CHANGED = "{file} does not match the checksum recorded when the run finished (damaged or changed since)"
MSG_UNBOUND = ("its {name} does not record which config and data it belongs to (published by an older PAFO "
               "Studio)")
MSG_OTHER_CONFIG = "it holds the result of another config than the one asked for (config hash {found}, not {wanted})"
MSG_OTHER_DATA = ("it was trained on other data than the one asked for (dataset fingerprint {found}, not {wanted}): "
                  "the data file changed since the run")
MSG_NOT_OURS = "holds files that are not a PAFO run (e.g. {example})"
MSG_UNLISTED = "holds {example}, which its run's {name} does not list"


class ManifestError(ValueError):
    """A manifest that is missing or cannot be read; its text is the reason."""


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _artifacts(run_dir: Path) -> list[Path]:
    """Every regular file of the run, bookkeeping and hidden temp files (``.name.tmp``) aside."""
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).as_posix() not in UNLISTED
                  and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def write_manifest(run_dir: str | Path, *, config_hash: str | None = None, fingerprint: str | None = None) -> Path:
    """Record the checksum of every artifact in ``run_dir`` and the config and data it is the result of; writing
    it (atomically) is what publishes the run."""
    run_dir = Path(run_dir)
    files = {p.relative_to(run_dir).as_posix(): _digest(p) for p in _artifacts(run_dir)}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "tool": f"pafo-studio {__version__}",
                "config_hash": config_hash, "fingerprint": fingerprint, "sha256": files}
    return atomic_write_text(run_dir / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest as a dict with a ``sha256`` object; :class:`ManifestError` says why there is none."""
    try:
        manifest = loads((Path(run_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
            raise TypeError("no sha256 object")
    except FileNotFoundError:
        raise ManifestError(MSG_NO_MANIFEST.format(name=MANIFEST_NAME)) from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ManifestError(MSG_BAD_MANIFEST.format(name=MANIFEST_NAME, detail=" ".join(str(exc).split()))) from None
    return manifest


def verify_manifest(run_dir: str | Path, *, required: tuple[str, ...] = ("result.json",)) -> str | None:
    """``None`` when the manifest lists ``required`` and every listed file, inside the run folder, has its recorded
    checksum; else why not."""
    run_dir = Path(run_dir)
    try:
        listed = read_manifest(run_dir)["sha256"]
    except ManifestError as exc:
        return str(exc)
    for name in required:
        if name not in listed:
            return MSG_MISSING.format(file=name)
    for name, digest in listed.items():
        path = resolve_inside(run_dir, name)
        if path is None:
            return MSG_OUTSIDE.format(file=name)
        if not path.is_file():
            return MSG_MISSING.format(file=name)
        if _digest(path) != digest:
            return MSG_CHANGED.format(file=name)
    return None


def is_published(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a whole, unchanged published result."""
    return verify_manifest(run_dir) is None


def check_binding(run_dir: str | Path, *, config_hash: str, fingerprint: str) -> str | None:
    """``None`` when the (verified) manifest says the run is the result of ``config_hash`` on data ``fingerprint``;
    else why it may not be served for them."""
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        return str(exc)
    found_config, found_data = manifest.get("config_hash"), manifest.get("fingerprint")
    if manifest.get("format") != MANIFEST_FORMAT or not found_config or not found_data:
        return MSG_UNBOUND.format(name=MANIFEST_NAME)
    if found_config != config_hash:
        return MSG_OTHER_CONFIG.format(found=str(found_config)[:12], wanted=str(config_hash)[:12])
    if found_data != fingerprint:
        return MSG_OTHER_DATA.format(found=found_data, wanted=fingerprint)
    return None


def own_binding(run_dir: str | Path, result: dict) -> tuple[str, str] | None:
    """The (config hash, dataset fingerprint) a run folder says it is the result of: the config it was asked for
    (a background run's config.json, else the result's own config) and the result's fingerprint; ``None`` for a
    folder whose manifest records none (no manifest, or one from before the binding). A config.json that cannot
    be read raises :class:`ManifestError`."""
    from .registry import CONFIG_NAME, config_hash

    try:
        if not read_manifest(run_dir).get("config_hash"):
            return None
    except ManifestError:
        return None
    requested = resolve_inside(run_dir, CONFIG_NAME)
    config = result.get("config")
    if requested is not None and requested.is_file():
        try:
            config = loads(requested.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ManifestError(MSG_BAD_MANIFEST.format(name=CONFIG_NAME, detail=" ".join(str(exc).split()))) from None
    return config_hash(config if isinstance(config, dict) else {}), str(result.get("fingerprint"))


def _entries(folder: Path) -> list[str]:
    """Every file, link and folder under ``folder`` (hidden ones too; links not followed), relative, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in dirs + files]
    return sorted(found)


def replaceable_problem(folder: str | Path) -> str | None:
    """``None`` when ``folder`` may be replaced whole by a new run: it is one of our run folders (its manifest has
    our format marker), it holds nothing the manifest does not list, and every listed file is as the run wrote
    it (a file the user edited since is theirs now). Else why not, naming an example."""
    folder = Path(folder)
    entries = _entries(folder)
    if not entries:
        return None
    try:
        manifest = read_manifest(folder)
    except ManifestError:
        manifest = None
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return MSG_NOT_OURS.format(example=next((e for e in entries if e != MANIFEST_NAME), entries[0]))
    listed = set(manifest["sha256"])
    parents = {parent.as_posix() for name in listed for parent in Path(name).parents}
    for entry in entries:
        path = folder / entry
        known = entry in listed and path.is_file() and not path.is_symlink()
        if not known and entry != MANIFEST_NAME and not (entry in parents and path.is_dir() and not path.is_symlink()):
            return MSG_UNLISTED.format(example=entry, name=MANIFEST_NAME)
    return verify_manifest(folder, required=())
