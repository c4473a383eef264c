"""MART (Wang et al., ICLR 2020): misclassification-aware adversarial training.

Training objective (Wang et al., ICLR 2020, the MART objective)::

    L = (1/B) Σ_i [ BCE(p(x'_i), y_i) + β · KL( p(x_i) ‖ p(x'_i) ) · (1 − p_{y_i}(x_i)) ],
    BCE(p(x'), y) = CE(z(x'), y) − log(1.0001 − max_{j≠y} p_j(x')),

with x' from CE-PGD (sign steps, BN in eval mode).  β = 5 for ResNet-18
(lr 0.01, wd 3.5e-3) and β = 6 for WRN-34-10 (lr 0.1, wd 7e-4).  The official
code starts the attack from ``x + 0.001·N(0,1)`` (``start: normal``), not clipped to
[0,1] (``fidelity: released``; ``paper`` clips it); ε, step and steps come from the run's
threat model.

As in the official code, neither p(x) in the KL nor the weight (1 − p_y(x)) is
detached.  The official code adds 1e-12 inside the logarithms and uses
1.0000001 − p_y; these constants change nothing but the last digits, and we use
the paper's form with a numerically stable log-softmax instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import choice, in_range
from rfbench.defenses.base import Defense, LossOutput
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import kl_per_sample


def mart_terms(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(BCE, weighted KL)`` of MART (Wang et al. 2020), each of shape ``(B,)``.

    BCE = CE(z(x'), y) − log(1.0001 − max_{j≠y} p_j(x'));
    weighted KL = KL(p(x) ‖ p(x')) · (1 − p_y(x)).
    """
    adv_logits, clean_logits = adv_logits.float(), clean_logits.float()
    adv_probs = F.softmax(adv_logits, dim=1)
    true_mask = F.one_hot(y, adv_logits.shape[1]).bool()
    other_max = adv_probs.masked_fill(true_mask, float("-inf")).amax(dim=1)
    bce = F.cross_entropy(adv_logits, y, reduction="none") - torch.log(1.0001 - other_max)
    p_true = F.softmax(clean_logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return bce, kl_per_sample(clean_logits, adv_logits) * (1.0 - p_true)


@dataclass
class MARTConfig:
    """The settings of :class:`MART`, with their registered defaults."""

    beta: float = field(default=5.0, metadata=in_range(0, None))  # 5 for ResNet-18, 6 for WRN-34-10
    start: str = field(default="normal", metadata=choice("normal", "uniform"))  # official: x + 0.001·N(0,1)
    start_std: float = field(default=0.001, metadata=in_range(0, None))


@register_defense("mart")
class MART(Defense[MARTConfig]):
    """MART (Wang et al., ICLR 2020): boosted CE on x' plus β·KL weighted by 1 − p_y(x); CE-PGD inner max."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    Config = MARTConfig

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": "ce", "start": self.cfg.start, "start_std": self.cfg.start_std}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x)
        adv_logits = model(x_adv)
        bce, wkl = mart_terms(logits, adv_logits, y)
        bce, wkl = bce.mean(), wkl.mean()
        return LossOutput(bce + self.cfg.beta * wkl, adv_logits.detach(), {"bce": bce.detach(), "weighted_kl": wkl.detach()})
