"""FRL: Fair-Robust-Learning (Xu, Liu, Li, Jain & Tang, ICML 2021), reweight (RW) and reweight+remargin (RWRM).

FRL fine-tunes a robust pre-trained model (lr 1e-3, 40 epochs) with the TRADES
loss at β = 1.5, re-weighting the natural and the boundary term per class from
validation statistics (FRL Algorithm 1, "cost-sensitive" Lagrangian updates):

* on the validation split, per class: clean error ``e_i`` and boundary error
  ``b_i = clean_acc_i − robust_acc_i`` (robust under PGD-20);
* ``γ0_i = e_i − mean(e) − τ1``, ``γ1_i = b_i − mean(b) − τ2``;
* ``λ0 += 0.05·γ0`` and ``λ1 += 0.1·γ1``, each clamped at ≥ 0 and rescaled so
  ``Σλ ≤ 0.5``; the rates halve every 40 epochs;
* class weights ``w_i = 1/C + λ_i − mean(λ)``, ``w0`` from ``λ0`` for the natural
  term and ``w1`` from ``λ1`` for the boundary term:
  ``loss = Σ w0_y·CE / Σ w0_y + β·Σ w1_y·KL / Σ w1_y`` over the batch;
* RWRM also re-margins: ``λ2 += 0.2·γ1`` (not clamped), per-class eps multiplier
  ``clamp(exp(2·λ2), 0.98, 3)`` and attack step ``max_k(eps_k)/4``;
* ``τ1 = τ2 = 0.1`` (RW) or 0.07 (RWRM).

The original code ships no pre-training; rfbench chains it::

    rfbench train --config configs/cifar10/frl-pretrain.yaml          # TRADES, PreAct-ResNet-18
    rfbench train --config configs/cifar10/frl-rw.yaml --init runs/cifar10/frl-pretrain/checkpoint-best.pt

Timing: Algorithm 1 measures the validation errors *before* each epoch's
training, so the first epoch is already re-weighted from the pre-trained
model.  ``initial_update`` (default on) does that measurement in
``on_train_start`` (with the bare starting model, before the first
step); afterwards the update runs in ``on_epoch_end`` (= before the
next epoch).  ``val_source='own'`` (default) measures PGD-20 itself on the
validation split (eps and step of the training threat model, uniform start);
``'trainer'`` reuses :class:`EpochStats`' validation numbers, which use the
trainer's ``val_steps`` (set ``val_steps: 20`` to match).

Released code (``fidelity: released``; ``utils_frl.py``/``utils_frl2.py``), where it
differs from the paper (``paper``, the default):

* the TRADES attack takes its first gradient at the unclipped start x + 0.001·N(0,1);
* the rates: ``if now_epoch % 40 == 0`` halves rate1 -- the λ0 and λ1 steps --
  *before* 1-based epoch 40 (so the update for 0-based epoch e uses
  0.5^⌊(e+1)/40⌋), and rate2, which drives λ2 and the RWRM margins, is never
  halved; ``paper`` halves every rate from epoch 41 (0.5^⌊e/40⌋);
* RWRM's attack step is max(ε over the batch's samples)/4, not the maximum over
  all classes;
* the boundary error b_i counts every validation sample correct under attack,
  whatever its clean prediction (``paper``: robust = clean-correct and correct
  under attack).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rfbench.attacks.measure import clean_and_pgd_accuracy
from rfbench.core.config import choice, in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput
from rfbench.defenses.class_stats import fill_missing
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms

log = logging.getLogger(__name__)


def frl_violations(
    clean_acc: torch.Tensor, robust_acc: torch.Tensor, tau_clean: float, tau_boundary: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FRL's constraint violations ``(γ0, γ1)`` from per-class clean and robust accuracy (Xu et al. 2021, Eq. 9).

    ``γ0_i = e_i − mean(e) − τ1`` with clean error ``e_i = 1 − clean_acc_i``;
    ``γ1_i = b_i − mean(b) − τ2`` with boundary error ``b_i = clean_acc_i − robust_acc_i``.
    """
    clean_err = 1.0 - clean_acc.double()
    bndy_err = clean_acc.double() - robust_acc.double()
    return clean_err - clean_err.mean() - tau_clean, bndy_err - bndy_err.mean() - tau_boundary


def frl_multiplier_step(lam: torch.Tensor, gamma: torch.Tensor, rate: float, budget: float) -> torch.Tensor:
    """One Lagrange-multiplier step: ``λ + rate·γ``, clamped at ≥ 0, rescaled so ``Σλ ≤ budget``."""
    lam = (lam.double() + rate * gamma.double()).clamp(min=0.0)
    total = float(lam.sum())
    return lam * (budget / total) if total > budget else lam


