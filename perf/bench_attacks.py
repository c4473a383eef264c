"""PGD-20 (Linf, CE) throughput of rfbench's attack against torchattacks.PGD, side by side in one process.

Models: ResNet-18 (CIFAR form) on real 32×32 CIFAR-10 test images from the
shared JPEG archive, and SmallCNN on real Fashion-MNIST test images.  Rows:

* ``torchattacks.PGD fp32`` -- the peer (``× peer`` is the median over rounds
  of the per-round time ratio);
* ``rfbench fp32`` -- :class:`rfbench.attacks.named.PGD` with early stop off (the same
  iterates as torchattacks: the script checks that the adversarial examples are
  bit-identical in every round, so the comparison is fair);
* ``rfbench fp32 channels-last``, ``rfbench bf16``, ``rfbench bf16 + channels-last``
  -- the fast paths (not bit-identical; the table shows the fraction of pixels
  equal to torchattacks' and the robust accuracy each finds);
* SmallCNN only: ``rfbench fp32 early stop`` -- the evaluation setting (a
  sample leaves the batch once fooled).  Its speed-up depends on how robust
  the model is, so its row also gives the robust accuracy.

The ResNet-18 is randomly initialised (seeded): throughput does not depend on
the weights when every sample runs every step; the SmallCNN gets a short clean
training so that robust accuracies and early stop mean something.

Achieved GFLOP/s = images/s × steps × 2 × forward FLOPs per image (a PGD step
is about one forward and one input-gradient backward); "% peak" divides by the
GEMM throughput measured in the same dtype at the start of every round (median).

Example::

    PYTHONPATH=. python perf/bench_attacks.py              # both models, ~7-10 min on 1 core at load 8
    PYTHONPATH=. python perf/bench_attacks.py --models smallcnn --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import math
import sys

import _common as C
import torch
import torchattacks

from rfbench.attacks.named import PGD
from rfbench.benchmark.data import iterate_batches, load_dataset
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.train.runtime import resolve_device
from rfbench.models import create_model

PEER = "torchattacks.PGD fp32"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="resnet18,smallcnn", help="comma-separated: resnet18, smallcnn")
    p.add_argument("--resnet-batch", type=int, default=32, help="ResNet-18 batch size")
    p.add_argument("--smallcnn-batch", type=int, default=256, help="SmallCNN batch size")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--width", type=float, default=1.0, help="ResNet-18 channel width (1 = the standard model)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per contender (medians reported)")
    p.add_argument("--only", default=None,
                   help="comma-separated contender names to time (the peer is always timed), e.g. 'rfbench fp32'")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0 = torch's default); 1 gives stable ratios on a shared machine")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--cifar", default=None, help="imagefolder with train/ and test/ (default: extract from the archive)")
    p.add_argument("--smallcnn-train-steps", type=int, default=60, help="clean Adam steps before attacking SmallCNN")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default perf/results/bench_attacks.json)")
    return p.parse_args(argv)


def load_model_and_batch(name: str, args, device: torch.device):
    """(model in eval mode, x, y, eps, alpha, note) on real test images of the model's dataset."""
    torch.manual_seed(args.seed)
    if name == "resnet18":
        b = args.resnet_batch
        folder = args.cifar or C.cifar_subset(2, math.ceil(b / 10))
        bundle = load_dataset(f"imagefolder:{folder}", val_per_class=1)
        model = create_model("resnet18", bundle.num_classes, bundle.in_channels, bundle.mean, bundle.std,
                             width=args.width)
        note = "random init (seeded): throughput does not depend on the weights"
    elif name == "smallcnn":
        b = args.smallcnn_batch
        bundle = load_dataset("fashion-mnist")
        model = C.trained_smallcnn(bundle, args.smallcnn_train_steps, args.seed, device)
        note = f"{args.smallcnn_train_steps} clean Adam steps on Fashion-MNIST"
    else:
        raise SystemExit(f"unknown model {name!r}: use resnet18 or smallcnn")
    test = per_class_subset(bundle.test, math.ceil(b / bundle.num_classes), seed=args.seed)
    x, y, _ = next(iterate_batches(test, b, shuffle=True, generator=torch.Generator().manual_seed(args.seed)))
    t = bundle.threat
    return model.to(device).eval(), x.to(device), y.to(device), t.eps, t.eval_alpha, note


def contenders(model, x, y, eps, alpha, steps, seed, early_stop_row: bool):
    """name -> (timed call, warm-up call, dtype of its arithmetic)."""
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def peer(n):
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=n, random_start=True)
        atk.set_model_training_mode(model_training=False)
        return lambda: (torch.manual_seed(seed), atk(x, y))[1]

    def ours(n, m=model, xx=x, dtype=None, es=False):
        atk = PGD(m, eps=eps, alpha=alpha, steps=n, early_stop=es)
        atk.autocast_dtype = dtype
        return lambda: (torch.manual_seed(seed), atk(xx, y))[1]

    bf16 = torch.bfloat16
    rows = {
        PEER: (peer, {}, "fp32"),
        "rfbench fp32": (ours, {}, "fp32"),
        "rfbench fp32 channels-last": (ours, {"m": cl_model, "xx": x_cl}, "fp32"),
        "rfbench bf16": (ours, {"dtype": bf16}, "bf16"),
        "rfbench bf16 + channels-last": (ours, {"m": cl_model, "xx": x_cl, "dtype": bf16}, "bf16"),
    }
    if early_stop_row:
        rows["rfbench fp32 early stop"] = (ours, {"es": True}, "fp32")
    return ({k: f(steps, **kw) for k, (f, kw, _) in rows.items()},
            {k: f(1, **kw) for k, (f, kw, _) in rows.items()},
            {k: d for k, (_, _, d) in rows.items()})


