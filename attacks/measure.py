"""The one per-class clean + PGD measurement: what the trainer validates with and what defenses (FRL) measure.

Robust = clean-correct and correct on the PGD point (CE loss, uniform start, BN in eval mode); a class
without samples is NaN (:mod:`rfbench.core.perclass`).  The evaluation harness measures a model with
its whole attack suite instead (:mod:`rfbench.benchmark.eval.harness`); calibration caches several
attack points per sample (:mod:`rfbench.benchmark.eval.calibrate`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from rfbench.attacks.core import eval_mode, pgd
from rfbench.core.perclass import per_class_accuracy, robust


def clean_and_pgd_accuracy(
    model: nn.Module,
    batches: Iterable,
    *,
    num_classes: int,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    require_clean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class clean and PGD-``steps`` robust accuracy over ``batches`` of ``(x, y, ...)``, each float64 ``(C,)``.

    ``early_stop`` freezes a sample at its first fooling iterate (the trainer's validation uses it;
    it can only count more samples as fooled than the last iterate does).  ``channels_last`` feeds
    the batches in that memory format (for a model converted to it).  The model's mode is restored.
    ``require_clean=False`` counts every sample correct on the PGD point, whatever its clean
    prediction (what FRL's and CFA's releases count; rfbench's definition is the default).
    """
    clean_ok, robust_ok, labels = [], [], []
    with eval_mode(model):
        for x, y, *_ in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                ok = model(x).argmax(1) == y
            x_adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, loss="ce", start="uniform",
                        early_stop=early_stop, generator=generator, autocast_dtype=autocast_dtype)
            with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                adv_ok = model(x_adv).argmax(1) == y
            clean_ok.append(ok.cpu())
            robust_ok.append((robust(ok, adv_ok) if require_clean else adv_ok).cpu())
            labels.append(y.cpu())
    empty = torch.zeros(0, dtype=torch.bool)
    y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return (per_class_accuracy(torch.cat(clean_ok) if clean_ok else empty, y_all, num_classes),
            per_class_accuracy(torch.cat(robust_ok) if robust_ok else empty, y_all, num_classes))
