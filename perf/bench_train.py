"""Adversarial-training throughput: rfbench's trainer against a reference loop written like the published code.

The same ResNet-18 (CIFAR form), the same real CIFAR-10 JPEG training images,
the same number of steps, side by side in one process.  Contenders:

* ``reference PGD-AT`` -- the loop of the published PGD-AT code (Rice et al.
  2020 style): fp32; a torchvision ``DataLoader`` over a PIL dataset with
  per-sample ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToTensor``; the model stays in train mode; each attack step calls
  ``loss.backward()`` on the perturbation, so parameter gradients are computed
  (and thrown away) at every step;
* ``reference TRADES`` -- the loop of the official TRADES code: the same data
  path; the attack (model in eval mode) recomputes the clean logits at every
  step; the loss runs the clean batch twice and the adversarial batch once;
* ``rfbench <defense> fp32`` -- :class:`rfbench.benchmark.train.trainer.Trainer`'s epoch
  loop (uint8 in-memory data, batch augmentation, frozen parameters and input
  gradients in the attack, TRADES' clean prediction once, per-class
  statistics), without validation and checkpoint writes, in fp32;
* ``rfbench <defense> bf16+CL`` -- the same with ``amp=bf16`` and
  ``channels_last=auto`` (on for bf16);
* with ``--compile``: ``rfbench <defense> bf16+CL compiled`` (``compile=true``;
  its compile time is in the warm-up and reported separately).

Work per image, in forward equivalents (forward = 1, input- or
weight-gradient backward = 1 each): rfbench PGD-AT 10·2 + 3 = 23; reference
PGD-AT 10·3 + 3 = 33; rfbench TRADES 1 + 10·2 + 2·3 = 27; reference TRADES
10·3 + 3·3 = 39.  GFLOP/s is the executed work divided by the time; "% peak"
divides it by the GEMM throughput measured in the same dtype at the start of
every round (median); "epoch s" extrapolates the measured images/s to a
50,000-image epoch (not measured).

Example::

    PYTHONPATH=. python perf/bench_train.py                 # ~6 min on 1 core at load 8
    PYTHONPATH=. python perf/bench_train.py --defenses pgd-at --batches 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time

import _common as C
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from rfbench.benchmark.data import load_dataset
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.runtime import resolve_device
from rfbench.benchmark.train.trainer import Trainer
from rfbench.models import create_model

# forward-equivalents per image of one training step (see the module docstring)
WORK = {("rfbench", "pgd-at"): 23, ("reference", "pgd-at"): 33, ("rfbench", "trades"): 27, ("reference", "trades"): 39}
EPOCH_IMAGES = 50_000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--defenses", default="pgd-at,trades", help="comma-separated: pgd-at, trades")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=1.0, help="model channel width (1 = the standard model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=1, help="training steps per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per contender (medians reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--no-fp32", action="store_true", help="leave out the rfbench fp32 rows")
    p.add_argument("--compile", action="store_true", help="add rfbench bf16+CL rows with compile=true")
    p.add_argument("--ref-workers", type=int, default=0,
                   help="DataLoader workers of the reference loop (0: on a 2-core machine workers steal compute)")
    p.add_argument("--cifar", default=None, help="imagefolder with train/ and test/ (default: extract from the archive)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default perf/results/bench_train.json)")
    return p.parse_args(argv)


class PILDataset(Dataset):
    """Images kept as uint8 H×W×C arrays, converted to PIL and transformed per sample (torchvision CIFAR10 style)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class ReferenceLoop:
    """Published-code-style adversarial training (see the module docstring); one call = one pass over the data."""

    def __init__(self, defense: str, model, loader, eps, alpha, steps, device, beta=6.0):
        self.defense, self.model, self.loader = defense, model.to(device), loader
        self.eps, self.alpha, self.steps, self.device, self.beta = eps, alpha, steps, device, beta
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def pgd_at_step(self, x, y):
        model, eps = self.model, self.eps
        model.train()
        delta = torch.zeros_like(x).uniform_(-eps, eps)
        delta = torch.min(torch.max(delta, -x), 1 - x).requires_grad_(True)
        for _ in range(self.steps):
            loss = F.cross_entropy(model(x + delta), y)
            loss.backward()  # also fills the parameters' .grad, as the published loop does
            with torch.no_grad():
                delta += self.alpha * delta.grad.sign()
                delta.clamp_(-eps, eps)
                delta.copy_(torch.min(torch.max(delta, -x), 1 - x))
            delta.grad.zero_()
        loss = F.cross_entropy(model(x + delta.detach()), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def trades_step(self, x, y):
        model, eps = self.model, self.eps
        kl = torch.nn.KLDivLoss(reduction="sum")
        model.eval()
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))  # clean logits every step
            grad, = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + self.alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        model.train()
        self.opt.zero_grad()
        logits = model(x)
        robust = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)) / len(x)
        loss = F.cross_entropy(logits, y) + self.beta * robust
        loss.backward()
        self.opt.step()

    def epoch(self):
        step = self.pgd_at_step if self.defense == "pgd-at" else self.trades_step
        for x, y in self.loader:
            step(x.to(self.device), y.to(self.device))