def frl_class_weights(lam: torch.Tensor) -> torch.Tensor:
    """Class weights ``w_i = 1/C + λ_i − mean(λ)`` (FRL's cost-sensitive weights; they sum to 1)."""
    return 1.0 / lam.numel() + lam - lam.mean()


def frl_eps_multiplier(lam2: torch.Tensor, scale: float = 2.0, low: float = 0.98, high: float = 3.0) -> torch.Tensor:
    """RWRM's per-class eps multiplier ``clamp(exp(scale·λ2), low, high)``."""
    return torch.exp(scale * lam2.double()).clamp(low, high)


@dataclass
class FRLReweightConfig:
    """The settings of :class:`FRLReweight`, with their registered defaults."""

    beta: float = field(default=1.5, metadata=in_range(0, None))  # TRADES β of the fine-tuning loss
    tau_clean: float | None = None  # τ1; None = 0.1 (RW) / 0.07 (RWRM)
    tau_boundary: float | None = None  # τ2; None = 0.1 (RW) / 0.07 (RWRM)
    rate_clean: float = field(default=0.05, metadata=in_range(0, None))  # λ0 step
    rate_boundary: float = field(default=0.1, metadata=in_range(0, None))  # λ1 step
    rate_margin: float = field(default=0.2, metadata=in_range(0, None))  # λ2 step (RWRM)
    rate_halve_every: int = field(default=40, metadata=in_range(1, None))  # epochs between rate halvings
    budget: float = field(default=0.5, metadata=in_range(0, None))  # Σλ ≤ budget
    margin_scale: float = 2.0  # eps multiplier exp(margin_scale·λ2)
    margin_min: float = field(default=0.98, metadata=in_range(0, None))
    margin_max: float = field(default=3.0, metadata=in_range(0, None))
    step_divisor: float = field(default=4.0, metadata=in_range(0, None))  # RWRM step = max(eps_k)/step_divisor
    val_source: str = field(default="own", metadata=choice("own", "trainer"))
    val_steps: int = field(default=20, metadata=in_range(1, None))  # PGD steps of the own measurement
    val_alpha: float | None = None  # step of the own measurement; None = the training threat's step
    val_batch_size: int = field(default=256, metadata=in_range(1, None))
    initial_update: bool = True  # update λ from the initial (pre-trained) model before epoch 0


