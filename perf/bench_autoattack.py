"""AutoAttack bookkeeping overhead: the evaluation harness's AutoAttack path against pyautoattack called directly.

Both contenders evaluate the same model on the same test points, side by side
in one process:

* ``pyautoattack direct`` -- ``pyautoattack.AutoAttack(...).run_standard_evaluation``
  on the points, with the seed the harness gives that batch (the peer);
* ``pyautoattack direct, clean-correct only`` -- the same call on the points the
  model classifies correctly, which is what the harness hands to AutoAttack
  (pyautoattack runs its model checks and clean pass on every point it gets);
* ``rfbench harness`` -- :func:`rfbench.benchmark.eval.evaluate` with the same
  AutoAttack spec as its only attack: model checks, clean pass, AutoAttack on
  the clean-correct points through :class:`rfbench.attacks.autoattack.AutoAttack`
  (RNG fork, log routing, frozen parameters), the eps-ball check, float32
  predictions, the flag file, bootstrap intervals and ``result.json``.

Overhead = harness time / direct time − 1 (median over rounds of the
per-round ratio), against both direct calls.  All must find the same robust
points (the script checks it).  Because that ratio carries the machine's
noise (a few percent on a shared machine), the script also splits every
harness call into the time inside pyautoattack's ``run_standard_evaluation``
and everything else: the bookkeeping, measured within the same call.  The default workload -- APGD-CE + APGD-T on a briefly trained SmallCNN
on Fashion-MNIST -- is cheap per point, so the fixed costs weigh more than in
a real evaluation: the overhead it measures is an upper bound for bigger models
and the standard version.

Example::

    PYTHONPATH=. python perf/bench_autoattack.py                  # ~6 min on 1 core at load 8
    PYTHONPATH=. python perf/bench_autoattack.py --version standard --n-per-class 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import _common as C
import torch

from rfbench.benchmark.data import iterate_batches, load_dataset
from rfbench.benchmark.eval.harness import EvalConfig, batch_seed, evaluate, select_subset
from rfbench.benchmark.train.runtime import resolve_device
from rfbench.core.threat import NORM_NAMES

HARNESS, DIRECT, DIRECT_CORRECT = "rfbench harness", "pyautoattack direct", "pyautoattack direct, clean-correct only"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", default="custom", choices=["standard", "plus", "custom"])
    p.add_argument("--attacks", default="apgd-ce,apgd-t", help="custom version: comma-separated AutoAttack attacks")
    p.add_argument("--n-per-class", type=int, default=5, help="test points per class (one batch holds them all)")
    p.add_argument("--eps", type=float, default=None, help="default: the dataset's protocol eps")
    p.add_argument("--train-steps", type=int, default=60, help="clean Adam steps of the SmallCNN")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default perf/results/bench_autoattack.json)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    C.set_threads(args.threads)
    info = C.machine_info(device)
    bundle = load_dataset("fashion-mnist")
    model = C.trained_smallcnn(bundle, args.train_steps, args.seed, device)
    eps = args.eps if args.eps is not None else bundle.threat.eps
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.version == "custom" else []
    spec = f"autoattack:version={args.version}" + (f",attacks={'+'.join(attacks)}" if attacks else "")
    test = select_subset(bundle.test, args.n_per_class, args.seed)
    n = len(test)
    cfg = EvalConfig(attacks=[spec], eps=eps, n_per_class=args.n_per_class, subset_seed=args.seed, batch_size=n,
                     device=str(device), seed=args.seed, overwrite=True, quiet=True)
    out_dir = tempfile.mkdtemp(prefix="rfbench-bench-aa-")
    x, y, _ = next(iterate_batches(test, n, device=device))
    results = {}

    from pyautoattack import AutoAttack as PackageAA

    inside: list[float] = []  # seconds spent in pyautoattack's run_standard_evaluation during one harness call
    split: list[tuple[float, float]] = []  # per harness call: (total seconds, seconds inside pyautoattack)
    run_eval = PackageAA.run_standard_evaluation

    def timed_run_eval(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return run_eval(self, *a, **kw)
        finally:
            inside.append(time.perf_counter() - t0)

    def harness():
        inside.clear()
        t0 = time.perf_counter()
        PackageAA.run_standard_evaluation = timed_run_eval
        try:
            results[HARNESS] = evaluate(model, bundle, cfg, out_dir)
        finally:
            PackageAA.run_standard_evaluation = run_eval
        split.append((time.perf_counter() - t0, sum(inside)))
        return results[HARNESS]

    with torch.no_grad():
        correct = model(x).argmax(1) == y

    def direct(only_correct: bool):
        from pyautoattack import AutoAttack

        label = results[HARNESS]["attacks"][0]["label"]  # the harness seeds batch 0 from it
        aa = AutoAttack(model, norm=NORM_NAMES["linf"], eps=float(eps), version=args.version,
                        attacks=attacks or None, device=device, seed=batch_seed(args.seed, label, 0))
        xs, ys = (x[correct], y[correct]) if only_correct else (x, y)
        x_adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=n)
        with torch.no_grad():
            robust = torch.zeros_like(y, dtype=torch.bool)
            robust[correct if only_correct else slice(None)] = model(x_adv).argmax(1) == ys
        results[DIRECT_CORRECT if only_correct else DIRECT] = robust
        return robust

    print(f"{spec}, eps {eps:.4g}, {n} Fashion-MNIST test points, SmallCNN after {args.train_steps} steps",
          file=sys.stderr, flush=True)
    with C.quiet_logs():
        logging.getLogger("auto-attack").setLevel(logging.ERROR)
        times = C.interleave({HARNESS: harness, DIRECT: lambda: direct(False),
                              DIRECT_CORRECT: lambda: direct(True)}, args.repeats, device)
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    harness_robust = _robust_flags(out_dir, n)
    same = all(torch.equal(harness_robust, results[k].cpu()) for k in (DIRECT, DIRECT_CORRECT))
    overhead = 100 * (1 / C.paired_speedup(times[DIRECT], times[HARNESS]) - 1)
    overhead_same_input = 100 * (1 / C.paired_speedup(times[DIRECT_CORRECT], times[HARNESS]) - 1)
    timed_split = split[1:]  # the warm-up call is not counted
    outside_pct = 100 * statistics.median((tot - ins) / ins for tot, ins in timed_split)
    outside_s = statistics.median(tot - ins for tot, ins in timed_split)
    rows = [{"contender": k, "median_s": t.median, "images_per_s": n / t.median,
             "time_vs_direct": t.median / times[DIRECT].median, "peak_mem_mib": t.peak, "seconds": t.seconds}
            for k, t in times.items()]
    print(f"\n{spec}, eps {eps:.4g}, {n} points, robust accuracy: harness {float(harness_robust.float().mean()):.3f}, "
          f"direct {float(results[DIRECT].float().mean()):.3f}, same robust points: {same}")
    C.print_table(rows, [("contender", "contender", ""), ("median_s", "median s", ".2f"),
                         ("images_per_s", "points/s", ".2f"), ("time_vs_direct", "time / direct", ".3f"),
                         ("peak_mem_mib", "peak MiB", ".0f")])
    target = {"target": "AutoAttack bookkeeping overhead <= 5% over pyautoattack direct", "overhead_pct": overhead,
              "met": overhead <= 5.0}
    print(f"target {target['target']}: {overhead:+.1f}% -> {'met' if target['met'] else 'MISSED'} "
          f"({overhead_same_input:+.1f}% against pyautoattack on the clean-correct points only)")
    print(f"within the harness calls: {outside_s:.2f} s outside pyautoattack's run_standard_evaluation "
          f"= {outside_pct:.1f}% of the time inside it (model checks, clean pass, ball check, predictions, "
          f"flag file, bootstrap, result files)")
    print(f"\nmachine: {info['cpu_model']}, {info['torch_threads']} thread(s), load {info['load_average']} -> "
          f"{info['load_average_end']}")
    path = C.write_results("bench_autoattack", {
        "command": "python " + " ".join(sys.argv), "args": vars(args), "machine": info, "spec": spec, "eps": eps,
        "points": n, "same_robust_points": same, "overhead_pct": overhead,
        "overhead_vs_clean_correct_only_pct": overhead_same_input,
        "harness_outside_pyautoattack_s": outside_s, "harness_outside_pyautoattack_pct": outside_pct,
        "harness_split_s": [{"total": tot, "inside_pyautoattack": ins} for tot, ins in timed_split], "rows": rows, "targets": [target]},
        args.out and C.Path(args.out))
    print(f"wrote {path}")


def _robust_flags(out_dir: str, n: int) -> torch.Tensor:
    """Per point: clean-correct and not broken by any attack, read back from the harness's flag file."""
    from rfbench.benchmark.eval.flags import SampleFlags

    flags = SampleFlags.load(C.Path(out_dir) / "flags.npz")
    return torch.as_tensor(flags.worst_case(flags.labels)[:n])


if __name__ == "__main__":
    main()
