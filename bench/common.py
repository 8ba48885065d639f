"""What every benchmark writes beside its figures: the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["machine"]


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
