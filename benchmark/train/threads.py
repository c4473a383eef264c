"""Intra-op CPU threads that fit the machine: a loaded machine slows a run in proportion, not 10-20×.

PyTorch starts one OpenMP thread per physical core.  Its threads wait for each
other at every parallel region, spinning; when other processes hold the cores,
a thread that is descheduled stalls all the others, so a 2-thread run on a
2-core machine with a load of 4-9 spent 38 CPU-minutes on 5 CPU-minutes of work.

The rule (:func:`fit_threads`), applied once when a CPU run starts
(:func:`apply_cpu_threads`)::

    threads = max(1, min(default, cores - others))

``default``: PyTorch's own count (one per physical core), capped by ``cores``;
``cores``: the CPUs this process may use (``os.sched_getaffinity``, capped by a
cgroup v2 ``cpu.max`` quota); ``others``: the processes runnable besides this one
(``/proc/loadavg``'s running count less one, the median of 9 samples over ~0.2 s).
On an idle machine ``others`` is 0 and the count is ``default``, what PyTorch
would use anyway, so nothing changes there.  The thread count changes the order of
floating-point reductions (weight gradients differ in the last bits between 1 and
2 threads), so it is recorded in every result (``provenance.cpu_threads``) and a
track fixes it (``protocol.threads``, applied by ``rfbench run``).

An explicit count always wins: ``RFBENCH_THREADS=N``; else ``OMP_NUM_THREADS``
(torchrun sets 1 per process) or a count the program set with ``torch.set_num_threads``
(``rfbench.evaluate`` in a script that chose its threads) is left as it is.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

THREADS_ENV = "RFBENCH_THREADS"
TORCH_DEFAULT = torch.get_num_threads()  # PyTorch's count at import, before rfbench sets any


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    rule: str  # "fit": chosen by the rule; "RFBENCH_THREADS" / "OMP_NUM_THREADS" / "torch.set_num_threads": given
    cores: int
    others: float | None = None  # runnable processes besides this one, when measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def others_running(samples: int = 9, interval_s: float = 0.025) -> float | None:
    """Runnable processes besides this one: the median of ``/proc/loadavg``'s running count, less one (None off Linux)."""
    counts = []
    for i in range(samples):
        try:
            field = Path("/proc/loadavg").read_text().split()[3]
        except (OSError, IndexError):
            return None
        counts.append(int(field.split("/")[0]))
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, statistics.median(counts) - 1)


def fit_threads(cores: int, others: float, default: int | None = None) -> int:
    """``max(1, min(default, cores - others))`` (``default`` = ``cores`` when None), ``others`` rounded."""
    return max(1, min(cores if default is None else min(default, cores), cores - int(round(others))))


def choose_threads(environ: dict[str, str] | None = None) -> ThreadChoice:
    """The intra-op thread count for a CPU run now (see the module docstring); changes nothing."""
    env = os.environ if environ is None else environ
    cores = usable_cores()
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        text = env.get(name, "").strip()
        if text:
            try:
                n = int(text)
            except ValueError:
                from rfbench.core.errors import ConfigError

                raise ConfigError(f"{name} must be a positive integer, got {text!r}") from None
            if n >= 1:
                return ThreadChoice(n, name, cores)
    default = min(TORCH_DEFAULT, cores)
    others = others_running()
    if others is None:
        return ThreadChoice(default, "fit", cores)
    return ThreadChoice(fit_threads(cores, others, default), "fit", cores, others)


_last_set: int | None = None  # the count apply_cpu_threads set last (to tell it from a caller's own)


def apply_cpu_threads(device: torch.device) -> ThreadChoice | None:
    """On the CPU, set ``torch.set_num_threads`` by :func:`choose_threads`; None (no change) on a GPU.

    A count the calling program set itself with ``torch.set_num_threads`` (one that is
    neither PyTorch's default nor the last one set here) is kept, as an explicit choice.
    """
    global _last_set
    if device.type != "cpu":
        return None
    current = torch.get_num_threads()
    if current not in (TORCH_DEFAULT, _last_set) and not os.environ.get(THREADS_ENV, "").strip():
        return ThreadChoice(current, "torch.set_num_threads", usable_cores())
    choice = choose_threads()
    if choice.rule != "OMP_NUM_THREADS" and current != choice.threads:
        torch.set_num_threads(choice.threads)
        _last_set = choice.threads
    return ThreadChoice(torch.get_num_threads(), choice.rule, choice.cores, choice.others)
