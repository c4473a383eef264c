"""TAET (Wang et al., CVPR 2025, arXiv 2503.01924, "TAET: Two-Stage Adversarial Equalization
Training on Long-Tailed Distributions").

Two phases, as the released code defines them (``code/HARL.py`` of
github.com/BuhuiOK/TAET-Two-Stage-Adversarial-Equalization-Training-on-Long-Tailed-Distributions,
and ``core/methods/taet.py`` of zhang-lilin/RobustLT, which runs it on CIFAR-10-LT):

* **Stabilisation phase** (the first ``stabilisation`` fraction of the budget; released:
  40 of 100 epochs, so 0.4): standard training, CE on the clean inputs, no attack.
* **Stratified equalisation phase**: CE-PGD adversarial examples (start x + 0.001·N(0,1),
  not clipped to [0,1] under ``fidelity: released`` as in ``HARL.py``, BN in eval mode) and the hierarchical adversarial robustness loss (HARL) on them.  With
  ℓ_b = CE(z(x'_b), y_b) and the per-class batch means L_c = Σ_{b: y_b=c} ℓ_b /
  (|{b: y_b=c}| + 1e-10) for every class c (a class absent from the batch has L_c = 0)::

      L̄ = (1/C)·Σ_c L_c,   q_c = L_c / (Σ_c L_c + 1e-10),
      HARL = α·L̄ + β·(1/C)·Σ_c (L_c − L̄)² + γ·Σ_c q_c²,     α = β = γ = 0.1.

  The three terms are logged as ``balanced``, ``hierarchical`` and ``rare``.

*Released trap*: a class absent from the batch enters L̄, the variance and q with
L_c = 0, so on a long-tailed batch (tail classes often absent) the variance term pulls
the present classes' losses towards 0-loss phantoms.  ``absent_classes: released``
(default) keeps this; ``absent_classes: skip`` averages over the classes present in
the batch only (rfbench's variant).  The paper's text could not be checked here; the
defaults are the released code's.

TAET's "balanced robustness" is the class-balanced (macro) robust accuracy, i.e. the
mean of the per-class robust accuracies: rfbench's ``mean`` of the per-class robust
accuracy (``benchmark/eval/metrics.py``), so no new metric is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import choice, in_range
from rfbench.defenses.base import Defense, LossOutput, TrainContext
from rfbench.defenses.registry import register_defense

DIV_EPS = 1e-10  # as released


def class_losses(per_sample: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean losses L_c = Σ ℓ_b·[y_b=c] / (n_c + 1e-10) and the presence mask (n_c > 0)."""
    onehot = F.one_hot(y, num_classes).to(per_sample.dtype)  # (B, C)
    n = onehot.sum(dim=0)
    return (per_sample[:, None] * onehot).sum(dim=0) / (n + DIV_EPS), n > 0


def harl(per_sample: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = 0.1, beta: float = 0.1,
         gamma: float = 0.1, absent_classes: str = "released") -> dict[str, torch.Tensor]:
    """TAET's hierarchical loss from per-sample adversarial CE; returns the three weighted terms and ``total``."""
    lc, present = class_losses(per_sample.float(), y, num_classes)
    if absent_classes == "skip":
        lc = lc[present]
    elif absent_classes != "released":
        raise ValueError(f"absent_classes must be 'released' or 'skip', got {absent_classes!r}")
    mean = lc.mean()
    q = lc / (lc.sum() + DIV_EPS)
    terms = {"balanced": alpha * mean, "hierarchical": beta * ((lc - mean) ** 2).mean(), "rare": gamma * (q ** 2).sum()}
    terms["total"] = terms["balanced"] + terms["hierarchical"] + terms["rare"]
    return terms


@dataclass
class TAETConfig:
    """The settings of :class:`TAET`, with their registered defaults."""

    stabilisation: float = field(default=0.4, metadata=in_range(0, 1))  # fraction of the budget (released 40/100)
    alpha: float = field(default=0.1, metadata=in_range(0, None))  # weight of the class-mean loss
    beta: float = field(default=0.1, metadata=in_range(0, None))  # weight of the class-loss variance
    gamma: float = field(default=0.1, metadata=in_range(0, None))  # weight of Σ q_c²
    start_std: float = field(default=0.001, metadata=in_range(0, None))  # attack start x + std·N(0,1)
    absent_classes: str = field(default="released", metadata=choice("released", "skip"))


@register_defense("taet")
class TAET(Defense[TAETConfig]):
    """TAET: clean-CE stabilisation, then CE-PGD with the hierarchical equalisation loss (HARL)."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    Config = TAETConfig

    def __init__(self, cfg: TAETConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)

    def stabilising(self, epoch: int | None = None) -> bool:
        """True in the stabilisation phase: 0-based epochs below round(stabilisation·epochs)."""
        e = self.epoch if epoch is None else epoch
        return e < round(self.cfg.stabilisation * self.ctx.epochs)

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": "ce", "start": "normal", "start_std": self.cfg.start_std}

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor | None = None) -> LossOutput:
        if self.stabilising():
            model.train()
            logits = model(x)
            return LossOutput(F.cross_entropy(logits, y), logits.detach())
        return super().training_step(model, x, y, pos)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x_adv)
        t = harl(F.cross_entropy(logits, y, reduction="none"), y, self.ctx.num_classes, self.cfg.alpha,
                 self.cfg.beta, self.cfg.gamma, self.cfg.absent_classes)
        total = t.pop("total")
        return LossOutput(total, logits.detach(), {k: v.detach() for k, v in t.items()})
