"""``--device auto|cpu|cuda`` (pafo.device): validation, auto → CPU here, CUDA refused cleanly here, CPU results
unchanged, the device kept out of the registry's reuse key yet honoured by its workers; and the GPU check's skip
path (bench/gpu_check.sh) on this CPU-only machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from pafo.device import DEVICE_ENV, MSG_NO_CUDA, resolve_device, with_device
from pafo.errors import PafoInputError
from pafo.experiment import ExperimentConfig, RunSettings, run_experiment
from pafo.methods import PAFOConfig
from pafo.paths import PACKAGE_ROOT
from pafo.registry import FAILED, RunRegistry, config_hash
from pafo.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
TINY = ["--dataset", "synthetic", "--users", "24", "--prompts", "16", "--responses-per-prompt", "4",
        "--train-pairs", "6", "--test-pairs", "4", "--encoder", "tfidf", "--bootstrap", "20", "--epochs", "3",
        "--hidden", "16", "--k", "4"]


def tiny(data) -> ExperimentConfig:
    return ExperimentConfig(data=data, run=RunSettings(encoder="tfidf", methods="baseline,groupdro,pafo",
                                                       bootstrap=20),
                            train=TrainConfig(epochs=3, batch_size=64, hidden=16, k=4, patience=3),
                            pafo=PAFOConfig(dense=4))




def one_line(code, out, err) -> str:
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("command", [["experiment", *TINY], ["sweep", *TINY, "--grid", "pafo.beta=0,1"],
                                     ["runs", "start", *TINY], ["embed", *TINY[:2]],
                                     ["score", "--run-dir", ".", "--input", "x.csv"]])
def test_unknown_device_is_exit_2_with_one_line(command, capsys):
    """Bug guarded: a typo such as --device gpu must be refused before any work, as every other bad option is."""
    message = one_line(*run_cli([*command, "--device", "gpu"], capsys))
    assert "--device" in message and "'gpu'" in message


def test_bad_device_environment_variable_is_named(monkeypatch):
    """Bug guarded: a bad $PAFO_DEVICE (what registry workers read without a stored device) names the variable."""
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(PafoInputError, match=DEVICE_ENV):
        resolve_device()


@no_cuda
def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device() == resolve_device("auto") == resolve_device("cpu") == "cpu"


@no_cuda
@pytest.mark.parametrize("command", [["experiment", *TINY], ["sweep", *TINY, "--grid", "pafo.beta=0,1"],
                                     ["runs", "start", *TINY], ["embed", *TINY[:2]]])
def test_cuda_without_cuda_is_exit_2_with_one_line(command, capsys):
    """Bug guarded: --device cuda on a CPU-only machine must say so at once (not fall back to the CPU silently,
    and not queue runs or cells that would each fail later)."""
    message = one_line(*run_cli([*command, "--device", "cuda"], capsys))
    assert MSG_NO_CUDA in message
    assert RunRegistry().list() == []  # nothing was queued


@no_cuda
def test_cpu_results_are_identical_with_and_without_the_device_option(tiny_config):
    """Bug guarded: the device plumbing must not change a CPU user's results: same seed, same metrics (timings
    aside), with --device cpu, auto or nothing; the result records the device used."""
    from tests.test_experiment import without_timings

    config = tiny(tiny_config)
    default = run_experiment(config)
    for device in ("cpu", "auto"):
        other = run_experiment(dataclasses.replace(config), device=device)
        assert json.dumps(without_timings(other.to_json()), sort_keys=True) == json.dumps(
            without_timings(default.to_json()), sort_keys=True)
    assert default.device == "cpu"


def test_device_is_not_part_of_the_reuse_key():
    """Bug guarded: the device is an execution setting; it must not split the registry's cache (nor change a
    CPU user's config hash, which has no execution key at all)."""
    config = ExperimentConfig().to_dict()
    assert "execution" not in config
    assert config_hash(with_device(config, "cuda")) == config_hash(with_device(config, "cpu")) == config_hash(config)
    assert with_device(config, None) is config
    assert ExperimentConfig.from_dict(with_device(config, "cuda")).to_dict() == config


@no_cuda
def test_a_worker_honours_the_stored_device(worker_home, tiny_config):
    """Bug guarded: a run submitted with --device must run on that device in its worker, whichever process
    starts it; here the stored ``cuda`` makes the worker fail with the no-CUDA message instead of training on
    the CPU."""
    from conftest import kill_workers

    registry = RunRegistry(worker_home)
    try:
        config = with_device(tiny(tiny_config).to_dict(), "cuda")
        record = registry.wait(registry.submit(config, fingerprint="f").id, timeout=120)
        assert record.status == FAILED and MSG_NO_CUDA in record.error
    finally:
        kill_workers(registry)


@no_cuda
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    """Bug guarded: bench/gpu_check.sh must pass (exit 0) on CPU-only machines, saying it skipped, and write no
    GPU figures."""
    results = PACKAGE_ROOT / "bench" / "RESULTS.md"
    before = results.read_text() if results.exists() else None
    env = {"PATH": "/usr/bin:/bin", "PAFO_HOME": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(PACKAGE_ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, cwd=PACKAGE_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "skipped: no CUDA device" in done.stdout
    assert (results.read_text() if results.exists() else None) == before
