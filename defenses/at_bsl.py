"""AT-BSL (Yue et al., CVPR 2024): adversarial training with the balanced softmax loss.

Balanced softmax (Ren et al., NeurIPS 2020) shifts every logit by the
log of its class's training count before the softmax::

    BSL(z, y) = CE(z + log n, y) = −log( n_y e^{z_y} / Σ_j n_j e^{z_j} ).

AT-BSL applies it to the adversarial logits, L = (1/B) Σ_b BSL(z(x'_b), y_b),
where x' comes from PGD-10 with a *plain* CE loss (no shift) started from
``x + 0.001·N(0,1)`` (not clipped to [0,1] in the release, ``fidelity: released``;
clipped under ``paper``).  Evaluation uses the plain logits z: the shift exists
only inside the training loss, so :meth:`inference_model` is the identity.

Recipe: ResNet-18, lr 0.1, wd 5e-4, batch 128, 100 epochs, lr ×0.1 at 75 and
×0.01 at 90; the paper's large gains come with RandAugment / AutoAugment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, LossOutput, TrainContext
from rfbench.defenses.registry import register_defense


def log_counts(counts: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """log n_i as a float32 tensor (a class with no sample counts as 1, as the reference BSL does)."""
    return torch.tensor([max(int(n), 1) for n in counts], dtype=torch.float64, device=device).log().float()


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, log_n: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE(z + log n, y): the balanced softmax loss (Ren et al. 2020)."""
    return F.cross_entropy(logits.float() + log_n.to(logits.device)[None, :], y, reduction=reduction)


@dataclass
class ATBSLConfig:
    """The settings of :class:`ATBSL`, with their registered defaults."""

    start_std: float = field(default=0.001, metadata=in_range(0, None))  # attack start x + std·N(0,1)


@register_defense("at-bsl")
class ATBSL(Defense[ATBSLConfig]):
    """AT-BSL (Yue et al., CVPR 2024): balanced softmax CE(z(x') + log n, y) on plain-CE PGD examples."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    Config = ATBSLConfig

    def __init__(self, cfg: ATBSLConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        self.log_n = log_counts(ctx.train_counts, ctx.device)

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": "ce", "start": "normal", "start_std": self.cfg.start_std}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x_adv)
        bsl = balanced_softmax_loss(logits, y, self.log_n)
        return LossOutput(bsl, logits.detach(), {"bsl": bsl.detach()})
