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
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from rfbench.core.errors import CheckpointError
from rfbench.core.io.atomic import atomic_write_bytes


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
    check_checkpoint_bounds(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device=str(map_location)))
        except Exception as exc:  # safetensors raises several types for bad headers
            raise CheckpointError(f"corrupt file {path}: {exc}") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a user, the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes make the weights-only unpickler fail in many ways
        # (RuntimeError from the zip reader, EOFError, IndexError on an empty pickle stack, KeyError, ...)
        raise CheckpointError(f"corrupt file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"corrupt file {path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


#: a record of a ``.pt`` zip may declare at most this many times its stored bytes (``torch.save`` stores them
#: uncompressed, ratio 1); beyond it the file is a decompression bomb
MAX_EXPANSION = 4
#: slack for the small pickle and metadata records, which may legitimately be compressed
EXPANSION_SLACK = 1 << 20


def check_checkpoint_bounds(path: Path) -> None:
    """Refuse, before anything is allocated, a checkpoint that would expand far beyond its size on disk.

    A ``.pt`` file is a zip archive: the sizes its records declare (what the loader allocates) may
    not exceed ``MAX_EXPANSION`` times the file's size plus 1 MiB.  A ``.safetensors`` header is
    bounded by the safetensors library itself (every tensor must lie inside the file).
    """
    import zipfile

    if path.suffix == ".safetensors":
        return
    size = path.stat().st_size
    try:
        if not zipfile.is_zipfile(path):  # the legacy (pre-zip) format, or garbage torch.load refuses
            return
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"corrupt file {path}: {exc}") from None
    if declared > MAX_EXPANSION * size + EXPANSION_SLACK:
        raise CheckpointError(f"refusing to load {path}: its records expand to {declared} bytes from {size} on disk "
                              f"(more than {MAX_EXPANSION}x; torch.save stores tensors uncompressed), a decompression "
                              "bomb or a damaged file")


# what torch's weights-only unpickler says when a pickle asks for more than tensors and containers
_UNSAFE = re.compile(r"GLOBAL (\S+)|reduce for unrecognized function (.+?)(?: which belongs|$)|"
                     r"Can only (?:create new object|build) .*?but got (.+)$", re.M)


def _unpickling_error(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    """Refused (the pickle names code or classes) or corrupt (anything else), on one line.

    torch's message also suggests ``weights_only=False``; that advice is dropped
    on purpose: it is exactly how a malicious checkpoint runs its code.
    """
    text = str(exc)
    reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if text else type(exc).__name__
    unsafe = _UNSAFE.search(reason)
    if unsafe:
        what = next(g for g in unsafe.groups() if g).strip().rstrip(".")
        return CheckpointError(
            f"refusing to load {path}: it asks to unpickle {what}, and rfbench loads only tensors, numbers, "
            "strings, lists and dicts (weights_only); save the weights with torch.save(model.state_dict(), ...) "
            "or as .safetensors")
    first = reason.splitlines()[0] if reason else type(exc).__name__
    return CheckpointError(f"corrupt file {path}: not a weights-only PyTorch checkpoint ({first})")


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
