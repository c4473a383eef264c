"""REAT (Li et al. 2023, "Alleviating the Effect of Data Imbalance on Adversarial Training").

Official code: github.com/GuanlinLee/REAT.  Two parts, training loss
``L = BSL(z(x')) + λ·TAIL`` with λ = 1.

**RBL (re-balanced adversarial-example generation).**  State a_i = how many of
last epoch's training adversarial examples the model *predicted as* class i
(a_i = n_i in epoch 0).  With β_i = (n_i−1)/n_i the effective number is
E_i = (1 − β_i^{a_i})/(1 − β_i), and w_i ∝ 1/(E_i + 1e-5), normalised to sum to
C (the 1e-5, as released, keeps a class that nobody predicted finite).  The
inner maximisation (PGD-10, uniform start x + U(−ε, ε) -- not clipped to [0,1] under
``fidelity: released``, as ``loss_functions.py`` -- BN in eval mode) maximises a
class-weighted CE.  Two versions (``rbl``):

* ``"released"``: w_y·CE(z, y) per sample (attack loss ``wce``).  *Trap*: with
  sign steps and BN in eval mode each sample's input gradient is only scaled
  by its positive weight, so every step's sign -- and therefore every
  adversarial example -- is **bit-identical** to plain CE-PGD's.  (The
  released code reduces with ``F.cross_entropy(weight=w)``, i.e. divides by
  Σ w_y instead of B: another positive scale that changes nothing.)
  ``tests/test_defenses_maths.py`` proves the identity on real data.
* ``"logit-adjusted"``: CE(z − log w, y) (attack loss ``la-ce``): the weights sit
  inside the softmax, so they change the gradient's direction and the
  adversarial examples.  This is rfbench's variant, not the paper's.

**TAIL (feature penalty).**  Tail classes T = range(⌊C/3⌋·2+1, C) (7-9 on
CIFAR-10), ω_i = sqrt(N/n_i).  For every anchor a with a tail label and every
sample j in the batch: s_aj = −1 if y_j = y_a else +1, W_aj = ω_{y_a} + ω_{y_j},
and a KL between the softmax over the feature dimension of the anchor's
(detached) features and of sample j's features.  The features are those of the
*adversarial* batch, from the same train-mode forward that gives the BSL
logits (official ``train.py``/``loss_functions.py``).  Two versions
(``variant``):

* ``"released"`` (default, bit-faithful): the code uses
  ``nn.KLDivLoss(size_average='none')``; that legacy argument means
  reduction='mean', so each anchor's KL collapses to one scalar KLbar_a, the
  mean over all B·D elements of p_a·(log p_a − log q_j).  The penalty is
  TAIL = (1/|T|)·Σ_a c_a·KLbar_a with c_a = (1/B)·Σ_j s_aj·W_aj, and it is small.
* ``"per-pair"``: the literal reading,
  TAIL = (1/|T|)·Σ_a (1/B)·Σ_j s_aj·W_aj·KL(softmax f_a ‖ softmax f_j) with the
  KL summed over the feature dimension.  Taken literally it pushes same-class
  tail features *apart* (s_aj = −1 rewards a large KL).

|T| counts anchors (batch samples with a tail label); with none, TAIL = 0.
Evaluation uses the plain logits.  The BSL and TAIL terms are logged
separately (``LossOutput.terms``).  The official code selects its ``best``
checkpoint on the test set; rfbench selects on the validation split.

Recipe: ResNet-18, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 80 epochs,
lr ×0.1 at 60 and 75, crop and flip, CIFAR-10-LT ρ=50.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import choice, in_range
from rfbench.defenses.at_bsl import balanced_softmax_loss, log_counts
from rfbench.defenses.base import Defense, EpochStats, LossOutput, TrainContext
from rfbench.defenses.cb_at import effective_number, inverse_normalised
from rfbench.defenses.registry import register_defense

RBL_LOSSES = {"released": "wce", "logit-adjusted": "la-ce"}
RBL_EPS = 1e-5  # added to E_i before inverting, as released


def tail_classes(num_classes: int) -> list[int]:
    """REAT's tail classes: range(⌊C/3⌋·2+1, C)."""
    return list(range(num_classes // 3 * 2 + 1, num_classes))


def rbl_weights(train_counts: Sequence[int], pred_counts: Sequence[int]) -> list[float]:
    """RBL class weights: β_i = (n_i−1)/n_i, E_i = (1−β_i^{a_i})/(1−β_i), w_i ∝ 1/(E_i+1e-5), Σ w_i = C."""
    e = [effective_number(a, (n - 1.0) / n) for n, a in zip(train_counts, pred_counts)]
    return inverse_normalised(e, eps=RBL_EPS)


def tail_omega(train_counts: Sequence[int]) -> list[float]:
    """ω_i = sqrt(N/n_i)."""
    total = float(sum(train_counts))
    return [math.sqrt(total / n) for n in train_counts]


def pairwise_feature_kl(anchor_features: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``K[a, j] = Σ_d p_a[d]·(log p_a[d] − log q_j[d])`` with p = softmax(anchors), q = softmax(features) over d."""
    log_p = F.log_softmax(anchor_features, dim=1)
    log_q = F.log_softmax(features, dim=1)
    p = log_p.exp()
    return (p * log_p).sum(dim=1, keepdim=True) - p @ log_q.t()


def tail_penalty(features: torch.Tensor, y: torch.Tensor, omega: torch.Tensor, tail: Sequence[int],
                 variant: str = "released") -> torch.Tensor:
    """REAT's TAIL term for a batch of features ``(B, D)``; see the module docstring for both variants.

    Computed in at least float32, outside autocast (a bf16 matmul would blur the small KLs).
    """
    with torch.autocast(features.device.type, enabled=False):
        return _tail_penalty(features.to(torch.promote_types(features.dtype, torch.float32)), y, omega, tail, variant)


def _tail_penalty(features: torch.Tensor, y: torch.Tensor, omega: torch.Tensor, tail: Sequence[int],
                  variant: str) -> torch.Tensor:
    # every sample is scored as an anchor and non-tail anchors are masked out: no host sync, no boolean indexing
    b, d = features.shape
    is_anchor = torch.isin(y, torch.as_tensor(list(tail), device=y.device)).to(features.dtype)
    sign = torch.where(y[:, None] == y[None, :], -1.0, 1.0).to(features.dtype)  # s_aj
    omega = omega.to(features)
    weight = omega[y][:, None] + omega[y][None, :]  # W_aj
    kl = pairwise_feature_kl(features.detach(), features)  # K[a, j], anchor side detached
    if variant == "released":
        per_anchor = (sign * weight).mean(dim=1) * kl.sum(dim=1) / (b * d)  # c_a · KLbar_a (reduction='mean')
    elif variant == "per-pair":
        per_anchor = (sign * weight * kl).mean(dim=1)
    else:
        raise ValueError(f"TAIL variant must be 'released' or 'per-pair', got {variant!r}")
    return (per_anchor * is_anchor).sum() / is_anchor.sum().clamp_min(1.0)


@dataclass
class REATConfig:
    """The settings of :class:`REAT`, with their registered defaults."""

    variant: str = field(default="released", metadata=choice("released", "per-pair"))  # TAIL reading
    rbl: str = field(default="released", metadata=choice(*RBL_LOSSES))  # attack loss: wce or la-ce
    tail_weight: float = field(default=1.0, metadata=in_range(0, None))  # λ in BSL + λ·TAIL


@register_defense("reat")
class REAT(Defense[REATConfig]):
    """REAT (Li et al. 2023): RBL-weighted PGD, balanced softmax on x', plus the TAIL feature penalty."""

    # released code (loss_functions.py): x + U(-eps, eps), the first gradient taken before any clipping
    released_attack = {"start_clip": False}

    inventions = {"rbl=logit-adjusted": "the logit-adjusted RBL attack loss CE(z - log w, y); the paper and its "
                                        "code weight the CE (rbl=released)"}

    Config = REATConfig

    state_keys = ("pred_counts",)

    def __init__(self, cfg: REATConfig, ctx: TrainContext):
        super().__init__(cfg, ctx)
        self.pred_counts: list[int] = [int(n) for n in ctx.train_counts]  # a_i = n_i in epoch 0
        self.log_n = log_counts(ctx.train_counts, ctx.device)
        self.omega = torch.tensor(tail_omega(ctx.train_counts), dtype=torch.float32, device=ctx.device)
        self.tail = tail_classes(ctx.num_classes)

    def class_weights(self) -> torch.Tensor:
        """The RBL weights w from the current a_i."""
        return torch.tensor(rbl_weights(self.ctx.train_counts, self.pred_counts), dtype=torch.float32,
                            device=self.ctx.device)

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": RBL_LOSSES[self.cfg.rbl], "start": "uniform", "shared_aux": {"class_weights": self.class_weights().to(x.device)}}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits, f = model(x_adv, return_features=True)
        bsl = balanced_softmax_loss(logits, y, self.log_n)
        tail = tail_penalty(f, y, self.omega, self.tail, self.cfg.variant)
        return LossOutput(bsl + self.cfg.tail_weight * tail, logits.detach(), {"bsl": bsl.detach(), "tail": tail.detach()})

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        """a_i ← this epoch's counts of training adversarial examples predicted as class i."""
        self.pred_counts = [int(a) for a in stats.train_pred_counts]
        return {"rbl_class_weights": rbl_weights(self.ctx.train_counts, self.pred_counts)}
