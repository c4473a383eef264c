"""TRADES (Zhang et al., ICML 2019): natural CE plus β·KL between clean and adversarial predictions.

Training objective (Zhang et al., ICML 2019, the TRADES objective)::

    L = CE(z(x), y) + β · (1/B) Σ_i KL( softmax z(x_i) ‖ softmax z(x'_i) ),
    x' = argmax_{‖x'−x‖≤ε} KL( softmax z(x) ‖ softmax z(x') ),

β = 6.  The inner maximisation starts from ``x + 0.001·N(0,1)`` and takes
sign steps (CIFAR recipe: ε 0.031, step 0.007, 10 steps).  In rfbench ε, step
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

import torch
import torch.nn.functional as F
from torch import nn

from attacks.core import eval_mode
from benchmark.config import rng
from defenses.base import Defense, LossOutput
from defenses.registry import register_defense


def kl_per_sample(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL( softmax(clean) ‖ softmax(adv) ) per sample, shape ``(B,)`` (TRADES's robust term).

    Gradients flow through both arguments.
    """
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def clean_probs(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``softmax z(x)`` in eval mode without gradient: the target of the KL inner maximisation."""
    with eval_mode(model), torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype,
                                                             enabled=autocast_dtype is not None):
        return F.softmax(model(x).float(), dim=1)


@register_defense("trades")
class TRADES(Defense):
    """TRADES (Zhang et al., ICML 2019): CE(z(x), y) + β·KL(p(x) ‖ p(x')), KL inner maximisation.

    Subclasses (FRL, CFA, WAT, DAFA) can reuse :meth:`attack_kwargs` (the KL
    attack) and :func:`kl_per_sample`.
    """

    @dataclass
    class Config:
        beta: float = field(default=6.0, metadata=rng(0, None))  # weight of the KL term
        start_std: float = field(default=0.001, metadata=rng(0, None))  # random start x + std·N(0,1)
        normalize_by_one_plus_beta: bool = False  # CFA's non-standard division of the loss by (1+β)

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """KL attack against the clean prediction, computed once (eval mode), from x + 0.001·N(0,1)."""
        p = clean_probs(model, x, self.ctx.autocast_dtype)
        return {"loss": "kl", "start": "normal", "start_std": self.cfg.start_std, "aux": {"clean_probs": p}}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x)
        adv_logits = model(x_adv)
        natural = F.cross_entropy(logits.float(), y)
        robust = kl_per_sample(logits, adv_logits).mean()
        total = natural + self.cfg.beta * robust
        if self.cfg.normalize_by_one_plus_beta:
            total = total / (1.0 + self.cfg.beta)
        return LossOutput(total, adv_logits.detach(), {"natural_ce": natural.detach(), "robust_kl": robust.detach()})
