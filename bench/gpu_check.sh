#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): on a machine with an NVIDIA GPU, checks that results on CUDA match the CPU's
# within the stated tolerance and records MiniLM throughput and training time at 30,000 users in
# the gpu section of bench/RESULTS.md. Without a CUDA device it prints "skipped: no CUDA device" and exits 0.
#
#   bench/gpu_check.sh [--skip-scale]        (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m bench.gpu_check "$@"
