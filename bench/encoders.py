"""Throughput of our MiniLM encoder (fp32, bf16) against sentence-transformers on real DSP responses.

Run from the repository root::

    python -m bench.encoders [--n-texts 500] [--repeats 3] [--batch-size 64] [--out FILE]   # default: RESULTS.md

All three candidates embed the same texts with the same batch size, max length (256) and torch threads, in one
process. The cache is not involved (``Encoder.encode`` is timed directly, duplicates included, as
sentence-transformers sees them). Each candidate is warmed up once, then the candidates are timed in turn,
``--repeats`` rounds, so that load from other processes on a shared machine hits them alike; the median round is
reported, with the best one beside it, and the CPU time the process used (a steadier figure when other jobs share
the machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import machine, publish
from pafo.encoders import (
    BF16_MAX_COS_ERROR,
    configure_torch_threads,
    cpu_supports_bf16,
    encoder_threads,
    get_encoder,
    max_cosine_error,
    minilm_model_path,
)
from pafo.paths import PACKAGE_ROOT

__all__ = ["Candidate", "load_dsp_texts", "main", "run_benchmark"]

DSP_PATH = PACKAGE_ROOT.parent / "shared" / "data" / "dsp_test_part_a.json"
ST_LABEL = "sentence-transformers"


@dataclass
class Candidate:
    """One way of embedding the texts, and its timings per full pass: wall seconds, and process CPU seconds (all
    threads), which other jobs on a shared machine inflate much less than wall time."""

    label: str
    encode: Callable[[list[str]], np.ndarray]
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None

    def rate(self, n_texts: int, best: bool = False) -> float:
        seconds = min(self.seconds) if best else statistics.median(self.seconds)
        return n_texts / seconds

    def cpu_rate(self, n_texts: int) -> float:
        return n_texts / statistics.median(self.cpu_seconds)


def load_dsp_texts(n_texts: int, path: Path = DSP_PATH) -> list[str]:
    """The first ``n_texts`` responses (5 per query) of the shared DSP test file: real, varied-length text."""
    items = json.loads(path.read_text(encoding="utf-8"))
    texts = [text for item in items for text in item["responses"].values()]
    return texts[:n_texts]


def _candidates(batch_size: int, bf16_available: bool) -> list[Candidate]:
    from sentence_transformers import SentenceTransformer

    ours_fp32 = get_encoder("minilm", precision="fp32")
    candidates = [Candidate("pafo minilm fp32", lambda t: ours_fp32.encode(t, batch_size))]
    if bf16_available:
        ours_bf16 = get_encoder("minilm", precision="bf16")
        candidates.append(Candidate("pafo minilm bf16", lambda t: ours_bf16.encode(t, batch_size)))
    model = SentenceTransformer(str(minilm_model_path()), device="cpu")
    model.max_seq_length = 256
    candidates.append(Candidate(ST_LABEL, lambda t: model.encode(t, batch_size=batch_size, show_progress_bar=False)))
    return candidates


def run_benchmark(texts: list[str], repeats: int, batch_size: int, bf16_available: bool) -> list[Candidate]:
    """Warm each candidate up once, then time them in interleaved rounds; keep the last vectors for the errors."""
    candidates = _candidates(batch_size, bf16_available)
    for candidate in candidates:
        candidate.encode(texts[: 2 * batch_size])
    for _ in range(repeats):
        for candidate in candidates:
            started, cpu_started = time.perf_counter(), time.process_time()
            candidate.vectors = np.asarray(candidate.encode(texts), dtype=np.float32)
            candidate.seconds.append(time.perf_counter() - started)
            candidate.cpu_seconds.append(time.process_time() - cpu_started)
    return candidates


def _auto_choice() -> tuple[str, float | None]:
    """What precision='auto' picks here, calibrated from scratch (a temporary home has no record)."""
    with tempfile.TemporaryDirectory() as home:
        encoder = get_encoder("minilm", home=Path(home))
        return encoder.precision, encoder.cos_error_


def _machine() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "machine": machine(),
        "torch_threads": str(torch.get_num_threads()),
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}",
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _table(candidates: list[Candidate], n_texts: int) -> list[str]:
    st = next(c for c in candidates if c.label == ST_LABEL)
    lines = [
        "| encoder | texts/s (median) | texts/s (best) | × sentence-transformers (median) "
        "| texts per CPU-second | × sentence-transformers (CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in candidates:
        median, best, cpu = c.rate(n_texts), c.rate(n_texts, best=True), c.cpu_rate(n_texts)
        lines.append(
            f"| {c.label} | {median:.1f} | {best:.1f} | {median / st.rate(n_texts):.2f}× "
            f"| {cpu:.1f} | {cpu / st.cpu_rate(n_texts):.2f}× |"
        )
    return lines


def _accuracy(candidates: list[Candidate]) -> list[str]:
    by_label = {c.label: c.vectors for c in candidates}
    lines = [
        f"- max cosine error, pafo fp32 vs sentence-transformers: "
        f"{max_cosine_error(by_label['pafo minilm fp32'], by_label[ST_LABEL]):.2e}"
    ]
    if "pafo minilm bf16" in by_label:
        error = max_cosine_error(by_label["pafo minilm fp32"], by_label["pafo minilm bf16"])
        lines.append(f"- max cosine error, bf16 vs fp32 (all texts): {error:.2e} (budget {BF16_MAX_COS_ERROR:.0e})")
    return lines


def _report(args: argparse.Namespace, candidates: list[Candidate], n_texts: int, notes: dict[str, str]) -> str:
    machine = notes["machine"]
    lines = [
        "## Encoders: MiniLM throughput",
        "",
        f"- command (from the repository root): `{notes['command']}`",
        f"- date: {notes['date']}",
        f"- machine: {machine['machine']}; torch threads {machine['torch_threads']}",
        f"- software: {machine['versions']}",
        f"- load average (1/5/15 min) at start: {notes['load_start']}; at end: {machine['load']} "
        "(other jobs shared the machine)",
        f"- data: first {n_texts} responses of ../shared/data/dsp_test_part_a.json; batch size {args.batch_size}, "
        f"max length 256, cache not used; {args.repeats} interleaved rounds after one warm-up each",
        f"- bf16: {notes['bf16']}",
        f"- precision='auto' picks: {notes['auto']}",
        "",
        *_table(candidates, n_texts),
        "",
        *_accuracy(candidates),
        "",
    ]
    return "\n".join(lines)


def _bf16_note(available: bool) -> str:
    if available:
        return "native on this CPU (AVX512-BF16/AMX), measured"
    return "NOT available on this CPU (no AVX512-BF16/AMX); bf16 row skipped, 'auto' uses fp32"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.encoders", description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="a file of its own instead of the section of bench/RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = _parse(argv)
    command = " ".join(["python -m bench.encoders", *(sys.argv[1:] if argv is None else argv)])
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    configure_torch_threads()
    torch.set_num_threads(encoder_threads())  # sentence-transformers gets the threads our encoder uses
    texts = load_dsp_texts(args.n_texts)
    bf16_available = cpu_supports_bf16()
    precision, cos_error = _auto_choice()
    auto = f"{precision}" + (f" (calibration max cosine error {cos_error:.2e})" if cos_error is not None else "")
    candidates = run_benchmark(texts, args.repeats, args.batch_size, bf16_available)
    notes = {
        "command": command,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_start": load_start,
        "machine": _machine(),
        "bf16": _bf16_note(bf16_available),
        "auto": auto,
    }
    report = _report(args, candidates, len(texts), notes)
    print(report)
    print(f"written to {publish('encoders', report, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
