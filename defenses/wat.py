"""WAT: Worst-class Adversarial Training (Li & Liu, AAAI 2023).

TRADES (β = 6) with C+1 weights, one per class and one on the ordinary mean
loss, chosen by the Hedge algorithm (no-regret online learning over the
C+1 "experts"):

* batch loss ``[Σ_k w_k·Σ_{i∈k} ℓ_i]/B + w_C·mean_i ℓ_i`` with the per-sample
  TRADES loss ``ℓ_i = CE_i + β·KL_i``, i.e. ``mean_i (w_{y_i} + w_C)·ℓ_i``;
* after every epoch, on the validation split (300 per class in the recipe):
  ``c_k`` = mean ℓ over class k under the TRADES attack, ``c_C`` = mean_k c_k;
* Hedge: ``w = C·softmax(η·Σ_{epochs} c)`` over the C+1 entries, η = 0.1;
* the weights start at 1.

Ambiguity, exposed as ``normaliser``: with ``C·softmax`` the C+1 weights sum
to C, so the uniform starting point of Hedge would be C/(C+1), not the stated
1; with ``C+1`` the uniform point is exactly 1.  ``"C"`` (default) follows the
paper's formula; ``"C+1"`` is the reading under which "start at 1" is the Hedge
prior.  Either way the weights of the first epoch are 1, as specified.

Released code (``fidelity: released``): the TRADES attack (``attack_generator.py``)
takes its first gradient at the unclipped start x + 0.001·N(0,1), and the
validation cost of class k (``validate`` in ``worst_class_adversarial_train.py``) is
C times its *summed* cost divided by (validation batches × batch size 128), not a
mean (:func:`~rfbench.defenses.class_stats.val_trades_loss` with ``release_batch``):
on the recipe's 3,000 validation images (300 per class, 24 batches) that is
10·300/3,072 = 0.977 times the class mean, so η = 0.1 acts as 0.0977 on the means.
Entry C is the summed cost of every sample over the same 3,072, i.e. the mean of
the C class entries.  The training loss is the release's: the per-sample TRADES loss
weighted by its class's weight, summed and divided by the batch size, plus entry C's
weight times the batch's mean TRADES loss.  ``paper`` uses the per-class mean cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rfbench.core.config import choice, in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput
from rfbench.defenses.class_stats import fill_missing, val_trades_loss
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms

log = logging.getLogger(__name__)


def wat_hedge_weights(cumulative_losses: torch.Tensor, eta: float, normaliser: float) -> torch.Tensor:
    """Hedge weights ``normaliser·softmax(η·Σ c)`` over the C+1 entries (Li & Liu 2023, Alg. 1)."""
    return normaliser * torch.softmax(eta * cumulative_losses.double(), dim=0)


def wat_losses_with_mean(class_losses: torch.Tensor) -> torch.Tensor:
    """The C+1 Hedge losses: the C per-class losses and, as entry C, their average."""
    return torch.cat([class_losses, class_losses.mean().reshape(1)])


@dataclass
class WATConfig:
    """The settings of :class:`WAT`, with their registered defaults."""

    beta: float = field(default=6.0, metadata=in_range(0, None))
    eta: float = field(default=0.1, metadata=in_range(0, None))  # Hedge learning rate
    normaliser: str = field(default="C", metadata=choice("C", "C+1"))  # w = N·softmax(η·Σc)
    val_batch_size: int = field(default=256, metadata=in_range(1, None))


@register_defense("wat")
class WAT(Defense[WATConfig]):
    """WAT (Li & Liu, AAAI 2023): TRADES with Hedge weights over the C classes plus the mean loss."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}
    release_val_batch = 128  # the release's validation batch size, which its cost normalisation uses

    Config = WATConfig

    state_keys = ("cum_losses", "weights")

    def __init__(self, cfg: WATConfig, ctx):
        super().__init__(cfg, ctx)
        c = ctx.num_classes
        self.cum_losses = torch.zeros(c + 1, dtype=torch.float64)
        self.weights = torch.ones(c + 1, dtype=torch.float64)

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return trades_attack_kwargs(model, x, self.ctx.autocast_dtype, bn=self.attack_fidelity(y)["bn"])

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        clean_logits, adv_logits = model(x), model(x_adv)  # two passes: BN sees each batch apart, as in TRADES
        ce, kl = trades_terms(clean_logits, adv_logits, y)
        per_sample = ce + self.cfg.beta * kl
        w = self.weights.to(device=y.device, dtype=per_sample.dtype)
        loss = ((w[y] + w[-1]) * per_sample).mean()
        return LossOutput(loss, adv_logits, {"natural": ce.mean().detach(), "boundary": kl.mean().detach()})

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        if self.ctx.val_loader is None or stats.model is None:
            log.warning("wat: no validation loader or model; the Hedge weights are not updated")
            return {"wat_weights": self.weights.tolist()}
        t = self.ctx.threat
        class_losses = val_trades_loss(stats.model, self.ctx.val_loader(self.cfg.val_batch_size),
                                       num_classes=self.ctx.num_classes, beta=self.cfg.beta, eps=t.eps,
                                       alpha=t.alpha, steps=t.steps, norm=t.norm, generator=self.ctx.generator,
                                       autocast_dtype=self.ctx.autocast_dtype, start_clip=not self.released,
                                       release_batch=self.release_val_batch if self.released else None)
        class_losses = fill_missing(class_losses, float(torch.nanmean(class_losses)))
        self.cum_losses = self.cum_losses + wat_losses_with_mean(class_losses)
        c = self.ctx.num_classes
        self.weights = wat_hedge_weights(self.cum_losses, self.cfg.eta, c if self.cfg.normaliser == "C" else c + 1)
        return {"wat_val_class_loss": class_losses.tolist(), "wat_weights": self.weights.tolist()}
