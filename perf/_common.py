"""Shared helpers of the benchmark scripts (not a library module; not imported by rfbench itself).

* :func:`interleave` times contenders side by side in one process: one
  warm-up call each, then ``repeats`` rounds that call every contender once
  (the order rotates every round so no contender always runs after the same
  one); medians are reported, and speed-ups are the median over rounds of the
  per-round time ratio (:func:`paired_speedup`).  On a shared machine absolute
  times drift, the ratios between contenders timed in the same rounds hold.
* :class:`PeakMemory` -- peak memory of one call: ``torch.cuda.max_memory_allocated``
  on CUDA; on CPU the growth of the process's resident set over its value at
  the start of the call, sampled every 2 ms after handing freed heap pages back
  to the OS (``malloc_trim``), so one contender's cached pages are not charged
  to the next.
* :func:`forward_flops` -- forward FLOPs per image counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (an attack step is about 2
  forwards, a training step about 3: ``docs/performance.md``).
* :func:`matmul_peak` -- the measured GEMM throughput of the device in a dtype,
  the denominator of "fraction of peak".
* :func:`machine_info` -- CPU model and flags, threads, load average, torch version.
* :func:`trained_smallcnn` -- a SmallCNN after a short clean training;
* :func:`cifar_subset` -- the first N images per class of the shared JPEG
  CIFAR-10 archive, extracted once into a cache folder (``imagefolder:`` layout).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from rfbench.benchmark.data import cifar10_jpeg  # noqa: E402
from rfbench.core.io import atomic_write_json  # noqa: E402

RESULTS = ROOT / "perf" / "results"
CIFAR_TAR = cifar10_jpeg.archive_path()


def set_threads(n: int) -> int:
    """Use ``n`` intra-op threads (0 = torch's default); returns the number in use."""
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on; call again at the end for the closing load average."""
    info = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except OSError:
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of the code in the ``with`` block, in MiB (see the module docstring for how)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.mib = (self._peak - self._base) / 2**20


@dataclass
class Timing:
    """Seconds and peak memory of every timed call of one contender."""

    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    outputs: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak(self) -> float:
        return max(self.peak_mib) if self.peak_mib else float("nan")


def interleave(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmup: dict[str, Callable[[], object]] | None = None,
    keep_outputs: bool = False,
    per_round: Callable[[], None] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Timing]:
    """Time every contender ``repeats`` times, round-robin, after one warm-up call each.

    ``warmup`` maps names to a cheaper call with the same code path (default:
    the timed call itself).  Round r starts at contender ``r mod n``.
    ``per_round`` runs at the start of every round (e.g. :class:`GemmPeak`).
    """
    names = list(contenders)
    for name in names:
        (warmup or {}).get(name, contenders[name])()
    sync(device)
    out = {n: Timing() for n in names}
    for r in range(repeats):
        if per_round is not None:
            per_round()
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                result = contenders[name]()
                sync(device)
                dt = time.perf_counter() - t0
            out[name].seconds.append(dt)
            out[name].peak_mib.append(mem.mib)
            if keep_outputs:
                out[name].outputs.append(result)
            log(f"  round {r + 1}/{repeats}  {name:<34s} {dt:8.2f} s  load {os.getloadavg()[0]:.1f}")
    return out


def paired_speedup(peer: Timing, contender: Timing) -> float:
    """Median over rounds of ``peer time / contender time`` (both timed in the same round, minutes apart at most).

    On a machine whose load drifts, the ratio within a round is steadier than the ratio of medians.
    """
    return statistics.median(p / c for p, c in zip(peer.seconds, contender.seconds))


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per image of ``model`` on the batch ``x`` (FlopCounterMode; multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / len(x)


#: (dtype, device, requested n) -> the smaller n that matmul_peak settled on
_GEMM_N: dict[tuple, int] = {}


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, repeats: int = 5,
                max_call_s: float = 0.1) -> float:
    """Median GFLOP/s of an ``n×n`` GEMM in ``dtype`` on ``device`` (the measured peak the tables divide by).

    Where one GEMM takes longer than ``max_call_s`` (bf16 on a CPU without native
    bf16 instructions, emulated: about 2 s at n = 1024 on an AVX2-only EPYC), ``n``
    is halved until it does not (down to 128) and the size is kept for later calls,
    so that a measurement repeated every benchmark round stays short; such a GEMM
    is compute-bound at every one of these sizes.
    """
    key = (dtype, str(device), n)
    n = _GEMM_N.get(key, n)
    small = torch.ones(128, 128, device=device, dtype=dtype)
    small @ small  # library start-up (a CUDA context's first GEMM) is not a slow GEMM
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        sync(device)
        t0 = time.perf_counter()
        a @ b  # also the warm-up of this size
        sync(device)
        if time.perf_counter() - t0 <= max_call_s or n <= 128:
            break
        n = _GEMM_N[key] = n // 2
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t0) / 4)
    return 2 * n**3 / statistics.median(times) / 1e9


class GemmPeak:
    """The GEMM throughput measured once per round, fp32 and bf16 (the median is the table's "peak").

    Measured beside the contenders, so a load that drifts during the run moves
    the peak and the contenders together.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def __call__(self) -> None:
        self.samples["fp32"].append(matmul_peak(torch.float32, self.device))
        self.samples["bf16"].append(matmul_peak(torch.bfloat16, self.device))

    @property
    def median(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items() if v}


def cifar_subset(train_per_class: int, test_per_class: int, tar_path: Path = CIFAR_TAR,
                 cache: Path | None = None) -> Path:
    """Extract the first images (sorted names) of every class of the JPEG CIFAR-10 archive; returns the folder.

    The folder is ``imagefolder:``-ready (``train/<class>/``, ``test/<class>/``)
    and is reused when it already holds the requested counts.
    """
    cache = cache or Path(tempfile.gettempdir()) / "rfbench-bench-data"
    out = cache / f"cifar10-jpeg-{train_per_class}-{test_per_class}"
    stamp = out / ".complete"
    if stamp.exists():
        return out
    if not tar_path.exists():
        raise SystemExit(f"{tar_path} not found: pass --data DIR (an imagefolder with train/ and test/)")
    with tarfile.open(tar_path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg", ".png"))]
        by_class: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
        for m in sorted(members, key=lambda m: m.name):
            parts = Path(m.name).parts
            if len(parts) >= 3 and parts[0] in ("train", "test"):
                by_class.setdefault((parts[0], parts[1]), []).append(m)
        chosen = [m for (split, _), ms in by_class.items()
                  for m in ms[: train_per_class if split == "train" else test_per_class]]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        # in archive order: a gzip stream seeks backwards only by decompressing again from the start
        tar.extractall(tmp, members=sorted(chosen, key=lambda m: m.offset), filter="data")
    if out.exists():  # an earlier extraction that did not finish
        shutil.rmtree(out)
    tmp.rename(out)
    stamp.touch()
    return out


def trained_smallcnn(bundle, steps: int, seed: int, device: torch.device) -> torch.nn.Module:
    """SmallCNN after ``steps`` clean Adam steps (batch 128, lr 1e-3) on ``bundle``'s training images, in eval mode.

    Accurate enough (about 70% on Fashion-MNIST after 60 steps) that attacks
    have correct points to work on.
    """
    import torch.nn.functional as F

    from rfbench.benchmark.data import iterate_batches
    from rfbench.models import create_model

    torch.manual_seed(seed)
    model = create_model("smallcnn", bundle.num_classes, bundle.in_channels, bundle.mean, bundle.std).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    batches = iterate_batches(bundle.train, 128, shuffle=True, generator=torch.Generator().manual_seed(seed),
                              device=device)
    for _, (x, y, _) in zip(range(steps), batches):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def write_results(name: str, data: dict, out: Path | None = None) -> Path:
    """Write ``perf/results/<name>.json`` (or ``out``) atomically; returns the path."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` with ``columns`` = [(key, header, format)] (format '' = as is)."""
    body = [[("" if r.get(k) is None else (format(r[k], f) if f and isinstance(r.get(k), (int, float)) else r[k]))
             for k, _, f in columns] for r in rows]
    print(tabulate(body, headers=[h for _, h, _ in columns], disable_numparse=True))


@contextlib.contextmanager
def quiet_logs():
    """Silence rfbench's INFO logging while benchmarking (warnings still show)."""
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(old)
