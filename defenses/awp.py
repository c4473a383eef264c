"""AWP: Adversarial Weight Perturbation (Wu, Xia, Wang, NeurIPS 2020, "Adversarial Weight
Perturbation Helps Robust Generalization"), composable with any defense.

Per batch (the paper's Algorithm 1 with one weight-ascent step, as released in
github.com/csdongxian/AWP):

1. the defense's inner maximisation gives x' on the *unperturbed* weights w;
2. a proxy copy of the model (train mode, so the model's own BN running statistics
   are untouched) takes the defense's loss L(w; x, y, x') and its gradient g_l for
   every layer l whose parameter is a ``weight`` with more than one dimension
   (conv and linear weights; biases and BN parameters are not perturbed);
3. the perturbation is scaled per layer, v_l = γ·‖w_l‖·g_l/‖g_l‖ (Frobenius norms;
   the paper's Eq. 8/9 projection onto ‖v_l‖ ≤ γ‖w_l‖ with one ascent step that
   reaches the boundary), and added: w ← w + v;
4. the defense's loss at w + v is back-propagated and the optimiser steps;
5. the same v is subtracted (the hook's ``after_optimizer_step``):
   w ← w − lr·∇L(w + v) (+ momentum, weight decay) exactly, v leaves nothing behind.

The released proxy step is an SGD step without momentum or weight decay; its
difference to w is lr·g, so the lr cancels in the normalisation and v depends on the
gradient alone (what ``awp_direction`` computes).  RobustLT's re-implementation
(zhang-lilin/RobustLT, ``core/methods/awp.py``) takes that step with the training
optimiser instead (momentum and weight decay enter the direction); that is not the
original and is not reproduced.

Defaults per registered name, from the script it stands for:

* ``awp-at`` (``AT_AWP/train_cifar10.py``, also ``train_cifar100.py`` and
  ``train_svhn.py``): the release's ``--awp-gamma`` is 0.01 (its logs record
  ``awp_size=0.01``), used under ``fidelity: released``; the paper's γ = 5e-3
  under ``paper``.  AWP from the first epoch.  The release calls
  ``model.train()`` before the next batch's ``attack_pgd``, so its attack runs
  with BN in train mode (batch statistics; the running statistics absorb every
  attack forward): ``released_attack`` ``bn: train``.  Its uniform start is clipped
  to [0,1], as rfbench's.
* ``awp-trades`` (``trades_AWP/train_trades_cifar.py``): γ = 5e-3 in both modes,
  AWP from its 1-based epoch 10 of 200, i.e. 9 warm-up epochs: ``awp_warmup`` is
  that *fraction* of the training budget (9/200 = 0.045), so AWP starts at 0-based
  epoch ``round(awp_warmup·epochs)`` whatever the run length.  Its TRADES attack
  takes the first gradient at the unclipped start (as TRADES', under ``released``).

Composability: AWP is a training hook, not a kind of defense.  :class:`WeightPerturbation`
holds the algorithm; the trainer runs it through ``rfbench.benchmark.train.hooks.AWPHook`` for
``awp_gamma > 0`` in the run config (``rfbench train --defense cfa --awp-gamma 0.005``) or for a
defense whose :meth:`~rfbench.defenses.base.Defense.weight_perturbation` asks for it (``awp-at``,
``awp-trades``).  Defenses that keep the base ``training_step`` (perturb, then loss) get exactly
the algorithm above; a defense that overrides ``training_step`` (``standard``) has its whole step
replayed on the proxy for the direction.

Data-parallel training: every rank computes g_l on its shard; the gradients are
averaged over ranks (all-reduce) before normalising, so every rank applies the same v
(the released code runs ``nn.DataParallel``, i.e. the global batch).  The bare module's
parameters are perturbed in place, so a ``torch.compile`` or DDP wrapper sees them.
A batch skipped for a non-finite loss has its pending v removed by the hook's
``step_skipped`` (no optimiser step happened, so removing it restores w exactly).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import AWPSettings, Defense
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades import TRADES, TRADESConfig
from rfbench.models.base import unwrap

AWP_EPS = 1e-20  # added to ‖g_l‖, as released


def perturbed_names(model: nn.Module) -> list[str]:
    """Names of the parameters AWP perturbs: ``weight`` tensors with more than one dimension."""
    return [n for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n.split(".")[-1]]


def awp_direction(weights: list[torch.Tensor], grads: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """v_l = γ·‖w_l‖·g_l / (‖g_l‖ + 1e-20) per layer (Frobenius norms)."""
    return [gamma * w.norm() * g / (g.norm() + AWP_EPS) for w, g in zip(weights, grads)]


def awp_active(epoch: int, epochs: int, warmup: float) -> bool:
    """AWP acts from 0-based epoch ``round(warmup·epochs)`` on."""
    return epoch >= round(warmup * epochs)


class WeightPerturbation:
    """AWP's per-batch weight perturbation v (steps 2, 3 and 5 of the module docstring), for any defense.

    The trainer drives it through a training hook (``rfbench.benchmark.train.hooks.AWPHook``):
    :meth:`apply` after the defense's inner maximisation and before its loss, :meth:`remove`
    after the optimiser step (or for a skipped batch, where no step happened).  It never
    changes the defense's class; the defense only supplies its loss (or its whole step).
    """

    def __init__(self, gamma: float, warmup: float = 0.0):
        self.gamma, self.warmup = float(gamma), float(warmup)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._proxy: nn.Module | None = None

    def active(self, epoch: int, epochs: int) -> bool:
        return self.gamma > 0 and awp_active(epoch, epochs, self.warmup)

    def remove(self) -> None:
        """w ← w − v for the pending v (a no-op when nothing is pending)."""
        if self._pending:
            with torch.no_grad():
                for p, v in self._pending:
                    p.sub_(v)
        self._pending = None

    def apply(self, defense: Defense, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor | None,
              x_adv: torch.Tensor | None) -> None:
        """Compute v from the defense's loss at ``x_adv`` on a proxy copy (its whole step when ``x_adv`` is None,
        i.e. a defense with its own ``training_step``) and add it to the bare module's weights."""
        self.remove()
        bare = unwrap(model, eager=True)
        if self._proxy is None:
            self._proxy = copy.deepcopy(bare)
        proxy = self._proxy
        proxy.load_state_dict(bare.state_dict())
        proxy.train()
        names = perturbed_names(proxy)
        pp = dict(proxy.named_parameters())
        loss = (defense.training_step(proxy, x, y, pos) if x_adv is None else defense.loss(proxy, x, y, x_adv)).loss
        grads = list(torch.autograd.grad(loss, [pp[n] for n in names], allow_unused=True))
        grads = [torch.zeros_like(pp[n]) if g is None else g.detach() for n, g in zip(names, grads)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([g.flatten().float() for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            out, i = [], 0
            for g in grads:
                out.append(flat[i:i + g.numel()].view_as(g).to(g.dtype))
                i += g.numel()
            grads = out
        bp = dict(bare.named_parameters())
        params = [bp[n] for n in names]
        vs = awp_direction([p.detach() for p in params], grads, self.gamma)
        with torch.no_grad():
            for p, v in zip(params, vs):
                p.add_(v)
        self._pending = list(zip(params, vs))


@dataclass
class AWPATConfig:
    """The settings of :class:`AWPAT`, with their registered defaults."""

    awp_gamma: float | None = field(default=None, metadata=in_range(0, None))  # γ per layer; None = 5e-3 (paper) / 0.01 (released)
    awp_warmup: float = field(default=0.0, metadata=in_range(0, 1))  # fraction of the budget before AWP starts


@register_defense("awp-at")
class AWPAT(Defense[AWPATConfig]):
    """AT-AWP (Wu et al., NeurIPS 2020): PGD-AT with adversarial weight perturbation (γ = 5e-3 paper,
    0.01 released; no warm-up)."""

    released_attack = {"bn": "train"}  # train_cifar10.py attacks after model.train()
    PAPER_GAMMA, RELEASED_GAMMA = 5e-3, 0.01

    Config = AWPATConfig

    def weight_perturbation(self) -> AWPSettings:
        default = self.RELEASED_GAMMA if self.released else self.PAPER_GAMMA
        return AWPSettings(default if self.cfg.awp_gamma is None else self.cfg.awp_gamma, self.cfg.awp_warmup)


@dataclass
class AWPTRADESConfig(TRADESConfig):
    """The settings of :class:`AWPTRADES`, with their registered defaults."""

    awp_gamma: float = field(default=5e-3, metadata=in_range(0, None))
    awp_warmup: float = field(default=0.045, metadata=in_range(0, 1))  # released: 9 of 200 epochs


@register_defense("awp-trades")
class AWPTRADES(TRADES[AWPTRADESConfig]):
    """TRADES-AWP (Wu et al., NeurIPS 2020): TRADES with AWP on the TRADES loss (γ = 5e-3 in paper and release,
    warm-up 9/200)."""

    Config = AWPTRADESConfig

    def weight_perturbation(self) -> AWPSettings:
        return AWPSettings(self.cfg.awp_gamma, self.cfg.awp_warmup)
