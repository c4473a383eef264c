"""The trainer's validation: per-class clean and PGD-robust accuracy of a model on a dataset split."""

from __future__ import annotations

import torch
from torch import nn

from rfbench.attacks.measure import clean_and_pgd_accuracy
from rfbench.benchmark.data.base import ArrayDataset, iterate_batches


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
    """Per-class clean accuracy and PGD-``steps`` robust accuracy (uniform start, early stop) on the dataset ``ds``.

    The measurement is :func:`rfbench.attacks.measure.clean_and_pgd_accuracy` over ``ds``'s batches;
    a class without validation images is NaN.  Early stop does not change whether a sample counts as
    robust at its first fooling iterate, only how fast we find out.
    """
    clean, rob = clean_and_pgd_accuracy(model, iterate_batches(ds, batch_size, device=device),
                                        num_classes=ds.num_classes, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                        early_stop=True, generator=generator, autocast_dtype=autocast_dtype,
                                        channels_last=channels_last)
    return clean.tolist(), rob.tolist()
