"""A fixed CPU workload timed with PyTorch's default thread count and with rfbench's rule, under an artificial load.

    python perf/bench_threads.py --busy 0,2,4 --steps 30

For each ``--busy B``: start B busy-loop processes, wait 2 s, then time ``--steps`` PGD-7 adversarial training
steps of SmallCNN on Fashion-MNIST-sized random batches of 64 (forward, 7 attack steps, backward, SGD) with

* ``default``: ``torch.set_num_threads`` left at PyTorch's default (one per physical core), rfbench's old behaviour;
* ``rule``: :func:`rfbench.benchmark.train.threads.choose_threads` (``max(1, min(default, cores - others))``),

alternating the two ``--repeats`` times; prints the medians and the machine's load, and writes ``--out`` JSON.
On a machine shared with other jobs the load is not only the artificial one: the JSON records /proc/loadavg.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rfbench.benchmark.train.threads import TORCH_DEFAULT, choose_threads  # noqa: E402
from rfbench.core.io import atomic_write_json  # noqa: E402
from rfbench.models import create_model  # noqa: E402


def busy() -> None:
    while True:
        pass


def workload(steps: int) -> float:
    """Seconds for ``steps`` PGD-7 training steps of SmallCNN (batch 64, 1×28×28)."""
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1, (0.286,), (0.353,))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
    t0 = time.perf_counter()
    for _ in range(steps):
        delta = torch.zeros_like(x).uniform_(-0.1, 0.1)
        for _ in range(7):
            delta.requires_grad_(True)
            g, = torch.autograd.grad(torch.nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y), delta)
            delta = (delta.detach() + 0.025 * g.sign()).clamp(-0.1, 0.1)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--busy", default="0,2,4", help="comma-separated numbers of busy-loop processes")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "perf" / "results" / "bench_threads.json"))
    args = p.parse_args()
    os.environ.pop("RFBENCH_THREADS", None)
    os.environ.pop("OMP_NUM_THREADS", None)
    rows = []
    for b in [int(v) for v in args.busy.split(",")]:
        procs = [mp.Process(target=busy, daemon=True) for _ in range(b)]
        for pr in procs:
            pr.start()
        try:
            time.sleep(2)
            times: dict[str, list[float]] = {"default": [], "rule": []}
            picked = []
            load0 = open("/proc/loadavg").read().split()[:4]
            for _ in range(args.repeats):
                for name in ("default", "rule"):
                    choice = choose_threads()
                    n = TORCH_DEFAULT if name == "default" else choice.threads
                    if name == "rule":
                        picked.append((choice.threads, choice.others))
                    torch.set_num_threads(n)
                    times[name].append(workload(args.steps))
            load1 = open("/proc/loadavg").read().split()[:4]
        finally:
            for pr in procs:
                pr.terminate()
            for pr in procs:
                pr.join()
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"busy": b, "default_threads": TORCH_DEFAULT, "rule_threads_others": picked,
                     "default_s": times["default"], "rule_s": times["rule"], "median_s": med,
                     "speedup": med["default"] / med["rule"], "loadavg_start": load0, "loadavg_end": load1})
        print(f"busy={b}: default {TORCH_DEFAULT} threads {med['default']:.2f} s, rule {picked} {med['rule']:.2f} s "
              f"(x{med['default'] / med['rule']:.2f}); load {' '.join(load0)} -> {' '.join(load1)}", flush=True)
        # after every row, so a run stopped by a time limit keeps the rows it finished
        atomic_write_json(args.out, {"steps": args.steps, "repeats": args.repeats, "cores": os.cpu_count(),
                                     "cpu": cpu_model(), "rows": rows, "torch": torch.__version__})
    return 0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor field."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
