"""Shared fixtures: a private ``$PAFO_HOME`` per test, tiny synthetic data, the shared DSP file, table writers.

The DSP file is read from ``../shared/data`` (it must never be copied into the repository).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from string import Formatter

import numpy as np
import pandas as pd
import pytest

from pafo.sources import DataConfig

DSP_PATH = Path(__file__).resolve().parents[2] / "shared/data/dsp_test_part_a.json"

# PAFO_HOME as the test session found it; a broader-scoped fixture that changed it (e.g. test_app's ``studio``)
# owns the home of its tests, and the per-test home below must not pull those tests away from it.
_SESSION_HOME = os.environ.get("PAFO_HOME")


@pytest.fixture(autouse=True, scope="session")
def data_roots_for_tests(tmp_path_factory: pytest.TempPathFactory):
    """The tests' temporary folders are a data root of the app (``$PAFO_DATA_ROOTS``), as an analyst adds the
    folder of their data: the app reads a path only inside a root. Session-wide, so app servers started by
    module fixtures inherit it; a test of the refusal sets its own."""
    from pafo.data_roots import DATA_ROOTS_ENV

    previous = os.environ.get(DATA_ROOTS_ENV)
    os.environ[DATA_ROOTS_ENV] = str(tmp_path_factory.getbasetemp())
    yield
    if previous is None:
        os.environ.pop(DATA_ROOTS_ENV, None)
    else:
        os.environ[DATA_ROOTS_ENV] = previous


@pytest.fixture(autouse=True)
def pafo_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty ``$PAFO_HOME`` (embeddings cache, datasets cache, runs), never the repo's."""
    current = os.environ.get("PAFO_HOME")
    if current != _SESSION_HOME:
        return Path(current) if current else Path()
    home = tmp_path_factory.mktemp("pafo_home")
    monkeypatch.setenv("PAFO_HOME", str(home))
    return home


@pytest.fixture
def tiny_config() -> DataConfig:
    """A synthetic dataset small enough for a test: 24 users, 16 prompts × 4 responses, seed 0."""
    return DataConfig(dataset="synthetic", users=24, prompts=16, responses_per_prompt=4, train_pairs=6,
                      test_pairs=4, seed=0)


@pytest.fixture(scope="session")
def dsp_path() -> Path:
    """The shared DSP test file (461 items), read in place."""
    if not DSP_PATH.is_file():
        pytest.skip(f"shared DSP file not found at {DSP_PATH}")
    return DSP_PATH


