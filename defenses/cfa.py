"""CFA: Class-wise calibrated Fair Adversarial training (Wei, Wang, Guo & Wang, CVPR 2023).

Three parts, on top of PGD-AT or TRADES (``base``):

* **CCM** (class-wise calibrated margin, Sec. 4.1): per-class radius
  ``eps_k = (λ1 + t_k)·eps``, where ``t_k`` is class k's robust accuracy on the
  previous epoch's training adversarial examples (``EpochStats.train_robust_acc``);
  ``λ1 = 0.5`` (PGD-AT) or 0.3 (TRADES).  The attack step stays the threat's.
* **CCR** (class-wise calibrated regularisation, TRADES only, Sec. 4.2):
  ``β_k = (0.5 + t_k)·β`` with β = 6 and the per-sample loss
  ``[CE + β_y·KL] / (1 + β_y)``.
* **FAWA** (fairness-aware weight average, Sec. 4.3): an EMA copy of the model,
  ``θ̄ ← d·θ̄ + (1−d)·θ`` with d = 0.85, that absorbs the current weights after
  an epoch only if their worst-class validation robust accuracy
  (``EpochStats.val_robust_acc``: the trainer's validation PGD, PGD-10 by default) is
  ≥ 0.2, from epoch ``fawa_start`` (50) on.  The first accepted checkpoint
  initialises the average.  The average is kept by the trainer's weight-averaging
  facility (:mod:`rfbench.models.averaging`, requested as ``fawa``): the
  trainer checkpoints it beside the raw weights and it is evaluated as its own
  checkpoint (``--which fawa`` / ``fawa-best``).

Until class statistics exist (the first epoch) and before ``class_adaptive_start``,
CCM uses the plain eps and CCR uses ``β_k = β`` (still in the ``/(1+β_y)`` form,
so the loss scale does not jump when adaptation starts).  Until FAWA has
absorbed a checkpoint, the ``fawa`` copy mirrors the raw weights (the log's
``fawa_updates`` says how many checkpoints it holds).

Epochs are 0-based indices (the trainer's ``EpochStats.epoch``): FAWA considers
the weights after epoch ``e`` when ``e ≥ fawa_start``.  By default the start is a
fraction of the budget, ``fawa_start_fraction`` = 50/200 (the paper's epoch 50 of 200),
i.e. round(0.25·epochs); an absolute ``fawa_start`` in the config wins.

The released code differs from the paper.  ``fidelity: paper`` (the default) uses the
paper's values; ``fidelity: released`` runs the release:

* defaults: FAWA threshold 0.24, decay 0.88, CCM/CCR only from epoch 10, and λ1 = 0.5
  for every base (the paper's 0.3 for TRADES is not in the code);
* the training attack (``attack.py``) differs per base.  PGD-AT (``attack_pgd``,
  ``cw_attack_pgd``) runs in the mode ``train.py``'s ``train_epoch`` left the model
  in, ``train()``: BN with batch statistics, each attack forward updating the running
  statistics; its start is uniform in the (class-wise) ball and clamped to [0,1]
  before the first gradient, as the paper mode's.  TRADES (``trades_loss``,
  ``cw_trades_loss``) calls ``model.eval()`` before attacking, as the paper mode does,
  and takes its first gradient at the unclipped start x + 0.001·N(0,1);
* FAWA has no start epoch: it averages from the first epoch whose worst-class
  validation robust accuracy reaches the threshold.  That accuracy (``train.py``'s
  ``eval_epoch`` after ``model.eval()``, with ``attack.py``'s ``pgd_loss``) is PGD-10
  with CE, a uniform start clamped to [0,1], BN in eval mode, at ε = 8/255 and step
  2/255 (constants in ``train.py``, the defaults of its ``--epsilon`` and
  ``--pgd-alpha``), on the split of ``generate_validation.py`` (the first 100
  training images of each class, no augmentation), counting every sample correct
  under attack whatever its clean prediction.  rfbench measures it the same way
  (:func:`~rfbench.attacks.measure.clean_and_pgd_accuracy` with the run's training ε
  and step, which are the release's on the CIFAR-10 protocol) on the run's
  balanced validation split, where the release's 10·correct_k/N is class k's accuracy.

``released_defaults`` (``None`` = follow the fidelity) switches only the three
numbers.  Checkpoints are selected on the validation split in both modes (the
release selects on the test set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rfbench.attacks.measure import clean_and_pgd_accuracy
from rfbench.core.config import choice, in_range
from rfbench.core.errors import ConfigError
from rfbench.defenses.base import Defense, EpochStats, LossOutput
from rfbench.defenses.class_stats import fill_missing
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms

log = logging.getLogger(__name__)

PAPER = {"fawa_decay": 0.85, "fawa_threshold": 0.2, "class_adaptive_start": 0}
RELEASED = {"fawa_decay": 0.88, "fawa_threshold": 0.24, "class_adaptive_start": 10}
CCM_LAMBDA = {"pgd-at": 0.5, "trades": 0.3}
RELEASED_CCM_LAMBDA = 0.5  # the release's one default for every base
RELEASE_VAL_STEPS = 10  # the release's FAWA validation attack: PGD-10
# attack.py per base: PGD-AT attacks in train() (train.py's mode) from the clamped uniform start;
# TRADES calls model.eval() first and takes its first gradient at the unclipped x + 0.001·N(0,1)
RELEASED_ATTACK: dict[str, dict[str, Any]] = {"pgd-at": {"bn": "train"}, "trades": {"start_clip": False}}


def cfa_class_eps(train_robust_acc: torch.Tensor, eps: float, lam: float) -> torch.Tensor:
    """CCM's per-class radius ``eps_k = (λ1 + t_k)·eps`` (Wei et al. 2023, Eq. 7)."""
    return (lam + train_robust_acc.double()) * eps


