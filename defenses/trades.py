"""TRADES (Zhang et al., ICML 2019): natural CE plus β·KL between clean and adversarial predictions.

Training objective (Zhang et al., ICML 2019, the TRADES objective)::

    L = CE(z(x), y) + β · (1/B) Σ_i KL( softmax z(x_i) ‖ softmax z(x'_i) ),
    x' = argmax_{‖x'−x‖≤ε} KL( softmax z(x) ‖ softmax z(x') ),

β = 6.  The inner maximisation starts from ``x + 0.001·N(0,1)`` and takes
sign steps (CIFAR recipe: ε 0.031, step 0.007, 10 steps).  Under ``fidelity: paper``
the start is clipped to [0,1] (an image); under ``released`` the first gradient is
taken at the unclipped start, as ``trades.py`` does.  In rfbench ε, step
and the number of steps come from the run's threat model (``ctx.threat``, the
dataset protocol), never from this module.

What is computed once per batch:

* the attack's target distribution ``softmax z(x)`` -- one forward of the
  clean batch in eval mode (BN on running statistics, as the official code
  attacks in eval mode), without gradient.  The official code recomputes this
  forward at every attack step; in eval mode it is the same tensor each time.
* the loss's clean logits ``z(x)`` -- one forward in train mode, used by both
  the CE term and the KL target (the official code runs this forward twice,
  which only updates the BN running statistics one extra time).  As in the
  official code the KL target is *not* detached: the gradient flows through
  both distributions.

``normalize_by_one_plus_beta`` divides the whole loss by (1+β), as CFA's code
does for its TRADES runs (Wei et al., CVPR 2023).  This is not the standard
TRADES objective (it scales the effective learning rate by 1/(1+β) = 1/7);
it is off by default and offered only to reproduce CFA's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, LossOutput
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms


@dataclass
class TRADESConfig:
    """The settings of :class:`TRADES`, with their registered defaults."""

    beta: float = field(default=6.0, metadata=in_range(0, None))  # weight of the KL term
    start_std: float = field(default=0.001, metadata=in_range(0, None))  # random start x + std·N(0,1)
    normalize_by_one_plus_beta: bool = False  # CFA's non-standard division of the loss by (1+β)


TC = TypeVar("TC", bound=TRADESConfig)


@register_defense("trades")
class TRADES(Defense[TC]):
    """TRADES (Zhang et al., ICML 2019): CE(z(x), y) + β·KL(p(x) ‖ p(x')), KL inner maximisation.

    The maths lives in :mod:`rfbench.defenses.trades_terms`, shared with FRL, CFA, WAT and DAFA.
    """

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    Config = TRADESConfig

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """KL attack against the clean prediction, computed once (eval mode), from x + 0.001·N(0,1)."""
        return trades_attack_kwargs(model, x, self.ctx.autocast_dtype, start_std=self.cfg.start_std,
                                    bn=self.attack_fidelity(y)["bn"])

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x)
        adv_logits = model(x_adv)
        ce, kl = trades_terms(logits, adv_logits, y)
        natural, robust = ce.mean(), kl.mean()
        total = natural + self.cfg.beta * robust
        if self.cfg.normalize_by_one_plus_beta:
            total = total / (1.0 + self.cfg.beta)
        return LossOutput(total, adv_logits.detach(), {"natural_ce": natural.detach(), "robust_kl": robust.detach()})
