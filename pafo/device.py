"""Where tensors run: ``--device auto|cpu|cuda`` for the text encoders and for training.

The device is an execution setting, not part of what a run computes: it never enters a run's config hash (the
registry leaves the config's ``execution`` key out of it, :func:`without_execution`), so a finished run is reused
whichever device asked for it, and a CPU user's reuse keys are what they were before the option existed. A
config that names a device carries it as ``{"execution": {"device": ...}}``, so a registry worker (local or on a
Ray node) uses the device its run was submitted with, whichever process starts it; without one the worker takes
``$PAFO_DEVICE``, else ``auto``. ``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU. The device a
run actually used is recorded in its result (``device``).

On the CPU nothing changes: the same seed gives the same metrics as before. On CUDA, float reductions run in
another order (and a few kernels are non-deterministic), so metrics match the CPU's within a tolerance only
(``bench/gpu_check.sh`` states and checks it). This module imports torch only when a device is resolved.
"""

from __future__ import annotations

import argparse
import os

from .errors import PafoInputError

__all__ = ["DEFAULT_DEVICE", "DEVICES", "DEVICE_ENV", "EXECUTION_KEY", "MSG_BAD_DEVICE", "MSG_NO_CUDA",
           "add_device_argument", "check_device", "config_device", "cuda_available", "device_name",
           "resolve_device", "with_device", "without_execution"]

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DEVICE_ENV = "PAFO_DEVICE"
EXECUTION_KEY = "execution"  # config key of execution settings: stored with a run, left out of its hash
MSG_BAD_DEVICE = "{source}: unknown device {value!r}; use one of " + ", ".join(DEVICES)
MSG_NO_CUDA = ("--device cuda: no CUDA device is available on this machine (torch.cuda.is_available() is False); "
               "use --device cpu or auto")
DEVICE_HELP = ("where encoders and training run: auto = CUDA when available, else the CPU (default: $PAFO_DEVICE "
               "or auto); an execution setting, so it never changes which finished runs are reused")


def check_device(value: str | None, source: str = "--device") -> str | None:
    """``value`` if it is one of DEVICES (``None`` stays ``None``), else :class:`PafoInputError` naming ``source``."""
    if value is not None and value not in DEVICES:
        raise PafoInputError(MSG_BAD_DEVICE.format(source=source, value=value))
    return value


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(value: str | None = None) -> str:
    """``cpu`` or ``cuda``: ``value``, else ``$PAFO_DEVICE``, else ``auto``; asking for CUDA where there is none
    is input to fix (exit 2), not a silent fall back to the CPU."""
    if value is None:
        value = check_device(os.environ.get(DEVICE_ENV) or None, DEVICE_ENV) or DEFAULT_DEVICE
    check_device(value)
    if value == "auto":
        return "cuda" if cuda_available() else "cpu"
    if value == "cuda" and not cuda_available():
        raise PafoInputError(MSG_NO_CUDA)
    return value


def device_name(device: str) -> str:
    """The GPU's name for ``cuda``; ``cpu`` otherwise (the CPU model is in bench.common.machine())."""
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name(0))
    return "cpu"


def with_device(config: dict, device: str | None) -> dict:
    """``config`` carrying ``device`` as an execution setting (unchanged when ``device`` is ``None``)."""
    if device is None:
        return config
    check_device(device)
    return {**config, EXECUTION_KEY: {**(config.get(EXECUTION_KEY) or {}), "device": device}}


def config_device(config: dict) -> str | None:
    """The device a stored config asks for, if any."""
    execution = config.get(EXECUTION_KEY) or {}
    return check_device(execution.get("device") if isinstance(execution, dict) else None, "execution.device")


def without_execution(config: dict) -> dict:
    """What defines a run's result: the config without its execution settings (what the registry hashes)."""
    return {key: value for key, value in config.items() if key != EXECUTION_KEY}


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (argparse refuses other values with exit 2 and one line)."""
    parser.add_argument("--device", choices=DEVICES, default=None, help=DEVICE_HELP)
