"""Per-class statistics that a defense measures itself on the validation split.

The trainer hands every defense the per-class statistics of :class:`~rfbench.defenses.base.EpochStats`
(validation accuracy under its own validation PGD).  Some methods specify a
different measurement, which they take here with the same PGD core:

* FRL (Xu et al., ICML 2021): per-class clean and robust accuracy under PGD-20, the one measurement
  :func:`rfbench.attacks.measure.clean_and_pgd_accuracy`;
* WAT (Li & Liu, AAAI 2023): per-class mean TRADES loss CE + β·KL under the TRADES attack.

``loader`` is the trainer's ``TrainContext.val_loader(batch_size)``: an iterator
of ``(x, y, pos)`` batches of the validation split.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from rfbench.attacks.core import eval_mode
from rfbench.core.perclass import class_counts, per_class_mean
from rfbench.defenses.trades_terms import trades_perturb, trades_terms


def fill_missing(values: torch.Tensor, fallback: torch.Tensor | float) -> torch.Tensor:
    """Replace NaN entries (classes with no sample) by ``fallback`` (a tensor of the same shape or a number)."""
    fb = fallback if torch.is_tensor(fallback) else torch.full_like(values, float(fallback))
    return torch.where(torch.isnan(values), fb.to(values), values)


def val_trades_loss(
    model: nn.Module,
    loader: Iterable,
    *,
    num_classes: int,
    beta: float,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    start_clip: bool = True,
    release_batch: int | None = None,
) -> torch.Tensor:
    """Per-class mean of CE(z(x), y) + β·KL(p(x) ‖ p(x')) with x' from the TRADES attack, float64 ``(C,)``.

    ``release_batch = b`` normalises as WAT's release does instead (``validate`` in
    ``worst_class_adversarial_train.py``): C times class k's summed cost over ⌈n/b⌉·b
    (batches times batch size), i.e. the class mean times C·n_k/(⌈n/b⌉·b).
    ``start_clip`` as in :func:`rfbench.attacks.core.pgd`.
    """
    losses, labels = [], []
    with eval_mode(model):
        for x, y, _ in loader:
            x_adv = trades_perturb(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                   generator=generator, autocast_dtype=autocast_dtype, start_clip=start_clip)
            with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                ce, kl = trades_terms(model(x), model(x_adv), y)
            losses.append((ce + beta * kl).cpu())
            labels.append(y.cpu())
    values, y_all = torch.cat(losses), torch.cat(labels)
    if release_batch is None:
        return per_class_mean(values, y_all, num_classes).cpu()
    seen = -(-len(y_all) // release_batch) * release_batch  # batches × batch size
    return (num_classes * class_counts(y_all, num_classes, values.double()) / seen).cpu()