def cfa_class_beta(train_robust_acc: torch.Tensor, beta: float, lam: float = 0.5) -> torch.Tensor:
    """CCR's per-class regularisation ``β_k = (λ + t_k)·β`` (Wei et al. 2023, Eq. 9; λ = 0.5)."""
    return (lam + train_robust_acc.double()) * beta


def fawa_accepts(val_robust_acc: list[float] | torch.Tensor, epoch: int, threshold: float, start: int) -> bool:
    """FAWA's gate: the epoch is ≥ ``start`` and the worst-class validation robust accuracy is ≥ ``threshold``."""
    acc = torch.as_tensor(val_robust_acc, dtype=torch.float64)
    acc = acc[~torch.isnan(acc)]
    return epoch >= start and acc.numel() > 0 and float(acc.min()) >= threshold


@dataclass
class CFAConfig:
    """The settings of :class:`CFA`, with their registered defaults."""

    base: str = field(default="pgd-at", metadata=choice("pgd-at", "trades"))
    beta: float = field(default=6.0, metadata=in_range(0, None))  # TRADES β (base: trades)
    ccm: bool = True
    ccm_lambda: float | None = None  # λ1; None = 0.5 (pgd-at) / 0.3 (trades); released: 0.5 for both
    ccr: bool | None = None  # CCR; None = on for base trades (it needs the TRADES KL term)
    ccr_lambda: float = field(default=0.5, metadata=in_range(0, None))  # β_k = (ccr_lambda + t_k)·β
    class_adaptive_start: int | None = None  # first epoch of CCM/CCR; None = 0 (paper) / 10 (released)
    fawa: bool = True
    fawa_decay: float | None = field(default=None, metadata=in_range(0, 1))  # None = 0.85 (paper) / 0.88
    fawa_threshold: float | None = field(default=None, metadata=in_range(0, 1))  # None = 0.2 (paper) / 0.24
    fawa_start: int | None = field(default=None, metadata=in_range(0, None))  # first epoch (0-based) FAWA may absorb; None = from the fraction (paper) / 0 (released)
    fawa_start_fraction: float = field(default=50 / 200, metadata=in_range(0, 1))  # of the budget (paper: 50 of 200)
    released_defaults: bool | None = None  # the released code's threshold, decay, start; None = follow the fidelity