@torch.no_grad()
def robust_accuracy(model, x_adv, y) -> float:
    return float((model(x_adv).argmax(1) == y).float().mean())


def bench_model(name: str, args, device: torch.device) -> dict:
    model, x, y, eps, alpha, note = load_model_and_batch(name, args, device)
    flops = C.forward_flops(model, x)
    calls, warm, dtypes = contenders(model, x, y, eps, alpha, args.steps, args.seed, early_stop_row=name == "smallcnn")
    if args.only:
        keep = {PEER, *(c.strip() for c in args.only.split(","))}
        calls = {k: v for k, v in calls.items() if k in keep}
    print(f"[{name}] batch {len(x)}, PGD-{args.steps}, eps {eps:.4g}, alpha {alpha:.4g}, "
          f"{flops / 1e9:.3f} GFLOP/image forward", file=sys.stderr, flush=True)
    gemm = C.GemmPeak(device)
    times = C.interleave(calls, args.repeats, device, warmup=warm, keep_outputs=True, per_round=gemm)
    peaks = gemm.median
    ref = times[PEER].outputs
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    rows = []
    for k, t in times.items():
        ips = len(x) / t.median
        same = [torch.equal(o.contiguous(), r) for o, r in zip(t.outputs, ref)]
        full_work = "early stop" not in k
        gflops = ips * args.steps * 2 * flops / 1e9 if full_work else None
        rows.append({
            "contender": k, "dtype": dtypes[k], "images_per_s": ips, "ratio_to_peer": C.paired_speedup(times[PEER], t),
            "median_s": t.median, "seconds": t.seconds,
            "gflop_per_s": gflops, "pct_of_peak": 100 * gflops / peaks[dtypes[k]] if gflops else None,
            "peak_mem_mib": t.peak, "identical_to_peer": all(same),
            "pixels_equal_to_peer": float((t.outputs[-1].contiguous() == ref[-1]).float().mean()),
            "robust_acc": robust_accuracy(model, t.outputs[-1].contiguous(), y),
        })
    return {"model": name, "batch": len(x), "steps": args.steps, "eps": eps, "alpha": alpha,
            "gemm_peak_gflop_per_s": peaks,
            "forward_gflop_per_image": flops / 1e9, "clean_acc": clean, "weights": note, "rows": rows}


def targets(results: list[dict]) -> list[dict]:
    """The issue's attack targets for ResNet-18 (fp32 >= 1.0x, bf16 + channels-last >= 2x)."""
    out = []
    for r in results:
        if r["model"] != "resnet18":
            continue
        by = {row["contender"]: row for row in r["rows"]}
        for contender, goal in (("rfbench fp32", 1.0), ("rfbench bf16 + channels-last", 2.0)):
            if contender not in by:
                continue
            ratio = by[contender]["ratio_to_peer"]
            out.append({"target": f"ResNet-18 PGD-{r['steps']} {contender} >= {goal}x torchattacks fp32",
                        "ratio": ratio, "met": ratio >= goal})
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    C.set_threads(args.threads)
    info = C.machine_info(device)
    with C.quiet_logs():
        results = [bench_model(m.strip(), args, device) for m in args.models.split(",") if m.strip()]
    info["load_average_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    for r in results:
        pk = r["gemm_peak_gflop_per_s"]
        print(f"\n{r['model']}: PGD-{r['steps']} Linf CE, batch {r['batch']}, eps {r['eps']:.4g}, "
              f"{r['forward_gflop_per_image']:.3f} GFLOP/image forward, clean acc {r['clean_acc']:.3f} ({r['weights']}); "
              f"GEMM peak fp32 {pk['fp32']:.0f} / bf16 {pk['bf16']:.0f} GFLOP/s")
        C.print_table(r["rows"], [
            ("contender", "contender", ""), ("images_per_s", "images/s", ".2f"), ("ratio_to_peer", "× peer", ".2f"),
            ("gflop_per_s", "GFLOP/s", ".1f"), ("pct_of_peak", "% peak", ".0f"), ("peak_mem_mib", "peak MiB", ".0f"),
            ("identical_to_peer", "= peer", ""), ("pixels_equal_to_peer", "px = peer", ".3f"),
            ("robust_acc", "robust acc", ".3f")])
    tg = targets(results)
    for t in tg:
        print(f"target {t['target']}: {t['ratio']:.2f}x -> {'met' if t['met'] else 'MISSED'}")
    print(f"\nmachine: {info['cpu_model']} ({', '.join(info['cpu_flags'])}), {info['torch_threads']} thread(s), "
          f"load {info['load_average']} -> {info['load_average_end']}")
    path = C.write_results("bench_attacks", {
        "command": "python " + " ".join(sys.argv), "args": vars(args), "machine": info,
        "results": results, "targets": tg}, args.out and C.Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
