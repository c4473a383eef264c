"""Checkpoints: atomic saves and safe loads.

Loading never unpickles arbitrary objects: ``.pt`` files go through
``torch.load(weights_only=True)`` and ``.safetensors`` files through
safetensors.  A corrupt or truncated file raises "corrupt file X"; a file
whose keys or shapes do not match the model raises a summary of the mismatch.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError
from benchmark.io.atomic import atomic_write_bytes


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists and dicts only) atomically."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save as st_save

        atomic_write_bytes(path, st_save({k: v.contiguous() for k, v in payload.items()}))
        return
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True`` or safetensors).

    Raises :class:`CheckpointError` for a missing, corrupt, truncated or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device=str(map_location)))
        except Exception as exc:  # safetensors raises several types for bad headers
            raise CheckpointError(f"corrupt file {path}: {exc}") from None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects other than tensors ({msg}); "
                "rfbench loads weights only"
            ) from None
        raise CheckpointError(f"corrupt file {path}: {msg}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"corrupt file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"corrupt file {path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def load_state_dict_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, summarising any key or shape mismatch in one message."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
