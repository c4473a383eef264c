"""RobustLT (Zhang, Guo, Li, Shi & Liu, "Taming the Long Tail: Rebalancing Adversarial Training via Adaptive Perturbation",
CVPR 2026, arXiv 2605.13395), on PGD-AT, as released (zhang-lilin/RobustLT,
``core/methods/robustlt.py``; configs ``configs/cifar10lf/robustlt_*.yaml``).

**Class-wise budget.**  With n_max the largest training count, N = Σ n_i and
s_i = sqrt(log(n_max/n_i)) (0 for the head class)::

    τ = α / Σ_i (n_i/N)·s_i,
    ε_i^max = (1 − α)·ε + τ·s_i·ε,

so the training-distribution mean Σ_i (n_i/N)·ε_i^max equals ε: tail classes get a
larger budget, head classes a smaller one (the head's is (1−α)·ε).

**Adaptive warm-up from 0.**  In 0-based epoch e the budget is ε_i = ε_i^max·min(e/(β·E), 1)
(E = the run's epochs; released: ``(current_epoch − 1)/(β·num_epochs)`` with 1-based
epochs), and the PGD step is scaled with it, α_i = ε_i/ε·step.  So epoch 0 trains on
clean inputs (ε = 0) and the full class-wise budget is reached at e = β·E.

Released defaults on CIFAR-10-LT: α = 0.3, β = 0.8 (``robustlt_pgdat_cifar10.yaml``).
The release applies the same wrapper to other base methods (AT-BSL, AWP, REAT, RoBal,
TAET); rfbench registers the PGD-AT version.  The paper's text could not be read here:
the formulas above are the released code's, and α, β are configurable.
The trainer's own ``eps_warmup_epochs`` (if set) multiplies in on top of this ramp
(ε here is the trainer's current ε); leave it at 0 for the released behaviour.

**The release's attack** (``fidelity: released``).  ``core/methods/utils.py`` puts the
model in ``train()`` with ``track_running_stats=False`` on its BN layers (despite an
"eval" comment): BN normalises with the batch's statistics and the running statistics
are not updated (``bn: batch`` of the PGD core).  It draws the random start in the
*base*-ε ball, x + U(−ε, ε), not in the class-wise ball; the steps project onto the
class-wise ball.  ``paper`` attacks with BN in eval mode from a start in the class-wise ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, TrainContext
from rfbench.defenses.registry import register_defense


def classwise_eps_max(train_counts: Sequence[int], eps: float, alpha: float) -> list[float]:
    """ε_i^max = (1−α)ε + τ·sqrt(log(n_max/n_i))·ε with τ = α / Σ_i (n_i/N)·sqrt(log(n_max/n_i))."""
    n_max, total = max(train_counts), float(sum(train_counts))
    s = [math.sqrt(math.log(n_max / n)) for n in train_counts]
    denom = sum(n / total * si for n, si in zip(train_counts, s))
    tau = alpha / denom if denom > 0 else 0.0  # balanced counts: every s_i = 0, budget stays ε
    return [(1 - alpha) * eps + tau * si * eps if denom > 0 else eps for si in s]


def warmup_intensity(epoch: int, epochs: int, beta: float) -> float:
    """min(e/(β·E), 1) for 0-based epoch e; 1 when β = 0."""
    return min(epoch / (beta * epochs), 1.0) if beta > 0 else 1.0


@dataclass
class RobustLTConfig:
    """The settings of :class:`RobustLT`, with their registered defaults."""

    alpha: float = field(default=0.3, metadata=in_range(0, 1))  # share of ε redistributed towards the tail
    beta: float = field(default=0.8, metadata=in_range(0, 1))  # fraction of the budget of the ε ramp


@register_defense("robustlt")
class RobustLT(Defense[RobustLTConfig]):
    """RobustLT on PGD-AT: class-wise ε (larger for the tail) ramped from 0 over the first β of the budget."""

    released_attack = {"bn": "batch"}  # train() with track_running_stats=False: batch statistics, no update

    Config = RobustLTConfig

    def __init__(self, cfg: RobustLTConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)

    def classwise_eps(self) -> list[float]:
        """This epoch's per-class ε_i (from the trainer's current ε)."""
        k = warmup_intensity(self.epoch, self.ctx.epochs, self.cfg.beta)
        return [e * k for e in classwise_eps_max(self.ctx.train_counts, self.ctx.threat.eps, self.cfg.alpha)]

    def attack_fidelity(self, y: torch.Tensor) -> dict[str, Any]:
        """Adds the release's start in the base-ε ball under ``fidelity: released``."""
        out = super().attack_fidelity(y)
        if self.released:
            out["start_eps"] = self.ctx.threat.eps
        return out

    def sample_eps(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.ctx.threat
        eps_c = torch.tensor(self.classwise_eps(), dtype=torch.float32, device=y.device)[y]
        alpha_c = eps_c / t.eps * t.alpha if t.eps > 0 else torch.zeros_like(eps_c)
        return eps_c, alpha_c

    def on_epoch_end(self, stats) -> dict[str, Any]:
        return {"classwise_eps": self.classwise_eps()}
