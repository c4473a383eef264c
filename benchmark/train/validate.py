"""Per-class clean and PGD-robust accuracy of a model on a dataset (the trainer's validation)."""

from __future__ import annotations

import torch
from torch import nn

from rfbench.attacks.core import pgd
from rfbench.benchmark.data.base import ArrayDataset, iterate_batches
from rfbench.core.perclass import per_class_accuracy, robust


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        return model(x).argmax(1)


def validation_accuracy(
    model: nn.Module,
    ds: ArrayDataset,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[list[float], list[float]]:
    """Per-class clean accuracy and PGD-``steps`` robust accuracy (uniform start, early stop).

    Robust = clean-correct and correct on the PGD point; a class without
    validation images is NaN (:mod:`rfbench.core.perclass`).  The model must already be in eval mode.  Early stop does not change whether
    a sample is robust, only how fast we find out.  ``channels_last`` feeds the
    batches in that memory format (for a model converted to it).
    """
    clean_ok, robust_ok, labels = [], [], []
    for x, y, _ in iterate_batches(ds, batch_size, device=device):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = _predict(model, x, autocast_dtype)
        x_adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, early_stop=True,
                    generator=generator, autocast_dtype=autocast_dtype)
        pred_adv = _predict(model, x_adv, autocast_dtype)
        clean_ok.append((pred == y).cpu())
        robust_ok.append(robust(pred == y, pred_adv == y).cpu())
        labels.append(y.cpu())
    y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    c = ds.num_classes
    return (per_class_accuracy(torch.cat(clean_ok) if clean_ok else torch.zeros(0, dtype=torch.bool), y_all, c).tolist(),
            per_class_accuracy(torch.cat(robust_ok) if robust_ok else torch.zeros(0, dtype=torch.bool), y_all, c).tolist())
