"""GPU check: results on CUDA match the CPU's within a stated tolerance, and what the GPU buys.

Run through ``bench/gpu_check.sh`` (or ``python -m bench.gpu_check``) from the repository root. Without a CUDA
device it prints ``skipped: no CUDA device ...`` and exits 0, writing nothing. With one it:

1. runs one small experiment (synthetic, TF-IDF, baseline,pafo, ``CHECK_USERS`` users, seed 0) on the CPU and on
   CUDA, and checks every method's overall, majority and minority test accuracy agree within ``TOLERANCE``
   (absolute); it also reruns CUDA once and says whether CUDA repeats itself exactly;
2. embeds the same texts with MiniLM fp32 on both devices (no cache) and checks the largest cosine error against
   ``EMBED_TOLERANCE``;
3. records MiniLM throughput (texts/s) on CUDA at fp32 and at the precision ``auto`` picks there, and on the CPU
   on a subset;
4. records one experiment's time at ``SCALE_USERS`` users on CUDA (TF-IDF features, so the figure is training).

It rewrites the ``gpu`` section of ``bench/RESULTS.md`` (machine, GPU, date, command, tolerance, verdict) and
exits 1 when a check fails. Every run uses a private ``$PAFO_HOME``, so no cached vector stands in for a computed one.

Why a tolerance rather than equality: CUDA sums floats in another order than the CPU and a few of its kernels
(e.g. the embedding gradient's atomic adds) are not deterministic, so training trajectories drift apart by float
rounding and early stopping may keep a neighbouring epoch. ``TOLERANCE`` is 2 accuracy points: about the 95% CI
half-width of the minority group's accuracy at ``CHECK_USERS`` users (reported beside each figure), so a larger
gap would be a difference the data can tell apart, meaning a bug (a tensor on the wrong device, a lost seed),
not rounding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time

SKIPPED = "skipped: no CUDA device (torch.cuda.is_available() is False); nothing measured, bench/RESULTS.md kept"
TOLERANCE = 0.02  # absolute, on each method's overall, majority and minority test accuracy
EMBED_TOLERANCE = 1e-4  # max cosine error of fp32 MiniLM vectors, CUDA vs CPU
CHECK_USERS = 1_000
SCALE_USERS = 30_000
THROUGHPUT_PROMPTS = 2_000  # synthetic prompts × 6 responses: ~14,000 distinct texts
CPU_THROUGHPUT_TEXTS = 1_000
GROUPS = ("overall", "majority", "minority")


def _config(users: int, encoder: str = "tfidf"):
    from pafo.experiment import ExperimentConfig, RunSettings
    from pafo.sources import DataConfig

    return ExperimentConfig(data=DataConfig(dataset="synthetic", users=users, seed=0),
                            run=RunSettings(encoder=encoder, methods="baseline,pafo"))


def _run(config, device: str) -> dict:
    """One experiment in a fresh $PAFO_HOME (features computed, not read from another device's cache)."""
    from pafo.experiment import run_experiment

    previous = os.environ.get("PAFO_HOME")
    with tempfile.TemporaryDirectory(prefix="pafo-gpu-") as home:
        os.environ["PAFO_HOME"] = home
        try:
            return run_experiment(config, device=device)
        finally:
            os.environ["PAFO_HOME"] = previous or ""


def _accuracies(result) -> dict:
    return {(method, group): block.accuracy[group] for method, block in result.methods.items() for group in GROUPS}


def _half_widths(result) -> dict:
    out = {}
    for method, block in result.methods.items():
        for group in ("majority", "minority"):
            low, high = block.accuracy_ci.get(group) or (None, None)
            out[method, group] = (high - low) / 2 if low is not None and high is not None else None
    return out


def check_metrics() -> tuple[bool, list[str]]:
    config = _config(CHECK_USERS)
    cpu, cuda, again = _run(config, "cpu"), _run(config, "cuda"), _run(config, "cuda")
    a, b, c, ci = _accuracies(cpu), _accuracies(cuda), _accuracies(again), _half_widths(cpu)
    lines = [f"| method | group | CPU | CUDA | abs. difference | CPU 95% CI half-width | within {TOLERANCE} |",
             "|---|---|---:|---:|---:|---:|---|"]
    ok = True
    for key in a:
        diff = abs(a[key] - b[key])
        ok &= diff <= TOLERANCE
        half = ci.get(key)
        lines.append(f"| {key[0]} | {key[1]} | {a[key]:.4f} | {b[key]:.4f} | {diff:.4f} | "
                     f"{'' if half is None else f'{half:.4f}'} | {'yes' if diff <= TOLERANCE else '**NO**'} |")
    repeat = "identical" if b == c else "not identical (non-deterministic CUDA kernels; within tolerance above)"
    lines += ["", f"Experiment seconds: CPU {cpu.seconds:.1f}, CUDA {cuda.seconds:.1f}. A second CUDA run "
              f"gave {repeat} accuracies. Result `device` fields: {cpu.device}, {cuda.device}."]
    return ok, lines


def _texts(prompts: int) -> list[str]:
    from pafo.features import dataset_texts
    from pafo.sources import DataConfig, load_dataset

    return dataset_texts(load_dataset(DataConfig(dataset="synthetic", users=50, prompts=prompts, seed=0)))


def _throughput(texts: list[str], device: str, precision: str) -> tuple[float, object]:
    import torch

    from pafo.encoders import embed_texts, get_encoder

    encoder = get_encoder("minilm", device=device, precision=precision)
    embed_texts(texts[:64], encoder, cache=False)  # load the model and warm the kernels first
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = embed_texts(texts, encoder, cache=False, batch_size=256 if device == "cuda" else 64)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - started), (encoder, result.vectors)


