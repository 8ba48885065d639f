"""What every benchmark shares: the machine it ran on, and where its figures go (its section of RESULTS.md)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["RESULTS", "SECTIONS", "machine", "publish", "sections"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The sections of RESULTS.md in order; each benchmark rewrites its own and leaves the others as they are.
SECTIONS = ("quality", "quality_tfidf", "quality_speed", "tuning", "pafo_v3_research", "pafo_lexical",
            "tuning_baseline_synthetic", "tuning_baseline_dsp", "unseen", "encoders", "support", "registry",
            "fingerprint", "app", "demo", "scale", "gpu")
HEADER = ("# Benchmark results\n\nEvery figure below was printed by the command named in its section, on the machine "
          "and date given there; rerunning a benchmark rewrites its own section (`python -m bench` lists them). "
          "Sections written before 2026-11-30 name `--out bench/RESULTS_<section>.md`, the fragment files of that "
          "time; today the same command without `--out` rewrites the section.\n")
BEGIN, END = "<!-- bench:{name} -->", "<!-- /bench:{name} -->"


def _cpu_model() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def _memory() -> str:
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        return ""
    return f", {kib / 2**20:.0f} GiB RAM"


def machine() -> str:
    """CPU model, cores (usable), memory, OS and Python, and the load average when called."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{_cpu_model()}; {os.cpu_count()} CPUs ({usable} usable){_memory()}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}; load average {load}")


def sections(text: str) -> dict[str, str]:
    """The sections of a RESULTS.md text, ``{name: markdown}``."""
    found = re.finditer(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", text, re.DOTALL)
    return {match.group(1): match.group(2) for match in found}


def publish(name: str, text: str, out: Path | str | None = None) -> Path:
    """Write a benchmark's figures to ``out``, or by default into section ``name`` of RESULTS.md (atomically; the
    other sections are kept), so each figure lives in the tree once."""
    from pafo.paths import atomic_write_text

    if out is not None:
        atomic_write_text(out, text.rstrip() + "\n")
        return Path(out)
    if name not in SECTIONS:
        raise ValueError(f"unknown RESULTS.md section {name!r}; add it to bench.common.SECTIONS")
    current = sections(RESULTS.read_text()) if RESULTS.exists() else {}
    current[name] = text.rstrip()
    ordered = [n for n in SECTIONS if n in current] + [n for n in current if n not in SECTIONS]
    body = "\n\n".join(f"{BEGIN.format(name=n)}\n{current[n]}\n{END.format(name=n)}" for n in ordered)
    atomic_write_text(RESULTS, f"{HEADER}\n{body}\n")
    return RESULTS
