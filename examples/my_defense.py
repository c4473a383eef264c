"""A complete minimal rfbench defense, loadable without installing anything.

    rfbench train --defense examples/my_defense.py:WorstClassAT defense_args.boost=2

``WorstClassAT`` is PGD-AT whose adversarial CE counts the samples of last
epoch's worst class (lowest per-class validation robust accuracy) ``1 + boost``
times.  It shows the four things a defense declares: hyper-parameters
(``Config``), the inner maximisation (``attack_kwargs``), the loss (``loss``)
and the per-epoch state update (``on_epoch_end`` + ``state_keys``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput


class WorstClassAT(Defense):
    """PGD-AT with the CE of last epoch's worst validation class up-weighted by ``1 + boost``."""

    name = "worst-class-at"

    @dataclass
    class Config:
        boost: float = field(default=1.0, metadata=in_range(0, None))  # extra weight of the worst class

    state_keys = ("class_weights",)  # saved in checkpoints, restored on resume

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.class_weights = torch.ones(ctx.num_classes)  # uniform until the first validation

    def attack_kwargs(self, model, x, y):
        # the inner maximisation: CE-PGD from a uniform start (eps, step and steps come from the run)
        return {"loss": "ce", "start": "uniform"}

    def loss(self, model, x, y, x_adv):
        logits = model(x_adv)
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = (self.class_weights.to(ce.device)[y] * ce).mean()
        return LossOutput(loss, logits.detach(), {"ce": ce.mean().detach()})

    def on_epoch_end(self, stats: EpochStats) -> dict:
        worst = min(range(len(stats.val_robust_acc)), key=stats.val_robust_acc.__getitem__)
        self.class_weights = torch.ones(self.ctx.num_classes)
        self.class_weights[worst] += self.cfg.boost
        return {"boosted_class": worst}
