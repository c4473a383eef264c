"""Fixed per-class loss weights on PGD-AT (a training-side tool for the most vulnerable class).

Tian et al. (KDD 2021) describe training-phase changes that help the most
vulnerable class without giving their exact form; this is the general,
documented tool: ``loss = mean_i w_{y_i}·CE(z(x'_i), y_i)`` with x' from PGD
(Madry et al. 2018) and ``weights`` fixed in the config, e.g. to boost class 3::

    defense: class-weights
    defense_args: {weights: [1, 1, 1, 2, 1, 1, 1, 1, 1, 1]}

An empty list (the default) means every weight is 1 (plain PGD-AT).
This defense is rfbench's own invention (labelled so in ``rfbench list`` and in result files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.errors import ConfigError
from rfbench.defenses.base import Defense, LossOutput
from rfbench.defenses.registry import register_defense


@dataclass
class ClassWeightsConfig:
    """The settings of :class:`ClassWeights`, with their registered defaults."""

    weights: list[float] = field(default_factory=list)  # one positive weight per class; [] = all 1


@register_defense("class-weights")
class ClassWeights(Defense[ClassWeightsConfig]):
    """PGD-AT with fixed per-class weights on the adversarial CE (weights from the config, one per class)."""

    inventions = {"": "fixed per-class CE weights on PGD-AT; Tian et al. (KDD 2021) suggest training-side help "
                      "for the weakest class without giving a form"}

    Config = ClassWeightsConfig

    def __init__(self, cfg: ClassWeightsConfig, ctx):
        super().__init__(cfg, ctx)
        c = ctx.num_classes
        if not cfg.weights:
            self.weights = torch.ones(c, dtype=torch.float64)
        elif len(cfg.weights) != c:
            raise ConfigError(f"defense 'class-weights': 'weights' needs {c} entries (one per class), got {len(cfg.weights)}")
        elif not all(math.isfinite(w) and w > 0 for w in cfg.weights):
            raise ConfigError(f"defense 'class-weights': every weight must be a positive number, got {cfg.weights}")
        else:
            self.weights = torch.tensor(cfg.weights, dtype=torch.float64)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x_adv)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        w = self.weights.to(device=y.device, dtype=ce.dtype)[y]
        return LossOutput((w * ce).mean(), logits)
