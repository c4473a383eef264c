"""TRADES maths as pure functions, shared by every TRADES-based defense.

TRADES (Zhang et al., ICML 2019, Eq. 5) minimises, per sample,

    CE(z(x), y) + β · KL(p(x) ‖ p(x'))

where ``x'`` maximises the KL term inside the eps-ball, starting from
``x + 0.001·N(0, I)`` (10 sign steps of 0.007 at eps 0.031 in the reference
recipe; the step count, step and radius come from the run's threat model).

* :func:`trades_attack_kwargs` -- the keyword arguments that turn the PGD core
  (:func:`rfbench.attacks.core.pgd`) into the TRADES inner maximisation; a defense's
  ``attack_kwargs`` hook can return it as is, so per-sample eps/step from
  ``sample_eps`` keep working (CFA, FRL-RWRM, DAFA).
* :func:`trades_perturb` -- the inner maximisation in one call (BN in eval mode).
* :func:`trades_terms` -- the per-sample CE and KL terms, which FRL, CFA, WAT
  and DAFA weight per class before reducing.

Example::

    x_adv = trades_perturb(model, x, y, eps=0.031, alpha=0.007, steps=10)
    model.train()
    ce, kl = trades_terms(model(x), model(x_adv), y)
    loss = ce.mean() + 6.0 * kl.mean()         # plain TRADES, β = 6
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.attacks.core import bn_mode, pgd

TRADES_START_STD = 0.001  # x' starts at x + 0.001·N(0, I)


@torch.no_grad()
def clean_probs(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                bn: str = "eval") -> torch.Tensor:
    """``softmax z(x)`` with BN in mode ``bn`` (default eval), float32, no gradient: the KL target of the inner maximisation.

    Computed once per batch; the official code recomputes this forward at every
    attack step, where (eval mode, or batch statistics of the same clean batch) it is the
    same tensor each time.  Under ``bn="train"`` this one forward updates the BN running
    statistics once, where a per-step recomputation would update them at every step.
    """
    with bn_mode(model, bn), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(x)
    return F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)


def kl_per_sample(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) per sample, shape ``(B,)``; gradients flow through both arguments."""
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_attack_kwargs(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                         start_std: float = TRADES_START_STD, bn: str = "eval") -> dict:
    """Arguments of :func:`rfbench.attacks.core.pgd` for the TRADES inner maximisation (Zhang et al. 2019, Eq. 5).

    KL(p(x) ‖ p(x')) against the clean probabilities (BN in mode ``bn``, the attack's), normal start
    ``x + start_std·N(0,1)``.
    """
    return {
        "loss": "kl",
        "start": "normal",
        "start_std": start_std,
        "aux": {"clean_probs": clean_probs(model, x, autocast_dtype, bn)},
    }


def trades_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    start_clip: bool = True,
) -> torch.Tensor:
    """The TRADES adversarial examples ``x'`` (BN in eval mode; ``eps``/``alpha`` may be per-sample ``(B,)``;
    ``start_clip=False`` takes the first gradient at the unclipped start, as the release does)."""
    return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, generator=generator, bn="eval",
               start_clip=start_clip, autocast_dtype=autocast_dtype, **trades_attack_kwargs(model, x, autocast_dtype))


def trades_terms(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample TRADES terms ``(CE(z(x), y), KL(p(x) ‖ p(x')))``, each of shape ``(B,)``.

    The KL is summed over classes (TRADES' ``KLDivLoss(size_average=False)/B``
    is the batch mean of this).  Gradients flow through both logits, as in TRADES.
    """
    ce = F.cross_entropy(clean_logits.float(), y, reduction="none")
    return ce, kl_per_sample(clean_logits, adv_logits)