@pytest.fixture(scope="session")
def dsp_items(dsp_path: Path) -> list[dict]:
    """The raw items of the DSP file, for checking what the loader made of them."""
    return json.loads(dsp_path.read_text(encoding="utf-8"))


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format its suffix names (.csv, .jsonl, .json, .parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".json":
        frame.to_json(path, orient="records", force_ascii=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_text(frame.to_csv(index=False), encoding="utf-8")
    return path


@pytest.fixture(name="write_table")
def write_table_fixture() -> Callable[[pd.DataFrame, Path], Path]:
    return write_table


def pairs_frame(n_users: int = 4, n_prompts: int = 8, *, same_pairs: bool = False, seed: int = 0) -> pd.DataFrame:
    """A valid ``pairs`` table: every user labels one pair on every prompt.

    With ``same_pairs`` every user labels the same two responses of a prompt (direction drawn per user), so each
    pair has ``n_users`` co-labellers; otherwise each user compares their own two of four responses.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        for prompt in range(n_prompts):
            if same_pairs:
                a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
            else:
                a, b = rng.choice(4, size=2, replace=False)
            rows.append({"user_id": f"user{user}", "prompt": f"How do I do task number {prompt}?",
                         "chosen": f"Answer {a} to task {prompt}: do it step {a}.",
                         "rejected": f"Answer {b} to task {prompt}: do it step {b}."})
    return pd.DataFrame(rows)


@pytest.fixture(name="pairs_frame")
def pairs_frame_fixture() -> Callable[..., pd.DataFrame]:
    return pairs_frame


def personalllm_frame(n_prompts: int = 12, n_responses: int = 4, models: tuple[str, ...] = ("rm_a", "rm_b", "rm_c"),
                      seed: int = 0) -> pd.DataFrame:
    """A tiny table in PersonalLLM's schema: prompt, response_1..N and response_<k>_<model> scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        row: dict = {"prompt": f"Question {p}: what should I know about topic {p}?"}
        for k in range(1, n_responses + 1):
            row[f"response_{k}"] = f"Reply {k} about topic {p}, written in style {k}."
            for m, model in enumerate(models):
                row[f"response_{k}_{model}"] = float(rng.normal(loc=m, scale=1.0 + m))
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(name="personalllm_frame")
def personalllm_frame_fixture() -> Callable[..., pd.DataFrame]:
    return personalllm_frame


def message_fragment(template: str) -> str:
    """The longest literal part of a message template (the text between its ``{placeholders}``)."""
    return max((literal for literal, *_ in Formatter().parse(template)), key=len).strip()


def check_message(text: str, template: str, *values: object) -> None:
    """``text`` is ``template`` formatted: its distinctive fragment and the given values all appear in it."""
    fragment = message_fragment(template)
    assert fragment and fragment in text, f"expected {fragment!r} (from the template) in {text!r}"
    for value in values:
        assert str(value) in text, f"expected {value!r} in {text!r}"


@pytest.fixture(name="check_message")
def check_message_fixture() -> Callable[..., None]:
    return check_message


@pytest.fixture
def single_thread(monkeypatch: pytest.MonkeyPatch):
    """Train and encode on one thread: tiny models on a shared 2-core machine run many times faster than with
    two contended intra-op threads (results are the same; only the speed differs)."""
    import torch
    from threadpoolctl import threadpool_limits

    import pafo.experiment

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(pafo.experiment, "set_threads", lambda n=None: torch.set_num_threads(1))
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture
def method_ctx():
    """A method context on a tiny synthetic dataset with readable features (its style attributes + noise), 30
    users, a 4-epoch trainer: shared by the method and cluster tests."""
    from pafo.experiment import build_context
    from pafo.metrics import group_codes
    from pafo.sources import load_dataset
    from pafo.sources.synthetic import ATTRIBUTES
    from pafo.support import assign_groups, exact_support
    from pafo.training import TrainConfig

    ds = load_dataset(DataConfig(users=30, prompts=16, responses_per_prompt=4, train_pairs=8, test_pairs=4, seed=0))
    rng = np.random.default_rng(0)
    attrs = ds.responses[list(ATTRIBUTES)].to_numpy(np.float32)
    features = np.hstack([attrs, 0.1 * rng.standard_normal((len(attrs), 4))]).astype(np.float32)
    groups = assign_groups(exact_support(ds).user_support)
    user_group = group_codes(groups.groups.to_numpy())
    train = TrainConfig(epochs=4, batch_size=64, hidden=16, k=4, patience=4)
    return build_context(ds, features, user_group, train, seed=0)


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """``pafo`` in this process: (exit code, stdout, stderr); argparse's usage errors give their exit code too."""
    from pafo import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy (a status, a file: an event the test waits on) and return its value;
    fail after ``timeout``, a generous bound that only a hang reaches."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def worker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $PAFO_HOME for tests with real worker processes: the repo root on PYTHONPATH (workers import
    tests.run_targets) and no concurrency override from the environment."""
    from pafo.paths import PACKAGE_ROOT

    monkeypatch.setenv("PAFO_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(PACKAGE_ROOT))
    monkeypatch.delenv("PAFO_MAX_CONCURRENT", raising=False)
    return tmp_path


def kill_workers(registry) -> None:
    """Kill every worker of ``registry`` still alive, reap them and close it, so no test leaks processes."""
    import contextlib
    import signal

    from pafo import supervisor

    rows = registry.store.read("SELECT id, pid FROM runs WHERE pid IS NOT NULL")
    for run_id, pid in rows:
        if supervisor.process_alive(pid, run_id):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    for run_id, _ in rows:
        supervisor.reap(run_id, timeout=2.0)
    registry.close()
