"""Content hashes of files and folders, cached so that an unchanged large file is read once, not on every page.

A dataset's fingerprint and a local encoder's cache key are hashes of *content* (sha256, read in blocks): a file
edited in place with its size and modification time kept (labels swapped, then ``touch -d``) is new data. The
digest of a file is cached in ``$PAFO_HOME/digests.json`` under its stat key: resolved path, size, mtime_ns,
ctime_ns, inode and device. ``touch -d`` can set the mtime back but not the ctime (the kernel sets it on every
change), so any edit gives a new key.

A timestamp has a coarse clock tick: a file written and edited again within one tick keeps its ctime. So a digest
is cached only when the file was last changed at least :data:`RACY_SECONDS` before it was hashed (git's "racily
clean" rule); a file younger than that is hashed again at each use until it has settled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from .paths import atomic_write_text, pafo_home

__all__ = ["CACHE_NAME", "RACY_SECONDS", "file_digest", "folder_digest", "stat_key"]

CACHE_NAME = "digests.json"
RACY_SECONDS = 2.0  # a change younger than this may share a timestamp tick with the next one: not cached
MAX_ENTRIES = 1024  # the cache keeps the newest entries (a full file is 0.2 MB); an evicted file is hashed again
SKIPPED_SUFFIXES = (".md",)  # a model card changes no vector

_MEMO: dict[str, str] = {}  # this process's hits, so a page render does not even read the cache file
_LOCK = threading.Lock()


def stat_key(path: Path, info: os.stat_result) -> str:
    """What identifies one version of a file without reading it (see the module docstring)."""
    return "|".join(map(str, (path, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # reads in blocks: memory stays flat


def _now_ns() -> int:
    return time.time_ns()


def _cache_path(home: Path | None) -> Path:
    return (home or pafo_home()) / CACHE_NAME


def _read_cache(path: Path) -> dict:
    """The stored digests; an unreadable cache is an empty one (it only saves time)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, key: str, digest: str) -> None:
    """Add one entry (atomically; a concurrent writer may drop it, which costs one more hash, never a wrong one)."""
    with _LOCK:
        entries = _read_cache(path)
        entries[key] = {"sha256": digest, "at": time.time()}
        if len(entries) > MAX_ENTRIES:
            newest = sorted(entries.items(), key=lambda item: item[1].get("at", 0) if isinstance(item[1], dict)
                            else 0)[-MAX_ENTRIES:]
            entries = dict(newest)
        with contextlib.suppress(OSError):  # a read-only or full home: no cache, same digests
            atomic_write_text(path, json.dumps(entries, separators=(",", ":")))


def file_digest(path: str | os.PathLike, *, home: Path | None = None) -> str:
    """sha256 (hex) of a file's content, from the cache when the file has not changed since it was hashed."""
    path = Path(path).resolve()
    before = os.stat(path)
    key = stat_key(path, before)
    if key in _MEMO:
        return _MEMO[key]
    cache = _cache_path(home)
    stored = _read_cache(cache).get(key)
    if isinstance(stored, dict) and isinstance(stored.get("sha256"), str):
        _MEMO[key] = stored["sha256"]
        return stored["sha256"]
    started = _now_ns()
    digest = _sha256(path)
    settled = started - before.st_ctime_ns >= RACY_SECONDS * 1e9  # the kernel sets ctime on every change
    if settled and stat_key(path, os.stat(path)) == key:  # unchanged while it was read, and old enough to trust
        _MEMO[key] = digest
        _store(cache, key, digest)
    return digest


def folder_digest(folder: str | os.PathLike, *, home: Path | None = None) -> str:
    """sha256 (hex) over every file of a folder (relative path and content digest, sorted by path); hidden files
    and folders (``.git``, ``.cache``) and model cards (``*.md``) aside."""
    folder = Path(folder).resolve()
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() in SKIPPED_SUFFIXES:
            continue
        if path.is_file():
            digest.update(f"{relative.as_posix()}\0{file_digest(path, home=home)}\0".encode())
    return digest.hexdigest()
