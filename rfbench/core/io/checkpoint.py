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
            _check_legacy_bounds(path, size)
            return
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"corrupt file {path}: {exc}") from None
    if declared > MAX_EXPANSION * size + EXPANSION_SLACK:
        raise CheckpointError(f"refusing to load {path}: its records expand to {declared} bytes from {size} on disk "
                              f"(more than {MAX_EXPANSION}x; torch.save stores tensors uncompressed), a decompression "
                              "bomb or a damaged file")


#: the magic number that opens PyTorch's legacy (pre-1.6, non-zip) checkpoint format
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Inert:
    """What the scan below gets for any global a pickle names: accepts every call and update, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle.Unpickler):
    """Reads a legacy checkpoint's main pickle only to add up the element counts its storages declare."""

    def __init__(self, fh: Any) -> None:
        super().__init__(fh)
        self.declared = 0

    def find_class(self, module: str, name: str) -> Any:  # never imports: every global is inert
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) > 4 and pid[0] == "storage" and isinstance(pid[4], int):
            self.declared += max(pid[4], 0)
        return _Inert()


def _check_legacy_bounds(path: Path, size: int) -> None:
    """A legacy checkpoint's storages, allocated at their declared sizes before their bytes are read, must fit the file.

    Each element takes at least one byte of the file, so storages declaring more elements than the
    file has bytes are refused before ``torch.load`` would allocate them.
    """
    # every pickle here goes through _StorageScan, whose find_class imports nothing: a malicious pickle runs no code
    with open(path, "rb") as fh:
        try:
            if _StorageScan(fh).load() != LEGACY_MAGIC:  # not a legacy checkpoint: torch.load gives its own error
                return
        except Exception:  # noqa: BLE001 - garbage: torch.load reports it as corrupt
            return
        try:
            _StorageScan(fh).load(), _StorageScan(fh).load()  # protocol version, system info (numbers and dicts)
            scan = _StorageScan(fh)
            scan.load()
        except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways
            raise CheckpointError(f"corrupt file {path}: {type(exc).__name__} in its legacy-format pickle") from None
    if scan.declared > size:
        raise CheckpointError(f"refusing to load {path}: its storages declare {scan.declared} elements, more than "
                              f"the file's {size} bytes could hold (a decompression bomb or a damaged file)")


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
