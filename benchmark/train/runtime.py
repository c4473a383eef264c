"""Device, precision and seeding helpers shared by training and evaluation."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(spec)``."""
    from rfbench.core.errors import ConfigError

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


def use_channels_last(setting: str, device: torch.device, amp_dtype: torch.dtype | None = None) -> bool | None:
    """Whether to use the channels-last memory format; ``None`` = measure it (:func:`measure_channels_last`).

    ``auto`` enables it on CUDA and on CPU together with bf16 autocast (faster there for ResNet-18 and
    SmallCNN, training and attack steps alike; ``docs/performance.md``).  For CPU fp32 the answer differs
    between CPUs (faster on some, a slow path on others), so ``auto`` returns ``None`` and the caller
    times both layouts on its own model.
    """
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda" or amp_dtype == torch.bfloat16:
        return True
    return None


def measure_channels_last(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                          rounds: int = 5, margin: float = 0.9) -> tuple[bool, dict[str, float]]:
    """Time one attack step (forward + input gradient, eval mode) of ``model`` in both memory layouts.

    The layouts alternate for ``rounds`` rounds after one warm-up each, on a random batch of ``shape``
    (the batch size is capped at 64 to keep the probe under a few seconds); the median of each is kept.
    Channels-last is chosen only when it is below ``margin`` times the default layout's median, so
    noise does not flip the choice.  The model is returned to its mode and to the default layout;
    its weights and buffers are untouched (eval mode, no parameter gradients).  Returns the choice and
    the medians in milliseconds; when the probe's batch runs out of memory, the default layout with
    NaN timings.
    """
    import statistics
    import time

    was_training = model.training
    model.eval()
    x = torch.rand((min(shape[0], 64), *shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for r in range(rounds + 1):
            for cl in (False, True):
                fmt = torch.channels_last if cl else torch.contiguous_format
                model.to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt).requires_grad_(True)
                t0 = time.perf_counter()
                torch.autograd.grad(model(xi).float().sum(), xi)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if r:  # round 0 warms up
                    times[cl].append(time.perf_counter() - t0)
    except (torch.OutOfMemoryError, RuntimeError) as exc:  # the probe's batch does not fit: keep the default
        if not (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()):
            raise
        return False, {"default_ms": float("nan"), "channels_last_ms": float("nan")}
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    med = {cl: statistics.median(v) * 1e3 for cl, v in times.items()}
    return med[True] < margin * med[False], {"default_ms": med[False], "channels_last_ms": med[True]}


def layout_cache_path() -> Path:
    """The per-machine cache of layout measurements: ``$RFBENCH_CACHE`` or ``$XDG_CACHE_HOME/rfbench`` (``~/.cache``)."""
    root = os.environ.get("RFBENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rfbench"
    return Path(root) / "layouts.json"


def _machine() -> str:
    """The CPU model (or GPU name) and torch version: what a layout measurement depends on besides the model."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def cached_channels_last(model: torch.nn.Module, shape: tuple[int, ...],
                         device: torch.device) -> tuple[bool, dict[str, float], bool]:
    """:func:`measure_channels_last`, measured once per machine, model architecture and input shape.

    The answer is kept in :func:`layout_cache_path` (like cuDNN's benchmark cache), so two runs of one
    config on one machine use the same layout and stay bit-identical; another CPU or torch version
    measures again.  Returns the choice, the medians (ms) and whether they came from the cache.
    """
    import hashlib

    arch = hashlib.sha256(repr([(k, tuple(v.shape)) for k, v in model.state_dict().items()]).encode()).hexdigest()[:12]
    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    key = f"{type(model).__name__}:{arch}|{tuple(shape)}|{name}|{_machine()}"
    path = layout_cache_path()
    cache = read_layout_cache(path)
    hit = cache.get(key)
    if (isinstance(hit, dict) and isinstance(hit.get("channels_last"), bool)
            and all(isinstance(hit.get(k), (int, float)) for k in ("default_ms", "channels_last_ms"))):
        return hit["channels_last"], {k: float(hit[k]) for k in ("default_ms", "channels_last_ms")}, True
    choice, ms = measure_channels_last(model, shape, device)
    if ms["default_ms"] != ms["default_ms"]:  # NaN: the probe ran out of memory; nothing worth keeping
        return choice, ms, False
    cache[key] = {"channels_last": choice, **ms}
    try:  # a read-only home only costs a new measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return choice, ms, False


#: the largest layout cache read (one entry is ~200 bytes)
MAX_LAYOUT_CACHE_BYTES = 1 << 20
_warned_caches: set[str] = set()


def read_layout_cache(path: Path) -> dict:
    """The layout cache at ``path``: a JSON object from a regular file of at most 1 MiB, else ``{}``.

    A missing file is an empty cache.  Anything else unusable (a FIFO, a directory, an oversized or
    corrupt file, JSON that is not an object) is ignored with one warning per process, and the next
    measurement replaces it; it never blocks, never raises.
    """
    from rfbench.core.errors import RfbenchError
    from rfbench.core.io.atomic import loads_json_bounded, read_text_bounded

    if not os.path.lexists(path):
        return {}
    try:
        cache = loads_json_bounded(read_text_bounded(path, MAX_LAYOUT_CACHE_BYTES), str(path))
        if isinstance(cache, dict):
            return cache
        problem = f"a JSON {type(cache).__name__}, not an object"
    except (RfbenchError, ValueError) as exc:
        problem = str(exc)
    if str(path) not in _warned_caches:
        _warned_caches.add(str(path))
        log.warning("ignoring the layout cache %s (%s); the layout is measured again and the file replaced",
                    path, problem)
    return {}


def layout_message(choice: bool, ms: dict[str, float], cached: bool) -> str:
    """The log line of a ``channels_last: auto`` decision (one wording for training and evaluation)."""
    if ms["default_ms"] != ms["default_ms"]:  # NaN
        return "channels_last auto: the layout probe ran out of memory; using the default layout"
    return (f"channels_last auto: an attack step takes {ms['default_ms']:.1f} ms in the default layout and "
            f"{ms['channels_last_ms']:.1f} ms in channels-last on this machine "
            f"({'cached in ' + str(layout_cache_path()) if cached else 'measured now'}); "
            f"using {'channels-last' if choice else 'the default layout'}")


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
