"""The two baselines every other defense is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.defenses.base import Defense, LossOutput
from rfbench.defenses.registry import register_defense


@register_defense("standard")
class Standard(Defense):
    """Standard (ERM) training: CE on clean inputs; the reference for the cost of robustness."""

    @dataclass
    class Config:
        pass

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos=None) -> LossOutput:
        model.train()
        logits = model(x)
        return LossOutput(F.cross_entropy(logits, y), logits)


@register_defense("pgd-at")
class PGDAT(Defense):
    """PGD-AT (Madry et al., ICLR 2018, Eq. 2.1): CE on PGD adversarial examples, BN in eval mode for the attack."""

    @dataclass
    class Config:
        pass
