"""Content fingerprint benchmark: what hashing a dataset's content costs, first time and from the cache.

Run from the repository root::

    .venv/bin/python -m bench.fingerprint [--mb 100] [--repeats 5] [--out FILE]

A file of ``--mb`` MiB of random bytes is written to a temporary folder (with its own ``$PAFO_HOME``), left to
settle past :data:`pafo.digests.RACY_SECONDS` (a younger file is never cached), then fingerprinted with
:func:`pafo.sources.dataset_fingerprint` as a page render or a reuse check does:

- **first hash**: the cache is empty, so the whole file is read and hashed (sha256 in blocks). The file was just
  written, so it is read from the page cache, not the disk: the figure is hashing, not I/O. A cold disk adds its
  read time (about 0.1–1 s per 100 MB);
- **cached, new process**: the digest comes from ``$PAFO_HOME/digests.json`` by the file's stat key (what another
  process, e.g. a background worker, sees);
- **cached, same process**: the in-process memo (what the app's next page render sees);
- the **obvious alternative**, the stat-only fingerprint used before (path + size + mtime), measured in the same
  run.

Each is the median of ``--repeats`` calls (the first hash: each repeat with the cache emptied).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, publish

__all__ = ["main"]


def _stat_fingerprint(config) -> str:
    """The fingerprint before issue 18: options, plus the file's resolved path, size and mtime."""
    payload = dataclasses.asdict(config)
    stat = Path(config.path).stat()
    payload["file"] = [str(Path(config.path).resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _median_ms(call, repeats: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(mb: int, repeats: int) -> dict:
    from pafo import digests
    from pafo.digests import CACHE_NAME, RACY_SECONDS
    from pafo.sources import DataConfig, dataset_fingerprint

    with tempfile.TemporaryDirectory() as folder:
        os.environ["PAFO_HOME"] = str(Path(folder) / "home")
        data = Path(folder) / "pairs.csv"
        with open(data, "wb") as fh:
            for _ in range(mb):
                fh.write(os.urandom(2**20))
        time.sleep(RACY_SECONDS + 0.5)  # only a settled file is cached (pafo.digests)
        config = DataConfig(dataset="pairs", path=str(data))

        def empty_cache() -> None:
            digests._MEMO.clear()
            (Path(folder) / "home" / CACHE_NAME).unlink(missing_ok=True)

        first = _median_ms(lambda: dataset_fingerprint(config), repeats, empty_cache)
        dataset_fingerprint(config)
        from_disk = _median_ms(lambda: dataset_fingerprint(config), repeats * 20, digests._MEMO.clear)
        from_memo = _median_ms(lambda: dataset_fingerprint(config), repeats * 20)
        stat_only = _median_ms(lambda: _stat_fingerprint(config), repeats * 20)
    return {"first": first, "disk": from_disk, "memo": from_memo, "stat": stat_only}


def report(mb: int, repeats: int, ms: dict, command: str) -> str:
    from pafo.digests import MAX_ENTRIES

    rows = [("first hash (sha256 of the content, cache empty)", ms["first"]),
            ("cached, new process (`digests.json` by stat key)", ms["disk"]),
            ("cached, same process (memo)", ms["memo"]),
            ("stat only (path + size + mtime, before issue 18)", ms["stat"])]
    lines = [
        "## Dataset content fingerprint (`bench/fingerprint.py`)",
        "",
        f"- Machine: {machine()}",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}`",
        f"- File: {mb} MiB of random bytes, read from the page cache (just written); median of {repeats} calls "
        f"for the first hash, {repeats * 20} for the others; `digests.json` held this one entry (it keeps at most "
        f"{MAX_ENTRIES}: a full one, 0.2 MB, took about 6 ms to read on this machine under the same load). The "
        "machine is shared: compare figures of this one run as ratios.",
        "",
        "| `dataset_fingerprint` of a local file | median ms | vs stat only |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {value:.3f} | {value / ms['stat']:.1f}× |" for label, value in rows),
        "",
        f"Hashing runs at {mb / (ms['first'] / 1000):.0f} MiB/s; a cached lookup costs "
        f"{ms['first'] / ms['disk']:.0f}× less than hashing from a new process and {ms['first'] / ms['memo']:.0f}× "
        "less within one (the app's page renders).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the test file in MiB (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="first-hash repeats (default 5)")
    parser.add_argument("--out", default=None, help="write here instead of the fingerprint section of RESULTS.md")
    args = parser.parse_args(argv)
    command = "python -m bench.fingerprint" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = report(args.mb, args.repeats, measure(args.mb, args.repeats), command)
    print(text)
    print(f"written to {publish('fingerprint', text, args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
