"""Extension points of the training step (:class:`TrainHook`), the step's data (:class:`Batch`), and the hooks a run gets.

``trainer`` in the hook methods is the :class:`~rfbench.benchmark.train.trainer.Trainer`
(``trainer.module`` is the bare model, ``trainer.defense`` the defense, ``trainer.ctx`` its context).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from rfbench.benchmark.train.config import TrainConfig
from rfbench.defenses.awp import WeightPerturbation
from rfbench.defenses.base import AWPSettings, Defense, LossOutput


@dataclasses.dataclass
class Batch:
    """One training step's data: this rank's shard ``x, y, pos`` and, once stepped, the global-batch results."""

    epoch: int
    index: int  # 0-based batch index in the epoch
    x: torch.Tensor
    y: torch.Tensor
    pos: torch.Tensor
    n_global: int
    out: LossOutput | None = None
    # filled by the step: every rank's labels and adversarial logits, the global mean loss and terms
    y_all: torch.Tensor | None = None
    adv_all: torch.Tensor | None = None
    loss: float = float("nan")
    terms: dict[str, float] = dataclasses.field(default_factory=dict)


class TrainHook:
    """An extension point of the training step; every method is a no-op by default.

    The trainer calls, for each batch::

        x_adv = defense.perturb(model, x, y)            # (a defense with its own training_step: x_adv = None)
        hook.before_loss(trainer, batch, model, x, y, x_adv)
        out = defense.loss(model, x, y, x_adv)          # (or defense.training_step(model, x, y, pos))
        out.loss.backward()                             # a non-finite loss: hook.step_skipped(trainer, batch)
        hook.before_optimizer_step(trainer, batch)      # gradients are in place
        optimizer.step()
        hook.after_optimizer_step(trainer, batch)       # weights are updated

    Hooks run in the order of ``Trainer.hooks``, the same on every rank, and
    see the bare module as ``trainer.module``.  A hook that keeps state must
    save it through the defense or the checkpoint (resume is exact only for
    what is saved).
    """

    def before_loss(self, trainer: Any, batch: Batch, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    x_adv: torch.Tensor | None) -> None:
        """After the defense's inner maximisation (``x_adv``), before its loss; ``model`` is what the loss runs on."""

    def before_optimizer_step(self, trainer: Any, batch: Batch) -> None:
        """After ``backward``, before ``optimizer.step()``."""

    def after_optimizer_step(self, trainer: Any, batch: Batch) -> None:
        """After ``optimizer.step()``, before the defense's ``on_batch_end``."""

    def step_skipped(self, trainer: Any, batch: Batch) -> None:
        """The batch was skipped for a non-finite loss (``--nan-policy skip-batch``): no optimizer step happened."""


class AWPHook(TrainHook):
    """Adversarial weight perturbation (Wu et al., NeurIPS 2020) around any defense's loss: v is added after the
    inner maximisation (:meth:`before_loss`) and removed after the optimizer step, or for a skipped batch."""

    def __init__(self, settings: AWPSettings):
        self.settings = settings
        self.awp = WeightPerturbation(settings.gamma, settings.warmup)

    def before_loss(self, trainer, batch, model, x, y, x_adv):
        self.awp.remove()
        if self.awp.active(batch.epoch, trainer.ctx.epochs):
            self.awp.apply(trainer.defense, model, x, y, batch.pos, x_adv)

    def after_optimizer_step(self, trainer, batch):
        self.awp.remove()  # w ← w − v: the step's update stays, v leaves nothing behind

    def step_skipped(self, trainer, batch):
        self.awp.remove()  # no step happened: removing v restores w exactly


def training_hooks(cfg: TrainConfig, defense: Defense) -> list[TrainHook]:
    """The hooks a run trains with: AWP when the run config (``awp_gamma > 0``) or the defense asks for it.

    The run's ``awp_gamma`` overrides a defense's own settings (``--awp-gamma`` on ``awp-at``).
    """
    settings = AWPSettings(cfg.awp_gamma, cfg.awp_warmup) if cfg.awp_gamma > 0 else defense.weight_perturbation()
    return [AWPHook(settings)] if settings is not None and settings.gamma > 0 else []
