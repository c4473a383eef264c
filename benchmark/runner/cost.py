"""A-priori cost of a run in FLOP, for ``rfbench reproduce --dry-run``.

Work counts follow ``performance.md``: a forward pass of ResNet-18 /
PreAct-ResNet-18 (CIFAR form) is 1.11 GFLOP per 32×32 image, WRN-28-10
10.5 GFLOP, WRN-34-10 13.3 GFLOP (measured with torch's FlopCounterMode);
other models are measured the same way here, on one image.  In
forward-equivalents per image (a backward pass ≈ 2 forwards):

* an attack step with input gradients only: 2; a training step: 3;
* PGD-k adversarial training: 2k + 3 (PGD-10 AT ≈ 23, as performance.md says);
  defenses whose loss also needs the clean forward and backward (TRADES and
  its family, MART): 2k + 7 (TRADES with the clean logits computed once ≈ 27);
* per-epoch validation: (2·val_steps + 2) per validation image;
* evaluation per test image: clean 1, FGSM 3, PGD/CW/T-PGD-k (2k + 1)·restarts,
  AutoAttack standard ≈ 4,750 (performance.md, a ~50%-robust model), custom
  AutoAttack from its iteration counts.  AutoAttack on the survivors of the
  cheaper attacks costs less: the estimate is an upper bound.

Hours = FLOP / throughput, where the throughput is what rfbench measured on
that kind of device where it has measured it (:func:`throughput`), and
otherwise an assumed range that every estimate prints as such:

* CPU: 0.09 TFLOP/s, measured on the project's 2-core CPU for SmallCNN runs
  (the training stage of ``rfbench run leaderboards/fashion-mnist-linf/
  track.yaml --defense pgd-at``, 9.4 TFLOP by this model, took 101 s on two
  lightly loaded cores);
* CUDA: the bf16 training throughput (``gflop_per_s``) of a
  ``perf/results/*.json`` measured with ``--device cuda``
  (``perf/gpu_run.py``), when one exists; otherwise **assumed**
  100-400 TFLOP/s (13-50% of an H100/H200's dense bf16 peak), a range, since
  rfbench has not yet measured a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfbench.benchmark.data.longtail import longtail_counts
from rfbench.benchmark.data.registry import validation_size

#: forward GFLOP per image (performance.md, "Work counts")
FORWARD_GFLOP = {"resnet18": 1.11, "preact_resnet18": 1.11, "wrn28_10": 10.5, "wrn34_10": 13.3}
#: (train images, test images, classes, image shape, eval PGD steps) of the torchvision datasets
DATASET_SHAPES = {
    "cifar10": (50_000, 10_000, 10, (3, 32, 32), 20),
    "cifar10-jpeg": (50_000, 10_000, 10, (3, 32, 32), 20),
    "cifar100": (50_000, 10_000, 100, (3, 32, 32), 20),
    "svhn": (73_257, 26_032, 10, (3, 32, 32), 20),
    "stl10": (5_000, 8_000, 10, (3, 96, 96), 20),
    "mnist": (60_000, 10_000, 10, (1, 28, 28), 100),
    "fashion-mnist": (60_000, 10_000, 10, (1, 28, 28), 20),
}
#: defenses whose loss adds a clean forward + backward to the adversarial one (also any defense with base: trades)
TWO_INPUT_DEFENSES = {"trades", "mart", "frl-rw", "frl-rwrm", "dafa", "wat"}
AA_STANDARD_FWD = 4750.0
ASSUMED_TFLOPS = {"cuda": (100.0, 400.0)}
MEASURED_CPU_TFLOPS = 0.09
_EVAL_FWD_CACHE: dict[str, float] = {}


@dataclass
class Throughput:
    """TFLOP/s as a (low, high) range and where it comes from (``measured: ...`` or ``assumed: ...``)."""

    low: float
    high: float
    source: str

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


def throughput(device: str, results_dir: Path | None = None) -> Throughput:
    """The throughput of ``device`` (``cpu`` or ``cuda``) for cost estimates (see the module docstring)."""
    if device == "cpu":
        return Throughput(MEASURED_CPU_TFLOPS, MEASURED_CPU_TFLOPS,
                          "measured: SmallCNN track run on the project's 2-core CPU")
    results_dir = results_dir or Path(__file__).resolve().parents[2] / "perf" / "results"
    values = []
    for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not str(data.get("machine", {}).get("device", "")).startswith(device):
            continue
        values += [r["gflop_per_s"] / 1e3 for r in data.get("rows", [])
                   if r.get("kind") == "rfbench" and "bf16" in str(r.get("setting")) and r.get("gflop_per_s")]
    if values:
        v = statistics.median(values)
        return Throughput(v, v, f"measured: {len(values)} bf16 training timings in {results_dir.name}/ on {device}")
    low, high = ASSUMED_TFLOPS[device]
    return Throughput(low, high, f"assumed: {low:g}-{high:g} TFLOP/s, not yet measured on a GPU")


@dataclass
class RunCost:
    train_flop: float
    eval_flop: float

    @property
    def total(self) -> float:
        return self.train_flop + self.eval_flop


@functools.lru_cache(maxsize=None)
def measured_gflop(model: str, num_classes: int, shape: tuple[int, int, int], kwargs_items: tuple = ()) -> float:
    """Forward GFLOP of one image through a registered model, counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rfbench.models import create_model

    net = create_model(model, num_classes=num_classes, in_channels=shape[0], mean=(0.0,) * shape[0],
                       std=(1.0,) * shape[0], **dict(kwargs_items)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


def forward_gflop(model: str, num_classes: int, shape: tuple[int, int, int], model_kwargs: dict | None = None) -> float:
    if model in FORWARD_GFLOP and not model_kwargs and shape[1:] == (32, 32):
        return FORWARD_GFLOP[model]
    return measured_gflop(model, num_classes, tuple(shape), tuple(sorted((model_kwargs or {}).items())))


def dataset_sizes(name: str, imbalance_ratio: float | None, max_train: int | None, val_per_class: int | None) -> dict[str, Any]:
    """Train / validation / test image counts of a dataset name (``NAME-lt`` included), without loading it."""
    base = name[:-3] if name.endswith("-lt") else name
    if base not in DATASET_SHAPES:
        raise KeyError(f"no size table for dataset '{name}'")
    n_train, n_test, c, shape, eval_steps = DATASET_SHAPES[base]
    rho = imbalance_ratio or (50.0 if name.endswith("-lt") else None)
    per_class = n_train // c
    counts = longtail_counts(per_class, c, rho) if rho else [per_class] * c
    val = val_per_class or validation_size(counts, 0.02, 20, max_train)
    train = sum(counts) - (0 if rho else c * val)
    if max_train:
        train = min(train, max_train)
    return {"train": train, "val": c * val, "test": n_test, "classes": c, "shape": shape, "eval_steps": eval_steps}


def attack_fwd(settings: dict[str, Any]) -> float:
    """Forward-equivalents per image of one attack, from its settings (``Attack.settings()``)."""
    name = settings["name"]
    if name == "fgsm":
        return 3.0
    if name == "autoattack":
        eff = settings.get("effective", {})
        if settings.get("version") == "standard":
            return AA_STANDARD_FWD
        total = 0.0
        for a in eff.get("attacks", []):
            if a in ("apgd-ce", "apgd-dlr"):
                total += 2 * eff["apgd"]["n_iter"] * eff["apgd"]["n_restarts"]
            elif a == "apgd-t":
                total += 2 * eff["apgd-t"]["n_iter"] * eff["apgd-t"]["n_target_classes"] * eff["apgd-t"]["n_restarts"]
            elif a in ("fab", "fab-t"):
                total += AA_STANDARD_FWD / 4 * eff["fab"]["n_iter"] / 100
            elif a == "square":
                total += eff["square"]["n_queries"]
        return total
    return (2.0 * settings.get("steps", 1) + 1) * settings.get("restarts", 1)


def eval_fwd_per_image(attack_specs: list[Any], norm: str, eps: float, eval_steps: int) -> float:
    """Forward-equivalents per test image of a suite (clean pass included)."""
    import torch

    from rfbench.attacks.spec import DEFAULT_SUITE, Threat, build_attacks

    key = json.dumps([list(attack_specs), norm, eps, eval_steps], sort_keys=True, default=str)
    if key not in _EVAL_FWD_CACHE:  # built once per suite: pyautoattack announces itself when built
        threat = Threat(norm=norm, eps=eps, steps=eval_steps, alpha=eps / 4)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            attacks = build_attacks(list(attack_specs) or list(DEFAULT_SUITE), torch.nn.Identity(), threat)
        _EVAL_FWD_CACHE[key] = 1.0 + sum(attack_fwd(a.settings()) for a in attacks)
    return _EVAL_FWD_CACHE[key]


def run_cost(run) -> RunCost:
    """FLOP of a :class:`~rfbench.benchmark.runner.config.ResolvedRun` (pretraining included)."""
    ev = run.eval
    total_train = 0.0
    sizes = None
    for cfg in [c for c in (run.pretrain, run.train) if c is not None]:
        sizes = dataset_sizes(cfg.dataset, cfg.imbalance_ratio, cfg.max_train_samples, cfg.val_per_class)
        f = forward_gflop(cfg.model, sizes["classes"], sizes["shape"], cfg.model_kwargs) * 1e9
        steps = cfg.steps or 10
        two_input = cfg.defense in TWO_INPUT_DEFENSES or cfg.defense_args.get("base") == "trades"
        per_img = 2 * steps + (7 if two_input else 3)
        total_train += cfg.epochs * f * (sizes["train"] * per_img + sizes["val"] * (2 * cfg.val_steps + 2))
    cfg = run.train
    f = forward_gflop(cfg.model, sizes["classes"], sizes["shape"], cfg.model_kwargs) * 1e9
    n_test = ev.n_per_class * sizes["classes"] if ev.n_per_class else sizes["test"]
    eps = ev.eps or cfg.eps or 8 / 255  # only names the attacks here; the cost does not depend on it
    per_img = eval_fwd_per_image(ev.attacks, ev.norm or "linf", eps, sizes["eval_steps"])
    return RunCost(train_flop=total_train, eval_flop=len(run.checkpoints) * n_test * per_img * f)
