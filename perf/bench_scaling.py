"""Where the machine saturates: PGD attack-step throughput over batch size × model width (× threads).

For every model, width, precision (fp32; bf16 autocast + channels-last) and
batch size, the script times PGD steps of the rfbench core (one forward and
one input-gradient backward per step, about 2 forwards of work) on random
inputs of the model's image size: one warm-up step per point, then
``--repeats`` rounds over all points, each point stepping for at least
``--min-time`` seconds per round.  It prints the median images/s, achieved
GFLOP/s and the fraction of the GEMM peak measured at the start of each round.  ``saturates at`` is the smallest
batch that reaches 90% of the best throughput of its (model, width,
precision, threads) line.

Example::

    PYTHONPATH=. python perf/bench_scaling.py                       # ~2 min on 1 core at load 8
    PYTHONPATH=. python perf/bench_scaling.py --threads 1,2 --models smallcnn
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import _common as C
import torch

from rfbench.attacks.core import pgd
from rfbench.benchmark.train.runtime import resolve_device
from rfbench.models import create_model

SHAPES = {"resnet18": (3, 32, 32), "smallcnn": (1, 28, 28)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="resnet18,smallcnn")
    p.add_argument("--resnet-widths", default="0.25,0.5,1")
    p.add_argument("--resnet-batches", default="8,32,128")
    p.add_argument("--smallcnn-widths", default="0.5,1,2")
    p.add_argument("--smallcnn-batches", default="32,128,512")
    p.add_argument("--precisions", default="fp32,bf16+CL")
    p.add_argument("--threads", default="1", help="comma-separated thread counts to sweep")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="seconds of timed steps per point and round (at least one step)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all points (medians reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON path (default perf/results/bench_scaling.json)")
    return p.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


class Point:
    """One (threads, model, width, precision, batch) point: its model, inputs and measured throughputs."""

    def __init__(self, threads, name, width, precision, batch, device):
        shape = SHAPES[name]
        torch.manual_seed(0)
        self.key = {"threads": threads, "model": name, "width": width, "precision": precision, "batch": batch}
        self.model = create_model(name, 10, shape[0], (0.5,) * shape[0], (0.25,) * shape[0], width=width)
        self.model = self.model.to(device).eval()
        self.flops = C.forward_flops(self.model, torch.rand(2, *shape, device=device))
        self.x = torch.rand(batch, *shape, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        if precision.endswith("+CL"):
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.kw: dict[str, Any] = dict(eps=8 / 255, alpha=2 / 255, steps=1,
                       autocast_dtype=torch.bfloat16 if precision.startswith("bf16") else None)
        self.device = device
        self.samples: list[float] = []

    def step(self) -> None:
        pgd(self.model, self.x, self.y, **self.kw)
        C.sync(self.device)

    def measure(self, min_time: float) -> float:
        """Images/s of PGD steps for at least ``min_time`` seconds (at least one step)."""
        steps, t0 = 0, time.perf_counter()
        while True:
            self.step()
            steps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                rate = len(self.y) * steps / elapsed
                self.samples.append(rate)
                return rate


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    info = C.machine_info(device)
    rows, peaks = [], {}
    for nt in threads:
        C.set_threads(nt)
        points = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            prefix = "resnet" if name == "resnet18" else name
            for width in _floats(getattr(args, f"{prefix}_widths")):
                for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
                    for b in [int(b) for b in _floats(getattr(args, f"{prefix}_batches"))]:
                        points.append(Point(nt, name, width, precision, b, device))
        gemm = C.GemmPeak(device)
        for p in points:  # warm-up: oneDNN builds its kernels for each shape once
            p.step()
        for r in range(args.repeats):
            gemm()
            for p in points:
                rate = p.measure(args.min_time)
                print(f"  round {r + 1}/{args.repeats}  {nt} thr  {p.key['model']} w{p.key['width']:g}  "
                      f"{p.key['precision']:<8s} batch {p.key['batch']:5d}: {rate:9.1f} img-steps/s  "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        peaks[nt] = gemm.median
        for p in points:
            ips = statistics.median(p.samples)
            gflops = ips * 2 * p.flops / 1e9
            dtype = "bf16" if p.key["precision"].startswith("bf16") else "fp32"
            rows.append({**p.key, "images_per_s": ips, "samples": p.samples, "gflop_per_s": gflops,
                         "pct_of_peak": 100 * gflops / peaks[nt][dtype], "fwd_gflop_per_image": p.flops / 1e9})
    for r in rows:  # the smallest batch reaching 90% of its line's best throughput
        line = [q for q in rows if all(q[k] == r[k] for k in ("threads", "model", "width", "precision"))]
        best = max(q["images_per_s"] for q in line)
        r["saturates_at"] = min(q["batch"] for q in line if q["images_per_s"] >= 0.9 * best)
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    C.print_table(rows, [("threads", "threads", ""), ("model", "model", ""), ("width", "width", "g"),
                         ("precision", "precision", ""), ("batch", "batch", ""),
                         ("images_per_s", "img-steps/s", ".1f"), ("gflop_per_s", "GFLOP/s", ".1f"),
                         ("pct_of_peak", "% peak", ".0f"), ("saturates_at", "saturates at", "")])
    print(f"\nmachine: {info['cpu_model']} ({', '.join(info['cpu_flags'])}), load {info['load_average']} -> "
          f"{info['load_average_end']}; measured GEMM peak GFLOP/s by threads (median over rounds): "
          + "; ".join(f"{t}: fp32 {p['fp32']:.0f}, bf16 {p['bf16']:.0f}" for t, p in peaks.items()))
    path = C.write_results("bench_scaling", {"command": "python " + " ".join(sys.argv), "args": vars(args),
                                             "machine": info, "gemm_peak_gflop_per_s": peaks, "rows": rows},
                           args.out and C.Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