def check_embeddings() -> tuple[bool, list[str]]:
    from pafo.encoders import max_cosine_error

    texts = _texts(THROUGHPUT_PROMPTS)
    subset = texts[:CPU_THROUGHPUT_TEXTS]
    cpu_rate, (_, cpu_vectors) = _throughput(subset, "cpu", "fp32")
    fp32_rate, (_, cuda_vectors) = _throughput(texts, "cuda", "fp32")
    auto_rate, (auto_encoder, _) = _throughput(texts, "cuda", "auto")
    error = max_cosine_error(cpu_vectors, cuda_vectors[: len(subset)])
    ok = error <= EMBED_TOLERANCE
    lines = ["| MiniLM (all-MiniLM-L6-v2, max 256 tokens) | texts | texts / s |", "|---|---:|---:|",
             f"| CPU, fp32, {os.cpu_count()} cores | {len(subset):,} | {cpu_rate:,.0f} |",
             f"| CUDA, fp32 | {len(texts):,} | {fp32_rate:,.0f} |",
             f"| CUDA, auto (→ {auto_encoder.precision}) | {len(texts):,} | {auto_rate:,.0f} |", "",
             f"Largest cosine error of CUDA fp32 vectors against the CPU's on the same {len(subset):,} texts: "
             f"{error:.2e} (tolerance {EMBED_TOLERANCE:g}): {'pass' if ok else '**FAIL**'}."]
    return ok, lines


def measure_scale() -> list[str]:
    result = _run(_config(SCALE_USERS), "cuda")
    train = {m: b.train_seconds for m, b in result.methods.items()}
    return [f"One experiment at {SCALE_USERS:,} users (synthetic, TF-IDF features, 8 training pairs per user, "
            f"baseline,pafo) on CUDA: {result.seconds:.1f} s in all, of which embedding "
            f"{result.encoder['seconds']:.1f} s (TF-IDF, CPU) and training "
            + ", ".join(f"{m} {s:.1f} s" for m, s in train.items())
            + ". The same point on the 2-core CPU machine: the scale section."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-scale", action="store_true", help=f"leave out the {SCALE_USERS:,}-user experiment")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(SKIPPED)
        return 0
    from bench.common import machine, publish
    from pafo.device import device_name

    started = time.perf_counter()
    home = tempfile.TemporaryDirectory(prefix="pafo-gpu-home-")  # bf16 calibration record, cache-free embeds
    os.environ["PAFO_HOME"] = home.name
    metrics_ok, metric_lines = check_metrics()
    embed_ok, embed_lines = check_embeddings()
    scale_lines = [] if args.skip_scale else measure_scale()
    verdict = "PASS" if metrics_ok and embed_ok else "FAIL"
    lines = ["## GPU check: CUDA against the CPU, and what the GPU buys", "",
             f"Machine: {machine()}; GPU {device_name('cuda')}; torch {torch.__version__}, CUDA "
             f"{torch.version.cuda}.  ",
             f"Date: {dt.date.today().isoformat()}.  ",
             f"Command: `bench/gpu_check.sh {' '.join(sys.argv[1:])}` ({time.perf_counter() - started:.0f} s).  ",
             f"Verdict: **{verdict}** (accuracies within {TOLERANCE} absolute; fp32 embeddings within cosine error "
             f"{EMBED_TOLERANCE:g}).", "",
             f"### Metrics, CPU vs CUDA ({CHECK_USERS:,} users, TF-IDF, baseline,pafo, seed 0)", "", *metric_lines,
             "", "### Embedding throughput", "", *embed_lines, ""]
    if scale_lines:
        lines += [f"### Training at {SCALE_USERS:,} users", "", *scale_lines, ""]
    print(f"{verdict}: wrote {publish('gpu', chr(10).join(lines))} (section gpu)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
