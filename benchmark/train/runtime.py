"""Device, precision and seeding helpers shared by training and evaluation."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(spec)``."""
    from rfbench.benchmark.errors import ConfigError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = "valid devices: auto, cpu, cuda, cuda:N"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}; {valid}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported; {valid}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none on CPU; ``bf16``: bf16 everywhere; ``off``: none."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def use_channels_last(setting: str, device: torch.device, amp_dtype: torch.dtype | None = None) -> bool:
    """Whether to use the channels-last memory format.

    ``auto`` enables it on CUDA, and on CPU together with bf16 autocast
    (measured faster there for ResNet-18 and SmallCNN, training and attack
    steps alike; see ``docs/performance.md``).  CPU fp32 stays in the default
    layout: channels-last fp32 training can hit a slow path there.
    """
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and amp_dtype == torch.bfloat16)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` when ``enabled`` (default backend), else ``model`` unchanged.

    The compiled wrapper shares the parameters of ``model``; keep the eager
    module for ``state_dict`` so checkpoint keys stay plain.
    """
    return torch.compile(model) if enabled else model


def seed_everything(seed: int) -> dict[str, int]:
    """Seed Python, NumPy and torch (all devices); returns the seeds written to the run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return {"python": seed, "numpy": seed % (2**32), "torch": seed}
