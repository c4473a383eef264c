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
5. the same v is subtracted (``on_batch_end``, called after the optimiser step):
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

Composability: ``with_awp(defense, gamma, warmup)`` turns a built defense of any class
into its AWP version (the trainer does this for ``awp_gamma > 0`` in the run config:
``rfbench train --defense cfa --awp-gamma 0.005``).  Defenses that keep the base
``training_step`` (perturb, then loss) get exactly the algorithm above; a defense that
overrides ``training_step`` (``standard``) has its whole step replayed on the proxy for
the direction.

Data-parallel training: every rank computes g_l on its shard; the gradients are
averaged over ranks (all-reduce) before normalising, so every rank applies the same v
(the released code runs ``nn.DataParallel``, i.e. the global batch).  The bare module's
parameters are perturbed in place, so a ``torch.compile`` or DDP wrapper sees them.
A batch skipped for a non-finite loss does not reach ``on_batch_end``; the pending v is
then removed at the start of the next step or epoch hook (no optimiser step happened,
so removing it restores w exactly).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput, TrainContext
from rfbench.defenses.registry import register_defense
from rfbench.defenses.standard import PGDAT
from rfbench.defenses.trades import TRADES
from rfbench.models.base import unwrap

AWP_EPS = 1e-20  # added to ‖g_l‖, as released


def bare_module(model: nn.Module) -> nn.Module:
    """The eager module under DDP and ``torch.compile`` wrappers (parameters are shared)."""
    model = unwrap(model)
    return getattr(model, "_orig_mod", model)


def perturbed_names(model: nn.Module) -> list[str]:
    """Names of the parameters AWP perturbs: ``weight`` tensors with more than one dimension."""
    return [n for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n.split(".")[-1]]


def awp_direction(weights: list[torch.Tensor], grads: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """v_l = γ·‖w_l‖·g_l / (‖g_l‖ + 1e-20) per layer (Frobenius norms)."""
    return [gamma * w.norm() * g / (g.norm() + AWP_EPS) for w, g in zip(weights, grads)]


def awp_active(epoch: int, epochs: int, warmup: float) -> bool:
    """AWP acts from 0-based epoch ``round(warmup·epochs)`` on."""
    return epoch >= round(warmup * epochs)


class AWPMixin:
    """Adds AWP around a defense's loss; see the module docstring.  Reads ``awp_gamma``/``awp_warmup``."""

    awp_gamma: float = 5e-3
    awp_warmup: float = 0.0
    _awp_pending: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    _awp_proxy: nn.Module | None = None

    def _awp_remove(self) -> None:
        if self._awp_pending:
            with torch.no_grad():
                for p, v in self._awp_pending:
                    p.sub_(v)
        self._awp_pending = None

    def _awp_step(self, model: nn.Module, x, y, pos, x_adv):
        """The defense's loss (or whole step) on ``model``."""
        if x_adv is None:
            return super().training_step(model, x, y, pos)  # type: ignore[misc]
        model.train()
        return self.loss(model, x, y, x_adv)  # type: ignore[attr-defined]

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor | None = None) -> LossOutput:
        self._awp_remove()
        own_step = not _uses_base_step(type(self))
        x_adv = None if own_step else self.perturb(model, x, y)  # type: ignore[attr-defined]
        if self.awp_gamma > 0 and awp_active(self.epoch, self.ctx.epochs, self.awp_warmup):  # type: ignore[attr-defined]
            self._awp_apply(model, x, y, pos, x_adv)
        return self._awp_step(model, x, y, pos, x_adv)

    def _awp_apply(self, model, x, y, pos, x_adv) -> None:
        bare = bare_module(model)
        if self._awp_proxy is None:
            self._awp_proxy = copy.deepcopy(bare)
        proxy = self._awp_proxy
        proxy.load_state_dict(bare.state_dict())
        proxy.train()
        names = perturbed_names(proxy)
        pp = dict(proxy.named_parameters())
        loss = self._awp_step(proxy, x, y, pos, x_adv).loss
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
        vs = awp_direction([p.detach() for p in params], grads, self.awp_gamma)
        with torch.no_grad():
            for p, v in zip(params, vs):
                p.add_(v)
        self._awp_pending = list(zip(params, vs))

    def on_batch_end(self, y: torch.Tensor, adv_logits: torch.Tensor | None) -> None:
        self._awp_remove()  # after the optimiser step: w ← w − v
        super().on_batch_end(y, adv_logits)  # type: ignore[misc]

    def on_epoch_start(self, epoch: int) -> None:
        self._awp_remove()
        super().on_epoch_start(epoch)  # type: ignore[misc]

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        self._awp_remove()
        return super().on_epoch_end(stats)  # type: ignore[misc]


def _uses_base_step(cls: type) -> bool:
    """True when the class below AWPMixin keeps the base perturb-then-loss ``training_step``."""
    for k in cls.__mro__:
        if k is AWPMixin:
            continue
        if "training_step" in vars(k):
            return k is Defense
    return True


_AWP_CLASSES: dict[type, type] = {}


def with_awp(defense: Defense, gamma: float, warmup: float = 0.0) -> Defense:
    """Give a built defense AWP with ``gamma`` and ``warmup`` (fraction of the budget); returns it."""
    cls = type(defense)
    if not isinstance(defense, AWPMixin):
        if cls not in _AWP_CLASSES:
            _AWP_CLASSES[cls] = type(f"AWP{cls.__name__}", (AWPMixin, cls), {"name": cls.name})
        defense.__class__ = _AWP_CLASSES[cls]
    defense.awp_gamma = float(gamma)  # type: ignore[attr-defined]
    defense.awp_warmup = float(warmup)  # type: ignore[attr-defined]
    return defense


@register_defense("awp-at")
class AWPAT(AWPMixin, PGDAT):
    """AT-AWP (Wu et al., NeurIPS 2020): PGD-AT with adversarial weight perturbation (γ = 5e-3 paper,
    0.01 released; no warm-up)."""

    released_attack = {"bn": "train"}  # train_cifar10.py attacks after model.train()
    PAPER_GAMMA, RELEASED_GAMMA = 5e-3, 0.01

    @dataclass
    class Config:
        awp_gamma: float | None = field(default=None, metadata=in_range(0, None))  # γ per layer; None = 5e-3 (paper) / 0.01 (released)
        awp_warmup: float = field(default=0.0, metadata=in_range(0, 1))  # fraction of the budget before AWP starts

    def __init__(self, cfg: Any, ctx: TrainContext):
        super().__init__(cfg, ctx)
        default = self.RELEASED_GAMMA if self.released else self.PAPER_GAMMA
        self.awp_gamma = default if cfg.awp_gamma is None else cfg.awp_gamma
        self.awp_warmup = cfg.awp_warmup


@register_defense("awp-trades")
class AWPTRADES(AWPMixin, TRADES):
    """TRADES-AWP (Wu et al., NeurIPS 2020): TRADES with AWP on the TRADES loss (γ = 5e-3 in paper and release,
    warm-up 9/200)."""

    @dataclass
    class Config(TRADES.Config):
        awp_gamma: float = field(default=5e-3, metadata=in_range(0, None))
        awp_warmup: float = field(default=0.045, metadata=in_range(0, 1))  # released: 9 of 200 epochs

    def __init__(self, cfg: Any, ctx: TrainContext):
        super().__init__(cfg, ctx)
        self.awp_gamma, self.awp_warmup = cfg.awp_gamma, cfg.awp_warmup