@register_defense("frl-rw")
class FRLReweight(Defense[FRLReweightConfig]):
    """FRL-RW (Xu et al., ICML 2021): TRADES fine-tuning with per-class natural and boundary weights."""

    # released code: the first gradient is taken at the unclipped start (docs/defenses.md)
    released_attack = {"start_clip": False}

    remargin: ClassVar[bool] = False
    default_tau: ClassVar[float] = 0.1

    Config = FRLReweightConfig

    state_keys = ("lam0", "lam1", "lam2", "updates")

    def __init__(self, cfg: FRLReweightConfig, ctx):
        super().__init__(cfg, ctx)
        c = ctx.num_classes
        self.lam0 = torch.zeros(c, dtype=torch.float64)
        self.lam1 = torch.zeros(c, dtype=torch.float64)
        self.lam2 = torch.zeros(c, dtype=torch.float64)
        self.updates = 0
        self._initial_log: dict[str, Any] = {}  # the update before epoch 0, logged with epoch 0
        self.tau_clean = self.default_tau if cfg.tau_clean is None else cfg.tau_clean
        self.tau_boundary = self.default_tau if cfg.tau_boundary is None else cfg.tau_boundary

    # -- inner maximisation ------------------------------------------------------
    def eps_multiplier(self) -> torch.Tensor:
        """Per-class eps multiplier (all ones for RW)."""
        if not self.remargin:
            return torch.ones_like(self.lam2)
        c = self.cfg
        return frl_eps_multiplier(self.lam2, c.margin_scale, c.margin_min, c.margin_max)

    def sample_eps(self, y: torch.Tensor):
        t = self.ctx.threat
        if not self.remargin:
            return t.eps, t.alpha
        class_eps = t.eps * self.eps_multiplier()
        # paper: the largest class radius; released: the largest radius among the batch's samples
        largest = class_eps[y.cpu()].max() if self.released else class_eps.max()
        alpha = float(largest) / self.cfg.step_divisor
        return class_eps.to(device=y.device, dtype=torch.float32)[y], alpha

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return trades_attack_kwargs(model, x, self.ctx.autocast_dtype, bn=self.attack_fidelity(y)["bn"])

    # -- loss --------------------------------------------------------------------
    def on_train_start(self, model: nn.Module) -> None:
        """The initial multiplier update from the starting (e.g. pre-trained) weights, once per run."""
        if self.cfg.initial_update and self.updates == 0 and self.epoch == 0:
            self._initial_update(model)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        clean_logits, adv_logits = model(x), model(x_adv)  # two passes: BN sees each batch apart, as in TRADES
        ce, kl = trades_terms(clean_logits, adv_logits, y)
        w0 = frl_class_weights(self.lam0).to(device=y.device, dtype=ce.dtype)[y]
        w1 = frl_class_weights(self.lam1).to(device=y.device, dtype=ce.dtype)[y]
        natural = (w0 * ce).sum() / w0.sum()
        boundary = (w1 * kl).sum() / w1.sum()
        return LossOutput(natural + self.cfg.beta * boundary, adv_logits,
                          {"natural": natural.detach(), "boundary": boundary.detach()})

    # -- per-epoch update --------------------------------------------------------
    def _measure(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        c, t = self.cfg, self.ctx.threat
        return clean_and_pgd_accuracy(model, self.ctx.val_loader(c.val_batch_size), num_classes=self.ctx.num_classes,
                                      eps=t.eps, alpha=c.val_alpha if c.val_alpha is not None else t.alpha,
                                      steps=c.val_steps, norm=t.norm, generator=self.ctx.generator,
                                      autocast_dtype=self.ctx.autocast_dtype, require_clean=not self.released)

    def _initial_update(self, model: nn.Module) -> None:
        if self.ctx.val_loader is None:
            log.warning("%s: no validation loader; the first epoch runs with uniform weights", self.name)
            self.updates = 1
            return
        clean, robust = self._measure(model)
        self._initial_log = self.update(clean, robust, epoch=0)

    def rate_decays(self, epoch: int) -> tuple[float, float]:
        """Factors of (the λ0 and λ1 steps, the λ2 step) in the update for 0-based epoch ``epoch``.

        paper: both 0.5^⌊e/k⌋ (k = ``rate_halve_every``); released: 0.5^⌊(e+1)/k⌋ and 1.
        """
        k = self.cfg.rate_halve_every
        if self.released:
            return 0.5 ** ((epoch + 1) // k), 1.0
        return 0.5 ** (epoch // k), 0.5 ** (epoch // k)

    def update(self, clean_acc: torch.Tensor, robust_acc: torch.Tensor, epoch: int) -> dict[str, Any]:
        """One FRL multiplier update from per-class validation accuracies, for the epoch ``epoch`` about to run."""
        c = self.cfg
        # a class absent from the validation split is treated as average (no violation from it)
        clean_acc = fill_missing(clean_acc.double(), float(torch.nanmean(clean_acc.double())))
        robust_acc = fill_missing(robust_acc.double(), float(torch.nanmean(robust_acc.double())))
        gamma0, gamma1 = frl_violations(clean_acc, robust_acc, self.tau_clean, self.tau_boundary)
        decay, margin_decay = self.rate_decays(epoch)
        self.lam0 = frl_multiplier_step(self.lam0, gamma0, c.rate_clean * decay, c.budget)
        self.lam1 = frl_multiplier_step(self.lam1, gamma1, c.rate_boundary * decay, c.budget)
        if self.remargin:
            self.lam2 = self.lam2 + c.rate_margin * margin_decay * gamma1
        self.updates += 1
        out = {"lambda_natural": self.lam0.tolist(), "lambda_boundary": self.lam1.tolist(),
               "frl_val_clean_acc": clean_acc.tolist(), "frl_val_robust_acc": robust_acc.tolist()}
        if self.remargin:
            out["lambda_margin"] = self.lam2.tolist()
            out["eps_multiplier"] = self.eps_multiplier().tolist()
        return out

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        use_own = self.cfg.val_source == "own" and self.ctx.val_loader is not None and stats.model is not None
        if self.cfg.val_source == "own" and not use_own:
            log.warning("%s: no validation loader or model; using the trainer's validation numbers", self.name)
        if use_own:
            clean, robust = self._measure(stats.model)
        else:
            clean = torch.tensor(stats.val_clean_acc, dtype=torch.float64)
            robust = torch.tensor(stats.val_robust_acc, dtype=torch.float64)
        out = self.update(clean, robust, epoch=stats.epoch + 1)
        if self._initial_log:
            out["initial_update"], self._initial_log = self._initial_log, {}
        return out


@register_defense("frl-rwrm")
class FRLReweightRemargin(FRLReweight):
    """FRL-RWRM (Xu et al., ICML 2021): FRL-RW plus per-class eps multipliers from the boundary violations."""

    remargin = True
    default_tau = 0.07
