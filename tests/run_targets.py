"""Small run targets for the registry and app tests; each follows the worker's target contract.

Config keys they read: ``steps`` (int), ``sleep`` (seconds per step), ``message`` (for ``raises``), ``gate`` and
``ready`` (paths, for ``gated``). Tests synchronise on gates they open, never on how fast a run is: a gated target
announces that it started (the ``ready`` file) and returns only once the test creates the ``gate`` file.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pafo.errors import EXIT_ENVIRONMENT, EXIT_INPUT, PafoEnvironmentError, PafoInputError, RunCancelled
from pafo.paths import atomic_write_text
from pafo.runs_cli import add_runs_commands

__all__ = [
    "cli_main",
    "disk_full",
    "gated",
    "gated_experiment",
    "ignores_cancel",
    "quick",
    "raises",
    "steps",
    "submit_many",
    "until_cancelled",
    "writes_result",
]

Progress = Callable[[float, str, "dict | None"], None]
GATE_GIVE_UP = 600.0  # seconds: a test that never opens its gate fails instead of leaving a worker behind forever


def quick(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Finishes at once: used where only the registry's own latency matters."""
    return {"ok": True, "value": config.get("value")}


def steps(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """``steps`` epochs with a sleep each, reporting metrics per epoch and honouring cancel."""
    total = int(config.get("steps", 3))
    for epoch in range(total):
        if should_stop():
            raise RunCancelled()
        time.sleep(float(config.get("sleep", 0.05)))
        progress((epoch + 1) / total, f"epoch {epoch + 1}/{total}", {"epoch": epoch + 1, "loss": 1.0 / (epoch + 1)})
    return {"epochs": total, "final_loss": 1.0 / total}


def writes_result(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Writes its own result.json and a per-user table, as the real experiment does."""
    atomic_write_text(out_dir / "per_user.csv", "user,accuracy\nu1,0.5\n")
    atomic_write_text(out_dir / "result.json", json.dumps({"written_by": "target", "value": config.get("value")}))
    progress(1.0, "written", None)
    return {"ignored": True}


def raises(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Fails with a known message."""
    progress(0.5, "about to fail", None)
    raise ValueError(config.get("message", "boom"))


def disk_full(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Fails the way a full disk does while writing an artifact."""
    raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "weights.safetensors"))


def until_cancelled(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Loops (checking should_stop each batch) until cancelled; gives up after 60 s so a bug cannot hang."""
    deadline = time.monotonic() + float(config.get("max_seconds", 60))
    batch = 0
    while time.monotonic() < deadline:
        if should_stop():
            raise RunCancelled()
        batch += 1
        progress(min(0.99, batch / 1000), f"batch {batch}", None)
        time.sleep(0.02)
    return {"batches": batch}


def ignores_cancel(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Never checks should_stop, so only the forced kill can end it early."""
    deadline = time.monotonic() + float(config.get("max_seconds", 60))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return {"finished": True}


def wait_for_gate(gate: Path, should_stop: Callable[[], bool] | None, progress: Progress) -> None:
    """Block until ``gate`` exists; with ``should_stop``, a cancel ends the wait (as a training loop would)."""
    deadline = time.monotonic() + GATE_GIVE_UP
    while not gate.exists():
        if should_stop is not None and should_stop():
            raise RunCancelled()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened the gate {gate}")
        progress(0.0, "waiting for the test's gate", None)
        time.sleep(0.02)


def gated(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool]) -> dict:
    """Writes ``ready``, then waits for ``gate`` (cancellable unless ``ignore_cancel``) and returns a result."""
    Path(config["ready"]).write_text(str(os.getpid()))
    wait_for_gate(Path(config["gate"]), None if config.get("ignore_cancel") else should_stop, progress)
    return {"gated": True, "value": config.get("value")}


def gated_experiment(config: dict, *, out_dir: Path, progress: Progress, should_stop: Callable[[], bool],
                     features: dict | None = None) -> dict:
    """The real experiment (the rest of ``config``; ``features`` as a Ray cell passes them), begun only once the
    test creates the ``gate`` file."""
    from pafo.experiment import run_experiment

    wait_for_gate(Path(config["gate"]), should_stop, progress)
    experiment = {key: value for key, value in config.items() if key != "gate"}
    return run_experiment(experiment, out_dir=out_dir, progress=progress, should_stop=should_stop, features=features)


def submit_many(home: str, barrier, count: int, tag: str) -> list[str]:
    """Submit ``count`` quick runs right after ``barrier`` releases (for the two-process submission test)."""
    from pafo.registry import RunRegistry

    registry = RunRegistry(home)
    barrier.wait(10)
    config = {"target": "tests.run_targets:quick"}
    return [registry.submit({**config, "value": f"{tag}{i}"}, fingerprint="fp").id for i in range(count)]


# ------------------------------------------------------------------ a stand-in CLI for the `pafo runs` tests


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """Stand-in for the `pafo experiment` flags."""
    parser.add_argument("--target", default="tests.run_targets:steps")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--value", default=None)


def _config_from_args(args: argparse.Namespace) -> dict:
    """Stand-in validation: steps must be positive."""
    if args.steps <= 0:
        raise PafoInputError(f"--steps must be a positive integer, got {args.steps}")
    return {"target": args.target, "steps": args.steps, "sleep": args.sleep, "value": args.value}


def cli_main(argv: list[str] | None = None) -> int:
    """What pafo.cli does around the runs commands: one-line error on stderr, exit 2 for bad input and 3 for a
    fault of the environment."""
    parser = argparse.ArgumentParser(prog="pafo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_runs_commands(subparsers, _add_experiment_arguments, _config_from_args, lambda config: "test-fingerprint")
    args = parser.parse_args(["runs", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.handler(args)
    except PafoInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT if isinstance(exc, PafoEnvironmentError) else EXIT_INPUT


if __name__ == "__main__":
    sys.exit(cli_main())
