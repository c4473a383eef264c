"""RoBal (Wu et al., CVPR 2021, "Adversarial Robustness under Long-Tailed Distribution").

Model: a cosine classifier without bias replaces the linear head (Wu et al.
2021)::

    cos_j(x) = ⟨ f/‖f‖ , w_j/(‖w_j‖ + γ) ⟩,   γ = 1/32,

installed by :meth:`RoBal.setup_model`.  The model's logits during training
(and therefore for the inner maximisation) are these scale-1 cosines.

Training loss on the adversarial examples x' ::

    L = CE( s·(cos(x') − m_y e_y) + τ_b·log π , y ) + β_reg · (1/B) Σ KL( p(x) ‖ p(x') ),
    m_y = m + τ_m · log(n_y / n_min) / s,      π_i = n_i / N,

where the KL (TRADES-style) is on softmax of the *scale-1* cosines.  The inner
maximisation is CE-PGD on the scale-1 cosines (5 steps in the reference
recipe: set ``steps: 5`` in the run config; this module takes ε, step and steps
from the run's threat model).  Inference (:meth:`RoBal.inference_model`)::

    logits = 10·cos(x) − τ_p·log π.

Variants on CIFAR-10-LT ρ=50 (the reference configs): "N": m 0.1, s 10, τ_b 1.2,
τ_m 0, β_reg 6, τ_p 0.1; "R": τ_b 1.5, τ_m 0.3 and no post-hoc term (τ_p = 0),
the rest as "N".  Any value can be overridden; ``None`` takes the variant's.

Differences from the released code (github.com/wutong16/Adversarial_Long-Tail):

* **Learning-rate bug** (a release bug, not reproduced in either fidelity).  The released ``adjust_learning_rate`` multiplies the
  *current* lr by the cumulative decay at every epoch, so from its (1-based)
  epoch 60 on the decay compounds: lr 1e-2 at epoch 60, 1e-3 at 61, 1e-4 at
  62, ... and training effectively freezes at about epoch 62 of 80.  rfbench
  uses the trainer's correct MultiStepLR (×0.1 at 60 and 75, 0-based epochs, so
  60 epochs at the full rate where the release had 59), so our epochs 62-80
  really train: expect numbers that differ from the paper's for that reason.
* The released attack starts from ``x + ε·U[0,1)`` (a one-sided start):
  ``fidelity: released`` does the same (start ``uniform-positive``, its first gradient taken at
  the unclipped start, as the release's ``add_reg_train`` does);
  ``paper`` uses the symmetric uniform start in the ε-ball of the PGD core.
* The released loss runs the adversarial forward twice (once for the margin
  CE, once for the KL); we run it once, which changes only the BN running
  statistics' update count.
* The released evaluation warns that logit scaling can fake robustness under
  PGD.  We keep one inference scale (10) for every attack and rely on
  AutoAttack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import choice, in_range
from rfbench.defenses.base import Defense, LossOutput, TrainContext
from rfbench.defenses.registry import register_defense
from rfbench.defenses.trades_terms import kl_per_sample

VARIANTS: dict[str, dict[str, float]] = {
    "N": {"m": 0.1, "s": 10.0, "tau_b": 1.2, "tau_m": 0.0, "beta_reg": 6.0, "tau_p": 0.1},
    "R": {"m": 0.1, "s": 10.0, "tau_b": 1.5, "tau_m": 0.3, "beta_reg": 6.0, "tau_p": 0.0},
}


class CosineHead(nn.Module):
    """Bias-free cosine classifier ``cos_j = ⟨f/‖f‖, w_j/(‖w_j‖+γ)⟩`` (Wu et al. 2021), scale 1.

    ``weight`` (C×D) is a plain parameter, so per-class weight norms read as for a linear head.
    """

    def __init__(self, in_features: int, num_classes: int, gamma: float = 1 / 32):
        super().__init__()
        self.gamma = gamma
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        ex = F.normalize(f, dim=1)  # f/‖f‖ (an all-zero feature stays zero instead of NaN)
        ew = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)
        return ex @ ew.t()

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, gamma={self.gamma}"


class AffineLogits(nn.Module):
    """Inference wrapper ``scale·model(x) + bias`` (RoBal's ``10·cos − τ_p·log π``).

    ``features`` and ``head`` pass through to the wrapped model.
    """

    def __init__(self, model: nn.Module, scale: float, bias: torch.Tensor):
        super().__init__()
        self.model = model
        self.scale = scale
        self.register_buffer("bias", bias)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x) + self.bias


def class_margins(counts: list[int], m: float, tau_m: float, s: float) -> torch.Tensor:
    """m_c = m + τ_m·log(n_c/n_min)/s (Wu et al. 2021)."""
    n = torch.tensor(counts, dtype=torch.float64)
    return (m + tau_m * torch.log(n / n.min()) / s).float()


def log_prior(counts: list[int]) -> torch.Tensor:
    """log π_c = log(n_c/N)."""
    n = torch.tensor(counts, dtype=torch.float64)
    return torch.log(n / n.sum()).float()


def margin_logits(cos: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, s: float, tau_b: float,
                  log_pi: torch.Tensor) -> torch.Tensor:
    """s·(cos − m_y e_y) + τ_b·log π: the logits of RoBal's training CE (Wu et al. 2021)."""
    shift = F.one_hot(y, cos.shape[1]).to(cos.dtype) * margins.to(cos.device)[y][:, None]
    return s * (cos - shift) + tau_b * log_pi.to(cos.device)[None, :]


@dataclass
class RoBalConfig:
    """The settings of :class:`RoBal`, with their registered defaults."""

    variant: str = field(default="N", metadata=choice("N", "R"))
    m: float | None = None  # base margin (None: the variant's value)
    s: float | None = field(default=None, metadata=in_range(0, None))  # training scale of the cosines
    tau_b: float | None = None  # training logit bias τ_b·log π
    tau_m: float | None = None  # class-aware margin strength
    beta_reg: float | None = field(default=None, metadata=in_range(0, None))  # weight of the KL term
    tau_p: float | None = None  # post-hoc inference bias −τ_p·log π
    gamma: float = field(default=1 / 32, metadata=in_range(0, None))  # cosine head's weight-norm offset
    inference_scale: float = field(default=10.0, metadata=in_range(0, None))  # scale of the cosines at inference


@dataclass(frozen=True)
class RoBalParams:
    """RoBal's numbers once the variant has filled every setting left at None (what the maths reads)."""

    variant: str
    m: float
    s: float
    tau_b: float
    tau_m: float
    beta_reg: float
    tau_p: float

    @classmethod
    def resolve(cls, cfg: RoBalConfig) -> "RoBalParams":
        given = {k: getattr(cfg, k) for k in VARIANTS[cfg.variant]}
        return cls(variant=cfg.variant, **{k: VARIANTS[cfg.variant][k] if v is None else float(v) for k, v in given.items()})


@register_defense("robal")
class RoBal(Defense[RoBalConfig]):
    """RoBal (Wu et al., CVPR 2021): cosine head, class-aware margin and bias, TRADES-style KL, post-hoc bias."""

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """CE-PGD on the scale-1 cosines; the release's one-sided start x + ε·U[0,1) under ``fidelity: released``."""
        if self.released:  # add_reg_train: x + ε·U[0,1), first gradient at the unclipped start
            return {"loss": "ce", "start": "uniform-positive", "start_clip": False}
        return {"loss": "ce", "start": "uniform"}

    Config = RoBalConfig

    def __init__(self, cfg: RoBalConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        self.resolved = RoBalParams.resolve(cfg)  # every None replaced by the variant's value
        p = self.resolved
        self.margins = class_margins(ctx.train_counts, p.m, p.tau_m, p.s).to(ctx.device)
        self.log_pi = log_prior(ctx.train_counts).to(ctx.device)

    def setup_model(self, model: nn.Module) -> nn.Module:
        """Replace ``model.head`` by a :class:`CosineHead` on the same device."""
        device = next(model.parameters()).device
        model.head = CosineHead(model.feature_dim, self.ctx.num_classes, self.cfg.gamma).to(device)
        return model

    def inference_bias(self) -> torch.Tensor:
        """−τ_p·log π (zero for variant "R")."""
        return -self.resolved.tau_p * self.log_pi

    def inference_model(self, model: nn.Module) -> nn.Module:
        """``inference_scale·cos − τ_p·log π``."""
        return AffineLogits(model, self.cfg.inference_scale, self.inference_bias())

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        p = self.resolved
        cos_adv = model(x_adv).float()
        cos_nat = model(x).float()
        ce = F.cross_entropy(margin_logits(cos_adv, y, self.margins, p.s, p.tau_b, self.log_pi), y)
        kl = kl_per_sample(cos_nat, cos_adv).mean()
        stats_logits = self.cfg.inference_scale * cos_adv.detach() + self.inference_bias().to(cos_adv.device)
        return LossOutput(ce + p.beta_reg * kl, stats_logits, {"margin_ce": ce.detach(), "kl": kl.detach()})
