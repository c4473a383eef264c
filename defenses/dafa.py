"""DAFA: Distance-Aware Fair Adversarial training (Lee, Lee, Jang, Park, Bae & Yoon, ICLR 2024).

1. Warm-up: plain TRADES (β = 6) for ``warmup_fraction`` of the budget (70 of 110 in the recipe;
   an absolute ``warmup_epochs`` wins when set),
   recording ``p_i(j)``, the mean softmax probability of class j over class i's
   training adversarial examples (``EpochStats.train_adv_probs`` of the last
   warm-up epoch).
2. Class weights, computed once from ``W = 1`` with the pairwise rule
   (:func:`dafa_weights`, DAFA Eq. 8-9): for every pair i ≠ j,
   ``W_i += λ·p_i(j)·p_j(j)`` if ``p_i(i) < p_j(j)`` (class i is the harder one) and
   ``W_i −= λ·p_j(i)·p_i(i)`` if ``p_i(i) > p_j(j)``; λ = 1.0 (CIFAR-10), 1.5 (CIFAR-100, STL-10).
   ``W`` can go negative, so it is clamped at ``weight_floor``.
3. From then on, the inner maximisation uses per-sample eps and step ``W_y·eps``,
   ``W_y·step``, and the natural CE is multiplied by ``W_y``:
   ``loss = mean_i W_{y_i}·CE_i + β·mean_i KL_i``.

Paper vs code: the released code's weight formula was corrected in Sep 2024
(rfbench implements the paper's rule above), and its PGD-AT variant ignores the
class margins (a bug; rfbench's DAFA is the TRADES variant only).  The release's
TRADES attack (``losses.py``) takes its first gradient at the unclipped start
x + 0.001·N(0,1): ``fidelity: released`` does the same, ``paper`` clips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms

DEFAULT_FLOOR = 0.01


def dafa_weights(p: torch.Tensor, lam: float, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """DAFA's class weights from ``p[i, j] = p_i(j)`` (C×C), starting at 1, clamped at ``floor`` (Lee et al. 2024, Eq. 9).

    ``W_i = 1 + λ·Σ_{j: p_ii < p_jj} p_i(j)·p_j(j) − λ·Σ_{j: p_ii > p_jj} p_j(i)·p_i(i)``.
    """
    p = torch.as_tensor(p, dtype=torch.float64)
    d = p.diagonal()
    harder = (d[:, None] < d[None, :]).double()  # [i, j]: class i harder than class j
    easier = (d[:, None] > d[None, :]).double()
    gain = (harder * p * d[None, :]).sum(dim=1)  # Σ_j p_i(j)·p_j(j)
    loss = (easier * p.T * d[:, None]).sum(dim=1)  # Σ_j p_j(i)·p_i(i)
    return (1.0 + lam * (gain - loss)).clamp(min=floor)


@dataclass
class DAFAConfig:
    """The settings of :class:`DAFA`, with their registered defaults."""

    warmup_epochs: int | None = field(default=None, metadata=in_range(1, None))  # absolute; None = from the fraction
    warmup_fraction: float = field(default=70 / 110, metadata=in_range(0, 1))  # of the budget (paper: 70 of 110)
    lam: float = field(default=1.0, metadata=in_range(0, None))  # 1.0 CIFAR-10; 1.5 CIFAR-100 / STL-10
    beta: float = field(default=6.0, metadata=in_range(0, None))
    weight_floor: float = field(default=DEFAULT_FLOOR, metadata=in_range(1e-6, None))


@register_defense("dafa")
class DAFA(Defense[DAFAConfig]):
    """DAFA (Lee et al., ICLR 2024): TRADES warm-up, then fixed class weights on eps, step and natural CE."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    Config = DAFAConfig

    state_keys = ("weights", "probs")

    def __init__(self, cfg: DAFAConfig, ctx):
        super().__init__(cfg, ctx)
        self.weights: torch.Tensor | None = None  # W, fixed once computed
        self.probs: torch.Tensor | None = None  # the recorded p_i(j)

    def warmup_epochs(self) -> int:
        """Warm-up length W: ``warmup_epochs`` if set, else max(1, round(warmup_fraction·epochs))."""
        if self.cfg.warmup_epochs is not None:
            return self.cfg.warmup_epochs
        return max(1, round(self.cfg.warmup_fraction * self.ctx.epochs))

    def sample_eps(self, y: torch.Tensor):
        t = self.ctx.threat
        if self.weights is None:
            return t.eps, t.alpha
        w = self.weights.to(device=y.device, dtype=torch.float32)[y]
        return t.eps * w, t.alpha * w

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return trades_attack_kwargs(model, x, self.ctx.autocast_dtype, bn=self.attack_fidelity(y)["bn"])

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        clean_logits, adv_logits = model(x), model(x_adv)  # two passes: BN sees each batch apart, as in TRADES
        ce, kl = trades_terms(clean_logits, adv_logits, y)
        if self.weights is not None:
            ce = ce * self.weights.to(device=y.device, dtype=ce.dtype)[y]
        natural = ce.mean()
        return LossOutput(natural + self.cfg.beta * kl.mean(), adv_logits,
                          {"natural": natural.detach(), "boundary": kl.mean().detach()})

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        if self.weights is None and stats.epoch >= self.warmup_epochs() - 1:
            probs = torch.tensor(stats.train_adv_probs, dtype=torch.float64)
            # a class with no training example in the epoch (tiny runs only) counts as uniform
            self.probs = torch.nan_to_num(probs, nan=1.0 / self.ctx.num_classes)
            self.weights = dafa_weights(self.probs, self.cfg.lam, self.cfg.weight_floor)
            return {"dafa_weights": self.weights.tolist(), "dafa_probs_diag": self.probs.diagonal().tolist()}
        return {}