def build(args, device, folder):
    """name -> (callable running one pass, (kind, defense, dtype)), plus the data description."""
    n = args.batch_size * args.batches
    model_kw = {"width": args.width} if args.width != 1.0 else {}
    base = dict(dataset=f"imagefolder:{folder}", val_per_class=1, max_train_samples=n, model=args.model, model_kwargs=model_kw,
                batch_size=args.batch_size, epochs=1, device=str(device), seed=args.seed,
                out=os.path.join(tempfile.gettempdir(), "rfbench-bench-train"))
    ref_bundle = load_dataset(f"imagefolder:{folder}", val_per_class=1)
    if len(ref_bundle.train) < n:  # fewer images than the timed call asks for
        raise SystemExit(f"{folder} holds {len(ref_bundle.train)} training images after the validation split, "
                         f"fewer than --batch-size x --batches = {n}: give --cifar a folder with at least "
                         f"{math.ceil(n / ref_bundle.num_classes) + 1} per class")
    calls, meta = {}, {}
    init_state = None
    for defense in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        variants = [] if args.no_fp32 else [("fp32", {"amp": "off", "channels_last": "off"})]
        variants.append(("bf16+CL", {"amp": "bf16", "channels_last": "auto"}))
        if args.compile:
            variants.append(("bf16+CL compiled", {"amp": "bf16", "channels_last": "auto", "compile": True}))
        for label, kw in variants:
            trainer = Trainer(TrainConfig(defense=defense, **base, **kw), quiet=True)
            if init_state is None:
                init_state = {k: v.clone() for k, v in trainer.module.state_dict().items()}
            else:
                trainer.module.load_state_dict(init_state)
            calls[f"rfbench {defense} {label}"] = (lambda t=trainer: t._train_epoch(0))
            meta[f"rfbench {defense} {label}"] = ("rfbench", defense, label, trainer)
        # the reference sees the same training images (the trainer's stratified subset) through a DataLoader
        train = trainer.bundle.train
        images = train.x.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # the trainer holds them on a GPU
        tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor()])
        loader = DataLoader(PILDataset(images, train.y.numpy(), tf), batch_size=args.batch_size, shuffle=True,
                            num_workers=args.ref_workers, generator=torch.Generator().manual_seed(args.seed))
        model = create_model(args.model, ref_bundle.num_classes, ref_bundle.in_channels, ref_bundle.mean,
                             ref_bundle.std, **model_kw)
        model.load_state_dict(init_state)
        t = trainer.threat
        ref = ReferenceLoop(defense, model, loader, t.eps, t.alpha, t.steps, device)
        calls[f"reference {defense} fp32"] = ref.epoch
        meta[f"reference {defense} fp32"] = ("reference", defense, "fp32", None)
    # what one timed call trains: the class-stratified subset keeps a whole number per class (32 of a
    # balanced 10-class folder: 30), and images/s divides by this count, not by the n asked for
    data = {"train_images": len(train), "image_size": list(ref_bundle.image_size), "threat": dataclasses.asdict(t),
            "source": str(folder)}
    return calls, meta, data


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    C.set_threads(args.threads)
    info = C.machine_info(device)
    asked = args.batch_size * args.batches
    folder = args.cifar or C.cifar_subset(math.ceil(asked / 10) + 2, 1)
    with C.quiet_logs():
        calls, meta, data = build(args, device, folder)
        n = data["train_images"]
        probe = next(iter(meta.values()))[3]
        flops = C.forward_flops(probe.module.eval(), torch.rand(8, 3, *data["image_size"], device=device))
        probe.module.train()
        print(f"{args.model}: {flops / 1e9:.3f} GFLOP/image forward; {n} images per timed call "
              f"({args.batches} x batch {args.batch_size}"
              + (f"; {asked} asked for, the class-stratified subset keeps {n}" if n != asked else "") + ")",
              file=sys.stderr, flush=True)
        warm_s: dict[str, float] = {}

        def timed_warmup(name):
            def run():
                t0 = time.perf_counter()
                calls[name]()
                warm_s[name] = time.perf_counter() - t0
            return run

        gemm = C.GemmPeak(device)
        times = C.interleave(calls, args.repeats, device, warmup={k: timed_warmup(k) for k in calls}, per_round=gemm)
    peaks = gemm.median
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    rows = []
    ref = {meta[k][1]: t for k, t in times.items() if meta[k][0] == "reference"}
    for k, t in times.items():
        kind, defense, label, _ = meta[k]
        ips = n / t.median
        work = WORK[(kind, defense)]
        gflops = ips * work * flops / 1e9
        dtype = "bf16" if "bf16" in label else "fp32"
        rows.append({"contender": k, "kind": kind, "defense": defense, "setting": label, "images_per_s": ips,
                     "ratio_to_reference": C.paired_speedup(ref[defense], t) if defense in ref else None,
                     "median_s": t.median, "seconds": t.seconds, "warmup_s": warm_s.get(k),
                     "fwd_equiv_per_image": work, "gflop_per_s": gflops, "pct_of_peak": 100 * gflops / peaks[dtype],
                     "epoch_s_extrapolated": EPOCH_IMAGES / ips, "peak_mem_mib": t.peak})
    by = {r["contender"]: r for r in rows}
    targets = []
    fast = "bf16+CL"
    if f"rfbench pgd-at {fast}" in by and "reference pgd-at fp32" in by:
        r = by[f"rfbench pgd-at {fast}"]["ratio_to_reference"]
        targets.append({"target": f"PGD-10 AT rfbench {fast} >= 3x the reference loop", "ratio": r, "met": r >= 3.0})
    for setting in ("fp32", fast):
        a, b = f"rfbench trades {setting}", f"rfbench pgd-at {setting}"
        if a in times and b in times:
            cost = C.paired_speedup(times[b], times[a]) ** -1  # TRADES time / PGD-AT time, per round
            targets.append({"target": f"TRADES <= 1.25x the cost of PGD-10 AT (rfbench {setting})", "ratio": cost,
                            "met": cost <= 1.25})
    print(f"\n{args.model}, {n} CIFAR-10 training images per call (batch {args.batch_size}), "
          f"{data['threat']['steps']}-step attack, {flops / 1e9:.3f} GFLOP/image forward")
    C.print_table(rows, [
        ("contender", "contender", ""), ("images_per_s", "images/s", ".2f"), ("ratio_to_reference", "× reference", ".2f"),
        ("fwd_equiv_per_image", "fwd-eq/img", ""), ("gflop_per_s", "GFLOP/s", ".1f"), ("pct_of_peak", "% peak", ".0f"),
        ("peak_mem_mib", "peak MiB", ".0f"), ("epoch_s_extrapolated", "50k-epoch s (extrap.)", ".0f"),
        ("warmup_s", "warm-up s", ".1f")])
    for t in targets:
        print(f"target {t['target']}: {t['ratio']:.2f}x -> {'met' if t['met'] else 'MISSED'}")
    print(f"\nmachine: {info['cpu_model']} ({', '.join(info['cpu_flags'])}), {info['torch_threads']} thread(s), "
          f"load {info['load_average']} -> {info['load_average_end']}; measured GEMM peak fp32 "
          f"{peaks['fp32']:.0f} / bf16 {peaks['bf16']:.0f} GFLOP/s")
    path = C.write_results("bench_train", {
        "command": "python " + " ".join(sys.argv), "args": vars(args), "machine": info, "data": data,
        "forward_gflop_per_image": flops / 1e9, "gemm_peak_gflop_per_s": peaks, "rows": rows, "targets": targets},
        args.out and C.Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