@register_defense("cfa")
class CFA(Defense[CFAConfig]):
    """CFA (Wei et al., CVPR 2023): class-wise eps (CCM), class-wise β (CCR, TRADES) and the FAWA weight average."""

    Config = CFAConfig

    state_keys = ("t", "fawa_updates")

    def __init__(self, cfg: CFAConfig, ctx):
        super().__init__(cfg, ctx)
        if cfg.ccr and cfg.base != "trades":
            raise ConfigError("defense 'cfa': 'ccr: true' needs 'base: trades' (CCR re-weights the TRADES KL term)")
        use_released = self.released if cfg.released_defaults is None else cfg.released_defaults
        defaults = RELEASED if use_released else PAPER
        self.fawa_decay = defaults["fawa_decay"] if cfg.fawa_decay is None else cfg.fawa_decay
        self.fawa_threshold = defaults["fawa_threshold"] if cfg.fawa_threshold is None else cfg.fawa_threshold
        self.adaptive_start = defaults["class_adaptive_start"] if cfg.class_adaptive_start is None else cfg.class_adaptive_start
        lam = RELEASED_CCM_LAMBDA if self.released else CCM_LAMBDA[cfg.base]
        self.ccm_lambda = lam if cfg.ccm_lambda is None else cfg.ccm_lambda
        self.use_ccr = cfg.base == "trades" and cfg.ccr is not False
        self.t: torch.Tensor | None = None  # per-class training robust accuracy of the last epoch
        self.fawa_updates = 0
        # FAWA is a weight average the trainer keeps for us (checkpointed and evaluated as ``fawa``)
        self.fawa = ctx.averages.request("fawa") if cfg.fawa else None

    # -- per batch -------------------------------------------------------------------
    def _adaptive(self) -> bool:
        return self.t is not None and self.epoch >= self.adaptive_start

    def sample_eps(self, y: torch.Tensor):
        t = self.ctx.threat
        if not (self.cfg.ccm and self._adaptive()):
            return t.eps, t.alpha
        class_eps = cfa_class_eps(self.t, t.eps, self.ccm_lambda)
        return class_eps.to(device=y.device, dtype=torch.float32)[y], t.alpha

    def attack_fidelity(self, y: torch.Tensor) -> dict[str, Any]:
        """Under ``fidelity: released``, the release's attack of this base (:data:`RELEASED_ATTACK`)."""
        out = super().attack_fidelity(y)
        if self.released:
            out.update(RELEASED_ATTACK[self.cfg.base])
        return out

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        if self.cfg.base == "trades":
            return trades_attack_kwargs(model, x, self.ctx.autocast_dtype, bn=self.attack_fidelity(y)["bn"])
        return super().attack_kwargs(model, x, y)

    def class_beta(self) -> torch.Tensor:
        """β_k per class (CCR), or β for every class before adaptation."""
        if self._adaptive():
            return cfa_class_beta(self.t, self.cfg.beta, self.cfg.ccr_lambda)
        return torch.full((self.ctx.num_classes,), float(self.cfg.beta), dtype=torch.float64)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        if self.cfg.base == "pgd-at":
            return super().loss(model, x, y, x_adv)
        clean_logits, adv_logits = model(x), model(x_adv)  # two passes: BN sees each batch apart, as in TRADES
        ce, kl = trades_terms(clean_logits, adv_logits, y)
        if self.use_ccr:
            b = self.class_beta().to(device=y.device, dtype=ce.dtype)[y]
            loss = ((ce + b * kl) / (1.0 + b)).mean()
        else:
            loss = ce.mean() + self.cfg.beta * kl.mean()
        return LossOutput(loss, adv_logits, {"natural": ce.mean().detach(), "boundary": kl.mean().detach()})

    # -- per epoch -------------------------------------------------------------------
    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        t = torch.tensor(stats.train_robust_acc, dtype=torch.float64)
        previous = self.t if self.t is not None else torch.full_like(t, float(torch.nanmean(t)))
        self.t = fill_missing(t, previous)  # a class absent from the epoch keeps its previous value
        out: dict[str, Any] = {"cfa_t": self.t.tolist()}
        if self.cfg.ccm:
            out["cfa_class_eps"] = cfa_class_eps(self.t, self.ctx.threat.eps, self.ccm_lambda).tolist()
        if self.use_ccr:
            out["cfa_class_beta"] = cfa_class_beta(self.t, self.cfg.beta, self.cfg.ccr_lambda).tolist()
        if self.fawa is not None and self.ctx.averages.attached:
            out.update(self._fawa_step(stats))
        return out

    def fawa_start(self) -> int:
        """First 0-based epoch FAWA may absorb: ``fawa_start``, else 0 (released) or round(fraction·epochs) (paper)."""
        if self.cfg.fawa_start is not None:
            return self.cfg.fawa_start
        return 0 if self.released else round(self.cfg.fawa_start_fraction * self.ctx.epochs)

    def _fawa_val_acc(self, stats: EpochStats) -> list[float] | torch.Tensor:
        """Per-class validation accuracy of FAWA's gate: the trainer's robust accuracy (paper), or under
        ``released`` PGD-10 accuracy counting every sample correct under attack, whatever its clean prediction."""
        if not self.released or self.ctx.val_loader is None or stats.model is None:
            return stats.val_robust_acc
        t = self.ctx.threat
        _, adv = clean_and_pgd_accuracy(stats.model, self.ctx.val_loader(512), num_classes=self.ctx.num_classes,
                                        eps=t.eps, alpha=t.alpha, steps=RELEASE_VAL_STEPS, norm=t.norm,
                                        generator=self.ctx.generator, autocast_dtype=self.ctx.autocast_dtype,
                                        require_clean=False)
        return adv

    def _fawa_step(self, stats: EpochStats) -> dict[str, Any]:
        avg = self.ctx.averages
        accepted = fawa_accepts(self._fawa_val_acc(stats), stats.epoch, self.fawa_threshold, self.fawa_start())
        if accepted and self.fawa_updates > 0:
            avg.ema(self.fawa, self.fawa_decay)
        elif accepted or self.fawa_updates == 0:
            avg.copy(self.fawa)  # first accepted checkpoint, or mirroring before any
        self.fawa_updates += int(accepted)
        return {"fawa_accepted": accepted, "fawa_updates": self.fawa_updates}

