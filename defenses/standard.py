"""The two baselines every other defense is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.defenses.base import Defense, LossOutput
from rfbench.defenses.registry import register_defense


@dataclass
class StandardConfig:
    """The settings of :class:`Standard`, with their registered defaults."""

    pass


@register_defense("standard")
class Standard(Defense[StandardConfig]):
    """Standard (ERM) training: CE on clean inputs; the reference for the cost of robustness."""

    Config = StandardConfig

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos=None) -> LossOutput:
        model.train()
        logits = model(x)
        return LossOutput(F.cross_entropy(logits, y), logits)


@dataclass
class PGDATConfig:
    """The settings of :class:`PGDAT`, with their registered defaults."""

    pass


PC = TypeVar("PC")  # a plugin subclassing PGDAT with its own config types it as PGDAT[ItsConfig]


@register_defense("pgd-at")
class PGDAT(Defense[PC]):
    """PGD-AT (Madry et al., ICLR 2018, Eq. 2.1): CE on PGD adversarial examples, BN in eval mode for the attack."""

    Config = PGDATConfig
