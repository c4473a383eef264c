"""Class-balanced adversarial training with effective-number weights (Cui et al., CVPR 2019).

The effective number of ``n`` samples with overlap parameter β is
``E_n = (1 − β^n) / (1 − β)`` (Cui et al., CVPR 2019); the class-balanced
weight is ``w_i ∝ 1/E_{n_i} = (1 − β) / (1 − β^{n_i})``, normalised so
that Σ_i w_i = C.  β = 0.9999.

The weights multiply the adversarial CE per sample, averaged over the batch:
``L = (1/B) Σ_b w_{y_b} · CE(z(x'_b), y_b)``, so that uniform weights (w = 1)
give exactly PGD-AT.  (``F.cross_entropy(weight=w)`` would instead divide by
Σ_b w_{y_b}, which undoes the normalisation; we do not use that form.)

``deferred: true`` is deferred re-weighting (DRW; Cao et al., NeurIPS 2019):
uniform weights until the first learning-rate milestone, the class-balanced
weights from that epoch on (0-based epoch index ``e ≥ milestones[0]``, the
first epoch trained at the decayed rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import in_range
from rfbench.core.errors import ConfigError
from rfbench.defenses.base import Defense, EpochStats, LossOutput, TrainContext
from rfbench.defenses.registry import register_defense


def effective_number(n: float, beta: float) -> float:
    """E_n = (1 − β^n)/(1 − β) (Cui et al. 2019); β = 0 gives 1 for n > 0 (and 0 for n = 0)."""
    return (1.0 - beta**n) / (1.0 - beta)


def inverse_normalised(values: Sequence[float], eps: float = 0.0) -> list[float]:
    """w_i = 1/(v_i + eps), rescaled so that Σ w_i equals the number of classes."""
    inv = [1.0 / (v + eps) for v in values]
    total = sum(inv)
    return [len(inv) * w / total for w in inv]


def class_balanced_weights(counts: Sequence[int], beta: float = 0.9999) -> list[float]:
    """Effective-number class weights w_i ∝ (1−β)/(1−β^{n_i}), Σ w_i = C (Cui et al. 2019)."""
    return inverse_normalised([effective_number(n, beta) for n in counts])


@dataclass
class ClassBalancedATConfig:
    """The settings of :class:`ClassBalancedAT`, with their registered defaults."""

    beta: float = field(default=0.9999, metadata=in_range(0, 1))  # overlap parameter β of E_n, < 1
    deferred: bool = False  # DRW: uniform weights until the first lr milestone


@register_defense("cb-at")
class ClassBalancedAT(Defense[ClassBalancedATConfig]):
    """PGD-AT with the adversarial CE weighted by effective-number class weights (Cui et al., CVPR 2019).

    ``deferred`` switches the weights on at the first lr milestone (DRW, Cao et al. 2019).
    """

    Config = ClassBalancedATConfig

    def __init__(self, cfg: ClassBalancedATConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        if cfg.beta >= 1:
            raise ConfigError(f"defense 'cb-at': 'beta' must be < 1, got {cfg.beta}")
        if cfg.deferred and not ctx.lr_milestones:
            raise ConfigError("defense 'cb-at': 'deferred: true' needs at least one lr milestone (config 'milestones')")
        self.class_weights = torch.tensor(class_balanced_weights(ctx.train_counts, cfg.beta),
                                          dtype=torch.float32, device=ctx.device)

    @property
    def weights_active(self) -> bool:
        """Whether this epoch uses the class-balanced weights (always, unless deferred and before the milestone)."""
        return not self.cfg.deferred or self.epoch >= min(self.ctx.lr_milestones)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x_adv)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        if self.weights_active:
            loss = (self.class_weights.to(ce.device)[y] * ce).mean()
        else:
            loss = ce.mean()
        return LossOutput(loss, logits.detach(), {"ce": ce.mean().detach()})

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        return {"cb_weights_active": self.weights_active}
