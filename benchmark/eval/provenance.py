"""Provenance of a result: code version, package versions, device, time, command, model source."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "numpy", "pyautoattack", "torchattacks", "pandas", "robustbench")
REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"sha": ..., "dirty": bool}`` of the source tree, or ``{"sha": None}`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a number (None when not installed)."""
    from rfbench.benchmark import __version__

    out: dict[str, str | None] = {"rfbench": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(*, cfg: dict, source: dict, device: torch.device, wall_time: float) -> dict[str, Any]:
    """Everything needed to say how a result was produced (protocol.md, "provenance")."""
    return {
        "config": cfg,
        "seed": cfg.get("seed"),
        "code": git_sha(),
        "packages": package_versions(),
        "device": device_name(device),
        "wall_time_s": round(wall_time, 2),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "model": source,
    }
